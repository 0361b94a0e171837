//! [`Process`]: the handle of one managed process, and the supervisor task behind it.
//!
//! # How a process is run
//! Each process has one supervisor task. It owns the tokio `Child`, drains stdout and stderr
//! (waiting for readiness first, so an idle pipe pins no read buffer), writes output into the
//! ring buffer, publishes it to the event bus one batch per read, sends the signals that
//! [`Process::signal`], [`Process::kill`] and [`Process::stop`] ask for, and enforces the timeout
//! and the cancellation token. Because the same task reaps the child, no signal is ever sent to
//! a pid (or process group) that was already reaped and might have been reused.
//!
//! # Caveats
//! - **Process groups.** By default a child leads its own process group; kill, stop, timeout,
//!   cancellation and shutdown signal the whole group, so a shell's grandchildren go too. When the
//!   leader exits, whatever it left running in its group is killed (like systemd's
//!   `KillMode=control-group`) — on Linux, where a pidfd shows the exit before the leader is
//!   reaped; elsewhere, or when `pidfd_open` fails (no descriptors left, a seccomp filter), the
//!   leader is reaped directly and its leftovers are not killed, since its group id could then be
//!   reused. A descendant that calls `setsid()` or `setpgid()` itself leaves
//!   the group and escapes all of this; if it keeps the output pipes open, the supervisor stops
//!   reading [`DRAIN_TIMEOUT`] after the leader exited.
//! - **Drop.** Dropping the service (or the runtime) kills every process that is not
//!   [detached](crate::RunOptions::detach), group included, and tokio reaps them. Dropping a
//!   [`Process`] handle does nothing: the service keeps the process.
//! - **SIGKILL of the manager.** A manager killed by SIGKILL runs no destructor: its children,
//!   in their own process groups, outlive it as orphans (adopted by init or a subreaper). On Linux,
//!   [`RunOptions::die_with_parent`](crate::RunOptions::die_with_parent) asks the kernel to kill
//!   the child when the manager dies. It is armed by starting the command through util-linux's
//!   `setpriv --pdeathsig KILL` and `/bin/sh`, which checks, once the signal is armed, that the
//!   manager is still its parent, so a manager killed right after `start` returned leaves no
//!   orphan either (two extra `exec`s; the spawn keeps its fast `posix_spawn`/`vfork` path
//!   because no `pre_exec` hook is installed). The signal fires when
//!   the *thread* that spawned the child exits: tokio's worker threads live as long as the runtime,
//!   so spawn from a runtime task, not from a short-lived thread. It reaches the direct child
//!   only; the child's own descendants are not covered.
//! - **Zombies.** Every child is reaped by its supervisor; a child whose supervisor was dropped
//!   is reaped by tokio's orphan queue.
//! - **Lag.** Publishing itself never waits. Between reads, the supervisor asks the bus whether
//!   to pause ([`EventBus::output_pause`]): the default bus pauses while a subscriber that keeps
//!   reading is more than half its window behind, so the child slows down instead of the
//!   subscriber missing lines; a subscriber silent for the stall time (100 ms by default) is
//!   left behind, misses output and is told how many lines
//!   ([`RecvError::Lagged`](crate::RecvError::Lagged)).
//!   See [`Backpressure`](crate::Backpressure). While paused, signals, kills, timeouts and the
//!   exit are still handled. After the exit, time spent paused while draining the pipes does
//!   not count against [`DRAIN_TIMEOUT`], but a single pause longer than it ends the pacing
//!   for the rest of that drain, so a process always ends.
//! - **File descriptors.** A child costs the manager 5 descriptors while it runs with default
//!   options (stdin, stdout, stderr, tokio's pidfd and our exit pidfd; 4 with
//!   [`RunOptions::stdin(false)`](crate::RunOptions::stdin)). At the common soft limit of 20,000
//!   that is about 4,000 concurrent children; running out is an [`Error::Spawn`], never a panic.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::buffer::RingBuffer;
use crate::error::{Error, Result};
use crate::event::{MAX_LINE_LEN, OutputBatch, ProcessEvent, split_point};
use crate::services::event_bus::{EventBus, Pause};
use crate::sys;
use crate::text::ProcessId;
use crate::types::{Info, Signal, Status, Stream, command_line};

/// How long the supervisor keeps reading output after the process exited, when something
/// outside its process group still holds the pipes open.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes read from a pipe at once.
const CHUNK: usize = 64 * 1024;

/// Reads the supervisor makes in a row while they keep filling the buffer, before it looks at
/// its other duties again.
const READS_PER_WAKE: u32 = 8;

/// A cheap, cloneable handle to one managed process.
///
/// Obtained from [`ProcessService::start`](crate::ProcessService::start). Every clone sees the
/// same process; dropping handles does not affect it.
#[derive(Clone)]
pub struct Process {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    seq: u64,
    id: ProcessId,
    command: String,
    args: Vec<String>,
    dir: Option<PathBuf>,
    pid: u32,
    detach: bool,
    grace: Duration,
    started_at: SystemTime,
    started: Instant,
    output: Option<RingBuffer>,
    state: Mutex<State>,
    done: CancellationToken,
    ctrl: mpsc::UnboundedSender<Control>,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    /// Cancelled by `close_stdin` and at exit: interrupts a writer blocked on a full pipe.
    stdin_closed: CancellationToken,
}

#[derive(Debug, Clone)]
struct State {
    status: Status,
    exit_code: Option<i32>,
    signal: Option<Signal>,
    duration: Option<Duration>,
    timed_out: bool,
    failure: Option<String>,
}

impl State {
    /// Why a finished process counts as failed, for its `Exited` event (`None` on success).
    /// Built from the state alone: unlike [`Process::result`], it copies no output.
    fn failure_text(&self) -> Option<String> {
        match self.status {
            Status::Exited if self.exit_code == Some(0) => None,
            Status::Exited => Some(format!("exited with code {}", self.exit_code.unwrap_or(-1))),
            Status::Killed => {
                let signal = self.signal.unwrap_or(Signal::Kill);
                Some(if self.timed_out {
                    format!("timed out and was killed by {signal}")
                } else {
                    format!("killed by {signal}")
                })
            }
            Status::Failed => Some(self.failure.clone().unwrap_or_else(|| "unknown".into())),
            Status::Pending | Status::Running => None,
        }
    }
}

/// What a [`Process`] asks its supervisor to do.
enum Control {
    Signal(Signal, Option<oneshot::Sender<Result<()>>>),
    Stop(Duration),
}

/// The final state of a process that never ran a real supervisor (fakes).
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) exit_code: Option<i32>,
    pub(crate) signal: Option<Signal>,
}

/// Everything needed to create a [`Process`].
pub(crate) struct Spec {
    pub(crate) seq: u64,
    pub(crate) id: ProcessId,
    pub(crate) command: String,
    pub(crate) args: Vec<String>,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) pid: u32,
    pub(crate) detach: bool,
    pub(crate) grace: Duration,
    pub(crate) capture: Option<usize>,
}

impl Process {
    fn from_spec(
        spec: Spec,
        ctrl: mpsc::UnboundedSender<Control>,
        stdin: Option<ChildStdin>,
    ) -> Self {
        Process {
            inner: Arc::new(Inner {
                seq: spec.seq,
                id: spec.id,
                command: spec.command,
                args: spec.args,
                dir: spec.dir,
                pid: spec.pid,
                detach: spec.detach,
                grace: spec.grace,
                started_at: SystemTime::now(),
                started: Instant::now(),
                output: spec.capture.map(RingBuffer::new),
                state: Mutex::new(State {
                    status: Status::Running,
                    exit_code: None,
                    signal: None,
                    duration: None,
                    timed_out: false,
                    failure: None,
                }),
                done: CancellationToken::new(),
                ctrl,
                stdin: tokio::sync::Mutex::new(stdin),
                stdin_closed: CancellationToken::new(),
            }),
        }
    }

    /// A process with no real supervisor (fakes): its output already in the buffer, and the
    /// receiving end of its control channel for whatever plays the supervisor.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    fn unsupervised(spec: Spec, output: &[u8]) -> (Self, mpsc::UnboundedReceiver<Control>) {
        let (ctrl, rx) = mpsc::unbounded_channel();
        let p = Process::from_spec(spec, ctrl, None);
        if let Some(buf) = &p.inner.output {
            buf.write(output);
        }
        (p, rx)
    }

    /// A process that is already over: used by fakes, which spawn nothing.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn finished(spec: Spec, output: &[u8], outcome: Outcome) -> Self {
        let (p, _) = Process::unsupervised(spec, output);
        p.finish(
            outcome.exit_code,
            outcome.signal,
            false,
            None,
            Some(Duration::ZERO),
            None,
        );
        p
    }

    /// A fake process that runs until it is signalled, stopped, cancelled or timed out, then
    /// ends killed by that signal and publishes its final events on `bus` (used by fakes).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn hanging(
        spec: Spec,
        output: &[u8],
        opts: &crate::types::RunOptions,
        bus: Arc<dyn EventBus>,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (p, mut rx) = Process::unsupervised(spec, output);
        let handle = p.clone();
        let cancel = opts.cancel.clone();
        let deadline = opts.timeout.and_then(deadline_after);
        let stop_signal = opts.stop_signal;
        let fut = async move {
            let (signal, timed_out) = loop {
                tokio::select! {
                    control = rx.recv() => match control {
                        Some(Control::Signal(sig, reply)) => {
                            if let Some(reply) = reply {
                                let _ = reply.send(Ok(()));
                            }
                            if matches!(sig, Signal::Kill | Signal::Term | Signal::Int | Signal::Hup) {
                                break (sig, false);
                            }
                        }
                        Some(Control::Stop(_)) => break (stop_signal, false),
                        None => break (Signal::Kill, false),
                    },
                    _ = cancelled(cancel.as_ref()) => break (Signal::Kill, false),
                    _ = at(deadline) => break (stop_signal, true),
                }
            };
            handle.finish(None, Some(signal), timed_out, None, None, Some(&*bus));
        };
        (p, fut)
    }

    /// The service's id for the process (`proc-N`).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub(crate) fn shared_id(&self) -> &ProcessId {
        &self.inner.id
    }

    pub(crate) fn seq(&self) -> u64 {
        self.inner.seq
    }

    pub(crate) fn detached(&self) -> bool {
        self.inner.detach
    }

    /// The OS pid (0 for a fake).
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// The program, as given.
    pub fn command(&self) -> &str {
        &self.inner.command
    }

    /// Its arguments.
    pub fn args(&self) -> &[String] {
        &self.inner.args
    }

    /// The working directory it was given, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// The grace period its stops use by default (from [`RunOptions::grace_period`](crate::RunOptions::grace_period)).
    pub fn grace_period(&self) -> Duration {
        self.inner.grace
    }

    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.inner.state)
    }

    /// Where the process is in its life.
    pub fn status(&self) -> Status {
        self.state().status
    }

    /// The exit code, once it exited on its own.
    pub fn exit_code(&self) -> Option<i32> {
        self.state().exit_code
    }

    /// The signal that ended it, if one did.
    pub fn signal_received(&self) -> Option<Signal> {
        self.state().signal
    }

    /// Whether it was stopped because its timeout fired.
    pub fn timed_out(&self) -> bool {
        self.state().timed_out
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        !self.state().status.is_finished()
    }

    /// How long it has run (so far, while running).
    pub fn duration(&self) -> Duration {
        self.duration_of(&self.state())
    }

    /// The final duration in `st`, or the time since start while running.
    fn duration_of(&self, st: &State) -> Duration {
        st.duration.unwrap_or_else(|| self.inner.started.elapsed())
    }

    /// A serialisable snapshot.
    pub fn info(&self) -> Info {
        let st = self.state().clone();
        Info {
            id: self.inner.id.to_string(),
            command: self.inner.command.clone(),
            args: self.inner.args.clone(),
            dir: self.inner.dir.clone(),
            pid: self.inner.pid,
            status: st.status,
            exit_code: st.exit_code,
            signal: st.signal,
            started_at: self.inner.started_at,
            duration: self.duration_of(&st),
            running: !st.status.is_finished(),
        }
    }

    /// The captured output (stdout and stderr as they arrived), lossy UTF-8. Empty when capture
    /// is disabled.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output_bytes()).into_owned()
    }

    /// A copy of the captured output bytes, exactly as the process wrote them.
    pub fn output_bytes(&self) -> Vec<u8> {
        self.inner
            .output
            .as_ref()
            .map(RingBuffer::bytes)
            .unwrap_or_default()
    }

    /// Waits for the process to end, without judging how it ended.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn done(&self) {
        self.inner.done.cancelled().await
    }

    /// Waits for the process to end.
    ///
    /// # Errors
    /// [`Error::Exited`] for a non-zero exit code, [`Error::Killed`] when a signal ended it (or
    /// its timeout fired), [`Error::Failed`] when its status was lost. Each carries the output.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&self) -> Result<()> {
        self.done().await;
        self.result()
    }

    /// The outcome of a finished process as a `Result` (`Ok` while it runs).
    pub(crate) fn result(&self) -> Result<()> {
        let st = self.state().clone();
        let command = || command_line(&self.inner.command, &self.inner.args);
        match st.status {
            Status::Exited if st.exit_code == Some(0) => Ok(()),
            Status::Exited => Err(Error::Exited {
                id: self.id().to_string(),
                command: command(),
                code: st.exit_code.unwrap_or(-1),
                output: self.output(),
            }),
            Status::Killed => Err(Error::Killed {
                id: self.id().to_string(),
                command: command(),
                signal: st.signal.unwrap_or(Signal::Kill),
                timed_out: st.timed_out,
                output: self.output(),
            }),
            Status::Failed => Err(Error::Failed {
                id: self.id().to_string(),
                command: command(),
                reason: st.failure.unwrap_or_else(|| "unknown".into()),
            }),
            Status::Pending | Status::Running => Ok(()),
        }
    }

    fn not_running(&self) -> Error {
        Error::NotRunning {
            id: self.id().to_string(),
            pid: self.inner.pid,
        }
    }

    /// Sends `signal` to the process — to its whole process group when it leads one.
    ///
    /// # Errors
    /// [`Error::NotRunning`] once it has exited; [`Error::Signal`] when the OS refuses.
    pub async fn signal(&self, signal: Signal) -> Result<()> {
        if !self.is_running() {
            return Err(self.not_running());
        }
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .ctrl
            .send(Control::Signal(signal, Some(tx)))
            .is_err()
        {
            return Err(self.not_running());
        }
        rx.await.unwrap_or_else(|_| Err(self.not_running()))
    }

    /// Kills the process (SIGKILL, to its whole group when it leads one) and waits until it is
    /// reaped. Does nothing on a process that has already ended.
    ///
    /// # Errors
    /// [`Error::Signal`] when the OS refuses the signal.
    pub async fn kill(&self) -> Result<()> {
        match self.signal(Signal::Kill).await {
            Ok(()) | Err(Error::NotRunning { .. }) => {}
            Err(e) => return Err(e),
        }
        self.done().await;
        Ok(())
    }

    /// Asks the supervisor to kill the process without waiting (for `Drop`).
    pub(crate) fn start_kill(&self) {
        let _ = self.inner.ctrl.send(Control::Signal(Signal::Kill, None));
    }

    /// Stops the process gracefully: sends its stop signal (SIGTERM unless
    /// [`RunOptions::stop_signal`](crate::RunOptions::stop_signal) says otherwise) to its group,
    /// waits up to `grace` for it to exit, then sends SIGKILL; returns once it is reaped. A zero
    /// `grace` kills at once. Does nothing on a process that has already ended. Should the OS
    /// refuse the stop signal, the refusal is logged (`tracing` warning) and SIGKILL is sent at
    /// once instead of after `grace`.
    pub async fn stop(&self, grace: Duration) {
        if self.is_running() {
            let _ = self.inner.ctrl.send(Control::Stop(grace));
        }
        self.done().await;
    }

    /// Writes `data` to the process's standard input.
    ///
    /// # Errors
    /// [`Error::NotRunning`] once it has exited; [`Error::StdinClosed`] after
    /// [`close_stdin`](Process::close_stdin) (including one that interrupted this write) or
    /// when stdin was not piped; [`Error::ProcessIo`] when the write fails.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped mid-write, part of `data` may have been written.
    pub async fn send_input(&self, data: impl AsRef<[u8]>) -> Result<()> {
        if !self.is_running() {
            return Err(self.not_running());
        }
        let closed = &self.inner.stdin_closed;
        let stdin_closed = || {
            if self.is_running() {
                Error::StdinClosed {
                    id: self.id().to_string(),
                }
            } else {
                self.not_running()
            }
        };
        let mut stdin = tokio::select! {
            guard = self.inner.stdin.lock() => guard,
            _ = closed.cancelled() => return Err(stdin_closed()),
        };
        let Some(pipe) = stdin.as_mut() else {
            return Err(stdin_closed());
        };
        let written = async {
            pipe.write_all(data.as_ref()).await?;
            pipe.flush().await
        };
        // A child that does not read can leave this write blocked for ever: `close_stdin` and
        // the process's exit interrupt it.
        let result = tokio::select! {
            result = written => result,
            _ = closed.cancelled() => return Err(stdin_closed()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(_) if !self.is_running() => Err(self.not_running()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                // The child closed its end: treat stdin as closed from now on.
                stdin.take();
                Err(Error::StdinClosed {
                    id: self.id().to_string(),
                })
            }
            Err(source) => Err(Error::ProcessIo {
                id: self.id().to_string(),
                op: "writing stdin",
                source,
            }),
        }
    }

    /// Closes the process's standard input, so it sees end of file; interrupts a
    /// [`send_input`](Process::send_input) blocked on a child that does not read. Idempotent.
    pub async fn close_stdin(&self) {
        self.inner.stdin_closed.cancel();
        self.inner.stdin.lock().await.take();
    }

    /// Records the final state, publishes the final events on `bus` (when given), then wakes
    /// every waiter — so a `wait()` that returns means `Exited` was already published. Called
    /// once, by whatever plays the supervisor.
    fn finish(
        &self,
        exit_code: Option<i32>,
        signal: Option<Signal>,
        timed_out: bool,
        failure: Option<String>,
        duration: Option<Duration>,
        bus: Option<&dyn EventBus>,
    ) {
        let mut st = self.state();
        st.duration = Some(duration.unwrap_or_else(|| self.inner.started.elapsed()));
        st.exit_code = exit_code;
        st.signal = signal;
        st.timed_out = timed_out;
        st.status = if failure.is_some() {
            Status::Failed
        } else if signal.is_some() || timed_out {
            Status::Killed
        } else {
            Status::Exited
        };
        st.failure = failure;
        drop(st);
        if let Some(bus) = bus {
            for event in self.final_events() {
                bus.publish(event);
            }
        }
        self.inner.done.cancel();
    }

    /// The `Exited` (and `Killed`) events describing a finished process.
    pub(crate) fn final_events(&self) -> Vec<ProcessEvent> {
        let st = self.state().clone();
        let mut events = Vec::with_capacity(2);
        if let Some(signal) = st.signal {
            events.push(ProcessEvent::Killed {
                id: self.inner.id.clone(),
                signal,
                timed_out: st.timed_out,
            });
        }
        events.push(ProcessEvent::Exited {
            id: self.inner.id.clone(),
            exit_code: st.exit_code,
            duration: st.duration.unwrap_or_default(),
            error: st.failure_text(),
        });
        events
    }

    pub(crate) fn started_event(&self) -> ProcessEvent {
        ProcessEvent::Started {
            id: self.inner.id.clone(),
            command: self.inner.command.clone(),
            args: self.inner.args.clone(),
            dir: self.inner.dir.clone(),
            pid: self.inner.pid,
        }
    }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("id", &self.inner.id)
            .field("pid", &self.inner.pid)
            .field(
                "command",
                &command_line(&self.inner.command, &self.inner.args),
            )
            .field("status", &self.status())
            .finish()
    }
}

/// What the supervisor needs besides the child.
pub(crate) struct Launch {
    pub(crate) process_spec: Spec,
    pub(crate) child: Child,
    pub(crate) stdout: pipe::Receiver,
    pub(crate) stderr: pipe::Receiver,
    pub(crate) group: bool,
    pub(crate) stop_signal: Signal,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cancel: Option<CancellationToken>,
    pub(crate) bus: Arc<dyn EventBus>,
}

/// `now + after`, or `None` ("never") when that is too far to represent.
fn deadline_after(after: Duration) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(after)
}

/// A launched process whose supervisor has not started yet: [`Prepared::begin`] publishes
/// `Started` and starts it; dropping it instead kills the child.
pub(crate) struct Prepared {
    supervisor: Supervisor,
}

impl Prepared {
    /// Spawns the supervisor, which publishes `Started` first.
    pub(crate) fn begin(self) {
        tokio::spawn(self.supervisor.run());
    }
}

/// Creates the handle and its (not yet running) supervisor, so the caller can make the
/// process findable before anyone hears of it.
pub(crate) fn prepare(mut launch: Launch) -> (Process, Prepared) {
    let (ctrl, ctrl_rx) = mpsc::unbounded_channel();
    let stdin = launch.child.stdin.take();
    let process = Process::from_spec(launch.process_spec, ctrl, stdin);
    let exit_fd = sys::exit_notifier(process.pid());
    if exit_fd.is_none() && launch.group {
        tracing::debug!(
            id = process.id(),
            "no exit pidfd: what the process leaves in its group is not killed when it exits"
        );
    }
    let supervisor = Supervisor {
        process: process.clone(),
        child: launch.child,
        reaped: false,
        finished: false,
        exit_fd,
        readers: [
            Reader::new(launch.stdout, Stream::Stdout),
            Reader::new(launch.stderr, Stream::Stderr),
        ],
        ctrl: ctrl_rx,
        group: launch.group,
        stop_signal: launch.stop_signal,
        deadline: launch.timeout.and_then(deadline_after),
        stopping: false,
        kill_at: None,
        cancel: launch.cancel,
        timed_out: false,
        bus: launch.bus,
        pause: None,
    };
    (process, Prepared { supervisor })
}

/// Drains one pipe and cuts its output into line batches.
struct Reader {
    fd: Option<pipe::Receiver>,
    stream: Stream,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
}

impl Reader {
    fn new(fd: pipe::Receiver, stream: Stream) -> Self {
        Reader {
            fd: Some(fd),
            stream,
            partial: Vec::new(),
        }
    }

    /// Waits until the pipe is readable, then reads one chunk (see [`Reader::try_read`]).
    /// `Ok(None)` at end of file.
    async fn read_chunk(&self) -> std::io::Result<Option<Vec<u8>>> {
        let Some(fd) = &self.fd else {
            return std::future::pending().await;
        };
        loop {
            fd.readable().await?;
            match self.try_read() {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                other => return other,
            }
        }
    }

    /// Reads one chunk, without waiting, into a fresh buffer (so an idle pipe holds none) that
    /// starts with the unfinished line of the previous read: the batch made from it then
    /// needs no copy. `Ok(None)` at end of file.
    fn try_read(&self) -> std::io::Result<Option<Vec<u8>>> {
        let Some(fd) = &self.fd else {
            return Ok(None);
        };
        let mut buf = Vec::with_capacity(self.partial.len() + CHUNK);
        buf.extend_from_slice(&self.partial);
        match fd.try_read_buf(&mut buf)? {
            0 => Ok(None),
            _ => Ok(Some(buf)),
        }
    }

    /// Stores the bytes read (those after the carried-over unfinished line) and publishes
    /// the complete lines of `buf`. Returns how many new bytes there were.
    fn on_chunk(&mut self, mut buf: Vec<u8>, process: &Process, bus: &dyn EventBus) -> usize {
        let carried = self.partial.len();
        let fresh = buf.len() - carried;
        if let Some(ring) = &process.inner.output {
            ring.write(&buf[carried..]);
        }
        match memchr::memrchr(b'\n', &buf[carried..]) {
            None => {
                // Still no end of line: keep the bytes (not the read buffer) for later.
                self.partial.extend_from_slice(&buf[carried..]);
            }
            Some(last) => {
                let end = carried + last + 1;
                self.partial.clear();
                self.partial.extend_from_slice(&buf[end..]);
                buf.truncate(end);
                if buf.capacity() > 4 * buf.len() {
                    // Do not let a short batch pin a whole read buffer in the bus.
                    buf.shrink_to_fit();
                }
                bus.publish_output(OutputBatch::new(
                    process.shared_id().clone(),
                    self.stream,
                    buf,
                ));
            }
        }
        // A line longer than an event may carry goes out in capped pieces as it arrives.
        // `>`, not `>=`: a partial line of exactly the cap waits for the next byte, so a line of
        // exactly MAX_LINE_LEN bytes is one event, not a piece and an empty line.
        while self.partial.len() > MAX_LINE_LEN {
            let cut = split_point(&self.partial, MAX_LINE_LEN);
            let rest = self.partial.split_off(cut);
            let piece = std::mem::replace(&mut self.partial, rest);
            bus.publish_output(OutputBatch::new(
                process.shared_id().clone(),
                self.stream,
                piece,
            ));
        }
        if self.partial.capacity() > 1024 && self.partial.capacity() > 4 * self.partial.len() {
            // What was once a long unfinished line must not stay pinned while the pipe idles.
            self.partial.shrink_to_fit();
        }
        fresh
    }

    /// At end of file: publishes a last line that had no newline.
    fn flush(&mut self, process: &Process, bus: &dyn EventBus) {
        self.fd = None;
        if !self.partial.is_empty() {
            let data = std::mem::take(&mut self.partial);
            bus.publish_output(OutputBatch::new(
                process.shared_id().clone(),
                self.stream,
                data,
            ));
        }
    }
}

struct Supervisor {
    process: Process,
    child: Child,
    reaped: bool,
    /// Whether `run` recorded the final state.
    finished: bool,
    exit_fd: Option<sys::ExitNotifier>,
    readers: [Reader; 2],
    ctrl: mpsc::UnboundedReceiver<Control>,
    group: bool,
    stop_signal: Signal,
    /// When the timeout fires.
    deadline: Option<tokio::time::Instant>,
    /// Whether a stop (stop signal, then SIGKILL) is in progress.
    stopping: bool,
    /// When the stop in progress escalates to SIGKILL (`None`: not stopping, or a grace period
    /// too long to represent).
    kill_at: Option<tokio::time::Instant>,
    cancel: Option<CancellationToken>,
    timed_out: bool,
    bus: Arc<dyn EventBus>,
    /// The wait the bus asked for before the next read (see [`EventBus::output_pause`]).
    pause: Option<Pause>,
}

/// Sleeps until `deadline`, or for ever when there is none.
pub(crate) async fn at(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn read_from(reader: &Reader) -> std::io::Result<Option<Vec<u8>>> {
    reader.read_chunk().await
}

async fn sit_out(pause: &mut Option<Pause>) {
    match pause {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    /// Sends `sig` to the child (its group when grouped). Only called before the child is
    /// reaped, so the pid cannot have been reused.
    fn send(&self, sig: Signal) -> Result<()> {
        debug_assert!(!self.reaped);
        let pid = self.process.pid();
        match sys::send_signal(pid, sig, self.group) {
            Ok(()) => Ok(()),
            // The group is gone (every member exited): nothing left to signal.
            Err(e) if sys::is_no_such_process(&e) => Ok(()),
            Err(source) => Err(Error::Signal {
                id: self.process.id().to_string(),
                pid,
                signal: sig,
                source,
            }),
        }
    }

    /// Sends `sig` for the supervisor's own reasons (a stop, the timeout, the cancellation, the
    /// end of the grace period): nobody waits for the result, so a failure is logged, never
    /// dropped. Returns whether the signal was sent.
    fn send_logged(&self, sig: Signal, why: &'static str) -> bool {
        match self.send(sig) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(id = self.process.id(), pid = self.process.pid(), error = %e, "{why}: sending {sig} failed");
                false
            }
        }
    }

    fn begin_stop(&mut self, grace: Duration) {
        if grace.is_zero() {
            self.send_logged(Signal::Kill, "stop");
            return;
        }
        if !self.stopping {
            self.stopping = true;
            if !self.send_logged(self.stop_signal, "stop") {
                // Waiting the grace period for a signal that never left would only delay the
                // SIGKILL (`RunOptions::validate` already refused the signals that cannot be
                // sent at all).
                self.send_logged(Signal::Kill, "stop after the stop signal failed");
                return;
            }
            // A stopped process cannot act on the stop signal until it is continued.
            if !matches!(self.stop_signal, Signal::Kill | Signal::Cont) {
                self.send_logged(Signal::Cont, "stop");
            }
        }
        if let Some(at) = deadline_after(grace) {
            self.kill_at = Some(self.kill_at.map_or(at, |k| k.min(at)));
        }
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Signal(sig, reply) => {
                let result = self.send(sig);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Control::Stop(grace) => self.begin_stop(grace),
        }
    }

    fn on_read(&mut self, index: usize, mut read: std::io::Result<Option<Vec<u8>>>) {
        let reader = &mut self.readers[index];
        // A read that filled the buffer suggests more is waiting: read on (a few times, so
        // control messages and the other pipe are not starved) before selecting again.
        let mut more = READS_PER_WAKE;
        loop {
            match read {
                Ok(Some(chunk)) => {
                    let fresh = reader.on_chunk(chunk, &self.process, &*self.bus);
                    // Asked after every read, not every wake-up, so that each busy process
                    // publishes at most one batch past the point where the bus pauses.
                    self.pause = self.bus.output_pause();
                    more -= 1;
                    if fresh < CHUNK || more == 0 || self.pause.is_some() {
                        return;
                    }
                    read = reader.try_read();
                }
                Ok(None) => return reader.flush(&self.process, &*self.bus),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    return;
                }
                Err(e) => {
                    tracing::warn!(id = self.process.id(), stream = %reader.stream, error = %e, "reading output failed");
                    return reader.flush(&self.process, &*self.bus);
                }
            }
        }
    }

    async fn run(mut self) {
        self.bus.publish(self.process.started_event());
        // Phase 1: until the child exits. Signals are sent from here only, before reaping.
        let early_status = loop {
            let [out, err] = &self.readers;
            tokio::select! {
                biased;
                Some(control) = self.ctrl.recv() => self.on_control(control),
                _ = cancelled(self.cancel.as_ref()) => {
                    self.cancel = None;
                    self.send_logged(Signal::Kill, "cancellation");
                }
                _ = at(self.deadline) => {
                    self.deadline = None;
                    self.timed_out = true;
                    let grace = self.process.grace_period();
                    self.begin_stop(grace);
                }
                _ = at(self.kill_at) => {
                    self.kill_at = None;
                    self.send_logged(Signal::Kill, "end of the grace period");
                }
                status = exit_or_wait(self.exit_fd.as_ref(), &mut self.child) => break status,
                _ = sit_out(&mut self.pause) => self.pause = None,
                read = read_from(out), if self.pause.is_none() => self.on_read(0, read),
                read = read_from(err), if self.pause.is_none() => self.on_read(1, read),
            }
        };
        // The child has exited. With an exit pidfd it is not reaped yet: whatever it left in
        // its process group can still be killed safely.
        let status = match early_status {
            Some(status) => status,
            None => {
                if self.group {
                    self.send_logged(Signal::Kill, "killing what the leader left in its group");
                }
                self.child.wait().await
            }
        };
        self.reaped = true;
        // Close our end of stdin, interrupting a writer blocked on a pipe nobody reads.
        self.process.close_stdin().await;
        // Phase 2: drain what is left in the pipes, bounded. The bus is still asked to pace
        // the reads (a short-lived child's output is all read here), and nothing else is
        // handled any more, so a pause is simply awaited; time spent in pauses does not count
        // against the drain's bound. But the child is gone and its process must end: a pause
        // longer than DRAIN_TIMEOUT (a bus that waits for ever for a silent subscriber) ends
        // the pacing, and the rest is drained without it.
        let mut drain_until = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        let mut pacing = true;
        while self.readers.iter().any(|r| r.fd.is_some()) {
            if let Some(pause) = self.pause.take()
                && pacing
            {
                let paused_at = tokio::time::Instant::now();
                if tokio::time::timeout(DRAIN_TIMEOUT, pause).await.is_err() {
                    tracing::debug!(
                        id = self.process.id(),
                        "a subscriber kept the drain waiting {DRAIN_TIMEOUT:?}: draining the rest without pacing"
                    );
                    pacing = false;
                }
                drain_until += paused_at.elapsed();
            }
            let [out, err] = &self.readers;
            tokio::select! {
                read = read_from(out) => self.on_read(0, read),
                read = read_from(err) => self.on_read(1, read),
                _ = sleep_until(drain_until) => {
                    tracing::warn!(id = self.process.id(), "output pipes still open {DRAIN_TIMEOUT:?} after exit; something outside the process group holds them");
                    for i in 0..2 {
                        self.readers[i].flush(&self.process, &*self.bus);
                    }
                }
            }
        }
        let (code, signal, failure) = match status {
            Ok(status) => exit_parts(status),
            Err(e) => (
                None,
                None,
                Some(format!("waiting for the process failed: {e}")),
            ),
        };
        let signal = if self.timed_out && signal.is_none() {
            Some(self.stop_signal)
        } else {
            signal
        };
        self.finished = true;
        self.process.finish(
            code,
            signal,
            self.timed_out,
            failure,
            None,
            Some(&*self.bus),
        );
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Dropped before the child was reaped (never begun, a panic, or the runtime shutting
        // down): kill the group while its id is still ours. tokio's kill-on-drop then kills and
        // reaps the leader.
        if !self.reaped
            && !self.process.detached()
            && let Err(e) = sys::send_signal(self.process.pid(), Signal::Kill, self.group)
            && !sys::is_no_such_process(&e)
        {
            tracing::warn!(id = self.process.id(), pid = self.process.pid(), error = %e, "supervisor dropped: sending SIGKILL failed");
        }
        // Whatever happened, waiters must not wait for ever.
        if !self.finished {
            self.process.finish(
                None,
                None,
                false,
                Some(
                    "its supervisor stopped before the process ended (panic or runtime shutdown)"
                        .into(),
                ),
                None,
                None,
            );
        }
    }
}

/// Waits for the child to exit. With an exit pidfd, returns `None` once it has exited (not yet
/// reaped); without one, reaps it and returns its status.
async fn exit_or_wait(
    exit_fd: Option<&sys::ExitNotifier>,
    child: &mut Child,
) -> Option<std::io::Result<ExitStatus>> {
    if let Some(fd) = exit_fd
        && fd.exited().await.is_ok()
    {
        return None;
    }
    Some(child.wait().await)
}

fn exit_parts(status: ExitStatus) -> (Option<i32>, Option<Signal>, Option<String>) {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        (Some(code), None, None)
    } else if let Some(sig) = status.signal() {
        (None, Some(Signal::from_number(sig)), None)
    } else {
        (
            None,
            None,
            Some(format!("unrecognised exit status {status:?}")),
        )
    }
}

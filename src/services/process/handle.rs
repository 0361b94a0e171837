//! [`Process`]: the handle of one managed process, and the state whoever drives it records
//! (the supervisor of a real child, or a test double).

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::buffer::RingBuffer;
use crate::command::command_line;
use crate::error::{Error, Result};
use crate::event::ProcessEvent;
use crate::services::event_bus::EventBus;
use crate::sync::Flag;
use crate::text::ProcessId;
use crate::types::{Info, Signal, Status};

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
    done: Flag,
    controls: Mutex<Controls>,
    stdin: tokio::sync::Mutex<Option<Input>>,
    /// Raised by `close_stdin` and at exit: interrupts a writer blocked on a full pipe.
    stdin_closed: Flag,
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

/// What a [`Process`] asks whoever drives it (its supervisor, or a test double) to do.
pub(crate) enum Control {
    Signal(Signal, Option<oneshot::Sender<Result<()>>>),
    Stop(Duration),
}

/// Control messages on their way from the handles to whoever drives the process: a queue under
/// a lock and the driver's waker, in the handle itself (a channel cost two allocations per
/// process, one of them over-aligned, and kept both for as long as the handle lived).
#[derive(Default)]
struct Controls {
    queue: VecDeque<Control>,
    waker: Option<Waker>,
    /// The receiver is gone: nothing would act on a message.
    closed: bool,
}

/// The receiving end of a process's control messages, held by whoever drives it. Dropped, it
/// refuses further messages and drops those left (their replies then see the process gone).
pub(crate) struct ControlReceiver {
    inner: Arc<Inner>,
}

impl ControlReceiver {
    fn controls(&self) -> MutexGuard<'_, Controls> {
        crate::sync::lock(&self.inner.controls)
    }

    /// The next message, registering `cx` to be woken by the next one when there is none.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Control> {
        let mut controls = self.controls();
        if let Some(control) = controls.queue.pop_front() {
            return Poll::Ready(control);
        }
        if controls
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let old = controls.waker.replace(cx.waker().clone());
        // Dropped after the lock is released, as everywhere a waker is let go of here.
        drop(controls);
        drop(old);
        Poll::Pending
    }

    /// Waits for the next message.
    ///
    /// # Cancel safety
    /// Cancel safe.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) async fn recv(&mut self) -> Control {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next message, if one is waiting.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn try_recv(&mut self) -> Option<Control> {
        self.controls().queue.pop_front()
    }
}

impl Drop for ControlReceiver {
    fn drop(&mut self) {
        // Dropped after the lock is released: a message's reply wakes its sender.
        let left = {
            let mut controls = self.controls();
            controls.closed = true;
            (std::mem::take(&mut controls.queue), controls.waker.take())
        };
        drop(left);
    }
}

impl fmt::Debug for ControlReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlReceiver")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

/// Where a driven process's standard input goes: the child's pipe, or a test double's sink.
pub(crate) type Input = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

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

#[cfg(test)]
impl Spec {
    /// The spec of `proc-1` running `true` (pid 0, not detached, a grace of 1 s), with `capture`
    /// for its ring buffer: for tests that drive a process by hand.
    pub(crate) fn for_test(capture: Option<usize>) -> Spec {
        Spec {
            seq: 1,
            id: "proc-1".into(),
            command: "true".into(),
            args: Vec::new(),
            dir: None,
            pid: 0,
            detach: false,
            grace: Duration::from_secs(1),
            capture,
        }
    }
}

/// How a process ended, as its driver records it with [`Process::finish`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Ending {
    /// The exit code, when it exited on its own.
    pub(crate) exit_code: Option<i32>,
    /// The signal that ended it.
    pub(crate) signal: Option<Signal>,
    /// Whether its timeout ended it.
    pub(crate) timed_out: bool,
    /// Why it could not be waited for (the process then counts as failed).
    pub(crate) failure: Option<String>,
    /// How long it ran; `None` measures the time since its start.
    pub(crate) duration: Option<Duration>,
}

impl Process {
    /// A running process and the receiving end of its control queue, for whatever drives it:
    /// the supervisor of a real child, or a test double.
    pub(crate) fn driven(
        spec: Spec,
        stdin: Option<crate::sys::InputPipe>,
    ) -> (Self, ControlReceiver) {
        Process::driven_with_input(spec, stdin.map(|pipe| Box::new(pipe) as Input))
    }

    /// [`driven`](Process::driven), with stdin going to any writer (a test double's sink).
    pub(crate) fn driven_with_input(spec: Spec, stdin: Option<Input>) -> (Self, ControlReceiver) {
        let process = Process {
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
                done: Flag::default(),
                controls: Mutex::default(),
                stdin: tokio::sync::Mutex::new(stdin),
                stdin_closed: Flag::default(),
            }),
        };
        let rx = ControlReceiver {
            inner: process.inner.clone(),
        };
        (process, rx)
    }

    /// Hands `control` to whoever drives the process; `false` when nothing drives it any more.
    fn send_control(&self, control: Control) -> bool {
        let mut controls = crate::sync::lock(&self.inner.controls);
        if controls.closed {
            drop(controls);
            drop(control);
            return false;
        }
        controls.queue.push_back(control);
        let waker = controls.waker.take();
        drop(controls);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Stores output in the ring buffer (when the process captures it).
    pub(crate) fn record_output(&self, bytes: &[u8]) {
        if let Some(ring) = &self.inner.output {
            ring.write(bytes);
        }
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
        self.inner.done.raised().await
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
        if !self.send_control(Control::Signal(signal, Some(tx))) {
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
        self.send_control(Control::Signal(Signal::Kill, None));
    }

    /// Stops the process gracefully: sends its stop signal (SIGTERM unless
    /// [`RunOptions::stop_signal`](crate::RunOptions::stop_signal) says otherwise) to its group,
    /// waits up to `grace` for it to exit, then sends SIGKILL; returns once it is reaped. A zero
    /// `grace` kills at once. Does nothing on a process that has already ended. Should the OS
    /// refuse the stop signal, the refusal is logged (`tracing` warning) and SIGKILL is sent at
    /// once instead of after `grace`.
    pub async fn stop(&self, grace: Duration) {
        if self.is_running() {
            self.send_control(Control::Stop(grace));
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
            () = closed.raised() => return Err(stdin_closed()),
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
            () = closed.raised() => return Err(stdin_closed()),
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
        self.inner.stdin_closed.raise();
        self.inner.stdin.lock().await.take();
    }

    /// Records the final state, publishes the final events on `bus` (when given), then wakes
    /// every waiter — so a `wait()` that returns means `Exited` was already published. Called
    /// once, by whatever drives the process.
    pub(crate) fn finish(&self, ending: Ending, bus: Option<&dyn EventBus>) {
        let Ending {
            exit_code,
            signal,
            timed_out,
            failure,
            duration,
        } = ending;
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
        let events = bus.map(|bus| (bus, self.final_events(&st)));
        drop(st);
        if let Some((bus, (killed, exited))) = events {
            if let Some(killed) = killed {
                bus.publish(killed);
            }
            bus.publish(exited);
        }
        self.inner.done.raise();
    }

    /// The `Killed` (when a signal ended it) and `Exited` events describing a process that
    /// finished as `st` records.
    fn final_events(&self, st: &State) -> (Option<ProcessEvent>, ProcessEvent) {
        let killed = st.signal.map(|signal| ProcessEvent::Killed {
            id: self.inner.id.clone(),
            signal,
            timed_out: st.timed_out,
        });
        let exited = ProcessEvent::Exited {
            id: self.inner.id.clone(),
            exit_code: st.exit_code,
            duration: st.duration.unwrap_or_default(),
            error: st.failure_text(),
        };
        (killed, exited)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn driven() -> (Process, ControlReceiver) {
        Process::driven_with_input(Spec::for_test(None), None)
    }

    fn grace_of(control: Control) -> Duration {
        match control {
            Control::Stop(grace) => grace,
            Control::Signal(..) => panic!("a signal where a stop was sent"),
        }
    }

    proptest! {
        #[test]
        fn messages_from_many_handles_arrive_all_and_each_handle_in_order(
            counts in proptest::collection::vec(0usize..40, 1..5),
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .unwrap();
            rt.block_on(async {
                let (process, mut rx) = driven();
                let total: usize = counts.iter().sum();
                let senders: Vec<_> = counts
                    .iter()
                    .enumerate()
                    .map(|(who, &n)| {
                        let p = process.clone();
                        tokio::spawn(async move {
                            for i in 0..n {
                                // who and i in the grace period's seconds and nanoseconds.
                                let grace = Duration::new(who as u64, i as u32);
                                assert!(p.send_control(Control::Stop(grace)));
                                if i % 7 == 0 {
                                    tokio::task::yield_now().await;
                                }
                            }
                        })
                    })
                    .collect();
                let mut next = vec![0u32; counts.len()];
                for _ in 0..total {
                    let grace = grace_of(rx.recv().await);
                    let who = grace.as_secs() as usize;
                    assert_eq!(grace.subsec_nanos(), next[who], "handle {who} out of order");
                    next[who] += 1;
                }
                for s in senders {
                    s.await.unwrap();
                }
                assert!(rx.try_recv().is_none());
                let sent: Vec<u32> = counts.iter().map(|&n| n as u32).collect();
                assert_eq!(next, sent);
            });
        }
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_message() {
        let (process, mut rx) = driven();
        let receiver = tokio::spawn(async move { grace_of(rx.recv().await) });
        tokio::task::yield_now().await;
        assert!(process.send_control(Control::Stop(Duration::from_millis(5))));
        assert_eq!(receiver.await.unwrap(), Duration::from_millis(5));
    }

    #[tokio::test]
    async fn without_a_receiver_messages_are_refused_and_replies_see_the_process_gone() {
        let (process, rx) = driven();
        // A signal queued before the receiver goes: its reply is dropped with it.
        let waiting = {
            let p = process.clone();
            tokio::spawn(async move { p.signal(Signal::Term).await })
        };
        while crate::sync::lock(&process.inner.controls).queue.is_empty() {
            tokio::task::yield_now().await;
        }
        drop(rx);
        assert!(matches!(
            waiting.await.unwrap(),
            Err(Error::NotRunning { ref id, pid: 0 }) if id == "proc-1"
        ));
        assert!(!process.send_control(Control::Stop(Duration::ZERO)));
        assert!(matches!(
            process.signal(Signal::Term).await,
            Err(Error::NotRunning { .. })
        ));
    }
}

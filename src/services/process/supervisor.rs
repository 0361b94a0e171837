//! The supervisor: the task that owns one child. It drains the pipes, sends the signals the
//! handle asks for, enforces the timeout and the cancellation token, reaps the child and
//! records how it ended.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::reader::{CHUNK, Reader};
use super::{Control, ControlReceiver, Ending, Process, Spec};
use crate::error::{Error, Result};
use crate::services::event_bus::{EventBus, Pause};
use crate::sys::{self, ExitStatus, PipeReader};
use crate::types::{Signal, Stream};

/// How long the supervisor keeps reading output after the process exited, when something
/// outside its process group still holds the pipes open.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Reads the supervisor makes in a row while they keep filling the buffer, before it looks at
/// its other duties again.
const READS_PER_WAKE: u32 = 8;
/// What the supervisor needs besides the child.
pub(crate) struct Launch {
    pub(crate) process_spec: Spec,
    pub(crate) child: sys::Child,
    pub(crate) stdin: Option<sys::InputPipe>,
    pub(crate) stdout: PipeReader,
    pub(crate) stderr: PipeReader,
    pub(crate) group: bool,
    pub(crate) stop_signal: Signal,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cancel: Option<CancellationToken>,
    pub(crate) bus: Arc<dyn EventBus>,
}

/// `now + after`, or `None` ("never") when that is too far to represent.
fn deadline_after(after: Duration) -> Option<Instant> {
    Instant::now().checked_add(after)
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
pub(crate) fn prepare(launch: Launch) -> (Process, Prepared) {
    let (process, ctrl_rx) = Process::driven(launch.process_spec, launch.stdin);
    if !launch.child.tells_exit_before_reaping() && launch.group {
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
        timer: None,
        cancelled: launch.cancel.map(|token| Box::pin(token.cancelled_owned())),
        timed_out: false,
        bus: launch.bus,
        pause: None,
    };
    (process, Prepared { supervisor })
}
struct Supervisor {
    process: Process,
    child: sys::Child,
    reaped: bool,
    /// Whether `run` recorded the final state.
    finished: bool,
    readers: [Reader; 2],
    ctrl: ControlReceiver,
    group: bool,
    stop_signal: Signal,
    /// When the timeout fires.
    deadline: Option<Instant>,
    /// Whether a stop (stop signal, then SIGKILL) is in progress.
    stopping: bool,
    /// When the stop in progress escalates to SIGKILL (`None`: not stopping, or a grace period
    /// too long to represent).
    kill_at: Option<Instant>,
    /// The one timer, set to whichever of `deadline`, `kill_at` (and, after the exit, the
    /// drain's bound) comes first; made the first time one is needed.
    timer: Option<Pin<Box<Sleep>>>,
    /// Resolves when the process's cancellation token is cancelled (boxed: only processes
    /// given a token pay for it).
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    timed_out: bool,
    bus: Arc<dyn EventBus>,
    /// The wait the bus asked for before the next read (see [`EventBus::output_pause`]).
    pause: Option<Pause>,
}

/// What woke the supervisor before the child exited, in the order it looks (the first ready).
enum Wake {
    Control(Control),
    Cancelled,
    Deadline,
    KillAt,
    Exited(std::io::Result<Option<ExitStatus>>),
    Resumed,
    Read(usize, std::io::Result<Option<Vec<u8>>>),
}

/// Polls `timer`, set to `at` (made on first use): ready once `at` has passed.
fn poll_timer(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
    if sleep.deadline() != at {
        sleep.as_mut().reset(at);
    }
    sleep.as_mut().poll(cx)
}

impl Supervisor {
    /// Sends `sig` to the child (its group when grouped). Only called before the child is
    /// reaped, so the pid cannot have been reused.
    fn send(&self, sig: Signal) -> Result<()> {
        debug_assert!(!self.reaped);
        let pid = self.process.pid();
        match sys::send_signal(pid, sig.number(), self.group) {
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

    /// Phase 1's look at every source, in this order: control messages, the cancellation, the
    /// one timer (the earlier of the timeout and the end of the grace period, the timeout on a
    /// tie), the exit, the end of a pause, then (unless paused) stdout and stderr.
    fn poll_running(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        if let Poll::Ready(control) = self.ctrl.poll_recv(cx) {
            return Poll::Ready(Wake::Control(control));
        }
        if let Some(cancelled) = &mut self.cancelled
            && cancelled.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Wake::Cancelled);
        }
        let next = match (self.deadline, self.kill_at) {
            (Some(deadline), Some(kill_at)) => Some(deadline.min(kill_at)),
            (deadline, kill_at) => deadline.or(kill_at),
        };
        if let Some(at) = next
            && poll_timer(&mut self.timer, at, cx).is_ready()
        {
            // Whichever is earlier; the timeout on a tie.
            return Poll::Ready(if self.deadline == Some(at) {
                Wake::Deadline
            } else {
                Wake::KillAt
            });
        }
        if let Poll::Ready(status) = self.child.poll_exited(cx) {
            return Poll::Ready(Wake::Exited(status));
        }
        if let Some(pause) = &mut self.pause {
            return match Pin::new(pause).poll(cx) {
                Poll::Ready(()) => Poll::Ready(Wake::Resumed),
                Poll::Pending => Poll::Pending,
            };
        }
        for (index, reader) in self.readers.iter().enumerate() {
            if let Poll::Ready(read) = reader.poll_read_chunk(cx) {
                return Poll::Ready(Wake::Read(index, read));
            }
        }
        Poll::Pending
    }

    /// The supervisor's task. Written as a function returning an `async move` block, which
    /// keeps `self` once in the task: an `async fn` taking `self` by value stores it twice (the
    /// argument, and the binding its body moves it into).
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            self.bus.publish(self.process.started_event());
            // Phase 1: until the child exits. Signals are sent from here only, before reaping.
            // One poll looks at every source in turn, without a future per source: the task stays
            // small and a wake-up sets nothing up.
            let early_status = loop {
                match std::future::poll_fn(|cx| self.poll_running(cx)).await {
                    Wake::Control(control) => self.on_control(control),
                    Wake::Cancelled => {
                        self.cancelled = None;
                        self.send_logged(Signal::Kill, "cancellation");
                    }
                    Wake::Deadline => {
                        self.deadline = None;
                        self.timed_out = true;
                        let grace = self.process.grace_period();
                        self.begin_stop(grace);
                    }
                    Wake::KillAt => {
                        self.kill_at = None;
                        self.send_logged(Signal::Kill, "end of the grace period");
                    }
                    Wake::Exited(status) => break status,
                    Wake::Resumed => self.pause = None,
                    Wake::Read(index, read) => self.on_read(index, read),
                }
            };
            // The child has exited. With an exit pidfd it is not reaped yet: whatever it left in
            // its process group can still be killed safely.
            let status = match early_status {
                Ok(Some(status)) => Ok(status),
                Ok(None) => {
                    if self.group {
                        self.send_logged(Signal::Kill, "killing what the leader left in its group");
                    }
                    self.child.wait().await
                }
                // The exit could not be watched: reap it the plain way (which reports the error
                // again if that fails too).
                Err(_) => self.child.wait().await,
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
            let mut drain_until = Instant::now() + DRAIN_TIMEOUT;
            let mut pacing = true;
            let mut first = 0;
            while self.readers.iter().any(|r| r.fd.is_some()) {
                if let Some(pause) = self.pause.take()
                    && pacing
                {
                    let paused_at = Instant::now();
                    if tokio::time::timeout(DRAIN_TIMEOUT, pause).await.is_err() {
                        tracing::debug!(
                            id = self.process.id(),
                            "a subscriber kept the drain waiting {DRAIN_TIMEOUT:?}: draining the rest without pacing"
                        );
                        pacing = false;
                    }
                    drain_until += paused_at.elapsed();
                }
                let read = std::future::poll_fn(|cx| {
                    // The bound first: a pipe that something outside the group keeps full would
                    // otherwise be read for ever, the timer never looked at.
                    if Instant::now() >= drain_until {
                        return Poll::Ready(None);
                    }
                    for index in [first, 1 - first] {
                        if let Poll::Ready(read) = self.readers[index].poll_read_chunk(cx) {
                            return Poll::Ready(Some((index, read)));
                        }
                    }
                    // Nothing to read yet: only now is the timer needed (a child that closed its
                    // pipes as it exited never sets one).
                    poll_timer(&mut self.timer, drain_until, cx).map(|()| None)
                })
                .await;
                // The two pipes take turns at being read first, so neither starves the other.
                first = 1 - first;
                match read {
                    Some((index, read)) => self.on_read(index, read),
                    None => {
                        tracing::warn!(
                            id = self.process.id(),
                            "output pipes still open {DRAIN_TIMEOUT:?} after exit; something outside the process group holds them"
                        );
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
                Ending {
                    exit_code: code,
                    signal,
                    timed_out: self.timed_out,
                    failure,
                    duration: None,
                },
                Some(&*self.bus),
            );
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Dropped before the child was reaped (never begun, a panic, or the runtime shutting
        // down): kill the group while its id is still ours. The child's own drop then kills the
        // leader (unless detached) and reaps it.
        if !self.reaped
            && !self.process.detached()
            && let Err(e) = sys::send_signal(self.process.pid(), Signal::Kill.number(), self.group)
            && !sys::is_no_such_process(&e)
        {
            tracing::warn!(id = self.process.id(), pid = self.process.pid(), error = %e, "supervisor dropped: sending SIGKILL failed");
        }
        // Whatever happened, waiters must not wait for ever.
        if !self.finished {
            self.process.finish(
                Ending {
                    failure: Some(
                        "its supervisor stopped before the process ended (panic or runtime shutdown)"
                            .into(),
                    ),
                    ..Ending::default()
                },
                None,
            );
        }
    }
}

fn exit_parts(status: ExitStatus) -> (Option<i32>, Option<Signal>, Option<String>) {
    match sys::exit_parts(status) {
        sys::Exit::Code(code) => (Some(code), None, None),
        sys::Exit::Signal(number) => (None, Some(Signal::from_number(number)), None),
        sys::Exit::Unknown => (
            None,
            None,
            Some(format!("unrecognised exit status {status:?}")),
        ),
    }
}

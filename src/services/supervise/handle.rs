//! [`SupervisedProcess`], the handle of one supervised process, and [`SupervisedInfo`], its
//! serialisable snapshot.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::state::{LastExit, SupervisionState};
use crate::buffer::RingBuffer;
use crate::error::{Error, Result};
use crate::services::process::Process;
use crate::sync::lock;
use crate::text::ProcessId;

/// What a [`SupervisedProcess`] asks its driver.
pub(crate) enum Command {
    Stop(oneshot::Sender<()>),
    Restart,
}

/// What the driver records, and the handle reads.
pub(crate) struct Record {
    pub(crate) attempts: u32,
    pub(crate) restarts: u32,
    pub(crate) current: Option<Process>,
    pub(crate) started: Option<Instant>,
    pub(crate) last_exit: Option<LastExit>,
}

pub(crate) struct Shared {
    pub(crate) id: ProcessId,
    pub(crate) command: String,
    pub(crate) args: Vec<String>,
    pub(crate) record: Mutex<Record>,
    /// The finished attempts' output, each after its marker; the current attempt's marker last.
    pub(crate) output: Option<RingBuffer>,
    pub(crate) state: watch::Sender<SupervisionState>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

impl Shared {
    pub(crate) fn new(
        id: ProcessId,
        command: String,
        args: Vec<String>,
        capture: Option<usize>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Command>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            id,
            command,
            args,
            record: Mutex::new(Record {
                attempts: 0,
                restarts: 0,
                current: None,
                started: None,
                last_exit: None,
            }),
            output: capture.map(RingBuffer::new),
            state: watch::Sender::new(SupervisionState::Starting),
            commands,
        });
        (shared, rx)
    }

    pub(crate) fn set_state(&self, state: SupervisionState) {
        tracing::debug!(id = %self.id, state = %state, "supervision state");
        self.state.send_replace(state);
    }

    /// Records the start of a new child; returns the attempt number.
    pub(crate) fn begin(&self, child: &Process) -> u32 {
        let mut r = lock(&self.record);
        r.current = Some(child.clone());
        r.started = Some(Instant::now());
        if r.attempts > 1 {
            r.restarts += 1;
        }
        if let Some(ring) = &self.output {
            ring.write(
                format!("--- attempt {} (pid {}) ---\n", r.attempts, child.pid()).as_bytes(),
            );
        }
        r.attempts
    }

    /// The number of the current (or last) start.
    pub(crate) fn attempt(&self) -> u32 {
        lock(&self.record).attempts
    }

    /// When the current child started.
    pub(crate) fn started(&self) -> Option<Instant> {
        lock(&self.record).started
    }

    /// Counts a start request; returns its number.
    pub(crate) fn next_attempt(&self) -> u32 {
        let mut r = lock(&self.record);
        r.attempts += 1;
        r.attempts
    }

    /// Records how the current child ended and moves its output into the continuous buffer.
    pub(crate) fn end(&self, exit: LastExit) {
        let mut r = lock(&self.record);
        if let Some(child) = r.current.take()
            && let Some(ring) = &self.output
        {
            let bytes = child.output_bytes();
            ring.write(&bytes);
            if bytes.last().is_some_and(|&b| b != b'\n') {
                ring.write(b"\n");
            }
        }
        r.started = None;
        r.last_exit = Some(exit);
    }
}

/// A cheap, cloneable handle to one supervised process: one id (`sup-N`) across all the
/// children its restarts start.
///
/// Obtained from [`SupervisorService::supervise`](crate::SupervisorService::supervise).
/// Dropping handles does not affect it; [`stop`](SupervisedProcess::stop) does.
#[derive(Clone)]
pub struct SupervisedProcess {
    pub(crate) shared: Arc<Shared>,
}

/// A serialisable snapshot of a [`SupervisedProcess`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisedInfo {
    /// The supervised id (`sup-N`).
    pub id: String,
    /// The program.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Where it is.
    pub state: SupervisionState,
    /// How many starts were made (1 for the first).
    pub attempts: u32,
    /// How many of them were restarts.
    pub restarts: u32,
    /// The current child's process id (`proc-N`), while one runs.
    pub process_id: Option<String>,
    /// The current child's OS pid, while one runs.
    pub pid: Option<u32>,
    /// How long the current child has run (serialised as fractional seconds).
    #[serde(with = "secs_f64_opt")]
    pub uptime: Option<Duration>,
    /// How the last child ended.
    pub last_exit: Option<LastExit>,
}

impl SupervisedProcess {
    /// The supervised id (`sup-N`), the same across restarts.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The program.
    pub fn command(&self) -> &str {
        &self.shared.command
    }

    /// Its arguments.
    pub fn args(&self) -> &[String] {
        &self.shared.args
    }

    /// Where it is.
    pub fn state(&self) -> SupervisionState {
        self.shared.state.borrow().clone()
    }

    /// Whether a child runs and passed its readiness probe.
    pub fn is_ready(&self) -> bool {
        self.shared.state.borrow().is_ready()
    }

    /// How many starts were made (1 for the first; spawn failures count).
    pub fn attempts(&self) -> u32 {
        lock(&self.shared.record).attempts
    }

    /// How many children were started after the first.
    pub fn restarts(&self) -> u32 {
        lock(&self.shared.record).restarts
    }

    /// The current child, while one runs.
    pub fn process(&self) -> Option<Process> {
        lock(&self.shared.record).current.clone()
    }

    /// The current child's OS pid, while one runs.
    pub fn pid(&self) -> Option<u32> {
        self.process().map(|p| p.pid())
    }

    /// How long the current child has run, while one runs.
    pub fn uptime(&self) -> Option<Duration> {
        lock(&self.shared.record).started.map(|s| s.elapsed())
    }

    /// How the last child ended.
    pub fn last_exit(&self) -> Option<LastExit> {
        lock(&self.shared.record).last_exit.clone()
    }

    /// The output of every child in order, stdout and stderr as they arrived, each child's
    /// lines after a marker line `--- attempt N (pid P) ---`; lossy UTF-8. The oldest bytes
    /// go first once the buffer (the options' output capacity) is full. Empty when capture is
    /// disabled.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output_bytes()).into_owned()
    }

    /// The bytes of [`output`](SupervisedProcess::output), exactly as written.
    pub fn output_bytes(&self) -> Vec<u8> {
        let Some(ring) = &self.shared.output else {
            return Vec::new();
        };
        // Under the record's lock, so an attempt ending meanwhile is seen once, not twice.
        let r = lock(&self.shared.record);
        let mut bytes = ring.bytes();
        if let Some(child) = &r.current {
            bytes.extend_from_slice(&child.output_bytes());
        }
        bytes
    }

    /// A serialisable snapshot.
    pub fn info(&self) -> SupervisedInfo {
        let state = self.state();
        let r = lock(&self.shared.record);
        SupervisedInfo {
            id: self.id().to_string(),
            command: self.shared.command.clone(),
            args: self.shared.args.clone(),
            state,
            attempts: r.attempts,
            restarts: r.restarts,
            process_id: r.current.as_ref().map(|p| p.id().to_string()),
            pid: r.current.as_ref().map(Process::pid),
            uptime: r.started.map(|s| s.elapsed()),
            last_exit: r.last_exit.clone(),
        }
    }

    /// Stops it: cancels a pending restart, stops the child with its stop signal and grace
    /// period (then SIGKILL), and returns once it is reaped and the state is
    /// [`Stopped`](SupervisionState::Stopped). Does nothing more on a stopped one.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.commands.send(Command::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Starts a child again now: from [`Fatal`](SupervisionState::Fatal) or
    /// [`Stopped`](SupervisionState::Stopped) with the backoff and the failed-start count
    /// reset; from `Backoff` without waiting for the delay; while a child runs, after
    /// stopping it with its grace period. Returns once the request is taken (wait with
    /// [`wait_for`](SupervisedProcess::wait_for)).
    ///
    /// # Errors
    /// [`Error::ShutDown`] once its supervisor has shut down.
    pub fn restart(&self) -> Result<()> {
        self.shared
            .commands
            .send(Command::Restart)
            .map_err(|_| Error::ShutDown {
                component: format!("supervised process {}", self.id()),
            })
    }

    /// Waits until the state satisfies `pred`, and returns that state.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&SupervisionState) -> bool,
    ) -> Result<SupervisionState> {
        let mut rx = self.shared.state.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            match rx.wait_for(|s| pred(s)).await {
                Ok(s) => s.clone(),
                Err(_) => self.state(),
            }
        });
        waited.await.map_err(|_| Error::Timeout {
            what: format!("supervised process {} (now {})", self.id(), self.state()),
            timeout,
        })
    }

    /// Waits until a child is ready.
    ///
    /// # Errors
    /// [`Error::NotReady`] when it reaches `Stopped` or `Fatal` first, or after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let state = self
            .wait_for(timeout, |s| s.is_ready() || s.is_terminal())
            .await
            .map_err(|e| Error::NotReady {
                name: self.id().to_string(),
                reason: e.to_string(),
            })?;
        if state.is_ready() {
            Ok(())
        } else {
            Err(Error::NotReady {
                name: self.id().to_string(),
                reason: format!("it is {state}"),
            })
        }
    }
}

impl fmt::Debug for SupervisedProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisedProcess")
            .field("id", &self.id())
            .field("command", &self.command())
            .field("state", &self.state())
            .field("attempts", &self.attempts())
            .finish_non_exhaustive()
    }
}

/// An optional duration as fractional seconds (`null` when absent).
mod secs_f64_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|secs| Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom))
            .transpose()
    }
}

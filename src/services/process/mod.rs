//! [`ProcessService`]: spawn, find and control managed processes; [`TokioProcessService`], the
//! implementation on tokio; [`Process`], the handle of one managed process; [`RunOptions`],
//! how to start one.
//!
//! - `mod.rs`: the [`ProcessService`] trait, [`DEFAULT_BUFFER_SIZE`], these caveats.
//! - `handle.rs`: [`Process`], the handle, and the state its driver records.
//! - `options.rs`: [`RunOptions`].
//! - `tokio.rs`: [`TokioProcessService`], which spawns and keeps the table of processes.
//! - `supervisor.rs`: the task that owns one child: signals, timeouts, reaping.
//! - `reader.rs`: draining a pipe into line batches.
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
//!   to pause ([`EventBus::output_pause`](crate::EventBus::output_pause)): the default bus pauses while a subscriber that keeps
//!   reading is more than half its window behind, so the child slows down instead of the
//!   subscriber missing lines; a subscriber silent for the stall time (100 ms by default) is
//!   left behind, misses output and is told how many lines
//!   ([`RecvError::Lagged`](crate::RecvError::Lagged)).
//!   See [`Backpressure`](crate::Backpressure). While paused, signals, kills, timeouts and the
//!   exit are still handled. After the exit, time spent paused while draining the pipes does
//!   not count against [`DRAIN_TIMEOUT`], but a single pause longer than it ends the pacing
//!   for the rest of that drain, so a process always ends.
//! - **File descriptors.** A child costs the manager 4 descriptors while it runs with default
//!   options (stdin, stdout, stderr and the exit pidfd; 3 with
//!   [`RunOptions::stdin(false)`](crate::RunOptions::stdin)). At the common soft limit of 20,000
//!   that is about 5,000 concurrent children; running out is an [`Error::Spawn`](crate::Error::Spawn), never a panic.

mod handle;
mod options;
mod reader;
mod supervisor;
mod tokio;

use std::sync::Arc;

use async_trait::async_trait;
use shaku::Interface;

use crate::error::Result;
use crate::lifecycle::Lifecycle;
use crate::services::event_bus::{EventBus as Bus, Subscription};

#[cfg(feature = "testing")]
pub(crate) use handle::Input;
pub use handle::Process;
pub(crate) use handle::{Control, ControlReceiver, Ending, Spec};
pub use options::{DEFAULT_GRACE_PERIOD, RunOptions};
pub use supervisor::DRAIN_TIMEOUT;
pub(crate) use supervisor::{Launch, prepare};
pub use tokio::{TokioProcessService, TokioProcessServiceParameters};

/// The default size of each process's output ring buffer: 1 MiB (storage grows with use).
pub const DEFAULT_BUFFER_SIZE: usize = 1024 * 1024;

/// Spawns, tracks and controls external processes.
///
/// Resolve it from [`ProcessModule`](crate::ProcessModule) as `Arc<dyn ProcessService>`; swap in
/// [`FakeProcessService`](crate::testing::FakeProcessService) (feature `testing`) or your own mock
/// in tests.
///
/// ```no_run
/// use std::sync::Arc;
/// use core_process::{ProcessModule, ProcessService, RunOptions};
/// use shaku::HasComponent;
///
/// # #[tokio::main] async fn main() -> core_process::Result<()> {
/// let module = ProcessModule::builder().build();
/// let service: Arc<dyn ProcessService> = module.resolve();
///
/// let out = service.run(RunOptions::new("echo").arg("hello")).await?;
/// assert_eq!(out, "hello\n");
///
/// let p = service.start(RunOptions::new("sleep").arg("60")).await?;
/// service.kill(p.id()).await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait ProcessService: Lifecycle + Interface {
    /// Starts a process and returns its handle at once.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions),
    /// [`Error::UnsupportedSignal`](crate::Error::UnsupportedSignal) or
    /// [`Error::WorkingDirectory`](crate::Error::WorkingDirectory) for bad options (nothing is
    /// spawned), [`Error::CommandNotFound`](crate::Error::CommandNotFound) when the program
    /// does not exist (as a path, or on the child's `PATH`), [`Error::Spawn`](crate::Error::Spawn)
    /// when the OS refuses to start it: not executable, a directory, neither a binary nor a
    /// `#!` script (ENOEXEC), a script whose `#!` interpreter is missing (the error names it),
    /// out of file descriptors or processes. The same with
    /// [`RunOptions::die_with_parent`] as without.
    async fn start(&self, opts: RunOptions) -> Result<Process>;

    /// The bus this service publishes its events on, when it has one (the default: `None`;
    /// [`TokioProcessService`] has one).
    fn events(&self) -> Option<Arc<dyn Bus>> {
        None
    }

    /// Subscribes to [`events`](Self::events), starts the process, and narrows the
    /// subscription to it ([`Subscription::only`]): the subscription cannot miss the process's
    /// `Started`, nor any of its output.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use core_process::{ProcessEvent, ProcessModule, ProcessService, RunOptions};
    /// use shaku::HasComponent;
    ///
    /// # #[tokio::main] async fn main() -> core_process::Result<()> {
    /// let module = ProcessModule::builder().build();
    /// let service: Arc<dyn ProcessService> = module.resolve();
    /// let (process, mut events) = service.start_subscribed(RunOptions::new("echo").arg("hi")).await?;
    /// assert!(matches!(events.recv().await, Ok(ProcessEvent::Started { .. })));
    /// # let _ = process; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Those of [`start`](Self::start);
    /// [`Error::NotConfigured`](crate::Error::NotConfigured) when the service has no bus.
    async fn start_subscribed(&self, opts: RunOptions) -> Result<(Process, Subscription)> {
        let Some(bus) = self.events() else {
            return Err(crate::Error::NotConfigured {
                component: "process service".into(),
                setting: "an event bus (ProcessService::events)",
            });
        };
        let events = bus.subscribe();
        let process = self.start(opts).await?;
        let id = process.id().to_string();
        Ok((process, events.only([id])))
    }

    /// Starts a process, waits for it, and returns its output (lossy UTF-8).
    ///
    /// The child reads end of file on its standard input (`/dev/null`, whatever
    /// [`RunOptions::stdin`](crate::RunOptions::stdin) says): `run` hands back no [`Process`], so nobody could write to
    /// a pipe or close it, and a program that reads its input (`cat`) would wait for ever.
    /// To feed it input, [`start`](ProcessService::start) it and use
    /// [`Process::send_input`].
    ///
    /// # Errors
    /// Those of [`start`](ProcessService::start), and those of [`Process::wait`]: a non-zero
    /// exit is [`Error::Exited`](crate::Error::Exited), which still carries the output.
    async fn run(&self, opts: RunOptions) -> Result<String> {
        let process = self.start(opts.stdin(false)).await?;
        process.wait().await?;
        Ok(process.output())
    }

    /// The process with this id.
    ///
    /// # Errors
    /// [`Error::ProcessNotFound`](crate::Error::ProcessNotFound) for an unknown (or removed) id.
    fn get(&self, id: &str) -> Result<Process>;

    /// Every process the service knows, in start order.
    fn list(&self) -> Vec<Process>;

    /// The processes still running, in start order.
    fn running(&self) -> Vec<Process> {
        self.list()
            .into_iter()
            .filter(Process::is_running)
            .collect()
    }

    /// Kills a process (SIGKILL to its group) and waits until it is reaped; nothing happens to a
    /// process that has already ended.
    ///
    /// # Errors
    /// [`Error::ProcessNotFound`](crate::Error::ProcessNotFound); [`Error::Signal`](crate::Error::Signal) when the OS refuses.
    async fn kill(&self, id: &str) -> Result<()> {
        self.get(id)?.kill().await
    }

    /// Forgets a finished process.
    ///
    /// # Errors
    /// [`Error::ProcessNotFound`](crate::Error::ProcessNotFound); [`Error::StillRunning`](crate::Error::StillRunning) when it runs.
    fn remove(&self, id: &str) -> Result<()>;

    /// Forgets every finished process.
    fn clear(&self);

    /// The captured output of a process.
    ///
    /// # Errors
    /// [`Error::ProcessNotFound`](crate::Error::ProcessNotFound).
    fn output(&self, id: &str) -> Result<String> {
        Ok(self.get(id)?.output())
    }

    /// Stops every running process that is not detached, concurrently, each with its grace
    /// period (stop signal, then SIGKILL), and returns once all are reaped.
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout) if some process is still not reaped after the longest grace period
    /// plus a margin (it has been sent SIGKILL by then).
    async fn shutdown(&self) -> Result<()>;
}

//! [`SupervisorService`]: keeps long-running children alive — restart policies with backoff
//! and a start limit, readiness and liveness probes, a memory limit; [`ProcessSupervisor`],
//! the implementation over an injected [`ProcessService`] and [`EventBus`];
//! [`SupervisedProcess`], the handle that keeps one id across restarts.
//!
//! - `mod.rs`: the [`SupervisorService`] trait and [`ProcessSupervisor`].
//! - `policy.rs`: [`SupervisePolicy`], [`RestartPolicy`], [`Backoff`], [`StartLimit`].
//! - `probe.rs`: [`Probe`] and its [`Check`]s.
//! - `state.rs`: [`SupervisionState`], [`LastExit`].
//! - `handle.rs`: [`SupervisedProcess`], [`SupervisedInfo`].
//! - `driver.rs`: the task that drives one supervised process.
//!
//! # How a process is supervised
//! One task per supervised process starts its children through the [`ProcessService`] (so
//! every child is an ordinary [`Process`](crate::Process) with its own `proc-N` id and
//! events), runs the readiness probe, then the liveness probe and the memory check, and when
//! the child ends applies the [`RestartPolicy`]: a child that ran less than
//! [`min_uptime`](SupervisePolicy::min_uptime) (or never became ready within
//! [`ready_timeout`](SupervisePolicy::ready_timeout), or could not be spawned) is a failed
//! start; the [`StartLimit`]-th failed start within its window ends in
//! [`SupervisionState::Fatal`]. Each transition is published on the bus as a lifecycle event
//! under the supervised id (`sup-N`): [`Attempt`](crate::ProcessEvent::Attempt),
//! [`Ready`](crate::ProcessEvent::Ready), [`Restarting`](crate::ProcessEvent::Restarting),
//! [`Fatal`](crate::ProcessEvent::Fatal), [`Stopped`](crate::ProcessEvent::Stopped) — never
//! dropped, in order. A finished child is removed from the process service once its output
//! is copied into the supervised process's continuous buffer.
//!
//! # Caveats
//! - **Stopping.** [`SupervisedProcess::stop`] cancels a pending restart and stops the child
//!   with its stop signal and grace period; [`SupervisorService::shutdown`] (what the
//!   module's lifecycle stop calls, before the process service's) does so for all and
//!   schedules no restart. Dropping the supervisor stops them in the background (the process
//!   service's own drop kills whatever is left). Cancelling the options'
//!   [`cancel`](crate::RunOptions::cancel) token stops the supervision like `stop()`.
//! - **Memory limit.** The resident memory of the child itself (not its descendants), read
//!   from `/proc` on Linux; elsewhere the limit is never reached.
//! - **Log-line probes** scan the child's captured output, so they need capture enabled.

mod driver;
mod handle;
mod policy;
mod probe;
mod state;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use shaku::{Component, Interface};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::services::event_bus::EventBus;
use crate::services::health::HealthCheck;
use crate::services::process::{DEFAULT_BUFFER_SIZE, ProcessService, RunOptions};
use crate::sync::lock;

pub use handle::{SupervisedInfo, SupervisedProcess};
pub use policy::{Backoff, RestartPolicy, StartLimit, SupervisePolicy};
pub use probe::{Check, LinePattern, Probe};
pub use state::{LastExit, SupervisionState};

/// Keeps processes alive: restarts them by policy, with backoff, probes and a start limit.
///
/// Resolve it from [`ProcessModule`](crate::ProcessModule) as `Arc<dyn SupervisorService>`.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use core_process::{Probe, ProcessModule, RestartPolicy, RunOptions, SupervisePolicy,
///     SupervisorService};
/// use shaku::HasComponent;
///
/// # #[tokio::main] async fn main() -> core_process::Result<()> {
/// let module = ProcessModule::builder().build();
/// let supervisor: Arc<dyn SupervisorService> = module.resolve();
///
/// let web = supervisor
///     .supervise(
///         RunOptions::new("my-server").arg("--port=8080"),
///         SupervisePolicy::new()
///             .restart(RestartPolicy::always())
///             .readiness(Probe::tcp("127.0.0.1:8080"))
///             .liveness(Probe::http("127.0.0.1:8080", "/healthz")),
///     )
///     .await?;
/// web.wait_ready(Duration::from_secs(10)).await?;
/// println!("{}", serde_json::to_string(&web.info()).unwrap());
/// supervisor.shutdown().await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait SupervisorService: Lifecycle + Interface {
    /// Starts `opts` under `policy` and returns its handle once the first child is spawned.
    ///
    /// # Errors
    /// Those of [`ProcessService::start`] for the first child (nothing is supervised then);
    /// [`Error::InvalidProbe`] for a log-line probe on options without captured output;
    /// [`Error::ShutDown`] once the supervisor has shut down.
    async fn supervise(
        &self,
        opts: RunOptions,
        policy: SupervisePolicy,
    ) -> Result<SupervisedProcess>;

    /// The supervised process with this id.
    ///
    /// # Errors
    /// [`Error::ProcessNotFound`] for an unknown (or removed) id.
    fn get(&self, id: &str) -> Result<SupervisedProcess>;

    /// Every supervised process, in start order.
    fn list(&self) -> Vec<SupervisedProcess>;

    /// Forgets a supervised process that is `Stopped` or `Fatal`.
    ///
    /// # Errors
    /// [`Error::ProcessNotFound`]; [`Error::StillRunning`] when it is in another state.
    fn remove(&self, id: &str) -> Result<()>;

    /// Stops every supervised process (each child with its grace period), schedules no
    /// restart, and returns once every child is reaped. Later calls to
    /// [`supervise`](SupervisorService::supervise) fail until the lifecycle starts again.
    ///
    /// # Errors
    /// [`Error::TaskFailed`] when a supervision task panicked.
    async fn shutdown(&self) -> Result<()>;

    /// A [`HealthCheck`] (for the daemon's `/health`, or polled to drive `/ready`) that passes
    /// while every supervised process is ready, those `Stopped` excepted, and fails naming the
    /// first one that is not.
    fn readiness_check(&self) -> HealthCheck;
}

/// The supervisor's table, shared with its readiness check.
#[derive(Default)]
struct Table {
    next: AtomicU64,
    entries: Mutex<Vec<SupervisedProcess>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closing: Mutex<CancellationToken>,
}

impl Drop for Table {
    fn drop(&mut self) {
        lock(&self.closing).cancel();
    }
}

/// [`SupervisorService`] over an injected [`ProcessService`] (which starts every child) and
/// [`EventBus`] (which carries the supervision events).
#[derive(Component)]
#[shaku(interface = SupervisorService)]
pub struct ProcessSupervisor {
    #[shaku(inject)]
    service: Arc<dyn ProcessService>,
    #[shaku(inject)]
    bus: Arc<dyn EventBus>,
    #[shaku(force_default)]
    table: Arc<Table>,
}

impl ProcessSupervisor {
    /// A supervisor starting its children on `service` and publishing on `bus`.
    pub fn new(service: Arc<dyn ProcessService>, bus: Arc<dyn EventBus>) -> Self {
        ProcessSupervisor {
            service,
            bus,
            table: Arc::default(),
        }
    }
}

impl fmt::Debug for ProcessSupervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessSupervisor")
            .field("supervised", &lock(&self.table.entries).len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lifecycle for ProcessSupervisor {
    async fn on_start(&self) -> Result<()> {
        let mut closing = lock(&self.table.closing);
        if closing.is_cancelled() {
            *closing = CancellationToken::new();
        }
        Ok(())
    }

    async fn on_stop(&self) -> Result<()> {
        self.shutdown().await
    }
}

fn shut_down() -> Error {
    Error::ShutDown {
        component: "ProcessSupervisor".into(),
    }
}

#[async_trait]
impl SupervisorService for ProcessSupervisor {
    async fn supervise(
        &self,
        mut opts: RunOptions,
        policy: SupervisePolicy,
    ) -> Result<SupervisedProcess> {
        if lock(&self.table.closing).is_cancelled() {
            return Err(shut_down());
        }
        for probe in std::iter::once(&policy.readiness).chain(policy.liveness.as_ref()) {
            if probe.needs_output() && opts.disable_capture {
                return Err(Error::InvalidProbe {
                    probe: probe.describe(),
                    reason: format!(
                        "the output of `{}` is not captured (disable_capture)",
                        opts.command_line()
                    ),
                });
            }
        }
        let cancel = opts.cancel.take();
        let seq = self.table.next.fetch_add(1, Ordering::Relaxed) + 1;
        let capture =
            (!opts.disable_capture).then(|| opts.output_capacity.unwrap_or(DEFAULT_BUFFER_SIZE));
        let (shared, commands) = handle::Shared::new(
            format!("sup-{seq}").into(),
            opts.command.clone(),
            opts.args.clone(),
            capture,
        );
        shared.next_attempt();
        let first = self.service.start(opts.clone()).await?;
        let supervised = SupervisedProcess {
            shared: shared.clone(),
        };
        // Registered under the token's lock: a shutdown either sees this task, or has
        // cancelled the token before we looked (and the child is stopped here).
        let closing = {
            let closing = lock(&self.table.closing);
            if closing.is_cancelled() {
                None
            } else {
                lock(&self.table.entries).push(supervised.clone());
                Some(closing.clone())
            }
        };
        let Some(closing) = closing else {
            first.stop(first.grace_period()).await;
            let _ = self.service.remove(first.id());
            return Err(shut_down());
        };
        driver::announce(&shared, self.bus.as_ref(), &first);
        let driver = driver::Driver {
            shared,
            service: self.service.clone(),
            bus: self.bus.clone(),
            policy,
            opts,
            cancel,
            closing: closing.clone(),
            commands,
        };
        let task = tokio::spawn(driver.run(first));
        let mut tasks = lock(&self.table.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        Ok(supervised)
    }

    fn get(&self, id: &str) -> Result<SupervisedProcess> {
        lock(&self.table.entries)
            .iter()
            .find(|s| s.id() == id)
            .cloned()
            .ok_or_else(|| Error::ProcessNotFound { id: id.to_string() })
    }

    fn list(&self) -> Vec<SupervisedProcess> {
        lock(&self.table.entries).clone()
    }

    fn remove(&self, id: &str) -> Result<()> {
        let supervised = self.get(id)?;
        if !supervised.state().is_terminal() {
            return Err(Error::StillRunning {
                id: id.to_string(),
                pid: supervised.pid().unwrap_or(0),
            });
        }
        lock(&self.table.entries).retain(|s| s.id() != id);
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        let tasks = {
            let closing = lock(&self.table.closing);
            closing.cancel();
            std::mem::take(&mut *lock(&self.table.tasks))
        };
        let mut errors = Vec::new();
        for task in tasks {
            if let Err(e) = task.await {
                errors.push(Error::TaskFailed {
                    what: "a supervision task".into(),
                    reason: e.to_string(),
                });
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Multiple(errors)),
        }
    }

    fn readiness_check(&self) -> HealthCheck {
        let table = Arc::downgrade(&self.table);
        HealthCheck::new(move || {
            let table = table.upgrade();
            async move {
                let Some(table) = table else {
                    return Err("the supervisor is gone".to_string());
                };
                let entries = lock(&table.entries).clone();
                for s in entries {
                    let state = s.state();
                    if !state.is_ready() && state != SupervisionState::Stopped {
                        return Err(format!("supervised process {} is {state}", s.id()));
                    }
                }
                Ok(())
            }
        })
    }
}

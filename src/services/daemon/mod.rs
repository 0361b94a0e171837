//! [`Daemon`]: the lifecycle of a long-running process — PID lock, health server, registry
//! entry — over the injected [`PidLock`], [`HealthService`] and [`Registry`];
//! [`DaemonService`], its interface; [`DaemonOptions`], its settings.
//!
//! ```text
//! start:  acquire lock ──▶ (ready again) ──▶ start health ──▶ (start control API, token file) ──▶ register ──▶ READY=1   (a failure undoes the earlier steps)
//! stop:   STOPPING=1 ──▶ not ready ──▶ drain delay ──▶ unregister ──▶ (stop control API) ──▶ stop health ──▶ release lock   (idempotent)
//! ```
//!
//! Which steps run: the lock step when the injected [`PidLock`] has a
//! [`path`](PidLock::path) (for [`FilePidLock`](crate::FilePidLock), its `path` parameter); the
//! health step when [`DaemonOptions::health`] is set (the address is the health service's
//! own parameter); the registry step when [`DaemonOptions::registry_entry`] is set. With the
//! defaults none runs, so a [`ProcessModule`](crate::ProcessModule) built without daemon
//! settings starts and stops its daemon harmlessly.
//!
//! Dropping [`start`](DaemonService::start)'s future part-way leaves nothing held: its steps
//! run on a task of their own, whose result undoes them when it is dropped unread (see its
//! "Cancel safety").
//!
//! # Control API
//! With feature `control`, [`DaemonService::set_control`] hands the daemon a
//! [`ControlServer`](crate::services::control::ControlServer), which it then serves as one of
//! its steps: on start, after the health server, it starts the control API (TCP or unix
//! socket), records its endpoint in the registry entry's [`control`](DaemonEntry::control)
//! field (`127.0.0.1:PORT` or `unix:/path`; go-process ignores it) and, when the registry
//! keeps files ([`Registry::entry_dir`]), writes its token beside the entry
//! ([`token_path`](crate::services::control::token_path), mode 0600), before the entry is
//! written; on stop, once the entry is unregistered, it stops the API, which removes the token
//! file and the socket file. So a client (the `core-process` command line) that finds the
//! entry finds the API and its token. A failed control start undoes the earlier steps like any
//! other.
//!
//! ```text
//! start:  lock ──▶ health ──▶ control API ──▶ token file ──▶ register ──▶ READY=1
//! stop:   not ready ──▶ drain ──▶ unregister ──▶ stop control API ──▶ stop health ──▶ release lock
//! ```
//!
//! # Warnings
//! At start the daemon logs a warning (`tracing`, level WARN) when its options ask for a step
//! whose service has nothing configured: [`health`](DaemonOptions::health) with a health
//! service that binds the default address ([`HealthService::uses_default_addr`]), or a
//! [`registry_entry`](DaemonOptions::registry_entry) with a registry in its default directory
//! ([`Registry::uses_default_dir`]). Either is what parameters set on a host's builder (and
//! silently ignored) look like; [`Config`](crate::Config) sets them where they count.
//!
//! # systemd
//! Under systemd (`NOTIFY_SOCKET` set; read once, when the daemon is built) the daemon tells
//! the service manager what it does, each as one `sd_notify` message: `STATUS=starting` when
//! a start begins; `READY=1`, `STATUS=ready; health on ADDR` and `MAINPID=` (ours) once the
//! start is done (the health server bound) and readiness is set ([`DaemonService::set_ready`];
//! true by default) — `STATUS=started, not ready` until then; `STATUS=start failed: ...`;
//! `STOPPING=1` with `STATUS=stopping` as a stop begins, `STATUS=draining for ...` during the
//! [drain delay](DaemonOptions::drain_delay), `STATUS=stopped` at its end. With a watchdog
//! (`WATCHDOG_USEC` set, `WATCHDOG_PID` ours or unset) a task pings `WATCHDOG=1` every half
//! interval, from the end of the start until the stop begins, only while
//! [`check_liveness`](HealthService::check_liveness) passes: a wedged daemon is restarted. When
//! the checks fail it says so in `STATUS=unhealthy: ...; watchdog withheld`. Outside systemd
//! none of this costs more than a flag test. Socket activation is the health server's (see
//! [`health`](crate::services::health#socket-activation)).
//!
//! # Caveats
//! - Processes the daemon spawns inherit `NOTIFY_SOCKET`; systemd only listens to the main
//!   process by default (`NotifyAccess=main`), so their messages are ignored.
//! - [`run`](DaemonService::run) installs tokio's SIGTERM and SIGINT handlers; from then on
//!   these signals no longer end the process by default, for the rest of its life.
//! - A daemon killed by SIGKILL runs no destructor: its registry entry stays behind (it is
//!   pruned by the next reader, its pid being dead) and its PID lock is freed by the kernel.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use shaku::{Component, Interface};
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::services::health::{HealthCheck, HealthService};
use crate::services::pid_lock::PidLock;
use crate::services::registry::{DaemonEntry, Registry};
use crate::sys;
use crate::types::Signal;

mod control;
mod notify;
mod steps;

use notify::Notifier;
use steps::{Core, Started};

/// The default bound on stopping the health server: 30 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The default drain delay of a stop: none.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::ZERO;

/// The future that tells [`DaemonService::run`] to stop: `Box::pin(async { ... })`.
pub type Shutdown<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What a [`Daemon`] does on start. The seed's `DaemonOptions`; the PID file path, the health
/// address and the registry directory are the parameters of the injected
/// [`FilePidLock`](crate::FilePidLock), [`WarpHealthServer`](crate::WarpHealthServer) and
/// [`FileRegistry`](crate::FileRegistry).
///
/// ```
/// use core_process::{DaemonEntry, DaemonOptions, HealthCheck};
/// use std::time::Duration;
///
/// let options = DaemonOptions {
///     health: true,
///     health_checks: vec![("db".into(), HealthCheck::new(|| async { Ok::<(), String>(()) }))],
///     registry_entry: Some(DaemonEntry::new("myapp", "server")),
///     ..Default::default()
/// };
/// assert_eq!(options.shutdown_timeout, Duration::from_secs(30));
/// assert_eq!(options.drain_delay, Duration::ZERO);
/// ```
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// How long stop waits for the health server (default [`DEFAULT_SHUTDOWN_TIMEOUT`], 30 s).
    pub shutdown_timeout: Duration,
    /// How long stop waits, once readiness is false, before it goes on (default
    /// [`DEFAULT_DRAIN_DELAY`]: none), so that load balancers see `/readyz` fail and stop
    /// sending traffic while the daemon still serves: Kubernetes' `--shutdown-delay-duration`.
    /// Only with a health server.
    pub drain_delay: Duration,
    /// Start the injected [`HealthService`] (default `false`).
    pub health: bool,
    /// Checks added to the health service on start. Their names must be valid
    /// ([`validate_check_name`](crate::services::health::validate_check_name)) and distinct:
    /// start refuses them otherwise, before any step.
    pub health_checks: Vec<(String, HealthCheck)>,
    /// The entry to register on start (default `None`: no registration). Its `pid`, `health`,
    /// `binary` (when empty) and `started` (when unset) are filled in.
    pub registry_entry: Option<DaemonEntry>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            drain_delay: DEFAULT_DRAIN_DELAY,
            health: false,
            health_checks: Vec::new(),
            registry_entry: None,
        }
    }
}

/// A daemon's lifecycle: single instance, health endpoints, registry entry.
///
/// Resolve it from [`ProcessModule`](crate::ProcessModule) as `Arc<dyn DaemonService>`; its
/// [`Lifecycle`] hooks are [`start`](DaemonService::start) and [`stop`](DaemonService::stop).
///
/// ```
/// use std::sync::Arc;
/// use core_process::{DaemonService, ProcessModule, WarpHealthServer, WarpHealthServerParameters,
///     Daemon, DaemonParameters, DaemonOptions};
/// use shaku::HasComponent;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> core_process::Result<()> {
/// let module = ProcessModule::builder()
///     .with_component_parameters::<Daemon>(DaemonParameters {
///         options: DaemonOptions { health: true, ..Default::default() },
///     })
///     .build();
/// let daemon: Arc<dyn DaemonService> = module.resolve();
/// daemon.start().await?;
/// let addr = daemon.health_addr().expect("health server started");
/// assert!(addr.ip().is_loopback());
/// daemon.run(Box::pin(async {})).await?; // returns at once: the shutdown future is ready
/// assert!(!daemon.is_running());
/// # Ok(()) }
/// ```
#[async_trait]
pub trait DaemonService: Lifecycle + Interface {
    /// Acquires the lock, starts the health server, registers — each step undone in reverse if
    /// a later one fails.
    ///
    /// # Errors
    /// [`Error::AlreadyStarted`] when started; [`Error::InvalidName`] for an invalid or
    /// repeated name in [`DaemonOptions::health_checks`]; otherwise the failing step's error:
    /// [`Error::AlreadyRunning`] from the lock, [`Error::Bind`] from the health server,
    /// [`Error::Io`] or [`Error::InvalidName`] from the registry. [`Error::TaskFailed`] when
    /// the runtime shuts down under it. A panic in a step reaches the caller.
    ///
    /// # Cancel safety
    /// Dropping the future (under `tokio::time::timeout`, or as the losing branch of a
    /// `select!`) at any point leaves nothing held: either the caller got `Ok` and the daemon
    /// is started, or the daemon is not started and its lock, health server and registry entry
    /// are (soon) given back. [`Daemon`] runs the steps on a task of its own (spawned on the
    /// current tokio runtime), so a drop never interrupts a step. The task hands its result
    /// to the caller over a channel; the daemon counts as started only once the caller has
    /// taken it, and a result dropped unread (the caller gone before or after it was sent)
    /// undoes every step, in reverse. Until everything is undone a new `start` or `stop`
    /// waits, so a `start` retried after a timeout succeeds (it neither finds the daemon
    /// "already running" nor fails with [`Error::AlreadyRunning`] naming this very process).
    /// Should the task itself be dropped or panic (a panicking [`Registry`], the runtime
    /// shutting down), the same guard undoes the steps already done: the lock at once when
    /// nothing else is to be undone, otherwise the registry entry, the health server and then
    /// the lock on a task of their own.
    async fn start(&self) -> Result<()>;

    /// Waits until `shutdown` resolves, SIGTERM or SIGINT arrives, or [`stop`](Self::stop) is
    /// called elsewhere; then stops.
    ///
    /// # Errors
    /// [`Error::NotStarted`] before [`start`](Self::start); the errors of
    /// [`stop`](Self::stop).
    async fn run(&self, shutdown: Shutdown<'_>) -> Result<()>;

    /// Marks not ready, waits [`DaemonOptions::drain_delay`] (with a health server),
    /// unregisters, stops the health server (bounded by [`DaemonOptions::shutdown_timeout`]),
    /// releases the lock. Every step is attempted; stopping a stopped daemon does nothing.
    ///
    /// # Errors
    /// The failing step's error ([`Error::Timeout`] when the health server outlives the bound),
    /// or [`Error::Multiple`].
    ///
    /// # Cancel safety
    /// When the future is dropped part-way, the daemon still reads as running, and a later
    /// `stop` attempts every step again.
    async fn stop(&self) -> Result<()>;

    /// Sets the readiness the health server reports on `/ready` and `/readyz`. Under systemd,
    /// the first `true` of a started daemon sends `READY=1`.
    ///
    /// Readiness is true by default. [`stop`](Self::stop) clears it, and the next
    /// [`start`](Self::start) sets it back to true, so a restarted daemon reports ready; a
    /// readiness set here is kept by start (a host may call `set_ready(false)` before start and
    /// `set_ready(true)` once it has warmed up).
    fn set_ready(&self, ready: bool);

    /// The health server's address while the daemon runs with one.
    fn health_addr(&self) -> Option<SocketAddr>;

    /// Whether the daemon is started (and not yet stopped).
    fn is_running(&self) -> bool;

    /// The entry registered on start, as written (with pid, health, control, binary and
    /// started).
    fn registered_entry(&self) -> Option<DaemonEntry>;

    /// Serves `control` (feature `control`) as one of the daemon's steps, from the next
    /// [`start`](Self::start) on (see [Control API](self#control-api)): started after the
    /// health server, its endpoint recorded in the registry entry's
    /// [`control`](DaemonEntry::control) field and its token written beside the entry before
    /// the entry is; stopped after the entry is unregistered. Replaces a control API set
    /// before. Do not start it yourself: the daemon's start would fail with
    /// [`Error::AlreadyStarted`].
    #[cfg(feature = "control")]
    fn set_control(&self, control: Arc<crate::services::control::ControlServer>);

    /// The bound on the whole stop of a module's lifecycles
    /// ([`Lifecycles::of_module`](crate::Lifecycles::of_module)):
    /// [`DaemonOptions::shutdown_timeout`]; [`DEFAULT_SHUTDOWN_TIMEOUT`] by default.
    fn shutdown_timeout(&self) -> Duration {
        DEFAULT_SHUTDOWN_TIMEOUT
    }
}

/// [`DaemonService`] over the injected [`PidLock`], [`HealthService`] and [`Registry`]. As a
/// shaku component its one parameter is `options` ([`DaemonOptions`], default: no step runs
/// but the lock, when the lock has a path). See the [module documentation](self).
#[derive(Component)]
#[shaku(interface = DaemonService)]
pub struct Daemon {
    #[shaku(inject)]
    lock: Arc<dyn PidLock>,
    #[shaku(inject)]
    health: Arc<dyn HealthService>,
    #[shaku(inject)]
    registry: Arc<dyn Registry>,
    /// What the daemon does on start (default [`DaemonOptions::default`]).
    #[shaku(default)]
    options: DaemonOptions,
    #[shaku(force_default)]
    state: Arc<State>,
}

/// Start and stop are serialised by `op` (held by a start until its caller has taken the
/// result, or until the start is undone); `snapshot` answers the sync getters; `ready_cleared`
/// says that readiness was last set by stop (so start restores it); `ready_sent` that
/// `READY=1` went out for this run; `stopping` that the first stop steps (not ready, drain)
/// are done for this run; `watchdog` is the task pinging systemd's watchdog.
struct State {
    op: Arc<tokio::sync::Mutex<()>>,
    snapshot: Mutex<Snapshot>,
    running: watch::Sender<bool>,
    ready_cleared: AtomicBool,
    notifier: Notifier,
    ready_sent: AtomicBool,
    stopping: AtomicBool,
    watchdog: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The control API to serve from the next start ([`DaemonService::set_control`]).
    control: Mutex<Option<control::Control>>,
}

impl Default for State {
    fn default() -> Self {
        State {
            op: Arc::new(tokio::sync::Mutex::new(())),
            snapshot: Mutex::new(Snapshot::default()),
            running: watch::channel(false).0,
            ready_cleared: AtomicBool::new(false),
            notifier: Notifier::from_env(),
            ready_sent: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            watchdog: Mutex::new(None),
            control: Mutex::new(None),
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(watchdog) = crate::sync::lock(&self.watchdog).take() {
            watchdog.abort();
        }
    }
}

#[derive(Default, Clone)]
struct Snapshot {
    running: bool,
    locked: bool,
    health: Option<SocketAddr>,
    entry: Option<DaemonEntry>,
    /// The control API served in this run.
    control: Option<control::Control>,
}

impl Daemon {
    /// A daemon over the given services, for use without a shaku module.
    pub fn new(
        options: DaemonOptions,
        lock: Arc<dyn PidLock>,
        health: Arc<dyn HealthService>,
        registry: Arc<dyn Registry>,
    ) -> Self {
        Daemon {
            lock,
            health,
            registry,
            options,
            state: Arc::default(),
        }
    }

    /// Its options.
    pub fn options(&self) -> &DaemonOptions {
        &self.options
    }

    fn snapshot(&self) -> MutexGuard<'_, Snapshot> {
        self.state.snapshot()
    }

    fn component(&self) -> String {
        component(&self.options)
    }

    /// Logs a warning for each step the options ask for whose service has nothing configured
    /// ([`HealthService::uses_default_addr`], [`Registry::uses_default_dir`]): the sign of
    /// parameters set on a host's builder, which are ignored. On the caller's thread, before
    /// the start's task.
    fn warn_unconfigured(&self) {
        let daemon = self.component();
        if self.options.health && self.health.uses_default_addr() {
            tracing::warn!(
                %daemon,
                addr = %crate::services::health::DEFAULT_HEALTH_ADDR,
                "the daemon asks for health but its health service has no address configured: \
                 it binds a free loopback port; set the health server's `addr` parameter on the \
                 module that builds it, or `health_addr` under [daemon] in the config \
                 (parameters set on a host's builder are ignored)"
            );
        }
        if self.options.registry_entry.is_some() && self.registry.uses_default_dir() {
            tracing::warn!(
                %daemon,
                dir = %self.registry.entry_dir().unwrap_or_default().display(),
                "the daemon asks for a registry entry but its registry has no directory \
                 configured: the entry goes to the default, shared one; set the registry's `dir` \
                 parameter on the module that builds it, or `registry_dir` under [daemon] in the \
                 config (parameters set on a host's builder are ignored)"
            );
        }
    }

    /// What a start's task needs, owned.
    fn core(&self) -> Core {
        Core {
            lock: self.lock.clone(),
            health: self.health.clone(),
            registry: self.registry.clone(),
            options: self.options.clone(),
            state: self.state.clone(),
        }
    }
}

impl State {
    fn snapshot(&self) -> MutexGuard<'_, Snapshot> {
        crate::sync::lock(&self.snapshot)
    }

    /// Stops the watchdog pings, waiting until the task is gone (so no ping can follow what
    /// is sent next).
    async fn stop_watchdog(&self) {
        let task = crate::sync::lock(&self.watchdog).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Under systemd, says the readiness of a started daemon: `READY=1` (with its status and
    /// `MAINPID=`) the first time it is ready in this run, a `STATUS=` line otherwise.
    fn notify_readiness(&self, ready: bool) {
        if !self.notifier.enabled() {
            return;
        }
        let health = {
            let snapshot = self.snapshot();
            if !snapshot.running {
                return;
            }
            snapshot.health
        };
        let status = notify::running_status(ready, health);
        if ready && !self.ready_sent.swap(true, Ordering::AcqRel) {
            self.notifier.ready(&status);
        } else {
            self.notifier.status(&status);
        }
    }
}

fn component(options: &DaemonOptions) -> String {
    match &options.registry_entry {
        Some(e) => format!("daemon {}/{}", e.code, e.daemon),
        None => "daemon".to_string(),
    }
}
impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.snapshot().clone();
        f.debug_struct("Daemon")
            .field("options", &self.options)
            .field("running", &s.running)
            .field("health_addr", &s.health)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lifecycle for Daemon {
    /// [`DaemonService::start`]; does nothing when already running.
    async fn on_start(&self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.start().await
    }

    /// [`DaemonService::stop`].
    async fn on_stop(&self) -> Result<()> {
        self.stop().await
    }

    /// Sends `STOPPING=1`, reports not ready and waits the [drain
    /// delay](DaemonOptions::drain_delay), before the rest of the group stops.
    async fn on_stopping(&self) {
        self.core().stopping_steps().await;
    }
}

#[async_trait]
impl DaemonService for Daemon {
    async fn start(&self) -> Result<()> {
        let op = self.state.op.clone().lock_owned().await;
        if self.snapshot().running {
            return Err(Error::AlreadyStarted {
                component: self.component(),
                detail: String::new(),
            });
        }
        self.warn_unconfigured();
        let core = self.core();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to spawn on: run the steps here (the rollback guard still applies).
            return core.start(op).await.map(Started::accept);
        };
        // The result travels as a value whose drop, unaccepted, undoes the start: handed back
        // by a failed send (the caller gone already), or dropped with the channel (the caller
        // gone after the send, before it took the value).
        let (result_tx, result_rx) = oneshot::channel::<Result<Started>>();
        let task = runtime.spawn(async move {
            let _ = result_tx.send(core.start(op).await);
        });
        match result_rx.await {
            Ok(result) => result.map(Started::accept),
            // The task ended without sending: it panicked or the runtime dropped it.
            Err(_) => match task.await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => Err(Error::TaskFailed {
                    what: format!("start of {}", self.component()),
                    reason: "the runtime is shutting down".into(),
                }),
            },
        }
    }

    async fn run(&self, shutdown: Shutdown<'_>) -> Result<()> {
        let mut running = self.state.running.subscribe();
        if !*running.borrow_and_update() {
            return Err(Error::NotStarted {
                component: self.component(),
            });
        }
        let signal = async {
            match sys::termination_signal().await {
                Ok(sig) => {
                    tracing::info!(signal = %Signal::from_number(sig), "daemon stopping on signal")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM/SIGINT; waiting for shutdown only");
                    std::future::pending::<()>().await;
                }
            }
        };
        let stopped_elsewhere = running.wait_for(|r| !*r);
        tokio::select! {
            () = shutdown => tracing::info!("daemon stopping on request"),
            () = signal => {}
            _ = stopped_elsewhere => return Ok(()),
        }
        self.stop().await
    }

    async fn stop(&self) -> Result<()> {
        let _op = self.state.op.lock().await;
        if !self.snapshot().running {
            return Ok(());
        }
        self.core().stop_steps().await
    }

    fn set_ready(&self, ready: bool) {
        self.state.ready_cleared.store(false, Ordering::Release);
        self.health.set_ready(ready);
        self.state.notify_readiness(ready);
    }

    fn health_addr(&self) -> Option<SocketAddr> {
        self.snapshot().health
    }

    fn is_running(&self) -> bool {
        self.snapshot().running
    }

    fn registered_entry(&self) -> Option<DaemonEntry> {
        self.snapshot().entry.clone()
    }

    #[cfg(feature = "control")]
    fn set_control(&self, control: Arc<crate::services::control::ControlServer>) {
        *crate::sync::lock(&self.state.control) = Some(control);
    }

    fn shutdown_timeout(&self) -> Duration {
        self.options.shutdown_timeout
    }
}

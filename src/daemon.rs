//! [`Daemon`]: the lifecycle of a long-running process — PID lock, health server, registry
//! entry — over the injected [`PidLock`], [`HealthService`] and [`Registry`];
//! [`DaemonService`], its interface; [`DaemonOptions`], its settings.
//!
//! ```text
//! start:  acquire lock ──▶ (ready again) ──▶ start health ──▶ register   (a failure undoes the earlier steps)
//! stop:   not ready ──▶ unregister ──▶ stop health ──▶ release lock     (idempotent)
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
//! # Caveats
//! - [`run`](DaemonService::run) installs tokio's SIGTERM and SIGINT handlers; from then on
//!   these signals no longer end the process by default, for the rest of its life.
//! - A daemon killed by SIGKILL runs no destructor: its registry entry stays behind (it is
//!   pruned by the next reader, its pid being dead) and its PID lock is freed by the kernel.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use shaku::{Component, Interface};
use tokio::sync::{OwnedMutexGuard, oneshot, watch};

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::services::health::{HealthCheck, HealthService};
use crate::services::pid_lock::PidLock;
use crate::services::registry::{DaemonEntry, Registry};
use crate::sys;

/// The default bound on stopping the health server: 30 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

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
/// ```
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// How long stop waits for the health server (default [`DEFAULT_SHUTDOWN_TIMEOUT`], 30 s).
    pub shutdown_timeout: Duration,
    /// Start the injected [`HealthService`] (default `false`).
    pub health: bool,
    /// Checks added to the health service on start.
    pub health_checks: Vec<(String, HealthCheck)>,
    /// The entry to register on start (default `None`: no registration). Its `pid`, `health`,
    /// `binary` (when empty) and `started` (when unset) are filled in.
    pub registry_entry: Option<DaemonEntry>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
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
    /// [`Error::AlreadyStarted`] when started; otherwise the failing step's error:
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

    /// Marks not ready, unregisters, stops the health server (bounded by
    /// [`DaemonOptions::shutdown_timeout`]), releases the lock. Every step is attempted; stopping
    /// a stopped daemon does nothing.
    ///
    /// # Errors
    /// The failing step's error ([`Error::Timeout`] when the health server outlives the bound),
    /// or [`Error::Multiple`].
    ///
    /// # Cancel safety
    /// When the future is dropped part-way, the daemon still reads as running, and a later
    /// `stop` attempts every step again.
    async fn stop(&self) -> Result<()>;

    /// Sets the readiness the health server reports on `/ready`.
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

    /// The entry registered on start, as written (with pid, health, binary and started).
    fn registered_entry(&self) -> Option<DaemonEntry>;
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
/// says that readiness was last set by stop (so start restores it).
struct State {
    op: Arc<tokio::sync::Mutex<()>>,
    snapshot: Mutex<Snapshot>,
    running: watch::Sender<bool>,
    ready_cleared: AtomicBool,
}

impl Default for State {
    fn default() -> Self {
        State {
            op: Arc::new(tokio::sync::Mutex::new(())),
            snapshot: Mutex::new(Snapshot::default()),
            running: watch::channel(false).0,
            ready_cleared: AtomicBool::new(false),
        }
    }
}

#[derive(Default, Clone)]
struct Snapshot {
    running: bool,
    locked: bool,
    health: Option<SocketAddr>,
    entry: Option<DaemonEntry>,
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
}

fn component(options: &DaemonOptions) -> String {
    match &options.registry_entry {
        Some(e) => format!("daemon {}/{}", e.code, e.daemon),
        None => "daemon".to_string(),
    }
}

/// The daemon's services, options and state, owned: what the start and stop steps work on, on
/// a task of their own if need be.
struct Core {
    lock: Arc<dyn PidLock>,
    health: Arc<dyn HealthService>,
    registry: Arc<dyn Registry>,
    options: DaemonOptions,
    state: Arc<State>,
}

impl Core {
    /// The registry entry with what start knows filled in.
    fn entry_to_register(&self, health: Option<SocketAddr>) -> Option<DaemonEntry> {
        let mut entry = self.options.registry_entry.clone()?;
        entry.pid = sys::current_pid();
        entry.pid_start_ticks = sys::process_start_time(entry.pid);
        if let Some(addr) = health {
            entry.health = addr.to_string();
        }
        if entry.binary.is_empty() {
            entry.binary = std::env::current_exe()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        if entry.started <= SystemTime::UNIX_EPOCH {
            entry.started = SystemTime::now();
        }
        Some(entry)
    }

    /// The start steps, holding `op` throughout. A failing step undoes the earlier ones; on
    /// success the steps done are handed back as [`Started`], which keeps `op` and undoes them
    /// all unless its caller [accepts](Started::accept) it.
    async fn start(self, op: OwnedMutexGuard<()>) -> Result<Started> {
        let mut undo = Rollback {
            lock: ReleaseLock(None),
            health: None,
            entry: None,
            runtime: tokio::runtime::Handle::try_current().ok(),
            op: Some(op),
        };
        let locked = match self.lock.path() {
            Some(_) => {
                self.lock.acquire()?;
                undo.lock = ReleaseLock(Some(self.lock.clone()));
                true
            }
            None => false,
        };

        let mut health = None;
        if self.options.health {
            for (name, check) in &self.options.health_checks {
                self.health.add_check(name, check.clone());
            }
            // Undo the "not ready" of a previous stop; a readiness the host set is kept.
            if self.state.ready_cleared.swap(false, Ordering::AcqRel) {
                self.health.set_ready(true);
            }
            match self.health.start().await {
                Ok(addr) => {
                    health = Some(addr);
                    undo.health = Some(self.health.clone());
                }
                Err(e) => {
                    undo.run().await;
                    return Err(e);
                }
            }
        }

        let entry = self.entry_to_register(health);
        if let Some(entry) = &entry {
            // Should this task be dropped while registering, the entry may be there or not.
            undo.entry = Some((
                self.registry.clone(),
                entry.code.clone(),
                entry.daemon.clone(),
            ));
            if let Err(e) = self.registry.register(entry.clone()).await {
                undo.entry = None;
                undo.run().await;
                return Err(e);
            }
        }

        Ok(Started {
            undo,
            snapshot: Snapshot {
                running: true,
                locked,
                health,
                entry,
            },
            state: self.state,
            daemon: component(&self.options),
        })
    }

    /// The stop steps; the caller holds `op`.
    async fn stop_steps(&self) -> Result<()> {
        let snapshot = self.state.snapshot().clone();
        if !snapshot.running {
            return Ok(());
        }
        let mut errors = Vec::new();
        if snapshot.health.is_some() {
            self.health.set_ready(false);
            self.state.ready_cleared.store(true, Ordering::Release);
        }
        if let Some(entry) = &snapshot.entry
            && let Err(e) = self.registry.unregister(&entry.code, &entry.daemon).await
        {
            errors.push(e);
        }
        if let Some(addr) = snapshot.health {
            let timeout = self.options.shutdown_timeout;
            match tokio::time::timeout(timeout, self.health.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(Error::Timeout {
                    what: format!("stopping the health server on {addr}"),
                    timeout,
                }),
            }
        }
        if snapshot.locked
            && let Err(e) = self.lock.release()
        {
            errors.push(e);
        }
        *self.state.snapshot() = Snapshot::default();
        self.state.running.send_replace(false);
        tracing::info!(daemon = %component(&self.options), "daemon stopped");
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Multiple(errors)),
        }
    }
}

/// A start whose steps are all done, on its way to the caller. The daemon counts as started
/// only once the caller [accepts](Self::accept) it; dropped unaccepted (the caller gone, the
/// value dropped in the channel or handed back by a failed send), its [`Rollback`] undoes
/// every step and only then frees `op`.
struct Started {
    undo: Rollback,
    snapshot: Snapshot,
    state: Arc<State>,
    daemon: String,
}

impl Started {
    /// Marks the daemon started and keeps every step; frees `op`. Synchronous, so that the
    /// caller cannot be dropped between taking the value and accepting it.
    fn accept(self) {
        let health = self.snapshot.health;
        *self.state.snapshot() = self.snapshot;
        self.state.running.send_replace(true);
        let op = self.undo.disarm();
        tracing::info!(daemon = %self.daemon, health = ?health, "daemon started");
        drop(op);
    }
}

/// Releases the PID lock it holds when dropped.
struct ReleaseLock(Option<Arc<dyn PidLock>>);

impl ReleaseLock {
    fn release(&mut self) {
        if let Some(lock) = self.0.take()
            && let Err(e) = lock.release()
        {
            tracing::error!(error = %e, "rollback: releasing the PID lock failed");
        }
    }
}

impl Drop for ReleaseLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// What a start has done so far, undone in reverse by [`run`](Self::run) or, should the start
/// be dropped or panic part-way or its [`Started`] be dropped unaccepted, by `Drop`: the lock
/// at once when nothing else is to be undone, otherwise unregister, health stop and release
/// on a task spawned on the start's runtime (or the current one). Holds the start's `op`
/// guard until everything is undone.
struct Rollback {
    lock: ReleaseLock,
    health: Option<Arc<dyn HealthService>>,
    entry: Option<(Arc<dyn Registry>, String, String)>,
    /// The runtime the start ran on: a [`Started`] may be dropped outside it (with the
    /// caller's future).
    runtime: Option<tokio::runtime::Handle>,
    /// Last, so that it is dropped last: after the lock is released.
    op: Option<OwnedMutexGuard<()>>,
}

impl Rollback {
    /// Undoes every step done, in reverse.
    async fn run(mut self) {
        if let Some((registry, code, daemon)) = self.entry.take()
            && let Err(e) = registry.unregister(&code, &daemon).await
        {
            tracing::error!(error = %e, "rollback: unregistering failed");
        }
        if let Some(health) = self.health.take()
            && let Err(e) = health.stop().await
        {
            tracing::error!(error = %e, "rollback: stopping the health server failed");
        }
        self.lock.release();
    }

    /// Keeps every step done; returns the `op` guard.
    fn disarm(mut self) -> Option<OwnedMutexGuard<()>> {
        self.lock.0 = None;
        self.health = None;
        self.entry = None;
        self.op.take()
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        let (entry, health) = (self.entry.take(), self.health.take());
        if entry.is_none() && health.is_none() {
            return; // the lock, if held, is released as the fields drop
        }
        let runtime = self
            .runtime
            .take()
            .or_else(|| tokio::runtime::Handle::try_current().ok());
        let Some(runtime) = runtime else {
            tracing::error!(
                "rollback: no tokio runtime to stop the health server or unregister on"
            );
            return;
        };
        let op = self.op.take();
        let mut lock = ReleaseLock(self.lock.0.take());
        tracing::warn!(
            "start interrupted, or its caller gone before taking the result; undoing its steps"
        );
        runtime.spawn(async move {
            if let Some((registry, code, daemon)) = entry
                && let Err(e) = registry.unregister(&code, &daemon).await
            {
                tracing::error!(error = %e, "rollback: unregistering failed");
            }
            if let Some(health) = health
                && let Err(e) = health.stop().await
            {
                tracing::error!(error = %e, "rollback: stopping the health server failed");
            }
            lock.release();
            drop(op);
        });
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
    fn name(&self) -> &str {
        "Daemon"
    }

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
                Ok(sig) => tracing::info!(signal = %sig, "daemon stopping on signal"),
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
}

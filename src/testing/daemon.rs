//! Fakes for the daemon services: [`MemoryRegistry`], [`FakePidLock`],
//! [`FakeHealthService`], a shared [`CallLog`] to check the order of calls across them, and
//! [`http_get`] to query a health server.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::services::health::{
    DEFAULT_CHECK_TIMEOUT, HealthCheck, HealthReport, HealthService, put_check, run_checks,
};
use crate::services::pid_lock::PidLock;
use crate::services::registry::{DaemonEntry, Registry, validate_name};

use crate::sync::lock;

/// A shared, ordered record of calls made on the fakes that were given it
/// (`"lock.acquire"`, `"health.start"`, `"registry.register core/agent"`, ...). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<String>>>);

impl CallLog {
    /// An empty log.
    pub fn new() -> Self {
        CallLog::default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.0).clone()
    }

    /// Forgets the calls so far.
    pub fn clear(&self) {
        lock(&self.0).clear();
    }

    fn push(&self, call: impl Into<String>) {
        lock(&self.0).push(call.into());
    }
}

/// Appends `call` to `log`, when the fake was given one.
fn record(log: &Option<CallLog>, call: impl Into<String>) {
    if let Some(log) = log {
        log.push(call);
    }
}

fn injected(op: &'static str, what: &str) -> Error {
    Error::io(
        op,
        PathBuf::from(what),
        std::io::Error::other("injected failure"),
    )
}

/// A [`Registry`] in memory. Names are validated, and an entry with pid 0 rejected, as
/// [`FileRegistry`](crate::FileRegistry) does; `started` is filled in on register. Dead
/// entries are kept unless [`with_pruning`](Self::with_pruning) is set. Every entry held was
/// registered through it, so `unregister` always removes it (the file registry's rule: an
/// entry registered by this registry is ours).
///
/// ```
/// use std::sync::Arc;
/// use core_process::{ProcessModule, Registry, DaemonEntry};
/// use core_process::testing::MemoryRegistry;
/// use shaku::HasComponent;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> core_process::Result<()> {
/// let module = ProcessModule::builder()
///     .with_component_override::<dyn Registry>(Box::new(MemoryRegistry::new()))
///     .build();
/// let registry: Arc<dyn Registry> = module.resolve();
/// let mut entry = DaemonEntry::new("app", "web");
/// entry.pid = std::process::id();
/// registry.register(entry).await?;
/// assert_eq!(registry.list().await?.len(), 1);
/// # Ok(()) }
/// ```
///
/// Cloning gives another handle to the same entries, so a test keeps one while the module
/// owns the other.
#[derive(Debug, Default, Clone)]
pub struct MemoryRegistry {
    shared: Arc<RegistryShared>,
    prune: bool,
    log: Option<CallLog>,
}

#[derive(Debug, Default)]
struct RegistryShared {
    entries: Mutex<BTreeMap<(String, String), DaemonEntry>>,
    fail_register: AtomicBool,
}

impl MemoryRegistry {
    /// An empty registry that keeps dead entries.
    pub fn new() -> Self {
        MemoryRegistry::default()
    }

    /// Prunes entries whose process is dead on get and list, as the file registry does.
    pub fn with_pruning(mut self) -> Self {
        self.prune = true;
        self
    }

    setters! {
        /// Records calls in `log`.
        with_log(log: CallLog) sets log => Some;
    }

    /// Makes every following register fail with an [`Error::Io`] (or succeed again).
    pub fn fail_register(&self, fail: bool) {
        self.shared.fail_register.store(fail, Ordering::SeqCst);
    }

    /// Every entry held, dead or alive, sorted by code then daemon name.
    pub fn entries(&self) -> Vec<DaemonEntry> {
        lock(&self.shared.entries).values().cloned().collect()
    }

    fn keep(&self, entry: &DaemonEntry) -> bool {
        !self.prune || entry.is_alive()
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, mut entry: DaemonEntry) -> Result<()> {
        record(
            &self.log,
            format!("registry.register {}/{}", entry.code, entry.daemon),
        );
        entry.validate()?;
        if self.shared.fail_register.load(Ordering::SeqCst) {
            return Err(injected("registering", &entry.file_name()?));
        }
        entry.fill_started();
        lock(&self.shared.entries).insert((entry.code.clone(), entry.daemon.clone()), entry);
        Ok(())
    }

    async fn unregister(&self, code: &str, daemon: &str) -> Result<()> {
        record(&self.log, format!("registry.unregister {code}/{daemon}"));
        validate_name("daemon code", code)?;
        validate_name("daemon name", daemon)?;
        lock(&self.shared.entries).remove(&(code.to_string(), daemon.to_string()));
        Ok(())
    }

    async fn get(&self, code: &str, daemon: &str) -> Result<Option<DaemonEntry>> {
        validate_name("daemon code", code)?;
        validate_name("daemon name", daemon)?;
        let mut entries = lock(&self.shared.entries);
        let key = (code.to_string(), daemon.to_string());
        match entries.get(&key) {
            Some(e) if self.keep(e) => Ok(Some(e.clone())),
            Some(_) => {
                entries.remove(&key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn list(&self) -> Result<Vec<DaemonEntry>> {
        let mut entries = lock(&self.shared.entries);
        entries.retain(|_, e| self.keep(e));
        Ok(entries.values().cloned().collect())
    }
}

/// A [`PidLock`] in memory: one holder at a time per `FakePidLock`, no file. It can be made to
/// look held by another process ([`held_by`](Self::held_by)) and counts its calls.
///
/// Cloning gives another handle to the same lock.
#[derive(Debug, Clone)]
pub struct FakePidLock {
    path: Option<PathBuf>,
    shared: Arc<LockShared>,
    log: Option<CallLog>,
}

#[derive(Debug, Default)]
struct LockShared {
    locked: AtomicBool,
    other_holder: Mutex<Option<u32>>,
    acquires: AtomicUsize,
    releases: AtomicUsize,
}

impl FakePidLock {
    /// A free lock that reports the path `fake.pid`.
    pub fn new() -> Self {
        FakePidLock {
            path: Some(PathBuf::from("fake.pid")),
            shared: Arc::default(),
            log: None,
        }
    }

    /// A lock with no path: [`Daemon`](crate::Daemon) skips it.
    pub fn without_path() -> Self {
        FakePidLock {
            path: None,
            ..FakePidLock::new()
        }
    }

    setters! {
        /// Records calls in `log`.
        with_log(log: CallLog) sets log => Some;
    }

    /// Makes the lock look held by process `pid` (`None`: free again): acquire then fails
    /// with [`Error::AlreadyRunning`].
    pub fn held_by(&self, pid: Option<u32>) {
        *lock(&self.shared.other_holder) = pid;
    }

    /// How many times acquire was called.
    pub fn acquires(&self) -> usize {
        self.shared.acquires.load(Ordering::SeqCst)
    }

    /// How many times release was called.
    pub fn releases(&self) -> usize {
        self.shared.releases.load(Ordering::SeqCst)
    }
}

impl Default for FakePidLock {
    fn default() -> Self {
        FakePidLock::new()
    }
}

#[async_trait]
impl Lifecycle for FakePidLock {
    async fn on_stop(&self) -> Result<()> {
        self.release()
    }
}

impl PidLock for FakePidLock {
    fn acquire(&self) -> Result<()> {
        self.shared.acquires.fetch_add(1, Ordering::SeqCst);
        record(&self.log, "lock.acquire");
        let path = self.path.clone().unwrap_or_default();
        if let Some(pid) = *lock(&self.shared.other_holder) {
            return Err(Error::AlreadyRunning { pid, path });
        }
        if self.shared.locked.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyRunning {
                pid: std::process::id(),
                path,
            });
        }
        Ok(())
    }

    fn release(&self) -> Result<()> {
        self.shared.releases.fetch_add(1, Ordering::SeqCst);
        record(&self.log, "lock.release");
        self.shared.locked.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn is_locked(&self) -> bool {
        self.shared.locked.load(Ordering::SeqCst)
    }

    fn path(&self) -> Option<PathBuf> {
        self.path.clone()
    }
}

/// A [`HealthService`] without a network: start "binds" a fixed address (default
/// `127.0.0.1:9`), [`check`](HealthService::check) runs the added checks (and
/// [`check_liveness`](HealthService::check_liveness) the liveness ones, with no start-up
/// grace), names are validated as [`WarpHealthServer`](crate::WarpHealthServer) validates
/// them, and start can be made to fail with [`Error::Bind`].
///
/// Cloning gives another handle to the same service (its checks, counts and state).
#[derive(Debug, Clone)]
pub struct FakeHealthService {
    addr: SocketAddr,
    shared: Arc<HealthShared>,
    log: Option<CallLog>,
}

#[derive(Debug)]
struct HealthShared {
    bound: Mutex<Option<SocketAddr>>,
    ready: AtomicBool,
    checks: Mutex<Vec<(String, HealthCheck)>>,
    fail_start: AtomicBool,
    starts: AtomicUsize,
    stops: AtomicUsize,
}

impl FakeHealthService {
    /// A stopped, ready service that reports `127.0.0.1:9` once started.
    pub fn new() -> Self {
        FakeHealthService {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
            shared: Arc::new(HealthShared {
                bound: Mutex::new(None),
                ready: AtomicBool::new(true),
                checks: Mutex::new(Vec::new()),
                fail_start: AtomicBool::new(false),
                starts: AtomicUsize::new(0),
                stops: AtomicUsize::new(0),
            }),
            log: None,
        }
    }

    setters! {
        /// Reports `addr` once started.
        with_addr(addr: SocketAddr) sets addr;
        /// Records calls in `log`.
        with_log(log: CallLog) sets log => Some;
    }

    /// Makes every following start fail with [`Error::Bind`] (or succeed again).
    pub fn fail_start(&self, fail: bool) {
        self.shared.fail_start.store(fail, Ordering::SeqCst);
    }

    /// How many times start was called.
    pub fn starts(&self) -> usize {
        self.shared.starts.load(Ordering::SeqCst)
    }

    /// How many times stop was called.
    pub fn stops(&self) -> usize {
        self.shared.stops.load(Ordering::SeqCst)
    }

    /// The names of the added checks, in order.
    pub fn check_names(&self) -> Vec<String> {
        lock(&self.shared.checks)
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl Default for FakeHealthService {
    fn default() -> Self {
        FakeHealthService::new()
    }
}

#[async_trait]
impl Lifecycle for FakeHealthService {
    async fn on_stop(&self) -> Result<()> {
        self.stop().await
    }
}

#[async_trait]
impl HealthService for FakeHealthService {
    async fn start(&self) -> Result<SocketAddr> {
        self.shared.starts.fetch_add(1, Ordering::SeqCst);
        record(&self.log, "health.start");
        if self.shared.fail_start.load(Ordering::SeqCst) {
            return Err(Error::Bind {
                addr: self.addr.to_string(),
                source: std::io::Error::other("injected failure"),
            });
        }
        let mut bound = lock(&self.shared.bound);
        if bound.is_some() {
            return Err(Error::AlreadyStarted {
                component: "FakeHealthService".into(),
                detail: format!("serving on {}", self.addr),
            });
        }
        *bound = Some(self.addr);
        Ok(self.addr)
    }

    async fn stop(&self) -> Result<()> {
        self.shared.stops.fetch_add(1, Ordering::SeqCst);
        record(&self.log, "health.stop");
        *lock(&self.shared.bound) = None;
        Ok(())
    }

    fn add_check(&self, name: &str, check: HealthCheck) {
        put_check(&mut lock(&self.shared.checks), name, check);
    }

    fn check_names(&self) -> Vec<String> {
        FakeHealthService::check_names(self)
    }

    fn set_ready(&self, ready: bool) {
        record(
            &self.log,
            if ready {
                "health.ready"
            } else {
                "health.not_ready"
            },
        );
        self.shared.ready.store(ready, Ordering::SeqCst);
    }

    fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    fn addr(&self) -> Option<SocketAddr> {
        *lock(&self.shared.bound)
    }

    async fn check(&self) -> HealthReport {
        let checks = lock(&self.shared.checks).clone();
        run_checks(&checks, DEFAULT_CHECK_TIMEOUT).await
    }

    async fn check_liveness(&self) -> HealthReport {
        let checks = lock(&self.shared.checks).clone();
        let live = checks.iter().filter(|(_, c)| c.probe_kind().is_liveness());
        run_checks(live, DEFAULT_CHECK_TIMEOUT).await
    }
}

/// `GET http://{addr}{target}` (HTTP/1.0, at most 10 s): the status and the body. `accept`
/// sets the `Accept` header. For asserting on a [`WarpHealthServer`](crate::WarpHealthServer).
///
/// # Errors
/// Connection, I/O and timeout errors, and a response that is not HTTP.
pub async fn http_get(
    addr: SocketAddr,
    target: &str,
    accept: Option<&str>,
) -> std::io::Result<(u16, String)> {
    crate::services::health::http_get(&addr.to_string(), target, accept, Duration::from_secs(10))
        .await
}

//! [`HealthService`]: HTTP health endpoints, go-process's `/health` and `/ready` and the
//! Kubernetes probes `/livez` and `/readyz`; [`WarpHealthServer`], the implementation on warp;
//! [`HealthCheck`], a named probe of a [`CheckKind`]; [`wait_for_health`], the client side.
//!
//! # Endpoints
//! Every endpoint answers `GET` and `HEAD` (the same status and headers, no body).
//! - `/health` runs every check, concurrently, each cut off by its timeout. `200 ok` when
//!   all pass; otherwise `503` with `unhealthy: ` and each failing check as `name: reason`
//!   (`; `-separated). A check that hangs counts as failed once its timeout expires.
//! - `/ready` answers `200 ready` or `503 not ready` by the readiness flag (ready by
//!   default; [`Daemon::stop`](crate::DaemonService::stop) clears it first and the next
//!   [`Daemon::start`](crate::DaemonService::start) sets it again).
//! - Either answers JSON ([`HealthReport`], or `{"ready": bool}`) when the request carries
//!   `Accept: application/json` or a `verbose` query parameter (`/health?verbose`;
//!   `verbose=0` and `verbose=false` are not verbose).
//! - `/livez` runs the liveness checks ([`CheckKind::Liveness`] and [`CheckKind::Both`]);
//!   `/readyz` the readiness flag (as a line named `ready`) and the readiness checks
//!   ([`CheckKind::Readiness`] and [`CheckKind::Both`]). They answer as the Kubernetes
//!   apiserver does: `200 ok` when everything passes; with `?verbose`, a `[+]name ok` line per
//!   check and `livez check passed`; on a failure `503` with a line per check
//!   (`[-]name failed: reason withheld`, or the reason with `?verbose`) and `livez check
//!   failed`. `?exclude=name` (repeated, or comma-separated) skips checks (`[+]name excluded:
//!   ok`; a name that matches nothing gives a `warn:` line). JSON ([`HealthReport`]) with
//!   `Accept: application/json`.
//! - `/livez/{name}` and `/readyz/{name}` run that one check: `200 ok`, `503 [-]name failed:
//!   reason`, or `404` when there is no such check of that kind.
//! - **Start-up grace**: from [`start`](HealthService::start) until the first successful
//!   readiness (a `/readyz` that passes), bounded by the server's start-up grace period
//!   ([`DEFAULT_STARTUP_GRACE`]), failing liveness checks do not fail `/livez` (nor
//!   [`check_liveness`](HealthService::check_liveness)), so a slow start is not killed.
//!
//! Check names are non-empty and hold no `:`, whitespace or control character
//! ([`validate_check_name`]); [`HealthService::try_add_check`] also refuses a name already
//! taken.
//!
//! Every request is served on its own task, so a slow check never delays `/ready`. The checks
//! of one request run concurrently on that request's task.
//!
//! # Socket activation
//! When the service manager passes a listening TCP socket (`LISTEN_FDS`, with `LISTEN_PID`
//! naming this process; the one named `health` in `LISTEN_FDNAMES`, else the first),
//! [`WarpHealthServer`] serves it instead of binding its address; the first server started
//! in the process takes it, and keeps it across its restarts. Outside socket activation this
//! is one environment lookup per start.
//!
//! # Caveats
//! A [`HealthCheck::blocking`] check runs on tokio's blocking pool; when it hangs, its thread
//! stays busy until the closure returns. The check is not started again while a previous run
//! is still going (it reports failure instead), so a hung check ties up one thread, not one
//! per request.

mod client;
mod probe;
mod warp;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shaku::Interface;

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;

pub(crate) use client::http_get;
pub use client::wait_for_health;
pub use warp::{
    DEFAULT_STARTUP_GRACE, DEFAULT_STOP_TIMEOUT, WarpHealthServer, WarpHealthServerParameters,
};

/// Where [`WarpHealthServer`] listens unless told otherwise: loopback, a port chosen by the OS.
pub const DEFAULT_HEALTH_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// How long one check may run before it counts as failed, unless it sets its own
/// ([`HealthCheck::timeout`]).
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

type CheckFuture = Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>>;

/// Which probes a [`HealthCheck`] answers: Kubernetes' liveness (`/livez`: restart me when it
/// fails) and readiness (`/readyz`: send me no traffic when it fails). `/health` runs every
/// check whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CheckKind {
    /// Only `/livez` (and the systemd watchdog) run it.
    Liveness,
    /// Only `/readyz` runs it.
    Readiness,
    /// Both do (the default, and what [`HealthService::add_check`] registers unless the
    /// check says otherwise).
    #[default]
    Both,
}

impl CheckKind {
    /// Whether a check of this kind is a liveness check.
    pub fn is_liveness(self) -> bool {
        matches!(self, CheckKind::Liveness | CheckKind::Both)
    }

    /// Whether a check of this kind is a readiness check.
    pub fn is_readiness(self) -> bool {
        matches!(self, CheckKind::Readiness | CheckKind::Both)
    }
}

/// Checks a health check's name: non-empty, no `:` (it separates a name from its reason in
/// `/health`), no whitespace or control character (it could not be a URL segment of
/// `/livez/{name}` nor a line of `?verbose`).
///
/// ```
/// use core_process::services::health::validate_check_name;
/// assert!(validate_check_name("db").is_ok());
/// assert!(validate_check_name("poststarthook/cache").is_ok());
/// assert!(validate_check_name("db: primary").is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidName`] (`what`: "check name") saying what is wrong.
pub fn validate_check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.contains(':') {
        "it contains `:`"
    } else if name.chars().any(char::is_whitespace) {
        "it contains whitespace"
    } else if name.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        what: "check name",
        name: name.escape_debug().to_string(),
        reason,
    })
}

/// The error for a check name that is already taken.
pub(crate) fn duplicate_check(name: &str) -> Error {
    Error::InvalidName {
        what: "check name",
        name: name.escape_debug().to_string(),
        reason: "another check has this name",
    }
}

/// Adds `check` to `checks` as `name`, replacing the check of that name: what
/// [`HealthService::add_check`] does, for every implementation in the crate. A name that
/// [`validate_check_name`] refuses is not added; the error is logged.
pub(crate) fn put_check(checks: &mut Vec<(String, HealthCheck)>, name: &str, check: HealthCheck) {
    if let Err(e) = validate_check_name(name) {
        tracing::error!(error = %e, "health check not added");
        return;
    }
    match checks.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = check,
        None => checks.push((name.to_string(), check)),
    }
}

/// A named probe's body: resolves `Ok(())` when healthy, `Err(reason)` otherwise. The seed's
/// `HealthCheck func() error`, made async and bounded by a timeout. Cheap to clone.
///
/// ```
/// use core_process::HealthCheck;
/// use core_process::services::health::CheckKind;
/// use std::time::Duration;
///
/// let always = HealthCheck::new(|| async { Ok::<(), String>(()) });
/// let disk = HealthCheck::blocking(|| {
///     std::fs::metadata("/").map(|_| ()).map_err(|e| format!("cannot stat /: {e}"))
/// })
/// .timeout(Duration::from_secs(1))
/// .kind(CheckKind::Readiness);
/// # let _ = (always, disk);
/// ```
#[derive(Clone)]
pub struct HealthCheck {
    run: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
    timeout: Option<Duration>,
    kind: CheckKind,
}

impl HealthCheck {
    /// A check from an async closure; its error is displayed as the reason.
    pub fn new<F, Fut, E>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        HealthCheck {
            run: Arc::new(move || {
                let fut = f();
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
            timeout: None,
            kind: CheckKind::Both,
        }
    }

    /// A check from a blocking closure (the seed's `func() error`), run on tokio's blocking
    /// pool. While a run is still going, a new request reports failure instead of starting
    /// another (see the module's "Caveats"). A run that panics counts as failed, with the panic
    /// message as the reason; the next request runs the closure again.
    pub fn blocking<F, E>(f: F) -> Self
    where
        F: Fn() -> std::result::Result<(), E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        let f = Arc::new(f);
        let busy = Arc::new(AtomicBool::new(false));
        HealthCheck {
            run: Arc::new(move || {
                let f = f.clone();
                let busy = busy.clone();
                Box::pin(async move {
                    if busy.swap(true, Ordering::AcqRel) {
                        return Err("its previous run has not finished".to_string());
                    }
                    let done = ClearOnDrop(busy.clone());
                    let joined = tokio::task::spawn_blocking(move || {
                        // Cleared when the run ends, by returning or by panicking.
                        let _done = done;
                        f().map_err(|e| e.to_string())
                    })
                    .await;
                    joined.unwrap_or_else(|e| Err(join_failure(e)))
                })
            }),
            timeout: None,
            kind: CheckKind::Both,
        }
    }

    setters! {
        /// Sets this check's own timeout (instead of the server's default).
        timeout(timeout: Duration) => Some;
        /// Sets which probes run this check (default [`CheckKind::Both`]).
        kind(kind: CheckKind);
    }

    /// Which probes run this check.
    pub(crate) fn probe_kind(&self) -> CheckKind {
        self.kind
    }

    /// Runs the check once, bounded by its timeout or `default_timeout`.
    async fn run(&self, name: String, default_timeout: Duration) -> CheckResult {
        let limit = self.timeout.unwrap_or(default_timeout);
        let started = Instant::now();
        let outcome = tokio::time::timeout(limit, (self.run)()).await;
        let reason = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some(reason),
            Err(_) => Some(format!("timed out after {limit:?}")),
        };
        CheckResult {
            name,
            ok: reason.is_none(),
            reason,
            duration: started.elapsed(),
        }
    }
}

/// Clears a [`HealthCheck::blocking`] check's "running" flag when dropped, so a run that panics
/// does not leave the check looking busy forever.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Why a blocking check's run did not return: its panic message, when it has one.
fn join_failure(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "the check was cancelled".to_string();
    }
    panicked(&*e.into_panic())
}

/// The reason reported for a check that panicked with `payload`: its message, when it has one.
fn panicked(payload: &(dyn std::any::Any + Send)) -> String {
    match payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
    {
        Some(message) => format!("the check panicked: {message}"),
        None => "the check panicked".to_string(),
    }
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheck")
            .field("timeout", &self.timeout)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why it failed (absent when it passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long it ran, in seconds (fractional) in JSON.
    #[serde(with = "crate::types::secs_f64")]
    pub duration: Duration,
}

/// The outcome of every check: what `GET /health` reports (as JSON when asked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Whether every check passed (true when there are none).
    pub healthy: bool,
    /// Each check's outcome, in the order the checks were added.
    pub checks: Vec<CheckResult>,
}

impl HealthReport {
    /// The failing checks as `name: reason`, `; `-separated (empty when healthy).
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.reason.as_deref().unwrap_or("failed")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Runs `checks` concurrently, each bounded by its timeout, on the calling task: the checks
/// are polled side by side (every one of them on each wake-up, which for a handful of checks
/// is cheaper than a task each). A check that panics is reported as failed, with its panic
/// message, and the others still report.
pub(crate) async fn run_checks<'a>(
    checks: impl IntoIterator<Item = &'a (String, HealthCheck)>,
    default_timeout: Duration,
) -> HealthReport {
    let checks: Vec<&(String, HealthCheck)> = checks.into_iter().collect();
    let mut running: Vec<_> = checks
        .iter()
        .map(|(name, check)| Some(Box::pin(check.run(name.clone(), default_timeout))))
        .collect();
    let mut results: Vec<Option<CheckResult>> = vec![None; checks.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for ((slot, result), (name, _)) in running.iter_mut().zip(results.iter_mut()).zip(&checks) {
            let Some(check) = slot else { continue };
            match std::panic::catch_unwind(AssertUnwindSafe(|| check.as_mut().poll(cx))) {
                Ok(Poll::Pending) => pending = true,
                Ok(Poll::Ready(r)) => {
                    *result = Some(r);
                    *slot = None;
                }
                Err(payload) => {
                    *result = Some(CheckResult {
                        name: name.clone(),
                        ok: false,
                        reason: Some(panicked(&*payload)),
                        duration: Duration::ZERO,
                    });
                    *slot = None;
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    drop(running);
    let checks: Vec<CheckResult> = results.into_iter().flatten().collect();
    HealthReport {
        healthy: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// HTTP health and readiness endpoints for monitoring.
///
/// Resolve it from [`ProcessModule`](crate::ProcessModule) as `Arc<dyn HealthService>`, or use a
/// [`WarpHealthServer`] directly; [`Daemon`](crate::Daemon) starts it when told to. Its
/// [`Lifecycle::on_stop`] stops it.
///
/// ```
/// use core_process::{HealthCheck, HealthService, WarpHealthServer, wait_for_health};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> core_process::Result<()> {
/// let server = WarpHealthServer::new("127.0.0.1:0".parse().unwrap());
/// server.add_check("db", HealthCheck::new(|| async { Ok::<(), String>(()) }));
/// let addr = server.start().await?;
/// assert!(wait_for_health(&addr.to_string(), Duration::from_secs(5)).await);
/// assert!(server.check().await.healthy);
/// server.stop().await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait HealthService: Lifecycle + Interface {
    /// Binds and starts serving; returns the bound address (with the real port when port 0
    /// was asked for).
    ///
    /// # Errors
    /// [`Error::Bind`] naming the address when it cannot be bound; [`Error::AlreadyStarted`] when
    /// the server already runs.
    async fn start(&self) -> Result<SocketAddr>;

    /// Stops serving, letting open requests finish (within a bound). Does nothing when not
    /// started.
    ///
    /// # Errors
    /// Implementation-specific; [`WarpHealthServer`] does not fail.
    async fn stop(&self) -> Result<()>;

    /// Adds a named check, replacing any check with the same name. The check's
    /// [`kind`](HealthCheck::kind) says which probes run it ([`CheckKind::Both`] unless set).
    ///
    /// A name that [`validate_check_name`] refuses is not added: the check is dropped with an
    /// error logged. [`try_add_check`](Self::try_add_check) returns that error instead.
    fn add_check(&self, name: &str, check: HealthCheck);

    /// Adds a named check whose name is valid ([`validate_check_name`]) and not taken.
    ///
    /// # Errors
    /// [`Error::InvalidName`] (`what`: "check name") when the name is invalid or another
    /// check already has it; nothing is added then.
    fn try_add_check(&self, name: &str, check: HealthCheck) -> Result<()> {
        validate_check_name(name)?;
        if self.check_names().iter().any(|n| n == name) {
            return Err(duplicate_check(name));
        }
        self.add_check(name, check);
        Ok(())
    }

    /// The names of the checks added, in order. (The default, for implementations that do
    /// not list their checks, is empty.)
    fn check_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// Sets the readiness flag reported by `/ready` and `/readyz`.
    fn set_ready(&self, ready: bool);

    /// The readiness flag (true until set otherwise).
    fn is_ready(&self) -> bool;

    /// The bound address while serving.
    fn addr(&self) -> Option<SocketAddr>;

    /// Whether it binds a default address because none was configured (a
    /// [`WarpHealthServer`] whose `addr` is [`DEFAULT_HEALTH_ADDR`], outside socket
    /// activation: a free loopback port that only the registry entry tells). A daemon asked
    /// for health logs a warning at start when this is true: an address set on a host's
    /// module builder is silently ignored (see [`module`](crate::module)). An address
    /// configured equal to the default counts as not configured. The default is `false`.
    fn uses_default_addr(&self) -> bool {
        false
    }

    /// Runs every check now, as `GET /health` does.
    async fn check(&self) -> HealthReport;

    /// Runs the liveness checks now, as `GET /livez` does: within the start-up grace a failing
    /// check leaves the report healthy (its result still says it failed). The systemd
    /// watchdog pings only while this is healthy. (The default runs [`check`](Self::check).)
    async fn check_liveness(&self) -> HealthReport {
        self.check().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_times_out_and_others_still_report() {
        let checks = vec![
            (
                "fine".to_string(),
                HealthCheck::new(|| async { Ok::<(), String>(()) }),
            ),
            (
                "hangs".to_string(),
                HealthCheck::new(std::future::pending::<std::result::Result<(), String>>),
            ),
            (
                "fails".to_string(),
                HealthCheck::new(|| async { Err("disk full") }),
            ),
        ];
        let report = run_checks(&checks, Duration::from_secs(3)).await;
        assert!(!report.healthy);
        assert_eq!(
            report.failures(),
            "hangs: timed out after 3s; fails: disk full"
        );
        assert!(report.checks[0].ok);
    }

    #[tokio::test]
    async fn a_blocking_check_that_panics_once_fails_once_then_runs_again() {
        let panicked = Arc::new(AtomicBool::new(false));
        let once = panicked.clone();
        let check = HealthCheck::blocking(move || {
            if !once.swap(true, Ordering::SeqCst) {
                panic!("disk probe exploded");
            }
            Ok::<(), String>(())
        });
        let first = check.run("disk".into(), DEFAULT_CHECK_TIMEOUT).await;
        assert!(!first.ok);
        let reason = first.reason.unwrap();
        assert!(reason.contains("panicked"), "{reason}");
        assert!(reason.contains("disk probe exploded"), "{reason}");
        let second = check.run("disk".into(), DEFAULT_CHECK_TIMEOUT).await;
        assert!(second.ok, "{second:?}");
        assert!(panicked.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_panicking_check_fails_and_the_others_still_report() {
        let checks = vec![
            (
                "boom".to_string(),
                HealthCheck::new(|| async {
                    if true {
                        panic!("check exploded");
                    }
                    Ok::<(), String>(())
                }),
            ),
            (
                "later".to_string(),
                HealthCheck::new(|| async {
                    tokio::task::yield_now().await;
                    Ok::<(), String>(())
                }),
            ),
        ];
        let report = run_checks(&checks, Duration::from_secs(3)).await;
        assert!(!report.healthy);
        assert_eq!(
            report.failures(),
            "boom: the check panicked: check exploded"
        );
        assert!(report.checks[1].ok);
        assert_eq!(report.checks[1].name, "later");
    }

    #[test]
    fn check_names_are_validated_with_a_typed_error() {
        for (name, why) in [
            ("", "empty"),
            ("db:primary", "`:`"),
            ("db primary", "whitespace"),
            ("db\n", "whitespace"),
            ("db\u{7}", "control"),
        ] {
            match validate_check_name(name) {
                Err(Error::InvalidName {
                    what: "check name",
                    reason,
                    ..
                }) => assert!(reason.contains(why), "{name:?}: {reason}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        for name in ["db", "poststarthook/cache", "a-b_c.d", "ünïcode"] {
            validate_check_name(name).unwrap();
        }
    }

    #[tokio::test]
    async fn try_add_check_refuses_bad_and_taken_names_and_add_check_drops_bad_ones() {
        let server = WarpHealthServer::default();
        let ok = || HealthCheck::new(|| async { Ok::<(), String>(()) });
        server.try_add_check("db", ok()).unwrap();
        let err = server.try_add_check("db", ok()).unwrap_err();
        assert!(
            err.to_string().contains("another check has this name"),
            "{err}"
        );
        let err = server.try_add_check("bad name", ok()).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
        server.add_check("also bad", ok());
        server.add_check("db", ok()); // replaces
        assert_eq!(server.check_names(), ["db"]);
        assert_eq!(server.check().await.checks.len(), 1);
    }

    #[tokio::test]
    async fn a_hung_blocking_check_is_not_started_twice() {
        let gate = Arc::new(std::sync::Barrier::new(2));
        let inner = gate.clone();
        let check = HealthCheck::blocking(move || {
            inner.wait();
            Ok::<(), String>(())
        })
        .timeout(Duration::from_millis(50));
        let first = check.run("slow".into(), DEFAULT_CHECK_TIMEOUT).await;
        assert_eq!(first.reason.as_deref(), Some("timed out after 50ms"));
        let second = check.run("slow".into(), DEFAULT_CHECK_TIMEOUT).await;
        assert_eq!(
            second.reason.as_deref(),
            Some("its previous run has not finished")
        );
        gate.wait();
    }
}

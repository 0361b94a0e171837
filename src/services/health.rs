//! [`HealthService`]: HTTP `/health` and `/ready` endpoints; [`WarpHealthServer`], the
//! implementation on warp; [`HealthCheck`], a named probe; [`wait_for_health`], the client side.
//!
//! # Endpoints
//! - `GET /health` runs every check, concurrently, each cut off by its timeout. `200 ok` when
//!   all pass; otherwise `503` with `unhealthy: ` and each failing check as `name: reason`
//!   (`; `-separated). A check that hangs counts as failed once its timeout expires.
//! - `GET /ready` answers `200 ready` or `503 not ready` by the readiness flag (ready by
//!   default; [`Daemon::stop`](crate::DaemonService::stop) clears it first and the next
//!   [`Daemon::start`](crate::DaemonService::start) sets it again).
//! - Either answers JSON ([`HealthReport`], or `{"ready": bool}`) when the request carries
//!   `Accept: application/json` or a `verbose` query parameter (`/health?verbose`).
//!
//! Every request is served on its own task, so a slow check never delays `/ready`. The checks
//! of one request run concurrently on that request's task.
//!
//! # Caveats
//! A [`HealthCheck::blocking`] check runs on tokio's blocking pool; when it hangs, its thread
//! stays busy until the closure returns. The check is not started again while a previous run
//! is still going (it reports failure instead), so a hung check ties up one thread, not one
//! per request.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shaku::{Component, Interface};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::Filter;
use warp::http::{Response, StatusCode};

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;

/// Where [`WarpHealthServer`] listens unless told otherwise: loopback, a port chosen by the OS.
pub const DEFAULT_HEALTH_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// How long one check may run before it counts as failed, unless it sets its own
/// ([`HealthCheck::timeout`]).
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`WarpHealthServer`]'s stop waits for open requests before it closes them.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

type CheckFuture = Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>>;

/// A named probe's body: resolves `Ok(())` when healthy, `Err(reason)` otherwise. The seed's
/// `HealthCheck func() error`, made async and bounded by a timeout. Cheap to clone.
///
/// ```
/// use core_process::HealthCheck;
/// use std::time::Duration;
///
/// let always = HealthCheck::new(|| async { Ok::<(), String>(()) });
/// let disk = HealthCheck::blocking(|| {
///     std::fs::metadata("/").map(|_| ()).map_err(|e| format!("cannot stat /: {e}"))
/// })
/// .timeout(Duration::from_secs(1));
/// # let _ = (always, disk);
/// ```
#[derive(Clone)]
pub struct HealthCheck {
    run: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
    timeout: Option<Duration>,
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
        }
    }

    /// Sets this check's own timeout (instead of the server's default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
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
    let payload = e.into_panic();
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
/// is cheaper than a task each). A check that panics is reported as failed, as before.
pub(crate) async fn run_checks(
    checks: &[(String, HealthCheck)],
    default_timeout: Duration,
) -> HealthReport {
    let mut running: Vec<_> = checks
        .iter()
        .map(|(name, check)| Some(Box::pin(check.run(name.clone(), default_timeout))))
        .collect();
    let mut results: Vec<Option<CheckResult>> = vec![None; checks.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, result) in running.iter_mut().zip(results.iter_mut()) {
            let Some(check) = slot else { continue };
            match std::panic::catch_unwind(AssertUnwindSafe(|| check.as_mut().poll(cx))) {
                Ok(Poll::Pending) => pending = true,
                Ok(Poll::Ready(r)) => {
                    *result = Some(r);
                    *slot = None;
                }
                // Left `None`: reported as panicked below.
                Err(_) => *slot = None,
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
    let checks: Vec<CheckResult> = results
        .into_iter()
        .zip(checks)
        .map(|(r, (name, _))| {
            r.unwrap_or_else(|| CheckResult {
                name: name.clone(),
                ok: false,
                reason: Some("the check panicked".into()),
                duration: Duration::ZERO,
            })
        })
        .collect();
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

    /// Adds a named check, replacing any check with the same name.
    fn add_check(&self, name: &str, check: HealthCheck);

    /// Sets the readiness flag reported by `/ready`.
    fn set_ready(&self, ready: bool);

    /// The readiness flag (true until set otherwise).
    fn is_ready(&self) -> bool;

    /// The bound address while serving.
    fn addr(&self) -> Option<SocketAddr>;

    /// Runs every check now, as `GET /health` does.
    async fn check(&self) -> HealthReport;
}

/// [`HealthService`] on warp: binds its own listener (a bind failure is an [`Error::Bind`],
/// never a panic), serves it on a task, stops gracefully.
///
/// As a shaku component its parameters are `addr` (default [`DEFAULT_HEALTH_ADDR`]),
/// `check_timeout` (default [`DEFAULT_CHECK_TIMEOUT`]) and `stop_timeout` (default
/// [`DEFAULT_STOP_TIMEOUT`]). Nothing binds before [`start`](HealthService::start). Dropping it
/// stops the server at once.
#[derive(Component)]
#[shaku(interface = HealthService)]
pub struct WarpHealthServer {
    /// The address to bind (default [`DEFAULT_HEALTH_ADDR`]: loopback, any port).
    #[shaku(default = DEFAULT_HEALTH_ADDR)]
    addr: SocketAddr,
    /// How long a check may run before it counts as failed (default [`DEFAULT_CHECK_TIMEOUT`]).
    #[shaku(default = DEFAULT_CHECK_TIMEOUT)]
    check_timeout: Duration,
    /// How long stop waits for open requests (default [`DEFAULT_STOP_TIMEOUT`]).
    #[shaku(default = DEFAULT_STOP_TIMEOUT)]
    stop_timeout: Duration,
    #[shaku(force_default)]
    shared: Arc<Shared>,
    #[shaku(force_default)]
    running: Mutex<Option<Running>>,
}

/// What the request handlers share with the service.
struct Shared {
    ready: AtomicBool,
    /// Replaced (copy on write) when a check is added, so a request takes a snapshot by
    /// cloning an `Arc`.
    checks: Mutex<Arc<Vec<(String, HealthCheck)>>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            ready: AtomicBool::new(true),
            checks: Mutex::new(Arc::new(Vec::new())),
        }
    }
}

impl Shared {
    fn checks(&self) -> Arc<Vec<(String, HealthCheck)>> {
        lock(&self.checks).clone()
    }
}

struct Running {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Aborts the task when dropped (a no-op once it has finished).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

use crate::sync::lock;

impl WarpHealthServer {
    /// A server that will bind `addr`, with the default timeouts.
    pub fn new(addr: SocketAddr) -> Self {
        WarpHealthServer {
            addr,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            shared: Arc::default(),
            running: Mutex::new(None),
        }
    }

    /// Sets the default per-check timeout.
    pub fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Sets how long stop waits for open requests.
    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }
}

impl Default for WarpHealthServer {
    fn default() -> Self {
        WarpHealthServer::new(DEFAULT_HEALTH_ADDR)
    }
}

impl std::fmt::Debug for WarpHealthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarpHealthServer")
            .field("addr", &self.addr)
            .field("bound", &self.addr())
            .field("ready", &self.is_ready())
            .field("check_timeout", &self.check_timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for WarpHealthServer {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.running).take() {
            running.task.abort();
        }
    }
}

/// Whether the client asked for JSON: `Accept: application/json` or a `verbose` parameter.
fn wants_json(accept: Option<&str>, query: &str) -> bool {
    accept.is_some_and(|a| a.contains("application/json"))
        || query
            .split('&')
            .any(|kv| kv == "verbose" || kv.starts_with("verbose="))
}

fn reply(status: StatusCode, json: bool, body: String) -> Response<String> {
    let content_type = if json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .unwrap_or_else(|_| Response::new(String::new()))
}

fn health_reply(report: &HealthReport, json: bool) -> Response<String> {
    let status = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = if json {
        serde_json::to_string(report).unwrap_or_default()
    } else if report.healthy {
        "ok\n".to_string()
    } else {
        format!("unhealthy: {}\n", report.failures())
    };
    reply(status, json, body)
}

fn ready_reply(ready: bool, json: bool) -> Response<String> {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = match (json, ready) {
        (true, _) => format!("{{\"ready\":{ready}}}"),
        (false, true) => "ready\n".to_string(),
        (false, false) => "not ready\n".to_string(),
    };
    reply(status, json, body)
}

#[async_trait]
impl Lifecycle for WarpHealthServer {
    fn name(&self) -> &str {
        "WarpHealthServer"
    }

    /// Stops the server (see [`HealthService::stop`]). Starting does nothing: the
    /// [`Daemon`](crate::Daemon) starts it.
    async fn on_stop(&self) -> Result<()> {
        self.stop().await
    }
}

#[async_trait]
impl HealthService for WarpHealthServer {
    async fn start(&self) -> Result<SocketAddr> {
        let mut running = lock(&self.running);
        if let Some(r) = running.as_ref() {
            return Err(Error::AlreadyStarted {
                component: "WarpHealthServer".into(),
                detail: format!("serving on {}", r.addr),
            });
        }
        let bind_err = |source: io::Error| Error::Bind {
            addr: self.addr.to_string(),
            source,
        };
        let std_listener = std::net::TcpListener::bind(self.addr).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;

        let json = warp::header::optional::<String>("accept")
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .map(|accept: Option<String>, query: String| wants_json(accept.as_deref(), &query));
        let shared = self.shared.clone();
        let check_timeout = self.check_timeout;
        let health = warp::path!("health")
            .and(warp::get())
            .and(json)
            .then(move |json: bool| {
                let checks = shared.checks();
                async move { health_reply(&run_checks(&checks, check_timeout).await, json) }
            });
        let shared = self.shared.clone();
        let ready = warp::path!("ready")
            .and(warp::get())
            .and(json)
            .map(move |json: bool| ready_reply(shared.ready.load(Ordering::Acquire), json));

        let (shutdown, signal) = oneshot::channel::<()>();
        let server = warp::serve(health.or(ready))
            .incoming(listener)
            .graceful(async move {
                let _ = signal.await;
            });
        let task = tokio::spawn(server.run());
        tracing::debug!(%addr, "health server listening");
        *running = Some(Running {
            addr,
            shutdown,
            task,
        });
        Ok(addr)
    }

    async fn stop(&self) -> Result<()> {
        let Some(Running {
            addr,
            shutdown,
            task,
        }) = lock(&self.running).take()
        else {
            return Ok(());
        };
        let _ = shutdown.send(());
        // Should this future be dropped (a caller's own timeout), the server still goes away.
        let mut task = AbortOnDrop(task);
        if tokio::time::timeout(self.stop_timeout, &mut task.0)
            .await
            .is_err()
        {
            tracing::warn!(%addr, timeout = ?self.stop_timeout, "health server requests still open; closing them");
        }
        drop(task);
        tracing::debug!(%addr, "health server stopped");
        Ok(())
    }

    fn add_check(&self, name: &str, check: HealthCheck) {
        let mut guard = lock(&self.shared.checks);
        let checks = Arc::make_mut(&mut guard);
        match checks.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = check,
            None => checks.push((name.to_string(), check)),
        }
    }

    fn set_ready(&self, ready: bool) {
        self.shared.ready.store(ready, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    fn addr(&self) -> Option<SocketAddr> {
        lock(&self.running).as_ref().map(|r| r.addr)
    }

    async fn check(&self) -> HealthReport {
        run_checks(&self.shared.checks(), self.check_timeout).await
    }
}

/// Polls `http://{addr}/health` until it answers `200` or `timeout` passes. `addr` is
/// `host:port` (`127.0.0.1:9090`, `localhost:9090`). The seed's `WaitForHealth`.
///
/// # Cancel safety
/// Cancel-safe: dropping the future abandons the current probe.
pub async fn wait_for_health(addr: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return false;
        }
        let probe = remaining.min(Duration::from_secs(2));
        if let Ok((200, _)) = http_get(addr, "/health", None, probe).await {
            return true;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return false;
        }
        tokio::time::sleep(remaining.min(Duration::from_millis(100))).await;
    }
}

/// A minimal HTTP/1.0 GET: `(status, body)`. `target` is the path and query; `accept` sets
/// the `Accept` header. Bounded by `timeout` and by 1 MiB of response.
pub(crate) async fn http_get(
    addr: &str,
    target: &str,
    accept: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(1 << 20).read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("GET http://{addr}{target} timed out after {timeout:?}"),
            ))
        })
}

fn parse_response(raw: &[u8]) -> io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "not an HTTP response: {:?}",
                    head.lines().next().unwrap_or("")
                ),
            )
        })?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_chosen_by_accept_or_verbose() {
        assert!(wants_json(Some("application/json"), ""));
        assert!(wants_json(Some("text/html, application/json;q=0.9"), ""));
        assert!(wants_json(None, "verbose"));
        assert!(wants_json(None, "a=1&verbose=1"));
        assert!(!wants_json(None, ""));
        assert!(!wants_json(Some("text/plain"), "verbosity=1"));
    }

    #[test]
    fn parses_responses() {
        let (status, body) =
            parse_response(b"HTTP/1.0 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbad\n")
                .unwrap();
        assert_eq!(status, 503);
        assert_eq!(body, "bad\n");
        assert!(parse_response(b"garbage").is_err());
    }

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
        assert_eq!(report.failures(), "boom: the check panicked");
        assert!(report.checks[1].ok);
        assert_eq!(report.checks[1].name, "later");
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

//! [`WarpHealthServer`]: the [`HealthService`] on warp, the only file that names warp.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::warp::Filter;
use ::warp::http::{Response, StatusCode};
use ::warp::path::Tail;
use async_trait::async_trait;
use shaku::Component;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::probe::{self, Probe, ProbeQuery, StartupGrace};
use super::{
    DEFAULT_CHECK_TIMEOUT, DEFAULT_HEALTH_ADDR, HealthCheck, HealthReport, HealthService,
    put_check, run_checks,
};
use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::sys;

/// How long [`WarpHealthServer`]'s stop waits for open requests before it closes them.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest start-up grace of [`WarpHealthServer`]: for at most this long after its start,
/// until its first successful readiness, failing liveness checks do not fail `/livez`.
pub const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(60);

/// The name of the socket-activated listener that [`WarpHealthServer`] prefers
/// (`FileDescriptorName=health` in the `.socket` unit); without one it takes the first.
const ACTIVATED_NAME: &str = "health";

/// [`HealthService`] on warp: binds its own listener (a bind failure is an [`Error::Bind`],
/// never a panic), or serves the one the service manager passed (socket activation); serves it
/// on a task, stops gracefully. The endpoints are described in the [module
/// documentation](super).
///
/// As a shaku component its parameters are `addr` (default [`DEFAULT_HEALTH_ADDR`]),
/// `check_timeout` (default [`DEFAULT_CHECK_TIMEOUT`]), `stop_timeout` (default
/// [`DEFAULT_STOP_TIMEOUT`]) and `startup_grace` (default [`DEFAULT_STARTUP_GRACE`]). Nothing
/// binds before [`start`](HealthService::start). Dropping it stops the server at once.
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
    /// The longest start-up grace of `/livez` (default [`DEFAULT_STARTUP_GRACE`]; zero: none).
    #[shaku(default = DEFAULT_STARTUP_GRACE)]
    startup_grace: Duration,
    #[shaku(force_default)]
    activated: Mutex<Option<std::net::TcpListener>>,
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
    grace: StartupGrace,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            ready: AtomicBool::new(true),
            checks: Mutex::new(Arc::new(Vec::new())),
            grace: StartupGrace::default(),
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
            startup_grace: DEFAULT_STARTUP_GRACE,
            activated: Mutex::new(None),
            shared: Arc::default(),
            running: Mutex::new(None),
        }
    }

    setters! {
        /// Sets the default per-check timeout.
        with_check_timeout(timeout: Duration) sets check_timeout;
        /// Sets how long stop waits for open requests.
        with_stop_timeout(timeout: Duration) sets stop_timeout;
        /// Sets the longest start-up grace of `/livez` (zero: none).
        with_startup_grace(grace: Duration) sets startup_grace;
    }

    /// A listener to serve: the socket-activated one, when the service manager passed one
    /// (taken by the first server to start, then kept for its restarts), else `addr` bound.
    fn listener(&self) -> Result<std::net::TcpListener> {
        let mut activated = lock(&self.activated);
        if activated.is_none() {
            *activated =
                sys::take_activated_listener(ACTIVATED_NAME).map_err(|source| Error::Bind {
                    addr: "the socket passed by the service manager (LISTEN_FDS)".into(),
                    source,
                })?;
        }
        match activated.as_ref() {
            Some(listener) => listener.try_clone().map_err(|source| Error::Bind {
                addr: listener
                    .local_addr()
                    .map(|a| format!("{a} (socket-activated)"))
                    .unwrap_or_else(|_| "the socket-activated listener".into()),
                source,
            }),
            None => std::net::TcpListener::bind(self.addr).map_err(|source| Error::Bind {
                addr: self.addr.to_string(),
                source,
            }),
        }
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
            .field("startup_grace", &self.startup_grace)
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

/// Whether the client asked for JSON: `Accept: application/json` or a `verbose` parameter
/// (whose value, if any, is not `0` or `false`).
fn wants_json(accept: Option<&str>, query: &str) -> bool {
    accept.is_some_and(|a| a.contains("application/json"))
        || query.split('&').any(|kv| match kv.split_once('=') {
            None => kv == "verbose",
            Some((key, value)) => key == "verbose" && probe::is_verbose(value),
        })
}

fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
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
    let status = status(report.healthy);
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
    let status = status(ready);
    let body = match (json, ready) {
        (true, _) => format!("{{\"ready\":{ready}}}"),
        (false, true) => "ready\n".to_string(),
        (false, false) => "not ready\n".to_string(),
    };
    reply(status, json, body)
}

/// `/livez[/{name}]` and `/readyz[/{name}]`.
async fn probe_reply(
    shared: &Shared,
    probe: Probe,
    tail: &str,
    accept: Option<&str>,
    query: &str,
    timeout: Duration,
) -> Response<String> {
    let checks = shared.checks();
    let json = accept.is_some_and(|a| a.contains("application/json"));
    let ready = shared.ready.load(Ordering::Acquire);
    let name = probe::percent_decode(tail.trim_end_matches('/'));
    if !name.is_empty() {
        return match probe::one(probe, &checks, ready, &name, timeout).await {
            None => reply(
                StatusCode::NOT_FOUND,
                false,
                format!("no {} check named {name:?}\n", probe.kind_name()),
            ),
            Some(r) if json => reply(
                status(r.ok),
                true,
                serde_json::to_string(&r).unwrap_or_default(),
            ),
            Some(r) if r.ok => reply(StatusCode::OK, false, "ok\n".into()),
            Some(r) => {
                let reason = r.reason.as_deref().unwrap_or("failed");
                reply(
                    status(false),
                    false,
                    format!("[-]{} failed: {reason}\n", r.name),
                )
            }
        };
    }
    let query = ProbeQuery::parse(query);
    let evaluation = probe::answer(probe, &checks, ready, &query, timeout, &shared.grace).await;
    let status = status(evaluation.passed);
    if json {
        let body = serde_json::to_string(&evaluation.report()).unwrap_or_default();
        reply(status, true, body)
    } else {
        reply(status, false, evaluation.text(probe, query.verbose))
    }
}

#[async_trait]
impl Lifecycle for WarpHealthServer {
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
        let std_listener = self.listener()?;
        let listen_err = |source: io::Error| Error::Bind {
            addr: std_listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| self.addr.to_string()),
            source,
        };
        std_listener.set_nonblocking(true).map_err(listen_err)?;
        let addr = std_listener.local_addr().map_err(listen_err)?;
        let listener =
            tokio::net::TcpListener::from_std(std_listener).map_err(|source| Error::Bind {
                addr: addr.to_string(),
                source,
            })?;

        // GET and HEAD (hyper sends no body for HEAD); the Accept header; the raw query.
        let request = warp::get()
            .or(warp::head())
            .unify()
            .and(warp::header::optional::<String>("accept"))
            .and(warp::query::raw().or(warp::any().map(String::new)).unify());
        let shared = self.shared.clone();
        let check_timeout = self.check_timeout;
        let health = warp::path!("health").and(request).then(
            move |accept: Option<String>, query: String| {
                let checks = shared.checks();
                let json = wants_json(accept.as_deref(), &query);
                async move { health_reply(&run_checks(checks.iter(), check_timeout).await, json) }
            },
        );
        let shared = self.shared.clone();
        let ready =
            warp::path!("ready")
                .and(request)
                .map(move |accept: Option<String>, query: String| {
                    let json = wants_json(accept.as_deref(), &query);
                    ready_reply(shared.ready.load(Ordering::Acquire), json)
                });
        let probe_route = |name: &'static str, probe: Probe| {
            let shared = self.shared.clone();
            warp::path(name).and(warp::path::tail()).and(request).then(
                move |tail: Tail, accept: Option<String>, query: String| {
                    let shared = shared.clone();
                    async move {
                        probe_reply(
                            &shared,
                            probe,
                            tail.as_str(),
                            accept.as_deref(),
                            &query,
                            check_timeout,
                        )
                        .await
                    }
                },
            )
        };
        let routes = health
            .or(ready)
            .or(probe_route("livez", Probe::Live))
            .or(probe_route("readyz", Probe::Ready));

        self.shared.grace.begin(self.startup_grace);
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = warp::serve(routes).incoming(listener).graceful(async move {
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
        put_check(Arc::make_mut(&mut lock(&self.shared.checks)), name, check);
    }

    fn check_names(&self) -> Vec<String> {
        self.shared
            .checks()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
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

    fn uses_default_addr(&self) -> bool {
        self.addr == DEFAULT_HEALTH_ADDR && std::env::var_os("LISTEN_FDS").is_none()
    }

    async fn check(&self) -> HealthReport {
        run_checks(self.shared.checks().iter(), self.check_timeout).await
    }

    async fn check_liveness(&self) -> HealthReport {
        let checks = self.shared.checks();
        let ready = self.shared.ready.load(Ordering::Acquire);
        let query = ProbeQuery::default();
        probe::answer(
            Probe::Live,
            &checks,
            ready,
            &query,
            self.check_timeout,
            &self.shared.grace,
        )
        .await
        .report()
    }
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
        assert!(wants_json(None, "verbose=true"));
        assert!(!wants_json(None, "verbose=0"));
        assert!(!wants_json(None, "a=1&verbose=false"));
        assert!(!wants_json(None, "verbose=False"));
    }
}

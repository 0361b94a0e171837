//! [`WarpHealthServer`]: the [`HealthService`] on warp, the only file that names warp.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::warp::Filter;
use ::warp::http::{Response, StatusCode};
use async_trait::async_trait;
use shaku::Component;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{
    DEFAULT_CHECK_TIMEOUT, DEFAULT_HEALTH_ADDR, HealthCheck, HealthReport, HealthService,
    run_checks,
};
use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;

/// How long [`WarpHealthServer`]'s stop waits for open requests before it closes them.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Whether the client asked for JSON: `Accept: application/json` or a `verbose` parameter
/// (whose value, if any, is not `0` or `false`).
fn wants_json(accept: Option<&str>, query: &str) -> bool {
    accept.is_some_and(|a| a.contains("application/json"))
        || query.split('&').any(|kv| match kv.split_once('=') {
            None => kv == "verbose",
            Some((key, value)) => {
                key == "verbose" && !(value == "0" || value.eq_ignore_ascii_case("false"))
            }
        })
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
                async move { health_reply(&run_checks(checks.iter(), check_timeout).await, json) }
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
        run_checks(self.shared.checks().iter(), self.check_timeout).await
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

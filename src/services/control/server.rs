//! The control API's warp routes: authentication, routing, bodies, replies, the SSE stream.
//! The only file of the component that names warp.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::warp::Filter;
use ::warp::http::{HeaderMap, Method, StatusCode};
use ::warp::reply::Response;
use ::warp::{Buf, Reply};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ControlEndpoint, MAX_GRACE};
use crate::error::{Error, Result};
use crate::event::ProcessEvent;
use crate::services::event_bus::{EventBus, RecvError};
use crate::services::process::ProcessService;
use crate::services::supervise::SupervisorService;
use crate::sys;
use crate::types::Signal;

/// What the request handlers share with the server.
pub(super) struct Shared {
    pub(super) processes: Arc<dyn ProcessService>,
    pub(super) events: Arc<dyn EventBus>,
    /// The supervisor whose processes `/supervised` lists, when one is wired.
    pub(super) supervisor: Option<Arc<dyn SupervisorService>>,
    pub(super) token: String,
    pub(super) body_limit: usize,
    /// Cancelled on stop: ends the open `/events` streams.
    pub(super) closing: CancellationToken,
}

/// A serving server.
pub(super) struct Running {
    endpoint: ControlEndpoint,
    shutdown: oneshot::Sender<()>,
    closing: CancellationToken,
    task: JoinHandle<()>,
    /// The socket file bound, removed on stop (if it is still ours).
    socket_file: Option<(PathBuf, sys::FileId)>,
}

impl Running {
    pub(super) fn endpoint(&self) -> &ControlEndpoint {
        &self.endpoint
    }

    pub(super) async fn stop(self, timeout: Duration) {
        self.closing.cancel();
        let _ = self.shutdown.send(());
        let mut task = AbortOnDrop(self.task);
        if tokio::time::timeout(timeout, &mut task.0).await.is_err() {
            tracing::warn!(endpoint = %self.endpoint, ?timeout, "control API requests still open; closing them");
        }
        remove_socket_file(self.socket_file);
    }

    pub(super) fn abort(self) {
        self.closing.cancel();
        self.task.abort();
        remove_socket_file(self.socket_file);
    }
}

/// Removes the socket file bound, if it is still ours.
fn remove_socket_file(socket_file: Option<(PathBuf, sys::FileId)>) {
    if let Some((path, id)) = socket_file
        && let Err(e) = sys::remove_if_same_file(&path, id)
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the control API socket");
    }
}

/// Aborts the task when dropped (a no-op once it has finished).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `endpoint` (a failure is an [`Error::Bind`] naming it, never a panic) and serves on
/// a task.
pub(super) fn serve(endpoint: &ControlEndpoint, shared: Arc<Shared>) -> Result<Running> {
    let bind_err = |source: std::io::Error| Error::Bind {
        addr: endpoint.to_string(),
        source,
    };
    enum Listener {
        Tcp(tokio::net::TcpListener),
        Unix(tokio::net::UnixListener),
    }
    let (listener, bound, socket_file) = match endpoint {
        ControlEndpoint::Tcp(addr) => {
            let std_listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
            std_listener.set_nonblocking(true).map_err(bind_err)?;
            let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?;
            let addr = listener.local_addr().map_err(bind_err)?;
            (Listener::Tcp(listener), ControlEndpoint::Tcp(addr), None)
        }
        ControlEndpoint::Unix(path) => {
            let (std_listener, id) = sys::bind_private_unix_socket(path).map_err(bind_err)?;
            let listener = match tokio::net::UnixListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    let _ = sys::remove_if_same_file(path, id);
                    return Err(bind_err(e));
                }
            };
            (
                Listener::Unix(listener),
                endpoint.clone(),
                Some((path.clone(), id)),
            )
        }
    };

    let closing = shared.closing.clone();
    let route = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |method: Method, path: warp::path::FullPath, query: String, headers, body| {
                let shared = shared.clone();
                async move {
                    let request = Request {
                        method,
                        path: path.as_str().to_string(),
                        query,
                        headers,
                    };
                    handle(&shared, request, Box::pin(body)).await
                }
            },
        );
    let (shutdown, signal) = oneshot::channel::<()>();
    let signal = async move {
        let _ = signal.await;
    };
    let task = match listener {
        Listener::Tcp(l) => tokio::spawn(warp::serve(route).incoming(l).graceful(signal).run()),
        Listener::Unix(l) => tokio::spawn(warp::serve(route).incoming(l).graceful(signal).run()),
    };
    tracing::debug!(endpoint = %bound, "control API listening");
    Ok(Running {
        endpoint: bound,
        shutdown,
        closing,
        task,
        socket_file,
    })
}

struct Request {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
}

/// A JSON error reply naming the problem.
fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let body = json!({ "error": message.to_string() });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn ok_json(value: &impl serde::Serialize) -> Response {
    warp::reply::json(value).into_response()
}

/// The status of a service error: what the client asked cannot be done now (`409`), or names
/// nothing (`404`), or is bad (`400`); anything else is the server's own failure.
fn service_error(e: &Error) -> Response {
    let status = match e {
        Error::ProcessNotFound { .. } => StatusCode::NOT_FOUND,
        Error::NotRunning { .. } | Error::StdinClosed { .. } | Error::Signal { .. } => {
            StatusCode::CONFLICT
        }
        Error::UnsupportedSignal { .. } | Error::InvalidOptions { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

/// Compares without an early exit, so the time taken tells nothing about the token.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn authorised(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same_token(given.trim().as_bytes(), token.as_bytes()))
}

async fn handle<S, B>(shared: &Shared, req: Request, body: std::pin::Pin<Box<S>>) -> Response
where
    S: Stream<Item = std::result::Result<B, warp::Error>> + Send + ?Sized,
    B: Buf,
{
    if !authorised(&req.headers, &shared.token) {
        let mut reply = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
        reply.headers_mut().insert(
            "www-authenticate",
            warp::http::HeaderValue::from_static("Bearer"),
        );
        return reply;
    }
    let segments: Vec<&str> = req
        .path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    let method = &req.method;
    match (segments.as_slice(), method) {
        (["processes"], &Method::GET) => {
            let infos: Vec<_> = shared.processes.list().iter().map(|p| p.info()).collect();
            ok_json(&infos)
        }
        (["processes", id], &Method::GET) => match shared.processes.get(id) {
            Ok(p) => ok_json(&p.info()),
            Err(e) => service_error(&e),
        },
        (["processes", id, "output"], &Method::GET) => output(shared, id, &req.query),
        (["processes", id, action @ ("signal" | "stop" | "input")], &Method::POST) => {
            let process = match shared.processes.get(id) {
                Ok(p) => p,
                Err(e) => return service_error(&e),
            };
            let bytes = match read_body(&req.headers, body, shared.body_limit).await {
                Ok(b) => b,
                Err(reply) => return *reply,
            };
            match *action {
                "signal" => signal(&process, &bytes).await,
                "stop" => stop(&process, &bytes).await,
                _ => match process.send_input(&bytes).await {
                    Ok(()) => ok_json(&json!({ "id": process.id(), "bytes": bytes.len() })),
                    Err(e) => service_error(&e),
                },
            }
        }
        (["events"], &Method::GET) => events(shared, &req.query),
        (["supervised"], &Method::GET) => {
            let infos: Vec<_> = shared
                .supervisor
                .as_ref()
                .map(|s| s.list().iter().map(|p| p.info()).collect())
                .unwrap_or_default();
            ok_json(&infos)
        }
        (["supervised", id], &Method::GET) => match &shared.supervisor {
            Some(s) => match s.get(id) {
                Ok(p) => ok_json(&p.info()),
                Err(e) => service_error(&e),
            },
            None => error(
                StatusCode::NOT_FOUND,
                format!("no supervised process `{id}`: this daemon has no supervisor"),
            ),
        },
        (
            ["processes"]
            | ["processes", _]
            | ["processes", _, "output"]
            | ["events"]
            | ["supervised"]
            | ["supervised", _],
            _,
        )
        | (["processes", _, "signal" | "stop" | "input"], _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on {}", req.method, req.path),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route {} {}", req.method, req.path),
        ),
    }
}

/// A reply that refuses the request, boxed (a response is large).
type Refusal = Box<Response>;

/// Reads the body up to `limit` bytes; over it, a `413` (before reading when the length is
/// declared).
async fn read_body<S, B>(
    headers: &HeaderMap,
    mut body: std::pin::Pin<Box<S>>,
    limit: usize,
) -> std::result::Result<Vec<u8>, Refusal>
where
    S: Stream<Item = std::result::Result<B, warp::Error>> + Send + ?Sized,
    B: Buf,
{
    let too_large = || {
        Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over the limit of {limit} bytes"),
        ))
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {e}"),
            ))
        })?;
        if bytes.len() + chunk.remaining() > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(bytes)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn output(shared: &Shared, id: &str, query: &str) -> Response {
    let process = match shared.processes.get(id) {
        Ok(p) => p,
        Err(e) => return service_error(&e),
    };
    let tail = match query_param(query, "tail").map(str::parse::<usize>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid tail `{}`: expected a number of lines",
                    query_param(query, "tail").unwrap_or_default()
                ),
            );
        }
    };
    let text = process.output();
    let text = match tail {
        Some(n) => last_lines(&text, n).to_string(),
        None => text,
    };
    warp::reply::with_header(text, "content-type", "text/plain; charset=utf-8").into_response()
}

/// The last `n` lines of `text` (a trailing newline does not start a line).
fn last_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    let mut start = trimmed.len();
    for _ in 0..n {
        match trimmed[..start].rfind('\n') {
            Some(i) => start = i,
            None => return text,
        }
    }
    &text[start + 1..]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalBody {
    signal: String,
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> std::result::Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {e}"),
        ))
    })
}

async fn signal(process: &crate::services::process::Process, bytes: &[u8]) -> Response {
    let body: SignalBody = match parse_json(bytes) {
        Ok(b) => b,
        Err(reply) => return *reply,
    };
    let signal: Signal = match body.signal.parse() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match process.signal(signal).await {
        Ok(()) => ok_json(&process.info()),
        Err(e) => service_error(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopBody {
    grace: Option<Grace>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Grace {
    Seconds(f64),
    Text(String),
}

/// Parses a grace: seconds as a number, or `500ms`, `10s`, `2m`, `1h` (a bare number is
/// seconds).
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(value * scale).ok()
}

async fn stop(process: &crate::services::process::Process, bytes: &[u8]) -> Response {
    let grace = if bytes.iter().all(u8::is_ascii_whitespace) {
        process.grace_period()
    } else {
        let body: StopBody = match parse_json(bytes) {
            Ok(b) => b,
            Err(reply) => return *reply,
        };
        let parsed = match &body.grace {
            None => Some(process.grace_period()),
            Some(Grace::Seconds(s)) => Duration::try_from_secs_f64(*s).ok(),
            Some(Grace::Text(t)) => parse_duration(t),
        };
        match parsed {
            Some(g) if g <= MAX_GRACE => g,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "invalid grace {}: expected seconds (10, 0.5) or a duration (500ms, 10s, 2m) up to {}s",
                        match &body.grace {
                            Some(Grace::Seconds(s)) => s.to_string(),
                            Some(Grace::Text(t)) => format!("`{t}`"),
                            None => String::new(),
                        },
                        MAX_GRACE.as_secs()
                    ),
                );
            }
        }
    };
    process.stop(grace).await;
    ok_json(&process.info())
}

/// The SSE event name of an event: its serialised `type`.
fn event_name(event: &ProcessEvent) -> &'static str {
    match event {
        ProcessEvent::Started { .. } => "started",
        ProcessEvent::Output { .. } => "output",
        ProcessEvent::Exited { .. } => "exited",
        ProcessEvent::Killed { .. } => "killed",
        ProcessEvent::Attempt { .. } => "attempt",
        ProcessEvent::Ready { .. } => "ready",
        ProcessEvent::Restarting { .. } => "restarting",
        ProcessEvent::Fatal { .. } => "fatal",
        ProcessEvent::Stopped { .. } => "stopped",
    }
}

fn events(shared: &Shared, query: &str) -> Response {
    let filter = query_param(query, "process").map(str::to_string);
    if let Some(id) = &filter
        && let Err(e) = shared.processes.get(id)
    {
        return service_error(&e);
    }
    // Subscribed before the reply goes out: the client sees every event from here on.
    let mut sub = shared.events.subscribe();
    let closing = shared.closing.clone();
    // warp wants a `Sync` stream and a subscription is not: a pump task forwards the events
    // through a small channel. While the channel is full the pump does not receive, so the
    // subscription falls behind exactly as a slow subscriber does (the bus's policy); the
    // pump ends as soon as the client's stream is dropped, without waiting for an event.
    let (tx, rx) = tokio::sync::mpsc::channel::<warp::sse::Event>(SSE_QUEUE);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                () = closing.cancelled() => return,
                () = tx.closed() => return,
                next = sub.recv() => next,
            };
            let event = match next {
                Ok(event) => {
                    if filter.as_deref().is_some_and(|id| id != event.id()) {
                        continue;
                    }
                    warp::sse::Event::default()
                        .event(event_name(&event))
                        .json_data(&event)
                }
                Err(RecvError::Lagged(n)) => warp::sse::Event::default()
                    .event("lagged")
                    .json_data(json!({ "missed": n })),
                Err(RecvError::Closed) => return,
            };
            // Serialising these types does not fail; were it to, skip the event.
            let Ok(event) = event else { continue };
            tokio::select! {
                () = closing.cancelled() => return,
                sent = tx.send(event) => if sent.is_err() { return },
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        Some((Ok::<_, Infallible>(event), rx))
    });
    warp::sse::reply(warp::sse::keep_alive().stream(stream)).into_response()
}

/// How many SSE events wait between the subscription and a client's connection.
const SSE_QUEUE: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("10 parsecs"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn last_lines_takes_the_tail() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(last_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(last_lines("a\n", 0), "");
        assert_eq!(last_lines("", 3), "");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abd", b"abc"));
        assert!(!same_token(b"ab", b"abc"));
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("tail=5&x", "tail"), Some("5"));
        assert_eq!(query_param("x&process=proc-1", "process"), Some("proc-1"));
        assert_eq!(query_param("", "tail"), None);
    }
}

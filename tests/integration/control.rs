//! The control API (feature `control`): tokens, routes, bad input, the SSE stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use core_process::services::control::{ControlEndpoint, ControlServer, token_path};
use core_process::{
    Backoff, BroadcastEventBus, Daemon, DaemonEntry, DaemonOptions, DaemonService, EventBus,
    FilePidLock, FileRegistry, ProcessService, ProcessSupervisor, RestartPolicy, RunOptions,
    SupervisePolicy, SupervisionState, SupervisorService, TokioProcessService, WarpHealthServer,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{eventually, within};

const LIMIT: Duration = Duration::from_secs(20);

struct Fixture {
    service: Arc<TokioProcessService>,
    bus: Arc<BroadcastEventBus>,
    server: ControlServer,
    addr: SocketAddr,
}

async fn fixture() -> Fixture {
    fixture_with_capacity(1024).await
}

/// A server over a bus holding `capacity` output batches (one pipe read each) for a slow
/// subscriber.
async fn fixture_with_capacity(capacity: usize) -> Fixture {
    let bus = Arc::new(BroadcastEventBus::new(capacity));
    let service = Arc::new(TokioProcessService::new(
        bus.clone() as Arc<dyn EventBus>,
        core_process::DEFAULT_BUFFER_SIZE,
    ));
    let server = ControlServer::new(
        service.clone() as Arc<dyn ProcessService>,
        bus.clone() as Arc<dyn EventBus>,
    )
    .unwrap()
    .with_body_limit(1024);
    server.start().await.unwrap();
    let addr = server.addr().unwrap();
    Fixture {
        service,
        bus,
        server,
        addr,
    }
}

/// One HTTP/1.1 exchange (`Connection: close`): `(status, body)`.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    exchange(stream, &addr.to_string(), method, path, token, body).await
}

/// One HTTP/1.1 exchange over `stream`.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before taking the whole body: a failed write is fine.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = within(LIMIT, "response", stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (status, body.to_string())
}

/// One exchange over the unix socket at `path`.
async fn unix_request(
    path: &std::path::Path,
    method: &str,
    target: &str,
    token: Option<&str>,
) -> (u16, String) {
    let stream = tokio::net::UnixStream::connect(path).await.unwrap();
    exchange(stream, "localhost", method, target, token, b"").await
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// A `cat` gated on stdin: running until its stdin closes.
async fn cat(service: &TokioProcessService) -> core_process::Process {
    service
        .start(RunOptions::new("cat").stdin(true))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_needs_the_token() {
    let f = fixture().await;
    let p = cat(&f.service).await;
    let token = f.server.token().to_string();
    let signal = format!("/processes/{}/signal", p.id());
    for bad in [None, Some("wrong"), Some(&token[1..])] {
        let (status, body) = request(f.addr, "GET", "/processes", bad, b"").await;
        assert_eq!(status, 401, "{bad:?}: {body}");
        assert!(json(&body)["error"].as_str().unwrap().contains("token"));
        // Nothing is done: the process survives a signal request without the right token.
        let (status, _) = request(f.addr, "POST", &signal, bad, br#"{"signal":"KILL"}"#).await;
        assert_eq!(status, 401);
        // Not even a route is revealed.
        let (status, _) = request(f.addr, "GET", "/nope", bad, b"").await;
        assert_eq!(status, 401);
    }
    assert!(p.is_running());
    let (status, body) = request(f.addr, "GET", "/processes", Some(&token), b"").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)[0]["id"], p.id());
    p.close_stdin().await;
    within(LIMIT, "cat exit", p.wait()).await.unwrap();
    f.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_answered_4xx_naming_the_problem() {
    let f = fixture().await;
    let t = Some(f.server.token());
    let p = cat(&f.service).await;
    let id = p.id().to_string();
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        ("GET", "/nope".into(), vec![], 404, "no route GET /nope"),
        ("GET", "/processes/proc-999".into(), vec![], 404, "proc-999"),
        (
            "POST",
            "/processes/proc-999/stop".into(),
            vec![],
            404,
            "proc-999",
        ),
        ("DELETE", "/processes".into(), vec![], 405, "DELETE"),
        ("GET", format!("/processes/{id}/signal"), vec![], 405, "GET"),
        (
            "POST",
            format!("/processes/{id}/signal"),
            b"{\"signal\":".to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "POST",
            format!("/processes/{id}/signal"),
            b"[1,2]".to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "POST",
            format!("/processes/{id}/signal"),
            br#"{"sig":"TERM"}"#.to_vec(),
            400,
            "sig",
        ),
        (
            "POST",
            format!("/processes/{id}/signal"),
            br#"{"signal":"FOO"}"#.to_vec(),
            400,
            "FOO",
        ),
        (
            "POST",
            format!("/processes/{id}/stop"),
            br#"{"grace":"forever"}"#.to_vec(),
            400,
            "forever",
        ),
        (
            "POST",
            format!("/processes/{id}/stop"),
            br#"{"grace":-1}"#.to_vec(),
            400,
            "grace",
        ),
        (
            "POST",
            format!("/processes/{id}/input"),
            vec![b'x'; 4096],
            413,
            "1024 bytes",
        ),
        (
            "GET",
            format!("/processes/{id}/output?tail=lots"),
            vec![],
            400,
            "lots",
        ),
        (
            "GET",
            "/events?process=proc-999".into(),
            vec![],
            404,
            "proc-999",
        ),
    ];
    for (method, path, body, want, names) in cases {
        let (status, reply) = request(f.addr, method, &path, t, &body).await;
        assert_eq!(status, want, "{method} {path}: {reply}");
        let error = json(&reply)["error"].as_str().unwrap().to_string();
        assert!(
            error.contains(names),
            "{method} {path}: {error:?} should name {names:?}"
        );
    }
    // None of it touched the process.
    assert!(p.is_running());
    p.close_stdin().await;
    within(LIMIT, "cat exit", p.wait()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_are_listed_fed_signalled_and_stopped() {
    let f = fixture().await;
    let t = Some(f.server.token());
    let p = cat(&f.service).await;
    let id = p.id().to_string();

    let (status, body) = request(f.addr, "GET", &format!("/processes/{id}"), t, b"").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["pid"], p.pid());
    assert_eq!(json(&body)["running"], true);

    let input = format!("/processes/{id}/input");
    let (status, body) = request(f.addr, "POST", &input, t, b"one\ntwo\nthree\n").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["bytes"], 14);
    eventually(LIMIT, "cat echoes its input", || {
        p.output() == "one\ntwo\nthree\n"
    })
    .await;
    let output = format!("/processes/{id}/output?tail=2");
    let (status, body) = request(f.addr, "GET", &output, t, b"").await;
    assert_eq!((status, body.as_str()), (200, "two\nthree\n"));

    let signal = format!("/processes/{id}/signal");
    let (status, body) = request(f.addr, "POST", &signal, t, br#"{"signal":"TERM"}"#).await;
    assert_eq!(status, 200, "{body}");
    within(LIMIT, "cat ends on TERM", p.done()).await;
    assert_eq!(p.signal_received(), Some(core_process::Signal::Term));
    // Signalling it again: it is gone, and the answer says so without a 500.
    let (status, body) = request(f.addr, "POST", &signal, t, br#"{"signal":"TERM"}"#).await;
    assert_eq!(status, 409, "{body}");

    let q = cat(&f.service).await;
    let stop = format!("/processes/{}/stop", q.id());
    let (status, body) = request(f.addr, "POST", &stop, t, br#"{"grace":"2s"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["running"], false);
    assert!(!q.is_running());
}

/// Reads what arrives on `stream` until `want` is in it, or panics after `limit`. Keeps in
/// `seen` what came up to `want`, at most its last 1 MiB (a flood is not kept whole). Returns
/// how many bytes it read.
async fn read_until(
    stream: &mut TcpStream,
    seen: &mut Vec<u8>,
    want: &str,
    limit: Duration,
) -> usize {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 256 * 1024];
    let mut from = 0;
    let mut read = 0;
    loop {
        if memfind(&seen[from..], want.as_bytes()).is_some() {
            return read;
        }
        from = seen.len().saturating_sub(want.len());
        if seen.len() > 2 << 20 {
            seen.drain(..seen.len() - (1 << 20));
            from = seen.len().saturating_sub(want.len());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let got = match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("stream closed before {want:?}"),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => panic!(
                "no {want:?} within {limit:?}; got {:?}",
                String::from_utf8_lossy(&seen[seen.len().saturating_sub(600)..])
            ),
        };
        read += got;
        seen.extend_from_slice(&buf[..got]);
    }
}

fn memfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn open_events(addr: SocketAddr, token: &str, query: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /events{query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "\r\n\r\n", LIMIT).await;
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/event-stream"), "{text}");
    (stream, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_filtered_to_one_process() {
    let f = fixture().await;
    let token = f.server.token().to_string();
    let p = cat(&f.service).await;
    let other = cat(&f.service).await;
    let (mut stream, mut seen) = open_events(f.addr, &token, &format!("?process={}", p.id())).await;
    other.send_input("from the other\n").await.unwrap();
    p.send_input("hello\n").await.unwrap();
    p.close_stdin().await;
    read_until(&mut stream, &mut seen, "event:exited", LIMIT).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("event:output"), "{text}");
    assert!(text.contains(r#""line":"hello""#), "{text}");
    assert!(!text.contains("from the other"), "{text}");
    other.close_stdin().await;
    within(LIMIT, "other exit", other.wait()).await.unwrap();
}

/// An SSE client that stops reading while a child floods output: the child is held back no
/// longer than the bus's stall policy allows (it finishes), the client is told what it missed,
/// and once the client disconnects its subscription goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_the_child() {
    // The bus holds 16 batches (at most 16 pipe reads, ~1 MiB) for a slow subscriber.
    let f = fixture_with_capacity(16).await;
    let token = f.server.token().to_string();
    let flood = || {
        f.service
            .start(RunOptions::new("head").args(["-c", "33554432", "/dev/urandom"]))
    };
    // The same flood with no client, for comparison.
    let started = Instant::now();
    within(
        Duration::from_secs(60),
        "the flood alone",
        flood().await.unwrap().wait(),
    )
    .await
    .unwrap();
    let alone = started.elapsed();
    let subscribers = f.bus.subscriber_count();
    let (mut stream, mut seen) = open_events(f.addr, &token, "").await;
    seen.clear();
    assert_eq!(f.bus.subscriber_count(), subscribers + 1);
    let rss_before = rss_kib();
    // 32 MiB in lines of about 256 bytes (random bytes, a newline in 256), ~130,000 lines.
    let started = Instant::now();
    let flood = flood().await.unwrap();
    within(Duration::from_secs(60), "the flooding child", flood.wait())
        .await
        .unwrap();
    let took = started.elapsed();
    let rss_after = rss_kib();
    eprintln!(
        "flood of 32 MiB: alone {alone:?}, with a stalled SSE client {took:?}, RSS {rss_before:?} -> {rss_after:?} KiB"
    );
    // Held back for the bus's stall (100 ms) once, not for as long as the client stalls; the
    // bound is loose for a shared machine.
    assert!(
        took < alone * 3 + Duration::from_secs(2),
        "{took:?} vs {alone:?} alone"
    );
    // The client reads again: it is told how many output events it missed, and what it gets
    // is what the bus held for it (16 batches) plus what sat in the socket and the 64-event
    // queue, nowhere near the 32 MiB published (more than 64 MiB as SSE JSON): the daemon did
    // not keep the flood for it. (RSS is printed above, not asserted: other tests share this
    // process.)
    let mut received = read_until(&mut stream, &mut seen, "event:lagged", LIMIT).await;
    received += read_until(&mut stream, &mut seen, "event:exited", LIMIT).await;
    assert!(
        received < 16 << 20,
        "the stalled client was sent {received} bytes after it resumed"
    );
    eprintln!("bytes sent to the stalled client after it resumed: {received}");
    // A disconnected client costs nothing: its subscription is dropped at the next event.
    drop(stream);
    let p = cat(&f.service).await;
    for _ in 0..1000 {
        if f.bus.subscriber_count() == subscribers {
            break;
        }
        let _ = p.send_input("tick\n").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(f.bus.subscriber_count(), subscribers);
    p.close_stdin().await;
    within(LIMIT, "cat exit", p.wait()).await.unwrap();
}

fn server_over(service: &Arc<TokioProcessService>, bus: &Arc<BroadcastEventBus>) -> ControlServer {
    ControlServer::new(
        service.clone() as Arc<dyn ProcessService>,
        bus.clone() as Arc<dyn EventBus>,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_is_private_needs_the_token_and_goes_on_stop() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    // Its directory does not exist yet: created 0700.
    let path = dir.path().join("run").join("control.sock");
    let bus = Arc::new(BroadcastEventBus::new(16));
    let service = Arc::new(TokioProcessService::new(bus.clone(), 1024));
    let server = server_over(&service, &bus).with_unix_socket(&path);
    let endpoint = server.start().await.unwrap();
    assert_eq!(endpoint, ControlEndpoint::Unix(path.clone()));
    assert_eq!(endpoint.to_string(), format!("unix:{}", path.display()));
    assert_eq!(server.endpoint(), Some(endpoint.clone()));
    assert_eq!(server.addr(), None);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);

    let p = cat(&service).await;
    let token = server.token().to_string();
    for bad in [None, Some("wrong")] {
        let (status, body) = unix_request(&path, "GET", "/processes", bad).await;
        assert_eq!(status, 401, "{bad:?}: {body}");
    }
    let (status, body) = unix_request(&path, "GET", "/processes", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)[0]["id"], p.id());

    // A second server on a live socket: refused, naming the path; the socket stays.
    let err = server_over(&service, &bus)
        .with_unix_socket(&path)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, core_process::Error::Bind { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let (status, _) = unix_request(&path, "GET", "/processes", Some(&token)).await;
    assert_eq!(status, 200, "the first server still serves");

    server.stop().await.unwrap();
    assert!(!path.exists(), "socket removed on stop");
    p.close_stdin().await;
    within(LIMIT, "cat exit", p.wait()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_a_file_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    // A dead daemon's socket: the file is there, nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let bus = Arc::new(BroadcastEventBus::new(16));
    let service = Arc::new(TokioProcessService::new(bus.clone(), 1024));
    let server = server_over(&service, &bus).with_unix_socket(&path);
    server.start().await.unwrap();
    let (status, _) = unix_request(&path, "GET", "/processes", Some(server.token())).await;
    assert_eq!(status, 200);
    // Dropped without stop: the socket goes all the same.
    drop(server);
    assert!(!path.exists());

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "data").unwrap();
    let err = server_over(&service, &bus)
        .with_unix_socket(&file)
        .start()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
}

/// A control API over a real supervisor, and one supervised `sh` gated on its stdin that
/// exits 3 on a line (and is restarted, always, after 10 ms).
struct Supervised {
    service: Arc<TokioProcessService>,
    supervisor: Arc<ProcessSupervisor>,
    server: ControlServer,
    sup: core_process::SupervisedProcess,
}

async fn supervised() -> Supervised {
    let bus = Arc::new(BroadcastEventBus::new(1024));
    let service = Arc::new(TokioProcessService::new(bus.clone(), 1024));
    let supervisor = Arc::new(ProcessSupervisor::new(
        service.clone() as Arc<dyn ProcessService>,
        bus.clone() as Arc<dyn EventBus>,
    ));
    let server = server_over(&service, &bus)
        .with_supervisor(supervisor.clone() as Arc<dyn SupervisorService>);
    server.start().await.unwrap();
    let sup = supervisor
        .supervise(
            RunOptions::new("sh")
                .args(["-c", "read x; exit 3"])
                .stdin(true),
            SupervisePolicy::new()
                .restart(RestartPolicy::always())
                .backoff(Backoff::fixed(Duration::from_millis(10))),
        )
        .await
        .unwrap();
    Supervised {
        service,
        supervisor,
        server,
        sup,
    }
}

fn running(s: &SupervisionState) -> bool {
    matches!(s, SupervisionState::Running { .. })
}

/// Ends the current child (a line on its stdin: it exits 3) and waits until the supervisor
/// has started the next one.
async fn end_current_child(sup: &core_process::SupervisedProcess) {
    let first = sup.pid().unwrap();
    sup.process().unwrap().send_input("\n").await.unwrap();
    eventually(LIMIT, "the restarted child", || {
        sup.restarts() == 1 && sup.pid().is_some_and(|p| p != first) && running(&sup.state())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_processes_show_state_restarts_pid_and_last_exit() {
    let f = supervised().await;
    let addr = f.server.addr().unwrap();
    let token = f.server.token().to_string();
    let id = f.sup.id().to_string();
    f.sup.wait_for(LIMIT, running).await.unwrap();
    let (status, body) = request(addr, "GET", "/supervised", Some(&token), b"").await;
    assert_eq!(status, 200, "{body}");
    let list = json(&body);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["command"], "sh");
    assert_eq!(list[0]["state"]["state"], "running");
    assert_eq!(list[0]["restarts"], 0);
    assert_eq!(list[0]["pid"], f.sup.pid().unwrap());
    assert!(list[0]["last_exit"].is_null());

    end_current_child(&f.sup).await;
    let (status, body) =
        request(addr, "GET", &format!("/supervised/{id}"), Some(&token), b"").await;
    assert_eq!(status, 200, "{body}");
    let one = json(&body);
    assert_eq!(one["restarts"], 1);
    assert_eq!(one["pid"], f.sup.pid().unwrap());
    assert_eq!(one["last_exit"]["exit_code"], 3);
    assert_eq!(one["last_exit"]["attempt"], 1);

    for (method, path, expected) in [
        ("GET", "/supervised/sup-999", 404),
        ("POST", "/supervised", 405),
        ("DELETE", &format!("/supervised/{id}") as &str, 405),
    ] {
        let (status, body) = request(addr, method, path, Some(&token), b"").await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert!(json(&body)["error"].is_string());
    }
    let (status, _) = request(addr, "GET", "/supervised", None, b"").await;
    assert_eq!(status, 401);

    f.supervisor.shutdown().await.unwrap();
    let (_, body) = request(addr, "GET", "/supervised", Some(&token), b"").await;
    assert_eq!(json(&body)[0]["state"]["state"], "stopped");
    assert_eq!(json(&body)[0]["pid"], serde_json::Value::Null);
    f.server.stop().await.unwrap();
    assert!(f.service.list().iter().all(|p| !p.is_running()));

    // Without a supervisor: nothing supervised, and no id is known.
    let g = fixture().await;
    let token = g.server.token().to_string();
    let (status, body) = request(g.addr, "GET", "/supervised", Some(&token), b"").await;
    assert_eq!((status, body.as_str()), (200, "[]"));
    let (status, body) = request(g.addr, "GET", "/supervised/sup-1", Some(&token), b"").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no supervisor"), "{body}");
}

/// A daemon in `dir` (lock file, health on a free port, registry `dir/registry`) serving
/// `control` as one of its steps.
fn daemon_with(dir: &std::path::Path, control: &Arc<ControlServer>) -> Arc<dyn DaemonService> {
    let daemon = Daemon::new(
        DaemonOptions {
            health: true,
            registry_entry: Some(DaemonEntry::new("app", "published")),
            ..Default::default()
        },
        Arc::new(FilePidLock::new(dir.join("app.pid"))),
        Arc::new(WarpHealthServer::new("127.0.0.1:0".parse().unwrap())),
        Arc::new(FileRegistry::new(dir.join("registry"))),
    );
    daemon.set_control(control.clone());
    Arc::new(daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_and_publishes_its_control_api() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(BroadcastEventBus::new(16));
    let service = Arc::new(TokioProcessService::new(bus.clone(), 1024));
    let socket = dir.path().join("run").join("control.sock");
    let control = Arc::new(server_over(&service, &bus).with_unix_socket(&socket));
    let daemon = daemon_with(dir.path(), &control);
    daemon.start().await.unwrap();

    // The entry names the API; the token lies beside it, private.
    let entry = daemon.registered_entry().unwrap();
    assert_eq!(entry.control, format!("unix:{}", socket.display()));
    assert_eq!(
        Some(entry.control.clone()),
        control.endpoint().map(|e| e.to_string())
    );
    let file = dir.path().join("registry").join("app-published.json");
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(on_disk["control"], entry.control.as_str());
    assert_eq!(on_disk["health"], entry.health.as_str());
    let token = token_path(&dir.path().join("registry"), &entry).unwrap();
    assert_eq!(std::fs::read_to_string(&token).unwrap(), control.token());
    let mode = std::fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (status, _) = unix_request(&socket, "GET", "/processes", Some(control.token())).await;
    assert_eq!(status, 200);

    // Stop: entry, API, token file and socket all gone; a second start serves again.
    daemon.stop().await.unwrap();
    assert!(!file.exists() && !token.exists() && !socket.exists());
    assert_eq!(control.endpoint(), None);
    daemon.start().await.unwrap();
    assert!(control.endpoint().is_some() && token.exists());
    daemon.stop().await.unwrap();
    assert!(!token.exists() && !socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_api_that_cannot_start_undoes_the_daemons_start() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(BroadcastEventBus::new(16));
    let service = Arc::new(TokioProcessService::new(bus.clone(), 1024));
    // A live server already on the socket.
    let socket = dir.path().join("control.sock");
    let squatter = server_over(&service, &bus).with_unix_socket(&socket);
    squatter.start().await.unwrap();
    let control = Arc::new(server_over(&service, &bus).with_unix_socket(&socket));
    let daemon = daemon_with(dir.path(), &control);
    let err = daemon.start().await.unwrap_err();
    assert!(matches!(err, core_process::Error::Bind { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&socket.display().to_string()),
        "{err}"
    );
    assert!(!daemon.is_running());
    assert_eq!(daemon.health_addr(), None);
    assert!(
        !dir.path()
            .join("registry")
            .join("app-published.json")
            .exists()
    );
    // The lock is free again: another daemon on the same lock starts.
    let free = Arc::new(server_over(&service, &bus));
    let other = daemon_with(dir.path(), &free);
    other.start().await.unwrap();
    assert!(
        other
            .registered_entry()
            .unwrap()
            .control
            .starts_with("127.0.0.1:")
    );
    other.stop().await.unwrap();
    squatter.stop().await.unwrap();
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_token_file_is_private_and_the_entry_names_the_api() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(BroadcastEventBus::new(16));
    let service = Arc::new(TokioProcessService::new(bus.clone(), 1024));
    let server = ControlServer::new(service, bus)
        .unwrap()
        .with_token("configured-token-0123456789")
        .unwrap();
    let mut entry = DaemonEntry::new("myapp", "server");
    entry.control = "127.0.0.1:9091".into();
    let path = token_path(dir.path(), &entry).unwrap();
    std::fs::write(&path, "old").unwrap();
    server.write_token_file(&path).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "configured-token-0123456789"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Stopping removes it (the runtime is only for the async stop).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(server.stop())
        .unwrap();
    assert!(!path.exists());
    let json = serde_json::to_value(&entry).unwrap();
    assert_eq!(json["control"], "127.0.0.1:9091");
    // Go's entries have no such field, and ours without an API write none.
    let back: DaemonEntry = serde_json::from_str(
        r#"{"code":"a","daemon":"b","pid":1,"started":"2026-01-02T03:04:05Z"}"#,
    )
    .unwrap();
    assert_eq!(back.control, "");
    assert!(
        serde_json::to_value(&back)
            .unwrap()
            .get("control")
            .is_none()
    );
    assert!(
        ControlServer::new(
            Arc::new(TokioProcessService::new(
                Arc::new(BroadcastEventBus::new(1)),
                1
            )),
            Arc::new(BroadcastEventBus::new(1))
        )
        .unwrap()
        .with_token("short")
        .is_err()
    );
}

/// The `core-process` command line against a registry in a temp dir, with this test process
/// as the daemon (its control API served here).
#[cfg(feature = "cli")]
mod cli {
    use std::path::Path;
    use std::process::Stdio;

    use core_process::Registry;
    use tokio::io::{AsyncBufReadExt, BufReader};

    use super::*;

    const CLI: &str = env!("CARGO_BIN_EXE_core-process");

    async fn cli(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
        let out = within(
            LIMIT,
            "core-process",
            tokio::process::Command::new(CLI)
                .arg("--registry")
                .arg(dir)
                .args(args)
                .env("NO_COLOR", "1")
                .output(),
        )
        .await
        .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Registers this process as daemon `app/ctl` with the fixture's control API.
    async fn publish(f: &Fixture, dir: &std::path::Path) -> DaemonEntry {
        let registry = FileRegistry::new(dir);
        let mut entry = DaemonEntry::new("app", "ctl");
        entry.pid = std::process::id();
        entry.control = f.addr.to_string();
        f.server
            .write_token_file(&token_path(dir, &entry).unwrap())
            .unwrap();
        registry.register(entry.clone()).await.unwrap();
        registry.get("app", "ctl").await.unwrap().unwrap()
    }

    /// A `sleep` reaped as soon as it ends (so a signalled one does not linger as a zombie).
    fn sleeper() -> (u32, tokio::task::JoinHandle<()>) {
        let mut child = tokio::process::Command::new("sleep")
            .arg("300")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        (
            pid,
            tokio::spawn(async move {
                let _ = child.wait().await;
            }),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_shows_ours_gos_and_pruned_entries() {
        let f = fixture().await;
        let dir = tempfile::tempdir().unwrap();
        publish(&f, dir.path()).await;
        // A go-process entry (Go's layout, no start time, a field we do not know) naming a
        // live process, and a dead one.
        let (go_pid, go_task) = sleeper();
        std::fs::write(
            dir.path().join("goapp-worker.json"),
            format!(
                "{{\n  \"code\": \"goapp\",\n  \"daemon\": \"worker\",\n  \"pid\": {go_pid},\n  \"health\": \"127.0.0.1:1\",\n  \"started\": \"2026-01-02T03:04:05.123+01:00\",\n  \"extra\": true\n}}"
            ),
        )
        .unwrap();
        let dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        let mut dead = dead;
        dead.wait().unwrap();
        std::fs::write(
            dir.path().join("old-gone.json"),
            format!(r#"{{"code":"old","daemon":"gone","pid":{dead_pid},"started":"2026-01-02T03:04:05Z"}}"#),
        )
        .unwrap();

        let (code, out, err) = cli(dir.path(), &["list", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        let row = |d: &str| rows.iter().find(|r| r["daemon"] == d).unwrap().clone();
        assert_eq!(row("ctl")["state"], "running");
        assert_eq!(row("ctl")["control"], f.addr.to_string());
        assert_eq!(row("worker")["state"], "running");
        assert_eq!(row("worker")["pid"], go_pid);
        // Its health address answers nothing: probed live, reported unreachable.
        assert_eq!(row("worker")["health"], "unreachable");
        assert_eq!(row("gone")["state"], "pruned");
        assert!(
            !dir.path().join("old-gone.json").exists(),
            "dead entry pruned"
        );

        let (code, out, _) = cli(dir.path(), &["list"]).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("DAEMON") && out.contains("goapp/worker") && out.contains("app/ctl"),
            "{out}"
        );
        go_task.abort();
    }

    /// A [`sleeper`] registered in `dir` as `app/{daemon}`.
    async fn registered_sleeper(dir: &Path, daemon: &str) -> (u32, tokio::task::JoinHandle<()>) {
        let (pid, task) = sleeper();
        let mut entry = DaemonEntry::new("app", daemon);
        entry.pid = pid;
        FileRegistry::new(dir).register(entry).await.unwrap();
        (pid, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_refuses_a_pid_with_another_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let (pid, task) = registered_sleeper(dir.path(), "victim").await;
        let path = dir.path().join("app-victim.json");
        let mut e: DaemonEntry = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        // The pid now names another process: its start time differs from the entry's.
        e.pid_start_ticks = Some(e.pid_start_ticks.unwrap() + 1);
        std::fs::write(&path, serde_json::to_vec(&e).unwrap()).unwrap();

        let (code, _, err) = cli(dir.path(), &["stop", "app/victim", "--timeout", "1s"]).await;
        assert_eq!(code, 4, "{err}");
        assert!(
            err.contains("refused") && err.contains(&pid.to_string()),
            "{err}"
        );
        assert!(
            crate::support::alive(pid),
            "the process with the reused pid was not signalled"
        );
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_sends_term_and_waits_until_the_entry_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (_, task) = registered_sleeper(dir.path(), "sleeper").await;
        let (code, out, err) = cli(dir.path(), &["stop", "app/sleeper", "--timeout", "10s"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("stopped app/sleeper"), "{out}");
        assert!(!dir.path().join("app-sleeper.json").exists());
        let _ = task.await;
        let (code, _, err) = cli(dir.path(), &["stop", "app/sleeper"]).await;
        assert_eq!(code, 3, "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logs_follow_sees_a_line_printed_after_it_started() {
        let f = fixture().await;
        let dir = tempfile::tempdir().unwrap();
        publish(&f, dir.path()).await;
        let p = cat(&f.service).await;
        p.send_input("before\n").await.unwrap();
        eventually(LIMIT, "first line", || p.output() == "before\n").await;
        let mut child = tokio::process::Command::new(CLI)
            .arg("--registry")
            .arg(dir.path())
            .args(["logs", "app/ctl", p.id(), "-f"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = within(LIMIT, "first line", lines.next_line())
            .await
            .unwrap();
        assert_eq!(first.as_deref(), Some("before"));
        // It follows now (the tail is printed after it subscribed): a new line reaches it.
        p.send_input("after\n").await.unwrap();
        let next = within(LIMIT, "followed line", lines.next_line())
            .await
            .unwrap();
        assert_eq!(next.as_deref(), Some("after"));
        // The process ends: so does `logs -f`, with 0.
        p.close_stdin().await;
        let status = within(LIMIT, "logs -f exit", child.wait()).await.unwrap();
        assert_eq!(status.code(), Some(0));

        let (code, out, err) = cli(dir.path(), &["status", "app/ctl", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["processes"][0]["id"], p.id());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_and_logs_talk_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(BroadcastEventBus::new(16));
        let service = Arc::new(TokioProcessService::new(bus.clone(), 1024));
        let server = server_over(&service, &bus).with_unix_socket(dir.path().join("ctl.sock"));
        let endpoint = server.start().await.unwrap();
        let registry = FileRegistry::new(dir.path());
        let mut entry = DaemonEntry::new("app", "unix");
        entry.pid = std::process::id();
        entry.control = endpoint.to_string();
        server
            .write_token_file(&token_path(dir.path(), &entry).unwrap())
            .unwrap();
        registry.register(entry).await.unwrap();
        let p = cat(&service).await;
        p.send_input("over the socket\n").await.unwrap();
        eventually(LIMIT, "line", || p.output() == "over the socket\n").await;

        let (code, out, err) = cli(dir.path(), &["status", "app/unix", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["processes"][0]["id"], p.id());
        assert_eq!(v["entry"]["control"], endpoint.to_string());
        let (code, out, err) = cli(dir.path(), &["logs", "app/unix", p.id()]).await;
        assert_eq!((code, out.as_str()), (0, "over the socket\n"), "{err}");
        p.close_stdin().await;
        within(LIMIT, "cat exit", p.wait()).await.unwrap();
        server.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_shows_the_supervised_processes() {
        let f = supervised().await;
        f.sup.wait_for(LIMIT, running).await.unwrap();
        end_current_child(&f.sup).await;
        let dir = tempfile::tempdir().unwrap();
        let registry = FileRegistry::new(dir.path());
        let mut entry = DaemonEntry::new("app", "sup");
        entry.pid = std::process::id();
        entry.control = f.server.endpoint().unwrap().to_string();
        f.server
            .write_token_file(&token_path(dir.path(), &entry).unwrap())
            .unwrap();
        registry.register(entry).await.unwrap();

        let (code, out, err) = cli(dir.path(), &["status", "app/sup"]).await;
        assert_eq!(code, 0, "{err}");
        let pid = f.sup.pid().unwrap().to_string();
        let row = out
            .lines()
            .find(|l| l.contains(f.sup.id()))
            .unwrap_or_else(|| panic!("no row for {}: {out}", f.sup.id()));
        assert!(
            out.contains("SUPERVISED") && out.contains("RESTARTS"),
            "{out}"
        );
        assert!(row.contains("running") && row.contains(&pid), "{row}");
        assert!(row.contains("exited with code 3"), "last exit shown: {row}");
        let (code, out, err) = cli(dir.path(), &["status", "app/sup", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["supervised"][0]["id"], f.sup.id());
        assert_eq!(v["supervised"][0]["restarts"], 1);
        f.supervisor.shutdown().await.unwrap();
        f.server.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cli_finds_the_api_the_daemon_published() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(BroadcastEventBus::new(16));
        let service = Arc::new(TokioProcessService::new(bus.clone(), 1024));
        let control = Arc::new(server_over(&service, &bus));
        let daemon = daemon_with(dir.path(), &control);
        daemon.start().await.unwrap();
        let p = cat(&service).await;
        let registry = dir.path().join("registry");
        let (code, out, err) = cli(&registry, &["status", "app/published", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["processes"][0]["id"], p.id());
        assert_eq!(v["ready"], true);
        let (code, out, _) = cli(&registry, &["list", "--json"]).await;
        assert_eq!(code, 0);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(rows[0]["control"], control.endpoint().unwrap().to_string());
        p.close_stdin().await;
        within(LIMIT, "cat exit", p.wait()).await.unwrap();
        daemon.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_passes_output_and_exit_codes_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let (code, out, _) = cli(dir.path(), &["run", "--", "sh", "-c", "echo hi; exit 3"]).await;
        assert_eq!((code, out.as_str()), (3, "hi\n"));
        let started = Instant::now();
        let (code, _, err) = cli(
            dir.path(),
            &[
                "run",
                "--timeout",
                "200ms",
                "--grace",
                "1s",
                "--",
                "sh",
                "-c",
                "sleep 30 & wait",
            ],
        )
        .await;
        assert_eq!(code, 124, "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let (code, _, _) = cli(dir.path(), &["run", "--", "/nonexistent/cmd"]).await;
        assert_eq!(code, 125);
        let (code, _, _) = cli(
            dir.path(),
            &["wait-health", "127.0.0.1:1", "--timeout", "200ms"],
        )
        .await;
        assert_eq!(code, 5);
        let (code, _, _) = cli(dir.path(), &["stop", "nodaemon"]).await;
        assert_eq!(code, 2);
    }
}

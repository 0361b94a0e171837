//! The health server: `/health`, `/ready`, checks, binding, `wait_for_health`.

use std::time::{Duration, Instant};

use core_process::testing::http_get;
use core_process::{
    Error, HealthCheck, HealthReport, HealthService, WarpHealthServer, wait_for_health,
};

use crate::daemon::*;
use crate::support::within;
use core_process::services::health::CheckKind;
use std::net::SocketAddr;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Health server

#[tokio::test]
async fn health_and_ready_answer_200_by_default() {
    let server = server();
    assert_eq!(server.addr(), None);
    let addr = server.start().await.unwrap();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    assert_eq!(server.addr(), Some(addr));
    assert_eq!(get(addr, "/health").await, (200, "ok\n".to_string()));
    assert_eq!(get(addr, "/ready").await, (200, "ready\n".to_string()));
    assert_eq!(get(addr, "/nope").await.0, 404);
    server.stop().await.unwrap();
    assert_eq!(server.addr(), None);
}

#[tokio::test]
async fn ready_is_503_after_set_ready_false() {
    let server = server();
    let addr = server.start().await.unwrap();
    server.set_ready(false);
    assert!(!server.is_ready());
    assert_eq!(get(addr, "/ready").await, (503, "not ready\n".to_string()));
    server.set_ready(true);
    assert_eq!(get(addr, "/ready").await.0, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn failing_checks_give_503_naming_each_with_its_reason() {
    let server = server();
    server.add_check("db", ok_check());
    server.add_check("cache", failing("connection refused"));
    server.add_check(
        "disk",
        HealthCheck::blocking(|| Err::<(), _>("98% full".to_string())),
    );
    let addr = server.start().await.unwrap();
    let (status, body) = get(addr, "/health").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        "unhealthy: cache: connection refused; disk: 98% full\n"
    );
    // Replacing a check by name heals it.
    server.add_check("cache", ok_check());
    server.add_check("disk", HealthCheck::blocking(|| Ok::<(), String>(())));
    assert_eq!(get(addr, "/health").await, (200, "ok\n".to_string()));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn json_detail_on_accept_header_or_verbose() {
    let server = server();
    server.add_check("db", ok_check());
    server.add_check("queue", failing("backlog 10000"));
    let addr = server.start().await.unwrap();
    for (target, accept) in [
        ("/health", Some("application/json")),
        ("/health?verbose", None),
    ] {
        let (status, body) = http_get(addr, target, accept).await.unwrap();
        assert_eq!(status, 503);
        let report: HealthReport = serde_json::from_str(&body).unwrap();
        assert!(!report.healthy);
        assert_eq!(report.checks.len(), 2);
        assert_eq!(report.checks[0].name, "db");
        assert!(report.checks[0].ok);
        assert_eq!(report.checks[1].name, "queue");
        assert_eq!(report.checks[1].reason.as_deref(), Some("backlog 10000"));
        let raw: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(raw["checks"][0]["duration"].is_f64(), "{body}");
    }
    let (status, body) = http_get(addr, "/ready?verbose", None).await.unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_hanging_check_does_not_block_ready_and_times_out_as_failed() {
    let server = server().with_check_timeout(Duration::from_millis(1500));
    server.add_check("db", ok_check());
    server.add_check(
        "stuck",
        HealthCheck::new(std::future::pending::<Result<(), String>>),
    );
    let addr = server.start().await.unwrap();
    let started = Instant::now();
    let health = tokio::spawn(async move { get(addr, "/health").await });
    // Meanwhile the server keeps answering.
    for _ in 0..3 {
        assert_eq!(get(addr, "/ready").await.0, 200);
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "/ready waited for the hung check"
    );
    assert!(!health.is_finished());
    let (status, body) = within(LIMIT, "/health with a hung check", health)
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(body, "unhealthy: stuck: timed out after 1.5s\n");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bind_failure_is_an_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let server = WarpHealthServer::new(addr);
    match server.start().await {
        Err(e @ Error::Bind { .. }) => assert!(e.to_string().contains(&addr.to_string())),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.addr(), None);
}

#[tokio::test]
async fn start_twice_is_refused_and_stop_closes_the_port() {
    let server = server();
    let addr = server.start().await.unwrap();
    let err = server.start().await.unwrap_err();
    assert!(matches!(err, Error::AlreadyStarted { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    server.stop().await.unwrap();
    server.stop().await.unwrap();
    assert!(http_get(addr, "/health", None).await.is_err());
    // And it can start again.
    let again = server.start().await.unwrap();
    assert_eq!(get(again, "/ready").await.0, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn wait_for_health_true_on_a_live_server() {
    let server = server();
    let addr = server.start().await.unwrap();
    assert!(wait_for_health(&addr.to_string(), Duration::from_secs(5)).await);
    assert!(
        wait_for_health(
            &format!("localhost:{}", addr.port()),
            Duration::from_secs(5)
        )
        .await
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn wait_for_health_false_for_a_closed_port_within_its_timeout() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // dropped at once: the port is closed
    let started = Instant::now();
    assert!(!wait_for_health(&addr.to_string(), Duration::from_millis(600)).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn wait_for_health_false_while_unhealthy() {
    let server = server();
    server.add_check("never", failing("no"));
    let addr = server.start().await.unwrap();
    assert!(!wait_for_health(&addr.to_string(), Duration::from_millis(400)).await);
    server.stop().await.unwrap();
}

/// One HTTP/1.0 request with `method`: the status and the body.
pub(crate) async fn request(addr: SocketAddr, method: &str, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(LIMIT, "an HTTP request", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    })
    .await
}

pub(crate) fn failing(reason: &'static str) -> HealthCheck {
    HealthCheck::new(move || async move { Err::<(), _>(reason) })
}

/// A check that passes while `up` holds.
fn switch(up: &Arc<std::sync::atomic::AtomicBool>) -> HealthCheck {
    let up = up.clone();
    HealthCheck::new(move || {
        let ok = up.load(std::sync::atomic::Ordering::SeqCst);
        async move { if ok { Ok(()) } else { Err("switched off") } }
    })
}

#[tokio::test]
async fn head_answers_wherever_get_does_with_no_body() {
    let server = server();
    server.add_check("db", ok_check());
    server.add_check("cache", failing("refused").kind(CheckKind::Readiness));
    let addr = server.start().await.unwrap();
    for target in [
        "/health",
        "/health?verbose",
        "/ready",
        "/livez",
        "/livez?verbose",
        "/readyz",
        "/livez/db",
        "/readyz/cache",
        "/readyz/nope",
    ] {
        let (get_status, get_body) = request(addr, "GET", target).await;
        let (head_status, head_body) = request(addr, "HEAD", target).await;
        assert_eq!(head_status, get_status, "HEAD {target}");
        assert_ne!(head_status, 405, "HEAD {target}");
        assert_eq!(head_body, "", "HEAD {target}");
        assert!(!get_body.is_empty(), "GET {target}");
    }
    assert_eq!(request(addr, "POST", "/livez").await.0, 405);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn livez_and_readyz_follow_the_kubernetes_conventions() {
    let server = server().with_startup_grace(Duration::ZERO);
    server.add_check("ping", ok_check());
    server.add_check(
        "etcd",
        failing("connection refused").kind(CheckKind::Liveness),
    );
    server.add_check("warm", ok_check().kind(CheckKind::Readiness));
    let addr = server.start().await.unwrap();

    // /livez: the liveness checks (Both and Liveness), in the order added.
    let withheld = "[+]ping ok\n[-]etcd failed: reason withheld\nlivez check failed\n";
    let reasons = "[+]ping ok\n[-]etcd failed: connection refused\nlivez check failed\n";
    assert_eq!(get(addr, "/livez").await, (503, withheld.to_string()));
    assert_eq!(
        get(addr, "/livez?verbose").await,
        (503, reasons.to_string())
    );
    assert_eq!(
        get(addr, "/livez?verbose=1").await,
        (503, reasons.to_string())
    );
    assert_eq!(
        get(addr, "/livez?verbose=0").await,
        (503, withheld.to_string())
    );
    assert_eq!(
        get(addr, "/livez?verbose=false").await,
        (503, withheld.to_string())
    );
    assert_eq!(get(addr, "/livez?exclude=etcd").await, (200, "ok\n".into()));
    assert_eq!(
        get(addr, "/livez?exclude=etcd&verbose").await,
        (
            200,
            "[+]ping ok\n[+]etcd excluded: ok\nlivez check passed\n".into()
        )
    );
    let (status, body) = get(addr, "/livez?exclude=etcd&exclude=nope&verbose").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("warn: some health checks cannot be excluded: no matches for \"nope\"\n"),
        "{body}"
    );

    // /readyz: the readiness flag first, then the readiness checks (Both and Readiness).
    assert_eq!(
        get(addr, "/readyz?verbose").await,
        (
            200,
            "[+]ready ok\n[+]ping ok\n[+]warm ok\nreadyz check passed\n".into()
        )
    );
    assert_eq!(get(addr, "/readyz").await, (200, "ok\n".into()));
    server.set_ready(false);
    assert_eq!(
        get(addr, "/readyz").await,
        (
            503,
            "[-]ready failed: reason withheld\n[+]ping ok\n[+]warm ok\nreadyz check failed\n"
                .into()
        )
    );
    assert_eq!(
        get(addr, "/readyz/ready").await,
        (503, "[-]ready failed: not ready\n".into())
    );
    server.set_ready(true);

    // One check: only a check of that probe's kind.
    assert_eq!(get(addr, "/livez/ping").await, (200, "ok\n".into()));
    assert_eq!(
        get(addr, "/livez/etcd").await,
        (503, "[-]etcd failed: connection refused\n".into())
    );
    assert_eq!(get(addr, "/readyz/warm").await, (200, "ok\n".into()));
    assert_eq!(get(addr, "/livez/warm").await.0, 404);
    assert_eq!(get(addr, "/readyz/etcd").await.0, 404);
    assert_eq!(get(addr, "/readyz/nope").await.0, 404);

    // JSON on request; /health still runs every check, whatever its kind.
    let (status, body) = http_get(addr, "/livez", Some("application/json"))
        .await
        .unwrap();
    assert_eq!(status, 503);
    let report: HealthReport = serde_json::from_str(&body).unwrap();
    assert!(!report.healthy);
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ping", "etcd"]);
    assert_eq!(
        get(addr, "/health").await,
        (503, "unhealthy: etcd: connection refused\n".into())
    );
    assert_eq!(
        get(addr, "/health?verbose=false").await,
        (503, "unhealthy: etcd: connection refused\n".into())
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn livez_passes_in_the_start_up_grace_until_the_first_successful_readiness() {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = server(); // the default grace, 60 s: longer than this test
    server.add_check("db", switch(&up));
    let addr = server.start().await.unwrap();
    // Starting: the check fails, liveness passes and says why; readiness fails.
    assert_eq!(get(addr, "/livez").await, (200, "ok\n".into()));
    let (status, body) = get(addr, "/livez?verbose").await;
    assert_eq!(status, 200);
    assert!(body.contains("[-]db failed: switched off\n"), "{body}");
    assert!(body.contains("start-up grace"), "{body}");
    assert!(server.check_liveness().await.healthy);
    assert_eq!(get(addr, "/readyz").await.0, 503);
    // Ready once: from then on a failure fails liveness.
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    up.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get(addr, "/livez").await.0, 503);
    assert!(!server.check_liveness().await.healthy);
    // A restart starts a new grace.
    server.stop().await.unwrap();
    let addr = server.start().await.unwrap();
    assert_eq!(get(addr, "/livez").await.0, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_start_up_grace_ends_after_its_period() {
    let grace = Duration::from_millis(500);
    let server = server().with_startup_grace(grace);
    server.add_check("db", failing("down"));
    let started = Instant::now();
    let addr = server.start().await.unwrap();
    // An answer that arrives within the period was given within it: 200. Past it: 503.
    loop {
        let status = get(addr, "/livez").await.0;
        let at = started.elapsed();
        if status == 503 {
            assert!(at >= grace, "the grace ended early, at {at:?}");
            break;
        }
        assert_eq!(status, 200);
        assert!(at < LIMIT, "the grace never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.unwrap();
}

//! The health server: `/health`, `/ready`, checks, binding, `wait_for_health`.

use std::time::{Duration, Instant};

use core_process::testing::http_get;
use core_process::{
    Error, HealthCheck, HealthReport, HealthService, WarpHealthServer, wait_for_health,
};

use crate::daemon::*;
use crate::support::within;

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
    server.add_check(
        "cache",
        HealthCheck::new(|| async { Err::<(), _>("connection refused") }),
    );
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
    server.add_check(
        "queue",
        HealthCheck::new(|| async { Err::<(), _>("backlog 10000") }),
    );
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
    server.add_check("never", HealthCheck::new(|| async { Err::<(), _>("no") }));
    let addr = server.start().await.unwrap();
    assert!(!wait_for_health(&addr.to_string(), Duration::from_millis(400)).await);
    server.stop().await.unwrap();
}

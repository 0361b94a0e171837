//! Benchmark 4, health server: requests per second on `GET /health` served by
//! `WarpHealthServer` with three trivial checks, against a bare warp 0.4 handler
//! (`warp::path("health").map(|| "ok")`) served the same way (a tokio `TcpListener` on
//! `127.0.0.1:0`, `warp::serve(..).incoming(listener).graceful(..)`).
//!
//! Both are driven by the same in-process load generator: `CONNECTIONS` keep-alive HTTP/1.1
//! connections on tokio `TcpStream`s, each sending `GET /health` and reading the whole response
//! (head, then `content-length` bytes of body) before the next request, for a fixed time per
//! round. Client and server share one multi-threaded runtime (and the machine's cores), so the
//! client is kept cheap: one 4 KiB buffer per connection, no allocation per request.
//!
//! Run: `cargo bench --bench health` (see `docs/performance.md`).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Config, Goal};
use core_process::{HealthCheck, HealthService, WarpHealthServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::Filter;

/// The request every connection sends, again and again.
const REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

/// Concurrent keep-alive connections of the load generator.
const CONNECTIONS: usize = 32;

/// The bare warp server: the baseline.
struct Bare {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Serves `warp::path("health").map(|| "ok")` as `WarpHealthServer` serves its routes.
async fn start_bare() -> Bare {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let route = warp::path("health").map(|| "ok");
    let (shutdown, signal) = oneshot::channel::<()>();
    let server = warp::serve(route).incoming(listener).graceful(async move {
        let _ = signal.await;
    });
    let task = tokio::spawn(server.run());
    Bare {
        addr,
        shutdown,
        task,
    }
}

/// `WarpHealthServer` on loopback with three checks that pass at once.
async fn start_ours() -> (WarpHealthServer, SocketAddr) {
    let server = WarpHealthServer::new("127.0.0.1:0".parse().expect("addr"));
    for name in ["db", "queue", "disk"] {
        server.add_check(name, HealthCheck::new(|| async { Ok::<(), String>(()) }));
    }
    let addr = server.start().await.expect("start health server");
    (server, addr)
}

/// Requests per second of `GET /health` on `addr` with `CONNECTIONS` keep-alive connections
/// for `length` (a 4 KiB buffer per connection).
async fn load(addr: SocketAddr, length: Duration) -> f64 {
    common::http_load(addr, Arc::from(REQUEST), CONNECTIONS, 4096, length).await
}

/// Microseconds per `HealthService::check` (the three checks alone, no HTTP), one at a time.
async fn check_us(server: &WarpHealthServer, n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        assert!(server.check().await.healthy);
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let cfg = Config::from_env();
    common::header("health", &cfg);
    let rt = common::runtime();
    let length = cfg.size(Duration::from_secs(1), Duration::from_millis(300));
    let (ours, ours_addr) = rt.block_on(start_ours());
    let bare = rt.block_on(start_bare());

    if let Some(fig) = cfg.figure(
        "health_requests_per_s",
        "requests/s",
        "bare warp `path(\"health\").map(|| \"ok\")`",
        Goal::AtLeast(0.90),
    ) {
        let mut a = || rt.block_on(load(ours_addr, length));
        let mut b = || rt.block_on(load(bare.addr, length));
        fig.run(cfg.rounds_or(7), &mut [&mut a, &mut b], format!(
            "GET /health, {CONNECTIONS} keep-alive connections, {length:?} per round, in-process client, three passing checks"
        ));
    }

    if cfg.wants("health_check") {
        let n = cfg.size(20_000, 5_000);
        let us: Vec<f64> = (0..cfg.rounds)
            .map(|_| rt.block_on(check_us(&ours, n)))
            .collect();
        common::info(
            "health_check_us",
            "HealthService::check with the three checks, no HTTP, one at a time",
            &us,
        );
    }

    rt.block_on(async {
        ours.stop().await.expect("stop");
        let _ = bare.shutdown.send(());
        bare.task.await.expect("bare server");
    });
}

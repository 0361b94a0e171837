//! Benchmark: the control API's `GET /processes` with 100 running processes (each answer
//! about 25 KiB of JSON, every `Info`), in requests per second, against the bare health
//! endpoint (`GET /health` of `WarpHealthServer` with no checks) on the same machine in the
//! same run, as a ratio. The control API's price is the token check, the routing, 100 `Info`
//! snapshots and their JSON; the figure says what a poller (a dashboard, `core-process
//! status`) costs the daemon.
//!
//! Both are driven by the load generator of `benches/health.rs`: `CONNECTIONS` keep-alive
//! HTTP/1.1 connections, each sending its request and reading the whole response before the
//! next, for a fixed time per round, in one multi-threaded runtime.
//!
//! Run: `cargo bench --features control --bench control` (see `docs/performance.md`).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Config, Goal};
use core_process::services::control::ControlServer;
use core_process::{
    BroadcastEventBus, EventBus, HealthService, ProcessService, RunOptions, TokioProcessService,
    WarpHealthServer,
};

/// Concurrent keep-alive connections of the load generator.
const CONNECTIONS: usize = 32;

/// Processes the control API lists.
const PROCESSES: usize = 100;

/// Requests per second of `request` on `addr` with `CONNECTIONS` connections for `length`
/// (a 64 KiB buffer per connection: the list answer is about 25 KiB).
async fn load(addr: SocketAddr, request: Arc<[u8]>, length: Duration) -> f64 {
    common::http_load(addr, request, CONNECTIONS, 64 * 1024, length).await
}

fn main() {
    let cfg = Config::from_env();
    common::header("control", &cfg);
    common::raise_nofile_limit();
    let rt = common::runtime();
    let length = cfg.size(Duration::from_secs(1), Duration::from_millis(300));

    let bus = Arc::new(BroadcastEventBus::new(1024));
    let service = Arc::new(TokioProcessService::new(
        bus.clone() as Arc<dyn EventBus>,
        4096,
    ));
    let processes: Vec<_> = rt.block_on(async {
        let mut ps = Vec::with_capacity(PROCESSES);
        for _ in 0..PROCESSES {
            ps.push(
                service
                    .start(RunOptions::new("cat").stdin(true))
                    .await
                    .expect("start cat"),
            );
        }
        ps
    });
    let control = ControlServer::new(
        service.clone() as Arc<dyn ProcessService>,
        bus as Arc<dyn EventBus>,
    )
    .expect("control server");
    rt.block_on(control.start()).expect("start control API");
    let control_addr = control.addr().expect("control API on TCP");
    let health = WarpHealthServer::new("127.0.0.1:0".parse().expect("addr"));
    let health_addr = rt.block_on(health.start()).expect("start health server");
    let list: Arc<[u8]> = format!(
        "GET /processes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        control.token()
    )
    .as_bytes()
    .into();
    let bare: Arc<[u8]> = Arc::from(&b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"[..]);

    if let Some(fig) = cfg.figure(
        "control_list_requests_per_s",
        "requests/s",
        "bare `GET /health` of WarpHealthServer (no checks)",
        Goal::AtLeast(0.05),
    ) {
        let mut a = || rt.block_on(load(control_addr, list.clone(), length));
        let mut b = || rt.block_on(load(health_addr, bare.clone(), length));
        fig.run(cfg.rounds_or(7), &mut [&mut a, &mut b], format!(
            "GET /processes listing {PROCESSES} running processes (~25 KiB JSON), {CONNECTIONS} keep-alive connections, {length:?} per round, in-process client"
        ));
    }

    rt.block_on(async {
        control.stop().await.expect("stop control API");
        health.stop().await.expect("stop health server");
        for p in &processes {
            p.close_stdin().await;
        }
        for p in &processes {
            let _ = p.wait().await;
        }
    });
}

//! Restart latency: the time from a child's death to the first output of the child that
//! replaces it, through `ProcessSupervisor` (restart on failure, zero backoff, seen on the
//! event bus: the `Exited` event of one child to the first `Output` event of the next) against
//! a plain loop around raw `tokio::process::Command` (spawn, read the first line, drain, wait;
//! from `wait` returning to the next child's first line). The child is `sh -c 'echo up; exit 1'`.
//!
//! Run: `cargo bench --bench restart` (see `docs/performance.md`).

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Config, Goal};
use core_process::{
    Backoff, BroadcastEventBus, DEFAULT_BUFFER_SIZE, EventBus, ProcessEvent, ProcessService,
    ProcessSupervisor, RecvError, RunOptions, StartLimit, SupervisePolicy, SupervisorService,
    TokioProcessService,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const SCRIPT: &str = "echo up; exit 1";

/// Median restart latency in microseconds over `n` restarts of a supervised crash loop.
async fn ours(sup: &ProcessSupervisor, bus: &Arc<dyn EventBus>, n: usize) -> f64 {
    let mut sub = bus.subscribe();
    let policy = SupervisePolicy::new()
        .backoff(Backoff::fixed(Duration::ZERO))
        .min_uptime(Duration::ZERO)
        .start_limit(StartLimit::new(u32::MAX, Duration::from_secs(1)));
    let s = sup
        .supervise(RunOptions::new("sh").args(["-c", SCRIPT]), policy)
        .await
        .expect("supervise");
    let mut latencies = Vec::with_capacity(n);
    let mut died: Option<Instant> = None;
    while latencies.len() < n {
        match sub.recv().await {
            Ok(ProcessEvent::Exited { .. }) => died = Some(Instant::now()),
            Ok(ProcessEvent::Output { .. }) => {
                if let Some(d) = died.take() {
                    latencies.push(d.elapsed().as_secs_f64() * 1e6);
                }
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    s.stop().await;
    sup.remove(s.id()).expect("remove");
    common::median(&latencies)
}

/// The same with raw tokio: spawn, first line, drain, wait, again.
async fn raw(n: usize) -> f64 {
    let mut latencies = Vec::with_capacity(n);
    let mut died: Option<Instant> = None;
    while latencies.len() < n {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", SCRIPT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut err = child.stderr.take().expect("stderr");
        let mut line = String::new();
        out.read_line(&mut line).await.expect("read");
        if let Some(d) = died.take() {
            latencies.push(d.elapsed().as_secs_f64() * 1e6);
        }
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).await.expect("drain stdout");
        err.read_to_end(&mut rest).await.expect("drain stderr");
        child.wait().await.expect("wait");
        died = Some(Instant::now());
    }
    common::median(&latencies)
}

fn main() {
    let cfg = Config::from_env();
    common::header("restart", &cfg);
    let rt = common::runtime();
    let bus: Arc<dyn EventBus> = Arc::new(BroadcastEventBus::default());
    let service: Arc<dyn ProcessService> =
        Arc::new(TokioProcessService::new(bus.clone(), DEFAULT_BUFFER_SIZE));
    let sup = ProcessSupervisor::new(service, bus.clone());
    let n = cfg.size(100, 30);
    if let Some(fig) = cfg.figure(
        "restart_latency",
        "µs",
        "raw tokio spawn + first line + wait loop",
        Goal::AtMost(1.5),
    ) {
        let mut a = || rt.block_on(ours(&sup, &bus, n));
        let mut b = || rt.block_on(raw(n));
        let note = format!("median of {n} restarts per round");
        fig.run(cfg.rounds_or(7), &mut [&mut a, &mut b], note);
    }
    rt.block_on(sup.shutdown()).expect("shutdown");
}

//! Benchmark 1, spawn rate: start + wait of `/bin/true` through `TokioProcessService` (default
//! options: capture on, stdin piped, own process group; one event subscriber draining the bus)
//! against raw `tokio::process::Command` with piped stdout/stderr drained to end of file, at 1
//! and at 32 spawns in flight.
//!
//! Run: `cargo bench --bench spawn` (see `docs/performance.md`).

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use common::{Config, Figure, Goal};
use core_process::{
    BroadcastEventBus, DEFAULT_BUFFER_SIZE, EventBus, ProcessService, RecvError, RunOptions,
    TokioProcessService,
};
use tokio::io::AsyncReadExt;

const PROGRAM: &str = "/bin/true";

/// Spawns per second through the service, `in_flight` at a time.
async fn ours(service: &Arc<TokioProcessService>, total: usize, in_flight: usize) -> f64 {
    let per_task = total / in_flight;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let service = service.clone();
        tasks.spawn(async move {
            for _ in 0..per_task {
                let p = service
                    .start(RunOptions::new(PROGRAM))
                    .await
                    .expect("start");
                p.wait().await.expect("wait");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("spawn task");
    }
    let rate = (per_task * in_flight) as f64 / start.elapsed().as_secs_f64();
    service.clear();
    rate
}

/// Spawns per second with raw tokio: piped stdout and stderr, both drained, then waited.
async fn raw(total: usize, in_flight: usize) -> f64 {
    let per_task = total / in_flight;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        tasks.spawn(async move {
            for _ in 0..per_task {
                raw_one().await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("spawn task");
    }
    (per_task * in_flight) as f64 / start.elapsed().as_secs_f64()
}

async fn raw_one() {
    let mut child = tokio::process::Command::new(PROGRAM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (ra, rb, status) = tokio::join!(
        out.read_to_end(&mut a),
        err.read_to_end(&mut b),
        child.wait()
    );
    ra.expect("drain stdout");
    rb.expect("drain stderr");
    assert!(status.expect("wait").success());
}

fn main() {
    let cfg = Config::from_env();
    common::header("spawn", &cfg);
    let rt = common::runtime();
    let bus = Arc::new(BroadcastEventBus::default());
    let service = Arc::new(TokioProcessService::new(
        bus.clone() as Arc<dyn EventBus>,
        DEFAULT_BUFFER_SIZE,
    ));
    // One subscriber draining every event, as a host that listens would.
    let mut sub = bus.subscribe();
    let drained = rt.spawn(async move {
        let mut events = 0u64;
        loop {
            match sub.recv().await {
                Ok(_) => events += 1,
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return events,
                Err(e) => panic!("{e}"),
            }
        }
    });

    let mut figures = Vec::new();
    for (in_flight, total) in [(1usize, cfg.size(600, 200)), (32usize, cfg.size(1600, 320))] {
        let name = format!("spawn_true_{in_flight}_in_flight");
        if !cfg.wants(&name) {
            continue;
        }
        let mut fig = Figure::ratio(
            name,
            "spawns/s",
            "raw tokio Command, piped+drained stdout/stderr",
            Goal::AtLeast,
            0.90,
        );
        let mut a = || rt.block_on(ours(&service, total, in_flight));
        let mut b = || rt.block_on(raw(total, in_flight));
        // Rounds are short and spawning is noisy on a shared machine: take more of them.
        let samples = common::interleave(cfg.rounds_or(9), &mut [&mut a, &mut b]);
        fig.ours = samples[0].clone();
        fig.baseline = samples[1].clone();
        fig.note = format!("{total} spawns per round");
        fig.report();
        figures.push(fig);
    }

    drop(service);
    drop(bus);
    let events = rt.block_on(drained).expect("subscriber");
    println!("    (the subscriber drained {events} events)");
}

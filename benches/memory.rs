//! Benchmark 3, memory per idle process: growth of the manager's resident set (`VmRSS`) per
//! managed `sleep 1000` child, capture on, for 1,000 children; against raw tokio holding a
//! `Child` with piped stdout and stderr (the floor).
//!
//! The peer (issue 18), in the same rounds: process-wrap 9 (`ProcessGroup::leader()`, stdin
//! `/dev/null`, stdout and stderr piped), each pipe read by its own task with tokio-util's
//! `LinesCodec` (`FramedRead`), as a user capturing output would hold an idle child.
//!
//! Each sample runs in a fresh copy of this binary (`memory --sample ours|raw N`), so memory
//! freed by one sample cannot be reused by the next and hide its cost. The sample warms its
//! runtime up with a few short-lived children, reads `VmRSS`, starts N children, lets them
//! settle, reads `VmRSS` again, then kills and reaps them all.
//!
//! Run: `cargo bench --bench memory` (see `docs/performance.md`).

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{Config, Figure, Goal};
use core_process::{
    BroadcastEventBus, DEFAULT_BUFFER_SIZE, EventBus, ProcessService, RecvError, RunOptions,
    TokioProcessService,
};

/// Settling time after the last start, before `VmRSS` is read again.
const SETTLE: Duration = Duration::from_millis(500);

/// KiB of `VmRSS` growth per child while `n` children are held: settles, reads `VmRSS`, runs
/// `start` (which starts the `n` children and returns what holds them), settles, reads `VmRSS`
/// again. Returns the growth per child and the holder, for the caller to kill and reap.
async fn growth_per_child<H>(n: usize, start: impl Future<Output = H>) -> (f64, H) {
    tokio::time::sleep(SETTLE).await;
    let before = common::rss_kib();
    let held = start.await;
    tokio::time::sleep(SETTLE).await;
    let after = common::rss_kib();
    ((after.saturating_sub(before)) as f64 / n as f64, held)
}

/// KiB of `VmRSS` growth per child through the service (capture on, one subscriber).
async fn sample_ours(n: usize) -> f64 {
    let bus = Arc::new(BroadcastEventBus::default());
    let service = TokioProcessService::new(bus.clone() as Arc<dyn EventBus>, DEFAULT_BUFFER_SIZE);
    let mut sub = bus.subscribe();
    let listener = tokio::spawn(async move {
        loop {
            if let Err(RecvError::Closed) = sub.recv().await {
                return;
            }
        }
    });
    for _ in 0..20 {
        service
            .run(RunOptions::new("true"))
            .await
            .expect("warm-up child");
    }
    service.clear();
    let (kib, ()) = growth_per_child(n, async {
        for _ in 0..n {
            service
                .start(RunOptions::new("sleep").arg("1000"))
                .await
                .expect("start sleep (out of file descriptors?)");
        }
    })
    .await;
    assert_eq!(service.running().len(), n, "every child still runs");
    for p in service.running() {
        p.kill().await.expect("kill");
    }
    assert!(service.running().is_empty());
    drop(service);
    drop(bus);
    listener.await.expect("listener");
    kib
}

/// KiB of `VmRSS` growth per child held by raw tokio with piped stdout and stderr.
async fn sample_raw(n: usize) -> f64 {
    let spawn = || {
        tokio::process::Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sleep (out of file descriptors?)")
    };
    for _ in 0..20 {
        let mut c = tokio::process::Command::new("true")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("warm-up child");
        c.wait().await.expect("wait");
    }
    let (kib, mut children) =
        growth_per_child(n, async { (0..n).map(|_| spawn()).collect::<Vec<_>>() }).await;
    for c in &mut children {
        c.start_kill().expect("kill");
    }
    for c in &mut children {
        c.wait().await.expect("reap");
    }
    kib
}

/// KiB of `VmRSS` growth per child held with process-wrap, each pipe read by a `LinesCodec`
/// task.
async fn sample_peer(n: usize) -> f64 {
    for _ in 0..20 {
        let mut c = common::peer_spawn("true", &[]);
        let (out, err) = (c.stdout().take(), c.stderr().take());
        let (a, b) = tokio::join!(
            common::peer_lines(out.expect("stdout")),
            common::peer_lines(err.expect("stderr"))
        );
        assert_eq!(a + b, 0);
        c.wait().await.expect("warm-up child");
    }
    let (kib, (mut children, mut readers)) = growth_per_child(n, async {
        let mut children = Vec::with_capacity(n);
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..n {
            let mut c = common::peer_spawn("sleep", &["1000".to_string()]);
            readers.spawn(common::peer_lines(c.stdout().take().expect("stdout")));
            readers.spawn(common::peer_lines(c.stderr().take().expect("stderr")));
            children.push(c);
        }
        (children, readers)
    })
    .await;
    for c in &mut children {
        c.start_kill().expect("kill");
    }
    for c in &mut children {
        c.wait().await.expect("reap");
    }
    while let Some(r) = readers.join_next().await {
        r.expect("reader");
    }
    kib
}

/// Runs one sample in a fresh process and returns its KiB per child.
fn sample(which: &str, n: usize) -> f64 {
    common::fresh_sample(&["--sample".into(), which.into(), n.to_string()])
        .parse()
        .expect("sample prints KiB per child")
}

fn main() {
    let mut args = std::env::args().skip(1);
    if let Some("--sample") = args.next().as_deref() {
        let which = args.next().expect("--sample ours|raw N");
        let n: usize = args.next().and_then(|n| n.parse().ok()).expect("N");
        common::raise_nofile_limit();
        let rt = common::runtime();
        let kib = match which.as_str() {
            "ours" => rt.block_on(sample_ours(n)),
            "raw" => rt.block_on(sample_raw(n)),
            "peer" => rt.block_on(sample_peer(n)),
            other => panic!("unknown sample {other}"),
        };
        println!("{kib:.3}");
        return;
    }

    let cfg = Config::from_env();
    common::header("memory", &cfg);
    let n = cfg.size(1000, 200);
    let (soft, hard) = common::raise_nofile_limit();
    println!(
        "    open files limit: soft {soft}, hard {hard}; {n} children need about {} (5 per child: stdin, stdout, stderr, 2 pidfds)",
        n * 5
    );
    if let Some(fig) = cfg.figure(
        "memory_idle_child_kib",
        "KiB per child",
        "raw tokio Child, piped stdout/stderr, held",
        Goal::AtMost(16.0),
    ) {
        let mut a = || sample("ours", n);
        let mut b = || sample("raw", n);
        let mut c = || sample("peer", n);
        let note =
            format!("{n} idle `sleep 1000` children per sample, each sample a fresh process");
        let vs_peer = format!("{}_vs_process_wrap", fig.name);
        let samples = fig
            .absolute()
            .run(cfg.rounds, &mut [&mut a, &mut b, &mut c], &note);

        Figure::ratio(
            vs_peer,
            "KiB per child",
            "process-wrap ProcessGroup, a LinesCodec task per pipe",
            Goal::AtMost(1.0),
        )
        .report_with(&samples[0], &samples[2], note);
    }
}

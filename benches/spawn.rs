//! Benchmark 1, spawn rate: start + wait of `/bin/true` through `TokioProcessService` (default
//! options: capture on, stdin piped, own process group; one event subscriber draining the bus)
//! against raw `tokio::process::Command` with piped stdout/stderr drained to end of file, at 1
//! and at 32 spawns in flight.
//!
//! The peer (issue 18), in the same rounds: process-wrap 9 (`CommandWrap` + `ProcessGroup::leader()`,
//! stdin `/dev/null`, stdout and stderr piped and read to end of file with tokio-util's
//! `LinesCodec`, then waited). Ours runs twice: with default options (stdin piped, so
//! `send_input` works) and with `RunOptions::stdin(false)` (`/dev/null`, as the peer). Besides
//! spawns/s, each round records the manager's CPU per spawn (µs): the bench process's own CPU
//! time (every thread, children excluded: `CLOCK_PROCESS_CPUTIME_ID`, what
//! `getrusage(RUSAGE_SELF)` reports, at ns precision) across the round, divided by the spawns.
//! Ours runs on a bus nobody listens to, as the peer (which has no events); and again with one
//! subscriber draining every event, as a host that listens would, against raw tokio shaped the
//! same way (a task per child sending two messages to a listener task): the floor for that
//! case, since waking the listener twice per child costs tokio's scheduler the same there.
//!
//! Run: `cargo bench --bench spawn` (see `docs/performance.md`). For profiling one contender
//! alone (`perf record`, `strace -c -f`): the bench binary with `--only ours|ours_stdin_null|ours_listened|peer|raw|raw_listened
//! SPAWNS IN_FLIGHT` prints its spawns/s and CPU per spawn and nothing else.

mod common;

use std::cell::RefCell;
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

/// Spawns per second through the service, `in_flight` at a time; `stdin` as
/// [`RunOptions::stdin`] (default `true`: piped).
async fn ours(
    service: &Arc<TokioProcessService>,
    total: usize,
    in_flight: usize,
    stdin: bool,
) -> f64 {
    let one = service.clone();
    let rate = spawns_per_s(total, in_flight, move || {
        let service = one.clone();
        async move {
            let p = service
                .start(RunOptions::new(PROGRAM).stdin(stdin))
                .await
                .expect("start");
            p.wait().await.expect("wait");
        }
    })
    .await;
    service.clear();
    rate
}

/// Spawns per second of `one` (a spawn, drain and wait), `in_flight` at a time: `in_flight`
/// tasks, each with its own clone of `one`, each calling it `total / in_flight` times.
async fn spawns_per_s<F, Fut>(total: usize, in_flight: usize, one: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_task = total / in_flight;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let one = one.clone();
        tasks.spawn(async move {
            for _ in 0..per_task {
                one().await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("spawn task");
    }
    (per_task * in_flight) as f64 / start.elapsed().as_secs_f64()
}

/// Spawns per second with raw tokio: piped stdout and stderr, both drained, then waited.
async fn raw(total: usize, in_flight: usize) -> f64 {
    spawns_per_s(total, in_flight, raw_one).await
}

/// Spawns per second with the peer: process-wrap with `ProcessGroup::leader()`, stdout and
/// stderr read with `LinesCodec` to end of file, then waited.
async fn peer(total: usize, in_flight: usize) -> f64 {
    spawns_per_s(total, in_flight, peer_one).await
}

async fn peer_one() {
    let mut child = common::peer_spawn(PROGRAM, &[]);
    let out = child.stdout().take().expect("stdout");
    let err = child.stderr().take().expect("stderr");
    let (a, b, status) = tokio::join!(
        common::peer_lines(out),
        common::peer_lines(err),
        child.wait()
    );
    assert_eq!(a + b, 0, "/bin/true prints nothing");
    assert!(status.expect("wait").success());
}

/// Raw tokio shaped as a managed process with one listener: each child is driven by a task of
/// its own (spawned, drained and waited as [`raw_one`]) that sends a "started" and an
/// "exited" message to a subscriber task, while the caller waits for the result. The floor for
/// ours with a subscriber: the same three tasks and two wake-ups per child, nothing else.
async fn raw_listened(
    total: usize,
    in_flight: usize,
    events: &tokio::sync::mpsc::UnboundedSender<u8>,
) -> f64 {
    let events = events.clone();
    spawns_per_s(total, in_flight, move || {
        let events = events.clone();
        async move {
            let driver = tokio::spawn(async move {
                let _ = events.send(0);
                raw_one().await;
                let _ = events.send(1);
            });
            driver.await.expect("driver task");
        }
    })
    .await
}

/// Raw tokio with the shape ours has on a quiet bus: each child driven (drained and waited, as
/// [`raw_one`]) by a task of its own, the caller awaiting that task. Ours needs that task: a
/// child's output is drained and the child reaped whether or not anyone awaits it. The floor
/// for ours without a subscriber.
async fn raw_tasked(total: usize, in_flight: usize) -> f64 {
    spawns_per_s(total, in_flight, || async {
        tokio::spawn(raw_one()).await.expect("driver task");
    })
    .await
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
    // A service whose bus nobody listens to (as the peer, which has no events), and one whose
    // bus has a subscriber draining every event, as a host that listens would.
    let quiet = Arc::new(TokioProcessService::new(
        Arc::new(BroadcastEventBus::default()) as Arc<dyn EventBus>,
        DEFAULT_BUFFER_SIZE,
    ));
    let bus = Arc::new(BroadcastEventBus::default());
    let service = Arc::new(TokioProcessService::new(
        bus.clone() as Arc<dyn EventBus>,
        DEFAULT_BUFFER_SIZE,
    ));
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
    // The raw floor's listener.
    let (raw_events, mut raw_rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
    let raw_drained = rt.spawn(async move {
        let mut events = 0u64;
        while raw_rx.recv().await.is_some() {
            events += 1;
        }
        events
    });

    let mut args = std::env::args().skip(1);
    if let Some("--only") = args.next().as_deref() {
        let usage = "--only ours|ours_stdin_null|ours_listened|peer|raw|raw_listened|raw_tasked SPAWNS IN_FLIGHT";
        let who = args.next().expect(usage);
        let total: usize = args.next().and_then(|n| n.parse().ok()).expect(usage);
        let in_flight: usize = args.next().and_then(|n| n.parse().ok()).expect(usage);
        let before = common::cpu_ns();
        let rate = match who.as_str() {
            "ours" => rt.block_on(ours(&quiet, total, in_flight, true)),
            "ours_stdin_null" => rt.block_on(ours(&quiet, total, in_flight, false)),
            "ours_listened" => rt.block_on(ours(&service, total, in_flight, true)),
            "peer" => rt.block_on(peer(total, in_flight)),
            "raw" => rt.block_on(raw(total, in_flight)),
            "raw_listened" => rt.block_on(raw_listened(total, in_flight, &raw_events)),
            "raw_tasked" => rt.block_on(raw_tasked(total, in_flight)),
            _ => panic!("{usage}"),
        };
        let used = common::cpu_ns() - before;
        println!(
            "{who}: {} spawns/s, {} µs manager CPU per spawn ({total} spawns, {in_flight} in flight)",
            common::fmt_num(rate),
            common::fmt_num(used as f64 / 1e3 / total as f64)
        );
        return;
    }

    // The CPU clock against the kernel's tick-based utime + stime, over the whole run.
    let (clock0, ticks0) = (common::cpu_ns(), stat_cpu_ns());
    for (in_flight, total) in [(1usize, cfg.size(600, 200)), (32usize, cfg.size(1600, 320))] {
        let name = format!("spawn_true_{in_flight}_in_flight");
        if !cfg.wants(&name) {
            continue;
        }
        // CPU per spawn (µs) of each contender, one sample per round, beside its rate.
        // 0 ours (nobody listening), 1 raw tokio, 2 process-wrap, 3 ours with stdin(false),
        // 4 ours with a subscriber, 5 raw tokio shaped as a managed process with a listener,
        // 6 raw tokio with a task per child.
        let cpu: [RefCell<Vec<f64>>; 7] = Default::default();
        let measured = |k: usize, f: &mut dyn FnMut() -> f64| {
            let before = common::cpu_ns();
            let rate = f();
            let used = common::cpu_ns() - before;
            cpu[k].borrow_mut().push(used as f64 / 1e3 / total as f64);
            rate
        };
        let mut a = || measured(0, &mut || rt.block_on(ours(&quiet, total, in_flight, true)));
        let mut b = || measured(1, &mut || rt.block_on(raw(total, in_flight)));
        let mut c = || measured(2, &mut || rt.block_on(peer(total, in_flight)));
        let mut d = || {
            measured(3, &mut || {
                rt.block_on(ours(&quiet, total, in_flight, false))
            })
        };
        let mut e = || {
            measured(4, &mut || {
                rt.block_on(ours(&service, total, in_flight, true))
            })
        };
        let mut f = || {
            measured(5, &mut || {
                rt.block_on(raw_listened(total, in_flight, &raw_events))
            })
        };
        let mut g = || measured(6, &mut || rt.block_on(raw_tasked(total, in_flight)));
        // Rounds are short and spawning is noisy on a shared machine: take more of them.
        let samples = common::interleave(
            cfg.rounds_or(9),
            &mut [&mut a, &mut b, &mut c, &mut d, &mut e, &mut f, &mut g],
        );
        // Drop the warm-up round's CPU sample: `interleave` records no rate for it either.
        let cpu: Vec<Vec<f64>> = cpu
            .into_iter()
            .map(|c| c.into_inner()[1..].to_vec())
            .collect();
        let note = format!("{total} spawns per round");

        Figure::ratio(
            &name,
            "spawns/s",
            "raw tokio Command, piped+drained stdout/stderr",
            Goal::AtLeast(0.90),
        )
        .report_with(&samples[0], &samples[1], &note);

        // Each of ours against its baseline, rate and CPU per spawn: against the peer on a bus
        // nobody listens to; with a listener, against raw tokio doing the same (one task per
        // child and an mpsc listener).
        let peer = "process-wrap ProcessGroup + LinesCodec";
        let raw_listener = "raw tokio, a task per child + an mpsc listener";
        for (suffix, k, base, against, rate_target, what) in [
            (
                "_vs_process_wrap",
                0,
                2,
                peer,
                1.0,
                "ours with default options (stdin piped)",
            ),
            (
                "_stdin_null_vs_process_wrap",
                3,
                2,
                peer,
                1.0,
                "ours with stdin(false): /dev/null, as the peer",
            ),
            (
                "_vs_raw_tasked",
                0,
                6,
                "raw tokio, a task per child (the shape ours needs)",
                0.9,
                "ours with default options against its floor",
            ),
            (
                "_listened_vs_raw_listened",
                4,
                5,
                raw_listener,
                0.9,
                "one subscriber draining every event",
            ),
        ] {
            Figure::ratio(
                format!("{name}{suffix}"),
                "spawns/s",
                against,
                Goal::AtLeast(rate_target),
            )
            .report_with(&samples[k], &samples[base], format!("{what}; {note}"));
            Figure::ratio(
                format!("spawn_cpu_us_{in_flight}_in_flight{suffix}"),
                "manager CPU µs per spawn",
                against,
                Goal::AtMost(1.1),
            )
            .report_with(
                &cpu[k],
                &cpu[base],
                format!("{what}; own CPU, children excluded; {note}"),
            );
        }
        println!(
            "info spawn_cpu_us_{in_flight}_in_flight_raw_tokio: {} µs per spawn (rounds: [{}])",
            common::fmt_num(common::median(&cpu[1])),
            cpu[1]
                .iter()
                .map(|x| common::fmt_num(*x))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }

    println!(
        "info spawn_cpu_clock_check: CLOCK_PROCESS_CPUTIME_ID {} s, /proc/self/stat utime+stime {} s over the run (ticks of 1/{} s)",
        common::fmt_num((common::cpu_ns() - clock0) as f64 / 1e9),
        common::fmt_num((stat_cpu_ns() - ticks0) as f64 / 1e9),
        rustix::param::clock_ticks_per_second(),
    );

    drop((service, quiet, bus, raw_events));
    let events = rt.block_on(drained).expect("subscriber");
    let raw_events = rt.block_on(raw_drained).expect("raw listener");
    println!("    (the subscribers drained {events} events, raw's listener {raw_events})");
}

/// `utime + stime` of this process from `/proc/self/stat`, in ns (tick precision).
fn stat_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks = f.iter().sum::<u64>();
    ticks * 1_000_000_000 / rustix::param::clock_ticks_per_second()
}

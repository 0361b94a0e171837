//! Benchmark 5, runner makespan: `Runner::run_all` on a DAG whose wave schedule is well over its
//! critical path, against that critical path measured in the same round.
//!
//! The DAG: a fast chain `a → b → c` (`sleep 0.1` each) beside an unrelated slow spec `s`
//! (`sleep 0.3`). Its critical path is 0.3 s (either branch); run in waves
//! (`[a, s]`, `[b]`, `[c]`, as the Go original does) it takes 0.3 + 0.1 + 0.1 = 0.5 s, 1.67×.
//!
//! - Ours: wall time of `run_all` over a `TokioProcessService`.
//! - Baseline: the critical path *measured*: each spec started and waited for alone, one after
//!   another, through the same service, and the longest chain of those durations summed. So
//!   process start-up and exit are on both sides; only scheduling is compared.
//! - For contrast (an `info` line): a tiny wave scheduler over the same service, each wave's
//!   specs started together and the whole wave awaited before the next.
//!
//! Run: `cargo bench --bench runner` (see `docs/performance.md`).

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{Config, Goal};
use core_process::{
    BroadcastEventBus, DEFAULT_BUFFER_SIZE, EventBus, PipelineOptions, PipelineRunner,
    ProcessService, RunSpec, Runner, TokioProcessService,
};

/// The DAG, in an order where every spec comes after the specs it waits for.
fn dag() -> Vec<RunSpec> {
    vec![
        RunSpec::new("a", "sleep").arg("0.1"),
        RunSpec::new("s", "sleep").arg("0.3"),
        RunSpec::new("b", "sleep").arg("0.1").after("a"),
        RunSpec::new("c", "sleep").arg("0.1").after("b"),
    ]
}

/// For each spec, the indices of the specs it waits for.
fn deps(specs: &[RunSpec]) -> Vec<Vec<usize>> {
    specs
        .iter()
        .map(|s| {
            s.after
                .iter()
                .map(|a| specs.iter().position(|t| &t.name == a).expect("known"))
                .collect()
        })
        .collect()
}

/// Seconds `run_all` takes over the DAG.
async fn ours(runner: &Runner, specs: &[RunSpec]) -> f64 {
    let start = Instant::now();
    let result = runner
        .run_all(specs, PipelineOptions::new())
        .await
        .expect("valid plan");
    let secs = start.elapsed().as_secs_f64();
    assert!(result.success(), "{result:?}");
    runner.service().clear();
    secs
}

/// Starts one spec through the service and waits for it.
async fn run_one(service: &Arc<dyn ProcessService>, spec: &RunSpec) {
    let p = service.start(spec.run_options()).await.expect("start");
    p.wait().await.expect("spec failed");
}

/// The critical path in seconds: every spec timed alone, then the longest chain summed.
async fn critical_path(service: &Arc<dyn ProcessService>, specs: &[RunSpec]) -> f64 {
    let deps = deps(specs);
    let mut finish = vec![0.0f64; specs.len()];
    for (i, spec) in specs.iter().enumerate() {
        let start = Instant::now();
        run_one(service, spec).await;
        let alone = start.elapsed().as_secs_f64();
        let ready = deps[i].iter().map(|&d| finish[d]).fold(0.0, f64::max);
        finish[i] = ready + alone;
    }
    service.clear();
    finish.into_iter().fold(0.0, f64::max)
}

/// Seconds a wave schedule takes: each wave's specs together, the next wave after all of them.
async fn waves(service: &Arc<dyn ProcessService>, specs: &[RunSpec]) -> f64 {
    let deps = deps(specs);
    let mut level = vec![0usize; specs.len()];
    for i in 0..specs.len() {
        level[i] = deps[i].iter().map(|&d| level[d] + 1).max().unwrap_or(0);
    }
    let start = Instant::now();
    for wave in 0..=level.iter().copied().max().unwrap_or(0) {
        let mut tasks = tokio::task::JoinSet::new();
        for (spec, _) in specs.iter().zip(&level).filter(|(_, l)| **l == wave) {
            let service = service.clone();
            let spec = spec.clone();
            tasks.spawn(async move { run_one(&service, &spec).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("wave task");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    service.clear();
    secs
}

fn main() {
    let cfg = Config::from_env();
    common::header("runner", &cfg);
    let rt = common::runtime();
    let bus = Arc::new(BroadcastEventBus::default());
    let service: Arc<dyn ProcessService> = Arc::new(TokioProcessService::new(
        bus as Arc<dyn EventBus>,
        DEFAULT_BUFFER_SIZE,
    ));
    let runner = Runner::new(service.clone());
    let specs = dag();

    if let Some(fig) = cfg.figure(
        "runner_makespan_vs_critical_path",
        "s",
        "critical path, each spec timed alone in the same round",
        Goal::AtMost(1.10),
    ) {
        let mut a = || rt.block_on(ours(&runner, &specs));
        let mut b = || rt.block_on(critical_path(&service, &specs));
        let mut c = || rt.block_on(waves(&service, &specs));
        let note = "a → b → c (sleep 0.1 each) beside s (sleep 0.3)";
        let samples = fig.run(cfg.rounds, &mut [&mut a, &mut b, &mut c], note);
        let wave_ratios = common::median_ratio(&samples[2], &samples[1]);
        let ours_vs_waves = common::median_ratio(&samples[0], &samples[2]);
        common::info(
            "runner_wave_schedule_s",
            &format!(
                "waves [a, s], [b], [c]; {} × the critical path; ours is {} × it",
                common::fmt_num(wave_ratios),
                common::fmt_num(ours_vs_waves),
            ),
            &samples[2],
        );
    }
}

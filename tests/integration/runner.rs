//! The pipeline runner against real processes (POSIX `sh`, `true`, `false`, `sleep`).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use core_process::testing::{FakeOutcome, FakeProcessService, RecordingEventBus};
use core_process::{
    BroadcastEventBus, DEFAULT_BUFFER_SIZE, Error, Lifecycle, PipelineEvent, PipelineOptions,
    PipelineRunner, Process, ProcessEvent, ProcessModule, ProcessService, Result, RunAllResult,
    RunOptions, RunSpec, Runner, TokioProcessService,
};
use shaku::HasComponent;
use tokio_util::sync::CancellationToken;

/// Waits for the file `$1` to exist, giving up with exit 1 after about 15 s: a deadline so a
/// wrong scheduler fails instead of hanging, never a timing-based synchronisation.
const WAIT_FOR_FILE: &str = r#"i=0
while [ ! -e "$1" ]; do
  i=$((i + 1))
  if [ "$i" -gt 1500 ]; then echo "gave up waiting for $1" >&2; exit 1; fi
  sleep 0.01
done
echo "saw $1""#;

fn service() -> Arc<dyn ProcessService> {
    Arc::new(TokioProcessService::new(
        Arc::new(BroadcastEventBus::default()),
        DEFAULT_BUFFER_SIZE,
    ))
}

/// A service whose events are recorded: the runner removes each finished spec's process from
/// the service, so what was started is read from the `Started` events.
fn recorded_service() -> (Arc<dyn ProcessService>, RecordingEventBus) {
    let bus = RecordingEventBus::new();
    let svc = Arc::new(TokioProcessService::new(
        Arc::new(bus.clone()),
        DEFAULT_BUFFER_SIZE,
    ));
    (svc, bus)
}

/// The commands of the processes started so far, in order.
fn started_commands(bus: &RecordingEventBus) -> Vec<String> {
    bus.events()
        .into_iter()
        .filter_map(|e| match e {
            ProcessEvent::Started { command, .. } => Some(command),
            _ => None,
        })
        .collect()
}

fn sh(name: &str, script: &str) -> RunSpec {
    RunSpec::new(name, "sh").args(["-c", script])
}

/// A spec that waits until `file` exists.
fn wait_for(name: &str, file: &Path) -> RunSpec {
    RunSpec::new(name, "sh")
        .args(["-c", WAIT_FOR_FILE, "sh"])
        .arg(file.to_string_lossy())
}

/// A spec that creates `file`.
fn create(name: &str, file: &Path) -> RunSpec {
    RunSpec::new(name, "sh")
        .args(["-c", r#": > "$1""#, "sh"])
        .arg(file.to_string_lossy())
}

/// A spec that creates `mine`, then waits until `theirs` exists.
fn handshake(name: &str, mine: &Path, theirs: &Path) -> RunSpec {
    let script = format!(r#": > "$2"; {WAIT_FOR_FILE}"#);
    RunSpec::new(name, "sh")
        .args(["-c", &script, "sh"])
        .arg(theirs.to_string_lossy())
        .arg(mine.to_string_lossy())
}

fn names(result: &RunAllResult) -> Vec<&str> {
    result.results.iter().map(|r| r.name.as_str()).collect()
}

fn counts(result: &RunAllResult) -> (usize, usize, usize) {
    (result.passed, result.failed, result.skipped)
}

/// `run_all` of `specs` with default options; the plan must be valid.
async fn run_all(runner: &dyn PipelineRunner, specs: &[RunSpec]) -> RunAllResult {
    runner.run_all(specs, PipelineOptions::new()).await.unwrap()
}

/// `run_sequential` of `specs` with default options.
async fn run_sequential(runner: &dyn PipelineRunner, specs: &[RunSpec]) -> RunAllResult {
    runner
        .run_sequential(specs, PipelineOptions::new())
        .await
        .unwrap()
}

/// `run_parallel` of `specs` with default options.
async fn run_parallel(runner: &dyn PipelineRunner, specs: &[RunSpec]) -> RunAllResult {
    runner
        .run_parallel(specs, PipelineOptions::new())
        .await
        .unwrap()
}

/// `result`, once every spec in it passed.
#[track_caller]
fn all_pass(result: RunAllResult) -> RunAllResult {
    assert_eq!(counts(&result), (result.results.len(), 0, 0), "{result:#?}");
    result
}

/// `run_all` bounded by 15 s, so a runner that hangs fails with `what` (what should end it).
async fn run_all_within(
    runner: &dyn PipelineRunner,
    specs: &[RunSpec],
    what: &str,
) -> RunAllResult {
    tokio::time::timeout(Duration::from_secs(15), run_all(runner, specs))
        .await
        .expect(what)
}

/// A spec that creates `ready`, then sleeps for a minute (until stopped).
fn slow(ready: &Path) -> RunSpec {
    sh("slow", r#": > "$1"; exec sleep 60"#)
        .arg("sh")
        .arg(ready.to_string_lossy())
}

/// Runs `specs` on a task with `opts`, cancels the run once `ready` exists, and returns its
/// result, bounded by 15 s (a cancel that does not stop the running specs would wait them out);
/// `what` says what should end the cancelled run.
async fn cancel_when_ready(
    runner: &Arc<Runner>,
    specs: Vec<RunSpec>,
    opts: PipelineOptions,
    ready: &Path,
    what: &str,
) -> RunAllResult {
    let token = CancellationToken::new();
    let run = {
        let (runner, token) = (runner.clone(), token.clone());
        tokio::spawn(async move { runner.run_all(&specs, opts.cancel(token)).await })
    };
    wait_until_exists(ready).await;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect(what)
        .unwrap()
        .unwrap()
}

/// Records every pipeline event.
fn recorder() -> (PipelineOptions, Arc<Mutex<Vec<PipelineEvent>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let opts = PipelineOptions::new().on_event(move |e| sink.lock().unwrap().push(e.clone()));
    (opts, seen)
}

/// Every child the runner started has been reaped.
fn assert_reaped(service: &Arc<dyn ProcessService>) {
    let running: Vec<_> = service
        .running()
        .iter()
        .map(Process::id)
        .map(String::from)
        .collect();
    assert!(running.is_empty(), "still running: {running:?}");
}

// ---- run_sequential -------------------------------------------------------------------

#[tokio::test]
async fn sequential_all_pass() {
    let svc = service();
    let runner = Runner::new(svc.clone());
    let specs = [
        RunSpec::new("a", "true"),
        sh("b", "echo from b"),
        RunSpec::new("c", "true"),
    ];
    let result = all_pass(run_sequential(&runner, &specs).await);
    assert!(result.success());
    assert!(!result.cancelled);
    assert_eq!(names(&result), ["a", "b", "c"]);
    assert_eq!(result.results[1].output, "from b\n");
    assert_eq!(result.results[1].exit_code, Some(0));
    assert_reaped(&svc);
}

#[tokio::test]
async fn sequential_stops_on_failure() {
    let (svc, bus) = recorded_service();
    let runner = Runner::new(svc.clone());
    let specs = [
        RunSpec::new("a", "true"),
        sh("b", "echo broke >&2; exit 4"),
        RunSpec::new("c", "true"),
    ];
    let result = run_sequential(&runner, &specs).await;
    assert_eq!(counts(&result), (1, 1, 1));
    assert!(!result.success());
    let b = &result.results[1];
    assert_eq!(b.exit_code, Some(4));
    assert_eq!(b.output, "broke\n");
    assert!(
        matches!(b.error, Some(Error::Exited { code: 4, .. })),
        "{b:?}"
    );
    let c = &result.results[2];
    assert!(c.skipped);
    match &c.error {
        Some(e @ Error::PipelineStopped { spec, failed }) => {
            assert_eq!((spec.as_str(), failed.as_str()), ("c", "b"));
            assert_eq!(
                e.to_string(),
                "spec `c` skipped: the pipeline stopped after `b` failed"
            );
        }
        other => panic!("{other:?}"),
    }
    // c never started.
    assert_eq!(started_commands(&bus).len(), 2);
    assert!(
        svc.list().is_empty(),
        "finished specs are removed from the service"
    );
    assert_reaped(&svc);
}

#[tokio::test]
async fn sequential_allow_failure_continues() {
    let svc = service();
    let runner = Runner::new(svc.clone());
    let specs = [
        RunSpec::new("a", "true"),
        RunSpec::new("b", "false").allow_failure(true),
        RunSpec::new("c", "true"),
    ];
    let result = run_sequential(&runner, &specs).await;
    assert_eq!(counts(&result), (2, 1, 0));
    assert!(
        !result.success(),
        "an allowed failure still counts as failed"
    );
    assert!(result.results[2].passed());
}

// ---- run_parallel ---------------------------------------------------------------------

#[tokio::test]
async fn parallel_all_pass_and_really_run_together() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, fb) = (dir.path().join("a"), dir.path().join("b"));
    let svc = service();
    let runner = Runner::new(svc.clone());
    // Each waits for the other's file: both pass only if both run at once.
    let specs = [handshake("a", &fa, &fb), handshake("b", &fb, &fa)];
    all_pass(run_parallel(&runner, &specs).await);
    assert_reaped(&svc);
}

#[tokio::test]
async fn parallel_failure_does_not_stop_others() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let svc = service();
    let runner = Runner::new(svc.clone());
    // `late` can only finish after `fail` failed (fail creates its gate, then exits 1); `after`
    // is ignored by run_parallel.
    let specs = [
        wait_for("late", &gate),
        sh("fail", r#": > "$1"; exit 1"#)
            .arg("sh")
            .arg(gate.to_string_lossy()),
        RunSpec::new("other", "true")
            .after("fail")
            .after("no-such-spec"),
    ];
    let result = run_parallel(&runner, &specs).await;
    assert_eq!(counts(&result), (2, 1, 0), "{result:#?}");
    assert_eq!(names(&result), ["late", "fail", "other"]);
    assert!(result.results[0].passed());
    assert_eq!(result.results[1].exit_code, Some(1));
    assert_reaped(&svc);
}

// ---- run_all --------------------------------------------------------------------------

#[tokio::test]
async fn run_all_respects_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let append = |name: &str| {
        RunSpec::new(name, "sh")
            .args(["-c", r#"echo "$2" >> "$1""#, "sh"])
            .arg(log.to_string_lossy())
            .arg(name)
    };
    let specs = [
        append("d").after("b").after("c"),
        append("c").after("b"),
        append("b").after("a"),
        append("a"),
    ];
    let runner = Runner::new(service());
    let result = all_pass(run_all(&runner, &specs).await);
    assert_eq!(
        names(&result),
        ["d", "c", "b", "a"],
        "results in the given order"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "a\nb\nc\nd\n");
}

#[tokio::test]
async fn run_all_skips_dependents_on_failure() {
    let (svc, bus) = recorded_service();
    let runner = Runner::new(svc.clone());
    let specs = [
        RunSpec::new("a", "false"),
        RunSpec::new("b", "true").after("a"),
        RunSpec::new("c", "true").after("b"),
    ];
    let result = run_all(&runner, &specs).await;
    assert_eq!(counts(&result), (0, 1, 2));
    for skipped in &result.results[1..] {
        assert!(skipped.skipped);
        assert_eq!(skipped.exit_code, None);
        match &skipped.error {
            Some(e @ Error::DependencyFailed { spec, dependency }) => {
                assert_eq!(spec, &skipped.name);
                assert_eq!(dependency, "a", "the skip names the spec that failed");
                assert!(e.to_string().contains("`a` failed"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(started_commands(&bus).len(), 1, "only a was started");
}

#[tokio::test]
async fn run_all_failed_start_skips_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let runner = Runner::new(service());
    let specs = [
        RunSpec::new("missing", "core-process-no-such-program"),
        RunSpec::new("after-missing", "true").after("missing"),
        RunSpec::new("bad-dir", "true").dir(dir.path().join("nope")),
        RunSpec::new("after-bad-dir", "true").after("bad-dir"),
        RunSpec::new("fine", "true"),
    ];
    let result = run_all(&runner, &specs).await;
    assert_eq!(counts(&result), (1, 2, 2));
    assert!(matches!(
        result.results[0].error,
        Some(Error::CommandNotFound { .. })
    ));
    assert!(matches!(
        result.results[2].error,
        Some(Error::WorkingDirectory { .. })
    ));
    assert!(
        matches!(&result.results[3].error, Some(Error::DependencyFailed { dependency, .. }) if dependency == "bad-dir")
    );
}

#[tokio::test]
async fn run_all_allow_failure_lets_dependents_run() {
    let runner = Runner::new(service());
    let specs = [
        RunSpec::new("flaky", "false").allow_failure(true),
        RunSpec::new("next", "true").after("flaky"),
    ];
    let result = run_all(&runner, &specs).await;
    assert_eq!(counts(&result), (1, 1, 0));
    assert!(result.get("next").unwrap().passed());
    assert!(!result.success());
}

#[tokio::test]
async fn run_all_runs_independent_specs_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, fb) = (dir.path().join("a"), dir.path().join("b"));
    let runner = Runner::new(service());
    let specs = [
        handshake("a", &fa, &fb),
        handshake("b", &fb, &fa),
        RunSpec::new("c", "true").after("a").after("b"),
    ];
    all_pass(run_all(&runner, &specs).await);
}

/// The proof of readiness scheduling: `c` runs after `a` only, and `b` (unrelated) cannot
/// finish until `c` has run. Under wave scheduling, wave 1 is {a, b} and `c` would wait for
/// `b`, which would wait for `c`: `b` gives up at its deadline and fails. The same holds down a
/// chain a → c → d, all while `b` is still running.
#[tokio::test]
async fn run_all_starts_a_spec_as_soon_as_its_dependencies_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, chain_gate) = (dir.path().join("gate"), dir.path().join("chain-gate"));
    let svc = service();
    let runner = Runner::new(svc.clone());
    let direct = vec![
        RunSpec::new("a", "true"),
        wait_for("b", &gate),
        create("c", &gate).after("a"),
    ];
    let chain = vec![
        RunSpec::new("a", "true"),
        wait_for("b", &chain_gate),
        RunSpec::new("c", "true").after("a"),
        create("d", &chain_gate).after("c"),
        RunSpec::new("e", "true").after("b").after("d"),
    ];
    for specs in [direct, chain] {
        let result = all_pass(run_all(&runner, &specs).await);
        assert!(result.get("b").unwrap().output.starts_with("saw "));
    }
    assert_reaped(&svc);
}

#[tokio::test]
async fn invalid_plans_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let (svc, bus) = recorded_service();
    let runner = Runner::new(svc.clone());
    let ok = create("ok", &marker);
    let cases: Vec<(Vec<RunSpec>, &str)> = vec![
        (
            vec![
                ok.clone(),
                sh("x", "true").after("y"),
                sh("y", "true").after("x"),
            ],
            "invalid pipeline: dependency cycle x → y → x",
        ),
        (
            vec![ok.clone(), sh("self", "true").after("self")],
            "invalid pipeline: dependency cycle self → self",
        ),
        (
            vec![ok.clone(), sh("b", "true").after("ghost")],
            "invalid pipeline: spec `b` runs after `ghost`, which is not in the pipeline",
        ),
        (
            vec![ok.clone(), sh("ok", "true")],
            "invalid pipeline: more than one spec is named `ok`",
        ),
        (
            vec![ok.clone(), sh("", "true")],
            "invalid spec name ``: must not be empty",
        ),
    ];
    for (specs, message) in cases {
        let err = runner
            .run_all(&specs, PipelineOptions::new())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), message);
    }
    let err = runner
        .run_parallel(
            std::slice::from_ref(&ok),
            PipelineOptions::new().max_parallel(0),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidPlan { .. }), "{err:?}");
    let err = runner
        .run_sequential(&[ok.clone(), ok], PipelineOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateSpec { .. }), "{err:?}");
    assert!(started_commands(&bus).is_empty(), "no process was started");
    assert!(!marker.exists());
}

#[tokio::test]
async fn empty_pipeline_succeeds() {
    let runner = Runner::new(service());
    let result = runner.run_all(&[], PipelineOptions::new()).await.unwrap();
    assert!(result.success());
    assert!(result.results.is_empty());
}

// ---- max_parallel, events, cancellation -----------------------------------------------

/// Tracks how many specs run at once, from the runner's events.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// `opts` with an event handler that tracks how many specs run at once.
fn tracking(opts: PipelineOptions) -> (PipelineOptions, Arc<Concurrency>) {
    let c = Arc::new(Concurrency::default());
    let seen = c.clone();
    let opts = opts.on_event(move |event| match event {
        PipelineEvent::Started { .. } => {
            let now = seen.now.fetch_add(1, Ordering::SeqCst) + 1;
            seen.max.fetch_max(now, Ordering::SeqCst);
        }
        PipelineEvent::Finished { .. } => {
            seen.now.fetch_sub(1, Ordering::SeqCst);
        }
        _ => {}
    });
    (opts, c)
}

#[tokio::test]
async fn max_parallel_bounds_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, fb) = (dir.path().join("a"), dir.path().join("b"));
    let runner = Runner::new(service());
    // a and b need each other, so both slots must be used; c and d wait for a slot.
    let specs = [
        handshake("a", &fa, &fb),
        handshake("b", &fb, &fa),
        RunSpec::new("c", "true"),
        RunSpec::new("d", "true"),
    ];
    let (opts, c) = tracking(PipelineOptions::new().max_parallel(2));
    let result = runner.run_parallel(&specs, opts).await.unwrap();
    assert_eq!(counts(&result), (4, 0, 0), "{result:#?}");
    assert_eq!(c.max.load(Ordering::SeqCst), 2);

    for f in [&fa, &fb] {
        std::fs::remove_file(f).unwrap();
    }
    let (opts, c) = tracking(PipelineOptions::new().max_parallel(2));
    let result = runner.run_all(&specs, opts).await.unwrap();
    assert_eq!(counts(&result), (4, 0, 0), "{result:#?}");
    assert_eq!(c.max.load(Ordering::SeqCst), 2);

    let serial = [
        RunSpec::new("a", "true"),
        RunSpec::new("b", "true"),
        RunSpec::new("c", "true"),
    ];
    let (opts, c) = tracking(PipelineOptions::new().max_parallel(1));
    runner.run_all(&serial, opts).await.unwrap();
    assert_eq!(c.max.load(Ordering::SeqCst), 1);
    let (opts, c) = tracking(PipelineOptions::new());
    runner.run_sequential(&serial, opts).await.unwrap();
    assert_eq!(c.max.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn events_name_specs_and_processes() {
    let (svc, bus) = recorded_service();
    let runner = Runner::new(svc.clone());
    let (opts, seen) = recorder();
    let specs = [
        RunSpec::new("a", "false"),
        RunSpec::new("b", "true").after("a"),
    ];
    runner.run_all(&specs, opts).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    match &seen[0] {
        PipelineEvent::Started { spec, process_id } => {
            assert_eq!(spec, "a");
            let started = bus.events_for(process_id);
            assert!(
                matches!(&started[0], ProcessEvent::Started { command, .. } if command == "false"),
                "{started:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&seen[1], PipelineEvent::Finished { spec, exit_code: Some(1), passed: false, .. } if spec == "a")
    );
    assert!(
        matches!(&seen[2], PipelineEvent::Skipped { spec, reason } if spec == "b" && reason.contains("`a` failed"))
    );
}

async fn wait_until_exists(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn cancellation_stops_running_and_skips_pending() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let svc = service();
    let runner = Arc::new(Runner::new(svc.clone()));
    let specs = vec![
        slow(&ready),
        RunSpec::new("next", "true").after("slow"),
        RunSpec::new("last", "true").after("next"),
    ];
    // Bounded: a cancel that does not kill would otherwise wait out the 60 s sleep.
    let result = cancel_when_ready(
        &runner,
        specs,
        PipelineOptions::new(),
        &ready,
        "a cancelled run returns once its running spec is killed",
    )
    .await;
    assert!(result.cancelled);
    assert!(!result.success());
    // The running spec is cancelled, not failed.
    assert_eq!(counts(&result), (0, 0, 2));
    assert_eq!(result.interrupted, 1);
    let slow = &result.results[0];
    assert!(slow.cancelled && !slow.skipped, "{slow:?}");
    assert!(matches!(slow.error, Some(Error::Killed { .. })), "{slow:?}");
    for r in &result.results[1..] {
        assert!(
            matches!(&r.error, Some(Error::Cancelled { spec }) if spec == &r.name),
            "{r:?}"
        );
    }
    assert_reaped(&svc);
}

#[tokio::test]
async fn a_spec_that_reads_stdin_gets_end_of_file() {
    let runner = Runner::new(service());
    let specs = [
        RunSpec::new("cat", "cat"),
        RunSpec::new("after", "true").after("cat"),
    ];
    let result = run_all_within(&runner, &specs, "`cat` ends on end of file").await;
    assert!(result.success(), "{result:?}");
    assert_eq!(result.results[0].output, "");
}

#[tokio::test]
async fn dropping_a_run_kills_its_processes() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let svc = service();
    let runner = Arc::new(Runner::new(svc.clone()));
    let specs = vec![slow(&ready)];
    let run = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_all(&specs, PipelineOptions::new()).await })
    };
    wait_until_exists(&ready).await;
    run.abort();
    let _ = run.await;
    let process = svc.list().pop().unwrap();
    tokio::time::timeout(Duration::from_secs(15), process.done())
        .await
        .expect("the process was killed when the run was dropped");
    assert_reaped(&svc);
}

// ---- wiring ---------------------------------------------------------------------------

#[tokio::test]
async fn module_provides_the_runner() {
    let module = ProcessModule::builder().build();
    let runner: Arc<dyn PipelineRunner> = module.resolve();
    let result = runner
        .run_all(&[sh("hi", "echo hi")], PipelineOptions::new())
        .await
        .unwrap();
    assert_eq!(result.results[0].output, "hi\n");
}

/// A service that counts starts and delegates to a real one.
struct Counting {
    inner: Arc<dyn ProcessService>,
    starts: Arc<AtomicUsize>,
}

#[async_trait]
impl Lifecycle for Counting {}

#[async_trait]
impl ProcessService for Counting {
    async fn start(&self, opts: RunOptions) -> Result<Process> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        self.inner.start(opts).await
    }
    fn get(&self, id: &str) -> Result<Process> {
        self.inner.get(id)
    }
    fn list(&self) -> Vec<Process> {
        self.inner.list()
    }
    fn remove(&self, id: &str) -> Result<()> {
        self.inner.remove(id)
    }
    fn clear(&self) {
        self.inner.clear()
    }
    async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown().await
    }
}

#[tokio::test]
async fn overriding_the_process_service_reaches_the_runner() {
    let starts = Arc::new(AtomicUsize::new(0));
    let module = ProcessModule::builder()
        .with_component_override::<dyn ProcessService>(Box::new(Counting {
            inner: service(),
            starts: starts.clone(),
        }))
        .build();
    let runner: Arc<dyn PipelineRunner> = module.resolve();
    let specs = [RunSpec::new("a", "true"), RunSpec::new("b", "true")];
    let result = run_all(&*runner, &specs).await;
    assert!(result.success());
    assert_eq!(starts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn specs_get_their_dir_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let runner = Runner::new(service());
    let specs = [sh("env", r#"printf '%s %s' "$GREETING" "$(pwd)""#)
        .env("GREETING", "hello")
        .dir(dir.path())];
    let result = run_all(&runner, &specs).await;
    let expected = format!("hello {}", dir.path().canonicalize().unwrap().display());
    assert_eq!(result.results[0].output, expected);
}

// ---- host tests over FakeProcessService -----------------------------------------------

#[tokio::test]
async fn a_fake_process_service_drives_the_runner() {
    let fake = FakeProcessService::new();
    fake.script("lint", FakeOutcome::success("clean\n"));
    fake.script("test", FakeOutcome::exit(2).stderr("boom\n"));
    fake.script("gone", FakeOutcome::not_found());
    let module = ProcessModule::builder()
        .with_component_override::<dyn ProcessService>(Box::new(fake.clone()))
        .build();
    let runner: Arc<dyn PipelineRunner> = module.resolve();
    let specs = [
        RunSpec::new("lint", "lint"),
        RunSpec::new("test", "test").after("lint"),
        RunSpec::new("deploy", "deploy").after("test"),
        RunSpec::new("docs", "gone"),
        RunSpec::new("publish", "publish").after("docs"),
    ];
    let result = run_all(&*runner, &specs).await;
    assert_eq!(counts(&result), (1, 2, 2));
    assert_eq!(result.results[0].output, "clean\n");
    assert_eq!(result.results[1].output, "boom\n");
    assert_eq!(result.results[1].exit_code, Some(2));
    assert!(matches!(
        result.results[3].error,
        Some(Error::CommandNotFound { .. })
    ));
    let mut started = fake.command_lines();
    started.sort();
    assert_eq!(started, ["gone", "lint", "test"]);
}

#[tokio::test]
async fn cancelling_stops_specs_on_any_service() {
    let fake = FakeProcessService::new();
    fake.script("serve", FakeOutcome::hang());
    let runner = Runner::new(Arc::new(fake.clone()));
    let token = CancellationToken::new();
    let on_start = token.clone();
    let opts = PipelineOptions::new().cancel(token).on_event(move |event| {
        if matches!(event, PipelineEvent::Started { .. }) {
            on_start.cancel();
        }
    });
    let specs = [
        RunSpec::new("serve", "serve"),
        RunSpec::new("after", "true").after("serve"),
    ];
    let result = tokio::time::timeout(Duration::from_secs(15), runner.run_all(&specs, opts))
        .await
        .expect("a cancelled run returns")
        .unwrap();
    assert!(result.cancelled);
    assert_eq!(counts(&result), (0, 0, 1));
    assert!(result.results[0].cancelled);
    assert!(matches!(
        result.results[0].error,
        Some(Error::Killed { .. })
    ));
    assert!(fake.running().is_empty());
}

/// A process service whose `start` panics, standing for a bug in a host's own service.
struct PanickingService;

impl Lifecycle for PanickingService {}

#[async_trait]
impl ProcessService for PanickingService {
    async fn start(&self, opts: RunOptions) -> Result<Process> {
        panic!("start of {} blew up", opts.command);
    }
    fn get(&self, id: &str) -> Result<Process> {
        Err(Error::ProcessNotFound { id: id.into() })
    }
    fn list(&self) -> Vec<Process> {
        Vec::new()
    }
    fn remove(&self, id: &str) -> Result<()> {
        Err(Error::ProcessNotFound { id: id.into() })
    }
    fn clear(&self) {}
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_spec_whose_task_panics_fails_with_task_failed_and_skips_its_dependents() {
    let runner = Runner::new(Arc::new(PanickingService));
    let specs = [
        RunSpec::new("boom", "true"),
        RunSpec::new("after", "true").after("boom"),
    ];
    let result = run_all_within(&runner, &specs, "the pipeline ends").await;
    assert!(!result.success());
    let boom = result.get("boom").unwrap();
    match &boom.error {
        Some(e @ Error::TaskFailed { what, reason }) => {
            assert!(what.contains("boom"), "{e}");
            assert!(reason.contains("panic"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(result.get("after").unwrap().skipped);
}

// ---- steps with their own settings, graceful cancel, event order, validation ------------

#[tokio::test]
async fn cancel_gives_a_term_trapping_step_its_grace_and_reports_it_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (ready, trapped) = (dir.path().join("ready"), dir.path().join("trapped"));
    let svc = service();
    let runner = Arc::new(Runner::new(svc.clone()));
    // On its stop signal (INT here) it writes a file, which SIGKILL would never let it do.
    let script = r#"trap ': > "$2"; exit 0' INT; : > "$1"; while :; do sleep 0.05; done"#;
    let specs = vec![
        sh("serve", script)
            .arg("sh")
            .arg(ready.to_string_lossy())
            .arg(trapped.to_string_lossy())
            .stop_signal(core_process::Signal::Int)
            .grace_period(Duration::from_secs(30)),
        RunSpec::new("after", "true").after("serve"),
    ];
    let (opts, seen) = recorder();
    let result = cancel_when_ready(
        &runner,
        specs,
        opts,
        &ready,
        "the trapped step exits on its stop signal",
    )
    .await;
    assert!(trapped.exists(), "the step's trap ran");
    let serve = &result.results[0];
    // Ended by the cancel, even though its trap exits 0.
    assert!(serve.cancelled && !serve.passed(), "{serve:?}");
    assert_eq!(serve.exit_code, Some(0));
    let seen = seen.lock().unwrap().clone();
    assert!(
        matches!(&seen[..], [
            PipelineEvent::Started { spec: a, .. },
            PipelineEvent::Skipped { spec: b, .. },
            PipelineEvent::Cancelled { spec: c, .. },
        ] if a == "serve" && b == "after" && c == "serve"),
        "{seen:?}"
    );
    assert_reaped(&svc);
}

#[tokio::test]
async fn a_step_ended_by_cancel_is_cancelled_in_result_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let svc = service();
    let runner = Arc::new(Runner::new(svc.clone()));
    let (opts, seen) = recorder();
    let result = cancel_when_ready(&runner, vec![slow(&ready)], opts, &ready, "cancelled").await;
    assert!(result.results[0].cancelled);
    assert_eq!((result.failed, result.interrupted), (0, 1));
    let seen = seen.lock().unwrap().clone();
    assert!(
        matches!(&seen[..], [PipelineEvent::Started { .. }, PipelineEvent::Cancelled { spec, .. }] if spec == "slow"),
        "{seen:?}"
    );
    assert_reaped(&svc);
}

#[tokio::test]
async fn a_hung_step_with_a_timeout_does_not_hang_the_pipeline() {
    let runner = Runner::new(service());
    let specs = [
        RunSpec::new("hang", "sleep")
            .arg("60")
            .timeout(Duration::from_millis(200))
            .grace_period(Duration::from_millis(200)),
        RunSpec::new("after", "true").after("hang"),
    ];
    let result = run_all_within(&runner, &specs, "the timeout ends the step").await;
    assert_eq!(counts(&result), (0, 1, 1));
    assert!(
        matches!(result.results[0].error, Some(Error::Killed { .. })),
        "{:?}",
        result.results[0]
    );
    assert!(!result.results[0].cancelled);
}

#[tokio::test]
async fn a_step_gets_its_input_and_every_setting() {
    let runner = Runner::new(service());
    let specs = [
        RunSpec::new("cat", "cat").input("line one\nline two\n"),
        RunSpec::new("opts", "ignored").after("cat").options(
            RunOptions::new("sh")
                .args(["-c", "echo $K"])
                .env("K", "from options")
                .output_capacity(64),
        ),
    ];
    let result = run_all(&runner, &specs).await;
    assert!(result.success(), "{result:?}");
    assert_eq!(result.results[0].output, "line one\nline two\n");
    assert_eq!(result.results[1].output, "from options\n");
    let o = specs[1].run_options();
    assert_eq!((o.command.as_str(), o.output_capacity), ("sh", Some(64)));
    assert!(!o.stdin && specs[0].run_options().stdin);
}

#[tokio::test]
async fn a_dependent_is_skipped_after_the_failure_that_caused_it() {
    let runner = Runner::new(service());
    let specs = [
        RunSpec::new("a", "false"),
        RunSpec::new("b", "true").after("a"),
        RunSpec::new("c", "true").after("b"),
    ];
    let (opts, seen) = recorder();
    runner.run_all(&specs, opts).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let order: Vec<String> = seen
        .iter()
        .map(|e| match e {
            PipelineEvent::Started { spec, .. } => format!("started {spec}"),
            PipelineEvent::Finished { spec, .. } => format!("finished {spec}"),
            PipelineEvent::Skipped { spec, .. } => format!("skipped {spec}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(order, ["started a", "finished a", "skipped b", "skipped c"]);
}

#[tokio::test]
async fn an_empty_command_is_rejected_before_anything_runs() {
    let fake = FakeProcessService::new();
    let runner = Runner::new(Arc::new(fake.clone()));
    let specs = [RunSpec::new("first", "true"), RunSpec::new("second", "")];
    let err = runner
        .run_all(&specs, PipelineOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidPlan { reason } if reason.contains("`second`")),
        "{err}"
    );
    assert!(fake.command_lines().is_empty(), "nothing started");
    let err = runner
        .run_all(
            &[
                RunSpec::new("build", "true"),
                RunSpec::new("test", "true").after("biuld"),
            ],
            PipelineOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did you mean `build`?"), "{err}");
}

// ---- output routing ---------------------------------------------------------------------

#[tokio::test]
async fn pipeline_output_carries_the_step_name_with_every_line() {
    let runner = Runner::new(service());
    let specs = [
        sh(
            "one",
            "for i in 1 2 3; do echo one-$i; done; echo err-one >&2",
        ),
        sh("two", "for i in 1 2 3; do echo two-$i; done").after("one"),
        sh("three", "echo three"),
    ];
    let (opts, seen) = recorder();
    let result = runner.run_all(&specs, opts).await.unwrap();
    assert!(result.success(), "{result:?}");
    let seen = seen.lock().unwrap().clone();
    for (spec, want) in [
        ("one", vec!["one-1", "one-2", "one-3", "err-one"]),
        ("two", vec!["two-1", "two-2", "two-3"]),
        ("three", vec!["three"]),
    ] {
        let mine: Vec<(usize, &PipelineEvent)> = seen
            .iter()
            .enumerate()
            .filter(|(_, e)| match e {
                PipelineEvent::Started { spec: s, .. }
                | PipelineEvent::Finished { spec: s, .. }
                | PipelineEvent::Output { spec: s, .. } => s == spec,
                _ => false,
            })
            .collect();
        assert!(
            matches!(mine[0].1, PipelineEvent::Started { .. }),
            "{spec}: {mine:?}"
        );
        assert!(
            matches!(mine.last().unwrap().1, PipelineEvent::Finished { .. }),
            "{spec}"
        );
        let lines: Vec<&str> = mine
            .iter()
            .filter_map(|(_, e)| match e {
                PipelineEvent::Output { line, .. } => Some(line.as_str()),
                _ => None,
            })
            .collect();
        // stdout and stderr are separate pipes: compare as sets of the same size.
        let mut sorted = lines.clone();
        sorted.sort_unstable();
        let mut want_sorted = want.clone();
        want_sorted.sort_unstable();
        assert_eq!(sorted, want_sorted, "{spec}");
    }
}

/// A step's lines reach `on_event` while it runs, not only once it has ended.
#[tokio::test]
async fn pipeline_output_is_forwarded_while_the_step_runs() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let runner = Arc::new(Runner::new(service()));
    let specs = vec![
        RunSpec::new("gated", "sh")
            .args(["-c", &format!("echo first; {WAIT_FOR_FILE}"), "sh"])
            .arg(gate.to_string_lossy()),
    ];
    let (opts, seen) = recorder();
    let run = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_all(&specs, opts).await })
    };
    crate::support::eventually(Duration::from_secs(15), "the first line, live", || {
        seen.lock().unwrap().iter().any(
            |e| matches!(e, PipelineEvent::Output { spec, line, .. } if spec == "gated" && line == "first"),
        )
    })
    .await;
    std::fs::write(&gate, "").unwrap();
    let result = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("the step ends once the gate is open")
        .unwrap()
        .unwrap();
    assert!(result.success(), "{result:?}");
}

#[tokio::test]
async fn start_subscribed_never_misses_started() {
    let svc = service();
    for _ in 0..50 {
        let (process, mut events) = svc
            .start_subscribed(RunOptions::new("sh").args(["-c", "echo hi"]))
            .await
            .unwrap();
        match events.recv().await.unwrap() {
            ProcessEvent::Started { id, .. } => assert_eq!(&*id, process.id()),
            other => panic!("first event {other:?}"),
        }
        let mut rest = Vec::new();
        loop {
            let event = events.recv().await.unwrap();
            assert_eq!(event.id(), process.id());
            let end = matches!(event, ProcessEvent::Exited { .. });
            rest.push(event);
            if end {
                break;
            }
        }
        assert!(matches!(&rest[0], ProcessEvent::Output { line, .. } if line == "hi"));
        process.wait().await.unwrap();
    }
    let fake = FakeProcessService::new();
    assert!(matches!(
        fake.start_subscribed(RunOptions::new("x")).await,
        Err(Error::NotConfigured { .. })
    ));
}

/// Each mode runs on the runner's own service (a unit test would make the runner import the
/// fakes, an import cycle).
#[tokio::test]
async fn the_runner_runs_each_mode_on_its_service() {
    let fake = FakeProcessService::new();
    fake.script("true", FakeOutcome::exit(0));
    fake.script("false", FakeOutcome::exit(1));
    let service: Arc<dyn ProcessService> = Arc::new(fake.clone());
    let runner = Runner::new(service.clone());
    assert!(Arc::ptr_eq(runner.service(), &service));
    assert_eq!(format!("{runner:?}"), "Runner { .. }");
    let specs = [
        RunSpec::new("a", "false"),
        RunSpec::new("b", "true").after("a"),
    ];
    let graph = runner
        .run_all(&specs, PipelineOptions::new())
        .await
        .unwrap();
    assert_eq!((graph.passed, graph.failed, graph.skipped), (0, 1, 1));
    let sequential = runner
        .run_sequential(&specs, PipelineOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (sequential.passed, sequential.failed, sequential.skipped),
        (0, 1, 1)
    );
    let parallel = runner
        .run_parallel(&specs, PipelineOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (parallel.passed, parallel.failed, parallel.skipped),
        (1, 1, 0)
    );
    let mut ran = fake.command_lines();
    ran.sort();
    assert_eq!(ran, ["false", "false", "false", "true"]);
}

//! [`Runner`]: runs a pipeline of commands over an injected
//! [`ProcessService`] — by dependency ([`PipelineRunner::run_all`]), one after another
//! ([`PipelineRunner::run_sequential`]) or all at once ([`PipelineRunner::run_parallel`]).
//!
//! # Scheduling
//! [`run_all`](PipelineRunner::run_all) schedules by *readiness*, not in waves: a spec starts
//! the moment every spec it runs [`after`](RunSpec::after) has finished, while unrelated specs
//! keep running. (The Go original waited for a whole wave, so one slow spec held back every
//! unrelated dependent.) When several specs are ready at once they start in the order they were
//! given, up to [`PipelineOptions::max_parallel`].
//!
//! The plan is checked before anything runs: an empty or repeated name, a spec whose options are
//! invalid (an empty command, say: [`RunSpec::validate`]), an `after` naming no spec (the error
//! suggests the closest name), a spec after itself and a dependency cycle are errors that name
//! the specs, and no process starts.
//!
//! # Failures
//! A spec fails when it exits non-zero, is killed, or cannot start. A failed spec that is not
//! [`allow_failure`](RunSpec::allow_failure) skips every spec that (transitively) runs after it,
//! each skip naming the failed spec ([`Error::DependencyFailed`]). An `allow_failure` spec that
//! fails still counts as failed, but its dependents run.
//!
//! # Cancellation
//! Cancelling [`PipelineOptions::cancel`] stops each running spec with its
//! [stop signal](RunSpec::stop_signal) and [grace period](RunSpec::grace_period) (then SIGKILL,
//! to its process group), reports it as cancelled ([`RunResult::cancelled`],
//! [`PipelineEvent::Cancelled`]; neither passed nor failed) and skips the pending ones
//! ([`Error::Cancelled`]); the result is still returned, with [`RunAllResult::cancelled`] set.
//! Dropping the future stops its running specs the same way, on tasks of their own.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shaku::{Component, Interface};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::services::process::{ProcessService, RunOptions};
use crate::services::supervise::Probe;
use crate::types::{Signal, Stream};

mod plan;
mod schedule;

use plan::{Mode, plan};
use schedule::execute;

/// One command of a pipeline.
///
/// ```
/// use core_process::RunSpec;
///
/// let test = RunSpec::new("test", "cargo").args(["test", "--all"]).after("build");
/// assert_eq!(test.after, ["build"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// The spec's name, unique within its pipeline.
    pub name: String,
    /// The program: a path, or a name looked up on `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The working directory; the manager's when `None`.
    pub dir: Option<PathBuf>,
    /// Variables added to (or overriding) the inherited environment.
    pub env: Vec<(String, String)>,
    /// The names of the specs that must finish before this one starts
    /// ([`run_all`](PipelineRunner::run_all) only).
    pub after: Vec<String>,
    /// A failure of this spec counts as failed but neither skips its dependents nor stops a
    /// sequential pipeline.
    pub allow_failure: bool,
    /// Stop the step (stop signal, grace period, SIGKILL) when it runs longer than this; it
    /// then fails with [`Error::Killed`]. See [`RunOptions::timeout`].
    pub timeout: Option<Duration>,
    /// How long a stop (timeout, cancellation, shutdown) waits after the stop signal before
    /// SIGKILL. Default [`DEFAULT_GRACE_PERIOD`](crate::services::process::DEFAULT_GRACE_PERIOD) (10 s).
    pub grace_period: Duration,
    /// The signal a stop sends first. Default [`Signal::Term`].
    pub stop_signal: Signal,
    /// The size of the step's output ring buffer; the service's default when `None`.
    pub output_capacity: Option<usize>,
    /// Keep no output in the ring buffer ([`RunResult::output`] is then empty; lines are still
    /// published as events).
    pub disable_capture: bool,
    /// Text written to the step's standard input, which is then closed. Without it the step
    /// reads from `/dev/null`.
    pub input: Option<String>,
    /// See [`RunOptions::die_with_parent`] (Linux; default `false`).
    pub die_with_parent: bool,
    /// See [`RunOptions::process_group`] (default `true`).
    pub process_group: bool,
    /// Runs the spec as a service: its dependents start once it is *ready* (not once it
    /// exits), and it is stopped when the rest of the pipeline is over. See [`ServiceSpec`].
    pub service: Option<ServiceSpec>,
}

impl Default for RunSpec {
    fn default() -> Self {
        let defaults = RunOptions::default();
        RunSpec {
            name: String::new(),
            command: String::new(),
            args: Vec::new(),
            dir: None,
            env: Vec::new(),
            after: Vec::new(),
            allow_failure: false,
            timeout: defaults.timeout,
            grace_period: defaults.grace_period,
            stop_signal: defaults.stop_signal,
            output_capacity: defaults.output_capacity,
            disable_capture: defaults.disable_capture,
            input: None,
            die_with_parent: defaults.die_with_parent,
            process_group: defaults.process_group,
            service: None,
        }
    }
}

/// How a [`RunSpec`] runs as a service: when it counts as ready, and how long it may take.
///
/// A service starts like any spec; once its readiness probe passes, its dependents start while
/// it keeps running. When nothing else is left to run (every other spec finished or was
/// skipped), every service still running is stopped (stop signal, then SIGKILL after its grace
/// period) and counts as passed. A service that is not ready within `ready_timeout` (or ends
/// first) is stopped and fails; its dependents are skipped with
/// [`Error::ServiceNotReady`], which carries the reason. A service that ends on its own after
/// it was ready is judged by its exit like any spec (its dependents have started by then).
///
/// ```
/// use std::time::Duration;
/// use core_process::{Probe, RunSpec, ServiceSpec};
///
/// let db = RunSpec::new("db", "sh")
///     .args(["-c", "echo ready; exec sleep 60"])
///     .service(ServiceSpec::new(Probe::log_line("^ready$").unwrap(), Duration::from_secs(10)));
/// let test = RunSpec::new("test", "true").after("db");
/// # let _ = (db, test);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// When the service counts as ready.
    pub readiness: Probe,
    /// How long it may take to become ready.
    pub ready_timeout: Duration,
}

impl ServiceSpec {
    /// A service ready when `readiness` passes, within `ready_timeout`.
    pub fn new(readiness: Probe, ready_timeout: Duration) -> Self {
        ServiceSpec {
            readiness,
            ready_timeout,
        }
    }
}

impl RunSpec {
    /// A spec named `name` running `command`.
    pub fn new(name: impl Into<String>, command: impl Into<String>) -> Self {
        RunSpec {
            name: name.into(),
            command: command.into(),
            ..Default::default()
        }
    }

    command_setters!();

    process_setters!();

    /// Makes this spec wait for the spec named `name`.
    pub fn after(mut self, name: impl Into<String>) -> Self {
        self.after.push(name.into());
        self
    }

    setters! {
        /// Runs this spec as a service (see [`ServiceSpec`]).
        service(service: ServiceSpec) => Some;
        /// Lets this spec fail without skipping its dependents or stopping the pipeline.
        allow_failure(allow: bool);
    }

    /// Writes `text` to the step's standard input, then closes it.
    pub fn input(mut self, text: impl Into<String>) -> Self {
        self.input = Some(text.into());
        self
    }

    /// Takes every setting of `opts`: command, arguments, directory, environment, timeout,
    /// grace period, stop signal, ring-buffer size, capture, `die_with_parent` and
    /// `process_group`. `cancel` and `detach` are left out (the pipeline owns its steps'
    /// lifetime), and so is `stdin` (see [`input`](Self::input)).
    ///
    /// ```
    /// use core_process::{RunOptions, RunSpec, Signal};
    /// use std::time::Duration;
    ///
    /// let step = RunSpec::new("serve", "ignored").options(
    ///     RunOptions::new("sh").args(["-c", "exec ./server"])
    ///         .timeout(Duration::from_secs(60))
    ///         .stop_signal(Signal::Int),
    /// );
    /// let opts = step.run_options();
    /// assert_eq!((opts.command.as_str(), opts.timeout), ("sh", Some(Duration::from_secs(60))));
    /// assert_eq!(opts.stop_signal, Signal::Int);
    /// ```
    pub fn options(mut self, opts: RunOptions) -> Self {
        self.command = opts.command;
        self.args = opts.args;
        self.dir = opts.dir;
        self.env = opts.env;
        self.timeout = opts.timeout;
        self.grace_period = opts.grace_period;
        self.stop_signal = opts.stop_signal;
        self.output_capacity = opts.output_capacity;
        self.disable_capture = opts.disable_capture;
        self.die_with_parent = opts.die_with_parent;
        self.process_group = opts.process_group;
        self
    }

    /// The [`RunOptions`] this spec starts with: every setting of the spec; standard input
    /// piped when the spec has [`input`](Self::input), `/dev/null` otherwise.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            command: self.command.clone(),
            args: self.args.clone(),
            dir: self.dir.clone(),
            env: self.env.clone(),
            disable_capture: self.disable_capture,
            output_capacity: self.output_capacity,
            timeout: self.timeout,
            grace_period: self.grace_period,
            stop_signal: self.stop_signal,
            process_group: self.process_group,
            die_with_parent: self.die_with_parent,
            stdin: self.input.is_some(),
            ..RunOptions::default()
        }
    }

    /// Checks what can be checked before the pipeline runs: the command is not empty, no NUL
    /// byte in it, its arguments or environment, the stop signal can be sent. The directory is
    /// not checked (an earlier step may create it).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] or [`Error::UnsupportedSignal`], naming the command.
    pub fn validate(&self) -> Result<()> {
        RunOptions {
            dir: None,
            ..self.run_options()
        }
        .validate()
    }
}

impl From<&RunSpec> for RunOptions {
    fn from(spec: &RunSpec) -> Self {
        spec.run_options()
    }
}

/// The outcome of one spec.
#[derive(Debug)]
pub struct RunResult {
    /// The spec's name.
    pub name: String,
    /// The exit code; `None` when the spec was skipped, could not start, or a signal ended it.
    pub exit_code: Option<i32>,
    /// How long it took from the start request to its end (zero when skipped).
    pub duration: Duration,
    /// What it printed, stdout and stderr interleaved (lossy UTF-8).
    pub output: String,
    /// Why it did not pass: the process error ([`Error::Exited`], [`Error::Killed`], a start
    /// error such as [`Error::CommandNotFound`]) or, for a skipped spec, the reason
    /// ([`Error::DependencyFailed`], [`Error::PipelineStopped`], [`Error::Cancelled`]).
    pub error: Option<Error>,
    /// Whether the spec never ran.
    pub skipped: bool,
    /// Whether the spec is a service that was ready and that the pipeline stopped at its end
    /// (it then passed, whatever the stop signal made it exit with).
    pub stopped: bool,
    /// Whether the pipeline's cancellation stopped the spec while it ran (its stop signal,
    /// then SIGKILL after its grace period): it counts as neither passed nor failed.
    pub cancelled: bool,
}

impl RunResult {
    /// Whether the spec ran and exited with code 0, or is a service the pipeline stopped
    /// once it was no longer needed.
    ///
    /// ```
    /// use core_process::RunResult;
    /// use std::time::Duration;
    ///
    /// let ok = RunResult { name: "lint".into(), exit_code: Some(0), duration: Duration::ZERO,
    ///     output: String::new(), error: None, skipped: false, stopped: false, cancelled: false };
    /// assert!(ok.passed());
    /// ```
    pub fn passed(&self) -> bool {
        !self.skipped
            && !self.cancelled
            && self.error.is_none()
            && (self.exit_code == Some(0) || self.stopped)
    }

    fn skip(name: &str, reason: Error) -> Self {
        RunResult {
            name: name.to_string(),
            exit_code: None,
            duration: Duration::ZERO,
            output: String::new(),
            error: Some(reason),
            skipped: true,
            stopped: false,
            cancelled: false,
        }
    }
}

/// The outcome of a pipeline.
#[derive(Debug, Default)]
pub struct RunAllResult {
    /// One result per spec, in the order the specs were given.
    pub results: Vec<RunResult>,
    /// How long the whole pipeline took.
    pub duration: Duration,
    /// How many specs passed.
    pub passed: usize,
    /// How many ran and failed (`allow_failure` ones included; cancelled ones not).
    pub failed: usize,
    /// How many never ran.
    pub skipped: usize,
    /// How many were running when the pipeline was cancelled and were stopped by it
    /// ([`RunResult::cancelled`]).
    pub interrupted: usize,
    /// Whether the pipeline was cancelled.
    pub cancelled: bool,
}

impl RunAllResult {
    /// Whether every spec passed (nothing failed, was skipped or cancelled). An empty pipeline
    /// succeeds.
    pub fn success(&self) -> bool {
        self.failed == 0 && self.skipped == 0 && self.interrupted == 0
    }

    /// The result of the spec named `name`.
    pub fn get(&self, name: &str) -> Option<&RunResult> {
        self.results.iter().find(|r| r.name == name)
    }

    fn new(results: Vec<RunResult>, duration: Duration, cancelled: bool) -> Self {
        let skipped = results.iter().filter(|r| r.skipped).count();
        let passed = results.iter().filter(|r| r.passed()).count();
        let interrupted = results.iter().filter(|r| r.cancelled && !r.skipped).count();
        RunAllResult {
            failed: results.len() - skipped - passed - interrupted,
            interrupted,
            results,
            duration,
            passed,
            skipped,
            cancelled,
        }
    }
}

/// What happens to the specs of a running pipeline, for live reporting through
/// [`PipelineOptions::on_event`], in the order it happened: a spec's `Started` before its
/// `Finished` or `Cancelled`, and a failure's `Finished` before the `Skipped` of the dependents
/// it skips.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PipelineEvent {
    /// The spec's process was started. Its output arrives on the
    /// [`EventBus`](crate::EventBus) under `process_id`.
    Started {
        /// The spec's name.
        spec: String,
        /// The [`Process`](crate::Process) id.
        process_id: String,
    },
    /// The spec ran (or failed to start) and is over.
    Finished {
        /// The spec's name.
        spec: String,
        /// Its exit code, when it exited on its own.
        exit_code: Option<i32>,
        /// Whether it passed.
        passed: bool,
        /// How long it took.
        duration: Duration,
    },
    /// A line the spec's process printed, labelled with the spec's name: every line, from
    /// the first, between the spec's `Started` and its `Finished` or `Cancelled`. Sent only
    /// when the process service has an event bus ([`ProcessService::events`]).
    Output {
        /// The spec's name.
        spec: String,
        /// Which stream the line came from.
        stream: Stream,
        /// The line, without its newline.
        line: String,
    },
    /// The spec was running when the pipeline was cancelled and has been stopped (its stop
    /// signal, then SIGKILL after its grace period).
    Cancelled {
        /// The spec's name.
        spec: String,
        /// How long it ran.
        duration: Duration,
    },
    /// The spec will not run.
    Skipped {
        /// The spec's name.
        spec: String,
        /// Why (the message of the skip error).
        reason: String,
    },
}

/// A callback receiving [`PipelineEvent`]s. It runs on the runner's tasks: keep it short.
pub type PipelineHook = Arc<dyn Fn(&PipelineEvent) + Send + Sync>;

/// How to run a pipeline: concurrency bound, cancellation and live events.
///
/// ```
/// use core_process::PipelineOptions;
/// use core_process::CancellationToken;
///
/// let opts = PipelineOptions::new()
///     .max_parallel(2)
///     .cancel(CancellationToken::new())
///     .on_event(|event| println!("{event:?}"));
/// assert_eq!(opts.max_parallel, Some(2));
/// ```
#[derive(Clone, Default)]
pub struct PipelineOptions {
    /// The most specs running at once; unbounded when `None`. Must be at least 1.
    pub max_parallel: Option<usize>,
    /// Cancelling this token stops the running specs (stop signal, grace period, SIGKILL) and
    /// skips the pending ones.
    pub cancel: Option<CancellationToken>,
    /// Called for each [`PipelineEvent`].
    pub on_event: Option<PipelineHook>,
}

impl PipelineOptions {
    /// Unbounded, not cancellable, no events.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Runs at most `n` specs at once (`n` must be at least 1).
        max_parallel(n: usize) => Some;
        /// Cancels the pipeline when `token` is cancelled.
        cancel(token: CancellationToken) => Some;
    }

    /// Calls `hook` for each [`PipelineEvent`].
    pub fn on_event(mut self, hook: impl Fn(&PipelineEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(hook));
        self
    }
}

impl fmt::Debug for PipelineOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineOptions")
            .field("max_parallel", &self.max_parallel)
            .field("cancel", &self.cancel)
            .field("on_event", &self.on_event.as_ref().map(|_| "Fn"))
            .finish()
    }
}

/// Runs pipelines of [`RunSpec`]s.
///
/// Resolve it from [`ProcessModule`](crate::ProcessModule) as `Arc<dyn PipelineRunner>`, or
/// build a [`Runner`] over any `Arc<dyn ProcessService>` with [`Runner::new`].
///
/// Every method returns `Err` only for a rejected plan (nothing ran then); how each spec went is
/// in the [`RunAllResult`]. Each spec's process is removed from the service once its result (exit
/// code, output) is collected, so pipelines do not accumulate in a long-lived service.
///
/// ```
/// use std::sync::Arc;
/// use core_process::{PipelineOptions, PipelineRunner, ProcessModule, RunSpec};
/// use shaku::HasComponent;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> core_process::Result<()> {
/// let module = ProcessModule::builder().build();
/// let runner: Arc<dyn PipelineRunner> = module.resolve();
///
/// let specs = [
///     RunSpec::new("build", "sh").args(["-c", "echo built"]),
///     RunSpec::new("test", "sh").args(["-c", "exit 1"]).after("build"),
///     RunSpec::new("deploy", "true").after("test"),
/// ];
/// let result = runner.run_all(&specs, PipelineOptions::new()).await?;
/// assert_eq!((result.passed, result.failed, result.skipped), (1, 1, 1));
/// assert_eq!(result.results[0].output, "built\n");
/// assert!(!result.success());
/// # Ok(()) }
/// ```
#[async_trait]
pub trait PipelineRunner: Interface {
    /// Runs `specs` as a dependency graph: each spec starts as soon as every spec it runs
    /// [`after`](RunSpec::after) has finished (see the [module documentation](self)).
    ///
    /// # Errors
    /// The plan is rejected, and nothing runs, for an empty spec name
    /// ([`Error::InvalidName`]), a repeated one ([`Error::DuplicateSpec`]), an `after` naming
    /// no spec ([`Error::UnknownDependency`]), a spec after itself or a cycle
    /// ([`Error::Cycle`]), a spec that fails [`RunSpec::validate`] or `max_parallel` of 0
    /// ([`Error::InvalidPlan`]).
    ///
    /// # Cancel safety
    /// Dropping the future stops the processes it started (stop signal, grace period,
    /// SIGKILL) on tasks of their own.
    async fn run_all(&self, specs: &[RunSpec], opts: PipelineOptions) -> Result<RunAllResult>;

    /// Runs `specs` one after another in the given order, ignoring `after`. The first failure
    /// that is not `allow_failure` stops the pipeline: the remaining specs are skipped
    /// ([`Error::PipelineStopped`]).
    ///
    /// # Errors
    /// An empty or repeated spec name, a spec that fails [`RunSpec::validate`], or
    /// `max_parallel` of 0 (nothing runs).
    ///
    /// # Cancel safety
    /// Dropping the future stops the process it started (stop signal, grace period,
    /// SIGKILL) on a task of its own.
    async fn run_sequential(
        &self,
        specs: &[RunSpec],
        opts: PipelineOptions,
    ) -> Result<RunAllResult>;

    /// Runs `specs` all at once (up to `max_parallel`), ignoring `after`; a failure does not
    /// stop the others.
    ///
    /// # Errors
    /// An empty or repeated spec name, a spec that fails [`RunSpec::validate`], or
    /// `max_parallel` of 0 (nothing runs).
    ///
    /// # Cancel safety
    /// Dropping the future stops the processes it started (stop signal, grace period,
    /// SIGKILL) on tasks of their own.
    async fn run_parallel(&self, specs: &[RunSpec], opts: PipelineOptions) -> Result<RunAllResult>;
}

/// [`PipelineRunner`] over an injected [`ProcessService`]: every spec is started with
/// [`ProcessService::start`], so a fake service drives it in tests.
#[derive(Component)]
#[shaku(interface = PipelineRunner)]
pub struct Runner {
    #[shaku(inject)]
    service: Arc<dyn ProcessService>,
}

impl Runner {
    /// A runner starting its processes on `service`.
    pub fn new(service: Arc<dyn ProcessService>) -> Self {
        Runner { service }
    }

    /// The service the runner starts processes on.
    pub fn service(&self) -> &Arc<dyn ProcessService> {
        &self.service
    }
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

#[async_trait]
impl PipelineRunner for Runner {
    async fn run_all(&self, specs: &[RunSpec], opts: PipelineOptions) -> Result<RunAllResult> {
        let deps = plan(specs, Mode::Graph, &opts)?;
        Ok(execute(&self.service, specs, deps, Mode::Graph, opts).await)
    }

    async fn run_sequential(
        &self,
        specs: &[RunSpec],
        opts: PipelineOptions,
    ) -> Result<RunAllResult> {
        let deps = plan(specs, Mode::Sequential, &opts)?;
        Ok(execute(&self.service, specs, deps, Mode::Sequential, opts).await)
    }

    async fn run_parallel(&self, specs: &[RunSpec], opts: PipelineOptions) -> Result<RunAllResult> {
        let deps = plan(specs, Mode::Parallel, &opts)?;
        Ok(execute(&self.service, specs, deps, Mode::Parallel, opts).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(exit_code: Option<i32>, error: Option<Error>, skipped: bool) -> RunResult {
        RunResult {
            name: "x".into(),
            exit_code,
            duration: Duration::ZERO,
            output: String::new(),
            error,
            skipped,
            stopped: false,
            cancelled: false,
        }
    }

    #[test]
    fn passed_truth_table() {
        let failed = || Error::Exited {
            id: "proc-1".into(),
            command: "false".into(),
            code: 1,
            output: String::new(),
        };
        assert!(result(Some(0), None, false).passed(), "ok");
        assert!(!result(Some(1), None, false).passed(), "non-zero");
        assert!(!result(Some(1), Some(failed()), false).passed(), "non-zero");
        assert!(!result(None, None, true).passed(), "skipped");
        assert!(!result(Some(0), None, true).passed(), "skipped");
        assert!(!result(Some(0), Some(failed()), false).passed(), "error");
        assert!(!result(None, None, false).passed(), "no exit code");
    }

    #[test]
    fn counts_and_success() {
        let all = RunAllResult::new(
            vec![
                result(Some(0), None, false),
                result(Some(2), None, false),
                result(None, None, true),
            ],
            Duration::ZERO,
            false,
        );
        assert_eq!((all.passed, all.failed, all.skipped), (1, 1, 1));
        assert!(!all.success());
        assert!(RunAllResult::new(vec![], Duration::ZERO, false).success());
        // Skips without failures (a cancelled pipeline) are not a success either.
        let cancelled = RunAllResult::new(vec![result(None, None, true)], Duration::ZERO, true);
        assert!(!cancelled.success());
    }

    #[test]
    fn spec_converts_to_run_options() {
        let s = RunSpec::new("t", "cargo")
            .args(["test", "-q"])
            .dir("/tmp")
            .env("K", "V")
            .after("b")
            .allow_failure(true);
        let o = RunOptions::from(&s);
        assert_eq!(o.command, "cargo");
        assert_eq!(o.args, ["test", "-q"]);
        assert_eq!(o.dir.as_deref(), Some(std::path::Path::new("/tmp")));
        assert_eq!(o.env, [("K".to_string(), "V".to_string())]);
        assert!(!o.stdin);
        assert!(s.allow_failure);
    }

    fn service_spec() -> ServiceSpec {
        ServiceSpec::new(Probe::log_line("^ready$").unwrap(), Duration::from_secs(3))
    }

    #[test]
    fn every_setter_sets_its_field_and_reaches_the_run_options() {
        // Every value differs from its default, so a setter or a field that is dropped shows.
        let s = RunSpec::new("t", "cargo")
            .timeout(Duration::from_secs(7))
            .grace_period(Duration::from_secs(2))
            .stop_signal(Signal::Int)
            .output_capacity(123)
            .disable_capture(true)
            .input("in")
            .die_with_parent(true)
            .process_group(false)
            .service(service_spec());
        assert_eq!(s.name, "t");
        assert_eq!(s.timeout, Some(Duration::from_secs(7)));
        assert_eq!(s.grace_period, Duration::from_secs(2));
        assert_eq!(s.stop_signal, Signal::Int);
        assert_eq!(s.output_capacity, Some(123));
        assert!(s.disable_capture);
        assert_eq!(s.input.as_deref(), Some("in"));
        assert!(s.die_with_parent);
        assert!(!s.process_group);
        assert_eq!(s.service, Some(service_spec()));
        let o = s.run_options();
        assert_eq!(o.command, "cargo");
        assert_eq!(o.timeout, Some(Duration::from_secs(7)));
        assert_eq!(o.grace_period, Duration::from_secs(2));
        assert_eq!(o.stop_signal, Signal::Int);
        assert_eq!(o.output_capacity, Some(123));
        assert!(o.disable_capture);
        assert!(o.die_with_parent);
        assert!(!o.process_group);
        assert!(o.stdin, "a spec with input gets a piped stdin");
    }

    #[test]
    fn options_takes_every_setting_but_the_pipeline_owned_ones() {
        let opts = RunOptions::new("sh")
            .args(["-c", "true"])
            .dir("/tmp")
            .env("K", "V")
            .timeout(Duration::from_secs(7))
            .grace_period(Duration::from_secs(2))
            .stop_signal(Signal::Int)
            .output_capacity(123)
            .disable_capture(true)
            .die_with_parent(true)
            .process_group(false);
        let s = RunSpec::new("step", "ignored").after("a").options(opts);
        assert_eq!((s.name.as_str(), s.command.as_str()), ("step", "sh"));
        assert_eq!(s.args, ["-c", "true"]);
        assert_eq!(s.dir.as_deref(), Some(std::path::Path::new("/tmp")));
        assert_eq!(s.env, [("K".to_string(), "V".to_string())]);
        assert_eq!(s.after, ["a"]);
        assert_eq!(s.timeout, Some(Duration::from_secs(7)));
        assert_eq!(s.grace_period, Duration::from_secs(2));
        assert_eq!(s.stop_signal, Signal::Int);
        assert_eq!(s.output_capacity, Some(123));
        assert!(s.disable_capture);
        assert!(s.die_with_parent);
        assert!(!s.process_group);
    }

    #[test]
    fn validate_leaves_the_directory_to_the_run() {
        // An earlier step may create the directory: only the command is checked.
        let dir = tempfile::tempdir().unwrap();
        let later = dir.path().join("made-by-an-earlier-step");
        RunSpec::new("t", "true").dir(&later).validate().unwrap();
        assert!(RunOptions::new("true").dir(&later).validate().is_err());
        assert!(RunSpec::new("t", "").validate().is_err());
    }

    #[test]
    fn a_stopped_service_passes_and_a_cancelled_spec_never_does() {
        let mut stopped = result(None, None, false);
        stopped.stopped = true;
        assert!(stopped.passed(), "a service the pipeline stopped");
        stopped.stopped = false;
        assert!(!stopped.passed());
        let mut cancelled = result(Some(0), None, false);
        cancelled.cancelled = true;
        assert!(!cancelled.passed(), "cancelled");
        let all = RunAllResult::new(
            vec![cancelled, result(Some(0), None, false)],
            Duration::ZERO,
            true,
        );
        assert_eq!(
            (all.passed, all.failed, all.skipped, all.interrupted),
            (1, 0, 0, 1)
        );
        assert!(!all.success(), "an interrupted spec is no success");
    }

    #[test]
    fn get_finds_a_result_by_name() {
        let mut a = result(Some(0), None, false);
        a.name = "a".into();
        let mut b = result(Some(1), None, false);
        b.name = "b".into();
        let all = RunAllResult::new(vec![a, b], Duration::ZERO, false);
        assert_eq!(all.get("b").map(|r| r.exit_code), Some(Some(1)));
        assert_eq!(all.get("a").map(|r| r.exit_code), Some(Some(0)));
        assert!(all.get("c").is_none());
    }

    #[test]
    fn pipeline_options_set_their_fields_and_debug_shows_them() {
        let token = CancellationToken::new();
        let opts = PipelineOptions::new()
            .max_parallel(2)
            .cancel(token.clone())
            .on_event(|_| {});
        assert_eq!(opts.max_parallel, Some(2));
        assert!(opts.on_event.is_some());
        token.cancel();
        assert!(opts.cancel.as_ref().is_some_and(|t| t.is_cancelled()));
        let text = format!("{opts:?}");
        assert!(text.starts_with("PipelineOptions {"), "{text}");
        assert!(text.contains("max_parallel: Some(2)"), "{text}");
        assert!(text.contains("on_event: Some(\"Fn\")"), "{text}");
    }
}

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
//! The plan is checked before anything runs: an empty or repeated name, an `after` naming no
//! spec, a spec after itself and a dependency cycle are errors that name the specs, and no
//! process starts.
//!
//! # Failures
//! A spec fails when it exits non-zero, is killed, or cannot start. A failed spec that is not
//! [`allow_failure`](RunSpec::allow_failure) skips every spec that (transitively) runs after it,
//! each skip naming the failed spec ([`Error::DependencyFailed`]). An `allow_failure` spec that
//! fails still counts as failed, but its dependents run.
//!
//! # Cancellation
//! Cancelling [`PipelineOptions::cancel`] kills the running specs' processes (SIGKILL, to their
//! process groups) and skips the pending ones ([`Error::Cancelled`]); the result is still
//! returned, with [`RunAllResult::cancelled`] set.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shaku::{Component, Interface};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::services::process::{ProcessService, RunOptions};

/// One command of a pipeline.
///
/// ```
/// use core_process::RunSpec;
///
/// let test = RunSpec::new("test", "cargo").args(["test", "--all"]).after("build");
/// assert_eq!(test.after, ["build"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

    /// Makes this spec wait for the spec named `name`.
    pub fn after(mut self, name: impl Into<String>) -> Self {
        self.after.push(name.into());
        self
    }

    /// Lets this spec fail without skipping its dependents or stopping the pipeline.
    pub fn allow_failure(mut self, allow: bool) -> Self {
        self.allow_failure = allow;
        self
    }

    /// The [`RunOptions`] this spec starts with: its command, arguments, directory and
    /// environment, with standard input from `/dev/null` (nothing can write to it).
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            command: self.command.clone(),
            args: self.args.clone(),
            dir: self.dir.clone(),
            env: self.env.clone(),
            ..RunOptions::default()
        }
        .stdin(false)
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
}

impl RunResult {
    /// Whether the spec ran and exited with code 0.
    ///
    /// ```
    /// use core_process::RunResult;
    /// use std::time::Duration;
    ///
    /// let ok = RunResult { name: "lint".into(), exit_code: Some(0), duration: Duration::ZERO,
    ///     output: String::new(), error: None, skipped: false };
    /// assert!(ok.passed());
    /// ```
    pub fn passed(&self) -> bool {
        !self.skipped && self.error.is_none() && self.exit_code == Some(0)
    }

    fn skip(name: &str, reason: Error) -> Self {
        RunResult {
            name: name.to_string(),
            exit_code: None,
            duration: Duration::ZERO,
            output: String::new(),
            error: Some(reason),
            skipped: true,
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
    /// How many ran and failed (`allow_failure` ones included).
    pub failed: usize,
    /// How many never ran.
    pub skipped: usize,
    /// Whether the pipeline was cancelled.
    pub cancelled: bool,
}

impl RunAllResult {
    /// Whether every spec passed (nothing failed, nothing was skipped). An empty pipeline
    /// succeeds.
    pub fn success(&self) -> bool {
        self.failed == 0 && self.skipped == 0
    }

    /// The result of the spec named `name`.
    pub fn get(&self, name: &str) -> Option<&RunResult> {
        self.results.iter().find(|r| r.name == name)
    }

    fn new(results: Vec<RunResult>, duration: Duration, cancelled: bool) -> Self {
        let skipped = results.iter().filter(|r| r.skipped).count();
        let passed = results.iter().filter(|r| r.passed()).count();
        RunAllResult {
            failed: results.len() - skipped - passed,
            results,
            duration,
            passed,
            skipped,
            cancelled,
        }
    }
}

/// What happens to the specs of a running pipeline, for live reporting through
/// [`PipelineOptions::on_event`].
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
/// use tokio_util::sync::CancellationToken;
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
    /// Cancelling this token kills the running specs and skips the pending ones.
    pub cancel: Option<CancellationToken>,
    /// Called for each [`PipelineEvent`].
    pub on_event: Option<PipelineHook>,
}

impl PipelineOptions {
    /// Unbounded, not cancellable, no events.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs at most `n` specs at once (`n` must be at least 1).
    pub fn max_parallel(mut self, n: usize) -> Self {
        self.max_parallel = Some(n);
        self
    }

    /// Cancels the pipeline when `token` is cancelled.
    pub fn cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
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
    /// ([`Error::Cycle`]), or `max_parallel` of 0 ([`Error::InvalidPlan`]).
    ///
    /// # Cancel safety
    /// Dropping the future kills the processes it started.
    async fn run_all(&self, specs: &[RunSpec], opts: PipelineOptions) -> Result<RunAllResult>;

    /// Runs `specs` one after another in the given order, ignoring `after`. The first failure
    /// that is not `allow_failure` stops the pipeline: the remaining specs are skipped
    /// ([`Error::PipelineStopped`]).
    ///
    /// # Errors
    /// An empty or repeated spec name, or `max_parallel` of 0 (nothing runs).
    ///
    /// # Cancel safety
    /// Dropping the future kills the process it started.
    async fn run_sequential(
        &self,
        specs: &[RunSpec],
        opts: PipelineOptions,
    ) -> Result<RunAllResult>;

    /// Runs `specs` all at once (up to `max_parallel`), ignoring `after`; a failure does not
    /// stop the others.
    ///
    /// # Errors
    /// An empty or repeated spec name, or `max_parallel` of 0 (nothing runs).
    ///
    /// # Cancel safety
    /// Dropping the future kills the processes it started.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `after` edges.
    Graph,
    /// Each spec after the previous one.
    Sequential,
    /// No edges.
    Parallel,
}

impl Mode {
    /// Why `spec` is skipped when `failed` failed.
    fn skip_error(self, spec: &str, failed: &str) -> Error {
        match self {
            Mode::Sequential => Error::PipelineStopped {
                spec: spec.to_string(),
                failed: failed.to_string(),
            },
            Mode::Graph | Mode::Parallel => Error::DependencyFailed {
                spec: spec.to_string(),
                dependency: failed.to_string(),
            },
        }
    }
}

/// Validates the plan and returns, for each spec, the indices of the specs it waits for.
fn plan(specs: &[RunSpec], mode: Mode, opts: &PipelineOptions) -> Result<Vec<Vec<usize>>> {
    if opts.max_parallel == Some(0) {
        return Err(Error::InvalidPlan {
            reason: "max_parallel must be at least 1".into(),
        });
    }
    let mut index = HashMap::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        if spec.name.trim().is_empty() {
            return Err(Error::InvalidName {
                what: "spec name",
                name: spec.name.clone(),
                reason: "must not be empty",
            });
        }
        if index.insert(spec.name.as_str(), i).is_some() {
            return Err(Error::DuplicateSpec {
                name: spec.name.clone(),
            });
        }
    }
    match mode {
        Mode::Parallel => Ok(vec![Vec::new(); specs.len()]),
        Mode::Sequential => Ok((0..specs.len())
            .map(|i| i.checked_sub(1).into_iter().collect())
            .collect()),
        Mode::Graph => {
            let mut deps = Vec::with_capacity(specs.len());
            for (i, spec) in specs.iter().enumerate() {
                let mut mine: Vec<usize> = Vec::with_capacity(spec.after.len());
                for after in &spec.after {
                    let Some(&d) = index.get(after.as_str()) else {
                        return Err(Error::UnknownDependency {
                            spec: spec.name.clone(),
                            after: after.clone(),
                        });
                    };
                    if d == i {
                        return Err(Error::Cycle {
                            path: vec![spec.name.clone(), spec.name.clone()],
                        });
                    }
                    if !mine.contains(&d) {
                        mine.push(d);
                    }
                }
                deps.push(mine);
            }
            if let Some(cycle) = find_cycle(&deps) {
                return Err(Error::Cycle {
                    path: cycle.into_iter().map(|i| specs[i].name.clone()).collect(),
                });
            }
            Ok(deps)
        }
    }
}

/// A cycle in the graph `deps` (node → the nodes it waits for), as a path whose first node is
/// repeated at the end. Iterative, so a long chain cannot overflow the stack.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        New,
        OnPath,
        Done,
    }
    let mut colour = vec![Colour::New; deps.len()];
    for root in 0..deps.len() {
        if colour[root] != Colour::New {
            continue;
        }
        // (node, index of the next edge to follow)
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        colour[root] = Colour::OnPath;
        while let Some(&(node, edge)) = path.last() {
            match deps[node].get(edge) {
                None => {
                    colour[node] = Colour::Done;
                    path.pop();
                }
                Some(&next) => {
                    if let Some(top) = path.last_mut() {
                        top.1 += 1;
                    }
                    match colour[next] {
                        Colour::New => {
                            colour[next] = Colour::OnPath;
                            path.push((next, 0));
                        }
                        Colour::OnPath => {
                            let start = path.iter().position(|&(n, _)| n == next).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                path[start..].iter().map(|&(n, _)| n).collect();
                            cycle.push(next);
                            return Some(cycle);
                        }
                        Colour::Done => {}
                    }
                }
            }
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Ready,
    Running,
    Done,
}

fn emit(hook: Option<&PipelineHook>, event: PipelineEvent) {
    if let Some(hook) = hook {
        hook(&event);
    }
}

/// The scheduler: Kahn's algorithm driven by completions. A spec becomes ready when the last
/// spec it waits for finishes; ready specs start (lowest index first) while fewer than
/// `max_parallel` run; each completion is handled as it arrives.
async fn execute(
    service: &Arc<dyn ProcessService>,
    specs: &[RunSpec],
    deps: Vec<Vec<usize>>,
    mode: Mode,
    opts: PipelineOptions,
) -> RunAllResult {
    let begun = Instant::now();
    let n = specs.len();
    let limit = opts.max_parallel.unwrap_or(usize::MAX).max(1);
    let hook = opts.on_event.as_ref();
    // Our own token: cancelled by the caller's, and by dropping this future.
    let token = opts
        .cancel
        .as_ref()
        .map(CancellationToken::child_token)
        .unwrap_or_default();
    let _kill_on_drop = token.clone().drop_guard();

    let mut dependents = vec![Vec::new(); n];
    for (i, mine) in deps.iter().enumerate() {
        for &d in mine {
            dependents[d].push(i);
        }
    }
    let mut waiting_for: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut state = vec![State::Waiting; n];
    let mut results: Vec<Option<RunResult>> = (0..n).map(|_| None).collect();
    let mut ready = BTreeSet::new();
    for i in (0..n).filter(|&i| waiting_for[i] == 0) {
        state[i] = State::Ready;
        ready.insert(i);
    }

    let mut tasks = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut cancelled = false;
    loop {
        if !cancelled && token.is_cancelled() {
            cancelled = true;
            for i in 0..n {
                if matches!(state[i], State::Waiting | State::Ready) {
                    state[i] = State::Done;
                    let reason = Error::Cancelled {
                        spec: specs[i].name.clone(),
                    };
                    tracing::debug!(spec = %specs[i].name, "pipeline cancelled; spec skipped");
                    emit(
                        hook,
                        PipelineEvent::Skipped {
                            spec: specs[i].name.clone(),
                            reason: reason.to_string(),
                        },
                    );
                    results[i] = Some(RunResult::skip(&specs[i].name, reason));
                }
            }
            ready.clear();
        }
        while running.len() < limit {
            let Some(i) = ready.pop_first() else { break };
            state[i] = State::Running;
            tracing::debug!(spec = %specs[i].name, "spec starting");
            let task = run_one(
                service.clone(),
                specs[i].clone(),
                token.clone(),
                opts.on_event.clone(),
            );
            running.insert(tasks.spawn(task).id(), i);
        }
        if running.is_empty() {
            break;
        }
        let joined = if cancelled {
            tasks.join_next_with_id().await
        } else {
            tokio::select! {
                joined = tasks.join_next_with_id() => joined,
                () = token.cancelled() => continue,
            }
        };
        let Some(joined) = joined else { break };
        let (i, result) = match joined {
            Ok((id, result)) => match running.remove(&id) {
                Some(i) => (i, result),
                None => continue,
            },
            Err(e) => {
                let Some(i) = running.remove(&e.id()) else {
                    continue;
                };
                let error = Error::state(
                    format!("pipeline spec `{}`", specs[i].name),
                    format!("its task failed: {e}"),
                );
                emit(
                    hook,
                    PipelineEvent::Finished {
                        spec: specs[i].name.clone(),
                        exit_code: None,
                        passed: false,
                        duration: Duration::ZERO,
                    },
                );
                let result = RunResult {
                    name: specs[i].name.clone(),
                    exit_code: None,
                    duration: Duration::ZERO,
                    output: String::new(),
                    error: Some(error),
                    skipped: false,
                };
                (i, result)
            }
        };
        state[i] = State::Done;
        let go_on = result.passed() || specs[i].allow_failure;
        tracing::debug!(spec = %specs[i].name, passed = result.passed(), exit_code = result.exit_code, "spec finished");
        results[i] = Some(result);
        if go_on {
            for &d in &dependents[i] {
                if state[d] == State::Waiting {
                    waiting_for[d] -= 1;
                    if waiting_for[d] == 0 {
                        state[d] = State::Ready;
                        ready.insert(d);
                    }
                }
            }
        } else {
            // Skip everything downstream, naming the spec that failed.
            let failed = &specs[i].name;
            let mut downstream = vec![i];
            while let Some(v) = downstream.pop() {
                for &d in &dependents[v] {
                    if state[d] != State::Waiting {
                        continue;
                    }
                    state[d] = State::Done;
                    let reason = mode.skip_error(&specs[d].name, failed);
                    tracing::debug!(spec = %specs[d].name, failed = %failed, "spec skipped");
                    emit(
                        hook,
                        PipelineEvent::Skipped {
                            spec: specs[d].name.clone(),
                            reason: reason.to_string(),
                        },
                    );
                    results[d] = Some(RunResult::skip(&specs[d].name, reason));
                    downstream.push(d);
                }
            }
        }
    }

    let results = results
        .into_iter()
        .zip(specs)
        .map(|(r, spec)| {
            r.unwrap_or_else(|| {
                RunResult::skip(
                    &spec.name,
                    Error::Cancelled {
                        spec: spec.name.clone(),
                    },
                )
            })
        })
        .collect();
    RunAllResult::new(results, begun.elapsed(), cancelled)
}

/// Starts one spec's process and waits for it.
async fn run_one(
    service: Arc<dyn ProcessService>,
    spec: RunSpec,
    token: CancellationToken,
    hook: Option<PipelineHook>,
) -> RunResult {
    let begun = Instant::now();
    let result = match service
        .start(spec.run_options().cancel(token.clone()))
        .await
    {
        Err(error) => RunResult {
            name: spec.name,
            exit_code: None,
            duration: begun.elapsed(),
            output: String::new(),
            error: Some(error),
            skipped: false,
        },
        Ok(process) => {
            emit(
                hook.as_ref(),
                PipelineEvent::Started {
                    spec: spec.name.clone(),
                    process_id: process.id().to_string(),
                },
            );
            // The service kills the process when the token is cancelled; kill it here too, so
            // a service that ignores `RunOptions::cancel` cannot hang a cancelled run.
            let outcome = tokio::select! {
                outcome = process.wait() => outcome,
                () = token.cancelled() => {
                    if let Err(e) = process.kill().await {
                        tracing::warn!(spec = %spec.name, error = %e, "killing a cancelled spec failed");
                    }
                    process.wait().await
                }
            };
            let result = RunResult {
                name: spec.name,
                exit_code: process.exit_code(),
                duration: begun.elapsed(),
                output: process.output(),
                error: outcome.err(),
                skipped: false,
            };
            // The result holds what the process left (its output): drop it from the service,
            // so a long-lived host running many pipelines does not accumulate them.
            if let Err(e) = service.remove(process.id()) {
                tracing::debug!(id = process.id(), error = %e, "could not forget a finished spec");
            }
            result
        }
    };
    emit(
        hook.as_ref(),
        PipelineEvent::Finished {
            spec: result.name.clone(),
            exit_code: result.exit_code,
            passed: result.passed(),
            duration: result.duration,
        },
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, after: &[&str]) -> RunSpec {
        let mut s = RunSpec::new(name, "true");
        s.after = after.iter().map(|a| a.to_string()).collect();
        s
    }

    fn graph(specs: &[RunSpec]) -> Result<Vec<Vec<usize>>> {
        plan(specs, Mode::Graph, &PipelineOptions::new())
    }

    #[test]
    fn valid_plan_gives_dependency_indices() {
        let deps = graph(&[
            spec("a", &[]),
            spec("b", &["a"]),
            spec("c", &["a", "b", "a"]),
        ])
        .unwrap();
        assert_eq!(deps, vec![vec![], vec![0], vec![0, 1]]);
        assert!(graph(&[]).unwrap().is_empty());
    }

    #[test]
    fn empty_and_duplicate_names_are_rejected() {
        for name in ["", "  "] {
            match graph(&[spec("a", &[]), spec(name, &[])]) {
                Err(Error::InvalidName { what, .. }) => assert_eq!(what, "spec name"),
                other => panic!("{other:?}"),
            }
        }
        for mode in [Mode::Graph, Mode::Sequential, Mode::Parallel] {
            let err = plan(
                &[spec("a", &[]), spec("b", &[]), spec("a", &[])],
                mode,
                &PipelineOptions::new(),
            )
            .unwrap_err();
            assert!(matches!(&err, Error::DuplicateSpec { name } if name == "a"));
            assert!(err.to_string().contains("`a`"), "{err}");
        }
    }

    #[test]
    fn unknown_dependency_names_both_specs() {
        let err = graph(&[spec("a", &[]), spec("b", &["nope"])]).unwrap_err();
        assert!(
            matches!(&err, Error::UnknownDependency { spec, after } if spec == "b" && after == "nope")
        );
        assert_eq!(
            err.to_string(),
            "invalid pipeline: spec `b` runs after `nope`, which is not in the pipeline"
        );
        // Sequential and parallel runs ignore `after`.
        plan(
            &[spec("b", &["nope"])],
            Mode::Sequential,
            &PipelineOptions::new(),
        )
        .unwrap();
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let err = graph(&[spec("a", &["a"])]).unwrap_err();
        assert!(matches!(&err, Error::Cycle { path } if path == &["a", "a"]));
        assert_eq!(err.to_string(), "invalid pipeline: dependency cycle a → a");
    }

    #[test]
    fn cycles_are_reported_as_a_path() {
        let err = graph(&[spec("a", &["b"]), spec("b", &["a"])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid pipeline: dependency cycle a → b → a"
        );

        // A cycle reached from an acyclic prefix is reported without the prefix.
        let err = graph(&[
            spec("start", &[]),
            spec("x", &["start", "y"]),
            spec("y", &["z"]),
            spec("z", &["x"]),
            spec("w", &["x"]),
        ])
        .unwrap_err();
        match err {
            Error::Cycle { path } => assert_eq!(path, ["x", "y", "z", "x"]),
            other => panic!("{other:?}"),
        }

        // A diamond is not a cycle.
        graph(&[
            spec("a", &[]),
            spec("b", &["a"]),
            spec("c", &["a"]),
            spec("d", &["b", "c"]),
        ])
        .unwrap();
    }

    #[test]
    fn long_chains_do_not_overflow_the_stack() {
        let n = 100_000;
        let mut deps: Vec<Vec<usize>> = (0..n).map(|i| vec![i + 1]).collect();
        deps[n - 1] = vec![];
        assert_eq!(find_cycle(&deps), None);
        deps[n - 1] = vec![0];
        assert_eq!(find_cycle(&deps).map(|c| c.len()), Some(n + 1));
    }

    #[test]
    fn zero_max_parallel_is_rejected() {
        let err = plan(
            &[spec("a", &[])],
            Mode::Parallel,
            &PipelineOptions::new().max_parallel(0),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidPlan { .. }));
    }

    #[test]
    fn sequential_plan_chains_the_specs() {
        let deps = plan(
            &[spec("a", &[]), spec("b", &[]), spec("c", &[])],
            Mode::Sequential,
            &PipelineOptions::new(),
        )
        .unwrap();
        assert_eq!(deps, vec![vec![], vec![0], vec![1]]);
    }

    fn result(exit_code: Option<i32>, error: Option<Error>, skipped: bool) -> RunResult {
        RunResult {
            name: "x".into(),
            exit_code,
            duration: Duration::ZERO,
            output: String::new(),
            error,
            skipped,
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
}

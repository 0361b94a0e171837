//! The async scheduler: starts specs by readiness, waits for them, skips dependents of
//! failures, honours cancellation (gracefully) and `max_parallel`. Every event but `Started` is
//! emitted here, on the scheduler's task, in the order things are handled. A service spec
//! reports its readiness on a channel: its dependents start once it is ready, and it is
//! stopped once only ready services are left running.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::plan::Mode;
use super::{
    PipelineEvent, PipelineHook, PipelineOptions, RunAllResult, RunResult, RunSpec, ServiceSpec,
};
use crate::error::Error;
use crate::event::ProcessEvent;
use crate::services::event_bus::RecvError;
use crate::services::process::{Process, ProcessService};

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

/// One spec's place in the schedule.
struct Node {
    state: State,
    /// How many of the specs it runs after have not finished yet.
    waiting_for: usize,
    /// The specs that run after it.
    dependents: Vec<usize>,
    result: Option<RunResult>,
    /// A service that reported its readiness: its dependents were readied or skipped then.
    released: bool,
}

/// The scheduler's state: the nodes, the ready set, and where events go.
struct Schedule<'a> {
    specs: &'a [RunSpec],
    nodes: Vec<Node>,
    /// Ready specs, lowest index first.
    ready: BTreeSet<usize>,
    hook: Option<&'a PipelineHook>,
    mode: Mode,
}

impl<'a> Schedule<'a> {
    fn new(
        specs: &'a [RunSpec],
        deps: &[Vec<usize>],
        mode: Mode,
        hook: Option<&'a PipelineHook>,
    ) -> Self {
        let mut nodes: Vec<Node> = deps
            .iter()
            .map(|mine| Node {
                state: State::Waiting,
                waiting_for: mine.len(),
                dependents: Vec::new(),
                result: None,
                released: false,
            })
            .collect();
        for (i, mine) in deps.iter().enumerate() {
            for &d in mine {
                nodes[d].dependents.push(i);
            }
        }
        let mut ready = BTreeSet::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            if node.waiting_for == 0 {
                node.state = State::Ready;
                ready.insert(i);
            }
        }
        Schedule {
            specs,
            nodes,
            ready,
            hook,
            mode,
        }
    }

    /// Marks `i` skipped for `reason` and says so.
    fn skip(&mut self, i: usize, reason: Error) {
        let name = &self.specs[i].name;
        tracing::debug!(spec = %name, reason = %reason, "spec skipped");
        self.nodes[i].state = State::Done;
        self.ready.remove(&i);
        emit(
            self.hook,
            PipelineEvent::Skipped {
                spec: name.clone(),
                reason: reason.to_string(),
            },
        );
        self.nodes[i].result = Some(RunResult::skip(name, reason));
    }

    /// Skips every spec not started yet: the pipeline was cancelled.
    fn skip_pending(&mut self) {
        for i in 0..self.nodes.len() {
            if matches!(self.nodes[i].state, State::Waiting | State::Ready) {
                let spec = self.specs[i].name.clone();
                self.skip(i, Error::Cancelled { spec });
            }
        }
    }

    /// Readies the dependents of `i` (one of them waits for nothing else any more).
    fn ready_dependents(&mut self, i: usize) {
        for d in self.nodes[i].dependents.clone() {
            let node = &mut self.nodes[d];
            if node.state == State::Waiting {
                node.waiting_for -= 1;
                if node.waiting_for == 0 {
                    node.state = State::Ready;
                    self.ready.insert(d);
                }
            }
        }
    }

    /// Skips everything still waiting downstream of `i`: a direct dependent with `first`'s
    /// error, the rest naming `i` as the spec that failed.
    fn skip_downstream(&mut self, i: usize, first: impl Fn(&str) -> Error) {
        let mut downstream = vec![i];
        while let Some(v) = downstream.pop() {
            for d in self.nodes[v].dependents.clone() {
                if self.nodes[d].state == State::Waiting {
                    let name = &self.specs[d].name;
                    let reason = if v == i {
                        first(name)
                    } else {
                        self.mode.skip_error(name, &self.specs[i].name)
                    };
                    self.skip(d, reason);
                    downstream.push(d);
                }
            }
        }
    }

    /// A service reported: ready (its dependents may start) or not (they are skipped with the
    /// reason; an `allow_failure` service readies them anyway).
    fn release(&mut self, i: usize, readiness: Result<(), String>) {
        if std::mem::replace(&mut self.nodes[i].released, true) {
            return;
        }
        let reason = match readiness {
            Ok(()) => None,
            Err(_) if self.specs[i].allow_failure => None,
            Err(reason) => Some(reason),
        };
        tracing::debug!(spec = %self.specs[i].name, ready = reason.is_none(), "service reported");
        match reason {
            None => self.ready_dependents(i),
            Some(reason) => {
                let service = self.specs[i].name.clone();
                self.skip_downstream(i, |spec| Error::ServiceNotReady {
                    spec: spec.to_string(),
                    service: service.clone(),
                    reason: reason.clone(),
                });
            }
        }
    }

    /// Whether nothing is left to run but ready services: they are then stopped.
    fn only_services_left(&self, running: &HashMap<tokio::task::Id, usize>) -> bool {
        self.ready.is_empty()
            && running
                .values()
                .all(|&i| self.nodes[i].released && self.specs[i].service.is_some())
    }

    /// Records `result` for `i`, says so, and readies its dependents or skips everything
    /// downstream of a failure (after the failure's own event).
    fn finish(&mut self, i: usize, result: RunResult) {
        let spec = &self.specs[i];
        tracing::debug!(spec = %spec.name, passed = result.passed(), cancelled = result.cancelled, exit_code = result.exit_code, "spec finished");
        emit(
            self.hook,
            if result.cancelled {
                PipelineEvent::Cancelled {
                    spec: spec.name.clone(),
                    duration: result.duration,
                }
            } else {
                PipelineEvent::Finished {
                    spec: spec.name.clone(),
                    exit_code: result.exit_code,
                    passed: result.passed(),
                    duration: result.duration,
                }
            },
        );
        let go_on = result.passed() || spec.allow_failure;
        let cancelled = result.cancelled;
        self.nodes[i].state = State::Done;
        self.nodes[i].result = Some(result);
        if cancelled {
            // Its dependents were skipped as cancelled already, or are skipped as such now.
            self.skip_pending();
        } else if self.nodes[i].released {
            // A service: its dependents were readied (or skipped) when it reported readiness.
        } else if go_on {
            self.ready_dependents(i);
        } else {
            // Skip everything downstream, naming the spec that failed.
            let mode = self.mode;
            let failed = spec.name.clone();
            self.skip_downstream(i, |d| mode.skip_error(d, &failed));
        }
    }

    fn into_result(self, duration: Duration, cancelled: bool) -> RunAllResult {
        let results = self
            .nodes
            .into_iter()
            .zip(self.specs)
            .map(|(node, spec)| {
                node.result.unwrap_or_else(|| {
                    RunResult::skip(
                        &spec.name,
                        Error::Cancelled {
                            spec: spec.name.clone(),
                        },
                    )
                })
            })
            .collect();
        RunAllResult::new(results, duration, cancelled)
    }
}

/// The scheduler: Kahn's algorithm driven by completions. A spec becomes ready when the last
/// spec it waits for finishes; ready specs start (lowest index first) while fewer than
/// `max_parallel` run; each completion is handled as it arrives.
pub(super) async fn execute(
    service: &Arc<dyn ProcessService>,
    specs: &[RunSpec],
    deps: Vec<Vec<usize>>,
    mode: Mode,
    opts: PipelineOptions,
) -> RunAllResult {
    let begun = Instant::now();
    let limit = opts.max_parallel.unwrap_or(usize::MAX).max(1);
    // Cancelled by the caller's token; dropping this future aborts the tasks, whose guards
    // then stop their processes.
    let token = opts
        .cancel
        .as_ref()
        .map(CancellationToken::child_token)
        .unwrap_or_default();
    let mut schedule = Schedule::new(specs, &deps, mode, opts.on_event.as_ref());

    let mut tasks = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut cancelled = false;
    // Services report readiness here.
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(usize, Result<(), String>)>();
    // Cancelled once nothing but ready services runs: they are then stopped.
    let services_end = CancellationToken::new();
    loop {
        if !cancelled && token.is_cancelled() {
            cancelled = true;
            schedule.skip_pending();
        }
        while running.len() < limit {
            let Some(i) = schedule.ready.pop_first() else {
                break;
            };
            schedule.nodes[i].state = State::Running;
            tracing::debug!(spec = %specs[i].name, "spec starting");
            let task = run_one(
                service.clone(),
                specs[i].clone(),
                token.clone(),
                opts.on_event.clone(),
                Readiness {
                    index: i,
                    tx: ready_tx.clone(),
                    end: services_end.clone(),
                },
            );
            running.insert(tasks.spawn(task).id(), i);
        }
        if running.is_empty() {
            break;
        }
        if schedule.only_services_left(&running) {
            services_end.cancel();
        }
        let joined = if cancelled {
            tasks.join_next_with_id().await
        } else {
            tokio::select! {
                joined = tasks.join_next_with_id() => joined,
                Some((i, readiness)) = ready_rx.recv() => {
                    schedule.release(i, readiness);
                    continue;
                }
                () = token.cancelled() => continue,
            }
        };
        // A service's readiness report comes before its end: handle any still queued.
        while let Ok((i, readiness)) = ready_rx.try_recv() {
            schedule.release(i, readiness);
        }
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
                let error = Error::TaskFailed {
                    what: format!("pipeline spec `{}`", specs[i].name),
                    reason: e.to_string(),
                };
                let mut result = RunResult::skip(&specs[i].name, error);
                result.skipped = false;
                (i, result)
            }
        };
        schedule.finish(i, result);
    }
    schedule.into_result(begun.elapsed(), cancelled)
}

/// A step's subscription, forwarding its lines as [`PipelineEvent::Output`].
struct StepLines {
    events: crate::services::event_bus::Subscription,
    id: String,
    spec: String,
    /// The step's `Exited` was seen, or the bus closed.
    done: bool,
}

impl StepLines {
    /// Forwards `event` if it is one of the step's lines; notes the step's end.
    fn forward(
        &mut self,
        event: Result<crate::event::ProcessEvent, RecvError>,
        hook: Option<&PipelineHook>,
    ) {
        match event {
            Ok(event) if event.id() == self.id => match event {
                ProcessEvent::Output { line, stream, .. } => emit(
                    hook,
                    PipelineEvent::Output {
                        spec: self.spec.clone(),
                        stream,
                        line: line.to_string(),
                    },
                ),
                ProcessEvent::Exited { .. } => self.done = true,
                _ => {}
            },
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(spec = %self.spec, missed = n, "step output lines missed");
            }
            Err(RecvError::Closed) => self.done = true,
        }
    }

    /// Forwards whatever is already there, up to the step's end.
    fn drain(&mut self, hook: Option<&PipelineHook>) {
        while !self.done {
            let Some(event) = self.events.try_recv() else {
                break;
            };
            self.forward(event, hook);
        }
    }
}

/// Receives and forwards the step's next event; pending for ever once there are none.
async fn next_line(lines: Option<&mut StepLines>, hook: Option<&PipelineHook>) {
    match lines {
        Some(lines) if !lines.done => {
            let event = lines.events.recv().await;
            lines.forward(event, hook);
        }
        _ => std::future::pending().await,
    }
}

/// Stops the process it holds (stop signal, grace period, SIGKILL) on a task of its own when
/// dropped armed: the spec's task was aborted with the pipeline's future.
struct StopOnDrop(Option<Process>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(p) = self.0.take() else { return };
        if !p.is_running() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { p.stop(p.grace_period()).await });
            }
            Err(_) => p.start_kill(),
        }
    }
}

/// How a service spec reports readiness and learns that the pipeline no longer needs it.
struct Readiness {
    index: usize,
    tx: mpsc::UnboundedSender<(usize, Result<(), String>)>,
    end: CancellationToken,
}

impl Readiness {
    fn report(&self, readiness: Result<(), String>) {
        let _ = self.tx.send((self.index, readiness));
    }
}

/// Waits until the service is ready; the reason when it is not within its timeout.
async fn until_ready(process: &Process, svc: &ServiceSpec) -> Result<(), String> {
    tokio::select! {
        () = svc.readiness.until_ready(process) => Ok(()),
        () = tokio::time::sleep(svc.ready_timeout) => Err(format!(
            "not ready within {:?} ({})",
            svc.ready_timeout,
            svc.readiness.describe()
        )),
    }
}

/// Starts one spec's process and waits for it; on cancellation stops it gracefully. A service
/// reports its readiness, then runs until it ends or the pipeline no longer needs it.
async fn run_one(
    service: Arc<dyn ProcessService>,
    spec: RunSpec,
    token: CancellationToken,
    hook: Option<PipelineHook>,
    readiness: Readiness,
) -> RunResult {
    let begun = Instant::now();
    // Subscribed before the start, so the step's first lines cannot be missed; only when
    // someone listens.
    let events = match (&hook, service.events()) {
        (Some(_), Some(bus)) => Some(bus.subscribe()),
        _ => None,
    };
    let process = match service.start(spec.run_options()).await {
        Err(error) => {
            let mut result = RunResult::skip(&spec.name, error);
            result.skipped = false;
            result.duration = begun.elapsed();
            return result;
        }
        Ok(process) => process,
    };
    let mut guard = StopOnDrop(Some(process.clone()));
    emit(
        hook.as_ref(),
        PipelineEvent::Started {
            spec: spec.name.clone(),
            process_id: process.id().to_string(),
        },
    );
    let mut lines = events.map(|events| StepLines {
        events,
        id: process.id().to_string(),
        spec: spec.name.clone(),
        done: false,
    });
    if let Some(input) = spec.input {
        let feeder = process.clone();
        tokio::spawn(async move {
            if let Err(e) = feeder.send_input(input).await {
                tracing::debug!(id = feeder.id(), error = %e, "step input not fully written");
            }
            feeder.close_stdin().await;
        });
    }
    let mut stopped = false;
    // A service: waiting until it is ready (`pending`), then ready (`serving`), then stopped
    // by the pipeline's end (`service_stopped`); `not_ready` its failure to become ready.
    let mut pending = spec
        .service
        .as_ref()
        .map(|svc| Box::pin(until_ready(&process, svc)));
    let (mut serving, mut service_stopped, mut not_ready) = (false, false, None);
    let stop = |p: &Process| {
        let p = p.clone();
        tokio::spawn(async move { p.stop(p.grace_period()).await });
    };
    let outcome = loop {
        tokio::select! {
            outcome = process.wait() => break outcome,
            () = token.cancelled(), if !stopped => {
                // Cancelled when the stop ended it, whatever its exit status (a trap may
                // exit 0). The stop waits on a task of its own; lines are still forwarded.
                stopped = process.is_running() && !service_stopped;
                stop(&process);
            }
            ready = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                pending = None;
                readiness.report(ready.clone());
                match ready {
                    Ok(()) => serving = true,
                    Err(reason) => {
                        not_ready = Some(Error::NotReady { name: spec.name.clone(), reason });
                        stop(&process);
                    }
                }
            }
            () = readiness.end.cancelled(), if serving && !service_stopped && !stopped => {
                tracing::debug!(spec = %spec.name, "pipeline over; stopping its service");
                service_stopped = true;
                stop(&process);
            }
            () = next_line(lines.as_mut(), hook.as_ref()) => {}
        }
    };
    if pending.is_some() {
        // Ended (or cancelled) before it was ready.
        let reason = if stopped {
            "the pipeline was cancelled"
        } else {
            "it ended before it was ready"
        };
        readiness.report(Err(reason.to_string()));
        if !stopped {
            not_ready = Some(Error::NotReady {
                name: spec.name.clone(),
                reason: reason.to_string(),
            });
        }
    }
    // Every event of the process was published before it read as done.
    if let Some(lines) = lines.as_mut() {
        lines.drain(hook.as_ref());
    }
    guard.0 = None;
    let result = RunResult {
        name: spec.name,
        exit_code: process.exit_code(),
        duration: begun.elapsed(),
        output: process.output(),
        // A step that exited on its own just as the cancel came is reported as it ended.
        cancelled: stopped,
        error: not_ready.or_else(|| if service_stopped { None } else { outcome.err() }),
        skipped: false,
        stopped: service_stopped,
    };
    // The result holds what the process left (its output): drop it from the service, so a
    // long-lived host running many pipelines does not accumulate them.
    if let Err(e) = service.remove(process.id()) {
        tracing::debug!(id = process.id(), error = %e, "could not forget a finished spec");
    }
    result
}

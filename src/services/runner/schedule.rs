//! The async scheduler: starts specs by readiness, waits for them, skips dependents of
//! failures, honours cancellation and `max_parallel`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::plan::Mode;
use super::{PipelineEvent, PipelineHook, PipelineOptions, RunAllResult, RunResult, RunSpec};
use crate::error::Error;
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

/// What [`release`] updates in the scheduler's state.
struct Release<'a> {
    specs: &'a [RunSpec],
    mode: Mode,
    hook: Option<&'a PipelineHook>,
    dependents: &'a [Vec<usize>],
    state: &'a mut [State],
    waiting_for: &'a mut [usize],
    ready: &'a mut BTreeSet<usize>,
    results: &'a mut [Option<RunResult>],
    released: &'a mut [bool],
}

/// A service reported: ready (its dependents may start) or not (they are skipped with the
/// reason; an `allow_failure` service releases them anyway).
fn release(i: usize, readiness: Result<(), String>, r: &mut Release<'_>) {
    if r.released[i] {
        return;
    }
    r.released[i] = true;
    let reason = match readiness {
        Ok(()) => None,
        Err(_) if r.specs[i].allow_failure => None,
        Err(reason) => Some(reason),
    };
    tracing::debug!(spec = %r.specs[i].name, ready = reason.is_none(), "service reported");
    let Some(reason) = reason else {
        for &d in &r.dependents[i] {
            if r.state[d] == State::Waiting {
                r.waiting_for[d] -= 1;
                if r.waiting_for[d] == 0 {
                    r.state[d] = State::Ready;
                    r.ready.insert(d);
                }
            }
        }
        return;
    };
    let service = &r.specs[i].name;
    let mut downstream = vec![i];
    while let Some(v) = downstream.pop() {
        for &d in &r.dependents[v] {
            if r.state[d] != State::Waiting {
                continue;
            }
            r.state[d] = State::Done;
            let error = if v == i {
                Error::ServiceNotReady {
                    spec: r.specs[d].name.clone(),
                    service: service.clone(),
                    reason: reason.clone(),
                }
            } else {
                r.mode.skip_error(&r.specs[d].name, &r.specs[v].name)
            };
            emit(
                r.hook,
                PipelineEvent::Skipped {
                    spec: r.specs[d].name.clone(),
                    reason: error.to_string(),
                },
            );
            r.results[d] = Some(RunResult::skip(&r.specs[d].name, error));
            downstream.push(d);
        }
    }
}

/// How a service spec reports readiness and learns that the pipeline no longer needs it.
struct Readiness {
    index: usize,
    tx: mpsc::UnboundedSender<(usize, Result<(), String>)>,
    end: CancellationToken,
}

/// For a service: waits until it is ready (reported to the scheduler), then until the
/// pipeline ends (and stops it) or it ends on its own. Returns whether the pipeline stopped
/// it after it was ready, and the readiness error.
async fn serve(
    process: &Process,
    spec: &RunSpec,
    token: &CancellationToken,
    readiness: &Readiness,
) -> (bool, Option<Error>) {
    let Some(svc) = &spec.service else {
        return (false, None);
    };
    let ready = tokio::select! {
        () = svc.readiness.until_ready(process) => Ok(()),
        () = process.done() => Err("it ended before it was ready".to_string()),
        () = tokio::time::sleep(svc.ready_timeout) => Err(format!(
            "not ready within {:?} ({})",
            svc.ready_timeout,
            svc.readiness.describe()
        )),
        () = token.cancelled() => Err("the pipeline was cancelled".to_string()),
    };
    let _ = readiness.tx.send((readiness.index, ready.clone()));
    if let Err(reason) = ready {
        process.stop(process.grace_period()).await;
        let error = Error::NotReady {
            name: spec.name.clone(),
            reason,
        };
        return (false, Some(error));
    }
    tokio::select! {
        () = process.done() => (false, None),
        () = readiness.end.cancelled() => {
            tracing::debug!(spec = %spec.name, "pipeline over; stopping its service");
            process.stop(process.grace_period()).await;
            (true, None)
        }
        () = token.cancelled() => (false, None),
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
    // Services report readiness here; `released[i]` once spec i's dependents were handled.
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(usize, Result<(), String>)>();
    let mut released = vec![false; n];
    // Cancelled once nothing but ready services runs: they are then stopped.
    let services_end = CancellationToken::new();
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
        if ready.is_empty()
            && running
                .values()
                .all(|&i| released[i] && specs[i].service.is_some())
        {
            services_end.cancel();
        }
        let joined = if cancelled {
            tasks.join_next_with_id().await
        } else {
            tokio::select! {
                joined = tasks.join_next_with_id() => joined,
                Some((i, readiness)) = ready_rx.recv() => {
                    release(i, readiness, &mut Release {
                        specs, mode, hook, dependents: &dependents, state: &mut state,
                        waiting_for: &mut waiting_for, ready: &mut ready, results: &mut results,
                        released: &mut released,
                    });
                    continue;
                }
                () = token.cancelled() => continue,
            }
        };
        // A service's readiness report comes before its end: handle any still queued.
        while let Ok((i, readiness)) = ready_rx.try_recv() {
            release(
                i,
                readiness,
                &mut Release {
                    specs,
                    mode,
                    hook,
                    dependents: &dependents,
                    state: &mut state,
                    waiting_for: &mut waiting_for,
                    ready: &mut ready,
                    results: &mut results,
                    released: &mut released,
                },
            );
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
                    stopped: false,
                };
                (i, result)
            }
        };
        state[i] = State::Done;
        let go_on = result.passed() || specs[i].allow_failure;
        tracing::debug!(spec = %specs[i].name, passed = result.passed(), exit_code = result.exit_code, "spec finished");
        results[i] = Some(result);
        if released[i] {
            // A service: its dependents were released (or skipped) when it reported readiness.
        } else if go_on {
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
    readiness: Readiness,
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
            stopped: false,
        },
        Ok(process) => {
            emit(
                hook.as_ref(),
                PipelineEvent::Started {
                    spec: spec.name.clone(),
                    process_id: process.id().to_string(),
                },
            );
            let (stopped, not_ready) = serve(&process, &spec, &token, &readiness).await;
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
                error: not_ready.or_else(|| if stopped { None } else { outcome.err() }),
                skipped: false,
                stopped,
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

//! The async scheduler: starts specs by readiness, waits for them, skips dependents of
//! failures, honours cancellation and `max_parallel`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::plan::Mode;
use super::{PipelineEvent, PipelineHook, PipelineOptions, RunAllResult, RunResult, RunSpec};
use crate::error::Error;
use crate::services::process::ProcessService;

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

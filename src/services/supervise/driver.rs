//! The task that drives one supervised process: starts its children, runs their probes,
//! applies the policy when one ends, waits out the backoff, and publishes each transition.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handle::{Command, Shared};
use super::policy::{FailedStarts, SupervisePolicy, random_unit};
use super::state::{LastExit, SupervisionState};
use crate::event::ProcessEvent;
use crate::services::event_bus::EventBus;
use crate::services::process::{Process, ProcessService, RunOptions};
use crate::types::Status;

/// How one attempt ended.
enum Outcome {
    /// The child ended (or was stopped by a probe, its memory limit or its ready timeout).
    Ended {
        exit: LastExit,
        /// Stopped on purpose by a probe or the memory limit.
        forced: bool,
        /// Counts as a failed start whatever its uptime (spawn error, never ready).
        failed: bool,
    },
    /// `stop()` was called; the child is reaped.
    Stopped(Option<tokio::sync::oneshot::Sender<()>>),
    /// `restart()` was called; the child is reaped.
    Restart,
    /// The supervisor shuts down; the child is reaped.
    Closing,
    /// The caller's `RunOptions::cancel` was cancelled; the child is reaped.
    Cancelled,
}

pub(crate) struct Driver {
    pub(crate) shared: Arc<Shared>,
    pub(crate) service: Arc<dyn ProcessService>,
    pub(crate) bus: Arc<dyn EventBus>,
    pub(crate) policy: SupervisePolicy,
    pub(crate) opts: RunOptions,
    /// The caller's `RunOptions::cancel`: cancelling it stops the supervision.
    pub(crate) cancel: Option<CancellationToken>,
    pub(crate) closing: CancellationToken,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
}

/// Awaits `f`, or never when there is none.
async fn maybe<F: Future + Unpin>(f: Option<&mut F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Driver {
    /// Runs until the supervisor shuts down, `first` being the child `supervise` started.
    pub(crate) async fn run(mut self, first: Process) {
        let mut next = Some(first);
        let mut step = 0u32;
        let mut failures = FailedStarts::default();
        loop {
            let outcome = match next.take() {
                Some(child) => self.attempt(child, true).await,
                None => {
                    if self.closing.is_cancelled() {
                        return self.stopped(None);
                    }
                    let attempt = self.shared.next_attempt();
                    self.shared.set_state(SupervisionState::Starting);
                    match self.service.start(self.opts.clone()).await {
                        Ok(child) => self.attempt(child, false).await,
                        Err(e) => Outcome::Ended {
                            exit: LastExit {
                                attempt,
                                exit_code: None,
                                signal: None,
                                reason: format!("could not start: {e}"),
                                uptime: Duration::ZERO,
                            },
                            forced: false,
                            failed: true,
                        },
                    }
                }
            };
            let (exit, forced, failed) = match outcome {
                Outcome::Closing => return self.stopped(None),
                Outcome::Cancelled => {
                    self.stopped(None);
                    return self.wait_closing().await;
                }
                Outcome::Stopped(reply) => {
                    self.stopped(None);
                    if let Some(reply) = reply {
                        let _ = reply.send(());
                    }
                    if !self.wait_for_restart().await {
                        return;
                    }
                    (step, failures) = (0, FailedStarts::default());
                    continue;
                }
                Outcome::Restart => {
                    (step, failures) = (0, FailedStarts::default());
                    continue;
                }
                Outcome::Ended {
                    exit,
                    forced,
                    failed,
                } => (exit, forced, failed),
            };
            let reason = exit.reason.clone();
            let restart = if forced {
                self.policy.restart.restarts_forced()
            } else {
                self.policy.restart.restarts(exit.exit_code)
            };
            if !restart {
                self.stopped(Some(reason));
                if !self.wait_for_restart().await {
                    return;
                }
                (step, failures) = (0, FailedStarts::default());
                continue;
            }
            if failed || exit.uptime < self.policy.min_uptime {
                if failures.record(self.policy.start_limit, Instant::now()) {
                    let reason = format!(
                        "{} failed starts within {:?}; last: {reason}",
                        self.policy.start_limit.burst, self.policy.start_limit.window
                    );
                    tracing::warn!(id = %self.shared.id, %reason, "supervised process gave up");
                    self.shared.set_state(SupervisionState::Fatal {
                        reason: reason.clone(),
                    });
                    self.bus.publish(ProcessEvent::Fatal {
                        id: self.shared.id.clone(),
                        reason,
                    });
                    if !self.wait_for_restart().await {
                        return;
                    }
                    (step, failures) = (0, FailedStarts::default());
                    continue;
                }
            } else {
                step = 0;
                failures.clear();
            }
            let delay = self.policy.backoff.jittered(step, random_unit());
            step = step.saturating_add(1);
            self.shared.set_state(SupervisionState::Backoff { delay });
            self.bus.publish(ProcessEvent::Restarting {
                id: self.shared.id.clone(),
                attempt: exit.attempt + 1,
                delay,
                reason,
            });
            if delay.is_zero() {
                // No timer: a zero sleep would still wait for the timer wheel's next tick
                // (about 1 ms). A pending stop is seen first thing by the next attempt.
                continue;
            }
            let cancel = self.cancel.clone();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.closing.cancelled() => return self.stopped(None),
                () = crate::sync::cancelled(cancel.as_ref()) => {
                    self.stopped(None);
                    return self.wait_closing().await;
                }
                cmd = self.commands.recv() => match cmd {
                    None => return self.stopped(None),
                    Some(Command::Stop(reply)) => {
                        self.stopped(None);
                        let _ = reply.send(());
                        if !self.wait_for_restart().await {
                            return;
                        }
                        (step, failures) = (0, FailedStarts::default());
                    }
                    Some(Command::Restart) => {}
                },
            }
        }
    }

    /// Enters `Stopped` and says so on the bus.
    fn stopped(&self, reason: Option<String>) {
        self.shared.set_state(SupervisionState::Stopped);
        self.bus.publish(ProcessEvent::Stopped {
            id: self.shared.id.clone(),
            reason,
        });
    }

    /// In a terminal state: true once restarted by hand, false when the supervisor closes.
    async fn wait_for_restart(&mut self) -> bool {
        loop {
            tokio::select! {
                () = self.closing.cancelled() => return false,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(Command::Stop(reply)) => {
                        if !matches!(*self.shared.state.borrow(), SupervisionState::Stopped) {
                            self.stopped(None);
                        }
                        let _ = reply.send(());
                    }
                    Some(Command::Restart) => {
                        if self.cancel.as_ref().is_some_and(CancellationToken::is_cancelled) {
                            continue;
                        }
                        return true;
                    }
                },
            }
        }
    }

    /// After the caller's token was cancelled: answers stops until the supervisor closes.
    async fn wait_closing(mut self) {
        while self.wait_for_restart().await {}
    }

    /// Runs one child until it ends or is stopped; `announced` when [`announce`] was called.
    async fn attempt(&mut self, child: Process, announced: bool) -> Outcome {
        let attempt = if announced {
            self.shared.attempt()
        } else {
            announce(&self.shared, self.bus.as_ref(), &child)
        };
        let begun = self.shared.started().unwrap_or_else(Instant::now);

        let policy = self.policy.clone();
        let mut ready = false;
        let mut readiness: Boxed<'_, ()> = Box::pin(policy.readiness.until_ready(&child));
        let mut liveness: Option<Boxed<'_, String>> = None;
        let ready_deadline = policy.ready_timeout.map(|t| begun + t);
        let limit = policy.memory_limit.unwrap_or(u64::MAX);
        let mut memory = policy.memory_limit.map(|_| {
            let mut tick =
                tokio::time::interval(policy.memory_interval.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        let cancel = self.cancel.clone();

        let stop_reason: String;
        let mut forced = true;
        let mut failed = false;
        loop {
            tokio::select! {
                biased;
                () = self.closing.cancelled() => {
                    self.stop_child(&child, attempt, begun, "the supervisor shut down").await;
                    return Outcome::Closing;
                }
                () = crate::sync::cancelled(cancel.as_ref()) => {
                    self.stop_child(&child, attempt, begun, "cancelled").await;
                    return Outcome::Cancelled;
                }
                cmd = self.commands.recv() => match cmd {
                    None => {
                        self.stop_child(&child, attempt, begun, "the supervisor shut down").await;
                        return Outcome::Closing;
                    }
                    Some(Command::Stop(reply)) => {
                        self.stop_child(&child, attempt, begun, "stopped by hand").await;
                        return Outcome::Stopped(Some(reply));
                    }
                    Some(Command::Restart) => {
                        self.stop_child(&child, attempt, begun, "restarted by hand").await;
                        return Outcome::Restart;
                    }
                },
                () = child.done() => {
                    forced = false;
                    stop_reason = describe_end(&child);
                    break;
                }
                () = &mut readiness, if !ready => {
                    ready = true;
                    self.shared.set_state(SupervisionState::Running { ready: true });
                    self.bus.publish(ProcessEvent::Ready { id: self.shared.id.clone(), attempt });
                    tracing::debug!(id = %self.shared.id, attempt, "supervised child ready");
                    if let Some(probe) = &policy.liveness {
                        liveness = Some(Box::pin(probe.until_failed(&child)));
                    }
                }
                () = crate::sync::sleep_until(ready_deadline), if !ready => {
                    stop_reason = format!(
                        "not ready within {:?} ({})",
                        policy.ready_timeout.unwrap_or_default(),
                        policy.readiness.describe()
                    );
                    failed = true;
                    break;
                }
                reason = maybe(liveness.as_mut()) => {
                    stop_reason = reason;
                    break;
                }
                () = async {
                    match memory.as_mut() {
                        Some(tick) => { tick.tick().await; }
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(rss) = crate::sys::resident_memory(child.pid())
                        && rss > limit
                    {
                        stop_reason = format!("resident memory {rss} bytes exceeds the limit of {limit}");
                        break;
                    }
                }
            }
        }
        drop(readiness);
        drop(liveness);
        if forced || failed {
            tracing::info!(id = %self.shared.id, attempt, reason = %stop_reason, "stopping supervised child");
            self.shared.set_state(SupervisionState::Stopping);
            child.stop(child.grace_period()).await;
        }
        let exit = LastExit {
            attempt,
            exit_code: child.exit_code(),
            signal: child.signal_received(),
            reason: stop_reason,
            uptime: begun.elapsed(),
        };
        self.forget(&child);
        self.shared.end(exit.clone());
        Outcome::Ended {
            exit,
            forced,
            failed,
        }
    }

    /// Stops `child` with its grace period and records its end.
    async fn stop_child(&self, child: &Process, attempt: u32, begun: Instant, why: &str) {
        self.shared.set_state(SupervisionState::Stopping);
        child.stop(child.grace_period()).await;
        self.forget(child);
        self.shared.end(LastExit {
            attempt,
            exit_code: child.exit_code(),
            signal: child.signal_received(),
            reason: why.to_string(),
            uptime: begun.elapsed(),
        });
    }

    /// Drops a finished child from the process service: its output now lives in the
    /// supervised buffer, so a crash loop does not fill the service's table.
    fn forget(&self, child: &Process) {
        if let Err(e) = self.service.remove(child.id()) {
            tracing::debug!(id = child.id(), error = %e, "could not forget a supervised child");
        }
    }
}

/// Records the start of `child`, enters `Running { ready: false }` and says so on the bus;
/// returns the attempt number.
pub(crate) fn announce(shared: &Shared, bus: &dyn EventBus, child: &Process) -> u32 {
    let attempt = shared.begin(child);
    shared.set_state(SupervisionState::Running { ready: false });
    bus.publish(ProcessEvent::Attempt {
        id: shared.id.clone(),
        attempt,
        process_id: child.shared_id().clone(),
        pid: child.pid(),
    });
    tracing::debug!(id = %shared.id, attempt, pid = child.pid(), "supervised child started");
    attempt
}

/// Why a child that ended on its own ended.
fn describe_end(child: &Process) -> String {
    match child.status() {
        Status::Exited => format!("exited with code {}", child.exit_code().unwrap_or(-1)),
        Status::Killed => match child.signal_received() {
            Some(sig) => format!("killed by {sig}"),
            None => "killed".into(),
        },
        Status::Failed => "its status was lost".into(),
        Status::Pending | Status::Running => "ended".into(),
    }
}

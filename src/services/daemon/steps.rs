//! The daemon's start and stop steps, and the rollback that undoes a start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::OwnedMutexGuard;

use super::control::{self, Control};
use super::notify;
use super::{DaemonOptions, Snapshot, State, component};
use crate::error::{Error, Result};
use crate::services::health::{HealthService, duplicate_check, validate_check_name};
use crate::services::pid_lock::PidLock;
use crate::services::registry::{DaemonEntry, Registry};
use crate::sys;

/// The daemon's services, options and state, owned: what the start and stop steps work on, on
/// a task of their own if need be.
pub(super) struct Core {
    pub(super) lock: Arc<dyn PidLock>,
    pub(super) health: Arc<dyn HealthService>,
    pub(super) registry: Arc<dyn Registry>,
    pub(super) options: DaemonOptions,
    pub(super) state: Arc<State>,
}

impl Core {
    /// The registry entry with what start knows filled in.
    fn entry_to_register(
        &self,
        health: Option<SocketAddr>,
        control: Option<&str>,
    ) -> Option<DaemonEntry> {
        let mut entry = self.options.registry_entry.clone()?;
        entry.pid = sys::current_pid();
        entry.pid_start_ticks = sys::process_start_time(entry.pid);
        if let Some(addr) = health {
            entry.health = addr.to_string();
        }
        if let Some(endpoint) = control {
            entry.control = endpoint.to_string();
        }
        if entry.binary.is_empty() {
            entry.binary = std::env::current_exe()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        entry.fill_started();
        Some(entry)
    }

    /// The start steps, holding `op` throughout. A failing step undoes the earlier ones; on
    /// success the steps done are handed back as [`Started`], which keeps `op` and undoes them
    /// all unless its caller [accepts](Started::accept) it. Under systemd, says `starting`,
    /// and why the start failed.
    pub(super) async fn start(self, op: OwnedMutexGuard<()>) -> Result<Started> {
        let notifier = self.state.notifier;
        notifier.status("starting");
        let started = self.start_steps(op).await;
        if let Err(e) = &started {
            notifier.status(&format!("start failed: {e}"));
        }
        started
    }

    /// The options' check names: each valid, none repeated.
    fn validate_checks(&self) -> Result<()> {
        let checks = &self.options.health_checks;
        for (i, (name, _)) in checks.iter().enumerate() {
            validate_check_name(name)?;
            if checks[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(duplicate_check(name));
            }
        }
        Ok(())
    }

    async fn start_steps(self, op: OwnedMutexGuard<()>) -> Result<Started> {
        self.validate_checks()?;
        let mut undo = Rollback {
            lock: ReleaseLock(None),
            health: None,
            control: None,
            entry: None,
            runtime: tokio::runtime::Handle::try_current().ok(),
            op: Some(op),
        };
        let locked = match self.lock.path() {
            Some(_) => {
                // `acquire` is synchronous and may wait up to 50 ms for a holder to write its
                // pid: keep that off the runtime's workers.
                // (Outside a tokio runtime there is no blocking pool: acquire here then.)
                let lock = self.lock.clone();
                let acquired = match tokio::runtime::Handle::try_current() {
                    Ok(rt) => rt.spawn_blocking(move || lock.acquire()).await,
                    Err(_) => Ok(lock.acquire()),
                };
                match acquired {
                    Ok(result) => result?,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => {
                        return Err(Error::TaskFailed {
                            what: "acquiring the PID lock".into(),
                            reason: e.to_string(),
                        });
                    }
                }
                undo.lock = ReleaseLock(Some(self.lock.clone()));
                true
            }
            None => false,
        };

        let mut health = None;
        if self.options.health {
            for (name, check) in &self.options.health_checks {
                self.health.add_check(name, check.clone());
            }
            // Undo the "not ready" of a previous stop; a readiness the host set is kept.
            if self.state.ready_cleared.swap(false, Ordering::AcqRel) {
                self.health.set_ready(true);
            }
            match self.health.start().await {
                Ok(addr) => {
                    health = Some(addr);
                    undo.health = Some(self.health.clone());
                }
                Err(e) => {
                    undo.run().await;
                    return Err(e);
                }
            }
        }

        let control = crate::sync::lock(&self.state.control).clone();
        let endpoint = match control::start(control.as_ref()).await {
            Ok(endpoint) => endpoint,
            Err(e) => {
                undo.run().await;
                return Err(e);
            }
        };
        undo.control = control.clone();

        let entry = self.entry_to_register(health, endpoint.as_deref());
        // The token goes beside the entry before the entry is written: whoever finds the
        // entry finds the token.
        if let (Some(entry), Some(dir)) = (&entry, self.registry.entry_dir())
            && let Err(e) = control::write_token(control.as_ref(), &dir, entry)
        {
            undo.run().await;
            return Err(e);
        }
        if let Some(entry) = &entry {
            // Should this task be dropped while registering, the entry may be there or not.
            undo.entry = Some((
                self.registry.clone(),
                entry.code.clone(),
                entry.daemon.clone(),
            ));
            if let Err(e) = self.registry.register(entry.clone()).await {
                undo.entry = None;
                undo.run().await;
                return Err(e);
            }
        }

        Ok(Started {
            undo,
            snapshot: Snapshot {
                running: true,
                locked,
                health,
                entry,
                control,
            },
            state: self.state,
            health_service: self.health,
            daemon: component(&self.options),
        })
    }

    /// The first stop steps, once per run: no more watchdog pings, `STOPPING=1`, then (with a
    /// health server) not ready and the drain delay. [`Lifecycle::on_stopping`] runs them
    /// before the group's processes stop; otherwise the stop does.
    ///
    /// [`Lifecycle::on_stopping`]: crate::lifecycle::Lifecycle::on_stopping
    pub(super) async fn stopping_steps(&self) {
        let has_health = {
            let snapshot = self.state.snapshot();
            if !snapshot.running || self.state.stopping.swap(true, Ordering::AcqRel) {
                return;
            }
            snapshot.health.is_some()
        };
        let notifier = self.state.notifier;
        self.state.stop_watchdog().await; // no ping while stopping
        notifier.stopping();
        self.state.ready_sent.store(false, Ordering::Release);
        if has_health {
            self.health.set_ready(false);
            self.state.ready_cleared.store(true, Ordering::Release);
            let drain = self.options.drain_delay;
            if !drain.is_zero() {
                notifier.status(&format!("draining for {drain:?}"));
                tracing::info!(?drain, "daemon not ready; draining before it stops");
                tokio::time::sleep(drain).await;
            }
        }
    }

    /// The stop steps; the caller holds `op`.
    pub(super) async fn stop_steps(&self) -> Result<()> {
        let snapshot = self.state.snapshot().clone();
        if !snapshot.running {
            return Ok(());
        }
        let mut errors = Vec::new();
        let notifier = self.state.notifier;
        self.stopping_steps().await;
        if let Some(entry) = &snapshot.entry
            && let Err(e) = self.registry.unregister(&entry.code, &entry.daemon).await
        {
            errors.push(e);
        }
        if let Err(e) = control::stop(snapshot.control.as_ref()).await {
            errors.push(e);
        }
        if let Some(addr) = snapshot.health {
            let timeout = self.options.shutdown_timeout;
            match tokio::time::timeout(timeout, self.health.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(Error::Timeout {
                    what: format!("stopping the health server on {addr}"),
                    timeout,
                }),
            }
        }
        if snapshot.locked
            && let Err(e) = self.lock.release()
        {
            errors.push(e);
        }
        *self.state.snapshot() = Snapshot::default();
        self.state.stopping.store(false, Ordering::Release);
        self.state.running.send_replace(false);
        notifier.status("stopped");
        tracing::info!(daemon = %component(&self.options), "daemon stopped");
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Multiple(errors)),
        }
    }
}

/// A start whose steps are all done, on its way to the caller. The daemon counts as started
/// only once the caller [accepts](Self::accept) it; dropped unaccepted (the caller gone, the
/// value dropped in the channel or handed back by a failed send), its [`Rollback`] undoes
/// every step and only then frees `op`.
pub(super) struct Started {
    undo: Rollback,
    snapshot: Snapshot,
    state: Arc<State>,
    health_service: Arc<dyn HealthService>,
    daemon: String,
}

impl Started {
    /// Marks the daemon started and keeps every step; under systemd, says whether it is ready
    /// and starts pinging the watchdog; frees `op`. Synchronous, so that the caller cannot be
    /// dropped between taking the value and accepting it.
    pub(super) fn accept(self) {
        let health = self.snapshot.health;
        *self.state.snapshot() = self.snapshot;
        self.state.running.send_replace(true);
        let op = self.undo.disarm();
        tracing::info!(daemon = %self.daemon, health = ?health, "daemon started");
        let state = &self.state;
        state.ready_sent.store(false, Ordering::Release);
        state.notify_readiness(self.health_service.is_ready());
        if let Some(interval) = state.notifier.watchdog_interval()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let pings = notify::watchdog(
                state.notifier,
                self.health_service.clone(),
                health,
                interval,
            );
            let previous = crate::sync::lock(&state.watchdog).replace(runtime.spawn(pings));
            if let Some(previous) = previous {
                previous.abort();
            }
        }
        drop(op);
    }
}

/// Releases the PID lock it holds when dropped.
struct ReleaseLock(Option<Arc<dyn PidLock>>);

impl ReleaseLock {
    fn release(&mut self) {
        if let Some(lock) = self.0.take()
            && let Err(e) = lock.release()
        {
            tracing::error!(error = %e, "rollback: releasing the PID lock failed");
        }
    }
}

impl Drop for ReleaseLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// What a start has done so far, undone in reverse by [`run`](Self::run) or, should the start
/// be dropped or panic part-way or its [`Started`] be dropped unaccepted, by `Drop`: the lock
/// at once when nothing else is to be undone, otherwise unregister, health stop and release
/// on a task spawned on the start's runtime (or the current one). Holds the start's `op`
/// guard until everything is undone.
struct Rollback {
    lock: ReleaseLock,
    health: Option<Arc<dyn HealthService>>,
    control: Option<Control>,
    entry: Option<(Arc<dyn Registry>, String, String)>,
    /// The runtime the start ran on: a [`Started`] may be dropped outside it (with the
    /// caller's future).
    runtime: Option<tokio::runtime::Handle>,
    /// Last, so that it is dropped last: after the lock is released.
    op: Option<OwnedMutexGuard<()>>,
}

impl Rollback {
    /// Undoes every step done, in reverse.
    pub(super) async fn run(mut self) {
        undo(
            self.entry.take(),
            self.control.take(),
            self.health.take(),
            &mut self.lock,
        )
        .await;
    }

    /// Keeps every step done; returns the `op` guard.
    fn disarm(mut self) -> Option<OwnedMutexGuard<()>> {
        self.lock.0 = None;
        self.health = None;
        self.control = None;
        self.entry = None;
        self.op.take()
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        let (entry, control, health) = (self.entry.take(), self.control.take(), self.health.take());
        if entry.is_none() && control.is_none() && health.is_none() {
            return; // the lock, if held, is released as the fields drop
        }
        let runtime = self
            .runtime
            .take()
            .or_else(|| tokio::runtime::Handle::try_current().ok());
        let Some(runtime) = runtime else {
            tracing::error!(
                "rollback: no tokio runtime to stop the health server or unregister on"
            );
            return;
        };
        let op = self.op.take();
        let mut lock = ReleaseLock(self.lock.0.take());
        tracing::warn!(
            "start interrupted, or its caller gone before taking the result; undoing its steps"
        );
        runtime.spawn(async move {
            undo(entry, control, health, &mut lock).await;
            drop(op);
        });
    }
}

/// The one undo routine of a start: unregister, stop the control API, stop the health server,
/// release the lock, in that order (the reverse of the start), logging what fails.
async fn undo(
    entry: Option<(Arc<dyn Registry>, String, String)>,
    control: Option<Control>,
    health: Option<Arc<dyn HealthService>>,
    lock: &mut ReleaseLock,
) {
    if let Some((registry, code, daemon)) = entry
        && let Err(e) = registry.unregister(&code, &daemon).await
    {
        tracing::error!(error = %e, "rollback: unregistering failed");
    }
    if let Err(e) = control::stop(control.as_ref()).await {
        tracing::error!(error = %e, "rollback: stopping the control API failed");
    }
    if let Some(health) = health
        && let Err(e) = health.stop().await
    {
        tracing::error!(error = %e, "rollback: stopping the health server failed");
    }
    lock.release();
}

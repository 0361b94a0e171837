//! systemd's service notifications (`sd_notify(3)`), through the `sd-notify` crate: `READY=1`
//! with `MAINPID=`, `STOPPING=1`, `STATUS=` lines for the phases, and `WATCHDOG=1` pings
//! while the liveness checks pass. Outside systemd (`NOTIFY_SOCKET` unset, read once when the
//! daemon is built) every call returns at once and no watchdog task is started.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::services::health::HealthService;
use crate::sys;

/// Sends notifications to the service manager, when there is one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// A notifier that sends when `NOTIFY_SOCKET` is set.
    pub(super) fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    /// Whether a service manager listens.
    pub(super) fn enabled(self) -> bool {
        self.enabled
    }

    /// Sends `states` as one datagram; a failure is logged, never returned (the daemon runs
    /// on without its service manager's bookkeeping).
    fn send(self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }

    /// `STATUS=status`.
    pub(super) fn status(self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `READY=1`, `STATUS=status` and `MAINPID=` (ours), in one message.
    pub(super) fn ready(self, status: &str) {
        self.send(&[
            NotifyState::Ready,
            NotifyState::Status(status),
            NotifyState::MainPid(sys::current_pid()),
        ]);
    }

    /// `STOPPING=1` and `STATUS=stopping`.
    pub(super) fn stopping(self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// How often to ping the watchdog: half of `WATCHDOG_USEC`, when it is set and
    /// `WATCHDOG_PID` is ours or unset; `None` outside systemd or without a watchdog.
    pub(super) fn watchdog_interval(self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        sd_notify::watchdog_enabled()
            .filter(|usec| !usec.is_zero())
            .map(|usec| usec / 2)
    }
}

/// The `STATUS=` of a started daemon.
pub(super) fn running_status(ready: bool, health: Option<SocketAddr>) -> String {
    let state = if ready { "ready" } else { "started, not ready" };
    match health {
        Some(addr) => format!("{state}; health on {addr}"),
        None => state.to_string(),
    }
}

/// Pings the watchdog every `interval` (the first at once) while `health`'s liveness checks
/// pass; when they fail, withholds the pings (so systemd restarts a wedged daemon) and says
/// why in `STATUS=`; when they pass again, restores the status. Runs until aborted.
pub(super) async fn watchdog(
    notifier: Notifier,
    health: Arc<dyn HealthService>,
    health_addr: Option<SocketAddr>,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        ticks.tick().await;
        let report = health.check_liveness().await;
        match (report.healthy, healthy) {
            (true, true) => notifier.send(&[NotifyState::Watchdog]),
            (true, false) => {
                let status = running_status(health.is_ready(), health_addr);
                notifier.send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
                tracing::info!("liveness checks pass again; watchdog pings resume");
            }
            (false, true) => {
                let failures = report.failures();
                tracing::warn!(%failures, "liveness checks fail; watchdog pings withheld");
                notifier.status(&format!("unhealthy: {failures}; watchdog withheld"));
            }
            (false, false) => {}
        }
        healthy = report.healthy;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            running_status(true, Some(addr)),
            "ready; health on 127.0.0.1:8080"
        );
        assert_eq!(running_status(false, None), "started, not ready");
    }

    #[test]
    fn a_disabled_notifier_sends_nothing_and_has_no_watchdog() {
        let off = Notifier { enabled: false };
        off.ready("ready");
        off.status("x");
        off.stopping();
        assert_eq!(off.watchdog_interval(), None);
        assert!(!off.enabled());
    }
}

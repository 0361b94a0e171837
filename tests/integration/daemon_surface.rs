//! The daemon's small surface: its options, and the trait's default shutdown bound
//! (mutation-testing survivors of `src/services/daemon/mod.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use core_process::services::daemon::{DEFAULT_SHUTDOWN_TIMEOUT, Shutdown};
use core_process::testing::{FakeHealthService, FakePidLock, MemoryRegistry};
use core_process::{Daemon, DaemonEntry, DaemonOptions, DaemonService, Lifecycle};

#[test]
fn options_are_the_ones_it_was_given() {
    let daemon = Daemon::new(
        DaemonOptions {
            health: true,
            registry_entry: Some(DaemonEntry::new("app", "given")),
            ..Default::default()
        },
        Arc::new(FakePidLock::new()),
        Arc::new(FakeHealthService::new()),
        Arc::new(MemoryRegistry::new()),
    );
    assert!(daemon.options().health);
    let entry = daemon.options().registry_entry.as_ref().unwrap();
    assert_eq!(
        (entry.code.as_str(), entry.daemon.as_str()),
        ("app", "given")
    );
}

/// A daemon service of a host's own that leaves `shutdown_timeout` to the trait.
struct Own;

impl Lifecycle for Own {}

#[async_trait::async_trait]
impl DaemonService for Own {
    async fn start(&self) -> core_process::Result<()> {
        Ok(())
    }
    async fn run(&self, shutdown: Shutdown<'_>) -> core_process::Result<()> {
        shutdown.await;
        Ok(())
    }
    async fn stop(&self) -> core_process::Result<()> {
        Ok(())
    }
    fn set_ready(&self, _ready: bool) {}
    fn health_addr(&self) -> Option<SocketAddr> {
        None
    }
    fn is_running(&self) -> bool {
        false
    }
    fn registered_entry(&self) -> Option<DaemonEntry> {
        None
    }
    #[cfg(feature = "control")]
    fn set_control(&self, _control: Arc<core_process::services::control::ControlServer>) {}
}

#[test]
fn a_daemon_service_of_ones_own_is_bounded_by_the_default_shutdown_timeout() {
    assert_eq!(Own.shutdown_timeout(), DEFAULT_SHUTDOWN_TIMEOUT);
    assert!(!DEFAULT_SHUTDOWN_TIMEOUT.is_zero());
}

#[tokio::test]
async fn its_lifecycle_name_and_debug_say_what_it_is_and_whether_it_runs() {
    let daemon = Daemon::new(
        DaemonOptions {
            health: true,
            ..Default::default()
        },
        Arc::new(FakePidLock::new()),
        Arc::new(FakeHealthService::new()),
        Arc::new(MemoryRegistry::new()),
    );
    assert_eq!(Lifecycle::name(&daemon), "Daemon");
    let shown = format!("{daemon:?}");
    assert!(shown.starts_with("Daemon {"), "{shown}");
    assert!(
        shown.contains("health: true") && shown.contains("running: false"),
        "{shown}"
    );
    daemon.start().await.unwrap();
    let shown = format!("{daemon:?}");
    assert!(shown.contains("running: true"), "{shown}");
    let addr = daemon.health_addr().expect("health was asked for");
    assert!(shown.contains(&addr.to_string()), "{shown}");
    daemon.stop().await.unwrap();
}

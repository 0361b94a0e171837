//! Warnings a daemon logs at start: health or a registry entry asked for, but the service
//! has no address or directory configured (parameters set on a host's builder, ignored).

use std::sync::Arc;

use core_process::testing::{FakeHealthService, FakePidLock, MemoryRegistry};
use core_process::{
    Daemon, DaemonEntry, DaemonOptions, DaemonService, FileRegistry, HealthService, Registry,
    WarpHealthServer,
};

/// A registry in memory that says what a `FileRegistry` without `dir` says: that it uses
/// the default directory (so the test writes nothing under `~/.core/daemons/`).
struct DefaultDir(MemoryRegistry);

#[async_trait::async_trait]
impl Registry for DefaultDir {
    async fn register(&self, entry: DaemonEntry) -> core_process::Result<()> {
        self.0.register(entry).await
    }
    async fn unregister(&self, code: &str, daemon: &str) -> core_process::Result<()> {
        self.0.unregister(code, daemon).await
    }
    async fn get(&self, code: &str, daemon: &str) -> core_process::Result<Option<DaemonEntry>> {
        self.0.get(code, daemon).await
    }
    async fn list(&self) -> core_process::Result<Vec<DaemonEntry>> {
        self.0.list().await
    }
    fn uses_default_dir(&self) -> bool {
        true
    }
}

fn options() -> DaemonOptions {
    DaemonOptions {
        health: true,
        registry_entry: Some(DaemonEntry::new("app", "warned")),
        ..Default::default()
    }
}

/// Starts and stops `daemon` with `capture` as this thread's subscriber (a current-thread
/// runtime: the start's task runs here too); returns the warnings.
async fn warnings_of(daemon: Daemon) -> Vec<String> {
    let capture = crate::support::Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    // Other tests hit the same callsites on threads without a subscriber, and a callsite
    // caches its interest: recompute it now that this thread has one.
    tracing::callsite::rebuild_interest_cache();
    daemon.start().await.unwrap();
    daemon.stop().await.unwrap();
    capture.warnings()
}

#[tokio::test(flavor = "current_thread")]
async fn health_and_an_entry_without_address_or_directory_are_warned_about() {
    let daemon = Daemon::new(
        options(),
        Arc::new(FakePidLock::new()),
        Arc::new(WarpHealthServer::default()),
        Arc::new(DefaultDir(MemoryRegistry::new())),
    );
    let warnings = warnings_of(daemon).await;
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].contains("health") && warnings[0].contains("no address configured"),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("addr=127.0.0.1:0"), "{}", warnings[0]);
    assert!(
        warnings[1].contains("registry") && warnings[1].contains("no directory configured"),
        "{}",
        warnings[1]
    );
    assert!(
        warnings[1].contains("daemon=daemon app/warned"),
        "{}",
        warnings[1]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn configured_services_or_steps_not_asked_for_give_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let configured = Daemon::new(
        options(),
        Arc::new(FakePidLock::new()),
        Arc::new(FakeHealthService::new()),
        Arc::new(FileRegistry::new(dir.path())),
    );
    assert_eq!(warnings_of(configured).await, Vec::<String>::new());
    // Default services, but the options ask for neither step.
    let unasked = Daemon::new(
        DaemonOptions::default(),
        Arc::new(FakePidLock::new()),
        Arc::new(WarpHealthServer::default()),
        Arc::new(DefaultDir(MemoryRegistry::new())),
    );
    assert_eq!(warnings_of(unasked).await, Vec::<String>::new());
}

#[test]
fn the_services_tell_a_default_from_a_configured_location() {
    let dir = tempfile::tempdir().unwrap();
    assert!(FileRegistry::default().uses_default_dir());
    assert!(!FileRegistry::new(dir.path()).uses_default_dir());
    assert_eq!(
        FileRegistry::new(dir.path()).entry_dir(),
        Some(dir.path().to_path_buf())
    );
    assert_eq!(MemoryRegistry::new().entry_dir(), None);
    assert!(!MemoryRegistry::new().uses_default_dir());
    assert!(WarpHealthServer::default().uses_default_addr());
    assert!(!WarpHealthServer::new("127.0.0.1:9090".parse().unwrap()).uses_default_addr());
    assert!(!FakeHealthService::new().uses_default_addr());
}

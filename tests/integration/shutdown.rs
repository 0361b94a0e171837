//! Shutdown on signals through real processes: this test binary re-executed in the `shutdown`
//! role (see `daemon::child_role`) runs a module with a daemon (PID lock, health, registry), a
//! host component and a TERM-trapping child under `Lifecycles::run_until_signal`; the test
//! signals it and checks the order of the stop and that no child survives.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use core_process::{
    FilePidLock, FileRegistry, Lifecycle, Lifecycles, PidLock, ProcessService, Result, RunOptions,
};
use shaku::HasComponent;

use crate::daemon::{LIMIT, report, result_line, signal, spawn_child};
use crate::support::{alive, eventually, within};

/// The host's own work: starts the trapping child, logs its stop.
struct Jobs {
    processes: Arc<dyn ProcessService>,
    dir: std::path::PathBuf,
    ignore_term: bool,
}

fn append(path: &Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

#[async_trait]
impl Lifecycle for Jobs {
    fn name(&self) -> &str {
        "jobs"
    }
    async fn on_start(&self) -> Result<()> {
        let log = self.dir.join("log");
        let reg = self.dir.join("registry");
        let pid = self.dir.join("daemon.pid");
        // On TERM: say whether the registry entry and the PID file are still there, then exit
        // (or, when ignoring TERM, keep going until SIGKILL).
        let on_term = format!(
            "set -- {reg}/*.json; r=unregistered; [ -e \"$1\" ] && r=registered; \
             l=unlocked; [ -e {pid} ] && l=locked; echo \"term $r $l\" >> {log}",
            reg = reg.display(),
            pid = pid.display(),
            log = log.display(),
        );
        let exit = if self.ignore_term { "" } else { "; exit 0" };
        let script = format!(
            "trap '{on_term}{exit}' TERM; echo ready >> {log}; while :; do sleep 1; done",
            log = log.display()
        );
        let child = self
            .processes
            .start(
                RunOptions::new("sh")
                    .args(["-c", &script])
                    .grace_period(Duration::from_secs(if self.ignore_term { 60 } else { 10 })),
            )
            .await?;
        report(format!("started {}", child.pid()));
        Ok(())
    }
    async fn on_stop(&self) -> Result<()> {
        append(&self.dir.join("log"), "host stop");
        Ok(())
    }
}

/// The role: index 0 stops gracefully, index 1 has a child that ignores TERM.
pub(crate) async fn role_shutdown(dir: &Path, index: usize) {
    let module = crate::daemon::daemon_module(dir, "shutdown");
    let jobs = Arc::new(Jobs {
        processes: module.resolve(),
        dir: dir.to_path_buf(),
        ignore_term: index == 1,
    });
    let ended = Lifecycles::of_module(&module)
        .with(jobs)
        .run_until_signal(std::future::pending())
        .await;
    report(format!("stopped {ended:?}"));
}

fn read_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn started(
    dir: &Path,
    index: usize,
) -> (
    tokio::process::Child,
    u32,
    tokio::io::BufReader<tokio::process::ChildStdout>,
) {
    let (child, mut out) = spawn_child("shutdown", dir, index);
    let line = result_line(&mut out).await;
    let pid: u32 = line
        .strip_prefix("started ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected {line}"));
    eventually(LIMIT, "the child's trap is set", || {
        read_log(dir).iter().any(|l| l == "ready")
    })
    .await;
    (child, pid, out)
}

async fn graceful_stop_on(sig: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (child, grandchild, mut out) = started(dir, 0).await;
    let _guard = crate::support::KillOnDrop(grandchild);
    signal(child.id().unwrap(), sig);
    let line = result_line(&mut out).await;
    let expected_signal = if sig == "TERM" { "Term" } else { "Int" };
    assert_eq!(
        line,
        format!("stopped Ok(Ended {{ signal: Some({expected_signal}), forced: None }})")
    );
    // The host's work stopped first, then the child got TERM while the daemon still held its
    // lock and registry entry; those went last.
    assert_eq!(
        read_log(dir),
        ["ready", "host stop", "term registered locked"]
    );
    eventually(LIMIT, "the child is gone", || !alive(grandchild)).await;
    assert!(!dir.join("daemon.pid").exists());
    let lock = FilePidLock::new(dir.join("daemon.pid"));
    lock.acquire().unwrap();
    lock.release().unwrap();
    let entries = FileRegistry::new(dir.join("registry"));
    assert!(
        core_process::Registry::list(&entries)
            .await
            .unwrap()
            .is_empty()
    );
    let mut child = child;
    let status = within(LIMIT, "role exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sigterm_stops_host_work_then_children_then_the_daemon() {
    graceful_stop_on("TERM").await;
}

#[tokio::test]
async fn sigint_stops_everything_in_the_same_order() {
    graceful_stop_on("INT").await;
}

#[tokio::test]
async fn a_second_signal_kills_what_is_left_and_returns_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut child, grandchild, mut out) = started(dir, 1).await;
    let _guard = crate::support::KillOnDrop(grandchild);
    signal(child.id().unwrap(), "TERM");
    eventually(LIMIT, "the child heard TERM", || {
        read_log(dir).iter().any(|l| l.starts_with("term"))
    })
    .await;
    let begun = Instant::now();
    signal(child.id().unwrap(), "INT");
    let line = result_line(&mut out).await;
    assert_eq!(
        line,
        "stopped Ok(Ended { signal: Some(Term), forced: Some(Int) })"
    );
    // Far sooner than the child's 60 s grace period.
    eventually(LIMIT, "the child is killed", || !alive(grandchild)).await;
    assert!(begun.elapsed() < Duration::from_secs(20));
    let status = within(LIMIT, "role exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

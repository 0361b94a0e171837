//! A daemon: single instance (PID lock), `/health`, `/ready`, `/livez` and `/readyz` endpoints,
//! an entry in the daemon registry shared with go-process; ready once started; stops cleanly on
//! Ctrl-C or SIGTERM (not ready, a one-second drain, unregistered). Under systemd it notifies
//! (`READY=1`, `STATUS=`, `STOPPING=1`), pings the watchdog and serves a socket-activated
//! listener: see docs/daemon.md for a unit file.
//!
//! Run it with `cargo run --example daemon -- <registry-dir>` (without an argument it uses the
//! real registry, `~/.core/daemons/`). It prints its health address; try
//! `curl -i http://<addr>/health`, `curl http://<addr>/health?verbose`,
//! `curl http://<addr>/readyz?verbose`, `curl -I http://<addr>/livez` and a second copy of the
//! example (refused: already running). Stop it with Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use core_process::{
    Daemon, DaemonEntry, DaemonOptions, DaemonParameters, DaemonService, FilePidLock,
    FilePidLockParameters, FileRegistry, FileRegistryParameters, HealthCheck, Lifecycles,
    ProcessModule, Registry,
};
use shaku::HasComponent;

#[tokio::main]
async fn main() -> ExitCode {
    let registry_dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(FileRegistry::default_dir);
    let pid_file = std::env::temp_dir().join("core-process-example/daemon.pid");

    let mut entry = DaemonEntry::new("core-process", "example");
    entry.project = "examples".into();
    let module = ProcessModule::builder()
        .with_component_parameters::<FilePidLock>(FilePidLockParameters {
            path: Some(pid_file.clone()),
        })
        .with_component_parameters::<FileRegistry>(FileRegistryParameters {
            dir: Some(registry_dir.clone()),
        })
        .with_component_parameters::<Daemon>(DaemonParameters {
            options: DaemonOptions {
                health: true,
                health_checks: vec![(
                    "tmp-writable".into(),
                    HealthCheck::blocking(|| {
                        tempfile_probe().map_err(|e| format!("cannot write the temp dir: {e}"))
                    })
                    .timeout(Duration::from_secs(2)),
                )],
                registry_entry: Some(entry),
                shutdown_timeout: Duration::from_secs(10),
                drain_delay: Duration::from_secs(1),
            },
        })
        .build();
    let daemon: Arc<dyn DaemonService> = module.resolve();
    let registry: Arc<dyn Registry> = module.resolve();

    // Starts the daemon (lock, health, registry) and the process service, runs the future, and
    // on Ctrl-C or SIGTERM stops in order: not ready, managed processes, unregister, health,
    // lock. The future never ends by itself: signals only.
    let ended = Lifecycles::of_module(&module)
        .run_until_signal(async {
            announce(&*daemon, &*registry, &pid_file, &registry_dir).await;
            std::future::pending::<()>().await
        })
        .await;
    match ended {
        Ok(ended) => {
            println!("stopped cleanly on {:?}; unregistered", ended.signal);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stopped with an error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints where the daemon can be reached and the registry's entries.
async fn announce(
    daemon: &dyn DaemonService,
    registry: &dyn Registry,
    pid_file: &std::path::Path,
    registry_dir: &std::path::Path,
) {
    daemon.set_ready(true);
    let addr = daemon.health_addr().expect("started with health");
    println!("pid {} holds {}", std::process::id(), pid_file.display());
    println!("health: http://{addr}/health  ready: http://{addr}/ready");
    println!("probes: http://{addr}/livez  http://{addr}/readyz?verbose");
    match registry.list().await {
        Ok(entries) => {
            println!("registry {}:", registry_dir.display());
            for e in entries {
                println!(
                    "  {}/{} pid {} health {}",
                    e.code, e.daemon, e.pid, e.health
                );
            }
        }
        Err(e) => eprintln!("cannot list the registry: {e}"),
    }
    println!("press Ctrl-C (or send SIGTERM) to stop");
}

/// Writes and removes a small file in the temp directory.
fn tempfile_probe() -> std::io::Result<()> {
    let path = std::env::temp_dir().join(format!(".core-process-probe-{}", std::process::id()));
    std::fs::write(&path, b"ok")?;
    std::fs::remove_file(&path)
}

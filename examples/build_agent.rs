//! A build agent, the host the crate is made for: its module comes from a config file
//! (`examples/build_agent.toml`), it runs as a daemon (PID lock, `/health` with a check, an
//! entry in a registry), runs its `ci` pipeline with every step's lines printed live and
//! appended to rotating log files, and stops cleanly on Ctrl-C or SIGTERM: the running step
//! gets its stop signal and grace period, then the daemon unregisters and releases its lock.
//!
//! Run it with `cargo run --example build_agent [-- CONFIG]`; press Ctrl-C during `test`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use core_process::{
    CancellationToken, Config, DaemonService, HealthCheck, Lifecycle, Lifecycles, PipelineEvent,
    PipelineOptions, PipelineRunner, RunAllResult, RunSpec, SinkOptions, StepLogs, Stream,
};
use shaku::HasComponent;
use tokio::task::JoinHandle;

/// The host's own work: one pipeline run, started with the module, stopped first.
struct Jobs {
    runner: Arc<dyn PipelineRunner>,
    specs: Vec<RunSpec>,
    logs: Arc<StepLogs>,
    cancel: CancellationToken,
    finished: CancellationToken,
    run: Mutex<Option<JoinHandle<core_process::Result<RunAllResult>>>>,
}

#[async_trait]
impl Lifecycle for Jobs {
    fn name(&self) -> &str {
        "jobs"
    }

    async fn on_start(&self) -> core_process::Result<()> {
        let logs = self.logs.clone();
        let opts = PipelineOptions::new()
            .cancel(self.cancel.clone())
            .on_event(move |event| {
                logs.record(event); // every step's lines to DIR/STEP.log, rotated
                match event {
                    PipelineEvent::Output { spec, stream, line } => {
                        let mark = if *stream == Stream::Stderr { '!' } else { '|' };
                        println!("{spec:>6} {mark} {line}");
                    }
                    PipelineEvent::Finished { spec, passed, .. } => {
                        println!("{spec:>6} {}", if *passed { "passed" } else { "FAILED" })
                    }
                    PipelineEvent::Cancelled { spec, .. } => println!("{spec:>6} stopped"),
                    PipelineEvent::Skipped { spec, reason } => println!("{spec:>6} ({reason})"),
                    _ => {}
                }
            });
        let (runner, specs, finished) = (
            self.runner.clone(),
            self.specs.clone(),
            self.finished.clone(),
        );
        *self.run.lock().unwrap() = Some(tokio::spawn(async move {
            let result = runner.run_all(&specs, opts).await;
            finished.cancel();
            result
        }));
        Ok(())
    }

    /// Stops the pipeline gracefully (each running step: stop signal, grace period) and
    /// reports how it went.
    async fn on_stop(&self) -> core_process::Result<()> {
        self.cancel.cancel();
        let Some(run) = self.run.lock().unwrap().take() else {
            return Ok(());
        };
        let result = run.await.expect("the pipeline task")?;
        println!(
            "\n{} passed, {} failed, {} stopped, {} skipped; logs in {}",
            result.passed,
            result.failed,
            result.interrupted,
            result.skipped,
            self.logs.path_of("*").display()
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("build agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> core_process::Result<ExitCode> {
    let path = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/build_agent.toml")
        });
    let config = Config::from_file(&path)?;
    let log_dir = std::env::temp_dir().join("core-process-build-agent/logs");
    let workspace = log_dir.clone();
    let module = config.module_with(|daemon| {
        let check = HealthCheck::blocking(move || {
            std::fs::create_dir_all(&workspace).map_err(|e| format!("no log dir: {e}"))
        });
        daemon.health_checks.push(("logs-writable".into(), check));
    });
    let logs = StepLogs::new(
        &log_dir,
        SinkOptions {
            max_bytes: 64 * 1024,
            backups: 3,
        },
    );
    let jobs = Arc::new(Jobs {
        runner: module.resolve(),
        specs: config.pipeline("ci")?,
        logs: Arc::new(logs),
        cancel: CancellationToken::new(),
        finished: CancellationToken::new(),
        run: Mutex::new(None),
    });
    let daemon: Arc<dyn DaemonService> = module.resolve();
    let finished = jobs.finished.clone();
    let ended = Lifecycles::of_module(&module)
        .with(jobs)
        .run_until_signal(async {
            let addr = daemon.health_addr().expect("health is on in the config");
            println!(
                "pid {}; health: http://{addr}/health; Ctrl-C stops",
                std::process::id()
            );
            finished.cancelled().await;
        })
        .await?;
    Ok(ExitCode::from(ended.exit_code()))
}

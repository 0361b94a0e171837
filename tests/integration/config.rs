//! A module built from a configuration file, running a configured pipeline through real
//! processes under `run_until_signal`.

use std::sync::Arc;

use core_process::{
    Config, DaemonService, Error, Lifecycles, PipelineOptions, PipelineRunner, RunAllResult,
};
use shaku::HasComponent;

#[tokio::test]
async fn a_module_from_a_config_file_runs_its_pipeline_and_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let text = format!(
        r#"
[daemon]
lock = "{lock}"
health = true
registry_dir = "{registry}"
register = {{ code = "test", daemon = "config" }}

[[pipelines.ci]]
name = "build"
command = "sh"
args = ["-c", "echo built"]

[[pipelines.ci]]
name = "test"
command = "sh"
args = ["-c", "cat"]
input = "tested\n"
after = ["build"]
timeout = 10
"#,
        lock = dir.path().join("agent.pid").display(),
        registry = dir.path().join("registry").display(),
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::from_file(&path).unwrap();
    let module = config.module();
    let runner: Arc<dyn PipelineRunner> = module.resolve();
    let daemon: Arc<dyn DaemonService> = module.resolve();
    let specs = config.pipeline("ci").unwrap();
    let mut outcome: Option<RunAllResult> = None;
    let ended = Lifecycles::of_module(&module)
        .run_until_signal(async {
            assert!(daemon.is_running());
            assert!(dir.path().join("agent.pid").exists());
            assert!(daemon.health_addr().is_some());
            outcome = Some(
                runner
                    .run_all(&specs, PipelineOptions::new())
                    .await
                    .unwrap(),
            );
        })
        .await
        .unwrap();
    assert_eq!(ended.signal, None);
    let result = outcome.unwrap();
    assert!(result.success(), "{result:?}");
    assert_eq!(result.results[1].output, "tested\n");
    assert!(!dir.path().join("agent.pid").exists(), "lock released");

    std::fs::write(&path, "[daemon]\nhealth = \"yes\"\n").unwrap();
    let err = Config::from_file(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Config { key, path: p, .. } if key == "daemon.health" && p == &path),
        "{err}"
    );
}

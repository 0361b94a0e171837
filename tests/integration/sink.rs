//! File sinks through real processes: step logs written live, flushed per line, rotated.

use std::sync::Arc;
use std::time::Duration;

use core_process::{
    BroadcastEventBus, DEFAULT_BUFFER_SIZE, FileSink, PipelineOptions, PipelineRunner,
    ProcessService, RunOptions, RunSpec, Runner, SinkOptions, StepLogs, TokioProcessService,
};

use crate::support::{eventually, within};

fn service() -> Arc<dyn ProcessService> {
    Arc::new(TokioProcessService::new(
        Arc::new(BroadcastEventBus::default()),
        DEFAULT_BUFFER_SIZE,
    ))
}

#[tokio::test]
async fn step_lines_reach_their_file_while_the_step_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let logs = Arc::new(StepLogs::new(
        dir.path().join("logs"),
        SinkOptions {
            max_bytes: 20,
            backups: 3,
        },
    ));
    let runner = Arc::new(Runner::new(service()));
    // "early" must be in the file before the step may go on: the test opens the gate only
    // once it read the line there.
    let script = r#"echo early; while [ ! -e "$1" ]; do sleep 0.01; done; i=0; while [ $i -lt 20 ]; do echo "line $i"; i=$((i+1)); done"#;
    let specs = vec![
        RunSpec::new("build", "sh")
            .args(["-c", script, "sh"])
            .arg(gate.to_string_lossy()),
        RunSpec::new("test", "sh")
            .args(["-c", "echo tested >&2"])
            .after("build"),
    ];
    let opts = {
        let logs = logs.clone();
        PipelineOptions::new().on_event(move |e| logs.record(e))
    };
    let run = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_all(&specs, opts).await })
    };
    let build_log = logs.path_of("build");
    eventually(Duration::from_secs(15), "the first line in the log", || {
        std::fs::read_to_string(&build_log).is_ok_and(|s| s.contains("early"))
    })
    .await;
    std::fs::write(&gate, "").unwrap();
    let result = within(Duration::from_secs(15), "the pipeline", run)
        .await
        .unwrap()
        .unwrap();
    assert!(result.success(), "{result:?}");
    // 21 lines of 6-8 bytes, rotated past 20 bytes, 3 backups kept: the newest lines are in
    // the file, the older ones in .1 .. .3, whole lines only, nothing lost in between.
    let mut all = String::new();
    for suffix in [".3", ".2", ".1", ""] {
        let path = format!("{}{suffix}", build_log.display());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with('\n') && text.len() <= 20 + 8,
            "{path}: {text:?}"
        );
        all.push_str(&text);
    }
    assert!(!std::path::Path::new(&format!("{}.4", build_log.display())).exists());
    assert!(all.ends_with("line 18\nline 19\n"), "{all}");
    let lines: Vec<&str> = all.lines().collect();
    let first: usize = lines[0].trim_start_matches("line ").parse().unwrap();
    let expected: Vec<String> = (first..20).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected);
    assert_eq!(
        std::fs::read_to_string(logs.path_of("test")).unwrap(),
        "tested\n"
    );
}

#[tokio::test]
async fn a_started_process_can_follow_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service();
    let sink = FileSink::open(dir.path().join("p.log"), SinkOptions::default()).unwrap();
    let (process, events) = svc
        .start_subscribed(RunOptions::new("sh").args(["-c", "echo one; echo two >&2"]))
        .await
        .unwrap();
    within(
        Duration::from_secs(15),
        "follow",
        sink.follow(events, Some(process.id())),
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(sink.path()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["one", "two"]);
}

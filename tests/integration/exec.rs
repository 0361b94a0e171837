//! The one-shot `exec` helper.

use std::time::Duration;

use core_process::exec::{self, Command};
use core_process::{Error, Signal};

use crate::support::executable;

/// `sh -c script`.
fn sh(script: &str) -> Command {
    Command::new("sh").args(["-c", script])
}

#[tokio::test]
async fn output_returns_stdout() {
    let out = Command::new("printf").arg("hello").output().await.unwrap();
    assert_eq!(out, "hello");
}

#[tokio::test]
async fn dir_env_and_args_reach_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .args([
            r#"printf '%s|%s|%s' "$GREETING" "$1" "$(pwd)""#,
            "sh",
            "an arg",
        ])
        .env("GREETING", "hi")
        .dir(dir.path())
        .output()
        .await
        .unwrap();
    let pwd = dir.path().canonicalize().unwrap();
    assert_eq!(out, format!("hi|an arg|{}", pwd.display()));
}

#[tokio::test]
async fn stdin_is_fed_and_closed() {
    let out = Command::new("cat")
        .stdin("line one\nline two\n")
        .output()
        .await;
    assert_eq!(out.unwrap(), "line one\nline two\n");
    // Without stdin the command reads /dev/null: `cat` ends at once.
    let out = tokio::time::timeout(Duration::from_secs(10), Command::new("cat").output())
        .await
        .expect("`cat` without stdin ends");
    assert_eq!(out.unwrap(), "");
    // A command that reads only part of its input is fine.
    let big = "x".repeat(1 << 20);
    let out = Command::new("head")
        .args(["-c", "3"])
        .stdin(big)
        .output()
        .await;
    assert_eq!(out.unwrap(), "xxx");
}

#[tokio::test]
async fn combined_output_interleaves_in_write_order() {
    let out = sh("printf 1; printf 2 >&2; printf 3; printf 4 >&2")
        .combined_output()
        .await
        .unwrap();
    assert_eq!(out, "1234");
}

#[tokio::test]
async fn run_succeeds_and_fails_by_exit_code() {
    Command::new("true").run().await.unwrap();
    let err = Command::new("false").run().await.unwrap_err();
    assert!(
        matches!(err, Error::CommandFailed { code: Some(1), .. }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "command `false` exited with code 1");
    assert_eq!(err.exit_code(), Some(1));
}

#[tokio::test]
async fn non_zero_exit_names_the_command_line_and_code() {
    let err = sh("echo out; echo '  bad things  ' >&2; exit 3")
        .output()
        .await
        .unwrap_err();
    match &err {
        Error::CommandFailed {
            command,
            code,
            signal,
            stderr,
            output,
        } => {
            assert_eq!(
                command,
                "sh -c 'echo out; echo '\\''  bad things  '\\'' >&2; exit 3'"
            );
            assert_eq!(*code, Some(3));
            assert_eq!(*signal, None);
            assert_eq!(stderr, "bad things");
            assert_eq!(output, "out\n");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("exited with code 3: bad things"),
        "{err}"
    );
    assert_eq!(err.output(), Some("out\n"));
}

#[tokio::test]
async fn combined_output_failure_carries_the_output() {
    let err = sh("echo a; echo b >&2; exit 2")
        .combined_output()
        .await
        .unwrap_err();
    assert_eq!(err.output(), Some("a\nb\n"));
    assert_eq!(
        err.to_string(),
        "command `sh -c 'echo a; echo b >&2; exit 2'` exited with code 2"
    );
}

#[tokio::test]
async fn run_quiet_folds_trimmed_stderr_into_the_error() {
    exec::run_quiet("sh", ["-c", "echo ignored; echo ignored too >&2"])
        .await
        .unwrap();
    let err = exec::run_quiet(
        "sh",
        [
            "-c",
            "echo noise; printf '\\n  fatal: no remote  \\n\\n' >&2; exit 128",
        ],
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("exited with code 128: fatal: no remote"),
        "{err}"
    );
    assert_eq!(err.exit_code(), Some(128));
}

#[tokio::test]
async fn a_signal_is_reported_as_such() {
    let err = sh("kill -9 $$").run().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::CommandFailed {
                code: None,
                signal: Some(Signal::Kill),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().ends_with("was killed by SIGKILL"), "{err}");
}

#[tokio::test]
async fn a_script_whose_interpreter_is_missing_is_a_spawn_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = executable(dir.path(), "run.sh", "#!/no/such/interpreter\necho\n");
    for command in [
        Command::new(script.to_str().unwrap()),
        Command::new("./run.sh").dir(dir.path()),
        Command::new("run.sh").env("PATH", dir.path().to_str().unwrap()),
    ] {
        let err = command.output().await.unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
        assert!(err.to_string().contains("/no/such/interpreter"), "{err}");
    }
}

#[tokio::test]
async fn missing_binary_bad_dir_and_bad_input_are_distinct_errors() {
    let err = Command::new("core-process-no-such-program")
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::CommandNotFound { command } if command == "core-process-no-such-program"),
        "{err:?}"
    );
    let err = exec::run_quiet("/no/such/dir/program", Vec::<String>::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CommandNotFound { .. }), "{err:?}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = Command::new("true")
        .dir(&missing)
        .output()
        .await
        .unwrap_err();
    match &err {
        Error::WorkingDirectory { command, dir } => {
            assert_eq!(command, "true");
            assert_eq!(dir, &missing);
        }
        other => panic!("{other:?}"),
    }

    for bad in [
        Command::new(""),
        Command::new("echo").arg("a\0b"),
        Command::new("true").env("A=B", "c"),
    ] {
        let err = bad.run().await.unwrap_err();
        assert!(matches!(err, Error::InvalidOptions { .. }), "{err:?}");
    }
}

// ---- logging --------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn commands_are_logged_at_debug_and_failures_at_error() {
    let capture = crate::support::Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    // Other tests hit the same callsites on threads without a subscriber, and a callsite caches
    // its interest: recompute it now that this thread has one.
    tracing::callsite::rebuild_interest_cache();
    Command::new("true").arg("x").run().await.unwrap();
    let _ = sh("exit 5").run().await;
    let lines = capture.lines();
    let debug: Vec<_> = lines.iter().filter(|l| l.starts_with("DEBUG")).collect();
    let error: Vec<_> = lines.iter().filter(|l| l.starts_with("ERROR")).collect();
    assert!(
        debug
            .iter()
            .any(|l| l.contains("program=true") && l.contains(r#"args=["x"]"#)),
        "{lines:#?}"
    );
    assert_eq!(error.len(), 1, "{lines:#?}");
    assert!(error[0].contains("program=sh"), "{}", error[0]);
    assert!(
        error[0].contains(r#"args=["-c", "exit 5"]"#),
        "{}",
        error[0]
    );
    assert!(error[0].contains("exit_code=5"), "{}", error[0]);
}

/// `exec` and the process service map a failed spawn the same way: same variant, same
/// `command` (the program as given), same message.
#[tokio::test]
async fn exec_and_the_service_report_spawn_failures_alike() {
    let dir = tempfile::tempdir().unwrap();
    let no_exec = dir.path().join("data.txt");
    std::fs::write(&no_exec, "not a program\n").unwrap();
    let bad_interp = executable(dir.path(), "run.sh", "#!/no/such/interpreter\n");
    let service = core_process::TokioProcessService::new(
        std::sync::Arc::new(core_process::BroadcastEventBus::default()),
        core_process::DEFAULT_BUFFER_SIZE,
    );
    use core_process::ProcessService as _;
    for program in [
        "core-process-no-such-program".to_string(),
        no_exec.to_str().unwrap().to_string(),
        bad_interp.to_str().unwrap().to_string(),
    ] {
        let from_exec = Command::new(&program).arg("x y").run().await.unwrap_err();
        let from_service = service
            .run(core_process::RunOptions::new(&program).arg("x y"))
            .await
            .unwrap_err();
        assert_eq!(
            std::mem::discriminant(&from_exec),
            std::mem::discriminant(&from_service),
            "{from_exec:?} vs {from_service:?}"
        );
        assert_eq!(from_exec.to_string(), from_service.to_string());
        if let Error::Spawn { command, .. } | Error::CommandNotFound { command } = &from_exec {
            assert_eq!(command, &program);
        } else {
            panic!("{from_exec:?}");
        }
    }
}

//! The `Process` handle's own surface: what it tells about the process it drives.

use core_process::{Error, ProcessEvent, RunOptions};

use crate::support::{LIMIT, dyn_service, eventually, sh, within};

/// `list` gives the processes in the order they were started, however many (the table is a
/// map: its own order is arbitrary); `proc-10` comes after `proc-9`, not after `proc-1`.
#[tokio::test]
async fn list_keeps_the_start_order_of_many_processes() {
    let (svc, _) = dyn_service();
    let mut started = Vec::new();
    for _ in 0..24 {
        started.push(svc.start(RunOptions::new("true")).await.unwrap());
    }
    for p in &started {
        within(LIMIT, "true", p.wait()).await.unwrap();
    }
    let listed: Vec<String> = svc.list().iter().map(|p| p.id().to_string()).collect();
    let want: Vec<String> = started.iter().map(|p| p.id().to_string()).collect();
    assert_eq!(listed, want);
}

/// The handle tells the program, arguments and directory it was started with.
#[tokio::test]
async fn the_handle_tells_its_command_arguments_and_directory() {
    let (svc, _) = dyn_service();
    let dir = tempfile::tempdir().unwrap();
    let p = svc
        .start(RunOptions::new("sh").args(["-c", "exit 0"]).dir(dir.path()))
        .await
        .unwrap();
    assert_eq!(p.command(), "sh");
    assert_eq!(p.args(), ["-c", "exit 0"]);
    assert_eq!(p.dir(), Some(dir.path()));
    within(LIMIT, "sh", p.wait()).await.unwrap();
    let q = svc.start(RunOptions::new("true")).await.unwrap();
    assert!(q.args().is_empty());
    assert_eq!(q.dir(), None);
    within(LIMIT, "true", q.wait()).await.unwrap();
}

/// The `Exited` event says why a process counts as failed: a non-zero code is named, a zero
/// one carries no error.
#[tokio::test]
async fn the_exited_event_names_a_non_zero_code_and_nothing_for_zero() {
    let (svc, bus) = dyn_service();
    let failed = svc
        .start(RunOptions::new("sh").args(["-c", "exit 3"]))
        .await
        .unwrap();
    let passed = svc.start(RunOptions::new("true")).await.unwrap();
    assert!(within(LIMIT, "exit 3", failed.wait()).await.is_err());
    within(LIMIT, "true", passed.wait()).await.unwrap();
    let error_of = |id: &str| {
        bus.events_for(id).into_iter().find_map(|e| match e {
            ProcessEvent::Exited {
                exit_code, error, ..
            } => Some((exit_code, error)),
            _ => None,
        })
    };
    assert_eq!(
        error_of(failed.id()),
        Some((Some(3), Some("exited with code 3".to_string())))
    );
    assert_eq!(error_of(passed.id()), Some((Some(0), None)));
}

/// `duration` grows while the process runs and is frozen once it ended, the same as `info`'s.
#[tokio::test]
async fn duration_grows_while_running_and_freezes_at_the_end() {
    let (svc, _) = dyn_service();
    let p = svc.start(RunOptions::new("cat")).await.unwrap();
    let early = p.duration();
    eventually(LIMIT, "the duration to grow", || p.duration() > early).await;
    p.close_stdin().await;
    within(LIMIT, "cat", p.wait()).await.unwrap();
    let end = p.duration();
    assert!(end > early);
    assert_eq!(p.duration(), end, "frozen once finished");
    assert_eq!(p.info().duration, end);
}

/// A child that closed its standard input but runs on: writing to it is `StdinClosed` (the
/// pipe broke), not `NotRunning`, and stays so.
#[tokio::test]
async fn writing_to_a_running_child_that_closed_its_stdin_is_stdin_closed() {
    let (svc, _) = dyn_service();
    let p = svc
        .start(sh("exec 0<&-; printf closed; exec sleep 300"))
        .await
        .unwrap();
    eventually(LIMIT, "the child to close its stdin", || {
        p.output().contains("closed")
    })
    .await;
    for data in ["data\n", "more\n"] {
        let err = p.send_input(data).await.unwrap_err();
        assert!(matches!(err, Error::StdinClosed { .. }), "{err:?}");
    }
    assert!(p.is_running());
    within(LIMIT, "kill", p.kill()).await.unwrap();
}

/// `Debug` of a handle names the process.
#[tokio::test]
async fn debug_of_a_handle_names_the_process() {
    let (svc, _) = dyn_service();
    let p = svc.start(RunOptions::new("true")).await.unwrap();
    let shown = format!("{p:?}");
    assert!(shown.contains(p.id()), "{shown}");
    within(LIMIT, "true", p.wait()).await.unwrap();
}

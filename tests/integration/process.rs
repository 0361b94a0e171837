//! The process service: seed parity and beyond.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use core_process::{
    Error, EventBus, MAX_LINE_LEN, ProcessEvent, ProcessService, RunOptions, Status, Stream,
};
use tokio_util::sync::CancellationToken;

use crate::support::{
    LIMIT, dyn_service, eventually, executable, service, sh, within, write_program,
};

#[tokio::test]
async fn echo_captures_output_and_exits_zero() {
    let (svc, _) = dyn_service();
    let p = svc
        .start(RunOptions::new("echo").arg("hello"))
        .await
        .unwrap();
    within(LIMIT, "echo", p.wait()).await.unwrap();
    assert_eq!(p.output(), "hello\n");
    assert_eq!(p.status(), Status::Exited);
    assert_eq!(p.exit_code(), Some(0));
    assert!(!p.is_running());
}

#[tokio::test]
async fn exit_code_is_reported() {
    let (svc, _) = dyn_service();
    let p = svc.start(sh("exit 42")).await.unwrap();
    let err = within(LIMIT, "exit 42", p.wait()).await.unwrap_err();
    assert_eq!(p.exit_code(), Some(42));
    assert_eq!(p.status(), Status::Exited);
    assert_eq!(err.exit_code(), Some(42));
    assert!(err.to_string().contains("exited with code 42"), "{err}");
}

#[tokio::test]
async fn missing_binary_error_names_it() {
    let (svc, _) = dyn_service();
    let err = svc
        .start(RunOptions::new("no-such-binary-core-process"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CommandNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-binary-core-process"));
    assert!(svc.list().is_empty());
}

#[tokio::test]
async fn working_directory_is_honoured() {
    let (svc, _) = dyn_service();
    let dir = tempfile::tempdir().unwrap();
    let canonical = dir.path().canonicalize().unwrap();
    let out = within(LIMIT, "pwd", svc.run(sh("pwd -P").dir(dir.path())))
        .await
        .unwrap();
    assert_eq!(out.trim_end(), canonical.to_str().unwrap());
}

#[tokio::test]
async fn environment_is_added_to_the_inherited_one() {
    let (svc, _) = dyn_service();
    let out = svc
        .run(
            sh("printf '%s %s' \"$CORE_PROCESS_TEST\" \"${PATH:+has-path}\"")
                .env("CORE_PROCESS_TEST", "v1"),
        )
        .await
        .unwrap();
    assert_eq!(out, "v1 has-path");
}

#[tokio::test]
async fn cancelling_the_token_kills_the_process() {
    let (svc, _) = dyn_service();
    let token = CancellationToken::new();
    let p = svc
        .start(RunOptions::new("sleep").arg("10").cancel(token.clone()))
        .await
        .unwrap();
    token.cancel();
    let err = within(Duration::from_secs(2), "cancelled sleep", p.wait())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Killed { .. }), "{err:?}");
    assert_eq!(p.status(), Status::Killed);
}

#[tokio::test]
async fn run_returns_output_and_failure_keeps_it() {
    let (svc, _) = dyn_service();
    let out = svc.run(RunOptions::new("echo").arg("ok")).await.unwrap();
    assert_eq!(out, "ok\n");
    let err = svc.run(sh("echo partial; exit 1")).await.unwrap_err();
    assert!(err.to_string().contains("exited with code 1"), "{err}");
    assert_eq!(err.output(), Some("partial\n"));
}

#[tokio::test]
async fn events_for_echo() {
    let (svc, bus) = dyn_service();
    let p = svc
        .start(RunOptions::new("echo").arg("test"))
        .await
        .unwrap();
    p.wait().await.unwrap();
    let events = bus.events_for(p.id());
    let started: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, ProcessEvent::Started { .. }))
        .collect();
    assert_eq!(started.len(), 1);
    match started[0] {
        ProcessEvent::Started {
            command, args, pid, ..
        } => {
            assert_eq!(command, "echo");
            assert_eq!(args, &["test"]);
            assert_eq!(*pid, p.pid());
        }
        _ => unreachable!(),
    }
    assert!(events.iter().any(
        |e| matches!(e, ProcessEvent::Output { line, stream: Stream::Stdout, .. } if line.contains("test"))
    ));
    let exited: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, ProcessEvent::Exited { .. }))
        .collect();
    assert_eq!(exited.len(), 1);
    assert!(matches!(
        exited[0],
        ProcessEvent::Exited {
            exit_code: Some(0),
            error: None,
            ..
        }
    ));
    assert!(matches!(events.first(), Some(ProcessEvent::Started { .. })));
    assert!(matches!(events.last(), Some(ProcessEvent::Exited { .. })));
}

// A subscriber on its own worker keeps up with a chatty process. (On a current-thread runtime a
// reader that never has to wait can run far ahead of a subscriber on the same thread, and the
// subscriber is then told how much it missed — see the event_bus unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_sees_every_line_in_order_between_started_and_exited() {
    let (svc, bus) = dyn_service();
    let mut sub = bus.subscribe();
    let p = svc
        .start(sh(
            "i=0; while [ $i -lt 2000 ]; do echo line-$i; echo err-$i >&2; i=$((i+1)); done",
        ))
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut first = None;
    within(LIMIT, "events", async {
        loop {
            let ev = sub.recv().await.expect("no lag at this volume");
            if ev.id() != p.id() {
                continue;
            }
            first.get_or_insert_with(|| ev.clone());
            match ev {
                ProcessEvent::Output {
                    line,
                    stream: Stream::Stdout,
                    ..
                } => out.push(line),
                ProcessEvent::Output {
                    line,
                    stream: Stream::Stderr,
                    ..
                } => err.push(line),
                ProcessEvent::Exited { .. } => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(matches!(first, Some(ProcessEvent::Started { .. })));
    let want_out: Vec<String> = (0..2000).map(|i| format!("line-{i}")).collect();
    let want_err: Vec<String> = (0..2000).map(|i| format!("err-{i}")).collect();
    assert_eq!(out, want_out);
    assert_eq!(err, want_err);
}

#[tokio::test]
async fn list_get_and_missing() {
    let (svc, _) = dyn_service();
    let a = svc.start(RunOptions::new("true")).await.unwrap();
    let b = svc.start(RunOptions::new("true")).await.unwrap();
    let ids: Vec<String> = svc.list().iter().map(|p| p.id().to_string()).collect();
    assert_eq!(ids, [a.id(), b.id()]);
    assert_eq!(svc.get(a.id()).unwrap().pid(), a.pid());
    let err = svc.get("proc-999").unwrap_err();
    assert!(matches!(err, Error::ProcessNotFound { .. }));
    assert!(err.to_string().contains("proc-999"));
    a.wait().await.unwrap();
    b.wait().await.unwrap();
}

#[tokio::test]
async fn remove_finished_but_not_running() {
    let (svc, _) = dyn_service();
    let done = svc.start(RunOptions::new("true")).await.unwrap();
    done.wait().await.unwrap();
    svc.remove(done.id()).unwrap();
    assert!(svc.get(done.id()).is_err());

    let running = svc.start(RunOptions::new("cat")).await.unwrap();
    let err = svc.remove(running.id()).unwrap_err();
    assert!(matches!(err, Error::StillRunning { .. }), "{err:?}");
    running.close_stdin().await;
    running.wait().await.unwrap();
    svc.remove(running.id()).unwrap();
    assert!(matches!(
        svc.remove("proc-404"),
        Err(Error::ProcessNotFound { .. })
    ));
}

#[tokio::test]
async fn clear_drops_finished_only() {
    let (svc, _) = dyn_service();
    let done = svc.start(RunOptions::new("true")).await.unwrap();
    done.wait().await.unwrap();
    let running = svc.start(RunOptions::new("cat")).await.unwrap();
    svc.clear();
    let ids: Vec<String> = svc.list().iter().map(|p| p.id().to_string()).collect();
    assert_eq!(ids, [running.id()]);
    assert_eq!(svc.running().len(), 1);
    running.close_stdin().await;
    running.wait().await.unwrap();
}

#[tokio::test]
async fn info_fields() {
    let (svc, _) = dyn_service();
    let dir = tempfile::tempdir().unwrap();
    let p = svc
        .start(RunOptions::new("cat").dir(dir.path()))
        .await
        .unwrap();
    let live = p.info();
    assert_eq!(live.id, p.id());
    assert_eq!(live.command, "cat");
    assert_eq!(live.dir.as_deref(), Some(dir.path()));
    assert_eq!(live.pid, p.pid());
    assert!(live.pid > 0);
    assert_eq!(live.status, Status::Running);
    assert!(live.running);
    assert_eq!(live.exit_code, None);
    // The duration is live while running.
    eventually(LIMIT, "duration grows", || {
        p.info().duration > live.duration
    })
    .await;
    p.close_stdin().await;
    p.wait().await.unwrap();
    let done = p.info();
    assert_eq!(done.status, Status::Exited);
    assert_eq!(done.exit_code, Some(0));
    assert!(!done.running);
    assert_eq!(done.duration, p.info().duration, "fixed once finished");
    let json = serde_json::to_value(&done).unwrap();
    assert_eq!(json["status"], "exited");
    assert!(json["started_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn output_bytes_is_a_copy() {
    let (svc, _) = dyn_service();
    let p = svc.start(RunOptions::new("echo").arg("abc")).await.unwrap();
    p.wait().await.unwrap();
    let mut copy = p.output_bytes();
    copy[0] = b'X';
    assert_eq!(p.output_bytes(), b"abc\n");
}

#[tokio::test]
async fn is_running_and_wait() {
    let (svc, _) = dyn_service();
    let p = svc.start(RunOptions::new("cat")).await.unwrap();
    assert!(p.is_running());
    assert_eq!(p.status(), Status::Running);
    p.close_stdin().await;
    within(LIMIT, "cat", p.wait()).await.unwrap();
    assert!(!p.is_running());

    let failing = svc.start(RunOptions::new("false")).await.unwrap();
    let err = failing.wait().await.unwrap_err();
    assert_eq!(err.exit_code(), Some(1));
    // done() resolves without judging.
    failing.done().await;
}

#[tokio::test]
async fn kill_ends_a_sleep_and_is_a_no_op_when_finished() {
    let (svc, bus) = dyn_service();
    let p = svc.start(RunOptions::new("sleep").arg("60")).await.unwrap();
    within(Duration::from_secs(2), "kill", svc.kill(p.id()))
        .await
        .unwrap();
    assert!(!p.is_running());
    assert_eq!(p.status(), Status::Killed);
    assert_eq!(p.signal_received(), Some(core_process::Signal::Kill));
    assert!(bus.events_for(p.id()).iter().any(|e| matches!(
        e,
        ProcessEvent::Killed {
            signal: core_process::Signal::Kill,
            ..
        }
    )));
    // Killing again is a no-op.
    p.kill().await.unwrap();
    svc.kill(p.id()).await.unwrap();
}

#[tokio::test]
async fn run_gives_the_child_end_of_file_on_stdin() {
    let (svc, _) = dyn_service();
    // `cat` reads its stdin until end of file: with a pipe nobody can close, it never ends.
    let out = within(
        Duration::from_secs(10),
        "run cat",
        svc.run(RunOptions::new("cat")),
    )
    .await
    .unwrap();
    assert_eq!(out, "");
    let out = within(
        Duration::from_secs(10),
        "run cat with stdin(true)",
        svc.run(RunOptions::new("cat").stdin(true)),
    )
    .await
    .unwrap();
    assert_eq!(out, "");
    // `start` keeps the pipe: what is sent comes back once stdin is closed.
    let p = svc.start(RunOptions::new("cat")).await.unwrap();
    p.send_input("echoed\n").await.unwrap();
    p.close_stdin().await;
    within(LIMIT, "cat", p.wait()).await.unwrap();
    assert_eq!(p.output(), "echoed\n");
}

#[tokio::test]
async fn stdin_round_trip() {
    let (svc, _) = dyn_service();
    let p = svc.start(RunOptions::new("cat")).await.unwrap();
    p.send_input("hello ").await.unwrap();
    p.send_input(b"stdin\n").await.unwrap();
    p.close_stdin().await;
    p.close_stdin().await; // idempotent
    within(LIMIT, "cat", p.wait()).await.unwrap();
    assert_eq!(p.output(), "hello stdin\n");
    let err = p.send_input("late").await.unwrap_err();
    assert!(matches!(err, Error::NotRunning { .. }), "{err:?}");
    assert!(matches!(
        p.signal(core_process::Signal::Term).await,
        Err(Error::NotRunning { .. })
    ));
}

#[tokio::test]
async fn send_input_after_close_is_a_typed_error() {
    let (svc, _) = dyn_service();
    let p = svc.start(sh("cat >/dev/null; sleep 30")).await.unwrap();
    p.close_stdin().await;
    assert!(matches!(
        p.send_input("x").await,
        Err(Error::StdinClosed { .. })
    ));
    p.kill().await.unwrap();
    let no_stdin = svc
        .start(RunOptions::new("cat").stdin(false))
        .await
        .unwrap();
    no_stdin.wait().await.unwrap();
}

#[tokio::test]
async fn huge_line_does_not_stall_and_events_are_capped() {
    let (svc, bus) = service();
    let mut sub = bus.subscribe();
    let p = svc
        .start(sh("head -c 8388608 /dev/zero; printf '\\nend\\n'"))
        .await
        .unwrap();
    let mut bytes = 0usize;
    let mut pieces = 0usize;
    let mut saw_end = false;
    within(LIMIT, "8 MiB line", async {
        loop {
            match sub.recv().await {
                Ok(ProcessEvent::Output { line, id, .. }) if &*id == p.id() => {
                    assert!(line.len() <= MAX_LINE_LEN, "event of {} bytes", line.len());
                    if line == "end" {
                        saw_end = true;
                    } else {
                        bytes += line.len();
                        pieces += 1;
                    }
                }
                Ok(ProcessEvent::Exited { id, .. }) if &*id == p.id() => break,
                Ok(_) => {}
                Err(core_process::RecvError::Lagged(n)) => panic!("lagged by {n}"),
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    p.wait().await.unwrap();
    assert_eq!(bytes, 8 * 1024 * 1024);
    // Cut where reads happened to end, so at least (not exactly) 8 MiB / MAX_LINE_LEN pieces.
    assert!(pieces >= 8 * 1024 * 1024 / MAX_LINE_LEN, "{pieces} pieces");
    assert!(saw_end);
    // The ring buffer keeps the newest bytes (1 MiB by default).
    let out = p.output_bytes();
    assert_eq!(out.len(), core_process::DEFAULT_BUFFER_SIZE);
    assert!(out.ends_with(b"\0\nend\n"));
}

#[tokio::test]
async fn two_hundred_megabytes_without_newline_do_not_stall() {
    let (svc, _) = dyn_service();
    let p = svc
        .start(sh("head -c 209715200 /dev/zero; printf tail").output_capacity(4096))
        .await
        .unwrap();
    within(Duration::from_secs(60), "200 MB", p.wait())
        .await
        .unwrap();
    let out = p.output_bytes();
    assert_eq!(out.len(), 4096);
    assert!(out.ends_with(b"\0\0tail"));
}

#[tokio::test]
async fn non_utf8_output_survives_in_bytes() {
    let (svc, bus) = dyn_service();
    let p = svc.start(sh("printf 'a\\377\\376b\\n'")).await.unwrap();
    p.wait().await.unwrap();
    assert_eq!(p.output_bytes(), b"a\xff\xfeb\n");
    assert_eq!(p.output(), "a\u{fffd}\u{fffd}b\n");
    assert_eq!(bus.lines(p.id(), Stream::Stdout), ["a\u{fffd}\u{fffd}b"]);
}

#[tokio::test]
async fn disable_capture_keeps_events_but_no_buffer() {
    let (svc, bus) = dyn_service();
    let p = svc
        .start(RunOptions::new("echo").arg("x").disable_capture(true))
        .await
        .unwrap();
    p.wait().await.unwrap();
    assert_eq!(p.output(), "");
    assert_eq!(bus.lines(p.id(), Stream::Stdout), ["x"]);
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_spawns_nothing() {
    let (svc, _) = dyn_service();
    let cases = [
        RunOptions::new(""),
        RunOptions::new("ec\0ho"),
        RunOptions::new("echo").arg("a\0b"),
        RunOptions::new("echo").env("K", "v\0"),
        RunOptions::new("echo").env("A=B", "v"),
        RunOptions::new("echo").env("", "v"),
    ];
    for opts in cases {
        let err = svc.start(opts.clone()).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidOptions { .. }),
            "{opts:?}: {err:?}"
        );
    }
    let err = svc
        .start(RunOptions::new("echo").dir("/no/such/core-process-dir"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WorkingDirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("/no/such/core-process-dir"));
    assert!(svc.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_starts() {
    let (svc, _) = dyn_service();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let svc = Arc::clone(&svc);
        tasks.spawn(async move {
            let p = svc
                .start(RunOptions::new("printf").arg(format!("out-{i}")))
                .await
                .unwrap();
            p.wait().await.unwrap();
            (i, p.id().to_string(), p.output())
        });
    }
    let mut ids = HashSet::new();
    within(Duration::from_secs(60), "200 processes", async {
        while let Some(done) = tasks.join_next().await {
            let (i, id, output) = done.unwrap();
            assert_eq!(output, format!("out-{i}"));
            assert!(ids.insert(id));
        }
    })
    .await;
    assert_eq!(ids.len(), 200);
    assert_eq!(svc.list().len(), 200);
}

#[tokio::test]
async fn started_event_precedes_output_even_for_instant_processes() {
    let (svc, bus) = service();
    let mut sub = bus.subscribe();
    for _ in 0..20 {
        let p = svc
            .start(RunOptions::new("echo").arg("quick"))
            .await
            .unwrap();
        p.wait().await.unwrap();
    }
    let mut seen_started = HashSet::new();
    let mut exited = 0;
    while exited < 20 {
        let ev = sub.recv().await.unwrap();
        match &ev {
            ProcessEvent::Started { id, .. } => {
                seen_started.insert(id.clone());
            }
            ProcessEvent::Output { id, .. } => assert!(seen_started.contains(id)),
            ProcessEvent::Exited { id, .. } => {
                assert!(seen_started.contains(id));
                exited += 1;
            }
            _ => {}
        }
    }
    let _ = svc.event_bus();
}

// Issue 11: with several lifecycle events queued before an output batch, the third one came
// out after the batch's lines (proc-3's `hi` before proc-3's `Started`).
#[tokio::test]
async fn events_read_afterwards_come_in_publication_order() {
    let (svc, bus) = service();
    let mut sub = bus.subscribe();
    let mut ids = Vec::new();
    for options in [
        RunOptions::new("true"),
        RunOptions::new("true"),
        sh("echo hi"),
    ] {
        let p = svc.start(options).await.unwrap();
        within(LIMIT, "process", p.wait()).await.unwrap();
        ids.push(p.id().to_string());
    }
    let mut got = Vec::new();
    within(LIMIT, "events", async {
        while got.len() < 7 {
            let ev = sub.recv().await.expect("no lag");
            let name = ids
                .iter()
                .position(|id| id == ev.id())
                .expect("our process");
            got.push(match &ev {
                ProcessEvent::Started { .. } => format!("Started {name}"),
                ProcessEvent::Output { line, .. } => format!("Output {name} {line}"),
                ProcessEvent::Exited { .. } => format!("Exited {name}"),
                other => panic!("unexpected {other:?}"),
            });
        }
    })
    .await;
    assert_eq!(
        got,
        [
            "Started 0",
            "Exited 0",
            "Started 1",
            "Exited 1",
            "Started 2",
            "Output 2 hi",
            "Exited 2"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_is_findable_when_its_started_event_arrives() {
    let (svc, bus) = service();
    let mut sub = bus.subscribe();
    let watcher_svc = Arc::clone(&svc);
    let watcher = tokio::spawn(async move {
        let mut seen = 0;
        while seen < 100 {
            match sub.recv().await {
                Ok(ProcessEvent::Started { id, .. }) => {
                    watcher_svc.get(&id).expect("findable on Started");
                    seen += 1;
                }
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });
    for _ in 0..100 {
        let p = svc.start(RunOptions::new("true")).await.unwrap();
        p.wait().await.unwrap();
    }
    within(LIMIT, "watcher", watcher).await.unwrap();
}

#[tokio::test]
async fn a_line_of_exactly_the_cap_is_one_event() {
    let (svc, bus) = dyn_service();
    let p = svc
        .start(sh(&format!(
            "head -c {MAX_LINE_LEN} /dev/zero; printf '\\nnext\\n'"
        )))
        .await
        .unwrap();
    within(LIMIT, "cap-sized line", p.wait()).await.unwrap();
    let lens: Vec<usize> = bus
        .lines(p.id(), Stream::Stdout)
        .iter()
        .map(String::len)
        .collect();
    assert_eq!(lens, [MAX_LINE_LEN, 4]);
}

#[tokio::test]
async fn close_stdin_interrupts_a_write_the_child_never_reads() {
    let (svc, _) = dyn_service();
    let p = svc.start(RunOptions::new("sleep").arg("30")).await.unwrap();
    let writer = {
        let p = p.clone();
        tokio::spawn(async move { p.send_input(vec![b'x'; 4 << 20]).await })
    };
    // The pipe holds 64 KiB: the 4 MiB write blocks until something gives.
    tokio::task::yield_now().await;
    within(Duration::from_secs(5), "close_stdin", p.close_stdin()).await;
    let result = within(Duration::from_secs(5), "the blocked write", writer)
        .await
        .unwrap();
    assert!(
        matches!(result, Err(Error::StdinClosed { .. })),
        "{result:?}"
    );
    p.kill().await.unwrap();
}

#[tokio::test]
async fn huge_durations_do_not_break_the_supervisor() {
    let (svc, _) = dyn_service();
    // A timeout too far away to represent is no timeout.
    let p = svc
        .start(RunOptions::new("sleep").arg("30").timeout(Duration::MAX))
        .await
        .unwrap();
    // A grace period too long to represent never escalates; SIGTERM ends a sleep anyway.
    within(LIMIT, "stop with an endless grace", p.stop(Duration::MAX)).await;
    assert_eq!(p.signal_received(), Some(core_process::Signal::Term));
    let q = svc
        .start(
            RunOptions::new("sleep")
                .arg("30")
                .timeout(Duration::from_millis(50))
                .grace_period(Duration::MAX),
        )
        .await
        .unwrap();
    let err = within(LIMIT, "timeout with an endless grace", q.wait())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Killed {
                timed_out: true,
                ..
            }
        ),
        "{err:?}"
    );
    let r = svc
        .start(
            RunOptions::new("sleep")
                .arg("30")
                .grace_period(Duration::MAX),
        )
        .await
        .unwrap();
    within(LIMIT, "shutdown with an endless grace", svc.shutdown())
        .await
        .unwrap();
    assert!(!r.is_running());
}

#[tokio::test]
async fn no_start_after_shutdown_until_started_again() {
    let (svc, _) = service();
    svc.shutdown().await.unwrap();
    let err = svc.start(RunOptions::new("true")).await.unwrap_err();
    assert!(matches!(err, Error::ShutDown { .. }), "{err:?}");
    assert!(err.to_string().contains("shut down"), "{err}");
    core_process::Lifecycle::on_start(&*svc).await.unwrap();
    svc.run(RunOptions::new("true")).await.unwrap();
}

/// How a start went, in a form two starts can be compared by: the error's variant and source
/// (`Debug`, so an OS error's code counts), or the exit code and output.
async fn start_outcome(svc: &Arc<dyn ProcessService>, opts: RunOptions) -> String {
    match svc.start(opts).await {
        Err(e) => format!("Err({e:?})"),
        Ok(p) => {
            let _ = within(LIMIT, "the started program", p.done()).await;
            format!("Ok(code {:?}, output {:?})", p.exit_code(), p.output())
        }
    }
}

#[tokio::test]
async fn die_with_parent_accepts_and_refuses_exactly_what_a_direct_start_does() {
    let (svc, _) = dyn_service();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let write = |name: &str, text: &str, mode: u32| write_program(&dir.join(name), text, mode);
    write("good.sh", "#!/bin/sh\nprintf 'good %s' \"$0\"\n", 0o755);
    write("-dash.sh", "#!/bin/sh\nprintf 'dash %s' \"$1\"\n", 0o755);
    write("no-interpreter.sh", "#!/no/such/interpreter\necho\n", 0o755);
    write("not-executable.sh", "#!/bin/sh\necho\n", 0o644);
    write("no-shebang", "printf 'run by sh'\n", 0o755);
    write("empty", "", 0o755);
    let d = dir.display();
    write(
        "interpreter-not-executable.sh",
        &format!("#!{d}/not-executable.sh\n"),
        0o755,
    );
    write(
        "interpreter-no-shebang.sh",
        &format!("#!{d}/no-shebang\n"),
        0o755,
    );
    write(
        "interpreter-is-a-script.sh",
        &format!("#!{d}/good.sh\n"),
        0o755,
    );
    write("relative-interpreter.sh", "#!./good.sh\n", 0o755);
    write(
        "interpreter-with-arg.sh",
        "#! /bin/sh -e\nprintf 'arg ok'\n",
        0o755,
    );
    write(
        "long-interpreter.sh",
        &format!("#!/{}\n", "x".repeat(300)),
        0o755,
    );
    write("blank-interpreter.sh", "#!  \n", 0o755);
    // Scripts as interpreters of scripts: Linux follows five, not six.
    write("deep-0.sh", "#!/bin/sh\nprintf deep\n", 0o755);
    for level in 1..=5 {
        write(
            &format!("deep-{level}.sh"),
            &format!("#!{d}/deep-{}.sh\n", level - 1),
            0o755,
        );
    }
    std::fs::create_dir(dir.join("a-dir")).unwrap();
    let path = dir.to_str().unwrap();
    let ok = |output: &str| format!("Ok(code Some(0), output {output:?})");
    let os = |code: i32| format!("Os {{ code: {code}, ");
    let not_found = |command: &str| format!("Err(CommandNotFound {{ command: {command:?} }})");
    let no_interpreter = "/no/such/interpreter";
    // (command, the child's PATH if it sets one, what the start must give)
    let cases: Vec<(&str, Option<&str>, String)> = vec![
        ("./missing", None, not_found("./missing")),
        ("./no-interpreter.sh", None, no_interpreter.into()),
        ("./not-executable.sh", None, os(13)),
        ("./no-shebang", None, os(8)),
        ("./empty", None, os(8)),
        ("./a-dir", None, os(13)),
        ("./good.sh", None, ok("good ./good.sh")),
        ("./interpreter-not-executable.sh", None, os(13)),
        ("./interpreter-no-shebang.sh", None, os(8)),
        (
            "./interpreter-is-a-script.sh",
            None,
            ok(&format!("good {d}/good.sh")),
        ),
        ("./relative-interpreter.sh", None, ok("good ./good.sh")),
        ("./interpreter-with-arg.sh", None, ok("arg ok")),
        ("./long-interpreter.sh", None, os(8)),
        ("./blank-interpreter.sh", None, os(8)),
        ("./deep-4.sh", None, ok("deep")),
        ("./deep-5.sh", None, os(40)),
        ("true", None, ok("")),
        ("/bin/true", None, ok("")),
        (
            "core-process-no-such-program",
            None,
            not_found("core-process-no-such-program"),
        ),
        // Looked up on a `PATH` of the child's own.
        ("missing", Some(path), not_found("missing")),
        ("no-interpreter.sh", Some(path), no_interpreter.into()),
        ("not-executable.sh", Some(path), os(13)),
        ("a-dir", Some(path), os(13)),
        ("good.sh", Some(path), ok(&format!("good {d}/good.sh"))),
        // `execvp` runs such a file through `/bin/sh` (so does the direct spawn then).
        ("no-shebang", Some(path), ok("run by sh")),
        ("-dash.sh", Some(path), ok("dash x")),
    ];
    let mut failures = Vec::new();
    for (command, child_path, expected) in &cases {
        let mut opts = RunOptions::new(*command).dir(dir).stdin(false);
        if command.starts_with('-') {
            opts = opts.arg("x");
        }
        if let Some(p) = child_path {
            opts = opts.env("PATH", *p);
        }
        let direct = start_outcome(&svc, opts.clone()).await;
        let wrapped = start_outcome(&svc, opts.die_with_parent(true)).await;
        if direct != wrapped || !direct.contains(expected.as_str()) {
            failures.push(format!(
                "{command} (PATH {child_path:?}): expected {expected}\n  direct:          {direct}\n  die_with_parent: {wrapped}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // The same environment, `PWD` included (the wrapper's shell sets its own, then puts the
    // child's back), in another order (the shell's).
    let env = |die_with_parent, pwd: Option<&str>| {
        let svc = svc.clone();
        let mut opts = RunOptions::new("env")
            .dir(dir)
            .die_with_parent(die_with_parent);
        if let Some(pwd) = pwd {
            opts = opts.env("PWD", pwd);
        }
        async move {
            let p = svc.start(opts).await.unwrap();
            within(LIMIT, "env", p.wait()).await.unwrap();
            let mut lines: Vec<String> = p.output().lines().map(String::from).collect();
            lines.sort();
            lines
        }
    };
    for pwd in [None, Some("/elsewhere")] {
        let direct = env(false, pwd).await;
        assert!(direct.iter().any(|l| l.starts_with("PATH=")), "{direct:?}");
        if let Some(pwd) = pwd {
            assert!(direct.contains(&format!("PWD={pwd}")), "{direct:?}");
        }
        assert_eq!(env(true, pwd).await, direct);
    }
}

#[tokio::test]
async fn a_script_whose_interpreter_is_missing_is_a_spawn_error_naming_it() {
    let (svc, _) = dyn_service();
    let dir = tempfile::tempdir().unwrap();
    let script = executable(dir.path(), "run.sh", "#!/no/such/interpreter -x\necho\n");
    for die_with_parent in [false, true] {
        let err = svc
            .start(RunOptions::new(script.to_str().unwrap()).die_with_parent(die_with_parent))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("/no/such/interpreter"), "{text}");
        assert!(text.contains("run.sh"), "{text}");
    }
}

#[tokio::test]
async fn die_with_parent_finds_the_program_where_the_child_would() {
    let (svc, _) = dyn_service();
    let dir = tempfile::tempdir().unwrap();
    executable(
        dir.path(),
        "hello.sh",
        "#!/bin/sh\nprintf 'hi from %s' \"$0\"\n",
    );
    let in_dir = |script: &str| {
        RunOptions::new(script)
            .dir(dir.path())
            .die_with_parent(true)
    };
    let out = svc.run(in_dir("./hello.sh")).await.unwrap();
    assert_eq!(out, "hi from ./hello.sh");
    let err = svc.start(in_dir("./missing.sh")).await.unwrap_err();
    assert!(matches!(err, Error::CommandNotFound { .. }), "{err:?}");
}

/// The die-with-parent wrapper runs through `/bin/sh`, which drops environment variables whose
/// names are no shell identifiers; they must still reach the child, as without the option.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn die_with_parent_keeps_environment_names_a_shell_would_drop() {
    let (svc, _) = service();
    // `cat` of its own environment: a shell as the command would drop the name itself.
    let opts = RunOptions::new("cat")
        .arg("/proc/self/environ")
        .env("odd-name.x", "kept")
        .env("PLAIN", "too")
        .die_with_parent(true);
    let with = svc.run(opts.clone()).await.unwrap();
    let without = svc.run(opts.die_with_parent(false)).await.unwrap();
    for out in [&with, &without] {
        assert!(out.split('\0').any(|l| l == "odd-name.x=kept"), "{out}");
        assert!(out.split('\0').any(|l| l == "PLAIN=too"), "{out}");
    }
}

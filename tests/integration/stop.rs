//! Stopping processes: groups, grace periods, timeouts, shutdown, zombies, parent death.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use core_process::{Error, ProcessEvent, ProcessService, RunOptions, Signal, Status};

use crate::support::{
    KillOnDrop, LIMIT, alive, dyn_service, eventually, group_of_at_least, live_group_members,
    service, sh, stat, within, zombies,
};

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[tokio::test]
async fn kill_reaches_the_whole_process_group() {
    let (svc, _) = dyn_service();
    let p = svc.start(sh("sleep 300 & sleep 300 & wait")).await.unwrap();
    let pgid = p.pid();
    group_of_at_least(pgid, 3, "shell and two sleeps in the group").await;
    within(LIMIT, "kill", p.kill()).await.unwrap();
    eventually(LIMIT, "group empty", || live_group_members(pgid).is_empty()).await;
    assert_eq!(p.status(), Status::Killed);
}

#[tokio::test]
async fn stop_ends_a_three_level_tree() {
    let (svc, _) = dyn_service();
    let p = svc
        .start(sh("sh -c 'sleep 300 & wait' & wait"))
        .await
        .unwrap();
    let pgid = p.pid();
    group_of_at_least(pgid, 3, "sh -> sh -> sleep").await;
    within(LIMIT, "stop", p.stop(Duration::from_secs(5))).await;
    eventually(LIMIT, "group empty", || live_group_members(pgid).is_empty()).await;
    assert!(!p.is_running());
}

#[tokio::test]
async fn a_real_time_stop_signal_is_sent_and_ends_the_stop_at_once() {
    let (svc, _) = dyn_service();
    let rt: Signal = "SIGRTMIN+2".parse().unwrap();
    assert!(matches!(rt, Signal::Other(n) if n >= 34), "{rt:?}");
    // `sleep` ends on any real-time signal (the default action terminates).
    let p = svc
        .start(RunOptions::new("sleep").arg("300").stop_signal(rt))
        .await
        .unwrap();
    let begun = Instant::now();
    // Well under the 10 s grace: the signal itself must end it, not the SIGKILL after.
    within(
        Duration::from_secs(8),
        "stop",
        p.stop(Duration::from_secs(10)),
    )
    .await;
    assert!(begun.elapsed() < Duration::from_secs(8));
    assert_eq!(p.status(), Status::Killed);
    assert_eq!(p.signal_received(), Some(rt));
}

#[tokio::test]
async fn signal_40_can_be_sent() {
    let (svc, _) = dyn_service();
    let p = svc
        .start(RunOptions::new("sleep").arg("300"))
        .await
        .unwrap();
    within(LIMIT, "signal", p.signal(Signal::Other(40)))
        .await
        .unwrap();
    within(LIMIT, "exit", p.done()).await;
    assert_eq!(p.signal_received(), Some(Signal::Other(40)));
}

#[tokio::test]
async fn a_stop_signal_that_cannot_be_sent_is_refused_before_spawning() {
    let (svc, _) = dyn_service();
    for n in [0, 65, 1000] {
        let err = svc
            .start(
                RunOptions::new("sleep")
                    .arg("300")
                    .stop_signal(Signal::Other(n)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedSignal { command, signal } if command == "sleep" && *signal == Signal::Other(n)),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("SIG{n}")), "{err}");
    }
    assert!(svc.list().is_empty());
    // `signal` refuses them too, naming the signal, and the process lives on.
    let p = svc
        .start(RunOptions::new("sleep").arg("300"))
        .await
        .unwrap();
    let err = p.signal(Signal::Other(1000)).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Signal {
                signal: Signal::Other(1000),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("SIG1000"), "{err}");
    assert!(p.is_running());
    within(LIMIT, "kill", p.kill()).await.unwrap();
}

#[tokio::test]
async fn leftovers_in_the_group_are_killed_when_the_leader_exits() {
    let (svc, _) = dyn_service();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    // The shell backgrounds a sleep (which keeps stdout open) and exits at once.
    let p = svc
        .start(sh(&format!("sleep 300 & printf $! > {}", quoted(&pidfile))))
        .await
        .unwrap();
    within(LIMIT, "leader exit", p.wait()).await.unwrap();
    let bg: u32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    eventually(LIMIT, "background sleep gone", || !alive(bg)).await;
}

#[tokio::test]
async fn without_a_group_signals_reach_the_child_only() {
    let (svc, _) = dyn_service();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let p = svc
        .start(
            sh(&format!(
                "sleep 300 & printf $! > {}; wait",
                quoted(&pidfile)
            ))
            .process_group(false),
        )
        .await
        .unwrap();
    eventually(LIMIT, "pid file", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| !s.is_empty())
    })
    .await;
    let bg: u32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    let _cleanup = KillOnDrop(bg);
    p.kill().await.unwrap();
    // The grandchild was not in a group of its own, so it survives (the guard kills it).
    assert!(
        alive(bg),
        "the background sleep should survive a non-group kill"
    );
}

/// Starts a shell that installs `trap` (with `{out}` standing for a file the handler may write),
/// says it is ready, and idles; returns once the trap is installed.
async fn trapping(
    svc: &Arc<dyn ProcessService>,
    trap: &str,
    opts: impl FnOnce(RunOptions) -> RunOptions,
) -> (core_process::Process, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let out = dir.path().join("out");
    let script = format!(
        "{}; printf x > {}; while :; do sleep 0.05; done",
        trap.replace("{out}", &quoted(&out)),
        quoted(&ready)
    );
    let p = svc.start(opts(sh(&script))).await.unwrap();
    eventually(LIMIT, "trap installed", || ready.exists()).await;
    (p, dir, out)
}

#[tokio::test]
async fn stop_lets_a_term_handler_run() {
    let (svc, _) = dyn_service();
    let (p, _dir, out) = trapping(&svc, "trap 'printf flushed > {out}; exit 0' TERM", |o| o).await;
    within(LIMIT, "stop", p.stop(Duration::from_secs(10))).await;
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "flushed");
    assert_eq!(p.status(), Status::Exited);
    assert_eq!(p.exit_code(), Some(0));
}

#[tokio::test]
async fn stop_kills_a_process_that_ignores_term_after_the_grace_period() {
    let (svc, _) = dyn_service();
    let (p, _dir, _) = trapping(&svc, "trap '' TERM", |o| o).await;
    let grace = Duration::from_millis(300);
    let began = Instant::now();
    within(LIMIT, "stop", p.stop(grace)).await;
    assert!(
        began.elapsed() >= grace,
        "SIGKILL came before the grace period ended"
    );
    assert_eq!(p.status(), Status::Killed);
    assert_eq!(p.signal_received(), Some(Signal::Kill));
}

#[tokio::test]
async fn custom_stop_signal_is_sent_first() {
    let (svc, _) = dyn_service();
    let (p, _dir, out) = trapping(&svc, "trap 'printf int > {out}; exit 3' INT", |o| {
        o.stop_signal(Signal::Int)
    })
    .await;
    within(LIMIT, "stop", p.stop(Duration::from_secs(10))).await;
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "int");
    assert_eq!(p.exit_code(), Some(3));
}

#[tokio::test]
async fn timeout_ends_a_sleep_as_killed() {
    let (svc, bus) = service();
    let p = svc
        .start(
            RunOptions::new("sleep")
                .arg("30")
                .timeout(Duration::from_millis(200))
                .grace_period(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let err = within(LIMIT, "timeout", p.wait()).await.unwrap_err();
    assert_eq!(p.status(), Status::Killed);
    assert!(p.timed_out());
    assert!(
        matches!(
            err,
            Error::Killed {
                timed_out: true,
                signal: Signal::Term,
                ..
            }
        ),
        "{err:?}"
    );
    let events = bus.events_for(p.id());
    assert!(events.iter().any(|e| matches!(
        e,
        ProcessEvent::Killed {
            timed_out: true,
            ..
        }
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        ProcessEvent::Exited { error: Some(msg), .. } if msg.contains("timed out")
    )));
}

#[tokio::test]
async fn signal_reaches_the_group_and_ends_with_killed() {
    let (svc, bus) = dyn_service();
    let p = svc.start(RunOptions::new("sleep").arg("60")).await.unwrap();
    p.signal(Signal::Usr1).await.unwrap();
    within(LIMIT, "signalled", p.done()).await;
    assert_eq!(p.status(), Status::Killed);
    assert_eq!(p.signal_received(), Some(Signal::Usr1));
    assert!(bus.events_for(p.id()).iter().any(|e| matches!(
        e,
        ProcessEvent::Killed {
            signal: Signal::Usr1,
            ..
        }
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_zombies_after_two_thousand_processes() {
    let (svc, _) = dyn_service();
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..2000 {
        let svc = Arc::clone(&svc);
        let permit = Arc::clone(&sem).acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let p = svc.start(RunOptions::new("true")).await.unwrap();
            p.wait().await.unwrap();
            drop(permit);
            svc.remove(p.id()).unwrap();
            p.pid()
        });
    }
    let mut pids = Vec::with_capacity(2000);
    within(Duration::from_secs(120), "2000 processes", async {
        while let Some(r) = tasks.join_next().await {
            pids.push(r.unwrap());
        }
    })
    .await;
    assert!(svc.list().is_empty());
    // `wait` returns only after the supervisor reaped the child: none may be left a zombie.
    eventually(LIMIT, "no zombie among the 2000", || {
        zombies(&pids).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_fifty_children_concurrently() {
    let (svc, _) = dyn_service();
    let mut pids = Vec::new();
    for _ in 0..50 {
        let p = svc
            .start(
                RunOptions::new("sleep")
                    .arg("300")
                    .grace_period(Duration::from_secs(3)),
            )
            .await
            .unwrap();
        pids.push(p.pid());
    }
    let detached = svc
        .start(RunOptions::new("sleep").arg("300").detach(true))
        .await
        .unwrap();
    // Each stop is concurrent: 50 sleeps die on SIGTERM at once, far inside one grace period.
    within(Duration::from_secs(15), "shutdown", svc.shutdown())
        .await
        .unwrap();
    assert_eq!(svc.running().len(), 1, "only the detached process runs");
    assert!(pids.iter().all(|pid| !alive(*pid)), "every child stopped");
    eventually(LIMIT, "every stopped child reaped", || {
        zombies(&pids).is_empty()
    })
    .await;
    assert!(detached.is_running());
    detached.kill().await.unwrap();
    eventually(LIMIT, "detached one reaped", || {
        zombies(&[detached.pid()]).is_empty()
    })
    .await;
}

#[tokio::test]
async fn dropping_the_service_kills_its_processes() {
    let (svc, _) = service();
    let p = svc.start(sh("sleep 300 & wait")).await.unwrap();
    let pgid = p.pid();
    group_of_at_least(pgid, 2, "sleep started").await;
    drop(svc);
    within(LIMIT, "killed on drop", p.done()).await;
    eventually(LIMIT, "group empty", || live_group_members(pgid).is_empty()).await;
    assert_eq!(p.status(), Status::Killed);
}

/// Run only as a child of `die_with_parent_*`: a tiny manager that starts `sleep 300` through
/// the service, records its pid and waits to be SIGKILLed.
#[tokio::test]
#[ignore = "helper process for the die_with_parent tests"]
async fn manager_role() {
    let Ok(pidfile) = std::env::var("CORE_PROCESS_MANAGER_PIDFILE") else {
        return;
    };
    let on = std::env::var("CORE_PROCESS_MANAGER_DIE_WITH_PARENT").as_deref() == Ok("1");
    let (svc, _) = dyn_service();
    let p = svc
        .start(RunOptions::new("sleep").arg("300").die_with_parent(on))
        .await
        .unwrap();
    // Write atomically so the parent never reads a partial pid.
    let tmp = format!("{pidfile}.tmp");
    std::fs::write(&tmp, p.pid().to_string()).unwrap();
    std::fs::rename(&tmp, &pidfile).unwrap();
    p.done().await; // until SIGKILL
}

async fn managed_sleep_after_manager_sigkill(die_with_parent: bool) -> u32 {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sleep.pid");
    let mut manager = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "stop::manager_role",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("CORE_PROCESS_MANAGER_PIDFILE", &pidfile)
        .env(
            "CORE_PROCESS_MANAGER_DIE_WITH_PARENT",
            if die_with_parent { "1" } else { "0" },
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(LIMIT, "manager started its sleep", || pidfile.exists()).await;
    let sleep_pid: u32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    // Once `setpriv` has exec'd, the pid runs `sleep`.
    eventually(LIMIT, "sleep running", || {
        std::fs::read_to_string(format!("/proc/{sleep_pid}/comm"))
            .is_ok_and(|c| c.trim() == "sleep")
    })
    .await;
    manager.kill().unwrap(); // SIGKILL: no destructor runs
    manager.wait().unwrap();
    sleep_pid
}

/// Run only as a child of `die_with_parent_leaves_no_window_right_after_start`: a manager that
/// is SIGKILLed the moment `start` returns. A shell started beforehand, blocked on its stdin,
/// does the killing as soon as it reads the child's pid (tens of microseconds, well before the
/// child's wrapper could have armed the parent-death signal), then writes that pid to the file.
#[tokio::test]
#[ignore = "helper process for the die_with_parent tests"]
async fn manager_killed_at_once_role() {
    use std::io::Write;
    let Ok(pidfile) = std::env::var("CORE_PROCESS_KILLED_MANAGER_PIDFILE") else {
        return;
    };
    // Never waited for here: it kills this process, then is adopted (and reaped) by init or a
    // subreaper, like the child under test.
    #[allow(clippy::zombie_processes)]
    let mut killer = std::process::Command::new("sh")
        .args([
            "-c",
            r#"read pid || exit 1; kill -KILL "$1"; printf '%s' "$pid" > "$2.tmp"; mv "$2.tmp" "$2""#,
            "sh",
            &std::process::id().to_string(),
            &pidfile,
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_killer = killer.stdin.take().unwrap();
    let (svc, _) = dyn_service();
    let p = svc
        .start(RunOptions::new("sleep").arg("300").die_with_parent(true))
        .await
        .unwrap();
    to_killer
        .write_all(format!("{}\n", p.pid()).as_bytes())
        .unwrap();
    p.done().await; // until SIGKILL
}

#[tokio::test]
async fn die_with_parent_leaves_no_window_right_after_start() {
    use std::os::unix::process::ExitStatusExt;
    // Without the check, about one child in four outlived its manager here (7 of 30 rounds):
    // twenty rounds miss that with a chance of about 0.5 %.
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let mut manager = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "stop::manager_killed_at_once_role",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("CORE_PROCESS_KILLED_MANAGER_PIDFILE", &pidfile)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        eventually(
            LIMIT,
            "the manager killed and the child's pid written",
            || pidfile.exists(),
        )
        .await;
        let status = manager.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "round {round}: {status:?}");
        let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
        let _cleanup = KillOnDrop(pid);
        eventually(
            LIMIT,
            &format!("round {round}: the child {pid} of the killed manager gone"),
            || !alive(pid),
        )
        .await;
    }
}

#[tokio::test]
async fn die_with_parent_kills_the_child_when_the_manager_is_sigkilled() {
    let pid = managed_sleep_after_manager_sigkill(true).await;
    eventually(LIMIT, "orphaned sleep killed by the kernel", || !alive(pid)).await;
}

#[tokio::test]
async fn without_die_with_parent_the_child_outlives_a_sigkilled_manager() {
    let pid = managed_sleep_after_manager_sigkill(false).await;
    let _cleanup = KillOnDrop(pid);
    assert!(alive(pid), "the sleep should survive its manager");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_nothing_running_even_while_a_runner_keeps_starting() {
    use core_process::{PipelineOptions, PipelineRunner, RunSpec, Runner};
    let (svc, _) = dyn_service();
    let runner = Runner::new(Arc::clone(&svc));
    let specs: Vec<RunSpec> = (0..3)
        .map(|i| RunSpec::new(format!("s{i}"), "sleep").arg("30"))
        .collect();
    let run = tokio::spawn(async move {
        runner
            .run_parallel(&specs, PipelineOptions::new().max_parallel(1))
            .await
    });
    eventually(LIMIT, "first spec running", || svc.running().len() == 1).await;
    within(LIMIT, "shutdown", svc.shutdown()).await.unwrap();
    assert!(svc.running().is_empty());
    // The runner saw its spec end and tried the next ones: the service refused them.
    let result = within(LIMIT, "pipeline", run).await.unwrap().unwrap();
    assert!(!result.success());
    assert!(svc.running().is_empty());
}

/// A stopped process (SIGSTOP) cannot act on the stop signal until it is continued: `stop`
/// follows the stop signal with SIGCONT, so the process ends by SIGTERM at once, not by the
/// SIGKILL at the end of the grace period (300 s here: the test fails long before).
#[tokio::test]
async fn stop_continues_a_stopped_process_so_the_stop_signal_ends_it() {
    let (svc, _) = dyn_service();
    let p = svc
        .start(RunOptions::new("sleep").args(["300"]))
        .await
        .unwrap();
    p.signal(Signal::Stop).await.unwrap();
    let pid = p.pid();
    eventually(LIMIT, "the child stopped", || {
        stat(pid).is_some_and(|s| s.state == 'T')
    })
    .await;
    within(
        LIMIT,
        "stop of a stopped process",
        p.stop(Duration::from_secs(300)),
    )
    .await;
    assert_eq!(p.signal_received(), Some(Signal::Term));
    assert_eq!(p.status(), Status::Killed);
}

/// A runtime shut down under a running process drops its supervisor before the child is
/// reaped: the supervisor kills the child's whole group on the way out (the child's own drop
/// kills only the leader) and finishes the process as failed, so nobody waits for ever.
#[test]
fn a_runtime_shut_down_under_a_process_kills_its_group_and_fails_it() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (svc, _) = dyn_service();
    let p = rt.block_on(async {
        let p = svc.start(sh("sleep 300 & sleep 300 & wait")).await.unwrap();
        group_of_at_least(p.pid(), 3, "the shell and its two sleeps").await;
        p
    });
    let pgid = p.pid();
    // Dropping the runtime drops its tasks, the supervisor among them.
    drop(rt);
    let after = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    after.block_on(eventually(LIMIT, "the group killed", || {
        live_group_members(pgid).is_empty()
    }));
    assert_eq!(p.status(), Status::Failed);
    let error = after
        .block_on(within(LIMIT, "wait", p.wait()))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("supervisor stopped before the process ended"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_after_exit_ends_within_its_bound_while_escaped_writers_keep_the_pipe_busy() {
    let (svc, _) = dyn_service();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pids");
    // Outside any group of ours, three `cat`s keep stdout full; the leader exits at once. The
    // drain must give up on the pipe after DRAIN_TIMEOUT, however busy the pipe stays (it looks
    // at its bound before every read, not only when both pipes are empty).
    let p = svc
        .start(
            sh(&format!(
                "cat /dev/zero & a=$!; cat /dev/zero & b=$!; cat /dev/zero & \
                 printf '%s %s %s' \"$a\" \"$b\" \"$!\" > {}; exit 0",
                quoted(&pidfile)
            ))
            .process_group(false),
        )
        .await
        .unwrap();
    eventually(LIMIT, "pid file", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.split(' ').count() == 3)
    })
    .await;
    let _cleanup: Vec<KillOnDrop> = std::fs::read_to_string(&pidfile)
        .unwrap()
        .split(' ')
        .map(|pid| KillOnDrop(pid.parse().unwrap()))
        .collect();
    let started = Instant::now();
    within(
        core_process::services::process::DRAIN_TIMEOUT + LIMIT,
        "the end of the drain",
        p.wait(),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= core_process::services::process::DRAIN_TIMEOUT / 2,
        "the writers held the pipe: the drain waited out its bound"
    );
}

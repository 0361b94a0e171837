//! The PID lock: `FilePidLock`, `read_pid`, go-process-style holders, races between processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use core_process::{Error, FilePidLock, PidLock, read_pid};

use crate::daemon::*;
use crate::support::within;

// ---------------------------------------------------------------------------------------------
// PID lock

/// `app.pid` in a temp dir of its own (kept alive by the returned guard).
fn pid_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.pid");
    (dir, path)
}

/// A new lock on `path` acquires it, writing this process's pid, and releases it.
fn assert_acquires(path: &Path) {
    let lock = FilePidLock::new(path);
    lock.acquire().unwrap();
    assert_eq!(read_pid(path), Some((std::process::id(), true)));
    lock.release().unwrap();
}

#[test]
fn pid_lock_acquire_writes_pid_and_release_removes_the_file() {
    let (_dir, path) = pid_file();
    let lock = FilePidLock::new(&path);
    assert!(!lock.is_locked());
    assert_eq!(lock.path(), Some(path.clone()));
    lock.acquire().unwrap();
    assert!(lock.is_locked());
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        std::process::id().to_string()
    );
    assert_eq!(read_pid(&path), Some((std::process::id(), true)));
    lock.release().unwrap();
    assert!(!lock.is_locked());
    assert!(!path.exists());
    lock.release().unwrap();
}

#[test]
fn pid_lock_stale_file_of_a_dead_process_is_acquired() {
    let (_dir, path) = pid_file();
    std::fs::write(&path, DEAD_PID.to_string()).unwrap();
    assert_acquires(&path);
}

#[test]
fn pid_lock_file_naming_this_process_but_unlocked_is_acquired() {
    // Left by an earlier lock of this very process: it is ours, whatever its age.
    let (_dir, path) = pid_file();
    std::fs::write(&path, std::process::id().to_string()).unwrap();
    let lock = FilePidLock::new(&path);
    lock.acquire().unwrap();
    // Dropping a held lock releases it and removes the file: left behind, it would name a
    // live process and look held by it.
    drop(lock);
    assert!(!path.exists());
    FilePidLock::new(&path).acquire().unwrap();
}

#[test]
fn pid_lock_file_of_a_live_go_style_holder_is_already_running() {
    // go-process holds a PID file without a lock: it writes its pid in place (after checking
    // the pid already there with kill(pid, 0)). The holder started before it wrote the file.
    let (_dir, path) = pid_file();
    let holder = Sleeper::start();
    std::fs::write(&path, holder.pid().to_string()).unwrap();
    let lock = FilePidLock::new(&path);
    for _ in 0..2 {
        match lock.acquire() {
            Err(Error::AlreadyRunning { pid, path: p }) => {
                assert_eq!(pid, holder.pid());
                assert_eq!(p, path);
            }
            other => panic!("{other:?}"),
        }
        assert!(!lock.is_locked());
        // The holder's file is left as it was.
        assert_eq!(read_pid(&path), Some((holder.pid(), true)));
    }
    // The Go holder releases by removing its file: then we acquire.
    std::fs::remove_file(&path).unwrap();
    lock.acquire().unwrap();
    assert_eq!(read_pid(&path), Some((std::process::id(), true)));
    lock.release().unwrap();
}

#[test]
fn pid_lock_file_written_before_its_pid_started_is_stale() {
    if !start_times_known() {
        return; // without start times a live pid always holds, as in go-process
    }
    // The file was last written before the process it names started: that pid was reused
    // since, and the file is stale.
    let (_dir, path) = pid_file();
    let reused = Sleeper::start();
    std::fs::write(&path, reused.pid().to_string()).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    assert_acquires(&path);
}

#[test]
fn pid_lock_creates_nested_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/app.pid");
    let lock = FilePidLock::new(&path);
    lock.acquire().unwrap();
    assert!(path.exists());
    lock.release().unwrap();
}

#[test]
fn pid_lock_second_holder_in_this_process_is_already_running() {
    let (_dir, path) = pid_file();
    let first = FilePidLock::new(&path);
    first.acquire().unwrap();
    let second = FilePidLock::new(&path);
    match second.acquire() {
        Err(e @ Error::AlreadyRunning { .. }) => {
            let Error::AlreadyRunning { pid, path: p } = &e else {
                unreachable!()
            };
            assert_eq!(*pid, std::process::id());
            assert_eq!(p, &path);
            let msg = e.to_string();
            assert!(msg.contains(&std::process::id().to_string()), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!second.is_locked());
    // The refused acquirer left the holder's file alone.
    assert_eq!(read_pid(&path), Some((std::process::id(), true)));
    first.release().unwrap();
    second.acquire().unwrap();
    second.release().unwrap();
}

#[test]
fn pid_lock_unwritable_location_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let path = blocker.join("app.pid");
    match FilePidLock::new(&path).acquire() {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains(&path.display().to_string())),
        other => panic!("{other:?}"),
    }
}

#[test]
fn read_pid_missing_invalid_and_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.pid");
    assert_eq!(read_pid(&path), None);
    std::fs::write(&path, "not a pid").unwrap();
    assert_eq!(read_pid(&path), None);
    std::fs::write(&path, "").unwrap();
    assert_eq!(read_pid(&path), None);
    std::fs::write(&path, format!("{DEAD_PID}\n")).unwrap();
    assert_eq!(read_pid(&path), Some((DEAD_PID, false)));
}

#[tokio::test]
async fn pid_lock_two_processes_racing_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..40 {
        let path = dir.path().join(format!("race-{round}.pid"));
        let (a, mut a_out) = spawn_child("lock", &path, 0);
        let (b, mut b_out) = spawn_child("lock", &path, 1);
        let a_pid = a.id().unwrap();
        let b_pid = b.id().unwrap();
        let ra = result_line(&mut a_out).await;
        let rb = result_line(&mut b_out).await;
        let outcome = match (ra.as_str(), rb.as_str()) {
            ("won", lost) | (lost, "won") => lost.to_string(),
            _ => panic!("round {round}: not exactly one winner: {ra:?} / {rb:?}"),
        };
        let winner = if ra == "won" { a_pid } else { b_pid };
        let holder: u32 = outcome
            .strip_prefix("lost ")
            .unwrap_or_else(|| panic!("round {round}: {outcome}"))
            .parse()
            .unwrap();
        // The loser names the winner. It re-reads an empty file for up to 50 ms, so 0 means
        // the winner stalled that long between locking and writing (a loaded machine).
        assert!(holder == winner || holder == 0, "round {round}: {holder}");
        release_child(a).await;
        release_child(b).await;
        assert!(!path.exists(), "round {round}: the winner removes the file");
    }
}

#[tokio::test]
async fn pid_lock_of_a_sigkilled_holder_is_free_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.pid");
    let (mut child, mut out) = spawn_child("lock", &path, 0);
    let pid = child.id().unwrap();
    assert_eq!(result_line(&mut out).await, "won");
    assert!(matches!(
        FilePidLock::new(&path).acquire(),
        Err(Error::AlreadyRunning { pid: p, .. }) if p == pid
    ));
    signal(pid, "KILL");
    within(LIMIT, "reaping the killed holder", child.wait())
        .await
        .unwrap();
    // The file is still there, naming a dead process; it does not block.
    assert_eq!(read_pid(&path), Some((pid, false)));
    assert_acquires(&path);
}

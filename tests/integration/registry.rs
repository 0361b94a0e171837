//! The registry: `FileRegistry`'s files, pruning, Go compatibility, writers racing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use core_process::testing::MemoryRegistry;
use core_process::{DaemonEntry, Error, FileRegistry, Registry};

use crate::daemon::*;

// ---------------------------------------------------------------------------------------------
// Registry

pub(crate) fn entry(code: &str, daemon: &str, pid: u32) -> DaemonEntry {
    let mut e = DaemonEntry::new(code, daemon);
    e.pid = pid;
    e
}

/// An entry naming this (live) process.
fn mine(code: &str, daemon: &str) -> DaemonEntry {
    entry(code, daemon, std::process::id())
}

/// A registry in a temp dir of its own (kept alive by the returned guard).
fn temp_registry() -> (tempfile::TempDir, FileRegistry) {
    let dir = tempfile::tempdir().unwrap();
    let registry = FileRegistry::new(dir.path());
    (dir, registry)
}

/// This process's start time in clock ticks (`/proc/self/stat` field 22), where the platform
/// has one.
fn own_start_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// An entry file as go-process writes it (`json.MarshalIndent`, local offset, no health).
fn go_json(code: &str, daemon: &str, pid: u32, started: &str) -> String {
    format!(
        "{{\n  \"code\": \"{code}\",\n  \"daemon\": \"{daemon}\",\n  \"pid\": {pid},\n  \"started\": \"{started}\"\n}}"
    )
}

#[tokio::test]
async fn registry_round_trips_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FileRegistry::new(dir.path().join("daemons"));
    let mut e = mine("core", "agent");
    e.health = "127.0.0.1:9090".into();
    e.project = "lethean".into();
    e.binary = "/usr/local/bin/core".into();
    e.started = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_767_225_600_123_456_789);
    registry.register(e.clone()).await.unwrap();
    let got = registry.get("core", "agent").await.unwrap().unwrap();
    // The registry records the start time of the pid.
    assert!(got.pid_start_ticks.is_some());
    e.pid_start_ticks = got.pid_start_ticks;
    assert_eq!(got, e);
}

#[tokio::test]
async fn registry_creates_its_directory_and_fills_started() {
    let dir = tempfile::tempdir().unwrap();
    let reg_dir = dir.path().join("a/b/daemons");
    let registry = FileRegistry::new(&reg_dir);
    assert!(registry.list().await.unwrap().is_empty());
    let before = SystemTime::now();
    registry.register(mine("core", "agent")).await.unwrap();
    assert!(reg_dir.join("core-agent.json").is_file());
    let got = registry.get("core", "agent").await.unwrap().unwrap();
    assert!(got.started >= before - Duration::from_secs(1));
}

#[tokio::test]
async fn registry_unregister_removes_the_file_and_missing_is_fine() {
    let (dir, registry) = temp_registry();
    registry.register(mine("core", "agent")).await.unwrap();
    registry.unregister("core", "agent").await.unwrap();
    assert!(!dir.path().join("core-agent.json").exists());
    registry.unregister("core", "agent").await.unwrap();
    FileRegistry::new(dir.path().join("missing"))
        .unregister("core", "agent")
        .await
        .unwrap();
}

#[tokio::test]
async fn registry_rejects_an_entry_with_pid_0_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = FileRegistry::new(dir.path().join("daemons"));
    let memory = MemoryRegistry::new();
    for registry in [&file as &dyn Registry, &memory] {
        match registry.register(DaemonEntry::new("core", "agent")).await {
            Err(e @ Error::InvalidEntry { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("core/agent") && msg.contains("pid is 0"),
                    "{msg}"
                );
                let Error::InvalidEntry { code, daemon, .. } = e else {
                    unreachable!()
                };
                assert_eq!((code.as_str(), daemon.as_str()), ("core", "agent"));
            }
            other => panic!("{other:?}"),
        }
        assert!(registry.list().await.unwrap().is_empty());
        assert_eq!(registry.get("core", "agent").await.unwrap(), None);
        // Bad names are still reported first.
        assert!(matches!(
            registry.register(DaemonEntry::new("a/b", "c")).await,
            Err(Error::InvalidName { .. })
        ));
    }
    assert!(memory.entries().is_empty());
    assert!(!dir.path().join("daemons").exists(), "nothing is written");
}

#[tokio::test]
async fn registry_unregister_leaves_an_entry_a_newer_process_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core-agent.json");
    let ours = FileRegistry::new(dir.path());
    ours.register(mine("core", "agent")).await.unwrap();
    // A newer daemon under the same name (another process, with its own registry) replaces it.
    let newer = Sleeper::start();
    FileRegistry::new(dir.path())
        .register(entry("core", "agent", newer.pid()))
        .await
        .unwrap();
    ours.unregister("core", "agent").await.unwrap();
    let left = ours.get("core", "agent").await.unwrap();
    assert_eq!(
        left.map(|e| e.pid),
        Some(newer.pid()),
        "the newer entry survives"
    );

    // So does a go-process entry (no start time) naming another live process.
    let go = go_json("core", "agent", newer.pid(), "2026-03-11T12:05:31+01:00");
    std::fs::write(&path, &go).unwrap();
    ours.unregister("core", "agent").await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), go);

    // And an entry naming our pid with another start time: another process that had our pid.
    if let Some(ticks) = FileRegistry::new(dir.path())
        .get("core", "agent")
        .await
        .ok()
        .and(start_times_known().then_some(()))
        .and_then(|()| own_start_ticks())
    {
        let mut other = mine("core", "agent");
        other.pid_start_ticks = Some(ticks + 1);
        FileRegistry::new(dir.path()).register(other).await.unwrap();
        ours.unregister("core", "agent").await.unwrap();
        assert!(path.exists(), "an entry of another start time is not ours");
    }
}

#[tokio::test]
async fn registry_unregister_removes_what_this_registry_registered() {
    let (dir, registry) = temp_registry();
    // An entry for another process, registered here (a supervisor's), is ours to remove.
    let child = Sleeper::start();
    registry
        .register(entry("core", "child", child.pid()))
        .await
        .unwrap();
    registry.unregister("core", "child").await.unwrap();
    assert!(!dir.path().join("core-child.json").exists());
    // A registry that registered nothing under a name removes this process's entry there.
    registry.register(mine("core", "agent")).await.unwrap();
    FileRegistry::new(dir.path())
        .unregister("core", "agent")
        .await
        .unwrap();
    assert!(!dir.path().join("core-agent.json").exists());
    // ...but not another process's.
    FileRegistry::new(dir.path())
        .register(entry("core", "child", child.pid()))
        .await
        .unwrap();
    registry.unregister("core", "child").await.unwrap();
    assert!(dir.path().join("core-child.json").exists());
}

/// Rewrites `path` in place, not atomically, as go-process's `os.WriteFile` does: truncate,
/// then write (here in two halves). Returns when it began and when the file was whole again.
fn write_in_place(path: &Path, bytes: &[u8]) -> (Instant, Instant) {
    use std::io::Write;
    let began = Instant::now();
    let mut file = std::fs::File::create(path).unwrap();
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    file.write_all(first).unwrap();
    file.write_all(rest).unwrap();
    (began, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_never_misses_an_entry_that_go_rewrites_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("go-worker.json");
    let go = go_json(
        "go",
        "worker",
        std::process::id(),
        "2026-03-11T12:05:31.5+01:00",
    );
    std::fs::write(&path, &go).unwrap();
    let registry = FileRegistry::new(dir.path());
    registry.register(mine("rust", "server")).await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            // Rewrites during which the file stayed incomplete long enough (a reader re-reads
            // for 50 ms) for a miss to be the machine's fault: the writer was descheduled.
            let (mut rewrites, mut stalls) = (0u32, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (began, whole) = write_in_place(&path, go.as_bytes());
                if whole - began >= Duration::from_millis(40) {
                    stalls.push((began, whole));
                }
                rewrites += 1;
                // A daemon rewrites its entry now and then, not in a tight loop.
                std::thread::sleep(Duration::from_micros(200));
            }
            (rewrites, stalls)
        })
    };
    let (mut reads, mut misses) = (0, Vec::new());
    for round in 0..400 {
        let began = Instant::now();
        let list = registry.list().await.unwrap();
        reads += 1;
        if !list.iter().any(|e| e.code == "go") || list.len() != 2 {
            misses.push((began, Instant::now(), format!("list {round}: {list:?}")));
        }
        let began = Instant::now();
        let got = registry.get("go", "worker").await;
        reads += 1;
        if !matches!(&got, Ok(Some(e)) if e.pid == std::process::id()) {
            misses.push((began, Instant::now(), format!("get {round}: {got:?}")));
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rewrites, stalls) = writer.join().unwrap();
    let unexplained: Vec<_> = misses
        .iter()
        .filter(|(began, ended, _)| !stalls.iter().any(|(b, w)| b < ended && w > began))
        .map(|(_, _, what)| what)
        .collect();
    assert!(
        unexplained.is_empty(),
        "missed in {} of {reads} reads ({rewrites} rewrites, {} misses during a stalled write): {:?}",
        unexplained.len(),
        misses.len() - unexplained.len(),
        &unexplained[..unexplained.len().min(3)]
    );
    assert!(rewrites > 10, "the writer hardly ran: {rewrites}");
}

#[tokio::test]
async fn registry_gives_up_on_a_damaged_file_after_a_bounded_wait() {
    let (dir, registry) = temp_registry();
    registry.register(mine("core", "ok")).await.unwrap();
    for i in 0..5 {
        std::fs::write(dir.path().join(format!("core-bad{i}.json")), "{\"code\"").unwrap();
    }
    // Each read is retried for 50 ms first (perhaps a Go writer mid-write); list re-reads all
    // of them together.
    let started = Instant::now();
    let list = registry.list().await.unwrap();
    let took = started.elapsed();
    assert_eq!(list.len(), 1);
    assert!(took >= Duration::from_millis(50), "not re-read: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let started = Instant::now();
    assert!(matches!(
        registry.get("core", "bad0").await,
        Err(Error::Json { .. })
    ));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(50), "not re-read: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Unregister leaves a file that does not parse alone: ours always parse.
    registry.unregister("core", "bad0").await.unwrap();
    assert!(dir.path().join("core-bad0.json").exists());
}

#[tokio::test]
async fn registry_io_failures_are_errors_not_missing_entries() {
    let (dir, registry) = temp_registry();
    registry.register(mine("core", "ok")).await.unwrap();
    // A directory where an entry file should be.
    let odd = dir.path().join("core-agent.json");
    std::fs::create_dir(&odd).unwrap();
    for result in [
        registry.get("core", "agent").await.map(|_| ()),
        registry.unregister("core", "agent").await,
    ] {
        match result {
            Err(Error::Io { path, .. }) => assert_eq!(path, odd),
            other => panic!("{other:?}"),
        }
    }
    assert!(odd.is_dir());
    // list skips what it cannot read, and lists the rest.
    let list = registry.list().await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");

    // A registry path that is a regular file.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "").unwrap();
    let registry = FileRegistry::new(&plain);
    let results = [
        registry.get("core", "agent").await.map(|_| ()),
        registry.list().await.map(|_| ()),
        registry.unregister("core", "agent").await,
        registry.register(mine("core", "agent")).await,
    ];
    for result in results {
        match result {
            Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("plain"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn registry_lists_two_sorted() {
    let (_dir, registry) = temp_registry();
    registry.register(mine("zeta", "b")).await.unwrap();
    registry.register(mine("alpha", "a")).await.unwrap();
    let list = registry.list().await.unwrap();
    let names: Vec<_> = list
        .iter()
        .map(|e| format!("{}-{}", e.code, e.daemon))
        .collect();
    assert_eq!(names, ["alpha-a", "zeta-b"]);
}

#[tokio::test]
async fn registry_prunes_dead_pids_on_list_and_get() {
    let (dir, registry) = temp_registry();
    registry.register(mine("core", "alive")).await.unwrap();
    registry
        .register(entry("core", "dead", DEAD_PID))
        .await
        .unwrap();
    assert!(dir.path().join("core-dead.json").exists());
    let list = registry.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].daemon, "alive");
    assert!(!dir.path().join("core-dead.json").exists());

    registry
        .register(entry("core", "dead2", DEAD_PID))
        .await
        .unwrap();
    assert_eq!(registry.get("core", "dead2").await.unwrap(), None);
    assert!(!dir.path().join("core-dead2.json").exists());
}

#[tokio::test]
async fn registry_treats_a_reused_pid_as_dead() {
    let (_dir, registry) = temp_registry();
    let mut e = mine("core", "reused");
    let Some(ticks) = own_start_ticks() else {
        return; // no start times on this platform: nothing to guard
    };
    e.pid_start_ticks = Some(ticks + 1);
    registry.register(e).await.unwrap();
    assert_eq!(registry.get("core", "reused").await.unwrap(), None);
}

#[tokio::test]
async fn registry_get_missing_is_none() {
    let (_dir, registry) = temp_registry();
    assert_eq!(registry.get("core", "nothing").await.unwrap(), None);
}

#[tokio::test]
async fn registry_rejects_bad_names_with_a_typed_error() {
    let (dir, registry) = temp_registry();
    for (code, daemon) in [
        ("", "a"),
        ("a", ""),
        ("../etc", "a"),
        ("a", "b/c"),
        ("a\0", "b"),
        ("..", "x"),
    ] {
        let e = registry.register(mine(code, daemon)).await;
        assert!(
            matches!(e, Err(Error::InvalidName { .. })),
            "{code:?}/{daemon:?}: {e:?}"
        );
        assert!(matches!(
            registry.get(code, daemon).await,
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            registry.unregister(code, daemon).await,
            Err(Error::InvalidName { .. })
        ));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn registry_corrupt_file_neither_panics_nor_hides_others_and_is_kept() {
    let (dir, registry) = temp_registry();
    registry.register(mine("core", "one")).await.unwrap();
    registry.register(mine("core", "two")).await.unwrap();
    let bad = dir.path().join("core-bad.json");
    std::fs::write(&bad, "{\"code\": \"core\", \"daemon\": ").unwrap();
    std::fs::write(dir.path().join("core-empty.json"), "").unwrap();
    let list = registry.list().await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        bad.exists(),
        "a file that does not parse may be a write in progress"
    );
    match registry.get("core", "bad").await {
        Err(e @ Error::Json { .. }) => assert!(e.to_string().contains("core-bad.json")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn registry_reads_go_files_and_writes_files_go_reads() {
    let (dir, registry) = temp_registry();
    let me = std::process::id();
    // As go-process writes it: json.MarshalIndent, local offset, nanoseconds, no health.
    let go = format!(
        "{{\n  \"code\": \"go\",\n  \"daemon\": \"worker\",\n  \"pid\": {me},\n  \"project\": \"p\",\n  \"started\": \"2026-03-11T12:05:31.5+01:00\"\n}}"
    );
    std::fs::write(dir.path().join("go-worker.json"), go).unwrap();
    let got = registry.get("go", "worker").await.unwrap().unwrap();
    assert_eq!(got.pid, me);
    assert_eq!(got.health, "");
    assert_eq!(got.pid_start_ticks, None);
    assert_eq!(
        got.started,
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_773_227_131_500)
    );

    let mut ours = entry("rust", "server", me);
    ours.health = "127.0.0.1:1".into();
    registry.register(ours).await.unwrap();
    let text = std::fs::read_to_string(dir.path().join("rust-server.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
    // serde_json's map is sorted; Go reads by name and ignores pid_start_ticks.
    assert_eq!(
        keys,
        [
            "code",
            "daemon",
            "health",
            "pid",
            "pid_start_ticks",
            "started"
        ]
    );
    assert!(text.starts_with("{\n  \"code\": \"rust\",\n  \"daemon\": \"server\",\n  \"pid\": "));
    assert!(!text.ends_with('\n'));
    // No temp file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn registry_eight_processes_lose_nothing_and_never_read_a_torn_entry() {
    let dir = tempfile::tempdir().unwrap();
    let reg_dir = dir.path().join("daemons");
    let mut children = Vec::new();
    for i in 0..8 {
        children.push(spawn_child("registry", &reg_dir, i));
    }
    let mut pids = Vec::new();
    for (child, out) in &mut children {
        assert_eq!(result_line(out).await, "ok");
        pids.push(child.id().unwrap());
    }
    // Every child is alive and waiting: all 16 entries are there, each with its owner's pid.
    let list = FileRegistry::new(&reg_dir).list().await.unwrap();
    assert_eq!(list.len(), 16, "{list:#?}");
    for (i, pid) in pids.iter().enumerate() {
        for name in [format!("d{i}"), format!("x{i}")] {
            assert!(
                list.iter().any(|e| e.daemon == name && e.pid == *pid),
                "{name} of pid {pid} lost"
            );
        }
    }
    for (child, _out) in children {
        release_child(child).await;
    }
    // The owners are gone: everything is pruned.
    assert!(FileRegistry::new(&reg_dir).list().await.unwrap().is_empty());
}

//! Shared helpers: services, deadlines, and `/proc` inspection.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use core_process::testing::RecordingEventBus;
use core_process::{EventBus, ProcessService, RunOptions, TokioProcessService};

/// The bound on every wait of the process tests: generous, so only a hang fails.
pub const LIMIT: Duration = Duration::from_secs(20);

/// `sh -c script`.
pub fn sh(script: &str) -> RunOptions {
    RunOptions::new("sh").args(["-c", script])
}

/// Writes `text` to `dir/name` as an executable file (mode 755) and returns its path.
pub fn executable(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    write_program(&path, text, 0o755);
    path
}

/// Writes `text` to `path` with `mode`, for a test to execute it.
///
/// A `cat` child writes it, never this process: a file this process held open for writing,
/// even for a moment, could be inherited by a child that another test thread was forking just
/// then, and executing the file before that child execs fails with `ETXTBSY` ("Text file
/// busy"). The mode is set afterwards, which opens nothing.
pub fn write_program(path: &Path, text: &str, mode: u32) {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut cat = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cat.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    assert!(cat.wait().unwrap().success(), "writing {}", path.display());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A service publishing to a recording bus.
pub fn service() -> (Arc<TokioProcessService>, Arc<RecordingEventBus>) {
    let bus = Arc::new(RecordingEventBus::new());
    let service = Arc::new(TokioProcessService::new(
        bus.clone() as Arc<dyn EventBus>,
        core_process::DEFAULT_BUFFER_SIZE,
    ));
    (service, bus)
}

/// A service as the trait object hosts use.
pub fn dyn_service() -> (Arc<dyn ProcessService>, Arc<RecordingEventBus>) {
    let (s, b) = service();
    (s, b)
}

/// Runs `fut` and fails the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `cond` off any runtime (a plain thread) until it holds; fails the test after
/// [`LIMIT`].
pub fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + LIMIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One `/proc/<pid>/stat` line, parsed.
#[derive(Debug, Clone)]
pub struct Stat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
}

pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some(Stat {
        pid,
        state,
        ppid,
        pgrp,
    })
}

pub fn all_stats() -> Vec<Stat> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(stat)
                .collect()
        })
        .unwrap_or_default()
}

/// Live (not zombie) processes in process group `pgid`.
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    all_stats()
        .into_iter()
        .filter(|s| s.pgrp == pgid && s.state != 'Z' && s.state != 'X')
        .map(|s| s.pid)
        .collect()
}

/// Waits (up to [`LIMIT`]) until process group `pgid` has at least `members` live processes.
pub async fn group_of_at_least(pgid: u32, members: usize, what: &str) {
    eventually(LIMIT, what, || live_group_members(pgid).len() >= members).await;
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// Those of `pids` that are zombie children of this test process (exited, not reaped).
///
/// Tests run in parallel and pids wrap around (`pid_max` may be 32768), so a pid recorded
/// earlier may now belong to another test's live child, or to one of its children between exit
/// and reaping. Callers therefore wait with [`eventually`] for the list to be empty: a child of
/// ours that was never reaped stays a zombie and fails the test; a transient one does not.
pub fn zombies(pids: &[u32]) -> Vec<u32> {
    let me = std::process::id();
    pids.iter()
        .copied()
        .filter(|pid| stat(*pid).is_some_and(|s| s.ppid == me && s.state == 'Z'))
        .collect()
}

/// Kills a process on drop: tests that leave a process running on purpose hold one, so a
/// failed assertion does not leak it.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            kill9(self.0);
        }
    }
}

/// Kills `pid` with SIGKILL through the shell's `kill` builtin (tests use no libc).
pub fn kill9(pid: u32) {
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -KILL {pid} 2>/dev/null"))
        .status();
}

/// A tracing subscriber that keeps every event as `LEVEL message field=value ...`, for tests
/// of what the crate logs (set it with `tracing::subscriber::set_default`).
///
/// The first capture made registers the [`ANCHOR`] for the rest of the test binary: see there.
#[derive(Clone)]
pub struct Capture(Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>);

impl Default for Capture {
    fn default() -> Self {
        ANCHOR.get_or_init(|| tracing::Dispatch::new(Capture(None)));
        Capture(Some(Default::default()))
    }
}

/// A capture that wants every callsite and keeps nothing, registered once so that a capture
/// never misses an event to another test thread.
///
/// tracing caches one interest per callsite for the whole process, computed when the
/// callsite is first hit. With one registered dispatcher or none it is computed against the
/// default of the thread that hit it: a test thread without a subscriber (`NoSubscriber`)
/// would cache "never", and the capture on this thread would not see that callsite again.
/// With the anchor and the capture both registered, every registered dispatcher is asked, and
/// the anchor always wants it.
static ANCHOR: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();

impl Capture {
    /// Every event so far.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .as_ref()
            .map(|lines| lines.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// The warnings so far.
    pub fn warnings(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with("WARN"))
            .collect()
    }
}

struct CapturedLine(String);

impl tracing::field::Visit for CapturedLine {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let Some(lines) = &self.0 else {
            return;
        };
        let mut line = CapturedLine(event.metadata().level().to_string());
        event.record(&mut line);
        lines.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

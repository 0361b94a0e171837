//! [`PidLock`]: single-instance enforcement; [`FilePidLock`], the implementation on an
//! exclusive file lock; [`read_pid`], what a PID file says.
//!
//! # Design
//! [`FilePidLock::acquire`] opens (or creates) the file without truncating it and takes an
//! exclusive `flock` on it without waiting. The lock belongs to the open file, which the
//! holder keeps for its whole life, so the kernel frees it when the holder exits by any means,
//! SIGKILL included: a file left behind by a dead process — whatever it contains — never
//! blocks. Once locked, the holder truncates the file and writes its pid (as decimal digits,
//! no newline, the way go-process writes it). The file is rewritten in place, not replaced,
//! because the lock is on the inode.
//!
//! [`FilePidLock::release`] removes the file *while still holding the lock*, then unlocks and
//! closes it. A competitor may have opened the old file just before the removal and may win
//! its lock just after; so every acquirer, once it holds the lock, checks that its open file
//! is still the file the path names (same device and inode) and starts over if not. This is
//! what makes removal race-free: at any instant at most one process holds a lock on the file
//! the path names.
//!
//! `flock` locks belong to the open file description: a second [`FilePidLock`] on the same
//! path *in the same process* conflicts too, and so does a second `acquire` on one lock.
//!
//! # Sharing a PID file with go-process
//! go-process takes no lock: it reads the pid in the file, asks whether that process exists
//! (`kill(pid, 0)`), and if not writes its own pid in place; it removes the file on release.
//! So, once it holds the lock, [`FilePidLock::acquire`] also reads the file: when it names a
//! live process other than this one that already existed when the file was last written (its
//! start time, from the platform, is no later than the file's modification time, give or take
//! a second for clock granularity), that process is a holder and the acquire fails with
//! [`Error::AlreadyRunning`] naming its pid. A pid that started after the write is a reused
//! pid: the file is stale and is taken over, as a file left by a dead process is. Where the
//! platform does not tell start times, a live pid counts as a holder, as in go-process.
//! The other way round, go-process sees our pid in the file, alive, and refuses.
//!
//! # Caveats
//! `flock` is advisory: a process that writes the file without locking it is not stopped,
//! and go-process's read-then-write is not atomic: a Go daemon and ours starting at the same
//! instant may both proceed. A wall-clock step of more than a second between the file's last
//! write and an acquire may misjudge a go-process holder (a step forward makes it look
//! stale). On network file systems `flock` may be emulated or local to one host.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use shaku::{Component, Interface};

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::sys;

/// How many times [`FilePidLock::acquire`] starts over when the file it locked was removed or
/// replaced under it. Each round needs a competitor to release in between, so this is never
/// reached in practice.
const MAX_ROUNDS: usize = 64;

/// How long a refused acquirer waits for the holder's pid to appear when the file is empty or
/// invalid: the holder may be between truncating the file and writing its pid.
const HOLDER_PID_WAIT: Duration = Duration::from_millis(50);

/// How often a refused acquirer re-reads the file while waiting for the holder's pid.
const HOLDER_PID_POLL: Duration = Duration::from_millis(1);

/// How much later than the file's modification time a process may have started and still
/// count as the one that wrote it: start times are rounded down to a clock tick, modification
/// times come from a coarse clock, and the wall clock may be slewed.
const START_SLACK: Duration = Duration::from_secs(1);

/// Single-instance enforcement: at most one holder at a time, across processes.
///
/// Resolve it from [`ProcessModule`](crate::ProcessModule) as `Arc<dyn PidLock>`, or use a
/// [`FilePidLock`] directly. [`Daemon`](crate::Daemon) acquires it first on start and releases
/// it last on stop. [`Lifecycle::on_stop`] releases it.
///
/// ```
/// use core_process::{FilePidLock, PidLock};
///
/// # fn main() -> core_process::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("run/app.pid");
/// let lock = FilePidLock::new(&path);
/// lock.acquire()?;
/// assert!(lock.is_locked());
///
/// // A second holder, in this process or another, is refused and told who holds it.
/// let err = FilePidLock::new(&path).acquire().unwrap_err();
/// assert!(err.to_string().contains("already running"));
///
/// lock.release()?;
/// assert!(!path.exists());
/// # Ok(()) }
/// ```
pub trait PidLock: Lifecycle + Interface {
    /// Takes the lock and records this process's pid in it.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`] naming the holder's pid and the path when another holder —
    /// in this process or another — has it (this lock included: acquiring twice is an error),
    /// or, for [`FilePidLock`], when the file names a live process other than this one that
    /// already existed when the file was last written (a go-process holder, which takes no
    /// lock: see the [module documentation](self)).
    /// [`FilePidLock`] names pid 0 only when the holder has not written its pid within about
    /// 50 ms (it re-reads an empty or invalid file until then, blocking the caller meanwhile);
    /// [`Error::NotConfigured`] when no path is configured; [`Error::Io`] naming the path when the
    /// file or its directory cannot be created or written.
    fn acquire(&self) -> Result<()>;

    /// Gives the lock up and removes the file. Does nothing when the lock is not held.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when the file cannot be removed (the lock is released
    /// all the same).
    fn release(&self) -> Result<()>;

    /// Whether this lock is held (by this object).
    fn is_locked(&self) -> bool;

    /// The lock file, or `None` when none is configured (then [`Daemon`](crate::Daemon)
    /// skips the lock step).
    fn path(&self) -> Option<PathBuf>;
}

/// What the PID file at `path` says: `Some((pid, alive))`, or `None` when the file is missing,
/// unreadable or does not hold a positive decimal pid (surrounding whitespace is allowed).
///
/// `alive` says whether a process with that pid exists now. A PID file records no start time,
/// so a reused pid reads as alive; [`FilePidLock`] does not rely on this (its lock is the
/// truth, and it compares the pid's start time with the file's modification time).
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("app.pid");
/// assert_eq!(core_process::read_pid(&path), None);
/// std::fs::write(&path, "999999999").unwrap();
/// assert_eq!(core_process::read_pid(&path), Some((999_999_999, false)));
/// ```
pub fn read_pid(path: impl AsRef<Path>) -> Option<(u32, bool)> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid = parse_pid(&text)?;
    Some((pid, sys::pid_alive(pid)))
}

fn parse_pid(text: &str) -> Option<u32> {
    text.trim().parse::<u32>().ok().filter(|&pid| pid > 0)
}

/// [`PidLock`] on an exclusive advisory lock (`flock`, through fs4) on the PID file itself.
/// See the [module documentation](self) for the design.
///
/// As a shaku component its parameter is `path` (default `None`: no lock file). Dropping a
/// `FilePidLock` releases its lock as [`PidLock::release`] does, removing the file: a file
/// left behind naming this (live) process would make a go-process-style reader, and our own
/// acquire, take it as held. A process that dies leaves its file behind, harmlessly: its lock
/// dies with it, and its pid is dead (or reused, by a process started later).
#[derive(Component)]
#[shaku(interface = PidLock)]
pub struct FilePidLock {
    /// The PID file (default `None`: no lock; [`PidLock::acquire`] then fails).
    #[shaku(default = None)]
    path: Option<PathBuf>,
    #[shaku(force_default)]
    held: Mutex<Option<File>>,
}

impl FilePidLock {
    /// A lock on the PID file `path` (its parent directories are created on acquire).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FilePidLock {
            path: Some(path.into()),
            held: Mutex::new(None),
        }
    }

    fn held(&self) -> MutexGuard<'_, Option<File>> {
        crate::sync::lock(&self.held)
    }

    fn configured_path(&self) -> Result<&Path> {
        self.path.as_deref().ok_or_else(|| Error::NotConfigured {
            component: "FilePidLock".into(),
            setting: "PID file path",
        })
    }
}

impl std::fmt::Debug for FilePidLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePidLock")
            .field("path", &self.path)
            .field("locked", &self.is_locked())
            .finish()
    }
}

/// The pid in the PID file `file` (read from its start), if it holds a valid one.
fn read_holder_pid(file: &mut File) -> Option<u32> {
    file.seek(SeekFrom::Start(0)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    parse_pid(&text)
}

/// Whether a live process that started at `started` can have written a file last modified at
/// `written` (within [`START_SLACK`]). When either time is unknown, it is taken to have: a
/// live pid holds, as go-process has it.
fn started_before_write(started: Option<SystemTime>, written: Option<SystemTime>) -> bool {
    match (started, written) {
        (Some(started), Some(written)) => started <= written + START_SLACK,
        _ => true,
    }
}

/// The pid of a process that holds the PID file `file` without a lock, as go-process does: a
/// live process other than this one, named in the file, that already ran when the file was
/// last written. A pid that started after the write was reused: the file is stale.
fn unlocked_holder(file: &mut File) -> Option<u32> {
    let pid = read_holder_pid(file)?;
    if pid == sys::current_pid() || !sys::pid_alive(pid) {
        return None;
    }
    let written = file.metadata().and_then(|m| m.modified()).ok();
    started_before_write(sys::process_started_at(pid), written).then_some(pid)
}

/// Calls `read` until it yields a pid, every [`HOLDER_PID_POLL`] for at most `wait`; 0 when it
/// never does. A holder writes its pid just after locking, so an empty file seen by a refused
/// acquirer is almost always a write about to happen, not a missing pid.
fn poll_holder_pid(mut read: impl FnMut() -> Option<u32>, wait: Duration) -> u32 {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(pid) = read() {
            return pid;
        }
        if Instant::now() >= deadline {
            return 0;
        }
        std::thread::sleep(HOLDER_PID_POLL);
    }
}

/// Opens `path` and takes its lock for this process, retrying when the file is removed or
/// replaced under us.
fn lock_file(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io("creating the directory of PID file", path, e))?;
    }
    for _ in 0..MAX_ROUNDS {
        let mut file = sys::open_options(0o644)
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io("opening PID file", path, e))?;
        let locked =
            sys::try_lock_exclusive(&file).map_err(|e| Error::io("locking PID file", path, e))?;
        if !locked {
            return Err(Error::AlreadyRunning {
                pid: poll_holder_pid(|| read_holder_pid(&mut file), HOLDER_PID_WAIT),
                path: path.to_path_buf(),
            });
        }
        if !sys::is_same_file(&file, path) {
            // The holder we waited for removed (or someone replaced) the file after we opened
            // it: our lock is on an inode nobody will look at. Start over on the current one.
            continue;
        }
        if let Some(pid) = unlocked_holder(&mut file) {
            // Our lock is dropped with `file`.
            return Err(Error::AlreadyRunning {
                pid,
                path: path.to_path_buf(),
            });
        }
        let pid = sys::current_pid().to_string();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(|e| Error::io("writing PID file", path, e))?;
        return Ok(file);
    }
    Err(Error::io(
        "locking PID file",
        path,
        std::io::Error::other("the file kept being replaced while it was being locked"),
    ))
}

#[async_trait]
impl Lifecycle for FilePidLock {
    /// Releases the lock (see [`PidLock::release`]). Starting does nothing: the
    /// [`Daemon`](crate::Daemon) acquires the lock.
    async fn on_stop(&self) -> Result<()> {
        self.release()
    }
}

impl Drop for FilePidLock {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "releasing a dropped PID lock");
        }
    }
}

impl PidLock for FilePidLock {
    fn acquire(&self) -> Result<()> {
        let path = self.configured_path()?;
        let mut held = self.held();
        if held.is_some() {
            return Err(Error::AlreadyRunning {
                pid: sys::current_pid(),
                path: path.to_path_buf(),
            });
        }
        *held = Some(lock_file(path)?);
        tracing::debug!(path = %path.display(), pid = sys::current_pid(), "PID lock acquired");
        Ok(())
    }

    fn release(&self) -> Result<()> {
        let Some(file) = self.held().take() else {
            return Ok(());
        };
        let path = self.configured_path()?;
        // Remove while still holding the lock: a competitor that opened the old file sees, once
        // it gets the lock, that the path no longer names its file, and starts over.
        let removed = if sys::is_same_file(&file, path) {
            sys::remove_if_present(path)
                .map(drop)
                .map_err(|e| Error::io("removing PID file", path, e))
        } else {
            // Someone removed or replaced our file: whatever is there now is not ours.
            Ok(())
        };
        let _ = sys::unlock(&file);
        drop(file);
        tracing::debug!(path = %path.display(), "PID lock released");
        removed
    }

    fn is_locked(&self) -> bool {
        self.held().is_some()
    }

    fn path(&self) -> Option<PathBuf> {
        self.path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pids() {
        assert_eq!(parse_pid("42"), Some(42));
        assert_eq!(parse_pid(" 42\n"), Some(42));
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid("-5"), None);
        assert_eq!(parse_pid("abc"), None);
        assert_eq!(parse_pid("4294967296"), None);
    }

    #[test]
    fn read_pid_tells_the_pid_and_whether_it_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pid");
        assert_eq!(read_pid(&path), None);
        std::fs::write(&path, format!("{}\n", sys::current_pid())).unwrap();
        assert_eq!(read_pid(&path), Some((sys::current_pid(), true)));
        std::fs::write(&path, "999999999").unwrap();
        assert_eq!(read_pid(&path), Some((999_999_999, false)));
        std::fs::write(&path, "0").unwrap();
        assert_eq!(read_pid(&path), None);
    }

    #[test]
    fn the_lock_creates_its_directories_and_tells_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/app/a.pid");
        let lock = FilePidLock::new(&path);
        assert_eq!(lock.path(), Some(path.clone()));
        lock.acquire().unwrap();
        assert_eq!(read_pid(&path), Some((sys::current_pid(), true)));
        lock.release().unwrap();
    }

    #[test]
    fn a_refused_acquirer_waits_for_the_holder_to_write_its_pid() {
        let mut reads = 0;
        let pid = poll_holder_pid(
            || {
                reads += 1;
                (reads == 4).then_some(42)
            },
            Duration::from_secs(10),
        );
        assert_eq!((pid, reads), (42, 4));
    }

    #[test]
    fn a_pid_that_never_appears_is_0_after_a_bounded_wait() {
        let started = Instant::now();
        let mut reads = 0;
        let pid = poll_holder_pid(
            || {
                reads += 1;
                None
            },
            Duration::from_millis(20),
        );
        assert_eq!(pid, 0);
        assert!(reads > 1, "{reads}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(20), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_competitor_seeing_an_empty_file_rereads_it_before_reporting_pid_0() {
        // The holder looks frozen between truncating the file and writing its pid: the
        // competitor keeps reading for a bounded time before it gives up and reports 0.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pid");
        let holder = FilePidLock::new(&path);
        holder.acquire().unwrap();
        std::fs::write(&path, "").unwrap();
        let started = Instant::now();
        match FilePidLock::new(&path).acquire() {
            Err(Error::AlreadyRunning { pid: 0, path: p }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
        let took = started.elapsed();
        assert!(took >= HOLDER_PID_WAIT, "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        // Once the pid is there, it is read at once.
        std::fs::write(&path, "4242").unwrap();
        match FilePidLock::new(&path).acquire() {
            Err(Error::AlreadyRunning { pid, .. }) => assert_eq!(pid, 4242),
            other => panic!("{other:?}"),
        }
        holder.release().unwrap();
    }

    #[test]
    fn a_live_pid_holds_when_it_started_before_the_last_write() {
        let t = SystemTime::now();
        let tick = Duration::from_nanos(1);
        assert!(started_before_write(Some(t), Some(t)));
        assert!(started_before_write(Some(t - START_SLACK), Some(t)));
        // Within the slack: start times are rounded down, modification times are coarse.
        assert!(started_before_write(Some(t + START_SLACK), Some(t)));
        // Started after the write: a reused pid.
        assert!(!started_before_write(Some(t + START_SLACK + tick), Some(t)));
        // Unknown: a live pid holds.
        assert!(started_before_write(None, Some(t)));
        assert!(started_before_write(Some(t), None));
        assert!(started_before_write(None, None));
    }

    #[tokio::test]
    async fn on_stop_releases_the_lock_and_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pid");
        let lock = FilePidLock::new(&path);
        assert_eq!(lock.name(), "FilePidLock");
        lock.acquire().unwrap();
        assert_eq!(
            format!("{lock:?}"),
            format!("FilePidLock {{ path: Some({path:?}), locked: true }}")
        );
        lock.on_start().await.unwrap();
        assert!(lock.is_locked(), "starting does nothing");
        lock.on_stop().await.unwrap();
        assert!(!lock.is_locked());
        assert!(!path.exists());
        FilePidLock::new(&path).acquire().unwrap();
    }

    #[test]
    fn no_path_is_a_state_error() {
        let lock = FilePidLock {
            path: None,
            held: Mutex::new(None),
        };
        let err = lock.acquire().unwrap_err();
        assert!(matches!(err, Error::NotConfigured { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "FilePidLock: no PID file path is configured"
        );
        assert!(lock.path().is_none());
        lock.release().unwrap();
    }

    #[test]
    fn same_lock_twice_is_already_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pid");
        let lock = FilePidLock::new(&path);
        lock.acquire().unwrap();
        match lock.acquire() {
            Err(Error::AlreadyRunning { pid, path: p }) => {
                assert_eq!(pid, sys::current_pid());
                assert_eq!(p, path);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            sys::current_pid().to_string()
        );
        lock.release().unwrap();
        lock.release().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_file_removed_under_a_waiter_is_not_trusted() {
        // Simulates the race the design guards against: B opens the file, A releases (removes
        // it), B locks the orphaned inode and must notice.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pid");
        let a = FilePidLock::new(&path);
        a.acquire().unwrap();
        let stale = File::open(&path).unwrap();
        a.release().unwrap();
        assert!(sys::try_lock_exclusive(&stale).unwrap());
        assert!(!sys::is_same_file(&stale, &path));
        // A fresh acquire still succeeds, on a new file.
        let b = FilePidLock::new(&path);
        b.acquire().unwrap();
        assert!(path.exists());
        b.release().unwrap();
    }
}

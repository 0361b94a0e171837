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
//! # Caveats
//! `flock` is advisory: a process that writes the file without locking it is not stopped.
//! On network file systems `flock` may be emulated or local to one host.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use shaku::{Component, Interface};

use crate::error::{Error, Result};
use crate::module::Lifecycle;
use crate::sys;

/// How many times [`FilePidLock::acquire`] starts over when the file it locked was removed or
/// replaced under it. Each round needs a competitor to release in between, so this is never
/// reached in practice.
const MAX_ROUNDS: usize = 64;

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
    /// in this process or another — has it (this lock included: acquiring twice is an error);
    /// [`Error::State`] when no path is configured; [`Error::Io`] naming the path when the
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
/// so a reused pid reads as alive; [`FilePidLock`] does not rely on this (its lock is the truth).
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
/// As a shaku component its parameter is `path` (default `None`: no lock file). The lock is
/// released when the `FilePidLock` is dropped (the file is then left behind, harmlessly: a
/// file held by nobody does not block).
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
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn configured_path(&self) -> Result<&Path> {
        self.path
            .as_deref()
            .ok_or_else(|| Error::state("FilePidLock", "no PID file path is configured"))
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
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(Error::AlreadyRunning {
                pid: parse_pid(&text).unwrap_or(0),
                path: path.to_path_buf(),
            });
        }
        if !sys::is_same_file(&file, path) {
            // The holder we waited for removed (or someone replaced) the file after we opened
            // it: our lock is on an inode nobody will look at. Start over on the current one.
            continue;
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
    fn name(&self) -> &str {
        "FilePidLock"
    }

    /// Releases the lock (see [`PidLock::release`]). Starting does nothing: the
    /// [`Daemon`](crate::Daemon) acquires the lock.
    async fn on_stop(&self) -> Result<()> {
        self.release()
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
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("removing PID file", path, e)),
            }
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
    fn no_path_is_a_state_error() {
        let lock = FilePidLock {
            path: None,
            held: Mutex::new(None),
        };
        assert!(matches!(lock.acquire(), Err(Error::State { .. })));
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

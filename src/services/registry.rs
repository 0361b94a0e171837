//! [`Registry`]: where running daemons are recorded; [`FileRegistry`], one JSON file per daemon,
//! shared with go-process; [`DaemonEntry`], what is recorded.
//!
//! # Files
//! Each daemon is one file, `{code}-{daemon}.json`, in a directory that defaults to
//! `~/.core/daemons/`. The JSON is what go-process's `encoding/json` writes for its
//! `DaemonEntry` — two-space indentation, fields `code`, `daemon`, `pid`, `health`, `project`,
//! `binary` (the last three left out when empty) and `started` (RFC 3339) — so Go and Rust
//! daemons list each other. We add one field, `pid_start_ticks`: the start time of the
//! process `pid` where the platform tells it (Linux), which guards against a reused pid; Go
//! ignores it, and entries without it (Go's) fall back to a pid liveness check.
//!
//! # Consistency
//! - Writes are atomic: a uniquely named temp file in the same directory (never ending in
//!   `.json`, so nobody lists it), flushed to disk, then renamed over the entry. A reader sees
//!   the old entry or the new one, never a torn one.
//! - [`get`](Registry::get) and [`list`](Registry::list) prune entries whose process is dead.
//!   A pruned file is removed only under the directory's lock file (`.registry.lock`), after
//!   re-reading it and finding the very bytes that were judged dead; [`register`](Registry::register)
//!   renames under the same lock. So a fresh registration is never deleted by a reader that
//!   judged its predecessor.
//! - A file that is empty or does not parse is read again every millisecond for up to 50 ms
//!   before it is given up on: go-process rewrites its files in place (truncate, then write),
//!   so a reader may meet one between the two. [`list`](Registry::list) re-reads all such
//!   files together, so one call waits 50 ms at most however many there are. A file that
//!   still does not parse (damage) is skipped by `list` with a warning, reported by `get`, and
//!   **never deleted**. It does not hide the other entries.
//! - [`register`](Registry::register) rejects an entry with pid 0 ([`Error::InvalidEntry`]):
//!   it names no process, so the next reader would prune it at once.
//! - [`unregister`](Registry::unregister) removes only an entry that is ours: one that names
//!   the same process (pid and start time) as the entry this registry last registered under
//!   that name, or, when it registered none, this process. It reads the file under the lock
//!   and leaves anything else in place, so an entry that a newer process wrote under the same
//!   name survives.
//!
//! # Caveats
//! go-process takes no lock: a Go writer may rewrite a file between our re-read and our
//! removal of it (a prune or an unregister). Names are joined as `{code}-{daemon}`, so code
//! `a-b` with daemon `c` and code `a` with daemon `b-c` share a file, as in Go.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shaku::{Component, Interface};

use crate::error::{Error, Result};
use crate::sys;
use crate::types::Signal;

/// The name of the lock file that serialises writers and pruners in a registry directory.
const LOCK_FILE: &str = ".registry.lock";

/// How long a reader keeps re-reading a file that is empty or does not parse: a go-process
/// writer between truncating the file and writing it.
const REREAD_WAIT: Duration = Duration::from_millis(50);

/// How often a reader re-reads such a file meanwhile.
const REREAD_POLL: Duration = Duration::from_millis(1);

/// One running daemon, as recorded in a [`Registry`].
///
/// Serialises to the JSON go-process writes (see the [module documentation](self)).
///
/// ```
/// use core_process::DaemonEntry;
///
/// let entry = DaemonEntry::new("myapp", "server");
/// let json = serde_json::to_string(&entry).unwrap();
/// assert!(json.starts_with(r#"{"code":"myapp","daemon":"server","pid":0,"started":"#));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonEntry {
    /// The application's code name (`myapp`).
    pub code: String,
    /// The daemon's name within the application (`server`).
    pub daemon: String,
    /// The daemon's process id.
    pub pid: u32,
    /// The address of its health server (`127.0.0.1:9090`), empty when it has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health: String,
    /// The project it serves, empty when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    /// The path of its executable, empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub binary: String,
    /// When it started. [`Registry::register`] sets it to now when it is unset (the Unix
    /// epoch, as [`DaemonEntry::new`] leaves it).
    #[serde(with = "crate::types::rfc3339")]
    pub started: SystemTime,
    /// The start time of process `pid` in clock ticks since boot, where the platform tells it:
    /// a live pid with another start time is a reused pid, and the entry is dead.
    /// [`FileRegistry`] fills it in on register. Absent from Go's entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start_ticks: Option<u64>,
    /// The address of its control API (`127.0.0.1:9091`, feature `control`), empty when it
    /// has none. Absent from Go's entries; go-process ignores it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub control: String,
}

impl DaemonEntry {
    /// Sets `started` to now when it was left unset (at or before the epoch), as registering
    /// does.
    pub(crate) fn fill_started(&mut self) {
        if self.started <= SystemTime::UNIX_EPOCH {
            self.started = SystemTime::now();
        }
    }

    /// An entry for daemon `daemon` of application `code`, every other field empty (pid 0,
    /// `started` unset). Set `pid` before [`Registry::register`], which rejects pid 0;
    /// [`Daemon`](crate::Daemon) sets it to its own.
    pub fn new(code: impl Into<String>, daemon: impl Into<String>) -> Self {
        DaemonEntry {
            code: code.into(),
            daemon: daemon.into(),
            pid: 0,
            health: String::new(),
            project: String::new(),
            binary: String::new(),
            started: SystemTime::UNIX_EPOCH,
            pid_start_ticks: None,
            control: String::new(),
        }
    }

    /// The file name of this entry: `{code}-{daemon}.json`.
    ///
    /// # Errors
    /// [`Error::InvalidName`] when the code or the daemon name is rejected by
    /// [`validate_name`].
    pub fn file_name(&self) -> Result<String> {
        entry_file_name(&self.code, &self.daemon)
    }

    /// Checks that the entry can be registered, and returns its file name.
    ///
    /// # Errors
    /// [`Error::InvalidName`] as [`file_name`](Self::file_name); [`Error::InvalidEntry`] when
    /// the pid is 0.
    pub(crate) fn validate(&self) -> Result<String> {
        let name = self.file_name()?;
        if self.pid == 0 {
            return Err(Error::InvalidEntry {
                code: self.code.clone(),
                daemon: self.daemon.clone(),
                reason: "its pid is 0 (unset); set it to the daemon's pid",
            });
        }
        Ok(name)
    }

    /// Whether the process this entry names is alive: its pid exists and, when the entry
    /// records a start time and the platform tells the pid's, the two agree.
    pub fn is_alive(&self) -> bool {
        if !sys::pid_alive(self.pid) {
            return false;
        }
        match (self.pid_start_ticks, sys::process_start_time(self.pid)) {
            (Some(recorded), Some(now)) => recorded == now,
            _ => true,
        }
    }

    /// Sends `signal` to the daemon this entry names, after checking that its pid is still
    /// that daemon: alive and, where the entry records a start time, with the same start
    /// time (a reused pid is never signalled). For operators' tools (`core-process stop`).
    ///
    /// # Errors
    /// [`Error::InvalidEntry`] naming the entry when the pid is 0, gone, or now another
    /// process's (its start time differs from the recorded one); [`Error::Signal`] when the
    /// signal cannot be sent.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let refuse = |reason| Error::InvalidEntry {
            code: self.code.clone(),
            daemon: self.daemon.clone(),
            reason,
        };
        if self.pid == 0 {
            return Err(refuse("its pid is 0 (unset)"));
        }
        if !sys::pid_alive(self.pid) {
            return Err(refuse("its process is gone"));
        }
        if let (Some(recorded), Some(now)) =
            (self.pid_start_ticks, sys::process_start_time(self.pid))
            && recorded != now
        {
            return Err(refuse(
                "its pid now belongs to another process (the start time differs): not signalled",
            ));
        }
        sys::send_signal(self.pid, signal.number(), false).map_err(|source| Error::Signal {
            signal,
            id: format!("{}/{}", self.code, self.daemon),
            pid: self.pid,
            source,
        })
    }

    /// The entry as [`FileRegistry`] writes it: Go's layout (two-space indentation, no
    /// trailing newline).
    ///
    /// # Errors
    /// [`Error::Json`] naming `path` if serialisation fails (it does not for this type).
    fn to_file_bytes(&self, path: &Path) -> Result<Vec<u8>> {
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        Ok(go_escape(&json).into_bytes())
    }
}

/// Escapes what Go's `encoding/json` escapes and serde_json does not: `<`, `>`, `&`, U+2028
/// and U+2029. These never occur in JSON outside strings, so replacing them everywhere is
/// exact.
fn go_escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Checks a daemon code or name before it becomes part of a file name.
///
/// # Errors
/// [`Error::InvalidName`] naming the value when it is empty, contains a path separator (`/`
/// or `\`), `..` or a NUL byte. `what` says which name it is (`"daemon code"`).
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.contains(['/', '\\']) {
        "it contains a path separator"
    } else if name.contains("..") {
        "it contains `..`"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        what,
        name: name.escape_debug().to_string(),
        reason,
    })
}

fn entry_file_name(code: &str, daemon: &str) -> Result<String> {
    validate_name("daemon code", code)?;
    validate_name("daemon name", daemon)?;
    Ok(format!("{code}-{daemon}.json"))
}

/// Records the daemons that run on this machine.
///
/// Resolve it from [`ProcessModule`](crate::ProcessModule) as `Arc<dyn Registry>`; swap in
/// [`MemoryRegistry`](crate::testing::MemoryRegistry) (feature `testing`) in tests.
///
/// ```
/// use core_process::{DaemonEntry, FileRegistry, Registry};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> core_process::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let registry = FileRegistry::new(dir.path());
///
/// let mut entry = DaemonEntry::new("myapp", "server");
/// entry.pid = std::process::id();
/// registry.register(entry).await?;
///
/// let found = registry.get("myapp", "server").await?.expect("registered");
/// assert_eq!(found.pid, std::process::id());
/// assert_eq!(registry.list().await?.len(), 1);
///
/// registry.unregister("myapp", "server").await?;
/// assert!(registry.get("myapp", "server").await?.is_none());
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Registry: Interface {
    /// Records `entry`, replacing any entry with the same code and daemon name. Implementations
    /// set `started` to now when it is unset.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a rejected code or name; [`Error::InvalidEntry`] for an entry
    /// with pid 0 (nothing is written: a reader would prune it at once); [`Error::Io`] naming
    /// the path when the directory or file cannot be written.
    async fn register(&self, entry: DaemonEntry) -> Result<()>;

    /// Removes the entry of `code`/`daemon` if it is ours: if it names the same process (pid
    /// and start time) as the entry this registry last registered under that name, or, when
    /// it registered none, this process. An entry that is missing, names another process (a
    /// newer daemon under the same name) or does not parse is left alone, and that is not an
    /// error: our entry is not there. Either way the registry forgets what it registered under
    /// that name.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Io`] naming the path when it cannot be read or removed
    /// (a directory of that name, a registry path that is not a directory).
    async fn unregister(&self, code: &str, daemon: &str) -> Result<()>;

    /// The entry of `code`/`daemon` if its process is alive (a dead one is pruned).
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Json`] naming the path when the file does not parse;
    /// [`Error::Io`] when it cannot be read.
    async fn get(&self, code: &str, daemon: &str) -> Result<Option<DaemonEntry>>;

    /// Every entry whose process is alive, sorted by code then daemon name; dead ones are
    /// pruned, and files that cannot be read or do not parse are skipped (and logged).
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory when it exists but cannot be read.
    async fn list(&self) -> Result<Vec<DaemonEntry>>;

    /// The directory its entries are files in, when they are (a [`FileRegistry`]'s
    /// [`dir`](FileRegistry::dir)): where files that belong beside an entry go, such as the
    /// control API's token ([`token_path`](crate::services::control::token_path)). The
    /// default, for registries that keep no files, is `None`.
    fn entry_dir(&self) -> Option<PathBuf> {
        None
    }

    /// Whether it uses a default location because none was configured (a [`FileRegistry`]
    /// built without a `dir`: `~/.core/daemons/`, shared with every other daemon). A daemon
    /// asked to register logs a warning at start when this is true: a directory set on a
    /// host's module builder is silently ignored (see [`module`](crate::module)). The default
    /// is `false`.
    fn uses_default_dir(&self) -> bool {
        false
    }
}

/// [`Registry`] on one JSON file per daemon, compatible with go-process. See the [module
/// documentation](self) for the file format and the consistency rules.
///
/// As a shaku component its parameter is `dir` (default `None`: `~/.core/daemons/`, or the
/// temp directory's `.core/daemons` when there is no home, as in Go). Nothing touches the
/// disk before the first call.
#[derive(Component, Default)]
#[shaku(interface = Registry)]
pub struct FileRegistry {
    /// The registry directory (default `None`: `~/.core/daemons/`).
    #[shaku(default = None)]
    dir: Option<PathBuf>,
    /// The process each file name was last registered for through this registry: what
    /// [`Registry::unregister`] may remove.
    #[shaku(force_default)]
    registered: Arc<Mutex<HashMap<String, Owner>>>,
}

/// The process an entry names: its pid and, where known, that pid's start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    pid: u32,
    start_ticks: Option<u64>,
}

impl Owner {
    fn of(entry: &DaemonEntry) -> Owner {
        Owner {
            pid: entry.pid,
            start_ticks: entry.pid_start_ticks,
        }
    }

    fn current() -> Owner {
        let pid = sys::current_pid();
        Owner {
            pid,
            start_ticks: sys::process_start_time(pid),
        }
    }
}

impl FileRegistry {
    /// A registry in `dir` (created on the first register).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileRegistry {
            dir: Some(dir.into()),
            registered: Arc::default(),
        }
    }

    /// The registry shared with go-process: `~/.core/daemons/`.
    pub fn default_dir() -> PathBuf {
        sys::home_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join(".core")
            .join("daemons")
    }

    /// The directory this registry uses.
    pub fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(Self::default_dir)
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> Result<T> + Send + 'static,
    {
        let dir = self.dir();
        match tokio::task::spawn_blocking(move || f(&dir)).await {
            Ok(result) => result,
            Err(e) => Err(Error::io(
                "accessing registry",
                self.dir(),
                std::io::Error::other(e.to_string()),
            )),
        }
    }
}

impl std::fmt::Debug for FileRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRegistry")
            .field("dir", &self.dir())
            .finish()
    }
}

#[async_trait]
impl Registry for FileRegistry {
    fn entry_dir(&self) -> Option<PathBuf> {
        Some(self.dir())
    }

    fn uses_default_dir(&self) -> bool {
        self.dir.is_none()
    }

    async fn register(&self, mut entry: DaemonEntry) -> Result<()> {
        let name = entry.validate()?;
        entry.fill_started();
        if entry.pid_start_ticks.is_none() {
            entry.pid_start_ticks = sys::process_start_time(entry.pid);
        }
        let registered = self.registered.clone();
        self.blocking(move |dir| {
            create_dir(dir)?;
            let path = dir.join(&name);
            let bytes = entry.to_file_bytes(&path)?;
            let _guard = DirLock::take(dir)?;
            write_atomic(dir, &name, &bytes)?;
            // Recorded here, not by the caller: the write completes even if the caller's future
            // is dropped, and a later unregister must know the file is ours.
            crate::sync::lock(&registered).insert(name, Owner::of(&entry));
            tracing::debug!(path = %path.display(), pid = entry.pid, "daemon registered");
            Ok(())
        })
        .await
    }

    async fn unregister(&self, code: &str, daemon: &str) -> Result<()> {
        let name = entry_file_name(code, daemon)?;
        let registered = self.registered.clone();
        self.blocking(move |dir| {
            let ours = crate::sync::lock(&registered)
                .remove(&name)
                .unwrap_or_else(Owner::current);
            let path = dir.join(&name);
            match std::fs::symlink_metadata(&path) {
                Ok(_) => {}
                // No entry, or no registry directory at all.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io("reading registry entry", path, e)),
            }
            let _guard = DirLock::take(dir)?;
            let entry = match read_entry_patiently(&path) {
                Ok(Some((_, Ok(entry)))) => entry,
                Ok(Some((_, Err(e)))) => {
                    tracing::warn!(path = %path.display(), error = %e, "not unregistering a registry entry that does not parse: it is not ours");
                    return Ok(());
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(Error::io("reading registry entry", path, e)),
            };
            if Owner::of(&entry) != ours {
                tracing::debug!(path = %path.display(), pid = entry.pid, "not unregistering an entry of another process");
                return Ok(());
            }
            match sys::remove_if_present(&path) {
                Ok(removed) => {
                    tracing::debug!(path = %path.display(), removed, "daemon unregistered");
                    Ok(())
                }
                Err(e) => Err(Error::io("removing registry entry", path, e)),
            }
        })
        .await
    }

    async fn get(&self, code: &str, daemon: &str) -> Result<Option<DaemonEntry>> {
        let name = entry_file_name(code, daemon)?;
        self.blocking(move |dir| {
            let path = dir.join(&name);
            let (bytes, parsed) = match read_entry_patiently(&path) {
                Ok(Some(read)) => read,
                Ok(None) => return Ok(None),
                Err(e) => return Err(Error::io("reading registry entry", path, e)),
            };
            let entry = parsed.map_err(|e| Error::Json {
                path: path.clone(),
                source: Box::new(e),
            })?;
            if entry.is_alive() {
                return Ok(Some(entry));
            }
            prune(dir, &path, &bytes);
            Ok(None)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<DaemonEntry>> {
        self.blocking(|dir| {
            let read_dir = match std::fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(Error::io("listing registry", dir, e)),
            };
            let mut pending: Vec<PathBuf> = read_dir
                .filter_map(|item| item.ok().map(|item| item.path()))
                .filter(|path| path.extension() == Some(OsStr::new("json")))
                .collect();
            let mut deadline = None;
            let mut alive = Vec::new();
            loop {
                let mut unparsed = Vec::new();
                for path in pending {
                    match read_entry(&path) {
                        Ok(Some((bytes, Ok(entry)))) => {
                            if entry.is_alive() {
                                alive.push(entry);
                            } else {
                                prune(dir, &path, &bytes);
                            }
                        }
                        Ok(Some((_, Err(e)))) => unparsed.push((path, e)),
                        // Unregistered or pruned since the directory was read.
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "skipping unreadable registry entry");
                        }
                    }
                }
                if unparsed.is_empty() {
                    break;
                }
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + REREAD_WAIT);
                if Instant::now() >= deadline {
                    for (path, e) in unparsed {
                        tracing::warn!(path = %path.display(), error = %e, "skipping registry entry that does not parse");
                    }
                    break;
                }
                // Perhaps a Go writer between truncating and writing: read them all again.
                std::thread::sleep(REREAD_POLL);
                pending = unparsed.into_iter().map(|(path, _)| path).collect();
            }
            alive.sort_by(|a, b| (&a.code, &a.daemon).cmp(&(&b.code, &b.daemon)));
            Ok(alive)
        })
        .await
    }
}

/// What reading an entry file found: its bytes and what they parse to.
type EntryRead = (Vec<u8>, serde_json::Result<DaemonEntry>);

/// Reads and parses the entry file at `path` once; `None` when there is none.
fn read_entry(path: &Path) -> std::io::Result<Option<EntryRead>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let parsed = serde_json::from_slice(&bytes);
            Ok(Some((bytes, parsed)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// [`read_entry`], reading a file that is empty or does not parse again every
/// [`REREAD_POLL`] for up to [`REREAD_WAIT`] (a go-process writer may be between truncating
/// and writing it); then it is returned as it is.
fn read_entry_patiently(path: &Path) -> std::io::Result<Option<EntryRead>> {
    let mut deadline = None;
    loop {
        let read = read_entry(path)?;
        if !matches!(read, Some((_, Err(_)))) {
            return Ok(read);
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + REREAD_WAIT);
        if Instant::now() >= deadline {
            return Ok(read);
        }
        std::thread::sleep(REREAD_POLL);
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(dir)
        .map_err(|e| Error::io("creating registry directory", dir, e))
}

/// Writes `bytes` to `dir/name` atomically: a unique temp file in `dir`, synced, renamed.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        sys::current_pid(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let path = dir.join(name);
    let written = (|| {
        let mut file = sys::open_options(0o644)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("writing registry entry", path, e));
    }
    // Make the rename durable; not fatal if the platform refuses to sync a directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes the dead entry at `path` if it still holds exactly `judged` — under the directory
/// lock, so a registration that replaced it meanwhile survives. Failures are logged.
fn prune(dir: &Path, path: &Path, judged: &[u8]) {
    let _guard = match DirLock::take(dir) {
        Ok(guard) => guard,
        Err(e) => {
            tracing::warn!(error = %e, "not pruning: registry lock unavailable");
            return;
        }
    };
    match std::fs::read(path) {
        Ok(now) if now == judged => match sys::remove_if_present(path) {
            Ok(_) => tracing::debug!(path = %path.display(), "pruned dead registry entry"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot prune registry entry")
            }
        },
        // Replaced (a fresh registration) or already gone: leave it.
        _ => {}
    }
}

/// The registry directory's lock, held while a file is renamed into place or pruned.
struct DirLock(std::fs::File);

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = sys::open_options(0o644)
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("opening registry lock", &path, e))?;
        sys::lock_exclusive(&file).map_err(|e| Error::io("locking registry", &path, e))?;
        Ok(DirLock(file))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = sys::unlock(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_are_validated() {
        for bad in ["", "a/b", "..", "a..b", "a\\b", "a\0b"] {
            match validate_name("daemon code", bad) {
                Err(Error::InvalidName { what, .. }) => assert_eq!(what, "daemon code"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        for good in ["myapp", "my-app", "my.app", "app_1", ".hidden"] {
            validate_name("daemon code", good).unwrap();
        }
        assert_eq!(
            DaemonEntry::new("core", "agent").file_name().unwrap(),
            "core-agent.json"
        );
    }

    #[test]
    fn writes_gos_layout() {
        let mut entry = DaemonEntry::new("core", "agent");
        entry.pid = 4242;
        entry.health = "127.0.0.1:9090".into();
        entry.started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let bytes = entry.to_file_bytes(Path::new("x")).unwrap();
        // Exactly what Go's json.MarshalIndent(entry, "", "  ") writes for this entry in UTC.
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "{\n  \"code\": \"core\",\n  \"daemon\": \"agent\",\n  \"pid\": 4242,\n  \"health\": \"127.0.0.1:9090\",\n  \"started\": \"2026-01-01T00:00:00Z\"\n}"
        );
    }

    #[test]
    fn reads_gos_files_with_offsets_fractions_and_unknown_fields() {
        let go = r#"{
  "code": "core",
  "daemon": "agent",
  "pid": 77,
  "project": "lethean",
  "binary": "/usr/local/bin/core",
  "started": "2026-03-11T12:05:31.123456789+01:00",
  "future_field": {"x": 1}
}"#;
        let entry: DaemonEntry = serde_json::from_str(go).unwrap();
        assert_eq!(entry.pid, 77);
        assert_eq!(entry.health, "");
        assert_eq!(entry.project, "lethean");
        assert_eq!(entry.pid_start_ticks, None);
        let back = serde_json::to_value(&entry).unwrap();
        assert_eq!(back["started"], "2026-03-11T11:05:31.123456789Z");
        assert!(back.get("health").is_none());
    }

    #[test]
    fn escapes_html_characters_as_go_does() {
        let mut entry = DaemonEntry::new("a", "b");
        entry.project = "<R&D>\u{2028}".into();
        let text = String::from_utf8(entry.to_file_bytes(Path::new("x")).unwrap()).unwrap();
        assert!(
            text.contains(r#""project": "\u003cR\u0026D\u003e\u2028""#),
            "{text}"
        );
        let back: DaemonEntry = serde_json::from_str(&text).unwrap();
        assert_eq!(back.project, entry.project);
    }

    #[test]
    fn fractional_seconds_are_trimmed_as_go_does() {
        let mut entry = DaemonEntry::new("a", "b");
        entry.started = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["started"], "1970-01-01T00:00:01.5Z");
    }

    #[test]
    fn prune_removes_only_the_bytes_that_were_judged_dead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core-agent.json");
        // Judged dead as "old", replaced by a fresh registration since: kept.
        std::fs::write(&path, b"new").unwrap();
        prune(dir.path(), &path, b"old");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        // Still what was judged: removed.
        prune(dir.path(), &path, b"new");
        assert!(!path.exists());
        // Gone already: nothing to do.
        prune(dir.path(), &path, b"new");
        assert!(!path.exists());
        // No lock to be had (no directory): nothing is removed, nothing panics.
        let missing = dir.path().join("missing");
        prune(&missing, &missing.join("x.json"), b"");
    }

    #[test]
    fn the_default_dir_is_dot_core_daemons_under_home() {
        let dir = FileRegistry::default_dir();
        assert!(dir.ends_with(".core/daemons"), "{dir:?}");
        let base = sys::home_dir().unwrap_or_else(std::env::temp_dir);
        assert_eq!(dir, base.join(".core/daemons"));
        assert!(dir.is_absolute(), "{dir:?}");
        assert_eq!(FileRegistry::default().dir(), dir);
        assert_eq!(FileRegistry::new("/x/y").dir(), PathBuf::from("/x/y"));
        let debug = format!("{:?}", FileRegistry::new("/x/y"));
        assert_eq!(debug, r#"FileRegistry { dir: "/x/y" }"#);
    }

    #[test]
    fn pid_0_is_invalid_and_names_the_entry() {
        let mut entry = DaemonEntry::new("core", "agent");
        match entry.validate() {
            Err(Error::InvalidEntry { code, daemon, .. }) => {
                assert_eq!((code.as_str(), daemon.as_str()), ("core", "agent"));
            }
            other => panic!("{other:?}"),
        }
        entry.pid = 1;
        assert_eq!(entry.validate().unwrap(), "core-agent.json");
        entry.code = String::new();
        assert!(matches!(entry.validate(), Err(Error::InvalidName { .. })));
    }

    #[test]
    fn a_file_that_becomes_whole_while_being_reread_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("go-worker.json");
        // Truncated by a writer that writes it a few milliseconds later.
        std::fs::write(&path, b"").unwrap();
        let mut entry = DaemonEntry::new("go", "worker");
        entry.pid = 42;
        let bytes = entry.to_file_bytes(&path).unwrap();
        let began = Instant::now();
        let writer = {
            let (path, bytes) = (path.clone(), bytes.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                std::fs::write(path, bytes).unwrap();
                Instant::now()
            })
        };
        let read = read_entry_patiently(&path).unwrap();
        let returned = Instant::now();
        let written = writer.join().unwrap();
        let (got, parsed) = read.expect("the file is there");
        if got == bytes {
            assert_eq!(parsed.unwrap().pid, 42);
        } else {
            // Only a writer held up past the whole wait (a loaded machine) is missed.
            assert!(got.is_empty() && parsed.is_err());
            assert!(returned - began >= REREAD_WAIT, "{:?}", returned - began);
            assert!(written > returned);
        }
        assert!(
            read_entry_patiently(&dir.path().join("none.json"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_live_pid_with_another_start_time_is_dead() {
        let mut entry = DaemonEntry::new("a", "b");
        entry.pid = sys::current_pid();
        assert!(entry.is_alive());
        entry.pid_start_ticks = sys::process_start_time(entry.pid);
        assert!(entry.is_alive());
        if let Some(t) = entry.pid_start_ticks {
            entry.pid_start_ticks = Some(t + 1);
            assert!(!entry.is_alive());
        }
        entry.pid = 999_999_999;
        assert!(!entry.is_alive());
    }
}

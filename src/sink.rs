//! [`FileSink`]: appends output lines to a file, flushed per line, rotated by size with a
//! kept count of old files (supervisord's `stdout_logfile_maxbytes` / `stdout_logfile_backups`);
//! [`StepLogs`]: one such file per pipeline step.
//!
//! Rotation is done by the `file-rotate` crate: when the file has grown past
//! [`max_bytes`](SinkOptions::max_bytes), it is renamed `NAME.1` (the older ones shift to
//! `NAME.2`, ...), the oldest beyond [`backups`](SinkOptions::backups) is deleted, and a new
//! `NAME` is started. A rotation happens at a line boundary, before the line that would be
//! written past the limit, so a line is never split across files. `tail -F NAME` follows it live
//! across rotations (`tail -f` until the first rotation).
//!
//! ```
//! use core_process::{FileSink, SinkOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let sink = FileSink::open(dir.path().join("job.log"), SinkOptions::default())?;
//! sink.write_line("hello")?;
//! assert_eq!(std::fs::read_to_string(dir.path().join("job.log")).unwrap(), "hello\n");
//! # Ok::<(), core_process::Error>(())
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};

use crate::error::{Error, Result};
use crate::event::ProcessEvent;
use crate::services::event_bus::{RecvError, Subscription};
use crate::services::runner::PipelineEvent;
use crate::sync::lock;

/// The default size past which a sink's file is rotated: 50 MiB (supervisord's default).
pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;

/// The default number of rotated files kept: 10 (supervisord's default).
pub const DEFAULT_BACKUPS: usize = 10;

/// How a [`FileSink`] rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkOptions {
    /// Rotate once the file is larger than this many bytes; `0` never rotates. Default
    /// [`DEFAULT_MAX_BYTES`].
    pub max_bytes: u64,
    /// How many rotated files to keep (`NAME.1` the newest); `0` keeps none. Default
    /// [`DEFAULT_BACKUPS`].
    pub backups: usize,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            backups: DEFAULT_BACKUPS,
        }
    }
}

/// A file that output lines are appended to, each flushed as it is written, rotated by size.
/// Shareable: lines written from several tasks are whole lines, in the order written.
pub struct FileSink {
    path: PathBuf,
    file: Mutex<FileRotate<AppendCount>>,
}

impl FileSink {
    /// Opens `path` for appending (creating it and its parent directories).
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when the directory or the file cannot be created or
    /// opened.
    pub fn open(path: impl Into<PathBuf>, options: SinkOptions) -> Result<Self> {
        let path = path.into();
        // Done here so that failures are errors (the crate would panic or drop the lines).
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("creating the log directory", parent, e))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("opening the log file", &path, e))?;
        let limit = match usize::try_from(options.max_bytes) {
            Ok(0) => ContentLimit::None,
            Ok(n) => ContentLimit::BytesSurpassed(n),
            Err(_) => ContentLimit::None,
        };
        let file = FileRotate::new(
            &path,
            AppendCount::new(options.backups),
            limit,
            Compression::None,
            None,
        );
        Ok(FileSink {
            path,
            file: Mutex::new(file),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` and a newline, and flushes.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when the write, the flush or a rotation fails.
    pub fn write_line(&self, line: &str) -> Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let mut file = lock(&self.file);
        file.write_all(&buf)
            .and_then(|()| file.flush())
            .map_err(|e| Error::io("writing the log file", &self.path, e))
    }

    /// Writes every output line of `events` until the bus closes or, when `until_exit` names a
    /// process, until that process's `Exited`. Use with a subscription narrowed to one process
    /// ([`ProcessService::start_subscribed`](crate::ProcessService::start_subscribed)).
    ///
    /// # Errors
    /// The first write error ([`Error::Io`]).
    pub async fn follow(&self, mut events: Subscription, until_exit: Option<&str>) -> Result<()> {
        loop {
            match events.recv().await {
                Ok(ProcessEvent::Output { line, .. }) => self.write_line(&line)?,
                Ok(ProcessEvent::Exited { id, .. }) if Some(&*id) == until_exit => return Ok(()),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    self.write_line(&format!("[{n} lines missed]"))?;
                }
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    }
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.path)
            .finish()
    }
}

/// One [`FileSink`] per pipeline step, `DIR/STEP.log`, fed from [`PipelineEvent`]s: call
/// [`record`](Self::record) from [`PipelineOptions::on_event`](crate::PipelineOptions::on_event).
/// A step's file is opened at its `Started`; write errors are logged (`tracing` warning), once
/// per step.
///
/// ```
/// use std::sync::Arc;
/// use core_process::{PipelineOptions, SinkOptions, StepLogs};
///
/// let dir = tempfile::tempdir().unwrap();
/// let logs = Arc::new(StepLogs::new(dir.path(), SinkOptions::default()));
/// let opts = PipelineOptions::new().on_event(move |event| logs.record(event));
/// # let _ = opts;
/// ```
#[derive(Debug)]
pub struct StepLogs {
    dir: PathBuf,
    options: SinkOptions,
    /// The open sinks by step name; `None` once a step's file failed.
    sinks: Mutex<HashMap<String, Option<FileSink>>>,
}

impl StepLogs {
    /// Step logs in `dir`.
    pub fn new(dir: impl Into<PathBuf>, options: SinkOptions) -> Self {
        StepLogs {
            dir: dir.into(),
            options,
            sinks: Mutex::new(HashMap::new()),
        }
    }

    /// Where the lines of `step` go.
    pub fn path_of(&self, step: &str) -> PathBuf {
        self.dir.join(format!("{step}.log"))
    }

    /// Opens a step's file on its `Started`, appends its lines on `Output`.
    pub fn record(&self, event: &PipelineEvent) {
        match event {
            PipelineEvent::Started { spec, .. } => {
                let sink = FileSink::open(self.path_of(spec), self.options)
                    .inspect_err(|e| tracing::warn!(step = %spec, error = %e, "no step log"))
                    .ok();
                lock(&self.sinks).insert(spec.clone(), sink);
            }
            PipelineEvent::Output { spec, line, .. } => {
                let mut sinks = lock(&self.sinks);
                if let Some(slot) = sinks.get_mut(spec)
                    && let Some(sink) = slot
                    && let Err(e) = sink.write_line(line)
                {
                    tracing::warn!(step = %spec, error = %e, "step log failed; no more lines");
                    *slot = None;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_at_line_boundaries_and_keeps_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/p.log");
        let sink = FileSink::open(
            &path,
            SinkOptions {
                max_bytes: 20,
                backups: 2,
            },
        )
        .unwrap();
        for i in 0..20 {
            sink.write_line(&format!("line {i:02}")).unwrap(); // 8 bytes + newline
            // Flushed per line: visible to a reader at once.
            let now = std::fs::read_to_string(&path).unwrap();
            assert!(now.ends_with(&format!("line {i:02}\n")), "{now:?}");
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        // 3 lines (27 bytes) go past 20: each file holds 3 whole lines.
        assert_eq!(read(&path), "line 18\nline 19\n");
        assert_eq!(
            read(&dir.path().join("logs/p.log.1")),
            "line 15\nline 16\nline 17\n"
        );
        assert_eq!(
            read(&dir.path().join("logs/p.log.2")),
            "line 12\nline 13\nline 14\n"
        );
        assert!(!dir.path().join("logs/p.log.3").exists());
    }

    #[test]
    fn an_unopenable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err =
            FileSink::open(file.join("under-a-file.log"), SinkOptions::default()).unwrap_err();
        assert!(matches!(&err, Error::Io { .. }), "{err}");
        assert!(
            err.to_string().contains("under-a-file") || err.to_string().contains("file"),
            "{err}"
        );
    }

    #[test]
    fn appends_to_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "old\n").unwrap();
        let sink = FileSink::open(&path, SinkOptions::default()).unwrap();
        sink.write_line("new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\nnew\n");
    }
}

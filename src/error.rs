//! The crate's one error type.
//!
//! Every variant names what it concerns — the command, the process id, the pid, the path or
//! the address — so a log line is enough to act on. The type is `Send + Sync + 'static`.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::types::Signal;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `core_process`.
///
/// The enum is `#[non_exhaustive]`: match the variants you handle and keep a fallback arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options given for a command were rejected before anything was spawned.
    #[error("invalid options for command `{command}`: {reason}")]
    InvalidOptions {
        /// The command as given.
        command: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The program could not be found (neither as a path nor on `PATH`).
    #[error("command not found: `{command}`")]
    CommandNotFound {
        /// The program as given.
        command: String,
    },

    /// The working directory given for a command does not exist or is not a directory.
    #[error("working directory {} for command `{command}` does not exist or is not a directory", dir.display())]
    WorkingDirectory {
        /// The command as given.
        command: String,
        /// The directory that was asked for.
        dir: PathBuf,
    },

    /// The operating system refused to start the command.
    #[error("failed to start `{command}`: {source}")]
    Spawn {
        /// The command as given.
        command: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// No process with this id is known to the service.
    #[error("no process with id `{id}`")]
    ProcessNotFound {
        /// The id that was asked for.
        id: String,
    },

    /// The operation needs a running process, and this one has finished.
    #[error("process `{id}` (pid {pid}) is not running")]
    NotRunning {
        /// The process id.
        id: String,
        /// Its OS pid (0 for a process that never had one, such as a fake).
        pid: u32,
    },

    /// The operation needs a finished process, and this one still runs.
    #[error("process `{id}` (pid {pid}) is still running")]
    StillRunning {
        /// The process id.
        id: String,
        /// Its OS pid.
        pid: u32,
    },

    /// The process's standard input was closed (or never piped).
    #[error("stdin of process `{id}` is closed")]
    StdinClosed {
        /// The process id.
        id: String,
    },

    /// The process exited with a non-zero code.
    ///
    /// `output` carries what it printed (stdout and stderr interleaved, lossy UTF-8), so
    /// [`ProcessService::run`](crate::ProcessService::run) loses nothing on failure.
    #[error("process `{id}` (`{command}`) exited with code {code}")]
    Exited {
        /// The process id.
        id: String,
        /// The command line.
        command: String,
        /// The exit code.
        code: i32,
        /// The captured output.
        output: String,
    },

    /// The process was ended by a signal.
    #[error("process `{id}` (`{command}`) was killed by {signal}{}", if *timed_out { " after its timeout" } else { "" })]
    Killed {
        /// The process id.
        id: String,
        /// The command line.
        command: String,
        /// The signal that ended it.
        signal: Signal,
        /// Whether the process was stopped because its [`RunOptions::timeout`](crate::RunOptions::timeout) fired.
        timed_out: bool,
        /// The captured output.
        output: String,
    },

    /// The process could not be waited for (the status was lost).
    #[error("process `{id}` (`{command}`) failed: {reason}")]
    Failed {
        /// The process id.
        id: String,
        /// The command line.
        command: String,
        /// What went wrong.
        reason: String,
    },

    /// Sending a signal to a process failed.
    #[error("failed to send {signal} to process `{id}` (pid {pid}): {source}")]
    Signal {
        /// The process id.
        id: String,
        /// Its OS pid.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A command's [`stop_signal`](crate::RunOptions::stop_signal) cannot be sent on this
    /// platform: its number is no signal here, or one the C library reserves for itself
    /// (glibc keeps 32 and 33). Reported by [`RunOptions::validate`](crate::RunOptions::validate),
    /// before anything is spawned.
    #[error("the stop signal {signal} of command `{command}` cannot be sent on this platform")]
    UnsupportedSignal {
        /// The command as given.
        command: String,
        /// The signal.
        signal: Signal,
    },

    /// An I/O error on a process's pipes.
    #[error("{op} for process `{id}` failed: {source}")]
    ProcessIo {
        /// The process id.
        id: String,
        /// What was being done ("writing stdin", ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// An I/O error on a file or directory.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "creating directory", ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Another live process holds the PID lock (or, without a lock, names itself in the PID
    /// file as go-process does).
    #[error("already running: pid {pid} holds the lock on {}", path.display())]
    AlreadyRunning {
        /// The holder's pid, when the file names it (0 when it cannot be read).
        pid: u32,
        /// The lock file.
        path: PathBuf,
    },

    /// A server could not bind its address.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A name (daemon code, daemon name, check name, spec name) was rejected.
    #[error("invalid {what} `{name}`: {reason}")]
    InvalidName {
        /// What kind of name it is ("daemon code", "spec name", ...).
        what: &'static str,
        /// The name as given (with control characters escaped by `Debug` where needed).
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A registry entry was rejected before anything was written: it does not name a process
    /// (its pid is 0, the "unset" of [`DaemonEntry::new`](crate::DaemonEntry::new)).
    #[error("invalid registry entry {code}/{daemon}: {reason}")]
    InvalidEntry {
        /// The entry's application code.
        code: String,
        /// The entry's daemon name.
        daemon: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A JSON document could not be read or written.
    #[error("invalid JSON in {}: {source}", path.display())]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The parse error (the JSON library's, boxed so that its type stays out of the API).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A component was asked to start while it is already started (a daemon that runs, a
    /// health server that serves).
    #[error("{component} is already started{}", detail_suffix(detail))]
    AlreadyStarted {
        /// The component concerned ("daemon code/name", "WarpHealthServer", ...).
        component: String,
        /// What it is doing, when that helps ("serving on 127.0.0.1:9000"); may be empty.
        detail: String,
    },

    /// The operation needs a started component, and this one is not started.
    #[error("{component} is not started: start it first")]
    NotStarted {
        /// The component concerned.
        component: String,
    },

    /// The component was shut down and refuses new work until it is started again
    /// ([`Lifecycle::on_start`](crate::Lifecycle::on_start)).
    #[error("{component} is shut down: start it again (Lifecycle::on_start) before using it")]
    ShutDown {
        /// The component concerned.
        component: String,
    },

    /// A setting the operation needs was never given (a `FilePidLock` without a path, ...).
    #[error("{component}: no {setting} is configured")]
    NotConfigured {
        /// The component concerned.
        component: String,
        /// The missing setting ("PID file path", ...).
        setting: &'static str,
    },

    /// A background task the operation depended on ended without an answer: it panicked, or
    /// the runtime shut down under it.
    #[error("{what}: its task ended without an answer: {reason}")]
    TaskFailed {
        /// What the task was doing ("pipeline spec `build`", "start of daemon x/y", ...).
        what: String,
        /// Why it ended (the panic message, "the runtime is shutting down", ...).
        reason: String,
    },

    /// A lifecycle stop or another bounded operation ran out of time.
    #[error("{what} did not finish within {timeout:?}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The bound that expired.
        timeout: Duration,
    },

    /// A pipeline plan was rejected before anything ran.
    #[error("invalid pipeline: {reason}")]
    InvalidPlan {
        /// What is wrong, naming the specs concerned.
        reason: String,
    },

    /// Two specs of a pipeline have the same name.
    #[error("invalid pipeline: more than one spec is named `{name}`")]
    DuplicateSpec {
        /// The repeated name.
        name: String,
    },

    /// A configuration file (or text) was rejected: malformed, an unknown key, a bad value.
    #[error("invalid configuration {}{}: {reason}", path.display(), key_suffix(key))]
    Config {
        /// The file (empty when the text came from elsewhere).
        path: PathBuf,
        /// The key, as a dotted path (`daemon.shutdown_timeout`, `pipelines.ci[1].after`);
        /// empty when the text itself is malformed.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// A pipeline spec runs after a spec that is not in the pipeline.
    #[error(
        "invalid pipeline: spec `{spec}` runs after `{after}`, which is not in the pipeline{}",
        did_you_mean(suggestion.as_deref())
    )]
    UnknownDependency {
        /// The spec that names the dependency.
        spec: String,
        /// The unknown name.
        after: String,
        /// The closest name in the pipeline, when one is close enough to be a likely typo.
        suggestion: Option<String>,
    },

    /// The `after` relations of a pipeline form a cycle (a spec after itself is the shortest).
    #[error("invalid pipeline: dependency cycle {}", path.join(" → "))]
    Cycle {
        /// The specs on the cycle, each one waiting for the next; the first is repeated at the
        /// end (`["a", "b", "a"]`).
        path: Vec<String>,
    },

    /// A pipeline spec was skipped because a spec it (transitively) runs after failed.
    #[error("spec `{spec}` skipped: its dependency `{dependency}` failed")]
    DependencyFailed {
        /// The skipped spec.
        spec: String,
        /// The spec whose failure caused the skip.
        dependency: String,
    },

    /// A spec of a sequential pipeline was skipped because an earlier spec failed.
    #[error("spec `{spec}` skipped: the pipeline stopped after `{failed}` failed")]
    PipelineStopped {
        /// The skipped spec.
        spec: String,
        /// The spec whose failure stopped the pipeline.
        failed: String,
    },

    /// A pipeline spec was skipped because the pipeline was cancelled before it started.
    #[error("spec `{spec}` skipped: the pipeline was cancelled")]
    Cancelled {
        /// The skipped spec.
        spec: String,
    },

    /// A one-shot command from [`exec`](crate::exec) ran and did not exit with code 0.
    ///
    /// The message ends with the trimmed `stderr` when there is one.
    #[error("command `{command}` {}{}", exit_description(*code, *signal), stderr_suffix(stderr))]
    CommandFailed {
        /// The command line.
        command: String,
        /// The exit code; `None` when a signal ended the command.
        code: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<Signal>,
        /// What it wrote to stderr, trimmed (empty when stderr was not captured).
        stderr: String,
        /// What it wrote to stdout (both streams for `combined_output`), lossy UTF-8.
        output: String,
    },

    /// A test double was asked to run a command that none of its scripts matches (feature
    /// `testing`: `testing::FakeProcessService`).
    #[error("no script matches `{command}` (tried: {})", if tried.is_empty() { "none".to_string() } else { tried.join(", ") })]
    Unscripted {
        /// The command line that was started.
        command: String,
        /// The scripts tried, in order (as `prefix "cargo test"`, `glob "cargo *"`, ...).
        tried: Vec<String>,
    },

    /// A pattern given to a test double does not parse (feature `testing`).
    #[error("invalid pattern `{pattern}`: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// Why it does not parse.
        reason: String,
    },

    /// A readiness or liveness probe was rejected (a log-line pattern that does not compile,
    /// a log-line probe on a process whose output is not captured).
    #[error("invalid probe {probe}: {reason}")]
    InvalidProbe {
        /// The probe, as described in logs (`log line /ready/`, `TCP 127.0.0.1:80`).
        probe: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A supervised process or a pipeline service did not become ready.
    #[error("`{name}` is not ready: {reason}")]
    NotReady {
        /// The supervised process's id, or the service spec's name.
        name: String,
        /// Why (timed out, exited, gave up).
        reason: String,
    },

    /// A pipeline spec was skipped because a service it runs after never became ready.
    #[error("spec `{spec}` skipped: its service `{service}` did not become ready: {reason}")]
    ServiceNotReady {
        /// The skipped spec.
        spec: String,
        /// The service spec.
        service: String,
        /// Why the service did not become ready.
        reason: String,
    },

    /// Several errors happened together (stopping several components, say).
    #[error("{} errors, first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
    Multiple(Vec<Error>),
}

impl Error {
    /// The exit code carried by [`Error::Exited`] or [`Error::CommandFailed`], if this is one.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Error::Exited { code, .. } => Some(*code),
            Error::CommandFailed { code, .. } => *code,
            _ => None,
        }
    }

    /// The output a failed process printed, when the error carries it
    /// ([`Error::Exited`], [`Error::Killed`], [`Error::CommandFailed`]).
    pub fn output(&self) -> Option<&str> {
        match self {
            Error::Exited { output, .. }
            | Error::Killed { output, .. }
            | Error::CommandFailed { output, .. } => Some(output),
            _ => None,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

fn exit_description(code: Option<i32>, signal: Option<Signal>) -> String {
    match (code, signal) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by {signal}"),
        (None, None) => "failed".to_string(),
    }
}

fn key_suffix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" at `{key}`")
    }
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion.map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"))
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn error_is_send_sync_static() {
        assert_send_sync::<Error>();
    }

    #[test]
    fn messages_name_what_they_concern() {
        let e = Error::Exited {
            id: "proc-1".into(),
            command: "sh -c exit 1".into(),
            code: 1,
            output: "boom".into(),
        };
        assert_eq!(
            e.to_string(),
            "process `proc-1` (`sh -c exit 1`) exited with code 1"
        );
        assert_eq!(e.exit_code(), Some(1));
        assert_eq!(e.output(), Some("boom"));

        let e = Error::AlreadyRunning {
            pid: 42,
            path: "/run/x.pid".into(),
        };
        assert!(e.to_string().contains("pid 42"));
        assert!(e.to_string().contains("/run/x.pid"));

        let e = Error::Killed {
            id: "proc-2".into(),
            command: "sleep 30".into(),
            signal: Signal::Term,
            timed_out: true,
            output: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "process `proc-2` (`sleep 30`) was killed by SIGTERM after its timeout"
        );
    }

    #[test]
    fn lifecycle_state_errors_are_typed_and_name_the_component() {
        let cases = [
            (
                Error::AlreadyStarted {
                    component: "WarpHealthServer".into(),
                    detail: "serving on 127.0.0.1:9000".into(),
                },
                "WarpHealthServer is already started (serving on 127.0.0.1:9000)",
            ),
            (
                Error::AlreadyStarted {
                    component: "daemon core/agent".into(),
                    detail: String::new(),
                },
                "daemon core/agent is already started",
            ),
            (
                Error::NotStarted {
                    component: "daemon".into(),
                },
                "daemon is not started: start it first",
            ),
            (
                Error::ShutDown {
                    component: "TokioProcessService".into(),
                },
                "TokioProcessService is shut down: start it again (Lifecycle::on_start) before using it",
            ),
            (
                Error::NotConfigured {
                    component: "FilePidLock".into(),
                    setting: "PID file path",
                },
                "FilePidLock: no PID file path is configured",
            ),
            (
                Error::TaskFailed {
                    what: "pipeline spec `build`".into(),
                    reason: "task 7 panicked".into(),
                },
                "pipeline spec `build`: its task ended without an answer: task 7 panicked",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn json_errors_keep_their_source_without_naming_its_type() {
        let parse = serde_json::from_str::<u32>("{").unwrap_err();
        let e = Error::Json {
            path: "/tmp/x.json".into(),
            source: Box::new(parse),
        };
        assert!(
            e.to_string().starts_with("invalid JSON in /tmp/x.json: "),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}

//! Plain data: [`Status`], [`Stream`], [`Signal`], [`RunOptions`] and the [`Info`] snapshot.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Where a managed process is in its life.
///
/// ```text
/// Pending ──spawn──▶ Running ──exit(code)──▶ Exited
///                       │    ──signal─────▶ Killed
///                       └──── wait error ──▶ Failed
/// ```
///
/// A process ended by a signal — ours or anyone's — reports [`Status::Killed`], never
/// [`Status::Exited`] (the Go original got this wrong). Serialises lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, not yet spawned.
    Pending,
    /// Spawned and not yet reaped.
    Running,
    /// Exited on its own, with an exit code (zero or not).
    Exited,
    /// Its status could not be collected.
    Failed,
    /// Ended by a signal, or stopped because its timeout fired.
    Killed,
}

impl Status {
    /// Whether the process has finished (any state but `Pending` and `Running`).
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Exited | Status::Failed | Status::Killed)
    }

    /// The lowercase name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Failed => "failed",
            Status::Killed => "killed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which pipe a line of output came from. Serialises lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

/// A POSIX signal, by name. Our own type: no `libc` or `nix` type crosses the API.
///
/// Displays and serialises as the conventional name (`"SIGTERM"`); parses from `"SIGTERM"`,
/// `"TERM"` or `"term"`, or from the number (`"15"`, `"SIG15"`). Signals without a variant
/// travel as [`Signal::Other`] with their number on this platform: those the platform names
/// display as that name (`"SIGIO"`, `"SIGPWR"`, `"SIGSTKFLT"` on Linux; `"SIGINFO"`, `"SIGEMT"`
/// on the BSDs and macOS), the real-time signals as their number (`"SIG40"`: the same in every
/// process, unlike `SIGRTMIN+n`, which depends on the C library). Real-time signals also parse
/// from `"SIGRTMIN"`, `"SIGRTMIN+3"`, `"RTMAX-2"` and the like; aliases `"SIGIOT"` (and, on
/// Linux, `"SIGPOLL"` and `"SIGCLD"`) parse too.
///
/// Any positive number parses, so every `Signal` that displays as `"SIG<n>"` parses back; zero,
/// negative and signed numbers do not. Whether a signal can be *sent* is checked when it is used:
/// [`RunOptions::validate`] rejects a [`stop_signal`](RunOptions::stop_signal) that cannot be
/// sent here, and [`Process::signal`](crate::Process::signal) fails for one.
///
/// ```
/// use core_process::Signal;
///
/// assert_eq!("term".parse::<Signal>().unwrap(), Signal::Term);
/// assert_eq!("SIGXCPU".parse::<Signal>().unwrap().to_string(), "SIGXCPU");
/// assert_eq!(Signal::Other(Signal::Xcpu.number()).to_string(), "SIGXCPU");
/// assert!("SIG0".parse::<Signal>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGHUP: hang-up, often "reload".
    Hup,
    /// SIGINT: interrupt (Ctrl-C).
    Int,
    /// SIGQUIT: quit with core dump.
    Quit,
    /// SIGILL: illegal instruction.
    Ill,
    /// SIGTRAP: trace trap.
    Trap,
    /// SIGABRT: abort.
    Abrt,
    /// SIGBUS: bus error.
    Bus,
    /// SIGFPE: arithmetic error.
    Fpe,
    /// SIGKILL: cannot be caught or ignored.
    Kill,
    /// SIGUSR1: user-defined.
    Usr1,
    /// SIGSEGV: invalid memory reference.
    Segv,
    /// SIGUSR2: user-defined.
    Usr2,
    /// SIGPIPE: write to a pipe with no reader.
    Pipe,
    /// SIGALRM: timer.
    Alrm,
    /// SIGTERM: polite request to terminate.
    Term,
    /// SIGCHLD: child status changed.
    Chld,
    /// SIGCONT: continue if stopped.
    Cont,
    /// SIGSTOP: stop; cannot be caught.
    Stop,
    /// SIGTSTP: stop from the terminal.
    Tstp,
    /// SIGWINCH: window size changed.
    Winch,
    /// SIGTTIN: background read from the terminal.
    Ttin,
    /// SIGTTOU: background write to the terminal.
    Ttou,
    /// SIGURG: urgent data on a socket.
    Urg,
    /// SIGXCPU: CPU time limit exceeded.
    Xcpu,
    /// SIGXFSZ: file size limit exceeded.
    Xfsz,
    /// SIGVTALRM: virtual timer.
    Vtalrm,
    /// SIGPROF: profiling timer.
    Prof,
    /// SIGSYS: bad system call.
    Sys,
    /// Any other signal, by its number on this platform (the platform's own signals such as
    /// SIGIO or SIGPWR, and the real-time signals).
    Other(i32),
}

const NAMED_SIGNALS: [(Signal, &str); 28] = [
    (Signal::Hup, "SIGHUP"),
    (Signal::Int, "SIGINT"),
    (Signal::Quit, "SIGQUIT"),
    (Signal::Ill, "SIGILL"),
    (Signal::Trap, "SIGTRAP"),
    (Signal::Abrt, "SIGABRT"),
    (Signal::Bus, "SIGBUS"),
    (Signal::Fpe, "SIGFPE"),
    (Signal::Kill, "SIGKILL"),
    (Signal::Usr1, "SIGUSR1"),
    (Signal::Segv, "SIGSEGV"),
    (Signal::Usr2, "SIGUSR2"),
    (Signal::Pipe, "SIGPIPE"),
    (Signal::Alrm, "SIGALRM"),
    (Signal::Term, "SIGTERM"),
    (Signal::Chld, "SIGCHLD"),
    (Signal::Cont, "SIGCONT"),
    (Signal::Stop, "SIGSTOP"),
    (Signal::Tstp, "SIGTSTP"),
    (Signal::Winch, "SIGWINCH"),
    (Signal::Ttin, "SIGTTIN"),
    (Signal::Ttou, "SIGTTOU"),
    (Signal::Urg, "SIGURG"),
    (Signal::Xcpu, "SIGXCPU"),
    (Signal::Xfsz, "SIGXFSZ"),
    (Signal::Vtalrm, "SIGVTALRM"),
    (Signal::Prof, "SIGPROF"),
    (Signal::Sys, "SIGSYS"),
];

impl Signal {
    /// The signal's number on this platform.
    pub fn number(self) -> i32 {
        crate::sys::signal_number(self)
    }

    /// The signal with this number on this platform; [`Signal::Other`] when it has no variant.
    pub fn from_number(number: i32) -> Signal {
        crate::sys::signal_from_number(number)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let named = match *self {
            Signal::Other(n) => match Signal::from_number(n) {
                Signal::Other(n) => {
                    return match crate::sys::signal_name(n) {
                        Some(name) => f.write_str(name),
                        None => write!(f, "SIG{n}"),
                    };
                }
                named => named,
            },
            named => named,
        };
        let name = NAMED_SIGNALS
            .iter()
            .find(|(s, _)| *s == named)
            .map_or("SIG?", |(_, n)| *n);
        f.write_str(name)
    }
}

impl FromStr for Signal {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        if let Some((sig, _)) = NAMED_SIGNALS.iter().find(|(_, n)| *n == full) {
            return Ok(*sig);
        }
        if let Some(n) = crate::sys::signal_by_name(&full) {
            return Ok(Signal::from_number(n));
        }
        let digits = &full[3..];
        match digits.parse::<i32>() {
            Ok(n) if n > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Signal::from_number(n))
            }
            _ => Err(Error::InvalidName {
                what: "signal",
                name: s.to_string(),
                reason: "not a known signal name or number",
            }),
        }
    }
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The grace period [`RunOptions`] start with: how long a stop waits between the stop signal
/// and SIGKILL.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

/// How to start a process.
///
/// Build it with [`RunOptions::new`] and the chained setters, or with a struct literal and
/// `..Default::default()`.
///
/// ```
/// use core_process::RunOptions;
/// use std::time::Duration;
///
/// let opts = RunOptions::new("sh")
///     .args(["-c", "echo $GREETING"])
///     .env("GREETING", "hello")
///     .dir("/tmp")
///     .timeout(Duration::from_secs(30));
/// assert_eq!(opts.command, "sh");
/// assert_eq!(opts.args, ["-c", "echo $GREETING"]);
/// ```
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The program: a path, or a name looked up on `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The working directory; the manager's when `None`.
    pub dir: Option<PathBuf>,
    /// Variables added to (or overriding) the inherited environment.
    pub env: Vec<(String, String)>,
    /// Do not keep output in the ring buffer (lines are still read and published as events).
    pub disable_capture: bool,
    /// Size of this process's output ring buffer; the service's default when `None`.
    pub output_capacity: Option<usize>,
    /// Cancelling this token kills the process (SIGKILL, to its group when it leads one).
    pub cancel: Option<CancellationToken>,
    /// Stop the process (stop signal, grace period, SIGKILL) when it runs longer than this.
    /// Its status then ends [`Status::Killed`].
    pub timeout: Option<Duration>,
    /// How long a stop waits after the stop signal before it sends SIGKILL. Used by
    /// [`Process::stop`](crate::Process::stop) callers that pass it, by the timeout and by
    /// [`ProcessService::shutdown`](crate::ProcessService::shutdown). Default
    /// [`DEFAULT_GRACE_PERIOD`] (10 s).
    pub grace_period: Duration,
    /// The signal a stop sends first. Default [`Signal::Term`]. Any signal that can be sent
    /// here, real-time signals included; [`validate`](RunOptions::validate) (and so `start`)
    /// refuses one that cannot, with [`Error::UnsupportedSignal`].
    pub stop_signal: Signal,
    /// Start the child as the leader of a new process group (default `true`), so kill and stop
    /// reach everything it started, and whatever it leaves behind in its group is killed when it
    /// exits. Set to `false` to keep the child in the manager's group (signals then reach the
    /// child alone, and its descendants may outlive it).
    pub process_group: bool,
    /// Leave this process out of [`ProcessService::shutdown`](crate::ProcessService::shutdown)
    /// and out of kill-on-drop: it keeps running when the service stops or is dropped.
    pub detach: bool,
    /// Linux only: ask the kernel to SIGKILL the child when the manager dies, even by SIGKILL
    /// (the parent-death signal). Off by default.
    ///
    /// The child is started through util-linux's `setpriv --pdeathsig KILL`, which arms the
    /// signal and executes `/bin/sh`, which checks that its parent is still the manager (a
    /// manager that died before the signal was armed leaves no orphan: the child then kills
    /// itself with SIGKILL) and executes the command; same pid throughout. That costs two extra
    /// `exec`s per spawn (300 start-and-wait of `/bin/true`, debug build, 2-core machine: 2.0 ms
    /// each without the option, 4.7 ms with it) but no `pre_exec` hook, so spawning keeps its
    /// fast `posix_spawn` path.
    ///
    /// `start` accepts and refuses exactly what it does without the option, with the same
    /// errors: before spawning, the manager checks what `execve` would do with the program
    /// found where the child would find it (exists, is a regular file, is executable, is an ELF
    /// binary or a `#!` script whose interpreter exists and would run). Only a change to the
    /// file between that check and the child's `exec` shows as an exit status (127 or 126 from
    /// the shell) instead of an error.
    ///
    /// Without the option, a manager killed by SIGKILL leaves its children running as orphans.
    /// The signal fires when the spawning *thread* exits, and covers the direct child only. See
    /// the [`process`](crate::process) module's caveats.
    pub die_with_parent: bool,
    /// Pipe the child's standard input so [`Process::send_input`](crate::Process::send_input)
    /// works (default `true`). When `false` the child reads from `/dev/null`.
    /// [`ProcessService::run`](crate::ProcessService::run), which hands back no `Process`,
    /// always gives `/dev/null`.
    pub stdin: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            command: String::new(),
            args: Vec::new(),
            dir: None,
            env: Vec::new(),
            disable_capture: false,
            output_capacity: None,
            cancel: None,
            timeout: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            stop_signal: Signal::Term,
            process_group: true,
            detach: false,
            die_with_parent: false,
            stdin: true,
        }
    }
}

impl RunOptions {
    /// Options for `command` with every other setting at its default.
    pub fn new(command: impl Into<String>) -> Self {
        RunOptions {
            command: command.into(),
            ..Default::default()
        }
    }

    command_setters!();

    /// Keeps output out of the ring buffer (events are still published).
    pub fn disable_capture(mut self, disable: bool) -> Self {
        self.disable_capture = disable;
        self
    }

    /// Sets this process's ring-buffer size in bytes.
    pub fn output_capacity(mut self, bytes: usize) -> Self {
        self.output_capacity = Some(bytes);
        self
    }

    /// Kills the process when `token` is cancelled.
    pub fn cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Stops the process when it runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the grace period between the stop signal and SIGKILL.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Sets the signal a stop sends first.
    pub fn stop_signal(mut self, signal: Signal) -> Self {
        self.stop_signal = signal;
        self
    }

    /// Starts the child in its own process group (`true`, the default) or in the manager's.
    pub fn process_group(mut self, own_group: bool) -> Self {
        self.process_group = own_group;
        self
    }

    /// Leaves the process out of shutdown and kill-on-drop.
    pub fn detach(mut self, detach: bool) -> Self {
        self.detach = detach;
        self
    }

    /// Linux: the child gets SIGKILL when the manager dies. See [`RunOptions::die_with_parent`].
    pub fn die_with_parent(mut self, on: bool) -> Self {
        self.die_with_parent = on;
        self
    }

    /// Pipes standard input (`true`, the default) or gives the child `/dev/null`.
    pub fn stdin(mut self, piped: bool) -> Self {
        self.stdin = piped;
        self
    }

    /// The command line as one string, for messages: `sh -c 'exit 1'`.
    pub fn command_line(&self) -> String {
        command_line(&self.command, &self.args)
    }

    /// Checks the options without spawning anything.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for an empty command, a NUL byte in the command, an argument or
    /// the environment, or an environment key that is empty or contains `=`;
    /// [`Error::UnsupportedSignal`] when `stop_signal` cannot be sent on this platform;
    /// [`Error::WorkingDirectory`] when `dir` is not an existing directory.
    pub fn validate(&self) -> Result<()> {
        validate_command(&self.command, &self.args, &self.env, self.dir.as_deref())?;
        if !crate::sys::can_send(self.stop_signal) {
            return Err(Error::UnsupportedSignal {
                command: self.command.clone(),
                signal: self.stop_signal,
            });
        }
        Ok(())
    }
}

/// The checks of [`RunOptions::validate`], for every command-like builder (also
/// [`exec::Command`](crate::exec::Command)).
pub(crate) fn validate_command(
    command: &str,
    args: &[String],
    env: &[(String, String)],
    dir: Option<&std::path::Path>,
) -> Result<()> {
    let invalid = |reason: String| Error::InvalidOptions {
        command: command.to_string(),
        reason,
    };
    if command.trim().is_empty() {
        return Err(invalid("the command is empty".into()));
    }
    if command.contains('\0') {
        return Err(invalid("the command contains a NUL byte".into()));
    }
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(invalid(format!("argument {i} contains a NUL byte")));
    }
    for (key, value) in env {
        if key.is_empty() {
            return Err(invalid("an environment key is empty".into()));
        }
        if key.contains('=') {
            return Err(invalid(format!("environment key {key:?} contains '='")));
        }
        if key.contains('\0') || value.contains('\0') {
            return Err(invalid(format!(
                "environment variable {key:?} contains a NUL byte"
            )));
        }
    }
    if let Some(dir) = dir
        && !dir.is_dir()
    {
        return Err(Error::WorkingDirectory {
            command: command.to_string(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// What starting `program` would do, found where the child would find it: in `dir`, on the
/// child's own `PATH` when `env` sets one (the last setting wins), else the manager's. With a
/// `PATH` of its own, the standard library spawns through `execvp`, which runs a file found on
/// that `PATH` that is no binary nor `#!` script through `/bin/sh`: so does the check then.
pub(crate) fn exec_check(
    program: &str,
    dir: Option<&std::path::Path>,
    env: &[(String, String)],
) -> crate::sys::ExecCheck {
    let child_path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    crate::sys::check_exec(program.as_ref(), dir, child_path, child_path.is_some())
}

/// Joins a program and its arguments for display, quoting what a shell would need quoted.
pub(crate) fn command_line(command: &str, args: &[String]) -> String {
    fn quote(s: &str, out: &mut String) {
        let plain = !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
        if plain {
            out.push_str(s);
        } else {
            out.push('\'');
            out.push_str(&s.replace('\'', r"'\''"));
            out.push('\'');
        }
    }
    let mut out =
        String::with_capacity(command.len() + args.iter().map(|a| a.len() + 3).sum::<usize>());
    quote(command, &mut out);
    for a in args {
        out.push(' ');
        quote(a, &mut out);
    }
    out
}

/// A serialisable snapshot of a process.
///
/// `duration` is live while the process runs (time since start) and fixed once it ends.
/// Durations serialise as fractional seconds, `started_at` as RFC 3339.
///
/// ```json
/// {"id":"proc-1","command":"echo","args":["hi"],"dir":null,"pid":4242,"status":"exited",
///  "exit_code":0,"signal":null,"started_at":"2026-01-02T03:04:05.123456789Z",
///  "duration":0.0021,"running":false}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// The service's id for the process (`proc-N`).
    pub id: String,
    /// The program.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The working directory it was given.
    pub dir: Option<PathBuf>,
    /// The OS pid (0 for a fake that never spawned).
    pub pid: u32,
    /// Where it is in its life.
    pub status: Status,
    /// The exit code, once it exited on its own.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<Signal>,
    /// When it was started.
    #[serde(with = "crate::types::rfc3339")]
    pub started_at: SystemTime,
    /// How long it ran (so far, while running).
    #[serde(with = "crate::types::secs_f64")]
    pub duration: Duration,
    /// Whether it is still running.
    pub running: bool,
}

/// Serde helper: `SystemTime` as an RFC 3339 string.
pub(crate) mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub(crate) fn format(t: SystemTime) -> String {
        OffsetDateTime::from(t)
            .format(&Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
    }

    pub(crate) fn parse(s: &str) -> Result<SystemTime, time::error::Parse> {
        OffsetDateTime::parse(s, &Rfc3339).map(SystemTime::from)
    }

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde helper: `Duration` as fractional seconds.
pub(crate) mod secs_f64 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_stream_serialise_lowercase() {
        assert_eq!(
            serde_json::to_string(&Status::Killed).unwrap(),
            "\"killed\""
        );
        assert_eq!(
            serde_json::to_string(&Stream::Stderr).unwrap(),
            "\"stderr\""
        );
        assert!(Status::Exited.is_finished());
        assert!(!Status::Running.is_finished());
    }

    #[test]
    fn status_and_stream_display_their_serialised_names() {
        let statuses = [
            (Status::Pending, "pending"),
            (Status::Running, "running"),
            (Status::Exited, "exited"),
            (Status::Failed, "failed"),
            (Status::Killed, "killed"),
        ];
        for (status, name) in statuses {
            assert_eq!(status.to_string(), name);
            assert_eq!(status.as_str(), name);
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{name}\"")
            );
        }
        for (stream, name) in [(Stream::Stdout, "stdout"), (Stream::Stderr, "stderr")] {
            assert_eq!(stream.to_string(), name);
            assert_eq!(
                serde_json::to_string(&stream).unwrap(),
                format!("\"{name}\"")
            );
        }
    }

    #[test]
    fn signal_parsing_rejects_what_is_no_signal_number() {
        for bad in [
            "0",
            "SIG0",
            "sig0",
            "-5",
            "SIG-5",
            "+5",
            "SIG+5",
            "",
            "SIG",
            " ",
            "5x",
            "SIG 5",
            "SIGRTMIN+",
            "SIGRTMIN-1",
            "SIGRTMAX+1",
            "SIGRTMIN+100000",
            "SIGRTMIN++1",
            "99999999999",
        ] {
            match bad.parse::<Signal>() {
                Err(Error::InvalidName {
                    what: "signal",
                    name,
                    ..
                }) => assert_eq!(name, bad),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
        assert_eq!(" 15 ".parse::<Signal>().unwrap(), Signal::Term);
        assert_eq!("SIG015".parse::<Signal>().unwrap(), Signal::Term);
    }

    #[test]
    fn every_signal_of_the_platform_has_its_name() {
        for (sig, name) in NAMED_SIGNALS {
            assert!(sig.number() > 0, "{name}");
            assert_eq!(Signal::Other(sig.number()).to_string(), name);
        }
        assert_eq!("SIGIOT".parse::<Signal>().unwrap(), Signal::Abrt);
        #[cfg(target_os = "linux")]
        {
            // Every classic signal of Linux (1..=31) displays by name, none as "SIG<n>".
            for n in 1..=31 {
                let name = Signal::from_number(n).to_string();
                assert!(
                    !name[3..].starts_with(|c: char| c.is_ascii_digit()),
                    "{n}: {name}"
                );
                assert_eq!(name.parse::<Signal>().unwrap(), Signal::from_number(n));
            }
            assert_eq!(Signal::from_number(24), Signal::Xcpu);
            assert_eq!(Signal::Other(29).to_string(), "SIGIO");
            assert_eq!("SIGPOLL".parse::<Signal>().unwrap(), Signal::Other(29));
            assert_eq!("pwr".parse::<Signal>().unwrap(), Signal::Other(30));
            assert_eq!("SIGCLD".parse::<Signal>().unwrap(), Signal::Chld);
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            assert_eq!(Signal::Other(16).to_string(), "SIGSTKFLT");
            let (min, max) = crate::sys::realtime_signals().unwrap();
            assert_eq!("SIGRTMIN".parse::<Signal>().unwrap(), Signal::Other(min));
            assert_eq!("rtmin+3".parse::<Signal>().unwrap(), Signal::Other(min + 3));
            assert_eq!(
                "SIGRTMAX-2".parse::<Signal>().unwrap(),
                Signal::Other(max - 2)
            );
            assert_eq!("RTMAX".parse::<Signal>().unwrap(), Signal::Other(max));
            assert!(
                format!("SIGRTMIN+{}", max - min + 1)
                    .parse::<Signal>()
                    .is_err()
            );
            // Real-time signals display by number, the same in every process.
            assert_eq!(
                Signal::Other(min + 3).to_string(),
                format!("SIG{}", min + 3)
            );
        }
    }

    #[test]
    fn every_positive_number_displays_and_parses_back() {
        let check = |n: i32| {
            let sig = Signal::from_number(n);
            let text = sig.to_string();
            assert_eq!(
                text.parse::<Signal>().unwrap(),
                sig,
                "{n} displays as {text}"
            );
            assert_eq!(sig.number(), n);
            let json = serde_json::to_string(&sig).unwrap();
            assert_eq!(serde_json::from_str::<Signal>(&json).unwrap(), sig);
        };
        (1..=4096).for_each(check);
        // And a pseudo-random sample of the whole positive range (fixed seed: reproducible).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check((x % i32::MAX as u64) as i32 + 1);
        }
        check(i32::MAX);
    }

    #[test]
    fn validate_rejects_a_stop_signal_that_cannot_be_sent() {
        #[cfg(target_os = "linux")]
        let unsendable = [0, -1, 32, 65, 1000, i32::MAX, i32::MIN];
        #[cfg(not(target_os = "linux"))]
        let unsendable = [0, -1, 1000, i32::MAX, i32::MIN];
        for n in unsendable {
            let opts = RunOptions::new("sleep").stop_signal(Signal::Other(n));
            match opts.validate() {
                Err(e @ Error::UnsupportedSignal { .. }) => {
                    let Error::UnsupportedSignal { command, signal } = &e else {
                        unreachable!()
                    };
                    assert_eq!((command.as_str(), *signal), ("sleep", Signal::Other(n)));
                    assert!(e.to_string().contains(&format!("SIG{n}")), "{e}");
                    assert!(e.to_string().contains("sleep"), "{e}");
                }
                other => panic!("stop signal {n}: {other:?}"),
            }
        }
        for (sig, _) in NAMED_SIGNALS {
            RunOptions::new("sleep")
                .stop_signal(sig)
                .validate()
                .unwrap();
            RunOptions::new("sleep")
                .stop_signal(Signal::Other(sig.number()))
                .validate()
                .unwrap();
        }
        #[cfg(target_os = "linux")]
        {
            let (min, max) = crate::sys::realtime_signals().unwrap();
            for n in min..=max {
                RunOptions::new("sleep")
                    .stop_signal(Signal::Other(n))
                    .validate()
                    .unwrap();
            }
            RunOptions::new("sleep")
                .stop_signal(Signal::Other(40))
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn signal_names_round_trip() {
        for (sig, name) in NAMED_SIGNALS {
            assert_eq!(sig.to_string(), name);
            assert_eq!(name.parse::<Signal>().unwrap(), sig);
            assert_eq!(Signal::from_number(sig.number()), sig);
        }
        assert_eq!("term".parse::<Signal>().unwrap(), Signal::Term);
        assert_eq!("9".parse::<Signal>().unwrap(), Signal::Kill);
        assert_eq!("SIG9".parse::<Signal>().unwrap(), Signal::Kill);
        assert!("SIGNOPE".parse::<Signal>().is_err());
        assert_eq!(serde_json::to_string(&Signal::Kill).unwrap(), "\"SIGKILL\"");
        assert_eq!(Signal::Other(40).to_string(), "SIG40");
    }

    #[test]
    fn validate_rejects_bad_input_with_typed_errors() {
        let bad = [
            RunOptions::new(""),
            RunOptions::new("  "),
            RunOptions::new("ec\0ho"),
            RunOptions::new("echo").arg("a\0b"),
            RunOptions::new("echo").env("", "v"),
            RunOptions::new("echo").env("A=B", "v"),
            RunOptions::new("echo").env("A", "v\0"),
        ];
        for opts in bad {
            match opts.validate() {
                Err(Error::InvalidOptions { .. }) => {}
                other => panic!("{opts:?} gave {other:?}"),
            }
        }
        match RunOptions::new("echo").dir("/no/such/dir/here").validate() {
            Err(e @ Error::WorkingDirectory { .. }) => {
                assert!(e.to_string().contains("/no/such/dir/here"))
            }
            other => panic!("{other:?}"),
        }
        RunOptions::new("echo")
            .arg("x")
            .env("K", "V")
            .validate()
            .unwrap();
    }

    #[test]
    fn command_line_quotes_what_needs_it() {
        assert_eq!(
            command_line("sh", &["-c".into(), "exit 1".into()]),
            "sh -c 'exit 1'"
        );
        assert_eq!(command_line("echo", &["it's".into()]), r"echo 'it'\''s'");
        assert_eq!(command_line("echo", &["".into()]), "echo ''");
    }

    #[test]
    fn info_serialises_rfc3339_and_seconds() {
        let info = Info {
            id: "proc-1".into(),
            command: "echo".into(),
            args: vec!["hi".into()],
            dir: None,
            pid: 7,
            status: Status::Exited,
            exit_code: Some(0),
            signal: None,
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
            duration: Duration::from_millis(1500),
            running: false,
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["started_at"], "1970-01-02T00:00:00Z");
        assert_eq!(json["duration"], 1.5);
        assert_eq!(json["status"], "exited");
        let back: Info = serde_json::from_value(json).unwrap();
        assert_eq!(back, info);
    }
}

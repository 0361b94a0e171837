//! [`RunOptions`](crate::RunOptions): how to start a process.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::command::{command_line, validate_command};
use crate::error::{Error, Result};
use crate::types::Signal;

/// The grace period [`RunOptions`](crate::RunOptions) start with: how long a stop waits between the stop signal
/// and SIGKILL.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

/// How to start a process.
///
/// Build it with [`RunOptions::new`](crate::RunOptions::new) and the chained setters, or with a struct literal and
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
    /// Its status then ends [`Status::Killed`](crate::Status::Killed).
    pub timeout: Option<Duration>,
    /// How long a stop waits after the stop signal before it sends SIGKILL. Used by
    /// [`Process::stop`](crate::Process::stop) callers that pass it, by the timeout and by
    /// [`ProcessService::shutdown`](crate::ProcessService::shutdown). Default
    /// [`DEFAULT_GRACE_PERIOD`] (10 s).
    pub grace_period: Duration,
    /// The signal a stop sends first. Default [`Signal::Term`]. Any signal that can be sent
    /// here, real-time signals included; [`validate`](RunOptions::validate) (and so `start`)
    /// refuses one that cannot, with [`Error::UnsupportedSignal`](crate::Error::UnsupportedSignal).
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
    /// the [`process`](crate::services::process) module's caveats.
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

    process_setters!();

    setters! {
        /// Kills the process when `token` is cancelled.
        cancel(token: CancellationToken) => Some;
        /// Leaves the process out of shutdown and kill-on-drop.
        detach(detach: bool);
        /// Pipes standard input (`true`, the default) or gives the child `/dev/null`.
        stdin(piped: bool);
    }

    /// The command line as one string, for messages: `sh -c 'exit 1'`.
    pub fn command_line(&self) -> String {
        command_line(&self.command, &self.args)
    }

    /// Checks the options without spawning anything.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions) for an empty command, a NUL byte in the command, an argument or
    /// the environment, or an environment key that is empty or contains `=`;
    /// [`Error::UnsupportedSignal`](crate::Error::UnsupportedSignal) when `stop_signal` cannot be sent on this platform;
    /// [`Error::WorkingDirectory`](crate::Error::WorkingDirectory) when `dir` is not an existing directory.
    pub fn validate(&self) -> Result<()> {
        validate_command(&self.command, &self.args, &self.env, self.dir.as_deref())?;
        if !crate::sys::can_send(self.stop_signal.number()) {
            return Err(Error::UnsupportedSignal {
                command: self.command.clone(),
                signal: self.stop_signal,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NAMED_SIGNALS;

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
}

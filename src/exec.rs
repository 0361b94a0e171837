//! One-shot commands with logging: the successor of go-process's `exec` package.
//!
//! [`Command`] runs a program once and waits for it, outside any
//! [`ProcessService`](crate::ProcessService) (nothing is tracked, no events are published). The
//! command is logged at `debug` and a failure at `error` through `tracing`, with the fields
//! `program`, `args` and (for a non-zero exit) `exit_code`.
//!
//! ```no_run
//! use core_process::exec::{self, Command};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> core_process::Result<()> {
//! let head = Command::new("git").args(["rev-parse", "HEAD"]).dir("/src/app").output().await?;
//! exec::run_quiet("git", ["diff", "--quiet"]).await?; // stderr ends up in the error
//! # let _ = head; Ok(()) }
//! ```
//!
//! # Errors
//! A missing program is [`Error::CommandNotFound`] (a script whose `#!` interpreter is missing is
//! an [`Error::Spawn`] naming the interpreter), a working directory that is not a directory
//! is [`Error::WorkingDirectory`], and a command that ran but did not exit with code 0 is
//! [`Error::CommandFailed`], which names the command line and the exit code (or signal) and
//! carries the captured output.
//!
//! # Caveats
//! - Standard input is `/dev/null` unless [`Command::stdin`] gives it bytes.
//! - Capturing methods read until end of file: a background process that the command leaves
//!   running with its stdout or stderr open keeps them waiting.
//! - Dropping a running future kills the command (SIGKILL to the program itself; whatever it
//!   started keeps running).

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::command::{command_line, spawn_error, validate_command};
use crate::error::{Error, Result};
use crate::sys;
use crate::types::Signal;

/// A one-shot command: build it, then [`run`](Command::run), [`output`](Command::output) or
/// [`combined_output`](Command::combined_output). A `Command` can be run more than once.
///
/// ```
/// use core_process::exec::Command;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> core_process::Result<()> {
/// let out = Command::new("sh")
///     .args(["-c", "printf '%s:' \"$GREETING\"; cat"])
///     .env("GREETING", "hello")
///     .stdin("world")
///     .output()
///     .await?;
/// assert_eq!(out, "hello:world");
///
/// let err = Command::new("sh").args(["-c", "exit 3"]).run().await.unwrap_err();
/// assert_eq!(err.to_string(), "command `sh -c 'exit 3'` exited with code 3");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Command {
    program: String,
    args: Vec<String>,
    dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
}

/// Where the command's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// Inherited from the caller.
    None,
    /// Stdout and stderr captured apart.
    Separate,
    /// Both into one pipe, in the order they were written.
    Combined,
}

impl Command {
    /// A command running `program` (a path, or a name looked up on `PATH`).
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            program: program.into(),
            ..Default::default()
        }
    }

    command_setters!();

    /// Feeds `input` to the command's standard input, then closes it.
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// The command line, quoted for display: `sh -c 'exit 1'`.
    pub fn command_line(&self) -> String {
        command_line(&self.program, &self.args)
    }

    /// Runs the command with stdout and stderr inherited from the caller and waits for it.
    ///
    /// # Errors
    /// [`Error::CommandNotFound`], [`Error::WorkingDirectory`], [`Error::InvalidOptions`] (an
    /// empty program or a NUL byte), [`Error::Spawn`] when the OS refuses, and
    /// [`Error::CommandFailed`] for a non-zero exit (with empty `stderr` and `output`).
    ///
    /// # Cancel safety
    /// Dropping the future kills the command.
    pub async fn run(&self) -> Result<()> {
        self.execute(Capture::None).await.map(drop)
    }

    /// Runs the command and returns its stdout (lossy UTF-8); stderr is captured for the error.
    ///
    /// # Errors
    /// As [`run`](Command::run); [`Error::CommandFailed`] carries the trimmed stderr (shown in
    /// its message) and the stdout.
    ///
    /// # Cancel safety
    /// Dropping the future kills the command.
    pub async fn output(&self) -> Result<String> {
        self.execute(Capture::Separate).await
    }

    /// Runs the command and returns stdout and stderr interleaved as written (lossy UTF-8).
    ///
    /// # Errors
    /// As [`run`](Command::run); [`Error::CommandFailed`] carries the combined output in
    /// `output` (its `stderr` is empty, so the message stays one line).
    ///
    /// # Cancel safety
    /// Dropping the future kills the command.
    pub async fn combined_output(&self) -> Result<String> {
        self.execute(Capture::Combined).await
    }

    async fn execute(&self, capture: Capture) -> Result<String> {
        tracing::debug!(program = %self.program, args = ?self.args, "exec");
        let result = self.spawn_and_wait(capture).await;
        if let Err(e) = &result {
            tracing::error!(
                program = %self.program,
                args = ?self.args,
                exit_code = e.exit_code(),
                error = %e,
                "exec failed"
            );
        }
        result
    }

    fn check(&self) -> Result<()> {
        validate_command(&self.program, &self.args, &self.env, self.dir.as_deref())
    }

    async fn spawn_and_wait(&self, capture: Capture) -> Result<String> {
        self.check()?;
        let spawn_error =
            |source| spawn_error(&self.program, self.dir.as_deref(), &self.env, source);
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        let mut combined = None;
        match capture {
            Capture::None => {}
            Capture::Separate => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            Capture::Combined => {
                let io_error = |source| Error::Spawn {
                    command: self.program.clone(),
                    source,
                };
                let (read, write) = sys::output_pipe().map_err(io_error)?;
                let write_too = write.try_clone().map_err(io_error)?;
                cmd.stdout(Stdio::from(write))
                    .stderr(Stdio::from(write_too));
                combined = Some(read);
            }
        }
        let mut child = cmd.spawn().map_err(spawn_error)?;
        // Close our copies of the pipe's write end, so end of file arrives when the child's
        // close.
        drop(cmd);

        let feed = {
            let pipe = child.stdin.take();
            let input = self.stdin.clone();
            async move {
                if let (Some(mut pipe), Some(input)) = (pipe, input) {
                    // A child that exits without reading all of its input is not an error
                    // here: its exit status says how it went.
                    if let Err(e) = pipe.write_all(&input).await {
                        tracing::debug!(error = %e, "writing stdin of a command failed");
                    }
                }
            }
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (_, out, err, both, status) = tokio::join!(
            feed,
            read_to_end(stdout),
            read_to_end(stderr),
            read_to_end(combined),
            child.wait()
        );
        let status = status.map_err(|source| Error::Spawn {
            command: self.program.clone(),
            source,
        })?;
        let output = if capture == Capture::Combined {
            both
        } else {
            out
        };
        let output = String::from_utf8_lossy(&output).into_owned();
        if status.success() {
            return Ok(output);
        }
        Err(self.failure(status, String::from_utf8_lossy(&err).trim(), output))
    }

    fn failure(&self, status: ExitStatus, stderr: &str, output: String) -> Error {
        Error::CommandFailed {
            command: self.command_line(),
            code: status.code(),
            signal: match sys::exit_parts(status) {
                sys::Exit::Signal(number) => Some(Signal::from_number(number)),
                _ => None,
            },
            stderr: stderr.to_string(),
            output,
        }
    }
}

/// Everything `pipe` yields until end of file (what arrived before a read error).
async fn read_to_end<R: AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut buf).await;
    }
    buf
}

/// Runs `program` with `args`, discarding its stdout; on failure its trimmed stderr is folded
/// into the error's message.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = core_process::exec::run_quiet("sh", ["-c", "echo '  no such branch ' >&2; exit 1"])
///     .await
///     .unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "command `sh -c 'echo '\\''  no such branch '\\'' >&2; exit 1'` exited with code 1: no such branch"
/// );
/// # }
/// ```
///
/// # Errors
/// As [`Command::output`].
///
/// # Cancel safety
/// Dropping the future kills the command.
pub async fn run_quiet<I, S>(program: impl Into<String>, args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Command::new(program).args(args).output().await.map(drop)
}

//! The process fakes: [`ProcessController`] (a [`Process`] whose life a test drives),
//! [`FakeProcessService`] (a [`ProcessService`] that plays scripted runs), and what scripts
//! are made of: [`Match`] and [`FakeOutcome`].

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use shaku::{Component, HasComponent, Module, ModuleBuildContext};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::command::validate_command;
use crate::error::{Error, Result};
use crate::event::OutputBatch;
use crate::lifecycle::Lifecycle;
use crate::services::event_bus::{BroadcastEventBus, EventBus};
use crate::services::process::{
    Control, ControlReceiver, Ending, Input, Process, ProcessService, RunOptions, Spec,
};
use crate::sync::{cancelled, lock, sleep_until};
use crate::types::{Signal, Stream};

// ---- ProcessController ------------------------------------------------------------------

/// What a [`Process`] asked of whoever drives it, as [`ProcessController::next_request`]
/// hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// [`Process::signal`] or [`Process::kill`] (then `Signal::Kill`) was called; the caller
    /// was already answered `Ok`.
    Signal(Signal),
    /// [`Process::stop`] was called with this grace period.
    Stop {
        /// The grace period asked for.
        grace: Duration,
    },
}

/// What the process received on its stdin so far.
#[derive(Debug, Default)]
struct Received {
    data: Vec<u8>,
    closed: bool,
}

/// The writing end of a controlled process's stdin: never blocks, records everything.
struct Sink(watch::Sender<Received>);

impl tokio::io::AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.send_modify(|r| r.data.extend_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.send_modify(|r| r.closed = true);
        Poll::Ready(Ok(()))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.0.send_modify(|r| r.closed = true);
    }
}

static NEXT_CONTROLLED: AtomicU64 = AtomicU64::new(1);

/// The driving end of a [`Process`] that no child backs: a test (or a hand-written or
/// `mockall` mock of [`ProcessService`]) decides what it prints, how it answers signals and
/// stops, and how it ends.
///
/// The process is running from the start. [`stdout`](Self::stdout) and
/// [`stderr`](Self::stderr) store output as a child's would (whole lines are published at
/// once; an unfinished line waits for its newline or the end); [`exit`](Self::exit) and
/// [`killed`](Self::killed) end it, publishing `Killed`/`Exited` before waking its waiters.
/// Created [`with_bus`](Self::with_bus), it publishes `Started` and every event on that bus,
/// in the real service's order. Its pid is 0. Timeouts and cancellation tokens in the
/// [`RunOptions`] are the test's business: only [`FakeProcessService`] acts on them.
///
/// With [`RunOptions::stdin`] (the default), [`Process::send_input`] works and what it wrote is kept
/// ([`stdin`](Self::stdin)); without, it fails as on a real child.
///
/// A `mockall` mock of [`ProcessService`] returning one:
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use core_process::testing::ProcessController;
/// use core_process::{Lifecycle, Process, ProcessService, Result, RunOptions};
///
/// mockall::mock! {
///     Procs {}
///     #[async_trait]
///     impl Lifecycle for Procs {
///         fn name(&self) -> &str;
///     }
///     #[async_trait]
///     impl ProcessService for Procs {
///         async fn start(&self, opts: RunOptions) -> Result<Process>;
///         fn get(&self, id: &str) -> Result<Process>;
///         fn list(&self) -> Vec<Process>;
///         fn remove(&self, id: &str) -> Result<()>;
///         fn clear(&self);
///         async fn shutdown(&self) -> Result<()>;
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut mock = MockProcs::new();
/// mock.expect_start()
///     .withf(|opts| opts.command == "git")
///     .times(1)
///     .returning(|opts| {
///         let (process, mut control) = ProcessController::new(&opts);
///         control.stdout("main\n");
///         control.exit(0);
///         Ok(process)
///     });
/// let service: Arc<dyn ProcessService> = Arc::new(mock);
/// assert_eq!(service.run(RunOptions::new("git").arg("branch")).await.unwrap(), "main\n");
/// # }
/// ```
///
/// Driving a long-running one:
///
/// ```
/// use std::time::Duration;
/// use core_process::testing::{ProcessController, Request};
/// use core_process::{RunOptions, Signal, Status};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (process, mut control) = ProcessController::new(&RunOptions::new("server"));
/// let stopper = tokio::spawn({
///     let p = process.clone();
///     async move { p.stop(Duration::from_secs(5)).await }
/// });
/// assert_eq!(control.next_request().await, Request::Stop { grace: Duration::from_secs(5) });
/// control.killed(Signal::Term);
/// stopper.await.unwrap();
/// assert_eq!(process.status(), Status::Killed);
/// # }
/// ```
pub struct ProcessController {
    process: Process,
    requests: ControlReceiver,
    bus: Option<Arc<dyn EventBus>>,
    stdin: Option<watch::Receiver<Received>>,
    /// What the reader of each stream (stdout, stderr) holds back: an unfinished line.
    carry: [Vec<u8>; 2],
    finished: bool,
}

impl fmt::Debug for ProcessController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessController")
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

impl ProcessController {
    /// A running process for `opts` (id `mock-N`, pid 0) and its controller; no events.
    pub fn new(opts: &RunOptions) -> (Process, ProcessController) {
        let seq = NEXT_CONTROLLED.fetch_add(1, Ordering::Relaxed);
        ProcessController::build(seq, format!("mock-{seq}"), opts, None)
    }

    /// Like [`new`](Self::new), publishing `Started` on `bus` now and every later event too.
    pub fn with_bus(opts: &RunOptions, bus: Arc<dyn EventBus>) -> (Process, ProcessController) {
        let seq = NEXT_CONTROLLED.fetch_add(1, Ordering::Relaxed);
        ProcessController::build(seq, format!("mock-{seq}"), opts, Some(bus))
    }

    pub(crate) fn build(
        seq: u64,
        id: String,
        opts: &RunOptions,
        bus: Option<Arc<dyn EventBus>>,
    ) -> (Process, ProcessController) {
        let spec = Spec {
            seq,
            id: id.into(),
            command: opts.command.clone(),
            args: opts.args.clone(),
            dir: opts.dir.clone(),
            pid: 0,
            detach: opts.detach,
            grace: opts.grace_period,
            capture: (!opts.disable_capture)
                .then_some(opts.output_capacity.unwrap_or(crate::DEFAULT_BUFFER_SIZE)),
        };
        let (input, stdin) = if opts.stdin {
            let (tx, rx) = watch::channel(Received::default());
            (Some(Box::new(Sink(tx)) as Input), Some(rx))
        } else {
            (None, None)
        };
        let (process, requests) = Process::driven_with_input(spec, input);
        if let Some(bus) = &bus {
            bus.publish(process.started_event());
        }
        let controller = ProcessController {
            process: process.clone(),
            requests,
            bus,
            stdin,
            carry: [Vec::new(), Vec::new()],
            finished: false,
        };
        (process, controller)
    }

    /// The process this controls.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Prints `text` on stdout.
    pub fn stdout(&mut self, text: impl AsRef<str>) {
        self.output(Stream::Stdout, text.as_ref().as_bytes());
    }

    /// Prints `text` on stderr.
    pub fn stderr(&mut self, text: impl AsRef<str>) {
        self.output(Stream::Stderr, text.as_ref().as_bytes());
    }

    /// Prints `bytes` on `stream`: stored at once, whole lines published (as the supervisor's
    /// reader does).
    pub fn output(&mut self, stream: Stream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.process.record_output(bytes);
        let carry = &mut self.carry[stream_index(stream)];
        carry.extend_from_slice(bytes);
        let Some(end) = carry.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let rest = carry.split_off(end + 1);
        let lines = std::mem::replace(carry, rest);
        self.publish(stream, lines);
    }

    fn publish(&self, stream: Stream, bytes: Vec<u8>) {
        if let Some(bus) = &self.bus
            && !bytes.is_empty()
        {
            bus.publish_output(OutputBatch::new(
                self.process.shared_id().clone(),
                stream,
                bytes,
            ));
        }
    }

    /// Waits for the next thing asked of the process (signals are answered `Ok` as they are
    /// handed over). Waits for ever when nothing is asked.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next_request(&mut self) -> Request {
        answer(self.requests.recv().await)
    }

    /// The next thing asked of the process, if something was asked already.
    pub fn try_request(&mut self) -> Option<Request> {
        self.requests.try_recv().map(answer)
    }

    /// Everything written to the process's stdin so far (empty when stdin is not piped).
    pub fn stdin(&self) -> Vec<u8> {
        self.stdin
            .as_ref()
            .map(|rx| rx.borrow().data.clone())
            .unwrap_or_default()
    }

    /// Whether the process's stdin was closed ([`Process::close_stdin`]), or never piped.
    pub fn stdin_closed(&self) -> bool {
        self.stdin.as_ref().is_none_or(|rx| rx.borrow().closed)
    }

    /// Waits until stdin, from byte `from` on, contains `expected`; returns the offset just
    /// past it, or `None` when stdin is (or gets) closed first, or was never piped.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn read_stdin(&self, from: usize, expected: &str) -> Option<usize> {
        self.read_stdin_owned(from, expected.to_string()).await
    }

    /// Ends the process: it exited with `code`.
    pub fn exit(self, code: i32) {
        self.finish(Ending {
            exit_code: Some(code),
            ..Ending::default()
        });
    }

    /// Ends the process: `signal` killed it.
    pub fn killed(self, signal: Signal) {
        self.finish(Ending {
            signal: Some(signal),
            ..Ending::default()
        });
    }

    /// Ends the process: its timeout fired and `signal` killed it.
    pub fn timed_out(self, signal: Signal) {
        self.finish(Ending {
            signal: Some(signal),
            timed_out: true,
            ..Ending::default()
        });
    }

    fn finish(mut self, ending: Ending) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.carry[stream_index(stream)]);
            self.publish(stream, rest);
        }
        self.finished = true;
        self.process.finish(ending, self.bus.as_deref());
    }
}

impl Drop for ProcessController {
    /// Dropped before ending the process (a test that forgot, a runtime shutting down): the
    /// process ends failed, so that its waiters do not wait for ever.
    fn drop(&mut self) {
        if !self.finished {
            self.process.finish(
                Ending {
                    failure: Some("its controller was dropped before the process ended".into()),
                    ..Ending::default()
                },
                self.bus.as_deref(),
            );
        }
    }
}

fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

fn answer(control: Control) -> Request {
    match control {
        Control::Signal(signal, reply) => {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
            Request::Signal(signal)
        }
        Control::Stop(grace) => Request::Stop { grace },
    }
}

fn find(haystack: &[u8], needle: &str) -> Option<usize> {
    let needle = needle.as_bytes();
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---- Match ------------------------------------------------------------------------------

/// Which commands a script applies to. Every form looks at the whole command line as
/// [`RunOptions::command_line`] shows it (`sh -c 'exit 1'`: arguments that need it are quoted
/// as a shell would), except [`when`](Match::when), which sees the [`RunOptions`].
///
/// A plain string converts to a [`prefix`](Match::prefix): `"cargo test"` matches
/// `cargo test` and `cargo test --all`, not `cargo tester`; `"cargo"` matches every `cargo`
/// command.
#[derive(Clone)]
pub struct Match {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Exact(String),
    Prefix(String),
    Glob(String),
    Regex(regex::Regex),
    When(String, Arc<dyn Fn(&RunOptions) -> bool + Send + Sync>),
}

impl Match {
    /// The whole command line, exactly.
    pub fn exact(line: impl Into<String>) -> Self {
        Match {
            kind: Kind::Exact(line.into()),
        }
    }

    /// The command line, or its beginning up to a space: whole words only.
    pub fn prefix(line: impl Into<String>) -> Self {
        Match {
            kind: Kind::Prefix(line.into()),
        }
    }

    /// The whole command line against a glob: `*` matches any run of characters (spaces too),
    /// `?` any one character; everything else matches itself.
    pub fn glob(pattern: impl Into<String>) -> Self {
        Match {
            kind: Kind::Glob(pattern.into()),
        }
    }

    /// The command line against a regular expression (Rust `regex` syntax; unanchored: use
    /// `^…$` to match the whole line).
    ///
    /// # Errors
    /// [`Error::InvalidPattern`] when `pattern` does not parse.
    pub fn regex(pattern: &str) -> Result<Self> {
        let re = regex::Regex::new(pattern).map_err(|e| Error::InvalidPattern {
            pattern: pattern.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Match {
            kind: Kind::Regex(re),
        })
    }

    /// The commands for which `pred` holds; `description` names it in messages.
    pub fn when(
        description: impl Into<String>,
        pred: impl Fn(&RunOptions) -> bool + Send + Sync + 'static,
    ) -> Self {
        Match {
            kind: Kind::When(description.into(), Arc::new(pred)),
        }
    }

    /// Whether the script applies to `opts`.
    pub fn matches(&self, opts: &RunOptions) -> bool {
        let line = || opts.command_line();
        match &self.kind {
            Kind::Exact(l) => line() == *l,
            Kind::Prefix(p) => {
                let line = line();
                line.strip_prefix(p.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with(' ') || p.ends_with(' ')
                })
            }
            Kind::Glob(g) => glob(g.as_bytes(), line().as_bytes()),
            Kind::Regex(re) => re.is_match(&line()),
            Kind::When(_, pred) => pred(opts),
        }
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Exact(l) => write!(f, "exact {l:?}"),
            Kind::Prefix(p) => write!(f, "prefix {p:?}"),
            Kind::Glob(g) => write!(f, "glob {g:?}"),
            Kind::Regex(re) => write!(f, "regex {:?}", re.as_str()),
            Kind::When(d, _) => write!(f, "when {d:?}"),
        }
    }
}

impl fmt::Debug for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Match({self})")
    }
}

impl From<&str> for Match {
    fn from(line: &str) -> Self {
        Match::prefix(line)
    }
}

impl From<String> for Match {
    fn from(line: String) -> Self {
        Match::prefix(line)
    }
}

/// `*` (any run) and `?` (any one byte) glob matching, iterative with one backtrack point.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

// ---- FakeOutcome ------------------------------------------------------------------------

/// What a [`FakeProcessService`] pretends a command did: a run of steps (output on either
/// stream, in the order given; pauses; waiting for input), then an end (an exit code, a
/// signal, or running until stopped).
///
/// Delays are tokio sleeps: under `#[tokio::test(start_paused = true)]` they pass at once
/// when the runtime has nothing else to do. While a run is in a delay, waiting for input or
/// hanging, it answers signals, stops, its cancellation token and its timeout as a child
/// would: SIGKILL ends it; so does any other signal whose default action ends a process
/// (SIGTERM, SIGINT, SIGHUP, SIGUSR1, ...) unless the outcome [`ignores`](Self::ignoring) it;
/// SIGCONT, SIGCHLD, SIGWINCH, SIGURG, SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU change nothing. A stop
/// sends the stop signal and, if that does not end it, SIGKILL after the grace period.
///
/// ```
/// use std::time::Duration;
/// use core_process::testing::FakeOutcome;
/// use core_process::Signal;
///
/// let flaky = FakeOutcome::exit(1).stderr("connection refused\n");
/// let server = FakeOutcome::hang()
///     .stdout("listening\n")
///     .ignoring(Signal::Term); // a stop waits the whole grace period, then kills
/// let slow = FakeOutcome::success("")
///     .delay(Duration::from_secs(30))
///     .stdout("done\n");
/// let prompt = FakeOutcome::success("").stdout("continue? ").expect_stdin("y\n").stdout("ok\n");
/// # let _ = (flaky, server, slow, prompt);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeOutcome {
    steps: Vec<Step>,
    end: End,
    not_found: bool,
    ignored: Vec<Signal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Output(Stream, String),
    Delay(Duration),
    ExpectStdin(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Exit(i32),
    Signal(Signal),
    Hang,
}

impl Default for FakeOutcome {
    fn default() -> Self {
        FakeOutcome::exit(0)
    }
}

impl FakeOutcome {
    /// Prints `stdout` (when not empty), then exits 0.
    pub fn success(stdout: impl Into<String>) -> Self {
        FakeOutcome::exit(0).stdout(stdout)
    }

    /// Exits with `code` (after the steps added).
    pub fn exit(code: i32) -> Self {
        FakeOutcome {
            steps: Vec::new(),
            end: End::Exit(code),
            not_found: false,
            ignored: Vec::new(),
        }
    }

    /// Runs (after the steps added) until a signal, a stop, its cancellation token or its
    /// timeout ends it.
    pub fn hang() -> Self {
        FakeOutcome {
            end: End::Hang,
            ..FakeOutcome::exit(0)
        }
    }

    /// Fails to start with [`Error::CommandNotFound`], as a missing binary would.
    pub fn not_found() -> Self {
        FakeOutcome {
            not_found: true,
            ..FakeOutcome::exit(0)
        }
    }

    /// Then prints `text` on stdout.
    pub fn stdout(mut self, text: impl Into<String>) -> Self {
        let text = text.into();
        if !text.is_empty() {
            self.steps.push(Step::Output(Stream::Stdout, text));
        }
        self
    }

    /// Then prints `text` on stderr.
    pub fn stderr(mut self, text: impl Into<String>) -> Self {
        let text = text.into();
        if !text.is_empty() {
            self.steps.push(Step::Output(Stream::Stderr, text));
        }
        self
    }

    /// Then waits `delay` (tokio time).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.steps.push(Step::Delay(delay));
        self
    }

    /// Then waits until what was written to its stdin since the last such step contains
    /// `expected` (stdin is piped unless [`RunOptions::stdin`] is `false`; once stdin is
    /// closed, or when it is not piped, the run goes on). What was written is kept:
    /// [`FakeProcessService::stdin`].
    pub fn expect_stdin(mut self, expected: impl Into<String>) -> Self {
        self.steps.push(Step::ExpectStdin(expected.into()));
        self
    }

    /// Ends (after the steps) killed by `signal`, as if it had been sent by someone else.
    pub fn killed_by(mut self, signal: Signal) -> Self {
        self.end = End::Signal(signal);
        self
    }

    /// Survives `signal` (as a program that catches or ignores it). SIGKILL cannot be ignored.
    pub fn ignoring(mut self, signal: Signal) -> Self {
        if signal != Signal::Kill {
            self.ignored.push(signal);
        }
        self
    }

    fn blocks(step: &Step) -> bool {
        !matches!(step, Step::Output(..))
    }

    fn ends_on(&self, signal: Signal) -> bool {
        use Signal::*;
        match signal {
            Kill => true,
            Cont | Chld | Winch | Urg | Stop | Tstp | Ttin | Ttou => false,
            other => !self.ignored.contains(&other),
        }
    }
}

// ---- FakeProcessService -----------------------------------------------------------------

struct Script {
    matcher: Match,
    outcomes: Vec<FakeOutcome>,
    uses: usize,
}

#[derive(Default)]
struct FakeState {
    next: AtomicU64,
    scripts: Mutex<Vec<Script>>,
    fallback: Mutex<Option<FakeOutcome>>,
    started: Mutex<Vec<RunOptions>>,
    processes: Mutex<Vec<Process>>,
    inputs: Mutex<Vec<(String, watch::Receiver<Received>)>>,
}

/// A [`ProcessService`] that spawns nothing: every start plays the [`FakeOutcome`] of the
/// first script that [matches](Match) it, publishes the events the real service would, in
/// the same order and shape (`Started`, one `Output` per line, `Killed` when a signal ended
/// it, `Exited`; ids `fake-N`, pid 0), and is recorded ([`started`](Self::started)).
///
/// **Matching**: scripts are tried in the order they were added, and the first that matches
/// wins (like `match` arms: add the specific ones first). A command no script matches fails
/// to start with [`Error::Unscripted`], which lists the scripts tried, unless a
/// [`fallback`](Self::fallback) outcome was set. [`unused`](Self::unused) and
/// [`assert_all_used`](Self::assert_all_used) tell which scripts never matched.
///
/// **No file system, no network**: options are validated as [`RunOptions::validate`] does,
/// except that the working directory is not looked up (it is only recorded).
///
/// **Events**: as a shaku component it injects `dyn EventBus`, like the real service: build it
/// into a module with [`component_fn`](Self::component_fn) (or use
/// [`FakeModule`](crate::testing::FakeModule), which wires every fake at once) and it
/// publishes on the module's bus. [`new`](Self::new) gives it a bus of its own,
/// [`with_bus`](Self::with_bus) the one given.
///
/// Cloning gives another handle to the same fake (scripts, records, processes), so a test
/// keeps one while the module owns the other.
///
/// ```
/// use std::sync::Arc;
/// use core_process::testing::{FakeOutcome, FakeProcessService, Match};
/// use core_process::{Error, ProcessModule, ProcessService, RunOptions};
/// use shaku::HasComponent;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let fake = FakeProcessService::new();
/// fake.script("cargo clippy", FakeOutcome::exit(1).stderr("warning: unused\n"))
///     .script(Match::glob("git *"), FakeOutcome::success("main\n"))
///     .script("cargo", FakeOutcome::success(""));
///
/// let module = ProcessModule::builder()
///     .with_component_override_fn::<dyn ProcessService>(fake.component_fn())
///     .build();
/// let service: Arc<dyn ProcessService> = module.resolve();
///
/// assert_eq!(service.run(RunOptions::new("git").arg("branch")).await.unwrap(), "main\n");
/// let err = service.run(RunOptions::new("cargo").args(["clippy", "--all"])).await.unwrap_err();
/// assert_eq!(err.exit_code(), Some(1));
/// let err = service.run(RunOptions::new("make")).await.unwrap_err();
/// assert!(matches!(err, Error::Unscripted { .. }), "{err}");
/// assert_eq!(fake.unused(), ["prefix \"cargo\""]);
/// assert_eq!(fake.command_lines(), ["git branch", "cargo clippy --all", "make"]);
/// # }
/// ```
#[derive(Clone, Component)]
#[shaku(interface = ProcessService)]
pub struct FakeProcessService {
    #[shaku(inject)]
    bus: Arc<dyn EventBus>,
    #[shaku(force_default)]
    state: Arc<FakeState>,
}

impl Default for FakeProcessService {
    fn default() -> Self {
        FakeProcessService::new()
    }
}

impl fmt::Debug for FakeProcessService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeProcessService")
            .field("scripts", &lock(&self.state.scripts).len())
            .field("started", &lock(&self.state.started).len())
            .finish_non_exhaustive()
    }
}

impl FakeProcessService {
    /// A fake publishing to a bus of its own.
    pub fn new() -> Self {
        FakeProcessService::with_bus(Arc::new(BroadcastEventBus::default()))
    }

    /// A fake publishing to `bus`.
    pub fn with_bus(bus: Arc<dyn EventBus>) -> Self {
        FakeProcessService {
            bus,
            state: Arc::default(),
        }
    }

    /// Another handle to this fake (same scripts and records) that publishes to `bus`.
    pub fn on_bus(&self, bus: Arc<dyn EventBus>) -> Self {
        FakeProcessService {
            bus,
            state: self.state.clone(),
        }
    }

    /// For `with_component_override_fn::<dyn ProcessService>` on a module's builder: the module
    /// gets a handle to this fake that publishes on the module's own bus.
    pub fn component_fn<M>(&self) -> shaku::ComponentFn<M, dyn ProcessService>
    where
        M: Module + HasComponent<dyn EventBus>,
    {
        let fake = self.clone();
        Box::new(move |ctx: &mut ModuleBuildContext<M>| {
            let bus: Arc<dyn EventBus> = M::build_component(ctx);
            Box::new(fake.on_bus(bus))
        })
    }

    /// Adds a script: the commands `matcher` matches (a plain string is a
    /// [`prefix`](Match::prefix)) get `outcome`.
    pub fn script(&self, matcher: impl Into<Match>, outcome: FakeOutcome) -> &Self {
        self.script_sequence(matcher, [outcome])
    }

    /// Adds a script whose matches get the outcomes in turn (the first call fails, the second
    /// succeeds...); once they are used up, the last one repeats. An empty list adds nothing.
    pub fn script_sequence(
        &self,
        matcher: impl Into<Match>,
        outcomes: impl IntoIterator<Item = FakeOutcome>,
    ) -> &Self {
        let outcomes: Vec<_> = outcomes.into_iter().collect();
        if !outcomes.is_empty() {
            lock(&self.state.scripts).push(Script {
                matcher: matcher.into(),
                outcomes,
                uses: 0,
            });
        }
        self
    }

    /// What commands that no script matches do (`None`: fail with [`Error::Unscripted`], the
    /// default).
    pub fn fallback(&self, outcome: Option<FakeOutcome>) -> &Self {
        *lock(&self.state.fallback) = outcome;
        self
    }

    /// The scripts that never matched a command, as `prefix "cargo test"`, in order.
    pub fn unused(&self) -> Vec<String> {
        lock(&self.state.scripts)
            .iter()
            .filter(|s| s.uses == 0)
            .map(|s| s.matcher.to_string())
            .collect()
    }

    /// Panics, naming them, if some scripts never matched a command. For the end of a test.
    #[track_caller]
    pub fn assert_all_used(&self) {
        let unused = self.unused();
        assert!(
            unused.is_empty(),
            "scripts that matched no command: {}; commands started: {:?}",
            unused.join(", "),
            self.command_lines()
        );
    }

    /// The options of every start, in order (including those that failed to start).
    pub fn started(&self) -> Vec<RunOptions> {
        lock(&self.state.started).clone()
    }

    /// The command lines of every start, in order.
    pub fn command_lines(&self) -> Vec<String> {
        lock(&self.state.started)
            .iter()
            .map(RunOptions::command_line)
            .collect()
    }

    /// Whether some start's command line is `line` (or begins with it, up to a space).
    pub fn ran(&self, line: &str) -> bool {
        let m = Match::prefix(line);
        lock(&self.state.started).iter().any(|o| m.matches(o))
    }

    /// What was written to the stdin of process `id` (`None`: no such process, or its stdin
    /// was not piped).
    pub fn stdin(&self, id: &str) -> Option<String> {
        lock(&self.state.inputs)
            .iter()
            .find(|(pid, _)| pid == id)
            .map(|(_, rx)| String::from_utf8_lossy(&rx.borrow().data).into_owned())
    }

    /// The bus the fake publishes to.
    pub fn event_bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    fn pick(&self, opts: &RunOptions) -> Result<FakeOutcome> {
        let mut scripts = lock(&self.state.scripts);
        if let Some(script) = scripts.iter_mut().find(|s| s.matcher.matches(opts)) {
            let i = script.uses.min(script.outcomes.len() - 1);
            script.uses += 1;
            return Ok(script.outcomes[i].clone());
        }
        if let Some(outcome) = lock(&self.state.fallback).clone() {
            return Ok(outcome);
        }
        Err(Error::Unscripted {
            command: opts.command_line(),
            tried: scripts.iter().map(|s| s.matcher.to_string()).collect(),
        })
    }
}

/// [`RunOptions::validate`] on the options alone: the working directory is not looked up.
fn validate_inputs(opts: &RunOptions) -> Result<()> {
    validate_command(&opts.command, &opts.args, &opts.env, None)?;
    if !crate::sys::can_send(opts.stop_signal.number()) {
        return Err(Error::UnsupportedSignal {
            command: opts.command.clone(),
            signal: opts.stop_signal,
        });
    }
    Ok(())
}

#[async_trait]
impl Lifecycle for FakeProcessService {
    async fn on_stop(&self) -> Result<()> {
        self.shutdown().await
    }
}

#[async_trait]
impl ProcessService for FakeProcessService {
    async fn start(&self, opts: RunOptions) -> Result<Process> {
        lock(&self.state.started).push(opts.clone());
        validate_inputs(&opts)?;
        let outcome = self.pick(&opts)?;
        if outcome.not_found {
            return Err(Error::CommandNotFound {
                command: opts.command,
            });
        }
        let seq = self.state.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (process, mut control) =
            ProcessController::build(seq, format!("fake-{seq}"), &opts, Some(self.bus.clone()));
        lock(&self.state.processes).push(process.clone());
        if let Some(rx) = &control.stdin {
            lock(&self.state.inputs).push((process.id().to_string(), rx.clone()));
        }
        // What needs no waiting happens before `start` returns; the rest on a task.
        let mut steps = outcome.steps.clone();
        let waiting = steps
            .iter()
            .position(FakeOutcome::blocks)
            .unwrap_or(steps.len());
        for step in steps.drain(..waiting) {
            if let Step::Output(stream, text) = step {
                control.output(stream, text.as_bytes());
            }
        }
        match (steps.is_empty(), outcome.end) {
            (true, End::Exit(code)) => control.exit(code),
            (true, End::Signal(signal)) => control.killed(signal),
            _ => {
                let run = Run {
                    control,
                    outcome: outcome.clone(),
                    stop_signal: opts.stop_signal,
                    grace: opts.grace_period,
                    deadline: opts
                        .timeout
                        .and_then(|t| tokio::time::Instant::now().checked_add(t)),
                    cancel: opts.cancel.clone(),
                    stopping: false,
                    kill_at: None,
                    timed_out: false,
                };
                tokio::spawn(run.play(steps));
            }
        }
        Ok(process)
    }

    fn get(&self, id: &str) -> Result<Process> {
        lock(&self.state.processes)
            .iter()
            .find(|p| p.id() == id)
            .cloned()
            .ok_or_else(|| Error::ProcessNotFound { id: id.to_string() })
    }

    fn list(&self) -> Vec<Process> {
        lock(&self.state.processes).clone()
    }

    fn remove(&self, id: &str) -> Result<()> {
        let process = self.get(id)?;
        if process.is_running() {
            return Err(Error::StillRunning {
                id: id.to_string(),
                pid: 0,
            });
        }
        lock(&self.state.processes).retain(|p| p.id() != id);
        Ok(())
    }

    fn clear(&self) {
        lock(&self.state.processes).retain(Process::is_running);
    }

    async fn shutdown(&self) -> Result<()> {
        for p in self.running() {
            if !p.detached() {
                p.stop(Duration::ZERO).await;
            }
        }
        Ok(())
    }
}

/// The rest of a scripted run, played on a task: what the supervisor does for a child.
struct Run {
    control: ProcessController,
    outcome: FakeOutcome,
    stop_signal: Signal,
    grace: Duration,
    deadline: Option<tokio::time::Instant>,
    cancel: Option<CancellationToken>,
    stopping: bool,
    kill_at: Option<tokio::time::Instant>,
    timed_out: bool,
}

/// Something that happened to a run while it waited.
enum Wake {
    Control(Control),
    Cancelled,
    TimedOut,
    GraceOver,
}

impl Run {
    async fn play(mut self, steps: Vec<Step>) {
        let mut stdin_at = 0;
        for step in steps {
            let signal = match step {
                Step::Output(stream, text) => {
                    self.control.output(stream, text.as_bytes());
                    continue;
                }
                Step::Delay(delay) => {
                    let until = tokio::time::Instant::now().checked_add(delay);
                    loop {
                        tokio::select! {
                            biased;
                            wake = self.wake() => if let Some(s) = self.on_wake(wake) { break Some(s) },
                            _ = sleep_until(until) => break None,
                        }
                    }
                }
                Step::ExpectStdin(expected) => {
                    let read = self.control.read_stdin_owned(stdin_at, expected);
                    tokio::pin!(read);
                    loop {
                        tokio::select! {
                            biased;
                            wake = self.wake() => if let Some(s) = self.on_wake(wake) { break Some(s) },
                            read = &mut read => {
                                stdin_at = read.unwrap_or(stdin_at);
                                break None;
                            }
                        }
                    }
                }
            };
            if let Some(signal) = signal {
                return self.end_killed(signal);
            }
        }
        match self.outcome.end {
            End::Exit(code) => self.control.exit(code),
            End::Signal(signal) => self.control.killed(signal),
            End::Hang => loop {
                let wake = self.wake().await;
                if let Some(signal) = self.on_wake(wake) {
                    return self.end_killed(signal);
                }
            },
        }
    }

    fn end_killed(self, signal: Signal) {
        if self.timed_out {
            self.control.timed_out(signal);
        } else {
            self.control.killed(signal);
        }
    }

    async fn wake(&mut self) -> Wake {
        wake_of(
            &mut self.control.requests,
            self.cancel.as_ref(),
            self.deadline,
            self.kill_at,
        )
        .await
    }

    /// Acts on `wake` as the supervisor would; returns the signal that ends the run, if any.
    fn on_wake(&mut self, wake: Wake) -> Option<Signal> {
        match wake {
            Wake::Control(Control::Signal(signal, reply)) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                self.outcome.ends_on(signal).then_some(signal)
            }
            Wake::Control(Control::Stop(grace)) => self.begin_stop(grace),
            Wake::Cancelled => {
                self.cancel = None;
                Some(Signal::Kill)
            }
            Wake::TimedOut => {
                self.deadline = None;
                self.timed_out = true;
                self.begin_stop(self.grace)
            }
            Wake::GraceOver => Some(Signal::Kill),
        }
    }

    fn begin_stop(&mut self, grace: Duration) -> Option<Signal> {
        if grace.is_zero() {
            return Some(Signal::Kill);
        }
        if !self.stopping {
            self.stopping = true;
            if self.outcome.ends_on(self.stop_signal) {
                return Some(self.stop_signal);
            }
        }
        if let Some(at) = tokio::time::Instant::now().checked_add(grace) {
            self.kill_at = Some(self.kill_at.map_or(at, |k| k.min(at)));
        }
        None
    }
}

async fn wake_of(
    requests: &mut ControlReceiver,
    cancel: Option<&CancellationToken>,
    deadline: Option<tokio::time::Instant>,
    kill_at: Option<tokio::time::Instant>,
) -> Wake {
    tokio::select! {
        biased;
        control = requests.recv() => Wake::Control(control),
        _ = cancelled(cancel) => Wake::Cancelled,
        _ = sleep_until(deadline) => Wake::TimedOut,
        _ = sleep_until(kill_at) => Wake::GraceOver,
    }
}

impl ProcessController {
    /// [`read_stdin`](Self::read_stdin) on a clone of the receiver, so the request channel
    /// stays free to borrow.
    fn read_stdin_owned(
        &self,
        from: usize,
        expected: String,
    ) -> impl std::future::Future<Output = Option<usize>> + Send + 'static {
        let rx = self.stdin.clone();
        async move {
            let mut rx = rx?;
            let found = |r: &Received| find(r.data.get(from..).unwrap_or_default(), &expected);
            let seen = rx.wait_for(|r| r.closed || found(r).is_some()).await.ok()?;
            found(&seen).map(|at| from + at + expected.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ProcessEvent;
    use crate::testing::RecordingEventBus;
    use crate::types::Status;

    fn opts(line: &str) -> RunOptions {
        let mut words = line.split(' ');
        RunOptions::new(words.next().unwrap()).args(words)
    }

    #[test]
    fn matches_exact_prefix_glob_regex_and_predicates() {
        let exact = Match::exact("cargo test");
        assert!(exact.matches(&opts("cargo test")));
        assert!(!exact.matches(&opts("cargo test --all")));
        let prefix = Match::from("cargo test");
        assert!(prefix.matches(&opts("cargo test")));
        assert!(prefix.matches(&opts("cargo test --all")));
        assert!(!prefix.matches(&opts("cargo tester")));
        assert!(!prefix.matches(&opts("cargo clippy")));
        let glob = Match::glob("cargo * --all");
        assert!(glob.matches(&opts("cargo test --all")));
        assert!(glob.matches(&opts("cargo build --release --all")));
        assert!(!glob.matches(&opts("cargo test")));
        assert!(
            Match::glob("sh -c 'exit ?'").matches(&RunOptions::new("sh").args(["-c", "exit 1"]))
        );
        let re = Match::regex(r"^cargo (test|build)\b").unwrap();
        assert!(re.matches(&opts("cargo build --release")));
        assert!(!re.matches(&opts("cargo clippy")));
        let when = Match::when("in /src", |o| o.dir.as_deref() == Some("/src".as_ref()));
        assert!(when.matches(&opts("make").dir("/src")));
        assert!(!when.matches(&opts("make")));
        assert_eq!(when.to_string(), "when \"in /src\"");
        assert!(matches!(
            Match::regex("("),
            Err(Error::InvalidPattern { pattern, .. }) if pattern == "("
        ));
    }

    #[test]
    fn glob_handles_stars_and_backtracking() {
        for (p, t, ok) in [
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*ab", "aab", true),
            ("?", "", false),
            ("a?c", "abc", true),
            ("**x", "yyx", true),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), ok, "{p:?} vs {t:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The hand-written glob agrees with the same pattern as an anchored regex.
        #[test]
        fn glob_agrees_with_regex(pattern in "[ab*? ]{0,8}", text in "[ab ]{0,10}") {
            let translated: String = pattern
                .chars()
                .map(|c| match c {
                    '*' => "(?s:.*)".to_string(),
                    '?' => "(?s:.)".to_string(),
                    c => regex::escape(&c.to_string()),
                })
                .collect();
            let re = regex::Regex::new(&format!("^{translated}$")).unwrap();
            proptest::prop_assert_eq!(glob(pattern.as_bytes(), text.as_bytes()), re.is_match(&text));
        }

        /// A prefix of whole words matches; cutting a word short does not.
        #[test]
        fn a_word_prefix_matches(words in proptest::collection::vec("[a-z]{1,4}", 1..5), k in 1usize..5) {
            let k = k.min(words.len());
            let o = RunOptions::new(words[0].clone()).args(words[1..].iter().cloned());
            proptest::prop_assert!(Match::prefix(words[..k].join(" ")).matches(&o));
            let last = &words[k - 1];
            if last.len() > 1 {
                let cut = format!("{} {}", words[..k - 1].join(" "), &last[..last.len() - 1]);
                proptest::prop_assert!(!Match::prefix(cut.trim_start()).matches(&o));
            }
        }
    }

    #[tokio::test]
    async fn first_registered_script_wins_and_unmatched_commands_are_errors() {
        let fake = FakeProcessService::new();
        fake.script("cargo clippy", FakeOutcome::exit(1))
            .script("cargo", FakeOutcome::success("ok\n"))
            .script(Match::exact("never"), FakeOutcome::exit(0));
        let err = fake
            .run(opts("cargo clippy --all-targets"))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), Some(1));
        assert_eq!(fake.run(opts("cargo test")).await.unwrap(), "ok\n");
        let err = fake.run(opts("make all")).await.unwrap_err();
        match &err {
            Error::Unscripted { command, tried } => {
                assert_eq!(command, "make all");
                assert_eq!(
                    tried,
                    &[
                        "prefix \"cargo clippy\"",
                        "prefix \"cargo\"",
                        "exact \"never\""
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("prefix \"cargo clippy\""), "{err}");
        assert_eq!(fake.unused(), ["exact \"never\""]);
        fake.fallback(Some(FakeOutcome::exit(3)));
        assert_eq!(
            fake.run(opts("make")).await.unwrap_err().exit_code(),
            Some(3)
        );
        assert!(fake.ran("cargo clippy"));
        assert!(!fake.ran("cargo build"));
    }

    #[test]
    #[should_panic(expected = "scripts that matched no command: prefix \"deploy\"")]
    fn assert_all_used_names_the_unused_scripts() {
        let fake = FakeProcessService::new();
        fake.script("deploy", FakeOutcome::exit(0));
        fake.assert_all_used();
    }

    #[tokio::test]
    async fn sequences_play_in_turn_then_repeat_the_last() {
        let fake = FakeProcessService::new();
        fake.script_sequence("curl", [FakeOutcome::exit(7), FakeOutcome::success("up\n")]);
        assert_eq!(
            fake.run(opts("curl x")).await.unwrap_err().exit_code(),
            Some(7)
        );
        assert_eq!(fake.run(opts("curl x")).await.unwrap(), "up\n");
        assert_eq!(fake.run(opts("curl x")).await.unwrap(), "up\n");
        fake.assert_all_used();
    }

    #[tokio::test]
    async fn output_keeps_its_order_across_streams() {
        let bus = RecordingEventBus::new();
        let fake = FakeProcessService::with_bus(Arc::new(bus.clone()));
        fake.script(
            "make",
            FakeOutcome::exit(2)
                .stdout("a\n")
                .stderr("oops\n")
                .stdout("b\n"),
        );
        let p = fake.start(opts("make all")).await.unwrap();
        assert_eq!(p.status(), Status::Exited);
        assert_eq!(p.output(), "a\noops\nb\n");
        let lines: Vec<_> = bus
            .events_for(p.id())
            .into_iter()
            .filter_map(|e| match e {
                ProcessEvent::Output { stream, line, .. } => Some((stream, line.to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(
            lines,
            [
                (Stream::Stdout, "a".to_string()),
                (Stream::Stderr, "oops".to_string()),
                (Stream::Stdout, "b".to_string())
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delays_run_on_the_paused_clock() {
        let fake = FakeProcessService::new();
        fake.script(
            "build",
            FakeOutcome::success("compiling\n")
                .delay(Duration::from_secs(600))
                .stdout("done\n"),
        );
        let before = tokio::time::Instant::now();
        let p = fake.start(opts("build")).await.unwrap();
        assert!(p.is_running());
        assert_eq!(p.output(), "compiling\n");
        p.wait().await.unwrap();
        assert_eq!(p.output(), "compiling\ndone\n");
        assert!(before.elapsed() >= Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_ends_a_delay() {
        let fake = FakeProcessService::new();
        fake.script(
            "slow",
            FakeOutcome::success("").delay(Duration::from_secs(60)),
        );
        let p = fake
            .start(opts("slow").timeout(Duration::from_secs(5)))
            .await
            .unwrap();
        let err = p.wait().await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Killed {
                    signal: Signal::Term,
                    timed_out: true,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_waits_the_grace_period_when_the_stop_signal_is_ignored() {
        let fake = FakeProcessService::new();
        fake.script("server", FakeOutcome::hang().ignoring(Signal::Term));
        let p = fake.start(opts("server")).await.unwrap();
        p.signal(Signal::Term).await.unwrap();
        p.signal(Signal::Winch).await.unwrap();
        assert!(p.is_running());
        let before = tokio::time::Instant::now();
        p.stop(Duration::from_secs(10)).await;
        assert!(before.elapsed() >= Duration::from_secs(10));
        assert_eq!(p.signal_received(), Some(Signal::Kill));

        fake.script("polite", FakeOutcome::hang());
        let p = fake.start(opts("polite")).await.unwrap();
        p.stop(Duration::from_secs(10)).await;
        assert_eq!(p.signal_received(), Some(Signal::Term));
    }

    #[tokio::test]
    async fn hang_until_killed() {
        let fake = FakeProcessService::new();
        fake.script("server", FakeOutcome::hang());
        let p = fake.start(opts("server")).await.unwrap();
        assert!(p.is_running());
        assert!(matches!(
            fake.remove(p.id()),
            Err(Error::StillRunning { .. })
        ));
        fake.kill(p.id()).await.unwrap();
        assert_eq!(p.status(), Status::Killed);
        assert_eq!(p.signal_received(), Some(Signal::Kill));
        assert!(matches!(
            p.signal(Signal::Term).await,
            Err(Error::NotRunning { .. })
        ));
        fake.remove(p.id()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn hang_honours_cancel_and_timeout() {
        let fake = FakeProcessService::new();
        fake.script("server", FakeOutcome::hang());
        let token = CancellationToken::new();
        let cancelled = fake
            .start(opts("server").cancel(token.clone()))
            .await
            .unwrap();
        let timed = fake
            .start(opts("server").timeout(Duration::from_secs(30)))
            .await
            .unwrap();
        token.cancel();
        cancelled.done().await;
        assert_eq!(cancelled.signal_received(), Some(Signal::Kill));
        let err = timed.wait().await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Killed {
                    timed_out: true,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn expected_stdin_gates_the_run_and_is_recorded() {
        let fake = FakeProcessService::new();
        fake.script(
            "deploy",
            FakeOutcome::success("continue? ")
                .expect_stdin("y\n")
                .stdout("deployed\n"),
        );
        let p = fake.start(opts("deploy")).await.unwrap();
        assert!(p.is_running());
        p.send_input("n").await.unwrap();
        tokio::task::yield_now().await;
        assert!(p.is_running(), "no `y` yet");
        p.send_input("o\ny\n").await.unwrap();
        p.wait().await.unwrap();
        assert_eq!(p.output(), "continue? deployed\n");
        assert_eq!(fake.stdin(p.id()).as_deref(), Some("no\ny\n"));

        // Without a pipe, input is refused as on a real child, and the run goes on.
        let p = fake.start(opts("deploy").stdin(false)).await.unwrap();
        assert!(matches!(
            p.send_input("y\n").await,
            Err(Error::StdinClosed { .. })
        ));
        p.wait().await.unwrap();
        assert_eq!(fake.stdin(p.id()), None);
    }

    #[tokio::test]
    async fn not_found_and_bad_input_are_typed_errors() {
        let fake = FakeProcessService::new();
        fake.script("ghost", FakeOutcome::not_found());
        assert!(matches!(
            fake.start(opts("ghost")).await,
            Err(Error::CommandNotFound { .. })
        ));
        assert!(matches!(
            fake.start(RunOptions::new("")).await,
            Err(Error::InvalidOptions { .. })
        ));
        assert_eq!(fake.started().len(), 2);
    }

    #[tokio::test]
    async fn the_working_directory_is_recorded_not_looked_up() {
        let fake = FakeProcessService::new();
        fake.script("make", FakeOutcome::success(""));
        let dir = "/no/such/dir/core-process-fake";
        assert!(!std::path::Path::new(dir).exists());
        let p = fake.start(opts("make").dir(dir)).await.unwrap();
        p.wait().await.unwrap();
        assert_eq!(p.dir(), Some(dir.as_ref()));
    }

    #[tokio::test]
    async fn a_dropped_controller_fails_its_process() {
        let (p, control) = ProcessController::new(&RunOptions::new("x"));
        drop(control);
        assert!(matches!(p.wait().await, Err(Error::Failed { .. })));
    }

    #[tokio::test]
    async fn a_controller_publishes_whole_lines_in_order() {
        let bus = RecordingEventBus::new();
        let (p, mut control) =
            ProcessController::with_bus(&RunOptions::new("x"), Arc::new(bus.clone()));
        control.stdout("par");
        control.stdout("tial\nnext");
        assert_eq!(bus.lines(p.id(), Stream::Stdout), ["partial"]);
        assert!(control.try_request().is_none());
        let signal = tokio::spawn({
            let p = p.clone();
            async move { p.signal(Signal::Usr1).await }
        });
        assert_eq!(control.next_request().await, Request::Signal(Signal::Usr1));
        signal.await.unwrap().unwrap();
        control.exit(0);
        assert_eq!(bus.lines(p.id(), Stream::Stdout), ["partial", "next"]);
        assert!(matches!(
            bus.events_for(p.id()).last(),
            Some(ProcessEvent::Exited {
                exit_code: Some(0),
                ..
            })
        ));
        p.wait().await.unwrap();
    }
}

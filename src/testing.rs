//! Fakes for host-application tests (feature `testing`).
//!
//! Swap them into [`ProcessModule`](crate::ProcessModule) with
//! `with_component_override::<dyn ProcessService>(Box::new(fake))`, or list them as components
//! of a test module. They spawn nothing, touch no file and bind no port.
//!
//! ```
//! use std::sync::Arc;
//! use core_process::testing::{FakeOutcome, FakeProcessService};
//! use core_process::{ProcessModule, ProcessService, RunOptions};
//! use shaku::HasComponent;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let fake = FakeProcessService::new();
//! fake.script("git", FakeOutcome::success("main\n"));
//! fake.script("make", FakeOutcome::exit(2).stderr("no rule\n"));
//!
//! let module = ProcessModule::builder()
//!     .with_component_override::<dyn ProcessService>(Box::new(fake.clone()))
//!     .build();
//! let service: Arc<dyn ProcessService> = module.resolve();
//!
//! assert_eq!(service.run(RunOptions::new("git").arg("branch")).await.unwrap(), "main\n");
//! let err = service.run(RunOptions::new("make")).await.unwrap_err();
//! assert_eq!(err.exit_code(), Some(2));
//! assert_eq!(fake.command_lines(), ["git branch", "make"]);
//! # }
//! ```
//!
//! Daemon fakes: [`MemoryRegistry`], [`FakePidLock`], [`FakeHealthService`] (with a shared
//! [`CallLog`]), and [`http_get`] for asserting on a real health server.

mod daemon;
pub use daemon::*;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shaku::Component;

use crate::error::{Error, Result};
use crate::event::{OutputBatch, ProcessEvent};
use crate::lifecycle::Lifecycle;
use crate::services::event_bus::Subscription;
use crate::services::event_bus::{BroadcastEventBus, EventBus, Pause};
use crate::services::process::ProcessService;
use crate::services::process::{Control, Ending, Process, RunOptions, Spec};
use crate::types::{Signal, Stream};

use crate::sync::{cancelled, lock, sleep_until};

/// What a [`FakeProcessService`] pretends a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeOutcome {
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
    /// Its exit code (ignored when `signal` is set or `hang` is true).
    pub exit_code: i32,
    /// The signal that "killed" it, if any.
    pub signal: Option<Signal>,
    /// Keep "running" until killed, signalled, stopped, cancelled (`RunOptions::cancel`) or
    /// timed out (`RunOptions::timeout`); then end killed by that signal.
    pub hang: bool,
    /// Fail to start with [`Error::CommandNotFound`].
    pub not_found: bool,
}

impl FakeOutcome {
    /// Exit 0 after printing `stdout`.
    pub fn success(stdout: impl Into<String>) -> Self {
        FakeOutcome {
            stdout: stdout.into(),
            ..Default::default()
        }
    }

    /// Exit with `code`, printing nothing.
    pub fn exit(code: i32) -> Self {
        FakeOutcome {
            exit_code: code,
            ..Default::default()
        }
    }

    /// Run until killed or stopped.
    pub fn hang() -> Self {
        FakeOutcome {
            hang: true,
            ..Default::default()
        }
    }

    /// Fail to start, as a missing binary would.
    pub fn not_found() -> Self {
        FakeOutcome {
            not_found: true,
            ..Default::default()
        }
    }

    /// Also print `stdout`.
    pub fn stdout(mut self, stdout: impl Into<String>) -> Self {
        self.stdout = stdout.into();
        self
    }

    /// Also print `stderr`.
    pub fn stderr(mut self, stderr: impl Into<String>) -> Self {
        self.stderr = stderr.into();
        self
    }

    /// End "killed" by `signal`.
    pub fn killed_by(mut self, signal: Signal) -> Self {
        self.signal = Some(signal);
        self
    }
}

/// A [`ProcessService`] that spawns nothing: each command gets the [`FakeOutcome`] scripted for
/// its program name (exit 0 with no output when none is), every start is recorded, and the usual
/// events are published on its bus.
///
/// Cloning gives another handle to the same fake, so a test can keep one while the module owns
/// the other.
#[derive(Clone, Component)]
#[shaku(interface = ProcessService)]
pub struct FakeProcessService {
    #[shaku(inject)]
    bus: Arc<dyn EventBus>,
    #[shaku(force_default)]
    state: Arc<FakeState>,
}

#[derive(Default)]
struct FakeState {
    next: AtomicU64,
    scripts: Mutex<HashMap<String, FakeOutcome>>,
    started: Mutex<Vec<RunOptions>>,
    processes: Mutex<Vec<Process>>,
}

impl Default for FakeProcessService {
    fn default() -> Self {
        FakeProcessService::new()
    }
}

impl std::fmt::Debug for FakeProcessService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProcessService")
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

    /// Scripts what `program` does from now on.
    pub fn script(&self, program: impl Into<String>, outcome: FakeOutcome) -> &Self {
        lock(&self.state.scripts).insert(program.into(), outcome);
        self
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

    /// The bus the fake publishes to.
    pub fn event_bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }
}

#[async_trait]
impl Lifecycle for FakeProcessService {
    fn name(&self) -> &str {
        "FakeProcessService"
    }

    async fn on_stop(&self) -> Result<()> {
        self.shutdown().await
    }
}

#[async_trait]
impl ProcessService for FakeProcessService {
    async fn start(&self, opts: RunOptions) -> Result<Process> {
        lock(&self.state.started).push(opts.clone());
        opts.validate()?;
        let outcome = lock(&self.state.scripts)
            .get(&opts.command)
            .cloned()
            .unwrap_or_default();
        if outcome.not_found {
            return Err(Error::CommandNotFound {
                command: opts.command,
            });
        }
        let seq = self.state.next.fetch_add(1, Ordering::Relaxed) + 1;
        let spec = Spec {
            seq,
            id: format!("fake-{seq}").into(),
            command: opts.command.clone(),
            args: opts.args.clone(),
            dir: opts.dir.clone(),
            pid: 0,
            detach: opts.detach,
            grace: opts.grace_period,
            capture: (!opts.disable_capture).then_some(crate::DEFAULT_BUFFER_SIZE),
        };
        let mut output = outcome.stdout.clone().into_bytes();
        output.extend_from_slice(outcome.stderr.as_bytes());
        let publish_output = |p: &Process| {
            for (text, stream) in [
                (&outcome.stdout, Stream::Stdout),
                (&outcome.stderr, Stream::Stderr),
            ] {
                if !text.is_empty() {
                    self.bus.publish_output(OutputBatch::new(
                        p.shared_id().clone(),
                        stream,
                        text.clone().into_bytes(),
                    ));
                }
            }
        };
        let process = if outcome.hang {
            let (process, until_killed) = hanging(spec, &output, &opts, self.bus.clone());
            self.bus.publish(process.started_event());
            publish_output(&process);
            tokio::spawn(until_killed);
            process
        } else {
            let (process, _) = Process::driven(spec, None);
            process.record_output(&output);
            process.finish(
                Ending {
                    exit_code: outcome.signal.is_none().then_some(outcome.exit_code),
                    signal: outcome.signal,
                    duration: Some(Duration::ZERO),
                    ..Ending::default()
                },
                None,
            );
            self.bus.publish(process.started_event());
            publish_output(&process);
            for event in process.final_events() {
                self.bus.publish(event);
            }
            process
        };
        lock(&self.state.processes).push(process.clone());
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

/// An [`EventBus`] that records every event it carries (output batches as one event per line)
/// and also delivers them to subscribers like [`BroadcastEventBus`].
///
/// Cloning gives another handle to the same recorder: keep one in the test and give the other
/// to the module (`with_component_override::<dyn EventBus>(Box::new(recorder.clone()))`).
#[derive(Clone, Component, Default)]
#[shaku(interface = EventBus)]
pub struct RecordingEventBus {
    #[shaku(force_default)]
    shared: Arc<Recording>,
}

#[derive(Default)]
struct Recording {
    inner: BroadcastEventBus,
    events: Mutex<Vec<ProcessEvent>>,
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for RecordingEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingEventBus")
            .field("events", &lock(&self.shared.events).len())
            .finish_non_exhaustive()
    }
}

impl RecordingEventBus {
    /// An empty recorder.
    pub fn new() -> Self {
        RecordingEventBus::default()
    }

    /// Every event so far, in publication order.
    pub fn events(&self) -> Vec<ProcessEvent> {
        lock(&self.shared.events).clone()
    }

    /// The events about process `id`.
    pub fn events_for(&self, id: &str) -> Vec<ProcessEvent> {
        lock(&self.shared.events)
            .iter()
            .filter(|e| e.id() == id)
            .cloned()
            .collect()
    }

    /// The output lines of process `id` on `stream`, in order.
    pub fn lines(&self, id: &str, stream: Stream) -> Vec<String> {
        lock(&self.shared.events)
            .iter()
            .filter_map(|e| match e {
                ProcessEvent::Output {
                    id: eid,
                    line,
                    stream: s,
                } if &**eid == id && *s == stream => Some(line.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        lock(&self.shared.events).clear();
    }

    /// Waits until some recorded event satisfies `pred`, up to `timeout`; returns whether one
    /// did.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&ProcessEvent) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if lock(&self.shared.events).iter().any(&pred) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return lock(&self.shared.events).iter().any(&pred);
            }
        }
    }

    fn record(&self, events: impl IntoIterator<Item = ProcessEvent>) {
        lock(&self.shared.events).extend(events);
        self.shared.changed.notify_waiters();
    }
}

impl EventBus for RecordingEventBus {
    fn publish(&self, event: ProcessEvent) {
        self.record([event.clone()]);
        self.shared.inner.publish(event);
    }

    fn publish_output(&self, batch: OutputBatch) {
        self.record(batch.events());
        self.shared.inner.publish_output(batch);
    }

    fn subscribe(&self) -> Subscription {
        self.shared.inner.subscribe()
    }

    fn output_pause(&self) -> Option<Pause> {
        self.shared.inner.output_pause()
    }
}

/// A fake process that runs until it is signalled, stopped, cancelled or timed out, then ends
/// killed by that signal and publishes its final events on `bus`.
fn hanging(
    spec: Spec,
    output: &[u8],
    opts: &RunOptions,
    bus: Arc<dyn EventBus>,
) -> (
    Process,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (process, mut rx) = Process::driven(spec, None);
    process.record_output(output);
    let handle = process.clone();
    let cancel = opts.cancel.clone();
    let deadline = opts
        .timeout
        .and_then(|t| tokio::time::Instant::now().checked_add(t));
    let stop_signal = opts.stop_signal;
    let fut = async move {
        let (signal, timed_out) = loop {
            tokio::select! {
                control = rx.recv() => match control {
                    Some(Control::Signal(sig, reply)) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(()));
                        }
                        if matches!(sig, Signal::Kill | Signal::Term | Signal::Int | Signal::Hup) {
                            break (sig, false);
                        }
                    }
                    Some(Control::Stop(_)) => break (stop_signal, false),
                    None => break (Signal::Kill, false),
                },
                _ = cancelled(cancel.as_ref()) => break (Signal::Kill, false),
                _ = sleep_until(deadline) => break (stop_signal, true),
            }
        };
        handle.finish(
            Ending {
                signal: Some(signal),
                timed_out,
                ..Ending::default()
            },
            Some(&*bus),
        );
    };
    (process, fut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Status;

    #[tokio::test]
    async fn fake_records_scripts_and_publishes() {
        let bus = Arc::new(RecordingEventBus::new());
        let fake = FakeProcessService::with_bus(bus.clone());
        fake.script(
            "make",
            FakeOutcome::exit(2).stdout("a\nb\n").stderr("oops\n"),
        );
        let p = fake
            .start(RunOptions::new("make").arg("all"))
            .await
            .unwrap();
        assert_eq!(p.status(), Status::Exited);
        assert_eq!(p.exit_code(), Some(2));
        assert_eq!(p.output(), "a\nb\noops\n");
        assert_eq!(bus.lines(p.id(), Stream::Stdout), ["a", "b"]);
        assert_eq!(bus.lines(p.id(), Stream::Stderr), ["oops"]);
        let events = bus.events_for(p.id());
        assert!(matches!(events.first(), Some(ProcessEvent::Started { .. })));
        assert!(matches!(
            events.last(),
            Some(ProcessEvent::Exited {
                exit_code: Some(2),
                ..
            })
        ));
        assert_eq!(fake.command_lines(), ["make all"]);
    }

    #[tokio::test]
    async fn fake_hang_until_killed() {
        let fake = FakeProcessService::new();
        fake.script("server", FakeOutcome::hang());
        let p = fake.start(RunOptions::new("server")).await.unwrap();
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
    async fn fake_hang_honours_cancel_and_timeout() {
        let fake = FakeProcessService::new();
        fake.script("server", FakeOutcome::hang());
        let token = tokio_util::sync::CancellationToken::new();
        let cancelled = fake
            .start(RunOptions::new("server").cancel(token.clone()))
            .await
            .unwrap();
        let timed = fake
            .start(RunOptions::new("server").timeout(Duration::from_secs(30)))
            .await
            .unwrap();
        token.cancel();
        cancelled.done().await;
        assert_eq!(cancelled.signal_received(), Some(Signal::Kill));
        // Paused time: the 30 s timeout fires as soon as the runtime is idle.
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
    async fn fake_not_found_and_bad_input() {
        let fake = FakeProcessService::new();
        fake.script("ghost", FakeOutcome::not_found());
        assert!(matches!(
            fake.start(RunOptions::new("ghost")).await,
            Err(Error::CommandNotFound { .. })
        ));
        assert!(matches!(
            fake.start(RunOptions::new("")).await,
            Err(Error::InvalidOptions { .. })
        ));
        assert_eq!(fake.started().len(), 2);
    }

    #[tokio::test]
    async fn recording_bus_wait_for() {
        let bus = RecordingEventBus::new();
        assert!(!bus.wait_for(Duration::from_millis(10), |_| true).await);
        bus.publish(ProcessEvent::Killed {
            id: "x".into(),
            signal: Signal::Term,
            timed_out: false,
        });
        assert!(
            bus.wait_for(Duration::from_millis(10), |e| e.id() == "x")
                .await
        );
        bus.clear();
        assert!(bus.events().is_empty());
    }
}

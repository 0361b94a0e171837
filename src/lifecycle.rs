//! [`Lifecycle`], the start and stop hooks of a component, and [`Lifecycles`], an ordered group
//! of them: started in order with rollback, stopped in reverse.
//!
//! The composition root adds [`Lifecycles::of_module`](crate::Lifecycles::of_module), the group of
//! every service of a [`ProcessModule`](crate::ProcessModule).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::sys;
use crate::types::Signal;

/// Start and stop hooks of a component, the stand-in for Go Core's OnStartup/OnShutdown.
///
/// Every method has a default, so a component implements only what it needs. The hooks are
/// named `on_start`/`on_stop` (not `start`/`stop`) so they never clash with a service's own
/// `start` or `stop` methods on a `dyn` trait object. Service traits
/// that start or stop something have `Lifecycle` as a supertrait, so `Arc<dyn ProcessService>`
/// coerces to `Arc<dyn Lifecycle>`.
///
/// ```
/// use async_trait::async_trait;
/// use core_process::{Lifecycle, Lifecycles, Result};
/// use std::sync::{Arc, Mutex};
///
/// struct Step(&'static str, Arc<Mutex<Vec<String>>>);
///
/// #[async_trait]
/// impl Lifecycle for Step {
///     fn name(&self) -> &str { self.0 }
///     async fn on_start(&self) -> Result<()> { self.1.lock().unwrap().push(format!("start {}", self.0)); Ok(()) }
///     async fn on_stop(&self) -> Result<()> { self.1.lock().unwrap().push(format!("stop {}", self.0)); Ok(()) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let group = Lifecycles::new(vec![
///     Arc::new(Step("a", log.clone())),
///     Arc::new(Step("b", log.clone())),
/// ]);
/// group.start().await?;
/// group.stop().await?;
/// assert_eq!(*log.lock().unwrap(), ["start a", "start b", "stop b", "stop a"]);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// A name for logs and errors. By default the type's name without its module path
    /// (`ProcessSupervisor`; a generic type keeps its parameters as written:
    /// `Jobs<app::Queue>`).
    fn name(&self) -> &str {
        short_type_name(std::any::type_name::<Self>())
    }

    /// Acquires what the component needs (binds, locks, spawns).
    ///
    /// # Errors
    /// Whatever the component could not acquire.
    async fn on_start(&self) -> Result<()> {
        Ok(())
    }

    /// Releases it. Must be idempotent.
    ///
    /// # Errors
    /// Whatever the component could not release.
    async fn on_stop(&self) -> Result<()> {
        Ok(())
    }

    /// Told that the group is about to stop, before any component's
    /// [`on_stop`](Self::on_stop): every started component hears it, in stop order, so that
    /// one can announce the stop early (the daemon reports "not ready" from here, before the
    /// host's work and the managed processes stop).
    async fn on_stopping(&self) {}

    /// Ends at once whatever the component still runs (SIGKILL), without waiting: called
    /// when a stop outlives its bound or a second termination signal arrives. Synchronous and
    /// idempotent; the default does nothing.
    fn on_kill(&self) {}
}

/// `full` (a [`std::any::type_name`]) without the module path of the outer type:
/// `a::b::Jobs<c::Queue>` gives `Jobs<c::Queue>`.
fn short_type_name(full: &str) -> &str {
    let outer = full.find('<').unwrap_or(full.len());
    full[..outer].rfind("::").map_or(full, |i| &full[i + 2..])
}

/// How long a component still gets to finish its [`on_stop`](Lifecycle::on_stop) after the stop
/// bound passed and it was told to [kill](Lifecycle::on_kill) what it runs: 5 s.
pub const KILL_MARGIN: Duration = Duration::from_secs(5);

/// An ordered group of [`Lifecycle`]s: started in order (a failure rolls back the started ones
/// in reverse) and stopped in reverse order.
///
/// [`run_until_signal`](Self::run_until_signal) is the one call a host needs: start, wait for
/// SIGINT/SIGTERM (or a future), stop everything in order.
pub struct Lifecycles {
    items: Vec<Arc<dyn Lifecycle>>,
    /// How many of `items` are started.
    started: Mutex<usize>,
    /// The bound on stopping, see [`stop_timeout`](Self::stop_timeout).
    stop_timeout: Option<Duration>,
}

/// Why [`Lifecycles::run_until_signal`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ended {
    /// The signal that began the stop; `None` when the shutdown future resolved.
    pub signal: Option<Signal>,
    /// The second signal that cut the stop short: what was left was sent SIGKILL and
    /// `run_until_signal` returned without waiting (the host should exit now).
    pub forced: Option<Signal>,
}

impl Ended {
    /// The conventional exit status: 0 after a requested stop, 128 + the signal's number after
    /// a signal (130 for SIGINT, 143 for SIGTERM).
    pub fn exit_code(&self) -> u8 {
        match self.signal {
            None => 0,
            Some(sig) => u8::try_from(128 + sig.number()).unwrap_or(1),
        }
    }
}

impl Lifecycles {
    /// A group of `items`, in start order.
    pub fn new(items: Vec<Arc<dyn Lifecycle>>) -> Self {
        Lifecycles {
            items,
            started: Mutex::new(0),
            stop_timeout: None,
        }
    }

    /// Adds `item` last: started after every other, stopped before them. A host adds its own
    /// work here, so that it stops before the managed processes and the daemon:
    /// `Lifecycles::of_module(&module).with(jobs)`.
    #[must_use]
    pub fn with(mut self, item: Arc<dyn Lifecycle>) -> Self {
        self.items.push(item);
        self
    }

    /// Bounds [`stop`](Self::stop): when the components' stops together outlive `timeout`,
    /// the one stopping and those after it are told to [kill](Lifecycle::on_kill) what they
    /// run, and each still gets [`KILL_MARGIN`] to finish its stop (so the daemon, stopped
    /// last, still unregisters and releases its lock). No bound by default;
    /// [`of_module`](Self::of_module) takes the daemon's
    /// [`shutdown_timeout`](crate::DaemonOptions::shutdown_timeout).
    #[must_use]
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = Some(timeout);
        self
    }

    /// Starts every component in order. If one fails, those already started are stopped in
    /// reverse order and the error is returned. Starting a started group does nothing.
    ///
    /// # Errors
    /// The first start error; rollback errors are logged.
    pub async fn start(&self) -> Result<()> {
        let mut started = self.started.lock().await;
        while *started < self.items.len() {
            let item = &self.items[*started];
            if let Err(e) = item.on_start().await {
                tracing::error!(component = item.name(), error = %e, "start failed; rolling back");
                for done in self.items[..*started].iter().rev() {
                    if let Err(stop_err) = done.on_stop().await {
                        tracing::error!(component = done.name(), error = %stop_err, "rollback stop failed");
                    }
                }
                *started = 0;
                return Err(e);
            }
            *started += 1;
        }
        Ok(())
    }

    /// Stops every started component in reverse order; every one is attempted even if an
    /// earlier one fails. First every started component hears
    /// [`on_stopping`](Lifecycle::on_stopping) (in stop order), then each is stopped in turn,
    /// within the [`stop_timeout`](Self::stop_timeout) if one is set.
    ///
    /// # Errors
    /// The stop error, or [`Error::Multiple`] when several failed; [`Error::Timeout`] for a
    /// component that did not finish its stop within [`KILL_MARGIN`] of being told to kill.
    pub async fn stop(&self) -> Result<()> {
        let mut started = self.started.lock().await;
        let items = &self.items[..*started];
        for item in items.iter().rev() {
            item.on_stopping().await;
        }
        let deadline = self.stop_timeout.map(|t| tokio::time::Instant::now() + t);
        let mut killed = false;
        let mut errors = Vec::new();
        for (at, item) in items.iter().enumerate().rev() {
            let mut stop = item.on_stop();
            let result = if killed {
                bounded_stop(item.as_ref(), &mut stop).await
            } else {
                tokio::select! {
                    r = &mut stop => r,
                    () = crate::sync::sleep_until(deadline) => {
                        tracing::warn!(
                            component = item.name(),
                            timeout = ?self.stop_timeout,
                            "stop outlived its bound; killing what is left"
                        );
                        killed = true;
                        for rest in items[..=at].iter().rev() {
                            rest.on_kill();
                        }
                        bounded_stop(item.as_ref(), &mut stop).await
                    }
                }
            };
            if let Err(e) = result {
                tracing::error!(component = item.name(), error = %e, "stop failed");
                errors.push(e);
            }
        }
        *started = 0;
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Multiple(errors)),
        }
    }

    /// Tells every component, in stop order, to [kill](Lifecycle::on_kill) what it still
    /// runs, without waiting.
    pub fn kill(&self) {
        for item in self.items.iter().rev() {
            item.on_kill();
        }
    }

    /// Starts the group, runs until SIGINT or SIGTERM arrives or `shutdown` resolves, then
    /// [stops](Self::stop) everything in order: with [`of_module`](Self::of_module), the daemon
    /// reports not ready, the host's own components ([`with`](Self::with)) stop, every managed
    /// process gets its stop signal and grace period (all within the daemon's
    /// `shutdown_timeout`), and only then does the daemon unregister, stop its health server and
    /// release its PID lock.
    ///
    /// A second SIGINT or SIGTERM during the stop [kills](Self::kill) what is left and returns
    /// at once, with [`Ended::forced`] set.
    ///
    /// The signal handlers are installed before the start, so a signal during the start is
    /// acted on once it is done. From then on SIGINT and SIGTERM no longer end the process by
    /// default (tokio keeps its handlers for the rest of the process's life).
    ///
    /// ```no_run
    /// use core_process::{Lifecycles, ProcessModule};
    /// # #[tokio::main] async fn main() -> core_process::Result<()> {
    /// let module = ProcessModule::builder().build();
    /// let ended = Lifecycles::of_module(&module)
    ///     .run_until_signal(std::future::pending())
    ///     .await?;
    /// std::process::exit(ended.exit_code().into());
    /// # }
    /// ```
    ///
    /// # Errors
    /// The start's error (nothing is left started); the errors of [`stop`](Self::stop). When the
    /// signal handlers cannot be installed (no tokio runtime with signals enabled), only
    /// `shutdown` ends the run (logged as a warning).
    pub async fn run_until_signal<F>(&self, shutdown: F) -> Result<Ended>
    where
        F: Future<Output = ()> + Send,
    {
        let mut signals = match sys::TerminationSignals::new() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM/SIGINT; waiting for shutdown only");
                None
            }
        };
        self.start().await?;
        let signal = tokio::select! {
            () = shutdown => None,
            sig = next_signal(&mut signals) => Some(sig),
        };
        match signal {
            Some(sig) => tracing::info!(signal = %sig, "stopping on signal"),
            None => tracing::info!("stopping on request"),
        }
        tokio::select! {
            result = self.stop() => result.map(|()| Ended { signal, forced: None }),
            sig = next_signal(&mut signals) => {
                tracing::warn!(signal = %sig, "second signal during the stop; killing what is left");
                self.kill();
                Ok(Ended { signal, forced: Some(sig) })
            }
        }
    }
}

/// Waits for the next termination signal, or for ever without handlers.
async fn next_signal(signals: &mut Option<sys::TerminationSignals>) -> Signal {
    match signals {
        Some(s) => Signal::from_number(s.recv().await),
        None => std::future::pending().await,
    }
}

/// Finishes a stop after its component was told to kill, within [`KILL_MARGIN`].
async fn bounded_stop(
    item: &dyn Lifecycle,
    stop: &mut (impl Future<Output = Result<()>> + Unpin),
) -> Result<()> {
    match tokio::time::timeout(KILL_MARGIN, stop).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            what: format!("stop of {} after kill", item.name()),
            timeout: KILL_MARGIN,
        }),
    }
}

impl std::fmt::Debug for Lifecycles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.items.iter().map(|i| i.name()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    struct Step {
        name: &'static str,
        fail_start: bool,
        log: Arc<StdMutex<Vec<String>>>,
    }

    #[async_trait]
    impl Lifecycle for Step {
        fn name(&self) -> &str {
            self.name
        }
        async fn on_start(&self) -> Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("start {}", self.name));
            if self.fail_start {
                return Err(Error::NotConfigured {
                    component: self.name.into(),
                    setting: "anything: refused to start",
                });
            }
            Ok(())
        }
        async fn on_stop(&self) -> Result<()> {
            self.log.lock().unwrap().push(format!("stop {}", self.name));
            Ok(())
        }
    }

    fn step(
        name: &'static str,
        fail_start: bool,
        log: &Arc<StdMutex<Vec<String>>>,
    ) -> Arc<dyn Lifecycle> {
        Arc::new(Step {
            name,
            fail_start,
            log: log.clone(),
        })
    }

    #[tokio::test]
    async fn failed_start_rolls_back_in_reverse() {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let group = Lifecycles::new(vec![
            step("a", false, &log),
            step("b", false, &log),
            step("c", true, &log),
            step("d", false, &log),
        ]);
        let err = group.start().await.unwrap_err();
        assert!(err.to_string().contains("refused"));
        assert_eq!(
            *log.lock().unwrap(),
            ["start a", "start b", "start c", "stop b", "stop a"]
        );
        // Nothing is left started: stop does nothing.
        group.stop().await.unwrap();
        assert_eq!(log.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn stop_is_reverse_and_idempotent() {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let group = Lifecycles::new(vec![step("a", false, &log), step("b", false, &log)]);
        group.start().await.unwrap();
        group.start().await.unwrap();
        group.stop().await.unwrap();
        group.stop().await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["start a", "start b", "stop b", "stop a"]
        );
    }

    /// Logs every hook; its stop takes `stop_for` (until killed, when `killable`).
    struct Slow {
        name: &'static str,
        stop_for: Duration,
        killable: bool,
        killed: tokio::sync::Notify,
        log: Arc<StdMutex<Vec<String>>>,
    }

    impl Slow {
        fn push(&self, what: &str) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{what} {}", self.name));
        }
    }

    #[async_trait]
    impl Lifecycle for Slow {
        fn name(&self) -> &str {
            self.name
        }
        async fn on_stopping(&self) {
            self.push("stopping");
        }
        async fn on_stop(&self) -> Result<()> {
            tokio::select! {
                () = tokio::time::sleep(self.stop_for) => {}
                () = self.killed.notified(), if self.killable => {}
            }
            self.push("stop");
            Ok(())
        }
        fn on_kill(&self) {
            self.push("kill");
            self.killed.notify_one();
        }
    }

    struct Plain;

    impl Lifecycle for Plain {}

    struct Generic<T>(T);

    impl<T: Send + Sync> Lifecycle for Generic<T> {}

    #[test]
    fn the_default_name_is_the_type_name_without_its_module_path() {
        assert_eq!(Plain.name(), "Plain");
        assert_eq!(
            Generic(Plain).name(),
            "Generic<core_process::lifecycle::tests::Plain>"
        );
        assert_eq!(short_type_name("a::b::Jobs<c::Queue>"), "Jobs<c::Queue>");
        assert_eq!(short_type_name("Jobs"), "Jobs");
    }

    fn slow(
        name: &'static str,
        stop_for: u64,
        killable: bool,
        log: &Arc<StdMutex<Vec<String>>>,
    ) -> Arc<dyn Lifecycle> {
        Arc::new(Slow {
            name,
            stop_for: Duration::from_secs(stop_for),
            killable,
            killed: tokio::sync::Notify::new(),
            log: log.clone(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn every_component_hears_stopping_before_any_stops() {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let group = Lifecycles::new(vec![slow("daemon", 1, true, &log)])
            .with(slow("processes", 1, true, &log))
            .with(slow("host", 1, true, &log));
        group.start().await.unwrap();
        group.stop().await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "stopping host",
                "stopping processes",
                "stopping daemon",
                "stop host",
                "stop processes",
                "stop daemon"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_past_its_bound_kills_the_rest_and_still_stops_the_first() {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let group = Lifecycles::new(vec![
            slow("daemon", 1, false, &log),
            slow("processes", 60, true, &log),
            slow("host", 2, true, &log),
        ])
        .stop_timeout(Duration::from_secs(10));
        group.start().await.unwrap();
        let begun = tokio::time::Instant::now();
        group.stop().await.unwrap();
        // host 2 s, processes killed at the 10 s bound, daemon 1 s within its kill margin.
        assert_eq!(begun.elapsed(), Duration::from_secs(11));
        assert_eq!(
            log.lock().unwrap()[3..],
            [
                "stop host",
                "kill processes",
                "kill daemon",
                "stop processes",
                "stop daemon"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_that_ignores_the_kill_times_out_after_the_margin() {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let group = Lifecycles::new(vec![
            slow("daemon", 0, false, &log),
            slow("stuck", 3600, false, &log),
        ])
        .stop_timeout(Duration::from_secs(1));
        group.start().await.unwrap();
        let err = group.stop().await.unwrap_err();
        assert!(
            matches!(&err, Error::Timeout { what, timeout } if what.contains("stuck") && *timeout == KILL_MARGIN),
            "{err}"
        );
        assert_eq!(log.lock().unwrap().last().unwrap(), "stop daemon");
    }

    #[tokio::test]
    async fn run_until_signal_stops_when_the_future_resolves() {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let group = Lifecycles::new(vec![step("a", false, &log), step("b", false, &log)]);
        let ended = group.run_until_signal(async {}).await.unwrap();
        assert_eq!(
            ended,
            Ended {
                signal: None,
                forced: None
            }
        );
        assert_eq!(ended.exit_code(), 0);
        assert_eq!(
            *log.lock().unwrap(),
            ["start a", "start b", "stop b", "stop a"]
        );
        let by_term = Ended {
            signal: Some(Signal::Term),
            forced: None,
        };
        assert_eq!(by_term.exit_code(), 143);
    }

    #[tokio::test]
    async fn run_until_signal_returns_a_failed_start() {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let group = Lifecycles::new(vec![step("a", false, &log), step("b", true, &log)]);
        assert!(
            group
                .run_until_signal(std::future::pending())
                .await
                .is_err()
        );
        assert_eq!(*log.lock().unwrap(), ["start a", "start b", "stop a"]);
    }
}

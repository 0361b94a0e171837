//! [`Config`]: the crate's settings in one serde-deserialisable value, loaded from a TOML or
//! JSON file, that builds a [`ProcessModule`](crate::ProcessModule) with every parameter set
//! ([`Config::module`]). This is the way to configure the module: parameters set on a *host's* builder are silently ignored (see
//! [`module`](crate::module)), a config cannot be applied to the wrong builder.
//!
//! ```toml
//! [process]
//! buffer_size = 65536            # bytes of output kept per process
//!
//! [events]
//! capacity = 1024                # output batches held for slow subscribers
//! backpressure = "wait"          # or "never"
//! window = 2097152               # bytes readers may run ahead of a subscriber (with "wait")
//! stall = 0.1                    # seconds (with "wait")
//!
//! [daemon]
//! lock = "/run/agent/agent.pid"
//! health = true
//! health_addr = "127.0.0.1:0"
//! check_timeout = 5.0
//! registry_dir = "/tmp/daemons"
//! shutdown_timeout = 30.0
//! register = { code = "agent", daemon = "worker" }
//!
//! [[pipelines.ci]]
//! name = "lint"
//! command = "sh"
//! args = ["-c", "cargo clippy"]
//! timeout = 600.0
//!
//! [[pipelines.ci]]
//! name = "test"
//! command = "cargo"
//! args = ["test"]
//! after = ["lint"]
//! stop_signal = "INT"
//! grace_period = 5.0
//! ```
//!
//! Durations are seconds (integers or fractions). Unknown keys are errors, so a misspelt key
//! is not silently ignored; every error names the file and the key ([`Error::Config`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};
use crate::services::daemon::{DEFAULT_SHUTDOWN_TIMEOUT, DaemonOptions};
use crate::services::event_bus::{
    Backpressure, DEFAULT_BUS_CAPACITY, DEFAULT_BUS_WINDOW, DEFAULT_STALL,
};
use crate::services::health::{DEFAULT_CHECK_TIMEOUT, DEFAULT_HEALTH_ADDR};
use crate::services::process::DEFAULT_BUFFER_SIZE;
use crate::services::registry::DaemonEntry;
use crate::services::runner::RunSpec;
use crate::types::Signal;

/// Everything a [`ProcessModule`](crate::ProcessModule) can be configured with. Every section and key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The process service.
    pub process: ProcessConfig,
    /// The event bus.
    pub events: EventsConfig,
    /// The daemon: lock, health server, registry.
    pub daemon: DaemonConfig,
    /// Named pipelines: each a list of steps.
    pub pipelines: BTreeMap<String, Vec<StepConfig>>,
}

/// `[process]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProcessConfig {
    /// Bytes of output kept per process (default [`DEFAULT_BUFFER_SIZE`]).
    pub buffer_size: usize,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            buffer_size: DEFAULT_BUFFER_SIZE,
        }
    }
}

/// `[events]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EventsConfig {
    /// Output batches held for slow subscribers (default [`DEFAULT_BUS_CAPACITY`]).
    pub capacity: usize,
    /// `"wait"` (the default: readers wait for a subscriber that keeps reading) or `"never"`.
    pub backpressure: BackpressureMode,
    /// With `"wait"`: bytes of output readers may run ahead of a subscriber they wait for
    /// (default [`DEFAULT_BUS_WINDOW`]; see [`BroadcastEventBus::with_window`]).
    ///
    /// [`BroadcastEventBus::with_window`]: crate::BroadcastEventBus::with_window
    pub window: usize,
    /// With `"wait"`: seconds a subscriber may receive nothing before it is left behind
    /// (default [`DEFAULT_STALL`]).
    #[serde(deserialize_with = "seconds")]
    pub stall: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            capacity: DEFAULT_BUS_CAPACITY,
            backpressure: BackpressureMode::Wait,
            window: DEFAULT_BUS_WINDOW,
            stall: DEFAULT_STALL,
        }
    }
}

/// The `backpressure` key of `[events]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackpressureMode {
    /// [`Backpressure::WhileProgressing`].
    Wait,
    /// [`Backpressure::Never`].
    Never,
}

/// `[daemon]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DaemonConfig {
    /// The PID file; no lock when unset.
    pub lock: Option<PathBuf>,
    /// Start the health server.
    pub health: bool,
    /// The health server's address (default [`DEFAULT_HEALTH_ADDR`], a free loopback port).
    pub health_addr: SocketAddr,
    /// Seconds each health check may take (default [`DEFAULT_CHECK_TIMEOUT`]).
    #[serde(deserialize_with = "seconds")]
    pub check_timeout: Duration,
    /// The registry directory (default `~/.core/daemons/`).
    pub registry_dir: Option<PathBuf>,
    /// Seconds the whole stop may take (default [`DEFAULT_SHUTDOWN_TIMEOUT`]).
    #[serde(deserialize_with = "seconds")]
    pub shutdown_timeout: Duration,
    /// The registry entry to write; no registration when unset.
    pub register: Option<RegisterConfig>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            lock: None,
            health: false,
            health_addr: DEFAULT_HEALTH_ADDR,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            registry_dir: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            register: None,
        }
    }
}

/// `[daemon.register]`: who the daemon is in the registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RegisterConfig {
    /// The application code.
    pub code: String,
    /// The daemon's name within it.
    pub daemon: String,
    /// The project, optional.
    #[serde(default)]
    pub project: String,
}

/// One step of a pipeline: a [`RunSpec`] with every setting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StepConfig {
    /// The step's name.
    pub name: String,
    /// The program.
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// The working directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Environment variables added.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The steps it runs after.
    #[serde(default)]
    pub after: Vec<String>,
    /// Its failure neither skips its dependents nor stops the pipeline.
    #[serde(default)]
    pub allow_failure: bool,
    /// Seconds after which it is stopped.
    #[serde(default, deserialize_with = "opt_seconds")]
    pub timeout: Option<Duration>,
    /// Seconds between its stop signal and SIGKILL.
    #[serde(default, deserialize_with = "opt_seconds")]
    pub grace_period: Option<Duration>,
    /// Its stop signal (`"TERM"`, `"SIGINT"`, `"15"`, ...).
    #[serde(default, deserialize_with = "opt_signal")]
    pub stop_signal: Option<Signal>,
    /// Its ring-buffer size in bytes.
    #[serde(default)]
    pub output_capacity: Option<usize>,
    /// Text for its standard input.
    #[serde(default)]
    pub input: Option<String>,
    /// Killed by the kernel when the manager dies (Linux).
    #[serde(default)]
    pub die_with_parent: bool,
    /// Leads its own process group (default `true`).
    #[serde(default)]
    pub process_group: Option<bool>,
}

impl StepConfig {
    /// The step as a [`RunSpec`].
    pub fn spec(&self) -> RunSpec {
        let mut spec = RunSpec::new(&self.name, &self.command)
            .args(self.args.iter().cloned())
            .allow_failure(self.allow_failure)
            .die_with_parent(self.die_with_parent);
        spec.dir = self.dir.clone();
        spec.env = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        spec.after = self.after.clone();
        spec.timeout = self.timeout;
        spec.output_capacity = self.output_capacity;
        spec.input = self.input.clone();
        if let Some(grace) = self.grace_period {
            spec.grace_period = grace;
        }
        if let Some(signal) = self.stop_signal {
            spec.stop_signal = signal;
        }
        if let Some(group) = self.process_group {
            spec.process_group = group;
        }
        spec
    }
}

impl Config {
    /// Loads `path`: TOML, or JSON when its name ends in `.json`.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read; [`Error::Config`] naming the file and the key for
    /// a malformed file, an unknown key or a bad value.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("reading the configuration", path, e))?;
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_json(&text, path)
        } else {
            Self::from_toml(&text, path)
        }
    }

    /// Parses TOML `text`; `path` names it in errors.
    ///
    /// # Errors
    /// [`Error::Config`] naming `path` and the key.
    pub fn from_toml(text: &str, path: impl AsRef<Path>) -> Result<Config> {
        let de =
            toml::Deserializer::parse(text).map_err(|e| config_error(path.as_ref(), "", &e))?;
        serde_path_to_error::deserialize(de)
            .map_err(|e| config_error(path.as_ref(), &e.path().to_string(), e.inner()))
    }

    /// Parses JSON `text`; `path` names it in errors.
    ///
    /// # Errors
    /// [`Error::Config`] naming `path` and the key.
    pub fn from_json(text: &str, path: impl AsRef<Path>) -> Result<Config> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| config_error(path.as_ref(), &e.path().to_string(), e.inner()))
    }

    /// The steps of the pipeline named `name`, as [`RunSpec`]s.
    ///
    /// # Errors
    /// [`Error::Config`] when there is no such pipeline.
    pub fn pipeline(&self, name: &str) -> Result<Vec<RunSpec>> {
        match self.pipelines.get(name) {
            Some(steps) => Ok(steps.iter().map(StepConfig::spec).collect()),
            None => Err(Error::Config {
                path: PathBuf::new(),
                key: format!("pipelines.{name}"),
                reason: format!(
                    "no such pipeline (there are: {})",
                    self.pipelines
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// The bus's backpressure.
    pub fn backpressure(&self) -> Backpressure {
        match self.events.backpressure {
            BackpressureMode::Never => Backpressure::Never,
            BackpressureMode::Wait => Backpressure::WhileProgressing {
                stall: self.events.stall,
            },
        }
    }

    /// The daemon's options (without health checks: add them in code).
    pub fn daemon_options(&self) -> DaemonOptions {
        let d = &self.daemon;
        DaemonOptions {
            shutdown_timeout: d.shutdown_timeout,
            health: d.health,
            health_checks: Vec::new(),
            drain_delay: crate::services::daemon::DEFAULT_DRAIN_DELAY,
            registry_entry: d.register.as_ref().map(|r| {
                let mut entry = DaemonEntry::new(&r.code, &r.daemon);
                entry.project = r.project.clone();
                entry
            }),
        }
    }
}

fn config_error(path: &Path, key: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        key: if key == "." {
            String::new()
        } else {
            key.to_string()
        },
        reason: e.to_string().trim_end().to_string(),
    }
}

/// Seconds, whole or fractional, as a `Duration`.
fn seconds<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| serde::de::Error::custom(format!("{secs} is not a duration in seconds")))
}

fn opt_seconds<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Duration>, D::Error> {
    seconds(d).map(Some)
}

fn opt_signal<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Signal>, D::Error> {
    let name = String::deserialize(d)?;
    name.parse::<Signal>()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::pid_lock::PidLock;
    use shaku::HasComponent;
    use std::sync::Arc;

    const SAMPLE: &str = r#"
[process]
buffer_size = 65536

[events]
capacity = 512
backpressure = "never"
window = 1048576

[daemon]
lock = "/tmp/x/agent.pid"
health = true
health_addr = "127.0.0.1:0"
check_timeout = 2.5
registry_dir = "/tmp/x/registry"
shutdown_timeout = 3
register = { code = "agent", daemon = "worker", project = "p" }

[[pipelines.ci]]
name = "lint"
command = "sh"
args = ["-c", "true"]
timeout = 600.0
env = { K = "V" }

[[pipelines.ci]]
name = "test"
command = "cargo"
after = ["lint"]
stop_signal = "INT"
grace_period = 0.25
process_group = false
input = "y\n"
"#;

    #[test]
    fn a_full_toml_config_sets_everything() {
        let c = Config::from_toml(SAMPLE, "agent.toml").unwrap();
        assert_eq!(c.process.buffer_size, 65536);
        assert_eq!(c.events.backpressure, BackpressureMode::Never);
        assert_eq!(c.events.window, 1024 * 1024);
        assert_eq!(Config::default().events.window, DEFAULT_BUS_WINDOW);
        assert_eq!(c.daemon.check_timeout, Duration::from_millis(2500));
        let options = c.daemon_options();
        assert_eq!(options.shutdown_timeout, Duration::from_secs(3));
        assert!(options.health);
        assert_eq!(options.registry_entry.unwrap().project, "p");
        let ci = c.pipeline("ci").unwrap();
        assert_eq!(ci[0].timeout, Some(Duration::from_secs(600)));
        assert_eq!(ci[0].env, [("K".to_string(), "V".to_string())]);
        assert_eq!(ci[1].after, ["lint"]);
        assert_eq!(ci[1].stop_signal, Signal::Int);
        assert_eq!(ci[1].grace_period, Duration::from_millis(250));
        assert!(!ci[1].process_group);
        assert_eq!(ci[1].input.as_deref(), Some("y\n"));
        let module = c.module();
        let lock: Arc<dyn PidLock> = module.resolve();
        assert_eq!(lock.path(), Some(PathBuf::from("/tmp/x/agent.pid")));
        let err = c.pipeline("nope").unwrap_err();
        assert!(
            err.to_string().contains("pipelines.nope") && err.to_string().contains("ci"),
            "{err}"
        );
    }

    #[test]
    fn json_works_too_and_empty_is_the_defaults() {
        let c = Config::from_json(
            r#"{"daemon": {"shutdown_timeout": 1.5}, "pipelines": {"p": [{"name": "a", "command": "true"}]}}"#,
            "c.json",
        )
        .unwrap();
        assert_eq!(c.daemon.shutdown_timeout, Duration::from_millis(1500));
        assert_eq!(c.pipeline("p").unwrap()[0].command, "true");
        let empty = Config::from_toml("", "empty.toml").unwrap();
        assert_eq!(empty.process.buffer_size, DEFAULT_BUFFER_SIZE);
        assert_eq!(empty.daemon.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert!(empty.daemon.lock.is_none());
    }

    fn error(text: &str) -> (String, String) {
        match Config::from_toml(text, "/etc/agent.toml").unwrap_err() {
            e @ Error::Config { .. } => {
                let Error::Config { key, .. } = &e else {
                    unreachable!()
                };
                let message = e.to_string();
                assert!(message.contains("/etc/agent.toml"), "{message}");
                (key.clone(), message)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_config_names_the_file_and_the_key() {
        let (key, message) = error("[daemon]\nshutdown_timout = 3\n");
        assert_eq!(key, "daemon.shutdown_timout");
        assert!(message.contains("shutdown_timout"), "{message}");
        let (key, _) = error("[daemon]\nshutdown_timeout = \"soon\"\n");
        assert_eq!(key, "daemon.shutdown_timeout");
        let (key, message) = error(
            "[[pipelines.ci]]\nname = \"a\"\ncommand = \"x\"\n[[pipelines.ci]]\nname = \"b\"\ncommand = \"y\"\nstop_signal = \"SIGNOPE\"\n",
        );
        assert_eq!(key, "pipelines.ci[1].stop_signal");
        assert!(message.contains("SIGNOPE"), "{message}");
        let (key, message) = error("[events]\nbackpressure = \"sometimes\"\n");
        assert_eq!(key, "events.backpressure");
        assert!(message.contains("sometimes"), "{message}");
        let (key, _) = error("[daemon\n");
        assert_eq!(key, "");
        let missing = Config::from_file("/nonexistent/agent.toml").unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/agent.toml"),
            "{missing}"
        );
    }
}

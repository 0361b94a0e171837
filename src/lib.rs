#![doc = include_str!("../README.md")]
//!
//! # Crate map
//! - [`ProcessService`] / [`TokioProcessService`] and the [`Process`] handle: spawn, stream,
//!   wait, signal, stop.
//! - [`EventBus`] / [`BroadcastEventBus`] and [`ProcessEvent`]: process events for subscribers.
//! - [`RingBuffer`]: the output store of each process.
//! - [`PipelineRunner`] / [`Runner`]: pipelines of [`RunSpec`]s by dependency, in sequence or
//!   in parallel; [`exec`]: one-shot commands with logging.
//! - [`DaemonService`] / [`Daemon`] over [`PidLock`] / [`FilePidLock`], [`HealthService`] /
//!   [`WarpHealthServer`] and [`Registry`] / [`FileRegistry`]: daemon lifecycle.
//! - [`ProcessModule`], [`Lifecycle`], [`Lifecycles`]: shaku wiring and start/stop ordering.
//! - [`testing`] (feature `testing`): fakes for host tests.
//!
//! See [`services::process`] for the caveats (process groups, drop, zombies, lag, descriptors).
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

#[macro_use]
mod macros;
#[macro_use]
mod text;

pub mod buffer;
mod command;
pub mod config;

pub mod error;
pub mod event;
pub mod exec;
pub mod lifecycle;
pub mod module;

pub mod services;
pub mod sink;
mod sync;
mod sys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;

pub use buffer::RingBuffer;
pub use config::Config;
pub use error::{Error, Result};
pub use event::{Line, MAX_LINE_LEN, OutputBatch, ProcessEvent};
pub use lifecycle::{Ended, KILL_MARGIN, Lifecycle, Lifecycles};
pub use module::{ProcessModule, ProcessModuleInterface};
pub use services::daemon::{
    DEFAULT_SHUTDOWN_TIMEOUT, Daemon, DaemonOptions, DaemonParameters, DaemonService, Shutdown,
};
pub use services::event_bus::{
    Backpressure, BroadcastEventBus, BroadcastEventBusParameters, DEFAULT_STALL, EventBus,
    EventSource, Pause, RecvError, Subscription,
};
pub use services::health::{
    CheckResult, DEFAULT_CHECK_TIMEOUT, DEFAULT_HEALTH_ADDR, DEFAULT_STOP_TIMEOUT, HealthCheck,
    HealthReport, HealthService, WarpHealthServer, WarpHealthServerParameters, wait_for_health,
};
pub use services::pid_lock::{FilePidLock, FilePidLockParameters, PidLock, read_pid};
pub use services::process::{
    DEFAULT_BUFFER_SIZE, DEFAULT_GRACE_PERIOD, Process, ProcessService, RunOptions,
    TokioProcessService, TokioProcessServiceParameters,
};
pub use services::registry::{DaemonEntry, FileRegistry, FileRegistryParameters, Registry};
pub use services::runner::{
    PipelineEvent, PipelineHook, PipelineOptions, PipelineRunner, RunAllResult, RunResult, RunSpec,
    Runner, RunnerParameters,
};
pub use sink::{DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, FileSink, SinkOptions, StepLogs};
pub use text::ProcessId;
/// Re-exported so hosts need not depend on `tokio-util` to cancel runs and pipelines
/// ([`RunOptions::cancel`], [`PipelineOptions::cancel`]).
pub use tokio_util::sync::CancellationToken;
pub use types::{Info, Signal, Status, Stream};

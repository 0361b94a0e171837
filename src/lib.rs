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

// The names the README, the examples and the docs use. Each item's documented home is its
// module; these are re-exports (shown as such in the docs), so there is one page per item.
#[doc(no_inline)]
pub use buffer::RingBuffer;
#[doc(no_inline)]
pub use config::Config;
#[doc(no_inline)]
pub use error::{Error, Result};
#[doc(no_inline)]
pub use event::{Line, MAX_LINE_LEN, ProcessEvent};
#[doc(no_inline)]
pub use lifecycle::{Ended, Lifecycle, Lifecycles};
#[doc(no_inline)]
pub use module::{ProcessModule, ProcessModuleInterface};
#[doc(no_inline)]
pub use services::daemon::{Daemon, DaemonOptions, DaemonParameters, DaemonService};
#[doc(no_inline)]
pub use services::event_bus::{
    Backpressure, BroadcastEventBus, BroadcastEventBusParameters, EventBus, RecvError, Subscription,
};
#[doc(no_inline)]
pub use services::health::{
    HealthCheck, HealthReport, HealthService, WarpHealthServer, WarpHealthServerParameters,
    wait_for_health,
};
#[doc(no_inline)]
pub use services::pid_lock::{FilePidLock, FilePidLockParameters, PidLock, read_pid};
#[doc(no_inline)]
pub use services::process::{
    DEFAULT_BUFFER_SIZE, Process, ProcessService, RunOptions, TokioProcessService,
    TokioProcessServiceParameters,
};
#[doc(no_inline)]
pub use services::registry::{DaemonEntry, FileRegistry, FileRegistryParameters, Registry};
#[doc(no_inline)]
pub use services::runner::{
    PipelineEvent, PipelineOptions, PipelineRunner, RunAllResult, RunResult, RunSpec, Runner,
    ServiceSpec,
};
#[doc(no_inline)]
pub use services::supervise::{
    Backoff, Check, LastExit, LinePattern, Probe, ProcessSupervisor, RestartPolicy, StartLimit,
    SupervisePolicy, SupervisedInfo, SupervisedProcess, SupervisionState, SupervisorService,
};
#[doc(no_inline)]
pub use sink::{FileSink, SinkOptions, StepLogs};
pub use text::ProcessId;
/// Re-exported so hosts need not depend on `tokio-util` to cancel runs and pipelines
/// ([`RunOptions::cancel`], [`PipelineOptions::cancel`]).
pub use tokio_util::sync::CancellationToken;
#[doc(no_inline)]
pub use types::{Info, Signal, Status, Stream};

//! [`ProcessModule`], the shaku module that holds every service of the crate, and
//! [`Lifecycles::of_module`], the start and stop order of its services.
//!
//! # Composing into a host module
//! List [`ProcessModule`] as a submodule and build it first; configure its parameters and
//! overrides on **`ProcessModule::builder()`**.
//!
//! ```
//! use std::sync::Arc;
//! use core_process::{EventBus, ProcessModule, ProcessService, TokioProcessService,
//!     TokioProcessServiceParameters};
//! use shaku::{module, HasComponent};
//!
//! module! {
//!     HostModule {
//!         components = [],
//!         providers = [],
//!         use ProcessModule {
//!             components = [dyn ProcessService, dyn EventBus],
//!             providers = [],
//!         },
//!     }
//! }
//!
//! let processes = Arc::new(
//!     ProcessModule::builder()
//!         .with_component_parameters::<TokioProcessService>(TokioProcessServiceParameters {
//!             buffer_size: 64 * 1024,
//!         })
//!         .build(),
//! );
//! let host = HostModule::builder(processes).build();
//! let service: Arc<dyn ProcessService> = host.resolve();
//! # let _ = service;
//! ```
//!
//! **Pitfall**: parameters or overrides for *our* components set on the *host's* builder
//! compile but are silently ignored — the submodule was already built. Set them on
//! `ProcessModule::builder()`.

use std::sync::Arc;

use shaku::{HasComponent, module};

use crate::config::Config;
use crate::lifecycle::Lifecycles;
use crate::services::daemon::{Daemon, DaemonService};
use crate::services::daemon::{DaemonOptions, DaemonParameters};
use crate::services::event_bus::BroadcastEventBusParameters;
use crate::services::event_bus::{BroadcastEventBus, EventBus};
use crate::services::health::{DEFAULT_STOP_TIMEOUT, WarpHealthServerParameters};
use crate::services::health::{HealthService, WarpHealthServer};
use crate::services::pid_lock::FilePidLockParameters;
use crate::services::pid_lock::{FilePidLock, PidLock};
use crate::services::process::TokioProcessServiceParameters;
use crate::services::process::{ProcessService, TokioProcessService};
use crate::services::registry::FileRegistryParameters;
use crate::services::registry::{FileRegistry, Registry};
use crate::services::runner::{PipelineRunner, Runner};
use crate::services::supervise::{ProcessSupervisor, SupervisorService};

impl Config {
    /// A [`ProcessModule`] with every parameter from this config.
    pub fn module(&self) -> ProcessModule {
        self.module_with(|_| {})
    }

    /// A [`ProcessModule`] with every parameter from this config, the daemon's options
    /// adjusted by `daemon` first (to add health checks, which are code).
    pub fn module_with(&self, daemon: impl FnOnce(&mut DaemonOptions)) -> ProcessModule {
        let mut options = self.daemon_options();
        daemon(&mut options);
        let backpressure = self.backpressure();
        ProcessModule::builder()
            .with_component_parameters::<TokioProcessService>(TokioProcessServiceParameters {
                buffer_size: self.process.buffer_size,
            })
            .with_component_parameters::<BroadcastEventBus>(BroadcastEventBusParameters {
                capacity: self.events.capacity,
                backpressure,
                window: self.events.window,
            })
            .with_component_parameters::<FilePidLock>(FilePidLockParameters {
                path: self.daemon.lock.clone(),
            })
            .with_component_parameters::<WarpHealthServer>(WarpHealthServerParameters {
                addr: self.daemon.health_addr,
                check_timeout: self.daemon.check_timeout,
                stop_timeout: DEFAULT_STOP_TIMEOUT,
                startup_grace: crate::services::health::DEFAULT_STARTUP_GRACE,
            })
            .with_component_parameters::<FileRegistry>(FileRegistryParameters {
                dir: self.daemon.registry_dir.clone(),
            })
            .with_component_parameters::<Daemon>(DaemonParameters { options })
            .build()
    }
}

impl Lifecycles {
    /// The lifecycle of every service in a module built from [`ProcessModule`] (or a host
    /// module with the same components), in start order.
    ///
    /// The [`DaemonService`] comes first, so its PID lock is taken before anything else starts
    /// and released after everything else has stopped. Its PID lock, health server and registry
    /// are driven by the daemon and are not listed separately. The [`SupervisorService`] comes
    /// after the process service, so it is stopped first: no supervised child is restarted
    /// while the process service shuts down. The stop is bounded by the daemon's
    /// [`shutdown_timeout`](crate::DaemonOptions::shutdown_timeout). Add the host's own
    /// components with [`with`](Lifecycles::with): they start last and stop first, before the
    /// managed processes.
    pub fn of_module<M: ProcessModuleInterface + ?Sized>(module: &M) -> Self {
        let process: Arc<dyn ProcessService> = module.resolve();
        let supervisor: Arc<dyn SupervisorService> = module.resolve();
        let daemon: Arc<dyn DaemonService> = module.resolve();
        let timeout = daemon.shutdown_timeout();
        Lifecycles::new(vec![daemon, process, supervisor]).stop_timeout(timeout)
    }
}

/// What a module offering this crate's services provides: implemented by [`ProcessModule`],
/// and by any host module that lists the same components.
pub trait ProcessModuleInterface:
    HasComponent<dyn ProcessService>
    + HasComponent<dyn EventBus>
    + HasComponent<dyn PipelineRunner>
    + HasComponent<dyn PidLock>
    + HasComponent<dyn HealthService>
    + HasComponent<dyn Registry>
    + HasComponent<dyn DaemonService>
    + HasComponent<dyn SupervisorService>
{
}

mod wiring {
    //! The `module!` expansion, which generates undocumented items.
    #![allow(missing_docs)]
    use super::*;

    module! {
        pub ProcessModule: ProcessModuleInterface {
            components = [BroadcastEventBus, TokioProcessService, Runner, ProcessSupervisor, FilePidLock, WarpHealthServer, FileRegistry, Daemon],
            providers = [],
        }
    }
}

/// The crate's shaku module: every service, wired together.
///
/// Build it with `ProcessModule::builder()`; set parameters with
/// `with_component_parameters::<TokioProcessService>(...)`; swap implementations with
/// `with_component_override::<dyn ProcessService>(Box::new(fake))` (or
/// `with_component_override_fn` when the replacement needs injected dependencies). See the
/// [module documentation](self) for composing it into a host module.
pub use wiring::ProcessModule;

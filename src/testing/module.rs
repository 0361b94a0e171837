//! [`FakeModule`]: [`ProcessModule`] with every service replaced by its fake, in one call.

use std::sync::Arc;

use shaku::ModuleBuilder;

use crate::module::ProcessModule;
use crate::services::event_bus::EventBus;
use crate::services::health::HealthService;
use crate::services::pid_lock::PidLock;
use crate::services::process::ProcessService;
use crate::services::registry::Registry;

use super::{
    CallLog, FakeHealthService, FakePidLock, FakeProcessService, MemoryRegistry, RecordingEventBus,
};

/// A [`ProcessModule`] whose event bus, process service, PID lock, health server and registry
/// are fakes ([`RecordingEventBus`], [`FakeProcessService`], [`FakePidLock`],
/// [`FakeHealthService`], [`MemoryRegistry`]), with handles to each. The runner and the
/// daemon are the real ones, over the fakes. The fake process service publishes on the
/// recording bus, and the lock, the health server and the registry log their calls in one
/// shared [`CallLog`].
///
/// No [`TokioProcessService`](crate::TokioProcessService) is built, so nothing resolved from
/// the module can start a real child; the file lock, the registry directory and the health
/// port are never touched either. Give [`module`](Self::module) to the host module as its
/// `ProcessModule` submodule, so the overrides are where they take effect.
///
/// Cloning gives another handle to the same module and fakes.
///
/// ```
/// use std::sync::Arc;
/// use core_process::testing::{FakeModule, FakeOutcome};
/// use core_process::{PipelineOptions, PipelineRunner, ProcessService, RunSpec};
/// use shaku::HasComponent;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let fakes = FakeModule::new();
/// fakes.process().script("cargo test", FakeOutcome::exit(101));
/// let runner: Arc<dyn PipelineRunner> = fakes.module().resolve();
/// let result = runner
///     .run_all(&[RunSpec::new("test", "cargo").args(["test"])], PipelineOptions::new())
///     .await
///     .unwrap();
/// assert_eq!(result.results[0].exit_code, Some(101));
/// assert!(fakes.process().list().iter().all(|p| p.pid() == 0));
/// # }
/// ```
#[derive(Clone)]
pub struct FakeModule {
    module: Arc<ProcessModule>,
    bus: RecordingEventBus,
    process: FakeProcessService,
    lock: FakePidLock,
    health: FakeHealthService,
    registry: MemoryRegistry,
    log: CallLog,
}

impl std::fmt::Debug for FakeModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeModule")
            .field("process", &self.process)
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

impl Default for FakeModule {
    fn default() -> Self {
        FakeModule::new()
    }
}

impl FakeModule {
    /// The module with every fake in its default state.
    pub fn new() -> Self {
        FakeModule::configured(|builder| builder)
    }

    /// The module, with `configure` applied to `ProcessModule::builder()` first (component
    /// parameters such as the [`Daemon`](crate::Daemon)'s options). The fakes' overrides are
    /// applied after it, so they win.
    pub fn configured(
        configure: impl FnOnce(ModuleBuilder<ProcessModule>) -> ModuleBuilder<ProcessModule>,
    ) -> Self {
        let log = CallLog::new();
        let bus = RecordingEventBus::new();
        let process = FakeProcessService::with_bus(Arc::new(bus.clone()));
        let lock = FakePidLock::new().with_log(log.clone());
        let health = FakeHealthService::new().with_log(log.clone());
        let registry = MemoryRegistry::new().with_log(log.clone());
        let module = configure(ProcessModule::builder())
            .with_component_override::<dyn EventBus>(Box::new(bus.clone()))
            .with_component_override::<dyn ProcessService>(Box::new(process.clone()))
            .with_component_override::<dyn PidLock>(Box::new(lock.clone()))
            .with_component_override::<dyn HealthService>(Box::new(health.clone()))
            .with_component_override::<dyn Registry>(Box::new(registry.clone()))
            .build();
        FakeModule {
            module: Arc::new(module),
            bus,
            process,
            lock,
            health,
            registry,
            log,
        }
    }

    /// The module, to resolve services from or to give a host module as its submodule.
    pub fn module(&self) -> Arc<ProcessModule> {
        self.module.clone()
    }

    /// The module's event bus, which records every event.
    pub fn bus(&self) -> &RecordingEventBus {
        &self.bus
    }

    /// The module's process service.
    pub fn process(&self) -> &FakeProcessService {
        &self.process
    }

    /// The module's PID lock.
    pub fn lock(&self) -> &FakePidLock {
        &self.lock
    }

    /// The module's health service.
    pub fn health(&self) -> &FakeHealthService {
        &self.health
    }

    /// The module's registry.
    pub fn registry(&self) -> &MemoryRegistry {
        &self.registry
    }

    /// The calls made on the lock, the health service and the registry, in order.
    pub fn log(&self) -> &CallLog {
        &self.log
    }
}

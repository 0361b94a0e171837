//! The shaku module: composition into a host module, parameters, overrides, lifecycle.

use std::sync::Arc;
use std::time::Duration;

use core_process::testing::{FakeOutcome, FakeProcessService, RecordingEventBus};
use core_process::{
    EventBus, Lifecycles, ProcessEvent, ProcessModule, ProcessService, RunOptions, Status, Stream,
    TokioProcessService, TokioProcessServiceParameters,
};
use shaku::{Component, HasComponent, Interface, module};

use crate::support::{eventually, live_group_members, within};

/// A host component that depends on our process service.
trait Deployer: Interface {
    fn service(&self) -> Arc<dyn ProcessService>;
}

#[derive(Component)]
#[shaku(interface = Deployer)]
struct DeployerImpl {
    #[shaku(inject)]
    processes: Arc<dyn ProcessService>,
}

impl Deployer for DeployerImpl {
    fn service(&self) -> Arc<dyn ProcessService> {
        self.processes.clone()
    }
}

module! {
    HostModule {
        components = [DeployerImpl],
        providers = [],
        use ProcessModule {
            components = [dyn ProcessService, dyn EventBus],
            providers = [],
        },
    }
}

#[tokio::test]
async fn host_composes_the_module_and_runs_a_process() {
    let processes = Arc::new(ProcessModule::builder().build());
    let host = HostModule::builder(processes).build();
    let deployer: Arc<dyn Deployer> = host.resolve();
    let bus: Arc<dyn EventBus> = host.resolve();
    let mut sub = bus.subscribe();
    let out = deployer
        .service()
        .run(RunOptions::new("echo").arg("from host"))
        .await
        .unwrap();
    assert_eq!(out, "from host\n");
    // The service publishes to the module's bus, which the host resolved.
    assert!(matches!(
        sub.recv().await.unwrap(),
        ProcessEvent::Started { .. }
    ));
}

/// Starts `opts` on the process service of `module` and waits for its successful end.
async fn run_to_end(module: &ProcessModule, opts: RunOptions) -> core_process::Process {
    let service: Arc<dyn ProcessService> = module.resolve();
    let p = service.start(opts).await.unwrap();
    p.wait().await.unwrap();
    p
}

#[tokio::test]
async fn parameters_set_on_our_builder_apply() {
    let module = ProcessModule::builder()
        .with_component_parameters::<TokioProcessService>(TokioProcessServiceParameters {
            buffer_size: 4,
        })
        .build();
    let p = run_to_end(&module, RunOptions::new("printf").arg("abcdefgh")).await;
    assert_eq!(
        p.output(),
        "efgh",
        "a 4-byte buffer keeps the newest 4 bytes"
    );
}

#[tokio::test]
async fn fake_process_service_overrides_the_real_one_for_injected_dependents() {
    let fake = FakeProcessService::new();
    fake.script("deploy", FakeOutcome::success("deployed\n"));
    let processes = Arc::new(
        ProcessModule::builder()
            .with_component_override::<dyn ProcessService>(Box::new(fake.clone()))
            .build(),
    );
    let host = HostModule::builder(processes).build();
    let deployer: Arc<dyn Deployer> = host.resolve();
    let out = deployer
        .service()
        .run(RunOptions::new("deploy").arg("--prod"))
        .await
        .unwrap();
    assert_eq!(out, "deployed\n");
    assert_eq!(fake.command_lines(), ["deploy --prod"]);
}

#[tokio::test]
async fn overridden_bus_is_injected_into_the_real_service() {
    let recorder = RecordingEventBus::new();
    let module = ProcessModule::builder()
        .with_component_override::<dyn EventBus>(Box::new(recorder.clone()))
        .build();
    let p = run_to_end(&module, RunOptions::new("echo").arg("recorded")).await;
    assert_eq!(recorder.lines(p.id(), Stream::Stdout), ["recorded"]);
    assert!(matches!(
        recorder.events_for(p.id()).last(),
        Some(ProcessEvent::Exited { .. })
    ));
}

#[tokio::test]
async fn fake_built_by_the_module_gets_the_injected_bus() {
    // `with_component_override_fn` lets the replacement receive injected dependencies.
    let fake = FakeProcessService::new();
    fake.script("anything", FakeOutcome::success(""));
    let module = ProcessModule::builder()
        .with_component_override_fn::<dyn ProcessService>(fake.component_fn())
        .build();
    let service: Arc<dyn ProcessService> = module.resolve();
    let bus: Arc<dyn EventBus> = module.resolve();
    let mut sub = bus.subscribe();
    let p = service.start(RunOptions::new("anything")).await.unwrap();
    assert_eq!(p.status(), Status::Exited);
    let ev = within(Duration::from_secs(5), "event", sub.recv())
        .await
        .unwrap();
    assert!(matches!(ev, ProcessEvent::Started { .. }), "{ev:?}");
}

#[tokio::test]
async fn lifecycle_stop_shuts_every_process_down() {
    let module = ProcessModule::builder().build();
    let lifecycles = Lifecycles::of_module(&module);
    lifecycles.start().await.unwrap();
    let service: Arc<dyn ProcessService> = module.resolve();
    let p = service
        .start(
            RunOptions::new("sh")
                .args(["-c", "sleep 300 & wait"])
                .grace_period(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    let pgid = p.pid();
    eventually(Duration::from_secs(10), "sleep started", || {
        live_group_members(pgid).len() >= 2
    })
    .await;
    within(Duration::from_secs(20), "lifecycle stop", lifecycles.stop())
        .await
        .unwrap();
    assert!(service.running().is_empty());
    eventually(Duration::from_secs(10), "group empty", || {
        live_group_members(pgid).is_empty()
    })
    .await;
}

//! How a host application tests code that depends on `dyn ProcessService` without spawning
//! anything: compose `ProcessModule` into the host module, override the process service with
//! `FakeProcessService` on `ProcessModule::builder()`, and record events with
//! `RecordingEventBus`.
//!
//! Run it with `cargo run --example mock_in_tests --features testing`.

use std::sync::Arc;

use core_process::testing::{FakeOutcome, FakeProcessService, RecordingEventBus};
use core_process::{EventBus, ProcessEvent, ProcessModule, ProcessService, RunOptions, Stream};
use shaku::{Component, HasComponent, Interface, module};

/// The host's own component: it builds a project with `cargo` and reports the result.
trait Builder: Interface {
    fn processes(&self) -> &Arc<dyn ProcessService>;
}

#[derive(Component)]
#[shaku(interface = Builder)]
struct CargoBuilder {
    #[shaku(inject)]
    processes: Arc<dyn ProcessService>,
}

impl Builder for CargoBuilder {
    fn processes(&self) -> &Arc<dyn ProcessService> {
        &self.processes
    }
}

async fn build(builder: &dyn Builder) -> Result<String, String> {
    builder
        .processes()
        .run(RunOptions::new("cargo").args(["build", "--release"]))
        .await
        .map_err(|e| format!("{e}: {}", e.output().unwrap_or_default().trim()))
}

module! {
    HostModule {
        components = [CargoBuilder],
        providers = [],
        use ProcessModule {
            components = [dyn ProcessService, dyn EventBus],
            providers = [],
        },
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // The fakes: cargo "fails" with a scripted error; every event is recorded.
    let recorder = RecordingEventBus::new();
    let fake = FakeProcessService::with_bus(Arc::new(recorder.clone()));
    fake.script(
        "cargo",
        FakeOutcome::exit(101).stderr("error[E0308]: mismatched types\n"),
    );

    // Overrides go on OUR builder: set on HostModule's builder they would be ignored.
    let processes = Arc::new(
        ProcessModule::builder()
            .with_component_override::<dyn ProcessService>(Box::new(fake.clone()))
            .with_component_override::<dyn EventBus>(Box::new(recorder.clone()))
            .build(),
    );
    let host = HostModule::builder(processes).build();
    let builder: Arc<dyn Builder> = host.resolve();

    let result = build(&*builder).await;
    println!("build result: {result:?}");
    assert_eq!(
        result,
        Err("process `fake-1` (`cargo build --release`) exited with code 101: error[E0308]: mismatched types".to_string())
    );

    // What the host asked for, and what subscribers saw.
    assert_eq!(fake.command_lines(), ["cargo build --release"]);
    assert_eq!(
        recorder.lines("fake-1", Stream::Stderr),
        ["error[E0308]: mismatched types"]
    );
    assert!(matches!(
        recorder.events().last(),
        Some(ProcessEvent::Exited {
            exit_code: Some(101),
            ..
        })
    ));
    println!(
        "recorded {} events; the fake spawned nothing",
        recorder.events().len()
    );
}

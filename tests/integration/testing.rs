//! The fakes of `core_process::testing`: the same events as the real service, one-call wiring,
//! handles that stay assertable once given to a module.

use std::sync::Arc;
use std::time::Duration;

use core_process::testing::{
    FakeHealthService, FakeModule, FakeOutcome, FakePidLock, FakeProcessService, Match,
    MemoryRegistry, RecordingEventBus,
};
use core_process::{
    DaemonEntry, EventBus, HealthCheck, HealthService, Lifecycles, PidLock, PipelineOptions,
    PipelineRunner, Process, ProcessEvent, ProcessModule, ProcessService, Registry, RunOptions,
    RunSpec, Signal, Stream, TokioProcessService,
};
use shaku::HasComponent;

use crate::support::{eventually, within};

/// An event with ids, pids, durations and timings left out.
#[derive(Debug, PartialEq)]
enum Shape {
    Started(String, Vec<String>),
    Output(Stream, String),
    Killed(Signal, bool),
    Exited(Option<i32>, Option<String>),
}

fn shapes(bus: &RecordingEventBus, p: &Process) -> Vec<Shape> {
    bus.events_for(p.id())
        .into_iter()
        .map(|e| match e {
            ProcessEvent::Started { command, args, .. } => Shape::Started(command, args),
            ProcessEvent::Output { stream, line, .. } => Shape::Output(stream, line.to_string()),
            ProcessEvent::Killed {
                signal, timed_out, ..
            } => Shape::Killed(signal, timed_out),
            ProcessEvent::Exited {
                exit_code, error, ..
            } => Shape::Exited(exit_code, error),
            other => panic!("unexpected event {other:?}"),
        })
        .collect()
}

/// Drives `service` through two scripted runs the same way, returning the events of each.
async fn drive(service: &dyn ProcessService, bus: &RecordingEventBus) -> Vec<Vec<Shape>> {
    let limit = Duration::from_secs(10);
    // 1. Output on both streams (stderr gated on stdin, so the order is fixed), exit 3.
    let talk = RunOptions::new("sh").args([
        "-c",
        "printf 'one\\ntwo\\n'; read go; printf 'oops\\n' >&2; exit 3",
    ]);
    let p = service.start(talk).await.unwrap();
    eventually(limit, "two", || {
        bus.lines(p.id(), Stream::Stdout).len() == 2
    })
    .await;
    p.send_input("\n").await.unwrap();
    within(limit, "exit", p.done()).await;
    // 2. Runs until stopped.
    let serve = RunOptions::new("sh").args(["-c", "echo ready; exec sleep 60"]);
    let q = service.start(serve).await.unwrap();
    eventually(limit, "ready", || {
        !bus.lines(q.id(), Stream::Stdout).is_empty()
    })
    .await;
    within(limit, "stop", q.stop(Duration::from_secs(5))).await;
    vec![shapes(bus, &p), shapes(bus, &q)]
}

#[tokio::test]
async fn the_fake_publishes_the_events_of_the_real_service() {
    let real_bus = RecordingEventBus::new();
    let real = TokioProcessService::new(Arc::new(real_bus.clone()), 1 << 16);
    let fake_bus = RecordingEventBus::new();
    let fake = FakeProcessService::with_bus(Arc::new(fake_bus.clone()));
    fake.script(
        Match::glob("sh -c 'printf*exit 3'"),
        FakeOutcome::exit(3)
            .stdout("one\ntwo\n")
            .expect_stdin("\n")
            .stderr("oops\n"),
    )
    .script(
        Match::exact("sh -c 'echo ready; exec sleep 60'"),
        FakeOutcome::hang().stdout("ready\n"),
    );
    let from_real = drive(&real, &real_bus).await;
    let from_fake = drive(&fake, &fake_bus).await;
    assert_eq!(from_fake, from_real);
    // And what they are, so that the comparison cannot pass on two empty lists.
    assert_eq!(
        from_real[0][1..],
        [
            Shape::Output(Stream::Stdout, "one".into()),
            Shape::Output(Stream::Stdout, "two".into()),
            Shape::Output(Stream::Stderr, "oops".into()),
            Shape::Exited(Some(3), Some("exited with code 3".into())),
        ]
    );
    assert_eq!(
        from_real[1][2..],
        [
            Shape::Killed(Signal::Term, false),
            Shape::Exited(None, Some("killed by SIGTERM".into())),
        ]
    );
    fake.assert_all_used();
}

#[tokio::test]
async fn a_fake_module_wires_every_fake_and_reaches_no_real_service() {
    let fakes = FakeModule::new();
    fakes
        .process()
        .script("cargo", FakeOutcome::success("ok\n"));
    let module = fakes.module();

    let runner: Arc<dyn PipelineRunner> = module.resolve();
    let result = runner
        .run_all(
            &[RunSpec::new("build", "cargo").args(["build"])],
            PipelineOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(result.results[0].output, "ok\n");
    let service: Arc<dyn ProcessService> = module.resolve();
    let p = service.start(RunOptions::new("cargo")).await.unwrap();
    assert_eq!((p.id(), p.pid()), ("fake-2", 0));
    assert_eq!(fakes.bus().lines("fake-1", Stream::Stdout), ["ok"]);
    // A command nobody scripted is refused: no fallback to a real child.
    let err = service.run(RunOptions::new("true")).await.unwrap_err();
    assert!(
        matches!(err, core_process::Error::Unscripted { .. }),
        "{err}"
    );

    let lock: Arc<dyn PidLock> = module.resolve();
    lock.acquire().unwrap();
    let health: Arc<dyn HealthService> = module.resolve();
    health.start().await.unwrap();
    let registry: Arc<dyn Registry> = module.resolve();
    let mut entry = DaemonEntry::new("app", "web");
    entry.pid = std::process::id();
    registry.register(entry).await.unwrap();
    assert_eq!(fakes.lock().acquires(), 1);
    assert_eq!(fakes.health().starts(), 1);
    assert_eq!(fakes.registry().entries().len(), 1);
    assert_eq!(
        fakes.log().calls(),
        ["lock.acquire", "health.start", "registry.register app/web"]
    );

    lock.release().unwrap();
    let lifecycles = Lifecycles::of_module(&*module);
    lifecycles.start().await.unwrap();
    assert_eq!(fakes.lock().acquires(), 2, "the daemon took the fake lock");
    lifecycles.stop().await.unwrap();
    // The fake lock reports a path and never creates it.
    assert_eq!(fakes.lock().path(), Some("fake.pid".into()));
    assert!(!std::path::Path::new("fake.pid").exists());
}

#[tokio::test]
async fn daemon_fakes_stay_assertable_after_hand_over() {
    let registry = MemoryRegistry::new();
    let health = FakeHealthService::new();
    let lock = FakePidLock::new();
    let module = ProcessModule::builder()
        .with_component_override::<dyn Registry>(Box::new(registry.clone()))
        .with_component_override::<dyn HealthService>(Box::new(health.clone()))
        .with_component_override::<dyn PidLock>(Box::new(lock.clone()))
        .build();
    let r: Arc<dyn Registry> = module.resolve();
    let mut entry = DaemonEntry::new("app", "web");
    entry.pid = std::process::id();
    r.register(entry).await.unwrap();
    let h: Arc<dyn HealthService> = module.resolve();
    h.add_check("db", HealthCheck::new(|| async { Ok::<(), String>(()) }));
    h.start().await.unwrap();
    let l: Arc<dyn PidLock> = module.resolve();
    l.acquire().unwrap();
    assert_eq!(registry.entries()[0].daemon, "web");
    assert_eq!(health.check_names(), ["db"]);
    assert_eq!(health.starts(), 1);
    assert!(lock.is_locked());
    assert_eq!(lock.acquires(), 1);
}

#[tokio::test]
async fn the_fake_publishes_on_the_bus_of_the_module_it_is_built_into() {
    let module_bus = RecordingEventBus::new();
    let own_bus = RecordingEventBus::new();
    let fake = FakeProcessService::with_bus(Arc::new(own_bus.clone()));
    fake.script("deploy", FakeOutcome::success("done\n"));
    let module = ProcessModule::builder()
        .with_component_override::<dyn EventBus>(Box::new(module_bus.clone()))
        .with_component_override_fn::<dyn ProcessService>(fake.component_fn())
        .build();
    let service: Arc<dyn ProcessService> = module.resolve();
    service.run(RunOptions::new("deploy")).await.unwrap();
    assert_eq!(module_bus.lines("fake-1", Stream::Stdout), ["done"]);
    assert!(own_bus.events().is_empty());
    assert_eq!(fake.command_lines(), ["deploy"]);
}

//! Supervision: restart policies, backoff and the start limit on tokio's paused clock (with the
//! fake process service), then crash loops, kills, probes and stops with real processes.

use std::sync::Arc;
use std::time::Duration;

use core_process::testing::{FakeOutcome, FakeProcessService, RecordingEventBus, http_get};
use core_process::{
    Backoff, Error, EventBus, HealthService, Lifecycles, Probe, ProcessEvent, ProcessModule,
    ProcessService, ProcessSupervisor, RestartPolicy, RunOptions, StartLimit, SupervisePolicy,
    SupervisedProcess, SupervisionState, SupervisorService, WarpHealthServer,
};
use shaku::HasComponent;

use crate::support::{self, LIMIT, alive, eventually, kill9, sh, within};

fn fake() -> (FakeProcessService, RecordingEventBus, ProcessSupervisor) {
    let bus = RecordingEventBus::new();
    let fake = FakeProcessService::with_bus(Arc::new(bus.clone()));
    let sup = ProcessSupervisor::new(Arc::new(fake.clone()), Arc::new(bus.clone()));
    (fake, bus, sup)
}

fn real() -> (
    Arc<dyn ProcessService>,
    Arc<RecordingEventBus>,
    ProcessSupervisor,
) {
    let (service, bus) = support::dyn_service();
    let sup = ProcessSupervisor::new(service.clone(), bus.clone() as Arc<dyn EventBus>);
    (service, bus, sup)
}

fn restarting(bus: &RecordingEventBus, id: &str) -> Vec<(u32, Duration, String)> {
    bus.events_for(id)
        .into_iter()
        .filter_map(|e| match e {
            ProcessEvent::Restarting {
                attempt,
                delay,
                reason,
                ..
            } => Some((attempt, delay, reason)),
            _ => None,
        })
        .collect()
}

/// `opts` supervised under `policy` by `sup`; the start must succeed.
async fn supervise(
    sup: &dyn SupervisorService,
    opts: RunOptions,
    policy: SupervisePolicy,
) -> SupervisedProcess {
    sup.supervise(opts, policy).await.unwrap()
}

/// The default policy with a fixed backoff of `delay`.
fn fixed_backoff(delay: Duration) -> SupervisePolicy {
    SupervisePolicy::new().backoff(Backoff::fixed(delay))
}

/// Waits (bounded by [`LIMIT`]) until `s`'s state satisfies `pred`; `what` names the wait.
async fn reach(
    s: &SupervisedProcess,
    what: &str,
    pred: impl Fn(&SupervisionState) -> bool,
) -> SupervisionState {
    within(LIMIT, what, s.wait_for(LIMIT, pred)).await.unwrap()
}

fn is_fatal(s: &SupervisionState) -> bool {
    matches!(s, SupervisionState::Fatal { .. })
}

// ---- paused clock, fake processes ----

#[tokio::test(start_paused = true)]
async fn crash_loop_backs_off_exponentially_then_goes_fatal() {
    let (fake, bus, sup) = fake();
    fake.script("crash", FakeOutcome::exit(1));
    let policy = SupervisePolicy::new()
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_millis(300),
        ))
        .start_limit(StartLimit::new(5, Duration::from_secs(60)));
    let begun = tokio::time::Instant::now();
    let s = supervise(&sup, RunOptions::new("crash"), policy).await;
    let state = s.wait_for(LIMIT, is_fatal).await.unwrap();
    // Four delays, as configured (the cap holds the last one), and nothing more.
    assert_eq!(
        begun.elapsed(),
        Duration::from_millis(100 + 200 + 300 + 300)
    );
    let r = restarting(&bus, s.id());
    let delays: Vec<_> = r.iter().map(|(a, d, _)| (*a, d.as_millis())).collect();
    assert_eq!(delays, [(2, 100), (3, 200), (4, 300), (5, 300)]);
    assert!(
        r.iter().all(|(_, _, why)| why == "exited with code 1"),
        "{r:?}"
    );
    assert_eq!(s.attempts(), 5);
    assert_eq!(s.restarts(), 4);
    assert_eq!(fake.started().len(), 5);
    let SupervisionState::Fatal { reason } = state else {
        unreachable!()
    };
    assert!(reason.contains("5 failed starts"), "{reason}");
    assert!(
        bus.events_for(s.id())
            .iter()
            .any(|e| matches!(e, ProcessEvent::Fatal { .. }))
    );
    assert_eq!(s.last_exit().unwrap().exit_code, Some(1));
    assert_eq!(s.pid(), None);

    // It stays Fatal: no start happens however long we wait...
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(fake.started().len(), 5);
    // ...until restarted by hand, with a fresh backoff and count.
    let before = tokio::time::Instant::now();
    s.restart().unwrap();
    s.wait_for(LIMIT, |st| {
        st == &SupervisionState::Starting || !is_fatal(st)
    })
    .await
    .unwrap();
    s.wait_for(LIMIT, is_fatal).await.unwrap();
    assert_eq!(before.elapsed(), Duration::from_millis(900));
    assert_eq!(s.attempts(), 10);
    // The supervised id stays; the supervision events come in order.
    let kinds: String = bus
        .events_for(s.id())
        .iter()
        .map(|e| match e {
            ProcessEvent::Attempt { .. } => 'A',
            ProcessEvent::Restarting { .. } => 'R',
            ProcessEvent::Fatal { .. } => 'F',
            _ => '?',
        })
        .collect::<String>();
    assert_eq!(kinds, "ARARARARAFARARARARAF");
}

#[tokio::test(start_paused = true)]
async fn an_uptime_past_min_uptime_resets_the_backoff() {
    let (fake, bus, sup) = fake();
    fake.script("server", FakeOutcome::hang());
    let policy = SupervisePolicy::new()
        .restart(RestartPolicy::always())
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(10),
        ))
        .min_uptime(Duration::from_secs(1));
    let s = supervise(&sup, RunOptions::new("server"), policy).await;
    // Killed at once three times: failed starts, growing delays.
    for n in 1..=3 {
        s.wait_for(LIMIT, |st| matches!(st, SupervisionState::Running { .. }))
            .await
            .unwrap();
        assert_eq!(s.attempts(), n);
        s.process().unwrap().kill().await.unwrap();
        s.wait_for(LIMIT, |st| matches!(st, SupervisionState::Backoff { .. }))
            .await
            .unwrap();
    }
    s.wait_for(LIMIT, |st| matches!(st, SupervisionState::Running { .. }))
        .await
        .unwrap();
    // Up for longer than min_uptime: the next delay is the first one again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(s.uptime().unwrap() >= Duration::from_secs(2));
    s.process().unwrap().kill().await.unwrap();
    s.wait_for(LIMIT, |st| matches!(st, SupervisionState::Running { .. }))
        .await
        .unwrap();
    let delays: Vec<_> = restarting(&bus, s.id())
        .iter()
        .map(|(_, d, _)| d.as_millis())
        .collect();
    assert_eq!(delays, [100, 200, 400, 100]);
    assert_eq!(s.restarts(), 4);
    sup.shutdown().await.unwrap();
    assert_eq!(s.state(), SupervisionState::Stopped);
    assert!(fake.running().is_empty());
}

#[tokio::test(start_paused = true)]
async fn policies_decide_and_prevent_codes_stop() {
    let (fake, bus, sup) = fake();
    fake.script("ok", FakeOutcome::exit(0));
    fake.script("config-error", FakeOutcome::exit(78));
    let on_failure = supervise(&sup, RunOptions::new("ok"), SupervisePolicy::new()).await;
    let never = supervise(
        &sup,
        RunOptions::new("config-error"),
        SupervisePolicy::new().restart(RestartPolicy::Never),
    )
    .await;
    let prevented = supervise(
        &sup,
        RunOptions::new("config-error"),
        SupervisePolicy::new().restart(RestartPolicy::always().prevent_codes([78])),
    )
    .await;
    for s in [&on_failure, &never, &prevented] {
        s.wait_for(LIMIT, SupervisionState::is_terminal)
            .await
            .unwrap();
        assert_eq!(s.state(), SupervisionState::Stopped, "{s:?}");
        assert_eq!(s.attempts(), 1);
        let stopped = bus
            .events_for(s.id())
            .into_iter()
            .find(|e| matches!(e, ProcessEvent::Stopped { .. }));
        assert!(
            matches!(&stopped, Some(ProcessEvent::Stopped { reason: Some(r), .. }) if r.starts_with("exited with code")),
            "{stopped:?}"
        );
    }
    // An exit-0 under `always` restarts (counted as failed starts since uptime is 0).
    let always = supervise(
        &sup,
        RunOptions::new("ok"),
        SupervisePolicy::new()
            .restart(RestartPolicy::always())
            .start_limit(StartLimit::new(2, Duration::MAX)),
    )
    .await;
    always.wait_for(LIMIT, is_fatal).await.unwrap();
    assert_eq!(always.attempts(), 2);
    assert_eq!(fake.started().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn stop_during_backoff_cancels_the_restart() {
    let (fake, bus, sup) = fake();
    fake.script("crash", FakeOutcome::exit(3));
    let s = supervise(
        &sup,
        RunOptions::new("crash"),
        fixed_backoff(Duration::from_secs(3600)),
    )
    .await;
    s.wait_for(LIMIT, |st| matches!(st, SupervisionState::Backoff { .. }))
        .await
        .unwrap();
    let begun = tokio::time::Instant::now();
    s.stop().await;
    assert!(begun.elapsed() < Duration::from_secs(1));
    assert_eq!(s.state(), SupervisionState::Stopped);
    tokio::time::sleep(Duration::from_secs(7200)).await;
    assert_eq!(fake.started().len(), 1, "no restart after stop");
    assert!(
        bus.events_for(s.id())
            .iter()
            .any(|e| matches!(e, ProcessEvent::Stopped { reason: None, .. }))
    );
    // Stop again: nothing happens. Restart by hand: it starts.
    s.stop().await;
    s.restart().unwrap();
    eventually(LIMIT, "a start after restart()", || {
        fake.started().len() == 2
    })
    .await;
    sup.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_token_stops_the_supervision() {
    let (fake, _bus, sup) = fake();
    fake.script("server", FakeOutcome::hang());
    let token = tokio_util::sync::CancellationToken::new();
    let s = supervise(
        &sup,
        RunOptions::new("server").cancel(token.clone()),
        SupervisePolicy::new().restart(RestartPolicy::always()),
    )
    .await;
    token.cancel();
    s.wait_for(LIMIT, |st| st == &SupervisionState::Stopped)
        .await
        .unwrap();
    assert!(fake.running().is_empty());
    assert_eq!(fake.started().len(), 1);
    sup.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_never_ready_child_is_a_failed_start() {
    let (fake, bus, sup) = fake();
    fake.script("mute", FakeOutcome::hang().stdout("booting\n"));
    let s = supervise(
        &sup,
        RunOptions::new("mute"),
        SupervisePolicy::new()
            .readiness(Probe::log_line("^ready$").unwrap())
            .ready_timeout(Duration::from_secs(5))
            .backoff(Backoff::fixed(Duration::from_secs(1)))
            .start_limit(StartLimit::new(2, Duration::from_secs(60))),
    )
    .await;
    let err = s.wait_ready(LIMIT).await.unwrap_err();
    assert!(matches!(err, Error::NotReady { .. }), "{err}");
    assert!(is_fatal(&s.state()));
    let r = restarting(&bus, s.id());
    assert!(r[0].2.contains("not ready within 5s"), "{r:?}");
    assert!(
        fake.running().is_empty(),
        "the unready children were stopped"
    );
    // The continuous buffer holds both attempts, each marked.
    let out = s.output();
    assert_eq!(out.matches("--- attempt ").count(), 2, "{out}");
    assert_eq!(out.matches("booting").count(), 2, "{out}");
}

#[tokio::test(start_paused = true)]
async fn bad_probes_and_shut_down_supervisors_are_errors() {
    let (_fake, _bus, sup) = fake();
    let err = sup
        .supervise(
            RunOptions::new("x").disable_capture(true),
            SupervisePolicy::new().readiness(Probe::log_line("ready").unwrap()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidProbe { .. }), "{err}");
    let err = sup
        .supervise(RunOptions::new(""), SupervisePolicy::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOptions { .. }), "{err}");
    sup.shutdown().await.unwrap();
    let err = sup
        .supervise(RunOptions::new("x"), SupervisePolicy::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ShutDown { .. }), "{err}");
    assert!(matches!(
        sup.get("sup-404"),
        Err(Error::ProcessNotFound { .. })
    ));
}

// ---- real processes ----

#[tokio::test]
async fn a_real_crash_loop_goes_fatal_with_every_attempt_in_the_output() {
    let (service, bus, sup) = real();
    let s = sup
        .supervise(
            sh("echo boom; exit 1"),
            fixed_backoff(Duration::from_millis(10))
                .start_limit(StartLimit::new(3, Duration::from_secs(60))),
        )
        .await
        .unwrap();
    reach(&s, "fatal", is_fatal).await;
    assert_eq!(s.attempts(), 3);
    let r = restarting(&bus, s.id());
    assert_eq!(
        r.iter().map(|(a, d, _)| (*a, *d)).collect::<Vec<_>>(),
        [
            (2, Duration::from_millis(10)),
            (3, Duration::from_millis(10))
        ]
    );
    let out = s.output();
    assert_eq!(out.matches("boom\n").count(), 3, "{out}");
    assert!(out.starts_with("--- attempt 1 (pid "), "{out}");
    assert!(out.contains("--- attempt 3 (pid "), "{out}");
    // Finished children are handed over, not kept in the service.
    assert!(service.list().is_empty());
    let info = serde_json::to_value(s.info()).unwrap();
    assert_eq!(info["state"]["state"], "fatal");
    assert_eq!(info["attempts"], 3);
    assert_eq!(info["last_exit"]["exit_code"], 1);
}

#[tokio::test]
async fn a_child_killed_from_outside_is_restarted_under_the_same_id() {
    let (service, bus, sup) = real();
    let s = sup
        .supervise(
            sh("echo up; exec sleep 30"),
            fixed_backoff(Duration::from_millis(10)),
        )
        .await
        .unwrap();
    let first = s.pid().unwrap();
    let _guard = support::KillOnDrop(first);
    eventually(LIMIT, "first output", || s.output().contains("up\n")).await;
    kill9(first);
    reach(&s, "restart", |_| s.attempts() == 2 && s.is_ready()).await;
    let second = s.pid().unwrap();
    let _guard2 = support::KillOnDrop(second);
    assert_ne!(first, second);
    let r = restarting(&bus, s.id());
    assert_eq!(r[0].0, 2);
    assert_eq!(r[0].2, "killed by SIGKILL");
    eventually(LIMIT, "second output", || {
        s.output().matches("up\n").count() == 2
    })
    .await;
    assert_eq!(sup.get(s.id()).unwrap().attempts(), 2);
    s.stop().await;
    assert_eq!(s.state(), SupervisionState::Stopped);
    assert!(!alive(second));
    assert!(service.running().is_empty());
}

#[tokio::test]
async fn readiness_by_log_line_waits_for_the_line() {
    let (_service, bus, sup) = real();
    let s = sup
        .supervise(
            sh("echo booting; read go; echo ready; exec sleep 30"),
            SupervisePolicy::new().readiness(
                Probe::log_line("^ready$")
                    .unwrap()
                    .interval(Duration::from_millis(10)),
            ),
        )
        .await
        .unwrap();
    eventually(LIMIT, "booting", || s.output().contains("booting")).await;
    assert_eq!(s.state(), SupervisionState::Running { ready: false });
    // The supervisor's readiness feeds a health server.
    let health = WarpHealthServer::new("127.0.0.1:0".parse().unwrap());
    health.add_check("supervised", sup.readiness_check());
    let addr = health.start().await.unwrap();
    let (status, body) = http_get(addr, "/health", None).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(s.id()), "{body}");
    s.process().unwrap().send_input("go\n").await.unwrap();
    within(LIMIT, "ready", s.wait_ready(LIMIT)).await.unwrap();
    assert_eq!(http_get(addr, "/health", None).await.unwrap().0, 200);
    assert!(
        bus.events_for(s.id())
            .iter()
            .any(|e| matches!(e, ProcessEvent::Ready { attempt: 1, .. }))
    );
    sup.shutdown().await.unwrap();
    assert_eq!(s.state(), SupervisionState::Stopped);
    let (status, body) = http_get(addr, "/health", None).await.unwrap();
    assert_eq!(status, 200, "stopped processes do not count: {body}");
    HealthService::stop(&health).await.unwrap();
}

/// A free loopback port: bound, then released.
fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn readiness_by_tcp_port_waits_for_the_port() {
    let (_service, _bus, sup) = real();
    let addr = free_port();
    let s = sup
        .supervise(
            sh("echo started; exec sleep 30"),
            SupervisePolicy::new().readiness(
                Probe::tcp(addr.to_string())
                    .interval(Duration::from_millis(10))
                    .timeout(Duration::from_millis(200)),
            ),
        )
        .await
        .unwrap();
    eventually(LIMIT, "started", || s.output().contains("started")).await;
    assert!(!s.is_ready(), "nothing listens on {addr} yet");
    // The port opens (here the test opens it for the child): the probe sees it.
    let _listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    within(LIMIT, "ready", s.wait_ready(LIMIT)).await.unwrap();
    sup.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_child() {
    let (_service, bus, sup) = real();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let s = sup
        .supervise(
            sh("trap 'echo got TERM; exit 0' TERM; echo up; while :; do sleep 0.01; done"),
            SupervisePolicy::new()
                .restart(RestartPolicy::always())
                .backoff(Backoff::fixed(Duration::from_millis(10)))
                .liveness(
                    Probe::tcp(addr.to_string())
                        .interval(Duration::from_millis(10))
                        .failure_threshold(3),
                ),
        )
        .await
        .unwrap();
    within(LIMIT, "ready", s.wait_ready(LIMIT)).await.unwrap();
    assert_eq!(s.attempts(), 1);
    drop(listener);
    reach(&s, "restart", |_| s.attempts() == 2).await;
    let r = restarting(&bus, s.id());
    assert!(r[0].2.contains("liveness probe failed 3 times"), "{r:?}");
    // Stopped with its stop signal (SIGTERM, which it traps), not killed outright.
    let first = s.last_exit().unwrap();
    assert_eq!(first.exit_code, Some(0), "{first:?}");
    eventually(LIMIT, "TERM", || s.output().contains("got TERM")).await;
    sup.shutdown().await.unwrap();
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_memory_limit_restarts_the_child() {
    let (_service, bus, sup) = real();
    let s = supervise(
        &sup,
        RunOptions::new("sleep").arg("30"),
        fixed_backoff(Duration::from_millis(10))
            .memory_limit(1)
            .memory_interval(Duration::from_millis(10)),
    )
    .await;
    reach(&s, "restart", |_| s.attempts() >= 2).await;
    let r = restarting(&bus, s.id());
    assert!(r[0].2.contains("resident memory"), "{r:?}");
    sup.shutdown().await.unwrap();
}

#[tokio::test]
async fn stop_during_a_real_backoff_leaves_nothing() {
    let (service, bus, sup) = real();
    let s = supervise(&sup, sh("exit 2"), fixed_backoff(Duration::from_secs(3600))).await;
    reach(&s, "backoff", |st| {
        matches!(st, SupervisionState::Backoff { .. })
    })
    .await;
    within(Duration::from_secs(5), "stop", s.stop()).await;
    assert_eq!(s.state(), SupervisionState::Stopped);
    let starts = bus
        .events()
        .iter()
        .filter(|e| matches!(e, ProcessEvent::Started { .. }))
        .count();
    assert_eq!(starts, 1);
    assert!(service.running().is_empty());
}

#[tokio::test]
async fn shutdown_during_a_start_leaves_no_child_and_schedules_no_restart() {
    for round in 0..5 {
        let (service, bus, sup) = real();
        let sup = Arc::new(sup);
        let crash = {
            let sup = sup.clone();
            tokio::spawn(async move {
                sup.supervise(
                    sh("exit 1"),
                    fixed_backoff(Duration::ZERO)
                        .start_limit(StartLimit::new(u32::MAX, Duration::MAX)),
                )
                .await
            })
        };
        let server = {
            let sup = sup.clone();
            tokio::spawn(async move {
                sup.supervise(sh("exec sleep 30"), SupervisePolicy::new())
                    .await
            })
        };
        // Let the crash loop spin a little (round 0: shut down right away).
        if round > 0 {
            let want = round * 2;
            eventually(LIMIT, "a few crashes", || {
                bus.events()
                    .iter()
                    .filter(|e| matches!(e, ProcessEvent::Started { .. }))
                    .count()
                    >= want
            })
            .await;
        }
        within(LIMIT, "shutdown", sup.shutdown()).await.unwrap();
        for started in [crash.await.unwrap(), server.await.unwrap()] {
            match started {
                Ok(s) => assert_eq!(s.state(), SupervisionState::Stopped, "round {round}"),
                Err(e) => assert!(matches!(e, Error::ShutDown { .. }), "round {round}: {e}"),
            }
        }
        assert!(service.running().is_empty(), "round {round}");
        let count = || {
            bus.events()
                .iter()
                .filter(|e| matches!(e, ProcessEvent::Started { .. }))
                .count()
        };
        let after = count();
        // Nothing is scheduled: a fresh child would show up as a Started event.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(count(), after, "round {round}: a restart after shutdown");
        for e in bus.events() {
            if let ProcessEvent::Started { pid, .. } = e {
                assert!(!alive(pid), "round {round}: pid {pid} survived");
            }
        }
    }
}

#[tokio::test]
async fn the_module_provides_the_supervisor_and_its_lifecycle_stops_it() {
    let module = ProcessModule::builder().build();
    let sup: Arc<dyn SupervisorService> = module.resolve();
    let lifecycles = Lifecycles::of_module(&module);
    lifecycles.start().await.unwrap();
    let s = supervise(&*sup, sh("exec sleep 30"), SupervisePolicy::new()).await;
    let pid = s.pid().unwrap();
    let _guard = support::KillOnDrop(pid);
    assert_eq!(sup.list().len(), 1);
    within(LIMIT, "stop", lifecycles.stop()).await.unwrap();
    assert_eq!(s.state(), SupervisionState::Stopped);
    assert!(!alive(pid));
    assert!(sup.remove(s.id()).is_ok());
    assert!(sup.list().is_empty());
}

#[test]
fn supervision_events_serialise_tagged() {
    let ev = ProcessEvent::Restarting {
        id: "sup-1".into(),
        attempt: 2,
        delay: Duration::from_millis(250),
        reason: "exited with code 1".into(),
    };
    let json = serde_json::to_string(&ev).unwrap();
    assert_eq!(
        json,
        r#"{"type":"restarting","id":"sup-1","attempt":2,"delay":0.250000000,"reason":"exited with code 1"}"#
    );
    assert_eq!(serde_json::from_str::<ProcessEvent>(&json).unwrap(), ev);
    assert!(ev.is_lifecycle());
    let fatal = ProcessEvent::Fatal {
        id: "sup-1".into(),
        reason: "gave up".into(),
    };
    assert_eq!(
        serde_json::to_string(&fatal).unwrap(),
        r#"{"type":"fatal","id":"sup-1","reason":"gave up"}"#
    );
}

#[tokio::test(start_paused = true)]
async fn supervision_events_reach_a_lagging_subscriber_in_order() {
    let bus: Arc<dyn EventBus> = Arc::new(core_process::BroadcastEventBus::new(2));
    let fake = FakeProcessService::with_bus(bus.clone());
    let lines: String = (0..50).map(|i| format!("line {i}\n")).collect();
    fake.script("noisy", FakeOutcome::exit(1).stdout(lines));
    let sup = ProcessSupervisor::new(Arc::new(fake.clone()), bus.clone());
    let mut sub = bus.subscribe();
    let s = supervise(
        &sup,
        RunOptions::new("noisy"),
        fixed_backoff(Duration::from_millis(10))
            .start_limit(StartLimit::new(8, Duration::from_secs(60))),
    )
    .await;
    s.wait_for(LIMIT, is_fatal).await.unwrap();
    drop(sup);
    drop(fake);
    drop(bus);
    let mut kinds = String::new();
    let mut lagged = 0;
    loop {
        match sub.recv().await {
            Ok(ProcessEvent::Attempt { attempt, .. }) => kinds.push_str(&format!("A{attempt}")),
            Ok(ProcessEvent::Restarting { attempt, .. }) => kinds.push_str(&format!("R{attempt}")),
            Ok(ProcessEvent::Fatal { .. }) => kinds.push('F'),
            Ok(_) => {}
            Err(core_process::RecvError::Lagged(n)) => lagged += n,
            Err(_) => break,
        }
    }
    assert!(lagged > 0, "the subscriber did lag");
    assert_eq!(kinds, "A1R2A2R3A3R4A4R5A5R6A6R7A7R8A8F");
}

// ---- services in pipelines ----

#[tokio::test]
async fn a_pipeline_service_releases_its_dependents_when_ready_and_is_stopped_at_the_end() {
    use core_process::{
        PipelineEvent, PipelineOptions, PipelineRunner, RunSpec, Runner, ServiceSpec,
    };
    use std::sync::Mutex;

    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let (service, _bus) = support::dyn_service();
    let runner = Runner::new(service.clone());
    let specs = [
        RunSpec::new("db", "sh")
            .args([
                "-c",
                r#"echo booting; while [ ! -e "$1" ]; do sleep 0.01; done; echo ready; exec sleep 30"#,
                "sh",
            ])
            .arg(gate.to_str().unwrap())
            .service(ServiceSpec::new(
                Probe::log_line("^ready$").unwrap().interval(Duration::from_millis(10)),
                LIMIT,
            )),
        RunSpec::new("test", "sh")
            .args(["-c", r#"[ -e "$1" ] && echo saw-ready"#, "sh"])
            .arg(gate.to_str().unwrap())
            .after("db"),
        RunSpec::new("report", "echo").arg("done").after("test"),
    ];
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let opts = PipelineOptions::new().on_event(move |e| log.lock().unwrap().push(e.clone()));
    let run = tokio::spawn(async move { runner.run_all(&specs, opts).await });
    eventually(LIMIT, "db started", || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, PipelineEvent::Started { spec, .. } if spec == "db"))
    })
    .await;
    let db = service.list().into_iter().next().unwrap();
    eventually(LIMIT, "db booting", || db.output().contains("booting")).await;
    assert!(
        !events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, PipelineEvent::Started { spec, .. } if spec == "test")),
        "the dependent waits for readiness"
    );
    std::fs::write(&gate, "").unwrap();
    let result = within(LIMIT, "pipeline", run).await.unwrap().unwrap();
    assert!(result.success(), "{result:?}");
    assert_eq!(result.get("test").unwrap().output, "saw-ready\n");
    let db_result = result.get("db").unwrap();
    assert!(db_result.stopped && db_result.passed(), "{db_result:?}");
    assert!(db_result.output.contains("ready"));
    assert!(!alive(db.pid()), "the service was stopped");
    assert!(service.running().is_empty());
}

#[tokio::test]
async fn a_service_never_ready_fails_its_dependents_with_the_reason() {
    use core_process::{RunSpec, Runner, ServiceSpec};

    let (service, _bus) = support::dyn_service();
    let runner = Runner::new(service.clone());
    let specs = [
        RunSpec::new("db", "sh")
            .args(["-c", "echo booting; exec sleep 30"])
            .service(ServiceSpec::new(
                Probe::log_line("^ready$")
                    .unwrap()
                    .interval(Duration::from_millis(10)),
                Duration::from_millis(200),
            )),
        RunSpec::new("test", "true").after("db"),
        RunSpec::new("lint", "true"),
    ];
    let result = run_pipeline(&runner, &specs).await;
    assert_eq!((result.passed, result.failed, result.skipped), (1, 1, 1));
    let db = result.get("db").unwrap();
    assert!(
        matches!(&db.error, Some(Error::NotReady { name, reason }) if name == "db" && reason.contains("not ready within 200ms")),
        "{db:?}"
    );
    let test = result.get("test").unwrap();
    match &test.error {
        Some(Error::ServiceNotReady {
            spec,
            service,
            reason,
        }) => {
            assert_eq!((spec.as_str(), service.as_str()), ("test", "db"));
            assert!(reason.contains("not ready within"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(service.running().is_empty());
}

/// Only once nothing but ready services runs is a service stopped: not while it is still
/// becoming ready, not while its dependents run (the paused clock makes the timings exact).
#[tokio::test(start_paused = true)]
async fn a_pipeline_service_is_stopped_only_once_its_dependents_are_done() {
    use core_process::{
        PipelineEvent, PipelineOptions, PipelineRunner, RunSpec, Runner, ServiceSpec,
    };
    use std::sync::Mutex;

    let (fake, _bus, _sup) = fake();
    fake.script(
        "db",
        FakeOutcome::hang()
            .delay(Duration::from_secs(5))
            .stdout("ready\n"),
    );
    fake.script(
        "slow-test",
        FakeOutcome::exit(0).delay(Duration::from_secs(10)),
    );
    let runner = Runner::new(Arc::new(fake.clone()));
    let specs = [
        RunSpec::new("db", "db").service(ServiceSpec::new(
            Probe::log_line("^ready$")
                .unwrap()
                .interval(Duration::from_millis(100)),
            Duration::from_secs(60),
        )),
        RunSpec::new("test", "slow-test").after("db"),
    ];
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let opts = PipelineOptions::new().on_event(move |e| log.lock().unwrap().push(e.clone()));
    let result = within(LIMIT * 10, "pipeline", runner.run_all(&specs, opts))
        .await
        .unwrap();
    assert!(result.success(), "{result:?}");
    let db = result.get("db").unwrap();
    assert!(db.stopped && db.passed(), "{db:?}");
    let finished: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Finished { spec, .. } => Some(spec.clone()),
            _ => None,
        })
        .collect();
    // Stopped after its dependent finished (the fake's timings are on the paused clock; the
    // results' durations are not).
    assert_eq!(finished, ["test", "db"]);
}

/// An `allow_failure` service that never gets ready fails, and its dependents run anyway.
#[tokio::test(start_paused = true)]
async fn an_allow_failure_service_never_ready_still_readies_its_dependents() {
    use core_process::{RunSpec, Runner, ServiceSpec};

    let (fake, _bus, _sup) = fake();
    fake.script("db", FakeOutcome::hang().stdout("booting\n"));
    fake.script("true", FakeOutcome::exit(0));
    let runner = Runner::new(Arc::new(fake.clone()));
    let specs = [
        RunSpec::new("db", "db")
            .allow_failure(true)
            .service(ServiceSpec::new(
                Probe::log_line("^ready$").unwrap(),
                Duration::from_secs(1),
            )),
        RunSpec::new("test", "true").after("db"),
    ];
    let result = run_pipeline(&runner, &specs).await;
    assert_eq!((result.passed, result.failed, result.skipped), (1, 1, 0));
    let db = result.get("db").unwrap();
    assert!(
        matches!(&db.error, Some(Error::NotReady { name, .. }) if name == "db"),
        "{db:?}"
    );
    assert!(result.get("test").unwrap().passed());
    assert!(fake.ran("true"));
}

/// A service that exits, even with 0, before it is ready fails as not ready.
#[tokio::test(start_paused = true)]
async fn a_pipeline_service_ended_before_ready_fails_not_ready() {
    use core_process::{RunSpec, Runner, ServiceSpec};

    let (fake, _bus, _sup) = fake();
    fake.script("db", FakeOutcome::success("booting\n"));
    let runner = Runner::new(Arc::new(fake.clone()));
    let specs = [
        RunSpec::new("db", "db").service(ServiceSpec::new(
            Probe::log_line("^ready$").unwrap(),
            Duration::from_secs(60),
        )),
        RunSpec::new("test", "true").after("db"),
    ];
    let result = run_pipeline(&runner, &specs).await;
    assert_eq!((result.passed, result.failed, result.skipped), (0, 1, 1));
    let db = result.get("db").unwrap();
    assert!(
        matches!(&db.error, Some(Error::NotReady { name, reason }) if name == "db" && reason == "it ended before it was ready"),
        "{db:?}"
    );
    assert!(
        matches!(&result.get("test").unwrap().error, Some(Error::ServiceNotReady { service, .. }) if service == "db")
    );
}

#[tokio::test(start_paused = true)]
async fn restart_by_hand_while_running_replaces_the_child() {
    let (fake, bus, sup) = fake();
    fake.script("server", FakeOutcome::hang());
    let s = supervise(&sup, RunOptions::new("server"), SupervisePolicy::new()).await;
    let first = s.process().unwrap();
    s.restart().unwrap();
    s.wait_for(LIMIT, |_| s.attempts() == 2).await.unwrap();
    assert!(!first.is_running(), "the old child was stopped");
    assert!(s.process().unwrap().is_running());
    assert!(
        restarting(&bus, s.id()).is_empty(),
        "no backoff for a restart by hand"
    );
    sup.shutdown().await.unwrap();
    assert!(fake.running().is_empty());
}

#[tokio::test]
async fn dropping_the_supervisor_stops_its_children() {
    let (service, _bus, sup) = real();
    let s = supervise(&sup, sh("exec sleep 30"), SupervisePolicy::new()).await;
    let pid = s.pid().unwrap();
    let _guard = support::KillOnDrop(pid);
    drop(sup);
    reach(&s, "stopped", |st| st == &SupervisionState::Stopped).await;
    assert!(!alive(pid));
    assert!(service.running().is_empty());
}

#[tokio::test]
async fn readiness_by_http_get_wants_2xx_or_3xx() {
    use core_process::HealthCheck;
    use std::sync::atomic::{AtomicBool, Ordering};

    // A health server plays the child's HTTP endpoint: 503 until the flag is set.
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    let health = WarpHealthServer::new("127.0.0.1:0".parse().unwrap());
    health.add_check(
        "app",
        HealthCheck::new(move || {
            let ok = flag.load(Ordering::SeqCst);
            async move { if ok { Ok(()) } else { Err("warming up") } }
        }),
    );
    let addr = health.start().await.unwrap();
    let (_service, _bus, sup) = real();
    let s = sup
        .supervise(
            sh("echo started; exec sleep 30"),
            SupervisePolicy::new().readiness(
                Probe::http(addr.to_string(), "/health").interval(Duration::from_millis(10)),
            ),
        )
        .await
        .unwrap();
    eventually(LIMIT, "started", || s.output().contains("started")).await;
    // 503 answers keep it unready: about ten probe rounds within this bound.
    let err = s.wait_ready(Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(err, Error::NotReady { .. }), "{err}");
    up.store(true, Ordering::SeqCst);
    within(LIMIT, "ready", s.wait_ready(LIMIT)).await.unwrap();
    sup.shutdown().await.unwrap();
    HealthService::stop(&health).await.unwrap();
}

/// Runs `specs` with default pipeline options, bounded by [`LIMIT`].
async fn run_pipeline(
    runner: &core_process::Runner,
    specs: &[core_process::RunSpec],
) -> core_process::RunAllResult {
    use core_process::PipelineRunner;
    within(
        LIMIT,
        "pipeline",
        runner.run_all(specs, core_process::PipelineOptions::new()),
    )
    .await
    .unwrap()
}

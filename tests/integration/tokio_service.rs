//! The tokio process service's own surface: its ids, its bus, its lifecycle hooks, its
//! `Debug`, and kill-on-drop as `detach` sets it (mutation-testing survivors of
//! `src/services/process/tokio.rs`).

use std::sync::Arc;

use core_process::{
    Error, Lifecycle, Process, ProcessService, RunOptions, Status, TokioProcessService,
};

use crate::support::{KillOnDrop, LIMIT, alive, kill9, poll_until, service, within};

#[tokio::test]
async fn ids_count_from_proc_1_in_each_service() {
    let (svc, _) = service();
    for n in 1..=3 {
        let p = svc.start(RunOptions::new("true")).await.unwrap();
        assert_eq!(p.id(), format!("proc-{n}"));
        within(LIMIT, "true", p.wait()).await.unwrap();
    }
    let (other, _) = service();
    let p = other.start(RunOptions::new("true")).await.unwrap();
    assert_eq!(p.id(), "proc-1", "ids are per service");
    within(LIMIT, "true", p.wait()).await.unwrap();
}

#[tokio::test]
async fn events_is_the_bus_it_publishes_to() {
    let (svc, bus) = service();
    let events = svc.events().expect("the tokio service has a bus");
    assert!(Arc::ptr_eq(&events, svc.event_bus()));
    assert!(std::ptr::addr_eq(Arc::as_ptr(&events), Arc::as_ptr(&bus)));
}

#[test]
fn its_lifecycle_name_and_debug_name_it() {
    let (svc, _) = service();
    assert_eq!(Lifecycle::name(&*svc), "TokioProcessService");
    let shown = format!("{svc:?}");
    assert!(shown.starts_with("TokioProcessService"), "{shown}");
    assert!(
        shown.contains("buffer_size") && shown.contains("processes: 0"),
        "{shown}"
    );
}

#[tokio::test]
async fn on_kill_kills_what_runs_but_the_detached_and_closes_the_service() {
    let (svc, _) = service();
    let (attached, detached) = sleepers(&svc).await;
    let _guard = KillOnDrop(detached.pid());
    Lifecycle::on_kill(&*svc);
    let err = within(LIMIT, "the killed process", attached.wait())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Killed { .. }), "{err:?}");
    assert_eq!(attached.status(), Status::Killed);
    // SIGKILL sent to both at once would have ended the detached one by now too.
    assert!(detached.is_running() && alive(detached.pid()), "detached");
    let err = svc.start(RunOptions::new("true")).await.unwrap_err();
    assert!(matches!(err, Error::ShutDown { .. }), "{err:?}");
    detached.kill().await.unwrap();
    within(LIMIT, "the detached process", detached.done()).await;
    Lifecycle::on_start(&*svc).await.unwrap();
    svc.run(RunOptions::new("true")).await.unwrap();
}

#[test]
fn a_runtime_dropped_under_its_processes_kills_all_but_the_detached() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (svc, _) = service();
    let (attached, detached) = rt.block_on(async {
        let (attached, detached) = sleepers(&svc).await;
        (attached.pid(), detached.pid())
    });
    let _guard = KillOnDrop(detached);
    // The supervisors, and the children they hold, are dropped with the runtime.
    drop(rt);
    poll_until("the attached child killed and reaped", || !alive(attached));
    assert!(alive(detached), "the detached child was killed");
    kill9(detached);
    poll_until("the detached child reaped", || !alive(detached));
}

#[tokio::test]
async fn dropping_the_service_leaves_a_detached_process_running() {
    let (svc, _) = service();
    let (attached, detached) = sleepers(&svc).await;
    let _guard = KillOnDrop(detached.pid());
    drop(svc);
    let err = within(LIMIT, "killed on drop", attached.wait())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Killed { .. }), "{err:?}");
    // SIGKILL sent to both at once would have ended the detached one by now too.
    assert!(detached.is_running() && alive(detached.pid()), "detached");
    detached.kill().await.unwrap();
    within(LIMIT, "the detached process", detached.done()).await;
}

/// Two `sleep 300`s started on `svc`: one as usual, one detached.
async fn sleepers(svc: &TokioProcessService) -> (Process, Process) {
    let attached = svc
        .start(RunOptions::new("sleep").arg("300"))
        .await
        .unwrap();
    let detached = svc
        .start(RunOptions::new("sleep").arg("300").detach(true))
        .await
        .unwrap();
    (attached, detached)
}

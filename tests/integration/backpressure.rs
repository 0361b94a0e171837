//! Backpressure: readers of child pipes wait for a subscriber that keeps reading, go on
//! without one that stopped, and still handle timeouts, kills and exits while they wait.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use core_process::event::OutputBatch;
use core_process::services::event_bus::Pause;
use core_process::{
    Backpressure, BroadcastEventBus, EventBus, ProcessEvent, ProcessService, RecvError, RunOptions,
    Status, Subscription, TokioProcessService,
};

use crate::support::{eventually, within};

const LIMIT: Duration = Duration::from_secs(30);

/// A bus that counts the pauses it hands to readers, over a [`BroadcastEventBus`].
struct Pacing {
    inner: BroadcastEventBus,
    pauses: AtomicUsize,
}

impl Pacing {
    fn pauses(&self) -> usize {
        self.pauses.load(Ordering::SeqCst)
    }
}

impl EventBus for Pacing {
    fn publish(&self, event: ProcessEvent) {
        self.inner.publish(event);
    }
    fn publish_output(&self, batch: OutputBatch) {
        self.inner.publish_output(batch);
    }
    fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }
    fn output_pause(&self) -> Option<Pause> {
        let pause = self.inner.output_pause();
        if pause.is_some() {
            self.pauses.fetch_add(1, Ordering::SeqCst);
        }
        pause
    }
}

/// A service on `bus`.
fn service_on(bus: BroadcastEventBus) -> (Arc<TokioProcessService>, Arc<Pacing>) {
    let bus = Arc::new(Pacing {
        inner: bus,
        pauses: AtomicUsize::new(0),
    });
    let service = Arc::new(TokioProcessService::new(
        bus.clone() as Arc<dyn EventBus>,
        core_process::DEFAULT_BUFFER_SIZE,
    ));
    (service, bus)
}

/// Waits for ever (well, an hour) for a subscriber that reads nothing: a stall no test
/// outlasts, so a subscriber that keeps reading is never left behind however loaded the
/// machine is.
const PATIENT: Backpressure = Backpressure::WhileProgressing {
    stall: Duration::from_secs(3600),
};

/// A file of `lines` numbered 80-byte lines, in its own temp dir.
fn numbered_lines(lines: usize) -> (tempfile::TempDir, std::path::PathBuf, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines.txt");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..lines {
        writeln!(out, "{i:079}").unwrap();
    }
    out.flush().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    (dir, path, len)
}

fn cat(path: &std::path::Path) -> RunOptions {
    RunOptions::new("cat").arg(path.to_string_lossy().into_owned())
}

/// Receives until every process in `ids` has exited, checking that each one's lines are
/// `0..lines` in order. A subscriber as slow as it gets: it yields to the scheduler after
/// every event.
async fn expect_every_line(sub: &mut Subscription, ids: &[&str], lines: usize) {
    let mut next = vec![0usize; ids.len()];
    let mut exited = 0;
    while exited < ids.len() {
        match sub.recv().await {
            Ok(ProcessEvent::Output { id, line, .. }) => {
                let i = ids.iter().position(|p| *p == &*id).expect("a known id");
                assert_eq!(line, format!("{:079}", next[i]), "{id}");
                next[i] += 1;
            }
            Ok(ProcessEvent::Exited { id, .. }) => {
                let i = ids.iter().position(|p| *p == &*id).expect("a known id");
                assert_eq!(next[i], lines, "{id} exited after {} lines", next[i]);
                exited += 1;
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => panic!("the subscriber missed {n} lines"),
            Err(e) => panic!("{e:?}"),
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_misses_no_line_of_several_processes() {
    const LINES: usize = 50_000;
    let (_dir, path, _) = numbered_lines(LINES);
    // 8 batches of up to 64 KiB each: every producer here can outrun the subscriber by far.
    let (svc, bus) = service_on(BroadcastEventBus::new(8).with_backpressure(PATIENT));
    let mut sub = bus.subscribe();
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(svc.start(cat(&path)).await.unwrap());
    }
    let ids: Vec<&str> = procs.iter().map(|p| p.id()).collect();
    within(
        LIMIT,
        "every line",
        expect_every_line(&mut sub, &ids, LINES),
    )
    .await;
    for p in &procs {
        p.wait().await.unwrap();
        assert_eq!(p.status(), Status::Exited);
    }
    assert!(bus.pauses() > 0, "the readers waited for the subscriber");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_is_left_behind_and_a_reading_one_misses_nothing() {
    const LINES: usize = 50_000;
    let (_dir, path, _) = numbered_lines(LINES);
    // The stuck one costs one or two stalls; the reading one, which yields after every
    // event, is far from ever being silent that long.
    let (svc, bus) = service_on(BroadcastEventBus::new(8).with_backpressure(
        Backpressure::WhileProgressing {
            stall: Duration::from_secs(1),
        },
    ));
    let mut stuck = bus.subscribe();
    let mut reading = bus.subscribe();
    let p = svc.start(cat(&path)).await.unwrap();
    let id = p.id().to_string();
    let reader = tokio::spawn(async move {
        expect_every_line(&mut reading, &[&id], LINES).await;
    });
    within(LIMIT, "the process", p.wait()).await.unwrap();
    within(LIMIT, "the reading subscriber", reader)
        .await
        .unwrap();
    assert!(
        bus.pauses() > 0,
        "the readers waited, at least for the stuck one"
    );
    // The stuck one was left behind: it learns what it missed, then sees the end.
    assert!(matches!(
        stuck.recv().await,
        Ok(ProcessEvent::Started { .. })
    ));
    assert!(matches!(stuck.recv().await, Err(RecvError::Lagged(n)) if n > 0));
    loop {
        match stuck.recv().await {
            Ok(ProcessEvent::Exited { .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// A service on a 2-batch bus that waits for a silent subscriber for ever (a stall too long to
/// represent): only a timeout, a kill or the subscriber's end can let its processes go on.
fn waiting_for_ever() -> (Arc<TokioProcessService>, Arc<Pacing>) {
    service_on(
        BroadcastEventBus::new(2).with_backpressure(Backpressure::WhileProgressing {
            stall: Duration::MAX,
        }),
    )
}

#[tokio::test]
async fn a_reader_waiting_for_a_subscriber_still_times_the_process_out() {
    let (_dir, path, len) = numbered_lines(100_000);
    // Only the timeout can end the process.
    let (svc, bus) = waiting_for_ever();
    let _silent = bus.subscribe();
    let p = svc
        .start(cat(&path).timeout(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(within(LIMIT, "the timeout", p.wait()).await.is_err());
    assert_eq!(p.status(), Status::Killed);
    assert!(p.timed_out());
    let read = p.output_bytes().len() as u64;
    assert!(read < len, "the reader waited: {read} of {len} bytes read");
}

#[tokio::test]
async fn a_reader_waiting_for_a_subscriber_still_kills() {
    let (_dir, path, _) = numbered_lines(100_000);
    let (svc, bus) = waiting_for_ever();
    let _silent = bus.subscribe();
    let p = svc.start(cat(&path)).await.unwrap();
    // Kill only once the reader is paused, so the kill is handled while it waits.
    eventually(LIMIT, "the reader to pause", || bus.pauses() > 0).await;
    within(LIMIT, "kill", p.kill()).await.unwrap();
    assert!(within(LIMIT, "wait", p.wait()).await.is_err());
    assert_eq!(p.status(), Status::Killed);
}

#[tokio::test]
async fn dropping_the_subscriber_waited_for_lets_the_process_finish() {
    let (_dir, path, len) = numbered_lines(100_000);
    let (svc, bus) = waiting_for_ever();
    let silent = bus.subscribe();
    let p = svc
        .start(cat(&path).output_capacity(len as usize))
        .await
        .unwrap();
    eventually(LIMIT, "the reader to pause", || bus.pauses() > 0).await;
    drop(silent);
    within(LIMIT, "the process", p.wait()).await.unwrap();
    assert_eq!(p.output_bytes().len() as u64, len, "nothing lost");
}

#[tokio::test]
async fn with_no_backpressure_a_stuck_subscriber_never_slows_a_process() {
    let (_dir, path, _) = numbered_lines(100_000);
    let (svc, bus) = service_on(BroadcastEventBus::new(2).with_backpressure(Backpressure::Never));
    let mut stuck = bus.subscribe();
    let p = svc.start(cat(&path)).await.unwrap();
    within(LIMIT, "the process", p.wait()).await.unwrap();
    assert_eq!(bus.pauses(), 0, "the readers never waited");
    assert!(matches!(
        stuck.recv().await,
        Ok(ProcessEvent::Started { .. })
    ));
    assert!(matches!(stuck.recv().await, Err(RecvError::Lagged(n)) if n > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_processes_are_paced_too() {
    // A child that prints a line and exits has its output read after its exit, while the
    // supervisor drains the pipe: that read must be paced like any other.
    const PROCESSES: usize = 40;
    let (svc, bus) = service_on(BroadcastEventBus::new(2).with_backpressure(PATIENT));
    let mut sub = bus.subscribe();
    let reader = tokio::spawn(async move {
        let mut lines = Vec::new();
        while lines.len() < PROCESSES {
            match sub.recv().await {
                Ok(ProcessEvent::Output { line, .. }) => lines.push(line.to_string()),
                Ok(_) => {}
                Err(e) => panic!("{e:?} after {} lines", lines.len()),
            }
            // A subscriber slower than the processes come and go (a few ms each).
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        lines
    });
    for i in 0..PROCESSES {
        let p = svc
            .start(RunOptions::new("printf").arg(format!("line {i}\\n")))
            .await
            .unwrap();
        within(LIMIT, "printf", p.wait()).await.unwrap();
    }
    let lines = within(LIMIT, "every line", reader).await.unwrap();
    let expected: Vec<String> = (0..PROCESSES).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected);
}

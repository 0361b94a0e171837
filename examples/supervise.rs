//! Supervision: a crash-looping child backs off and goes `Fatal`; a healthy one, killed from
//! outside, is restarted under the same id. Prints the supervision events as JSON as they
//! come, then each supervised process's snapshot.
//!
//! Run it with `cargo run --example supervise`.

use std::sync::Arc;
use std::time::Duration;

use core_process::{
    Backoff, EventBus, Lifecycles, Probe, ProcessEvent, ProcessModule, RestartPolicy, RunOptions,
    StartLimit, SupervisePolicy, SupervisionState, SupervisorService,
};
use shaku::HasComponent;

#[tokio::main]
async fn main() -> core_process::Result<()> {
    let module = ProcessModule::builder().build();
    let lifecycles = Lifecycles::of_module(&module);
    lifecycles.start().await?;
    let supervisor: Arc<dyn SupervisorService> = module.resolve();
    let bus: Arc<dyn EventBus> = module.resolve();

    // Print the supervision events (the `sup-N` ids), skipping the children's own.
    let mut events = bus.subscribe();
    let printer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if event.id().starts_with("sup-") {
                println!(
                    "event {}",
                    serde_json::to_string(&event).unwrap_or_default()
                );
            }
            if let ProcessEvent::Stopped { id, .. } = &event
                && id.as_str() == "sup-2"
            {
                break;
            }
        }
    });

    // 1. A child that fails at once: 100, 200, 400 ms between starts, then Fatal at the 4th.
    let crashing = supervisor
        .supervise(
            RunOptions::new("sh").args(["-c", "echo 'starting...'; echo 'bad config' >&2; exit 1"]),
            SupervisePolicy::new()
                .backoff(Backoff::exponential(
                    Duration::from_millis(100),
                    Duration::from_secs(2),
                ))
                .start_limit(StartLimit::new(4, Duration::from_secs(60))),
        )
        .await?;

    // 2. A healthy child, ready once it prints "ready"; we kill it and it comes back.
    let healthy = supervisor
        .supervise(
            RunOptions::new("sh").args(["-c", "echo ready; exec sleep 60"]),
            SupervisePolicy::new()
                .restart(RestartPolicy::always())
                .readiness(Probe::log_line("^ready$")?)
                .backoff(Backoff::fixed(Duration::from_millis(200))),
        )
        .await?;

    let state = crashing
        .wait_for(Duration::from_secs(10), |s| {
            matches!(s, SupervisionState::Fatal { .. })
        })
        .await?;
    println!(
        "{} is {state} after {} attempts",
        crashing.id(),
        crashing.attempts()
    );

    healthy.wait_ready(Duration::from_secs(10)).await?;
    let first = healthy.pid();
    println!("{} is ready, pid {first:?}; killing it", healthy.id());
    if let Some(child) = healthy.process() {
        child.kill().await?;
    }
    // Ready again, with a new child (the state changes with each start, so this re-checks).
    healthy
        .wait_for(Duration::from_secs(10), |s| {
            s.is_ready() && healthy.attempts() >= 2
        })
        .await?;
    println!(
        "{} is back: pid {:?}, attempt {}",
        healthy.id(),
        healthy.pid(),
        healthy.attempts()
    );

    for s in supervisor.list() {
        println!(
            "info {}",
            serde_json::to_string_pretty(&s.info()).unwrap_or_default()
        );
    }
    println!("output of {}:\n{}", crashing.id(), crashing.output());

    // Stopping the module stops the supervisor first: no restart, no child left.
    lifecycles.stop().await?;
    let _ = printer.await;
    Ok(())
}

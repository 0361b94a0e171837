//! [`RecordingEventBus`]: an event bus that keeps what it carried, for assertions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shaku::Component;

use crate::event::{OutputBatch, ProcessEvent};
use crate::services::event_bus::{BroadcastEventBus, EventBus, Pause, Subscription};
use crate::sync::lock;
use crate::types::Stream;

/// An [`EventBus`] that records every event it carries (output batches as one event per line)
/// and also delivers them to subscribers like [`BroadcastEventBus`].
///
/// Cloning gives another handle to the same recorder: keep one in the test and give the other
/// to the module (`with_component_override::<dyn EventBus>(Box::new(recorder.clone()))`).
#[derive(Clone, Component, Default)]
#[shaku(interface = EventBus)]
pub struct RecordingEventBus {
    #[shaku(force_default)]
    shared: Arc<Recording>,
}

#[derive(Default)]
struct Recording {
    inner: BroadcastEventBus,
    events: Mutex<Vec<ProcessEvent>>,
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for RecordingEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingEventBus")
            .field("events", &lock(&self.shared.events).len())
            .finish_non_exhaustive()
    }
}

impl RecordingEventBus {
    /// An empty recorder.
    pub fn new() -> Self {
        RecordingEventBus::default()
    }

    /// Every event so far, in publication order.
    pub fn events(&self) -> Vec<ProcessEvent> {
        lock(&self.shared.events).clone()
    }

    /// The events about process `id`.
    pub fn events_for(&self, id: &str) -> Vec<ProcessEvent> {
        lock(&self.shared.events)
            .iter()
            .filter(|e| e.id() == id)
            .cloned()
            .collect()
    }

    /// The output lines of process `id` on `stream`, in order.
    pub fn lines(&self, id: &str, stream: Stream) -> Vec<String> {
        lock(&self.shared.events)
            .iter()
            .filter_map(|e| match e {
                ProcessEvent::Output {
                    id: eid,
                    line,
                    stream: s,
                } if &**eid == id && *s == stream => Some(line.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        lock(&self.shared.events).clear();
    }

    /// Waits until some recorded event satisfies `pred`, up to `timeout`; returns whether one
    /// did.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&ProcessEvent) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if lock(&self.shared.events).iter().any(&pred) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return lock(&self.shared.events).iter().any(&pred);
            }
        }
    }

    fn record(&self, events: impl IntoIterator<Item = ProcessEvent>) {
        lock(&self.shared.events).extend(events);
        self.shared.changed.notify_waiters();
    }
}

impl EventBus for RecordingEventBus {
    fn publish(&self, event: ProcessEvent) {
        self.record([event.clone()]);
        self.shared.inner.publish(event);
    }

    fn publish_output(&self, batch: OutputBatch) {
        self.record(batch.events());
        self.shared.inner.publish_output(batch);
    }

    fn subscribe(&self) -> Subscription {
        self.shared.inner.subscribe()
    }

    fn output_pause(&self) -> Option<Pause> {
        self.shared.inner.output_pause()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Signal;

    #[tokio::test]
    async fn recording_bus_wait_for() {
        let bus = RecordingEventBus::new();
        assert!(!bus.wait_for(Duration::from_millis(10), |_| true).await);
        bus.publish(ProcessEvent::Killed {
            id: "x".into(),
            signal: Signal::Term,
            timed_out: false,
        });
        assert!(
            bus.wait_for(Duration::from_millis(10), |e| e.id() == "x")
                .await
        );
        bus.clear();
        assert!(bus.events().is_empty());
    }
}

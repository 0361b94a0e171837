//! [`EventBus`]: how process events reach subscribers, and [`BroadcastEventBus`], the default.

use std::sync::{Arc, Mutex, OnceLock};

use shaku::{Component, Interface};
use tokio::sync::{broadcast, mpsc};

use crate::event::{OutputBatch, ProcessEvent, RecvError, Subscription};

/// Delivers process events to subscribers. Inject your own to forward events to your host's
/// bus; the process service publishes to whatever `dyn EventBus` the module holds.
///
/// Contract for implementations: `publish` and `publish_output` never block (they run on the
/// task that drains a child's pipe); lifecycle events (`Started`, `Exited`, `Killed`) are never
/// dropped; `Output` events may be dropped for a subscriber that falls behind, which then
/// learns how many it missed.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use core_process::{EventBus, ProcessEvent, Subscription, BroadcastEventBus};
///
/// /// Counts events, then hands them to the default bus.
/// struct Counting { inner: BroadcastEventBus, seen: Mutex<usize> }
///
/// impl EventBus for Counting {
///     fn publish(&self, event: ProcessEvent) {
///         *self.seen.lock().unwrap() += 1;
///         self.inner.publish(event);
///     }
///     fn subscribe(&self) -> Subscription {
///         self.inner.subscribe()
///     }
/// }
///
/// let bus = Counting { inner: BroadcastEventBus::new(64), seen: Mutex::new(0) };
/// bus.publish(ProcessEvent::Killed { id: "proc-1".into(), signal: core_process::Signal::Term, timed_out: false });
/// assert_eq!(*bus.seen.lock().unwrap(), 1);
/// ```
pub trait EventBus: Interface {
    /// Delivers one event to every current subscriber.
    fn publish(&self, event: ProcessEvent);

    /// Delivers a batch of output lines: subscribers see one [`ProcessEvent::Output`] per line.
    /// The default publishes each line with [`publish`](EventBus::publish); implementations
    /// that can carry the batch whole (as [`BroadcastEventBus`] does) should.
    fn publish_output(&self, batch: OutputBatch) {
        for event in batch.events() {
            self.publish(event);
        }
    }

    /// A new subscription, which sees the events published from now on.
    fn subscribe(&self) -> Subscription;
}

/// How many output batches (one per pipe read, up to 64 KiB each) [`BroadcastEventBus`] holds
/// for slow subscribers before they start missing output.
///
/// A batch is as large as the read that made it: a chatty process writing a line at a time makes
/// batches of one line, a bulk producer makes 64 KiB ones. Held batches are freed as soon as every
/// subscriber has read them, so the memory in use is bounded by `capacity × 64 KiB` (64 MiB) only
/// while a subscriber lags behind a bulk producer.
pub const DEFAULT_BUS_CAPACITY: usize = 1024;

/// The default [`EventBus`], on one shared tokio broadcast channel.
///
/// Output travels as batches (one channel operation per pipe read, not per line) and each
/// subscription yields them line by line. Lifecycle events go to every subscriber through its
/// own unbounded queue, so they are never dropped, and are merged in publication order with the
/// output. A subscriber that falls more than `capacity` batches behind misses output and is told
/// how many lines it missed ([`RecvError::Lagged`]).
#[derive(Component)]
#[shaku(interface = EventBus)]
pub struct BroadcastEventBus {
    /// Output batches held for slow subscribers (default [`DEFAULT_BUS_CAPACITY`]).
    #[shaku(default = DEFAULT_BUS_CAPACITY)]
    capacity: usize,
    #[shaku(force_default)]
    channels: OnceLock<Channels>,
}

struct Channels {
    output: broadcast::Sender<Arc<Sequenced>>,
    state: Mutex<BusState>,
}

#[derive(Default)]
struct BusState {
    /// Sequence number of the next event (lifecycle or batch): the merge order.
    seq: u64,
    /// Output lines published so far: lets a subscription count what it missed.
    lines: u64,
    lifecycle: Vec<mpsc::UnboundedSender<(u64, ProcessEvent)>>,
}

/// A batch with its place in the bus's order.
pub(crate) struct Sequenced {
    seq: u64,
    first_line: u64,
    batch: OutputBatch,
}

impl BroadcastEventBus {
    /// A bus that holds up to `capacity` output batches for slow subscribers (at least 1).
    pub fn new(capacity: usize) -> Self {
        BroadcastEventBus {
            capacity,
            channels: OnceLock::new(),
        }
    }

    fn channels(&self) -> &Channels {
        self.channels.get_or_init(|| Channels {
            output: broadcast::channel(self.capacity.max(1)).0,
            state: Mutex::new(BusState::default()),
        })
    }

    /// How many subscriptions are open.
    pub fn subscriber_count(&self) -> usize {
        let ch = self.channels();
        let mut state = lock(&ch.state);
        state.lifecycle.retain(|tx| !tx.is_closed());
        state.lifecycle.len()
    }
}

impl Default for BroadcastEventBus {
    fn default() -> Self {
        BroadcastEventBus::new(DEFAULT_BUS_CAPACITY)
    }
}

impl std::fmt::Debug for BroadcastEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastEventBus")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

use crate::sync::lock;

impl EventBus for BroadcastEventBus {
    fn publish(&self, event: ProcessEvent) {
        if !event.is_lifecycle() {
            // A lone output line travels as a one-line batch so it keeps its order.
            if let ProcessEvent::Output { id, line, stream } = event {
                self.publish_output(OutputBatch::new(
                    id,
                    stream,
                    String::from(line).into_bytes(),
                ));
            }
            return;
        }
        let ch = self.channels();
        let mut state = lock(&ch.state);
        let seq = state.seq;
        state.seq += 1;
        state
            .lifecycle
            .retain(|tx| tx.send((seq, event.clone())).is_ok());
    }

    fn publish_output(&self, batch: OutputBatch) {
        let lines = batch.line_count();
        if lines == 0 {
            return;
        }
        let ch = self.channels();
        let mut state = lock(&ch.state);
        if ch.output.receiver_count() == 0 {
            // Nobody listens: keep counting so a later subscriber's arithmetic stays right.
            state.lines += lines;
            return;
        }
        let seq = state.seq;
        state.seq += 1;
        let first_line = state.lines;
        state.lines += lines;
        // Sent under the lock so the channel's order is the sequence order.
        let _ = ch.output.send(Arc::new(Sequenced {
            seq,
            first_line,
            batch,
        }));
    }

    fn subscribe(&self) -> Subscription {
        let ch = self.channels();
        let mut state = lock(&ch.state);
        let (tx, lifecycle) = mpsc::unbounded_channel();
        state.lifecycle.push(tx);
        Subscription::broadcast(BroadcastSubscription {
            lifecycle,
            lifecycle_open: true,
            output: ch.output.subscribe(),
            output_open: true,
            next_line: state.lines,
            current: None,
            pending: None,
            missed: 0,
            lifecycle_checked: false,
            streaming: false,
        })
    }
}

/// The subscription side of [`BroadcastEventBus`]: merges lifecycle events and output batches
/// back into publication order and yields output line by line.
pub(crate) struct BroadcastSubscription {
    lifecycle: mpsc::UnboundedReceiver<(u64, ProcessEvent)>,
    lifecycle_open: bool,
    output: broadcast::Receiver<Arc<Sequenced>>,
    output_open: bool,
    /// The global index of the next output line this subscriber expects.
    next_line: u64,
    /// The batch being yielded, and where its next line starts.
    current: Option<(Arc<Sequenced>, usize)>,
    /// A lifecycle event received but not yet yielded (output published before it goes first).
    pending: Option<(u64, ProcessEvent)>,
    /// Output lines missed just before `current`, not yet reported.
    missed: u64,
    /// Whether the lifecycle queue was looked at since `current` was taken.
    lifecycle_checked: bool,
    /// Whether the next event is simply the next line of `current` (when it has one): set once
    /// `recv` has settled that nothing goes before that batch's lines, cleared whenever
    /// `current` or `pending` changes. Lets [`next_ready`](Self::next_ready) skip the merge.
    streaming: bool,
}

impl BroadcastSubscription {
    /// Takes an output batch into `current`, counting the lines missed before it.
    fn accept(&mut self, batch: Arc<Sequenced>) {
        self.missed += batch.first_line.saturating_sub(self.next_line);
        self.next_line = batch.first_line + batch.batch.line_count();
        self.current = Some((batch, 0));
        // Lifecycle events published before this batch may have been queued since the last
        // look: look again before yielding any of its lines.
        self.lifecycle_checked = false;
        self.streaming = false;
    }

    /// The next event when it is the next line of the batch being yielded: the fast path of
    /// [`try_next`](Self::try_next), one line-end search and no channel or queue look-up per
    /// line.
    #[inline(always)]
    pub(crate) fn next_ready(&mut self) -> Option<ProcessEvent> {
        if !self.streaming {
            return None;
        }
        let (batch, pos) = self.current.as_mut()?;
        batch.batch.event_at(pos)
    }

    /// The next line of the current batch (dropping the batch once it is used up).
    fn next_line(&mut self) -> Option<ProcessEvent> {
        let (batch, pos) = self.current.as_mut()?;
        let event = batch.batch.event_at(pos);
        if event.is_none() {
            self.current = None;
            self.streaming = false;
        }
        event
    }

    /// The next event if one is available now, without waiting: `None` when both sources are
    /// empty (then [`wait`](Self::wait) until one is not).
    pub(crate) fn try_next(&mut self) -> Option<Result<ProcessEvent, RecvError>> {
        if let Some(event) = self.next_ready() {
            return Some(Ok(event));
        }
        loop {
            // Look at the head of both sources, then yield whichever was published first.
            // Publication happens under one lock, so once a lifecycle event is visible every
            // batch published before it is already in the output channel; and once a batch is
            // held, every lifecycle event published before it is already queued. So the
            // lifecycle queue is looked at once per batch taken, not once per line: checked
            // after the batch arrived, it holds every lifecycle event that must go first.
            if self.pending.is_none()
                && self.lifecycle_open
                && !(self.current.is_some() && self.lifecycle_checked)
            {
                match self.lifecycle.try_recv() {
                    Ok(item) => self.hold(item),
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => self.lifecycle_open = false,
                }
                self.lifecycle_checked = self.current.is_some();
            }
            if self.current.is_none() && self.output_open {
                match self.output.try_recv() {
                    Ok(batch) => {
                        self.accept(batch);
                        continue;
                    }
                    // The next receive yields the oldest batch still held; its first line
                    // tells how many were missed.
                    Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                    Err(broadcast::error::TryRecvError::Empty) => {}
                    Err(broadcast::error::TryRecvError::Closed) => self.output_open = false,
                }
            }
            let output_first = match (&self.current, &self.pending) {
                (Some((batch, _)), Some((seq, _))) => batch.seq < *seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => {
                    if !self.lifecycle_open && !self.output_open {
                        return Some(Err(RecvError::Closed));
                    }
                    return None;
                }
            };
            if output_first {
                // Output was missed just before this batch: say so at the place it was missed.
                if self.missed > 0 {
                    return Some(Err(RecvError::Lagged(std::mem::take(&mut self.missed))));
                }
                if let Some(event) = self.next_line() {
                    // Until `current` or `pending` changes, the next line goes next.
                    self.streaming = true;
                    return Some(Ok(event));
                }
            } else if let Some((_, event)) = self.pending.take() {
                return Some(Ok(event));
            }
        }
    }

    /// Holds a lifecycle event until the output published before it has been yielded.
    fn hold(&mut self, item: (u64, ProcessEvent)) {
        self.pending = Some(item);
        self.streaming = false;
    }

    /// Waits until either source has something (or closes) when [`try_next`](Self::try_next)
    /// found both empty. Cancel safe: what arrives is stored before this returns.
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            biased;
            item = self.lifecycle.recv(), if self.lifecycle_open => match item {
                Some(item) => self.hold(item),
                None => self.lifecycle_open = false,
            },
            batch = self.output.recv(), if self.output_open => match batch {
                Ok(batch) => self.accept(batch),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => self.output_open = false,
            },
            // Both closed: nothing to wait for; `try_next` reports the end.
            else => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Signal, Stream};
    use std::time::Duration;

    fn started(id: &str) -> ProcessEvent {
        ProcessEvent::Started {
            id: id.into(),
            command: "x".into(),
            args: vec![],
            dir: None,
            pid: 1,
        }
    }

    fn exited(id: &str) -> ProcessEvent {
        ProcessEvent::Exited {
            id: id.into(),
            exit_code: Some(0),
            duration: Duration::ZERO,
            error: None,
        }
    }

    fn line(ev: &ProcessEvent) -> &str {
        match ev {
            ProcessEvent::Output { line, .. } => line,
            other => panic!("expected output, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn batches_become_lines_in_publication_order() {
        let bus = BroadcastEventBus::new(16);
        let mut sub = bus.subscribe();
        bus.publish(started("p"));
        bus.publish_output(OutputBatch::new(
            "p".into(),
            Stream::Stdout,
            b"a\nb\n".to_vec(),
        ));
        bus.publish_output(OutputBatch::new(
            "p".into(),
            Stream::Stdout,
            b"c\n".to_vec(),
        ));
        bus.publish(exited("p"));
        assert!(matches!(
            sub.recv().await.unwrap(),
            ProcessEvent::Started { .. }
        ));
        assert_eq!(line(&sub.recv().await.unwrap()), "a");
        assert_eq!(line(&sub.recv().await.unwrap()), "b");
        assert_eq!(line(&sub.recv().await.unwrap()), "c");
        assert!(matches!(
            sub.recv().await.unwrap(),
            ProcessEvent::Exited { .. }
        ));
    }

    #[tokio::test]
    async fn lagging_subscriber_misses_only_output_and_learns_how_much() {
        let bus = BroadcastEventBus::new(2);
        let mut sub = bus.subscribe();
        bus.publish(started("p"));
        for i in 0..10 {
            let data = format!("{i}a\n{i}b\n").into_bytes();
            bus.publish_output(OutputBatch::new("p".into(), Stream::Stdout, data));
        }
        bus.publish(ProcessEvent::Killed {
            id: "p".into(),
            signal: Signal::Kill,
            timed_out: false,
        });
        bus.publish(exited("p"));
        assert!(matches!(
            sub.recv().await.unwrap(),
            ProcessEvent::Started { .. }
        ));
        // 10 batches of 2 lines, 2 batches held: 16 lines missed.
        assert_eq!(sub.recv().await, Err(RecvError::Lagged(16)));
        assert_eq!(line(&sub.recv().await.unwrap()), "8a");
        assert_eq!(line(&sub.recv().await.unwrap()), "8b");
        assert_eq!(line(&sub.recv().await.unwrap()), "9a");
        assert_eq!(line(&sub.recv().await.unwrap()), "9b");
        assert!(matches!(
            sub.recv().await.unwrap(),
            ProcessEvent::Killed { .. }
        ));
        assert!(matches!(
            sub.recv().await.unwrap(),
            ProcessEvent::Exited { .. }
        ));
    }

    #[tokio::test]
    async fn closed_after_bus_dropped_and_drained() {
        let bus = BroadcastEventBus::new(4);
        let mut sub = bus.subscribe();
        bus.publish(started("p"));
        drop(bus);
        assert!(sub.recv().await.is_ok());
        assert_eq!(sub.recv().await, Err(RecvError::Closed));
    }

    #[tokio::test]
    async fn single_output_event_is_delivered() {
        let bus = BroadcastEventBus::default();
        let mut sub = bus.subscribe();
        bus.publish(ProcessEvent::Output {
            id: "p".into(),
            line: "solo".into(),
            stream: Stream::Stderr,
        });
        assert_eq!(line(&sub.recv().await.unwrap()), "solo");
    }

    #[tokio::test]
    async fn subscriber_sees_only_what_comes_after_it() {
        let bus = BroadcastEventBus::new(4);
        bus.publish(started("early"));
        bus.publish_output(OutputBatch::new(
            "early".into(),
            Stream::Stdout,
            b"x\n".to_vec(),
        ));
        let mut sub = bus.subscribe();
        bus.publish_output(OutputBatch::new(
            "late".into(),
            Stream::Stdout,
            b"y\n".to_vec(),
        ));
        let ev = sub.recv().await.unwrap();
        assert_eq!((ev.id(), line(&ev)), ("late", "y"));
        assert_eq!(bus.subscriber_count(), 1);
        drop(sub);
        assert_eq!(bus.subscriber_count(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_subscriber_with_events_always_ready_lets_other_tasks_run() {
        // One thread, a batch of 10,000 lines already published: without cooperative yields
        // the loop below would take every line before the spawned task ever ran.
        let bus = BroadcastEventBus::new(4);
        let mut sub = bus.subscribe();
        let lines = 10_000;
        bus.publish_output(OutputBatch::new(
            "p".into(),
            Stream::Stdout,
            "x\n".repeat(lines).into_bytes(),
        ));
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let other = tokio::spawn(async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut ran_after = None;
        for i in 0..lines {
            assert_eq!(line(&sub.recv().await.unwrap()), "x");
            if ran_after.is_none() && ran.load(std::sync::atomic::Ordering::SeqCst) {
                ran_after = Some(i);
            }
        }
        let ran_after = ran_after.expect("the other task never ran while lines were ready");
        assert!(ran_after < 1_000, "it ran only after {ran_after} lines");
        other.await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_receive_loses_nothing() {
        let bus = BroadcastEventBus::new(4);
        let mut sub = bus.subscribe();
        // Pending: nothing published yet. Dropping it must leave the subscription usable.
        {
            let recv = sub.recv();
            tokio::pin!(recv);
            assert!(futures_poll_once(recv.as_mut()).await.is_none());
        }
        bus.publish_output(OutputBatch::new(
            "p".into(),
            Stream::Stdout,
            b"a\nb\n".to_vec(),
        ));
        assert_eq!(line(&sub.recv().await.unwrap()), "a");
        // Created but never polled: takes nothing.
        drop(sub.recv());
        assert_eq!(line(&sub.recv().await.unwrap()), "b");
    }

    /// Polls `fut` once: `Some(output)` if it was ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(mut fut: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
                std::task::Poll::Ready(out) => Some(out),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test]
    async fn waits_for_events_published_later() {
        let bus = Arc::new(BroadcastEventBus::new(4));
        let mut sub = bus.subscribe();
        let b = bus.clone();
        let publisher = tokio::spawn(async move {
            tokio::task::yield_now().await;
            b.publish_output(OutputBatch::new(
                "p".into(),
                Stream::Stdout,
                b"later\n".to_vec(),
            ));
            b.publish(exited("p"));
        });
        assert_eq!(line(&sub.recv().await.unwrap()), "later");
        assert!(matches!(
            sub.recv().await.unwrap(),
            ProcessEvent::Exited { .. }
        ));
        publisher.await.unwrap();
    }
}

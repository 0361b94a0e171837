//! [`BroadcastEventBus`], the default [`EventBus`], and its subscription side: lifecycle
//! events through one unbounded queue per subscriber, output batches through one shared
//! broadcast channel, merged back into publication order by each subscription.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use shaku::Component;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;

use super::pacer::{Cursor, Lag, Pacer, Progress, WaitingReader};
use super::subscription::{EVENTS_PER_BUDGET_UNIT, RecvError, Subscription};
use super::{Backpressure, DEFAULT_BUS_CAPACITY, DEFAULT_BUS_WINDOW, EventBus, Pause};
use crate::event::{OutputBatch, ProcessEvent};

/// The default [`EventBus`], on one shared tokio broadcast channel.
///
/// Output travels as batches (one channel operation per pipe read, not per line) and each
/// subscription yields them line by line. Lifecycle events go to every subscriber through its
/// own unbounded queue, so they are never dropped, and are merged in publication order with the
/// output.
///
/// A subscriber that falls behind a fast producer is waited for, by default: the readers of
/// the children pause until it catches up, as long as it keeps reading (see [`Backpressure`]).
/// A subscriber left behind (or any, with [`Backpressure::Never`]) misses output once it is
/// more than `capacity` batches behind, and is told how many lines it missed
/// ([`RecvError::Lagged`]).
#[derive(Component)]
#[shaku(interface = EventBus)]
pub struct BroadcastEventBus {
    /// Output batches held for slow subscribers (default [`DEFAULT_BUS_CAPACITY`]).
    #[shaku(default = DEFAULT_BUS_CAPACITY)]
    capacity: usize,
    /// Whether readers wait for slow subscribers (default: while they make progress).
    #[shaku(default)]
    backpressure: Backpressure,
    /// With backpressure, how many bytes of output readers may run ahead of a subscriber they
    /// wait for (default [`DEFAULT_BUS_WINDOW`]).
    #[shaku(default = DEFAULT_BUS_WINDOW)]
    window: usize,
    #[shaku(force_default)]
    channels: OnceLock<Arc<Channels>>,
}

struct Channels {
    output: broadcast::Sender<Arc<Sequenced>>,
    state: Mutex<BusState>,
    pacer: Arc<Pacer>,
}

#[derive(Default)]
struct BusState {
    /// Sequence number of the next event (lifecycle or batch): the merge order.
    seq: u64,
    /// Output lines published so far: lets a subscription count what it missed.
    lines: u64,
    subscribers: Vec<Subscriber>,
}

/// The bus's side of one subscription.
struct Subscriber {
    lifecycle: mpsc::UnboundedSender<Queued>,
    cursor: Arc<Cursor>,
    /// Whether the readers stopped waiting for it (it stalled) until it is back within
    /// [`Pacer::low`].
    left_behind: bool,
    /// While readers wait for it: its progress when it was last seen to move, and when.
    watched: Option<(Progress, Instant)>,
}

/// A lifecycle event with its place in the bus's order.
struct Queued {
    seq: u64,
    /// Output lines published before it: lets a subscription that missed output say so
    /// before this event when the lines missed came before it.
    lines_before: u64,
    event: ProcessEvent,
}

/// A batch with its place in the bus's order.
pub(crate) struct Sequenced {
    seq: u64,
    /// Its index among the output batches sent (for [`Pacer`]).
    index: u64,
    /// The bytes of output sent up to its end (for [`Pacer`]).
    end: u64,
    first_line: u64,
    batch: OutputBatch,
}

impl BroadcastEventBus {
    /// A bus that holds up to `capacity` output batches for slow subscribers (at least 1),
    /// with the default [`Backpressure`].
    pub fn new(capacity: usize) -> Self {
        BroadcastEventBus {
            capacity,
            backpressure: Backpressure::default(),
            window: DEFAULT_BUS_WINDOW,
            channels: OnceLock::new(),
        }
    }

    /// The same bus, with readers (under [`Backpressure::WhileProgressing`]) pausing for a
    /// subscriber more than `bytes` of output behind, until it is back within half that (at
    /// least 1 byte; the default is [`DEFAULT_BUS_WINDOW`]). This bounds the output the bus
    /// holds for a subscriber that keeps reading: see [`DEFAULT_BUS_WINDOW`].
    ///
    /// ```
    /// use core_process::BroadcastEventBus;
    ///
    /// // Hold at most about 1 MiB (plus one read per busy pipe) for a slow subscriber.
    /// let bus = BroadcastEventBus::new(1024).with_window(1024 * 1024);
    /// # let _ = bus;
    /// ```
    pub fn with_window(mut self, bytes: usize) -> Self {
        self.window = bytes.max(1);
        self
    }

    /// The same bus, with readers waiting for slow subscribers as `backpressure` says.
    pub fn with_backpressure(mut self, backpressure: Backpressure) -> Self {
        self.backpressure = backpressure;
        self
    }

    fn channels(&self) -> &Arc<Channels> {
        self.channels.get_or_init(|| {
            let capacity = self.capacity.max(1) as u64;
            Arc::new(Channels {
                output: broadcast::channel(self.capacity.max(1)).0,
                state: Mutex::new(BusState::default()),
                pacer: Arc::new(Pacer {
                    sent: AtomicU64::new(0),
                    sent_bytes: AtomicU64::new(0),
                    waiting: AtomicUsize::new(0),
                    caught_up: Notify::new(),
                    high: Lag {
                        batches: capacity / 2,
                        bytes: self.window.max(1) as u64,
                    },
                    low: Lag {
                        batches: capacity / 4,
                        bytes: self.window.max(1) as u64 / 2,
                    },
                }),
            })
        })
    }

    /// How many subscriptions are open.
    pub fn subscriber_count(&self) -> usize {
        let ch = self.channels();
        let mut state = lock(&ch.state);
        state.forget_closed();
        state.subscribers.len()
    }
}

impl BusState {
    fn forget_closed(&mut self) {
        self.subscribers.retain(|s| !s.lifecycle.is_closed());
    }
}

/// What [`Channels::check`] found.
enum Backlog {
    /// No subscriber that is waited for is behind: read on.
    Clear,
    /// Wait, at the latest until this instant (if any), when a silent subscriber is left
    /// behind.
    Wait(Option<Instant>),
}

impl Channels {
    /// Whether a reader should pause now: some subscriber not left behind is more than
    /// `high` batches behind. Also lets subscribers left behind back in once they are within
    /// `low`.
    fn should_pause(&self) -> bool {
        let mut state = lock(&self.state);
        let pacer = &self.pacer;
        let mut pause = false;
        for s in &mut state.subscribers {
            let lag = pacer.lag(&s.cursor);
            if s.left_behind {
                s.left_behind = !pacer.within_low(lag);
            } else if pacer.above_high(lag) && !s.lifecycle.is_closed() {
                pause = true;
            }
        }
        pause
    }

    /// Looks at the subscribers waited for: `Clear` once all are within `low`; leaves behind
    /// those that took no batch for `stall`.
    fn check(&self, stall: Duration) -> Backlog {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.forget_closed();
        let mut waiting = false;
        let mut until: Option<Instant> = None;
        for s in &mut state.subscribers {
            let at = s.cursor.progress();
            let behind = self.pacer.lag(&s.cursor);
            if s.left_behind || self.pacer.within_low(behind) {
                s.watched = None;
                continue;
            }
            let since = match s.watched {
                Some((seen, since)) if seen == at => since,
                _ => {
                    s.watched = Some((at, now));
                    now
                }
            };
            // A stall too long to represent never ends: wait for as long as it takes.
            let Some(give_up) = since.checked_add(stall) else {
                waiting = true;
                continue;
            };
            if give_up <= now {
                tracing::debug!(
                    batches = behind.batches,
                    bytes = behind.bytes,
                    ?stall,
                    "a subscriber took no output for the stall time: readers go on without it"
                );
                s.left_behind = true;
                s.watched = None;
            } else {
                waiting = true;
                until = Some(until.map_or(give_up, |u| u.min(give_up)));
            }
        }
        if waiting {
            Backlog::Wait(until)
        } else {
            Backlog::Clear
        }
    }

    /// Waits until every subscriber waited for is within `low` or left behind.
    async fn wait_for_subscribers(self: Arc<Self>, stall: Duration) {
        let pacer = &self.pacer;
        pacer.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = WaitingReader(pacer);
        loop {
            let caught_up = pacer.caught_up.notified();
            tokio::pin!(caught_up);
            // Registered before looking, so a subscription catching up meanwhile wakes us.
            caught_up.as_mut().enable();
            match self.check(stall) {
                Backlog::Clear => return,
                Backlog::Wait(give_up) => {
                    tokio::select! {
                        _ = caught_up => {}
                        _ = crate::sync::sleep_until(give_up) => {}
                    }
                }
            }
        }
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
        let lines_before = state.lines;
        state.subscribers.retain(|s| {
            s.lifecycle
                .send(Queued {
                    seq,
                    lines_before,
                    event: event.clone(),
                })
                .is_ok()
        });
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
        let (index, end) = ch.pacer.send(batch.text().len());
        // Sent under the lock so the channel's order is the sequence order.
        let _ = ch.output.send(Arc::new(Sequenced {
            seq,
            index,
            end,
            first_line,
            batch,
        }));
    }

    fn subscribe(&self) -> Subscription {
        let ch = self.channels();
        let mut state = lock(&ch.state);
        let (tx, lifecycle) = mpsc::unbounded_channel();
        let cursor = Arc::new(Cursor::new(ch.pacer.head()));
        state.subscribers.push(Subscriber {
            lifecycle: tx,
            cursor: cursor.clone(),
            left_behind: false,
            watched: None,
        });
        Subscription::broadcast(BroadcastSubscription {
            pacer: ch.pacer.clone(),
            cursor,
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
            prepaid: 0,
            paid: 0,
            released: false,
        })
    }

    fn output_pause(&self) -> Option<Pause> {
        let Backpressure::WhileProgressing { stall } = self.backpressure else {
            return None;
        };
        // No channels yet: nobody ever subscribed.
        let ch = self.channels.get()?;
        if !ch.should_pause() {
            return None;
        }
        Some(Pause::new(ch.clone().wait_for_subscribers(stall)))
    }
}

/// The subscription side of [`BroadcastEventBus`]: merges lifecycle events and output batches
/// back into publication order and yields output line by line.
pub(crate) struct BroadcastSubscription {
    pacer: Arc<Pacer>,
    /// Where it is, for the bus's readers.
    cursor: Arc<Cursor>,
    lifecycle: mpsc::UnboundedReceiver<Queued>,
    lifecycle_open: bool,
    output: broadcast::Receiver<Arc<Sequenced>>,
    output_open: bool,
    /// The global index of the next output line this subscriber expects.
    next_line: u64,
    /// The batch being yielded, and where its next line starts.
    current: Option<(Arc<Sequenced>, usize)>,
    /// A lifecycle event received but not yet yielded (output published before it goes first).
    pending: Option<Queued>,
    /// Output lines missed just before `current`, not yet reported (the lines up to
    /// `current`'s first). Reported where they were missed: those published before a lifecycle
    /// event yielded ahead of `current` just before that event, the rest just before
    /// `current`'s lines.
    missed: u64,
    /// Whether the lifecycle queue was found empty since `current` was taken: then every
    /// lifecycle event published before `current` has been yielded, and its lines go before
    /// whatever the queue gets next. (A lifecycle event taken from the queue does not settle
    /// it: the one behind it may go before `current` too.)
    lifecycle_checked: bool,
    /// Whether the next event is simply the next line of `current` (when it has one): set once
    /// `recv` has settled that nothing goes before that batch's lines, cleared whenever
    /// `current` or `pending` changes. Lets [`next_ready`](Self::next_ready) skip the merge.
    streaming: bool,
    /// Events still covered by the last unit of cooperative budget charged.
    prepaid: u32,
    /// Units of budget charged so far (published in the cursor as progress).
    paid: u64,
    /// Whether taking the last batch woke readers that waited for this subscription: its next
    /// receive yields its worker once (see [`take_released`](Self::take_released)).
    released: bool,
}

impl BroadcastSubscription {
    /// Takes an output batch into `current`, counting the lines missed before it.
    fn accept(&mut self, batch: Arc<Sequenced>) {
        self.released |= self.pacer.took(&self.cursor, batch.index, batch.end);
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

    /// [`next_ready`](Self::next_ready), while the last unit of cooperative budget still
    /// covers the event: `None` when it does not (then `recv` charges another unit and calls
    /// [`paid_for_more`](Self::paid_for_more)).
    #[inline(always)]
    pub(crate) fn next_prepaid(&mut self) -> Option<ProcessEvent> {
        if self.prepaid == 0 {
            return None;
        }
        let event = self.next_ready()?;
        self.prepaid -= 1;
        Some(event)
    }

    /// Whether readers woken by this subscription are waiting to run; clears the mark.
    ///
    /// A woken task goes to the slot of the waking worker that runs next, but only once the
    /// waker yields: a subscriber with a backlog (the readers are woken when it is half the
    /// window behind) would keep its worker for a whole budget, and the reader would read on
    /// the subscriber's thread, serialised with it, while the other worker sleeps. Yielding
    /// once per release lets the reader run at once and the other worker take the subscriber.
    pub(crate) fn take_released(&mut self) -> bool {
        std::mem::take(&mut self.released)
    }

    /// One more unit of budget was charged and one event yielded for it: the next
    /// `EVENTS_PER_BUDGET_UNIT - 1` come without a charge.
    #[inline(always)]
    pub(crate) fn paid_for_more(&mut self) {
        self.prepaid = EVENTS_PER_BUDGET_UNIT - 1;
        // Progress the bus can see while this works through a long batch.
        self.paid = self.paid.wrapping_add(1);
        self.cursor.events.store(self.paid, Ordering::Relaxed);
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
            // lifecycle queue is looked at per batch taken, not per line: looked at after the
            // batch arrived, it holds every lifecycle event that must go first, and it is
            // looked at again after each of those is yielded, until it is found empty (or
            // its head goes after the batch).
            if self.pending.is_none()
                && self.lifecycle_open
                && !(self.current.is_some() && self.lifecycle_checked)
            {
                match self.lifecycle.try_recv() {
                    // Not settled yet: once this event is yielded (if it goes before the
                    // batch), the next one may go before the batch too.
                    Ok(item) => self.hold(item),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.lifecycle_checked = self.current.is_some();
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => self.lifecycle_open = false,
                }
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
                (Some((batch, _)), Some(held)) => batch.seq < held.seq,
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
            } else if let Some(held) = self.pending.take() {
                // Of the lines missed just before `current` (they end where it starts), those
                // published before this event are reported before it.
                if self.missed > 0
                    && let Some((batch, _)) = &self.current
                {
                    let missed_from = batch.first_line.saturating_sub(self.missed);
                    let before = held.lines_before.saturating_sub(missed_from);
                    let before = before.min(self.missed);
                    if before > 0 {
                        self.missed -= before;
                        self.pending = Some(held);
                        return Some(Err(RecvError::Lagged(before)));
                    }
                }
                return Some(Ok(held.event));
            }
        }
    }

    /// Holds a lifecycle event until the output published before it has been yielded.
    fn hold(&mut self, item: Queued) {
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

impl Drop for BroadcastSubscription {
    fn drop(&mut self) {
        // Behind by nothing from now on, and closed, so readers woken now no longer wait for
        // it. SeqCst, paired with the readers' count: either this sees a reader waiting and
        // wakes it, or that reader's next look sees this cursor.
        self.cursor.close();
        self.lifecycle.close();
        if self.pacer.waiting.load(Ordering::SeqCst) > 0 {
            self.pacer.caught_up.notify_waiters();
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

    /// A batch of `bytes` on the stdout of process `id`.
    fn stdout(id: &str, bytes: impl Into<Vec<u8>>) -> OutputBatch {
        OutputBatch::new(id.into(), Stream::Stdout, bytes.into())
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
        bus.publish_output(stdout("p", b"a\nb\n"));
        bus.publish_output(stdout("p", b"c\n"));
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
    async fn lifecycle_events_held_back_one_at_a_time_all_go_before_later_output() {
        // Issue 11: the queue was looked at once per batch, so the third `Started` (published
        // before the batch) came out after its line.
        let bus = BroadcastEventBus::new(16);
        let mut sub = bus.subscribe();
        for id in ["p1", "p2", "p3"] {
            bus.publish(started(id));
        }
        bus.publish_output(stdout("p3", b"hello\n"));
        drop(bus);
        let mut got = Vec::new();
        while let Ok(ev) = sub.recv().await {
            got.push(match &ev {
                ProcessEvent::Started { id, .. } => format!("Started {id}"),
                ProcessEvent::Output { id, line, .. } => format!("Output {id} {line}"),
                other => format!("{other:?}"),
            });
        }
        assert_eq!(
            got,
            ["Started p1", "Started p2", "Started p3", "Output p3 hello"]
        );
    }

    #[tokio::test]
    async fn lagging_subscriber_misses_only_output_and_learns_how_much() {
        let bus = BroadcastEventBus::new(2);
        let mut sub = bus.subscribe();
        bus.publish(started("p"));
        for i in 0..10 {
            let data = format!("{i}a\n{i}b\n").into_bytes();
            bus.publish_output(stdout("p", data));
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
    async fn missed_output_is_reported_before_the_lifecycle_events_published_after_it() {
        // One batch held: "a" is missed. It was published before `Exited p`, so a subscriber
        // must learn of it before `Exited p`, not after (when p would look complete).
        let bus = BroadcastEventBus::new(1).with_backpressure(Backpressure::Never);
        let mut sub = bus.subscribe();
        bus.publish(started("p"));
        bus.publish_output(stdout("p", b"a\n"));
        bus.publish(exited("p"));
        bus.publish(started("q"));
        bus.publish_output(stdout("q", b"b\n"));
        drop(bus);
        let mut got = Vec::new();
        loop {
            got.push(match sub.recv().await {
                Ok(ProcessEvent::Output { id, line, .. }) => format!("Output {id} {line}"),
                Ok(ev) if ev.is_lifecycle() => format!("{} {}", ev_name(&ev), ev.id()),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(RecvError::Lagged(n)) => format!("Lagged {n}"),
                Err(RecvError::Closed) => break,
            });
        }
        assert_eq!(
            got,
            [
                "Started p",
                "Lagged 1",
                "Exited p",
                "Started q",
                "Output q b"
            ]
        );
    }

    fn ev_name(ev: &ProcessEvent) -> &'static str {
        match ev {
            ProcessEvent::Started { .. } => "Started",
            ProcessEvent::Output { .. } => "Output",
            ProcessEvent::Killed { .. } => "Killed",
            ProcessEvent::Exited { .. } => "Exited",
            _ => "Supervision",
        }
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
        bus.publish_output(stdout("early", b"x\n"));
        let mut sub = bus.subscribe();
        bus.publish_output(stdout("late", b"y\n"));
        let ev = sub.recv().await.unwrap();
        assert_eq!((ev.id(), line(&ev)), ("late", "y"));
        assert_eq!(bus.subscriber_count(), 1);
        drop(sub);
        assert_eq!(bus.subscriber_count(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_subscriber_with_events_always_ready_lets_other_tasks_run() {
        // One thread, a batch of 20,000 lines already published: without cooperative yields
        // the loop below would take every line before the spawned task ever ran.
        let ran_after = lines_before_another_task_runs().await;
        // tokio gives a task 128 units of budget a turn.
        let most = 128 * EVENTS_PER_BUDGET_UNIT as usize;
        assert!(ran_after <= most, "it ran only after {ran_after} lines");
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
        bus.publish_output(stdout("p", b"a\nb\n"));
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
            b.publish_output(stdout("p", b"later\n"));
            b.publish(exited("p"));
        });
        assert_eq!(line(&sub.recv().await.unwrap()), "later");
        assert!(matches!(
            sub.recv().await.unwrap(),
            ProcessEvent::Exited { .. }
        ));
        publisher.await.unwrap();
    }

    /// Publishes `n` one-line batches.
    fn publish_batches(bus: &BroadcastEventBus, n: usize) {
        for i in 0..n {
            bus.publish_output(stdout("p", format!("{i}\n")));
        }
    }

    /// Takes `n` output events (one per one-line batch).
    async fn take(sub: &mut Subscription, n: usize) {
        for _ in 0..n {
            assert!(matches!(sub.recv().await, Ok(ProcessEvent::Output { .. })));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readers_wait_for_a_subscriber_that_keeps_reading() {
        // Capacity 8: readers pause for a subscriber more than 4 batches behind, until it is
        // back within 2.
        let bus = BroadcastEventBus::new(8);
        let mut sub = bus.subscribe();
        publish_batches(&bus, 4);
        assert!(bus.output_pause().is_none(), "4 behind is within half");
        publish_batches(&bus, 1);
        let mut pause = bus.output_pause().expect("5 behind: readers pause");
        assert!(futures_poll_once(&mut pause).await.is_none());
        take(&mut sub, 2).await;
        assert!(
            futures_poll_once(&mut pause).await.is_none(),
            "3 behind is not yet within a quarter"
        );
        take(&mut sub, 1).await;
        assert!(
            futures_poll_once(&mut pause).await.is_some(),
            "2 behind: the subscriber's receive wakes the reader"
        );
        assert!(bus.output_pause().is_none());
    }

    /// A batch of `lines` lines of `len` bytes each (newline included).
    fn big_batch(lines: usize, len: usize) -> OutputBatch {
        let line: Vec<u8> = std::iter::repeat_n(b'x', len - 1).chain([b'\n']).collect();
        stdout("p", line.repeat(lines))
    }

    #[tokio::test(start_paused = true)]
    async fn readers_wait_for_a_subscriber_more_than_the_window_of_bytes_behind() {
        // Few batches but many bytes: the window (100 bytes) decides, not the capacity.
        let bus = BroadcastEventBus::new(1024).with_window(100);
        let mut sub = bus.subscribe();
        bus.publish_output(big_batch(2, 30)); // 60 bytes behind
        assert!(
            bus.output_pause().is_none(),
            "60 bytes is within the window"
        );
        bus.publish_output(big_batch(2, 30)); // 120
        let mut pause = bus.output_pause().expect("120 bytes behind: readers pause");
        assert!(futures_poll_once(&mut pause).await.is_none());
        // The first batch taken (its first line yielded): 60 behind, not yet within half.
        take(&mut sub, 1).await;
        assert!(futures_poll_once(&mut pause).await.is_none(), "60 > 50");
        take(&mut sub, 2).await; // the second batch taken: 0 behind
        assert!(
            futures_poll_once(&mut pause).await.is_some(),
            "within half the window: the subscriber's receive wakes the reader"
        );
        assert!(bus.output_pause().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_that_releases_readers_yields_once_before_going_on() {
        let bus = BroadcastEventBus::new(1024).with_window(100);
        let mut sub = bus.subscribe();
        bus.publish_output(big_batch(2, 30));
        bus.publish_output(big_batch(2, 30)); // 120 bytes behind
        let mut pause = bus.output_pause().expect("readers pause");
        assert!(futures_poll_once(&mut pause).await.is_none());
        // The first batch, then the first line of the second: taking it releases the reader.
        take(&mut sub, 3).await;
        assert!(futures_poll_once(&mut pause).await.is_some());
        bus.publish_output(big_batch(1, 30));
        // Two lines are ready (the second batch's last, the third's only): on the way to them
        // the subscriber gives its worker up exactly once, so the reader it woke runs first.
        let (mut lines, mut yields) = (0, 0);
        for _ in 0..10 {
            if lines == 2 {
                break;
            }
            match futures_poll_once(sub.recv()).await {
                Some(event) => {
                    assert!(
                        matches!(event, Ok(ProcessEvent::Output { .. })),
                        "{event:?}"
                    );
                    lines += 1;
                }
                None => yields += 1,
            }
        }
        assert_eq!((lines, yields), (2, 1));
        // Nothing released since: no more yields.
        bus.publish_output(big_batch(1, 30));
        assert!(futures_poll_once(sub.recv()).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_the_window_behind_does_not_pause_and_a_finished_pause_counts_no_reader() {
        let bus = BroadcastEventBus::new(1024).with_window(120);
        let mut sub = bus.subscribe();
        bus.publish_output(big_batch(2, 30));
        bus.publish_output(big_batch(2, 30)); // exactly 120 bytes behind
        assert!(
            bus.output_pause().is_none(),
            "the window itself is not beyond it"
        );
        bus.publish_output(big_batch(1, 30)); // 150
        let mut pause = bus
            .output_pause()
            .expect("beyond the window: readers pause");
        assert!(futures_poll_once(&mut pause).await.is_none());
        let pacer = bus.channels().pacer.clone();
        assert_eq!(pacer.waiting.load(Ordering::SeqCst), 1, "one reader waits");
        take(&mut sub, 5).await;
        assert!(futures_poll_once(&mut pause).await.is_some());
        drop(pause);
        assert_eq!(
            pacer.waiting.load(Ordering::SeqCst),
            0,
            "a finished pause no longer counts as a waiting reader"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_holds_for_a_subscriber_that_joins_late_and_one_left_behind() {
        let bus = BroadcastEventBus::new(1024)
            .with_window(100)
            .with_backpressure(Backpressure::WhileProgressing {
                stall: Duration::from_millis(10),
            });
        bus.publish_output(big_batch(10, 30)); // before anyone listens: counts for nobody
        let mut sub = bus.subscribe();
        assert!(
            bus.output_pause().is_none(),
            "a new subscriber is behind by nothing"
        );
        bus.publish_output(big_batch(4, 30)); // 120 bytes behind
        let pause = bus.output_pause().expect("pause for the new subscriber");
        // It stays silent past the stall: left behind, readers go on.
        pause.await;
        assert!(bus.output_pause().is_none(), "left behind");
        bus.publish_output(big_batch(4, 30));
        assert!(
            bus.output_pause().is_none(),
            "still left behind (240 bytes)"
        );
        // It reads everything: back within half the window, waited for again.
        take(&mut sub, 8).await;
        // The next reader's look lets it back in.
        assert!(
            bus.output_pause().is_none(),
            "caught up: nothing to wait for"
        );
        bus.publish_output(big_batch(4, 30));
        assert!(
            bus.output_pause().is_some(),
            "rejoined: 120 bytes behind pauses again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_subscriber_is_left_behind_after_the_stall_then_rejoins() {
        let stall = Duration::from_millis(100);
        let bus =
            BroadcastEventBus::new(8).with_backpressure(Backpressure::WhileProgressing { stall });
        let mut sub = bus.subscribe();
        publish_batches(&bus, 5);
        let started = tokio::time::Instant::now();
        bus.output_pause().expect("5 behind: readers pause").await;
        assert_eq!(
            started.elapsed(),
            stall,
            "the pause ends when the stall does"
        );
        // Left behind: no more pauses for it, and it misses output once the window is full.
        publish_batches(&bus, 5);
        assert!(bus.output_pause().is_none());
        assert_eq!(sub.recv().await, Err(RecvError::Lagged(2)));
        take(&mut sub, 8).await;
        // Caught up: the next check lets it back in, and readers wait for it again.
        assert!(bus.output_pause().is_none());
        publish_batches(&bus, 5);
        assert!(bus.output_pause().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_that_moves_is_waited_for_past_the_stall() {
        let stall = Duration::from_millis(100);
        let bus =
            BroadcastEventBus::new(64).with_backpressure(Backpressure::WhileProgressing { stall });
        let mut sub = bus.subscribe();
        publish_batches(&bus, 40);
        let mut pause = bus.output_pause().expect("40 behind: readers pause");
        // One batch every 60 ms: never silent for a whole stall, so never left behind.
        for _ in 0..24 {
            assert!(futures_poll_once(&mut pause).await.is_none());
            tokio::time::advance(Duration::from_millis(60)).await;
            take(&mut sub, 1).await;
        }
        assert!(futures_poll_once(&mut pause).await.is_some(), "16 behind");
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_working_through_a_long_batch_is_not_silent() {
        let stall = Duration::from_millis(100);
        let bus =
            BroadcastEventBus::new(8).with_backpressure(Backpressure::WhileProgressing { stall });
        let mut sub = bus.subscribe();
        for _ in 0..5 {
            bus.publish_output(stdout("p", "x\n".repeat(1_000)));
        }
        let mut pause = bus.output_pause().expect("5 behind: readers pause");
        // 16 lines every 60 ms: still in the first batch after a second, but never silent.
        for _ in 0..20 {
            take(&mut sub, 16).await;
            tokio::time::advance(Duration::from_millis(60)).await;
            assert!(futures_poll_once(&mut pause).await.is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readers_wait_for_the_slowest_subscriber_that_reads() {
        let bus = BroadcastEventBus::new(8);
        let mut fast = bus.subscribe();
        let mut slow = bus.subscribe();
        publish_batches(&bus, 6);
        let mut pause = bus.output_pause().expect("both 6 behind");
        take(&mut fast, 6).await;
        assert!(
            futures_poll_once(&mut pause).await.is_none(),
            "slow is 6 behind"
        );
        take(&mut slow, 4).await;
        assert!(futures_poll_once(&mut pause).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_subscriber_waited_for_releases_the_readers() {
        let bus = BroadcastEventBus::new(8).with_backpressure(Backpressure::WhileProgressing {
            stall: Duration::MAX,
        });
        let sub = bus.subscribe();
        publish_batches(&bus, 5);
        let mut pause = bus.output_pause().expect("5 behind");
        // A stall too long to represent: waited for however long it takes.
        tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
        assert!(futures_poll_once(&mut pause).await.is_none());
        drop(sub);
        assert!(futures_poll_once(&mut pause).await.is_some());
        assert!(bus.output_pause().is_none());
    }

    #[tokio::test]
    async fn never_means_readers_never_wait() {
        let bus = BroadcastEventBus::new(2).with_backpressure(Backpressure::Never);
        let mut sub = bus.subscribe();
        publish_batches(&bus, 10);
        assert!(bus.output_pause().is_none());
        assert_eq!(sub.recv().await, Err(RecvError::Lagged(8)));
    }

    #[test]
    fn no_subscriber_no_pause() {
        let bus = BroadcastEventBus::new(2);
        publish_batches(&bus, 10);
        assert!(bus.output_pause().is_none());
        let sub = bus.subscribe();
        publish_batches(&bus, 1);
        assert!(bus.output_pause().is_none(), "1 behind is within half of 2");
        drop(sub);
        publish_batches(&bus, 10);
        assert!(bus.output_pause().is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_unit_of_budget_pays_for_sixteen_events() {
        // The other side of the test above: the budget is charged once per
        // `EVENTS_PER_BUDGET_UNIT` events, not per event, so the other task runs only after
        // about 128 × 16 lines (charged per event, it ran after 128).
        let ran_after = lines_before_another_task_runs().await;
        let least = 64 * EVENTS_PER_BUDGET_UNIT as usize;
        assert!(
            ran_after >= least,
            "it ran after {ran_after} lines: budget charged more than once per unit of events"
        );
    }

    /// How many of 20,000 ready lines a subscriber receives before a task spawned beside it
    /// (on this one thread) gets to run.
    async fn lines_before_another_task_runs() -> usize {
        let bus = BroadcastEventBus::new(4);
        let mut sub = bus.subscribe();
        let lines = 20_000;
        bus.publish_output(stdout("p", "x\n".repeat(lines)));
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let other = tokio::spawn(async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut ran_after = None;
        for i in 0..lines {
            assert_eq!(line(&sub.recv().await.unwrap()), "x");
            if ran.load(std::sync::atomic::Ordering::SeqCst) {
                ran_after = Some(i);
                break;
            }
        }
        other.await.unwrap();
        ran_after.expect("the other task never ran while lines were ready")
    }

    #[test]
    fn debug_shows_the_capacity() {
        let shown = format!("{:?}", BroadcastEventBus::new(7));
        assert!(shown.starts_with("BroadcastEventBus"), "{shown}");
        assert!(shown.contains("capacity: 7"), "{shown}");
    }

    #[test]
    fn output_nobody_listens_to_is_counted_without_overflow() {
        // Lines published while nobody listens are only counted; a later subscriber starts
        // from that count and sees its own lines, with no lag. Counting must not overflow
        // however long nobody listens (a `*=` for the `+=` overflowed after 64 two-line
        // batches).
        let bus = BroadcastEventBus::new(4);
        let first = bus.subscribe();
        bus.publish_output(OutputBatch::new(
            "p".into(),
            Stream::Stdout,
            b"a\n".to_vec(),
        ));
        drop(first);
        for _ in 0..100 {
            bus.publish_output(OutputBatch::new(
                "p".into(),
                Stream::Stdout,
                b"b\nc\n".to_vec(),
            ));
        }
        let mut sub = bus.subscribe();
        bus.publish_output(OutputBatch::new(
            "p".into(),
            Stream::Stdout,
            b"d\n".to_vec(),
        ));
        assert_eq!(line(&sub.try_recv().unwrap().unwrap()), "d");
        assert!(sub.try_recv().is_none());
    }

    /// The merge, randomised: processes' lifecycle events and output batches interleaved at
    /// random, subscribers (from the start and joining later) reading in random bursts with
    /// random pauses between, on lossless and lossy buses.
    mod merge_order {
        use super::*;
        use proptest::prelude::*;

        /// One published event as the test names it: a lifecycle event or one output line.
        #[derive(Clone, Debug, PartialEq, Eq)]
        enum Seen {
            Started(usize),
            Output(String),
            Killed(usize),
            Exited(usize),
        }

        /// What a subscriber received.
        #[derive(Debug)]
        enum Got {
            Event(Seen),
            Lagged(u64),
        }

        /// What the publisher does next.
        #[derive(Clone, Debug)]
        enum Step {
            /// Publishes process `p`'s next event: `Started`, its batches in turn, `Killed`
            /// (if it is killed), `Exited`.
            Next(usize),
            /// Yields to the subscribers' tasks this many times.
            Pause(u8),
            /// A new subscriber, from here on.
            Subscribe,
        }

        /// A process: its batches (lines, and whether a one-line batch goes through
        /// `publish` as a lone `Output`), and whether it is killed.
        type Proc = (Vec<(u8, bool)>, bool);

        #[derive(Debug)]
        struct Case {
            procs: Vec<Proc>,
            steps: Vec<Step>,
            /// Subscribers from the start.
            initial: usize,
            /// Per subscriber, in order of subscribing: bursts of (events to read, yields).
            scripts: Vec<Vec<(u8, u8)>>,
            /// `Some(capacity)`: a small bus that never waits, so subscribers miss output.
            lossy: Option<usize>,
        }

        fn case() -> impl Strategy<Value = Case> {
            let procs = prop::collection::vec(
                (
                    prop::collection::vec((0u8..=4, any::<bool>()), 0..=5),
                    any::<bool>(),
                ),
                1..=6,
            );
            let scripts =
                prop::collection::vec(prop::collection::vec((1u8..=8, 0u8..=3), 1..=4), 5);
            let lossy = prop_oneof![Just(None), (1usize..=4).prop_map(Some)];
            (
                procs,
                prop::collection::vec(1u8..=3, 0..=12),
                0usize..=2,
                1usize..=3,
                scripts,
                lossy,
            )
                .prop_flat_map(|(procs, pauses, late, initial, scripts, lossy)| {
                    let mut steps = Vec::new();
                    for (p, (batches, killed)) in procs.iter().enumerate() {
                        let events = 2 + batches.len() + usize::from(*killed);
                        steps.extend(std::iter::repeat_n(Step::Next(p), events));
                    }
                    steps.extend(pauses.into_iter().map(Step::Pause));
                    steps.extend(std::iter::repeat_n(Step::Subscribe, late));
                    (
                        Just(procs),
                        Just(steps).prop_shuffle(),
                        Just(initial),
                        Just(scripts),
                        Just(lossy),
                    )
                })
                .prop_map(|(procs, steps, initial, scripts, lossy)| Case {
                    procs,
                    steps,
                    initial,
                    scripts,
                    lossy,
                })
        }

        fn proc_of(id: &str) -> usize {
            id.trim_start_matches('p').parse().unwrap()
        }

        fn seen(ev: &ProcessEvent) -> Seen {
            match ev {
                ProcessEvent::Started { id, .. } => Seen::Started(proc_of(id)),
                ProcessEvent::Output { line, .. } => Seen::Output(line.to_string()),
                ProcessEvent::Killed { id, .. } => Seen::Killed(proc_of(id)),
                ProcessEvent::Exited { id, .. } => Seen::Exited(proc_of(id)),
                other => unreachable!("only process events are published here: {other:?}"),
            }
        }

        /// Reads until the bus is closed, in the bursts `script` gives (cycling through it).
        async fn read(mut sub: Subscription, script: Vec<(u8, u8)>) -> Vec<Got> {
            let mut got = Vec::new();
            for &(reads, pauses) in script.iter().cycle() {
                for _ in 0..reads {
                    match sub.recv().await {
                        Ok(ev) => got.push(Got::Event(seen(&ev))),
                        Err(RecvError::Lagged(n)) => got.push(Got::Lagged(n)),
                        Err(RecvError::Closed) => return got,
                    }
                }
                for _ in 0..pauses {
                    tokio::task::yield_now().await;
                }
            }
            unreachable!("the script cycles for ever")
        }

        /// Publishes the events of `case` as its steps say; returns what was published and,
        /// per subscriber, where in it it joined and what it received.
        fn run(case: &Case) -> (Vec<Seen>, Vec<(usize, Vec<Got>)>) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let bus = match case.lossy {
                    Some(capacity) => {
                        BroadcastEventBus::new(capacity).with_backpressure(Backpressure::Never)
                    }
                    // More than the most batches a case publishes (6 × 5).
                    None => BroadcastEventBus::new(64),
                };
                let mut scripts = case.scripts.iter().cloned();
                let mut readers = Vec::new();
                let mut published = Vec::new();
                for _ in 0..case.initial {
                    let script = scripts.next().unwrap();
                    readers.push((0, tokio::spawn(read(bus.subscribe(), script))));
                }
                let mut next = vec![0; case.procs.len()];
                for step in &case.steps {
                    match *step {
                        Step::Next(p) => {
                            let (batches, killed) = &case.procs[p];
                            let id = format!("p{p}");
                            let k = next[p];
                            next[p] += 1;
                            if k == 0 {
                                bus.publish(started(&id));
                                published.push(Seen::Started(p));
                            } else if let Some(&(lines, lone)) = batches.get(k - 1) {
                                let lines: Vec<String> =
                                    (0..lines).map(|l| format!("{p}.{k}.{l}")).collect();
                                if lone && lines.len() == 1 {
                                    bus.publish(ProcessEvent::Output {
                                        id: id.as_str().into(),
                                        line: lines[0].as_str().into(),
                                        stream: Stream::Stderr,
                                    });
                                } else {
                                    let text: String =
                                        lines.iter().map(|l| format!("{l}\n")).collect();
                                    bus.publish_output(OutputBatch::new(
                                        id.as_str().into(),
                                        Stream::Stdout,
                                        text.into_bytes(),
                                    ));
                                }
                                published.extend(lines.into_iter().map(Seen::Output));
                            } else if *killed && k == batches.len() + 1 {
                                bus.publish(ProcessEvent::Killed {
                                    id: id.as_str().into(),
                                    signal: Signal::Kill,
                                    timed_out: false,
                                });
                                published.push(Seen::Killed(p));
                            } else {
                                bus.publish(exited(&id));
                                published.push(Seen::Exited(p));
                            }
                        }
                        Step::Pause(n) => {
                            for _ in 0..n {
                                tokio::task::yield_now().await;
                            }
                        }
                        Step::Subscribe => {
                            let script = scripts.next().unwrap();
                            let start = published.len();
                            readers.push((start, tokio::spawn(read(bus.subscribe(), script))));
                        }
                    }
                }
                drop(bus);
                let mut received = Vec::new();
                for (start, reader) in readers {
                    received.push((start, reader.await.unwrap()));
                }
                (published, received)
            })
        }

        /// `got` is what was published from `start` on, in that order, less output lines only,
        /// each run of missed lines reported, exactly, where it was missed: just before the
        /// next event received.
        fn check(
            published: &[Seen],
            start: usize,
            got: &[Got],
            lossless: bool,
        ) -> Result<(), TestCaseError> {
            let expected = &published[start..];
            let mut at = 0;
            let (mut missed, mut reported) = (0u64, 0u64);
            for (i, item) in got.iter().enumerate() {
                match item {
                    Got::Lagged(n) => {
                        prop_assert!(!lossless, "a lossless bus reported a lag at {i}");
                        prop_assert!(*n > 0);
                        reported += n;
                        prop_assert!(
                            matches!(got.get(i + 1), Some(Got::Event(_))),
                            "a lag report at {i} is not followed by an event: {got:?}"
                        );
                    }
                    Got::Event(event) => {
                        loop {
                            let Some(next) = expected.get(at) else {
                                return Err(TestCaseError::fail(format!(
                                    "{event:?} (received at {i}) out of publication order; \
                                     published {expected:?}, received {got:?}"
                                )));
                            };
                            at += 1;
                            if next == event {
                                break;
                            }
                            prop_assert!(
                                matches!(next, Seen::Output(_)),
                                "{next:?} missed or out of order; published {expected:?}, \
                                 received {got:?}"
                            );
                            prop_assert!(!lossless, "{next:?} missed on a lossless bus");
                            missed += 1;
                        }
                        prop_assert_eq!(
                            reported,
                            missed,
                            "lines missed just before {:?} vs reported; received {:?}",
                            event,
                            got
                        );
                        (missed, reported) = (0, 0);
                    }
                }
            }
            prop_assert_eq!(at, expected.len(), "the end of the events never came");
            prop_assert_eq!(reported, 0);
            if start == 0 {
                // Per process: `Started` first, `Exited` last.
                let mut first = std::collections::HashMap::new();
                let mut last = std::collections::HashMap::new();
                for item in got {
                    if let Got::Event(event) = item {
                        let p = match event {
                            Seen::Started(p) | Seen::Killed(p) | Seen::Exited(p) => *p,
                            Seen::Output(line) => line.split('.').next().unwrap().parse().unwrap(),
                        };
                        first.entry(p).or_insert_with(|| event.clone());
                        last.insert(p, event.clone());
                    }
                }
                for (p, event) in first {
                    prop_assert_eq!(event, Seen::Started(p));
                }
                for (p, event) in last {
                    prop_assert_eq!(event, Seen::Exited(p));
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn every_subscriber_sees_publication_order(case in case()) {
                let (published, received) = run(&case);
                for (start, got) in &received {
                    check(&published, *start, got, case.lossy.is_none())?;
                }
            }
        }
    }
}

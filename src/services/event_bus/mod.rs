//! [`EventBus`]: how process events reach subscribers; [`BroadcastEventBus`], the default; and
//! [`Subscription`], what a subscriber reads from.
//!
//! - `mod.rs`: the [`EventBus`] trait, [`Pause`] and [`Backpressure`].
//! - `subscription.rs`: [`Subscription`], [`RecvError`], [`EventSource`] (for custom buses).
//! - `broadcast.rs`: [`BroadcastEventBus`] and its subscription side.
//! - `pacer.rs`: what readers and subscriptions share for backpressure.

mod broadcast;
mod pacer;
mod subscription;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use shaku::Interface;

use crate::event::{OutputBatch, ProcessEvent};

pub use broadcast::{BroadcastEventBus, BroadcastEventBusParameters};
pub use subscription::{EventSource, RecvError, Subscription};

/// Delivers process events to subscribers. Inject your own to forward events to your host's
/// bus; the process service publishes to whatever `dyn EventBus` the module holds.
///
/// Contract for implementations: `publish` and `publish_output` never block (they run on the
/// task that drains a child's pipe); lifecycle events (`Started`, `Exited`, `Killed`) are never
/// dropped; `Output` events may be dropped for a subscriber that falls behind, which then
/// learns how many it missed. A bus that wants the readers to wait for slow subscribers says so
/// through [`output_pause`](EventBus::output_pause), which must bound the wait.
///
/// A bus that wraps another should forward `output_pause` too, or the inner bus's
/// [`Backpressure`] is lost:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use core_process::services::event_bus::Pause;
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
///     fn output_pause(&self) -> Option<Pause> {
///         self.inner.output_pause()
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

    /// A subscription to the events of the processes in `ids` only (see
    /// [`Subscription::only`]).
    fn subscribe_to(&self, ids: &[&str]) -> Subscription {
        self.subscribe().only(ids.iter().map(|id| id.to_string()))
    }

    /// Asked by the reader of a child's pipes after every read it published: `None` to read
    /// on, or a [`Pause`] to wait for before reading that child's pipes again. While it waits
    /// the reader still handles signals, kills, timeouts and the child's exit; the child, once
    /// its pipe is full, blocks in `write` as it would behind any slow reader. After the exit,
    /// while the reader drains what is left in the pipes, the time spent in pauses does not
    /// count against [`DRAIN_TIMEOUT`](crate::services::process::DRAIN_TIMEOUT), but a pause longer
    /// than that ends the pacing for the rest of the drain, so the process can end.
    ///
    /// The default is `None`: the bus never slows a child down. [`BroadcastEventBus`] pauses
    /// for a subscriber that falls behind while it keeps reading (see [`Backpressure`]). An
    /// implementation that pauses must bound the wait, so that a subscriber that stopped
    /// reading cannot stall the children for ever.
    fn output_pause(&self) -> Option<Pause> {
        None
    }
}

/// A wait that [`EventBus::output_pause`] asks the reader of a child's pipes to sit out before
/// its next read. Awaiting it finishes when the bus's subscribers have caught up (or the bus
/// gave up on them).
///
/// ```
/// use std::time::Duration;
/// use core_process::services::event_bus::Pause;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pause = Pause::new(tokio::time::sleep(Duration::from_millis(1)));
/// pause.await;
/// # }
/// ```
#[must_use = "a pause does nothing unless awaited"]
pub struct Pause {
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Pause {
    /// A pause that lasts until `wait` completes.
    pub fn new(wait: impl Future<Output = ()> + Send + 'static) -> Self {
        Pause {
            wait: Box::pin(wait),
        }
    }
}

impl Future for Pause {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.wait.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pause").finish_non_exhaustive()
    }
}

/// How long a subscriber may receive nothing (no new batch, not 16 more events), while readers
/// wait for it, before [`Backpressure::WhileProgressing`] stops waiting for it (the default
/// `stall`).
pub const DEFAULT_STALL: Duration = Duration::from_millis(100);

/// Whether [`BroadcastEventBus`] makes the readers of child pipes wait for a subscriber that
/// falls behind, or lets that subscriber miss output.
///
/// ```
/// use std::time::Duration;
/// use core_process::{Backpressure, BroadcastEventBus};
///
/// // Never slow a child down: a subscriber that falls `capacity` batches behind misses output.
/// let lossy = BroadcastEventBus::new(1024).with_backpressure(Backpressure::Never);
/// // Wait for a subscriber that keeps reading, but give up on one silent for 20 ms.
/// let patient = BroadcastEventBus::new(1024)
///     .with_backpressure(Backpressure::WhileProgressing { stall: Duration::from_millis(20) });
/// # let _ = (lossy, patient);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backpressure {
    /// Readers never wait: a subscriber that falls more than the bus's capacity behind misses
    /// output and is told how many lines it missed.
    Never,
    /// The default. When a subscriber is more than half the bus's capacity, or more than its
    /// window of bytes ([`DEFAULT_BUS_WINDOW`]), behind, the readers of every child publishing
    /// on the bus wait until it is back within a quarter of the capacity and half the window,
    /// so a subscriber that keeps receiving misses nothing: the children slow down instead, as
    /// they would behind a slow pipe reader.
    ///
    /// A subscriber that receives nothing for `stall` while the readers wait for it (it counts
    /// as receiving once per 16 events) is left behind: the readers go on without it, and it
    /// misses output once it is the whole capacity behind, until it is back within a quarter.
    /// So a subscriber that stopped reading costs the children one wait of between `stall`
    /// and twice that, not one per read.
    WhileProgressing {
        /// How long a subscriber that is waited for may receive nothing before it is left
        /// behind ([`DEFAULT_STALL`] by default). A stall too long to represent as an instant
        /// (`Duration::MAX`) never ends: readers then wait for a silent subscriber until it
        /// reads or is dropped, and a child's timeout or kill is the only other way out (its
        /// supervisor then waits at most [`DRAIN_TIMEOUT`](crate::services::process::DRAIN_TIMEOUT)
        /// more for the subscriber before it drains the pipes without pacing).
        stall: Duration,
    },
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure::WhileProgressing {
            stall: DEFAULT_STALL,
        }
    }
}

/// How many output batches (one per pipe read, up to 64 KiB each) [`BroadcastEventBus`] holds
/// for slow subscribers before they start missing output.
///
/// A batch is as large as the read that made it: a chatty process writing a line at a time makes
/// batches of one line, a bulk producer makes 64 KiB ones. Held batches are freed as soon as every
/// subscriber has read them, so the memory in use is bounded by `capacity × 64 KiB` (64 MiB) only
/// while a subscriber lags behind a bulk producer without backpressure; with the default
/// [`Backpressure`], a subscriber that keeps reading makes the bus hold at most its window
/// ([`DEFAULT_BUS_WINDOW`]).
pub const DEFAULT_BUS_CAPACITY: usize = 1024;

/// How many bytes of output (2 MiB) the readers of [`BroadcastEventBus`] may run ahead of a
/// subscriber they wait for, by default (see [`BroadcastEventBus::with_window`]).
///
/// With [`Backpressure::WhileProgressing`] the readers pause once a subscriber is more than
/// this far behind and go on once it is back within half of it. Each busy reader publishes at
/// most one more read (up to 64 KiB) after the point where the bus pauses, so the output held
/// for a subscriber that keeps reading is about `window + busy processes × 64 KiB`: 2 MiB for
/// one bulk producer, about 5 MiB for 50 at once. That is on top of each process's own ring
/// buffer ([`DEFAULT_BUFFER_SIZE`](crate::services::process::DEFAULT_BUFFER_SIZE)), and it
/// does not grow with the bus's capacity: the capacity (in batches) bounds the window only when
/// batches are small (`capacity / 2` batches of short reads). With [`Backpressure::Never`]
/// nobody waits and the bus holds up to `capacity` batches.
///
/// Measured (`cargo bench --bench capture`, `docs/performance.md`, 2 cores): the whole manager
/// peaks at about 7 MiB capturing one producer (ring buffer included), against 50–56 MiB when
/// pacing by batches alone (62–69 MiB before the window), and captures 1.11–1.14× (80-byte
/// lines) and 1.01–1.23× (9-byte lines) as fast as the crate did before it had a window. The
/// bound itself costs some throughput where the subscriber is the slower side, against pacing
/// by batches alone in the same code: about 0.78–0.91× with 80-byte lines, 0.97× with 9-byte
/// lines, and more when the machine is saturated (0.68–0.82× the code before the window at 80
/// bytes in the busiest minutes): a paused reader leaves the subscriber half the window of
/// slack, and wake-ups that take longer than that leave cores idle. A 3 MiB window did not
/// measure faster in a quiet period and peaked 1–2 MiB higher.
pub const DEFAULT_BUS_WINDOW: usize = 2 * 1024 * 1024;

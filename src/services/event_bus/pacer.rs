//! What the readers of child pipes and the subscriptions of a [`BroadcastEventBus`] share for
//! [`Backpressure`]: each subscription's [`Cursor`], and the [`Pacer`] that readers wait on.
//!
//! [`BroadcastEventBus`]: super::BroadcastEventBus
//! [`Backpressure`]: super::Backpressure

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Where a subscription is, written by it and read by the bus's readers.
pub(super) struct Cursor {
    /// The index of the next output batch it has not taken (`u64::MAX` once it is dropped,
    /// so it is behind by nothing).
    pub(super) batch: AtomicU64,
    /// Counts up every `EVENTS_PER_BUDGET_UNIT` events it yields: shows progress within a
    /// long batch, for a subscriber that works a while on each line.
    pub(super) events: AtomicU64,
}

impl Cursor {
    pub(super) fn progress(&self) -> Progress {
        (
            self.batch.load(Ordering::SeqCst),
            self.events.load(Ordering::Relaxed),
        )
    }
}

/// A subscription's [`Cursor`], read at one moment: (batch, events).
pub(super) type Progress = (u64, u64);

/// What readers and subscriptions share for [`Backpressure`].
pub(super) struct Pacer {
    /// Output batches sent so far: the index the next one gets.
    pub(super) sent: AtomicU64,
    /// Readers waiting in a pause.
    pub(super) waiting: AtomicUsize,
    /// Woken when a subscription catches up to `low`, or closes, while readers wait.
    pub(super) caught_up: Notify,
    /// Readers pause for a subscriber more than this many batches behind...
    pub(super) high: u64,
    /// ... until it is back within this many.
    pub(super) low: u64,
}

/// Counts a reader in [`Pacer::waiting`] while it waits (even if the wait is dropped).
pub(super) struct WaitingReader<'a>(pub(super) &'a Pacer);

impl Drop for WaitingReader<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pacer {
    /// Called by a subscription that took the batch with `index`: wakes waiting readers once
    /// it is within `low`.
    pub(super) fn took(&self, cursor: &Cursor, index: u64) {
        // SeqCst on both sides: either this sees the reader waiting, or the reader's check
        // (which follows its count) sees this cursor.
        cursor.batch.store(index + 1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0
            && self.sent.load(Ordering::SeqCst).saturating_sub(index + 1) <= self.low
        {
            self.caught_up.notify_waiters();
        }
    }
}

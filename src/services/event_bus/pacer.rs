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
    /// The bytes of output published up to the end of the last batch it took (`u64::MAX` once
    /// it is dropped). Stored before `batch`, so whoever sees a new `batch` sees these bytes.
    pub(super) bytes: AtomicU64,
    /// Counts up every `EVENTS_PER_BUDGET_UNIT` events it yields: shows progress within a
    /// long batch, for a subscriber that works a while on each line.
    pub(super) events: AtomicU64,
}

impl Cursor {
    /// A cursor at `at`: the next batch and the bytes published before it.
    pub(super) fn new(at: Lag) -> Self {
        Cursor {
            batch: AtomicU64::new(at.batches),
            bytes: AtomicU64::new(at.bytes),
            events: AtomicU64::new(0),
        }
    }

    /// Moves the cursor past a batch taken: `next` is the next batch's index, `bytes` the
    /// bytes published up to the end of the one taken.
    pub(super) fn take(&self, next: u64, bytes: u64) {
        self.bytes.store(bytes, Ordering::SeqCst);
        self.batch.store(next, Ordering::SeqCst);
    }

    /// Behind by nothing from now on (its subscription is gone).
    pub(super) fn close(&self) {
        self.take(u64::MAX, u64::MAX);
    }

    pub(super) fn progress(&self) -> Progress {
        (
            self.batch.load(Ordering::SeqCst),
            self.events.load(Ordering::Relaxed),
        )
    }
}

/// A subscription's [`Cursor`], read at one moment: (batch, events).
pub(super) type Progress = (u64, u64);

/// How far along the output a position is, or how far behind: batches and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lag {
    pub(super) batches: u64,
    pub(super) bytes: u64,
}

/// What readers and subscriptions share for [`Backpressure`].
pub(super) struct Pacer {
    /// Output batches sent so far: the index the next one gets.
    pub(super) sent: AtomicU64,
    /// Bytes of output sent so far (stored before `sent`).
    pub(super) sent_bytes: AtomicU64,
    /// Readers waiting in a pause.
    pub(super) waiting: AtomicUsize,
    /// Woken when a subscription catches up to `low`, or closes, while readers wait.
    pub(super) caught_up: Notify,
    /// Readers pause for a subscriber more than this many batches, or `high.bytes` bytes,
    /// behind...
    pub(super) high: Lag,
    /// ... until it is back within this many batches and bytes.
    pub(super) low: Lag,
}

/// Counts a reader in [`Pacer::waiting`] while it waits (even if the wait is dropped).
pub(super) struct WaitingReader<'a>(pub(super) &'a Pacer);

impl Drop for WaitingReader<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pacer {
    /// Where the output is now: the next batch's index and the bytes sent before it.
    pub(super) fn head(&self) -> Lag {
        // `sent` first: the bytes, stored before it, are at least as new.
        let batches = self.sent.load(Ordering::SeqCst);
        let bytes = self.sent_bytes.load(Ordering::SeqCst);
        Lag { batches, bytes }
    }

    /// Counts a batch of `len` bytes sent: returns its index and the bytes sent up to its end.
    /// Called by the bus under its lock (one sender at a time).
    pub(super) fn send(&self, len: usize) -> (u64, u64) {
        let index = self.sent.load(Ordering::Relaxed);
        let end = self.sent_bytes.load(Ordering::Relaxed) + len as u64;
        self.sent_bytes.store(end, Ordering::SeqCst);
        self.sent.store(index + 1, Ordering::SeqCst);
        (index, end)
    }

    /// How far `cursor` is behind the output sent so far.
    pub(super) fn lag(&self, cursor: &Cursor) -> Lag {
        // The cursor's batch first: its bytes, stored before it, are at least as new.
        let batch = cursor.batch.load(Ordering::SeqCst);
        let bytes = cursor.bytes.load(Ordering::SeqCst);
        let head = self.head();
        Lag {
            batches: head.batches.saturating_sub(batch),
            bytes: head.bytes.saturating_sub(bytes),
        }
    }

    /// Whether readers should pause for a subscriber this far behind.
    pub(super) fn above_high(&self, lag: Lag) -> bool {
        lag.batches > self.high.batches || lag.bytes > self.high.bytes
    }

    /// Whether a subscriber this far behind lets waiting readers go on.
    pub(super) fn within_low(&self, lag: Lag) -> bool {
        lag.batches <= self.low.batches && lag.bytes <= self.low.bytes
    }

    /// Called by a subscription that took the batch with `index`, which ends `bytes` into the
    /// output: wakes waiting readers once it is within `low`. Returns whether it woke them.
    pub(super) fn took(&self, cursor: &Cursor, index: u64, bytes: u64) -> bool {
        // SeqCst on both sides: either this sees the reader waiting, or the reader's check
        // (which follows its count) sees this cursor.
        cursor.take(index + 1, bytes);
        if self.waiting.load(Ordering::SeqCst) > 0 && self.within_low(self.lag(cursor)) {
            self.caught_up.notify_waiters();
            return true;
        }
        false
    }
}

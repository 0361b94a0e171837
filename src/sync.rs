//! Small helpers shared by the crate: poison-tolerant locking, sleeping until an optional
//! deadline, waiting on an optional cancellation token, a flag that can be waited for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use tokio_util::sync::CancellationToken;

/// Locks `m`, using the data as it is if a panic poisoned the lock: every value the crate keeps
/// behind a mutex is left consistent between statements, so losing the whole service to an
/// unrelated panic would be worse than reading it.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sleeps until `deadline`, or for ever when there is none.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Waits until `token` is cancelled, or for ever when there is none.
pub(crate) async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

/// A flag raised once and never lowered, which tasks can wait for: what a
/// [`CancellationToken`] offers without its tree of children (one allocation and a lock per
/// token, paid twice per spawn when a process handle used two).
#[derive(Debug, Default)]
pub(crate) struct Flag {
    raised: AtomicBool,
    notify: Notify,
}

impl Flag {
    /// Raises the flag and wakes every task waiting for it. Idempotent.
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether the flag is raised.
    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    /// Resolves once the flag is raised (at once if it is).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub(crate) async fn raised(&self) {
        if self.is_raised() {
            return;
        }
        // A `Notified` hears every `notify_waiters` made after it was created, polled or not:
        // created before the second look, it cannot miss a `raise` that look did not see.
        let notified = self.notify.notified();
        if self.is_raised() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_raised_flag_resolves_at_once_and_stays_raised() {
        let flag = Flag::default();
        assert!(!flag.is_raised());
        flag.raise();
        flag.raise();
        assert!(flag.is_raised());
        flag.raised().await;
        flag.raised().await;
    }

    #[test]
    fn every_waiter_wakes_whenever_the_flag_is_raised() {
        // Waiters and the raise race on a runtime with several threads: none may hang.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        for round in 0..500 {
            rt.block_on(async {
                let flag = Arc::new(Flag::default());
                let waiters: Vec<_> = (0..4)
                    .map(|_| {
                        let flag = flag.clone();
                        tokio::spawn(async move { flag.raised().await })
                    })
                    .collect();
                if round % 2 == 0 {
                    tokio::task::yield_now().await;
                }
                flag.raise();
                for w in waiters {
                    tokio::time::timeout(std::time::Duration::from_secs(10), w)
                        .await
                        .expect("a waiter missed the raise")
                        .unwrap();
                }
            });
        }
    }
}

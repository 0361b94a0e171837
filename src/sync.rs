//! Small helpers shared by the crate: poison-tolerant locking, sleeping until an optional
//! deadline, waiting on an optional cancellation token.

use std::sync::{Mutex, MutexGuard};

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

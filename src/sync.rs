//! Locking helper shared by the crate.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, using the data as it is if a panic poisoned the lock: every value the crate keeps
/// behind a mutex is left consistent between statements, so losing the whole service to an
/// unrelated panic would be worse than reading it.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

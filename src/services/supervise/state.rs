//! [`SupervisionState`], where a supervised process is, and [`LastExit`], how its last child
//! ended.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::Signal;

/// Where a supervised process is. See the state diagram in `docs/architecture.md`.
///
/// ```text
///            start
///              v
///   +----> Starting ---(spawn ok)---> Running{ready: false} --(probe)--> Running{ready: true}
///   |          |                          |                                  |
///   |          | spawn failed             +------ child ended / probe --------+
///   |          v                          v
///   +---- Backoff <--- (policy restarts, under the start limit)
///              |              (start limit reached) ----> Fatal --(restart)--> Starting
///              |              (policy says no) ---------> Stopped --(restart)--> Starting
///   stop(), shutdown: any state ---> Stopping ---> Stopped
/// ```
///
/// Serialises tagged by `"state"`:
///
/// ```
/// use core_process::SupervisionState;
/// assert_eq!(
///     serde_json::to_string(&SupervisionState::Running { ready: true }).unwrap(),
///     r#"{"state":"running","ready":true}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SupervisionState {
    /// A child is being spawned.
    Starting,
    /// A child runs; `ready` once its readiness probe passed.
    Running {
        /// Whether the readiness probe passed.
        ready: bool,
    },
    /// The last child ended; the next starts after `delay`.
    Backoff {
        /// The delay (serialised as fractional seconds).
        #[serde(with = "crate::types::secs_f64")]
        delay: Duration,
    },
    /// The child is being stopped (stop signal, then SIGKILL after its grace period).
    Stopping,
    /// No child runs and none will start until [`restart`](crate::SupervisedProcess::restart):
    /// stopped by hand or by shutdown, or the restart policy restarts no more.
    Stopped,
    /// Gave up after too many failed starts within the start-limit window; stays here until
    /// [`restart`](crate::SupervisedProcess::restart)ed by hand.
    Fatal {
        /// Why it gave up (the last failure).
        reason: String,
    },
}

impl SupervisionState {
    /// Whether no child runs nor will start on its own (`Stopped`, `Fatal`).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            SupervisionState::Stopped | SupervisionState::Fatal { .. }
        )
    }

    /// Whether a child runs and passed its readiness probe.
    pub fn is_ready(&self) -> bool {
        matches!(self, SupervisionState::Running { ready: true })
    }
}

impl fmt::Display for SupervisionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisionState::Starting => f.write_str("starting"),
            SupervisionState::Running { ready: true } => f.write_str("running (ready)"),
            SupervisionState::Running { ready: false } => f.write_str("running (not ready)"),
            SupervisionState::Backoff { delay } => write!(f, "backoff ({delay:?})"),
            SupervisionState::Stopping => f.write_str("stopping"),
            SupervisionState::Stopped => f.write_str("stopped"),
            SupervisionState::Fatal { reason } => write!(f, "fatal: {reason}"),
        }
    }
}

/// How the last child of a supervised process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    /// Which start it was.
    pub attempt: u32,
    /// Its exit code, when it exited on its own.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<Signal>,
    /// Why it ended, as the `Restarting` and `Fatal` events say.
    pub reason: String,
    /// How long it ran (serialised as fractional seconds).
    #[serde(with = "crate::types::secs_f64")]
    pub uptime: Duration,
}

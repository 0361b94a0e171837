//! [`SupervisePolicy`]: when a child is restarted ([`RestartPolicy`]), how long to wait first
//! ([`Backoff`]), and when to give up ([`StartLimit`]). The decisions are pure functions,
//! tested here; the driver only applies them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::probe::Probe;

/// When a supervised child that ended is started again.
///
/// ```
/// use core_process::RestartPolicy;
///
/// let policy = RestartPolicy::on_failure().success_codes([0, 2]).prevent_codes([78]);
/// assert!(!policy.restarts(Some(0)));
/// assert!(!policy.restarts(Some(2)));
/// assert!(!policy.restarts(Some(78)));
/// assert!(policy.restarts(Some(1)));
/// assert!(policy.restarts(None), "a signal is a failure");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartPolicy {
    /// Never (the child runs once; a probe failure stops it for good).
    Never,
    /// When it fails: exits with a code not in `success_codes`, or is ended by a signal. A code
    /// in `prevent_codes` never restarts (systemd's `RestartPreventExitStatus`).
    OnFailure {
        /// The exit codes that count as success (default `[0]`).
        success_codes: Vec<i32>,
        /// The exit codes that prevent a restart.
        prevent_codes: Vec<i32>,
    },
    /// Whatever the exit, except a code in `prevent_codes`.
    Always {
        /// The exit codes that prevent a restart.
        prevent_codes: Vec<i32>,
    },
}

impl Default for RestartPolicy {
    /// [`RestartPolicy::on_failure`].
    fn default() -> Self {
        RestartPolicy::on_failure()
    }
}

impl RestartPolicy {
    /// Restart on failure; code 0 is success; no code prevents a restart.
    pub fn on_failure() -> Self {
        RestartPolicy::OnFailure {
            success_codes: vec![0],
            prevent_codes: Vec::new(),
        }
    }

    /// Restart whatever the exit.
    pub fn always() -> Self {
        RestartPolicy::Always {
            prevent_codes: Vec::new(),
        }
    }

    /// Sets the codes that count as success (no effect on `Never` and `Always`).
    pub fn success_codes(mut self, codes: impl IntoIterator<Item = i32>) -> Self {
        if let RestartPolicy::OnFailure { success_codes, .. } = &mut self {
            *success_codes = codes.into_iter().collect();
        }
        self
    }

    /// Sets the codes that prevent a restart (no effect on `Never`).
    pub fn prevent_codes(mut self, codes: impl IntoIterator<Item = i32>) -> Self {
        if let RestartPolicy::OnFailure { prevent_codes, .. }
        | RestartPolicy::Always { prevent_codes } = &mut self
        {
            *prevent_codes = codes.into_iter().collect();
        }
        self
    }

    /// Whether a child that ended with `exit_code` (`None`: a signal ended it, or it could not
    /// be waited for) is restarted.
    pub fn restarts(&self, exit_code: Option<i32>) -> bool {
        match self {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure {
                success_codes,
                prevent_codes,
            } => match exit_code {
                Some(code) => !success_codes.contains(&code) && !prevent_codes.contains(&code),
                None => true,
            },
            RestartPolicy::Always { prevent_codes } => {
                exit_code.is_none_or(|code| !prevent_codes.contains(&code))
            }
        }
    }

    /// Whether a child that was stopped on purpose (a failed liveness probe, its memory limit)
    /// is started again: always, except under [`RestartPolicy::Never`].
    pub fn restarts_forced(&self) -> bool {
        !matches!(self, RestartPolicy::Never)
    }
}

/// The delay before a restart: `initial × factor^n` for the n-th consecutive restart (n from
/// 0), capped at `max`, then shortened by up to `jitter` (a fraction in 0..=1) at random. A
/// `factor` of 1 is a fixed delay. The count starts again once a child stayed up for
/// [`SupervisePolicy::min_uptime`].
///
/// ```
/// use std::time::Duration;
/// use core_process::Backoff;
///
/// let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(b.delay(0), Duration::from_millis(100));
/// assert_eq!(b.delay(3), Duration::from_millis(800));
/// assert_eq!(b.delay(10), Duration::from_secs(1));
/// assert_eq!(Backoff::fixed(Duration::from_secs(2)).delay(7), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The growth per consecutive restart (at least 1).
    pub factor: f64,
    /// The longest delay.
    pub max: Duration,
    /// How much of a delay may be taken off at random (0: none, 1: all of it).
    pub jitter: f64,
}

impl Default for Backoff {
    /// Exponential from 100 ms, doubling, up to 30 s, no jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Always `delay`.
    pub fn fixed(delay: Duration) -> Self {
        Backoff {
            initial: delay,
            factor: 1.0,
            max: delay,
            jitter: 0.0,
        }
    }

    /// From `initial`, doubling, up to `max`.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            factor: 2.0,
            max: max.max(initial),
            jitter: 0.0,
        }
    }

    setters! {
        /// Sets the growth factor (values below 1, and NaN, count as 1).
        factor(factor: f64);
        /// Sets the jitter (clamped to 0..=1).
        jitter(jitter: f64);
    }

    /// The delay before the `n`-th consecutive restart (from 0), without jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = if self.factor.is_nan() {
            1.0
        } else {
            self.factor.max(1.0)
        };
        let max = self.max.max(self.initial).as_secs_f64();
        let raw = self.initial.as_secs_f64() * factor.powi(n.min(1024) as i32);
        Duration::from_secs_f64(if raw.is_finite() { raw.min(max) } else { max })
    }

    /// The delay before the `n`-th consecutive restart with jitter, `u` being a uniform
    /// random number in 0..1: `delay(n) × (1 − jitter × u)`.
    pub(crate) fn jittered(&self, n: u32, u: f64) -> Duration {
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        self.delay(n)
            .mul_f64((1.0 - jitter * u.clamp(0.0, 1.0)).max(0.0))
    }
}

/// A uniform random number in 0..1 for jitter: a splitmix64 step over a shared counter seeded
/// from the clock (jitter needs spread, not cryptographic quality).
pub(crate) fn random_unit() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(seed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Gives up after `burst` failed starts within `window` (systemd's `StartLimitBurst` and
/// `StartLimitIntervalSec`; with a window of [`Duration::MAX`], supervisord's `startretries`
/// + 1). A start that stays up for [`SupervisePolicy::min_uptime`] clears the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartLimit {
    /// How many failed starts are tolerated within `window` (the `burst`-th one gives up).
    pub burst: u32,
    /// The window.
    pub window: Duration,
}

impl Default for StartLimit {
    /// 5 failed starts within 60 s.
    fn default() -> Self {
        StartLimit {
            burst: 5,
            window: Duration::from_secs(60),
        }
    }
}

impl StartLimit {
    /// `burst` failed starts within `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        StartLimit { burst, window }
    }
}

/// The failed starts within the window, as the driver counts them.
#[derive(Debug, Default)]
pub(crate) struct FailedStarts {
    at: VecDeque<Instant>,
}

impl FailedStarts {
    /// Records a failed start at `now`; true when the limit is reached.
    pub(crate) fn record(&mut self, limit: StartLimit, now: Instant) -> bool {
        self.at.push_back(now);
        while let Some(&first) = self.at.front() {
            if now.saturating_duration_since(first) >= limit.window {
                self.at.pop_front();
            } else {
                break;
            }
        }
        self.at.len() as u64 >= u64::from(limit.burst.max(1))
    }

    pub(crate) fn clear(&mut self) {
        self.at.clear();
    }
}

/// How a supervised process is kept alive: restart policy, backoff, start limit, probes.
///
/// ```
/// use std::time::Duration;
/// use core_process::{Backoff, Probe, RestartPolicy, StartLimit, SupervisePolicy};
///
/// let policy = SupervisePolicy::new()
///     .restart(RestartPolicy::always())
///     .backoff(Backoff::exponential(Duration::from_millis(200), Duration::from_secs(10)).jitter(0.2))
///     .min_uptime(Duration::from_secs(5))
///     .start_limit(StartLimit::new(3, Duration::from_secs(60)))
///     .readiness(Probe::log_line("listening on").unwrap())
///     .ready_timeout(Duration::from_secs(30))
///     .memory_limit(512 * 1024 * 1024);
/// assert_eq!(policy.start_limit.burst, 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisePolicy {
    /// When to restart.
    pub restart: RestartPolicy,
    /// How long to wait before a restart.
    pub backoff: Backoff,
    /// How long a child must stay up for its start to count as successful (default 1 s): a
    /// child that ends sooner is a failed start; one that stays up resets the backoff and the
    /// failed-start count.
    pub min_uptime: Duration,
    /// When to give up ([`SupervisionState::Fatal`](crate::SupervisionState::Fatal)).
    pub start_limit: StartLimit,
    /// When a child counts as ready (default [`Probe::started`]).
    pub readiness: Probe,
    /// A child not ready this long after its start is stopped and counts as a failed start.
    pub ready_timeout: Option<Duration>,
    /// A probe that, failing its threshold once the child is ready, restarts it (stop signal,
    /// then SIGKILL after its grace period).
    pub liveness: Option<Probe>,
    /// A child whose resident memory exceeds this many bytes is restarted like a failed
    /// liveness probe (Linux, read from `/proc`; the child itself, not its descendants).
    pub memory_limit: Option<u64>,
    /// How often the memory limit is checked (default 1 s).
    pub memory_interval: Duration,
}

impl Default for SupervisePolicy {
    fn default() -> Self {
        SupervisePolicy {
            restart: RestartPolicy::default(),
            backoff: Backoff::default(),
            min_uptime: Duration::from_secs(1),
            start_limit: StartLimit::default(),
            readiness: Probe::started(),
            ready_timeout: None,
            liveness: None,
            memory_limit: None,
            memory_interval: Duration::from_secs(1),
        }
    }
}

impl SupervisePolicy {
    /// The defaults: restart on failure, exponential backoff from 100 ms to 30 s, min uptime
    /// 1 s, 5 failed starts within 60 s, ready once started.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Sets the restart policy.
        restart(restart: RestartPolicy);
        /// Sets the backoff.
        backoff(backoff: Backoff);
        /// Sets the minimum uptime of a successful start.
        min_uptime(min_uptime: Duration);
        /// Sets the start limit.
        start_limit(limit: StartLimit);
        /// Sets the readiness probe.
        readiness(probe: Probe);
        /// Sets how long a child may take to become ready.
        ready_timeout(timeout: Duration) => Some;
        /// Sets the liveness probe.
        liveness(probe: Probe) => Some;
        /// Sets the memory limit in bytes.
        memory_limit(bytes: u64) => Some;
        /// Sets how often the memory limit is checked.
        memory_interval(interval: Duration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn restart_decisions() {
        let never = RestartPolicy::Never;
        assert!(!never.restarts(Some(1)) && !never.restarts(None) && !never.restarts_forced());
        let always = RestartPolicy::always().prevent_codes([3]);
        assert!(always.restarts(Some(0)) && always.restarts(None) && !always.restarts(Some(3)));
        let on_failure = RestartPolicy::on_failure();
        assert!(!on_failure.restarts(Some(0)) && on_failure.restarts(Some(1)));
        assert!(on_failure.restarts_forced());
    }

    #[test]
    fn exponential_caps_and_fixed_stays() {
        let b = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(50));
        let d: Vec<_> = (0..5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(d, [10, 20, 40, 50, 50]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(50));
        let f = Backoff::fixed(Duration::from_millis(7)).factor(f64::NAN);
        assert_eq!(f.delay(9), Duration::from_millis(7));
    }

    #[test]
    fn start_limit_counts_within_the_window() {
        let limit = StartLimit::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let mut f = FailedStarts::default();
        assert!(!f.record(limit, t0));
        assert!(!f.record(limit, t0 + Duration::from_secs(1)));
        // The first failure left the window: still two within it.
        assert!(!f.record(limit, t0 + Duration::from_secs(10)));
        assert!(f.record(limit, t0 + Duration::from_millis(10_500)));
        f.clear();
        assert!(!f.record(limit, t0 + Duration::from_secs(11)));
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    proptest! {
        /// Whatever the settings, a jittered delay never exceeds the cap, never falls below
        /// `(1 - jitter)` of its unjittered value, and the unjittered delays never decrease.
        #[test]
        fn delays_are_bounded_and_monotone(
            initial_ms in 0u64..10_000,
            max_ms in 0u64..100_000,
            factor in 0.0f64..10.0,
            jitter in -1.0f64..2.0,
            n in 0u32..200,
            u in 0.0f64..1.0,
        ) {
            let b = Backoff::exponential(Duration::from_millis(initial_ms), Duration::from_millis(max_ms))
                .factor(factor)
                .jitter(jitter);
            let cap = b.max.max(b.initial);
            let base = b.delay(n);
            prop_assert!(base <= cap);
            prop_assert!(b.delay(n + 1) >= base);
            let j = b.jittered(n, u);
            prop_assert!(j <= base);
            let floor = base.mul_f64(1.0 - jitter.clamp(0.0, 1.0)).saturating_sub(Duration::from_nanos(1));
            prop_assert!(j >= floor);
        }
    }
}

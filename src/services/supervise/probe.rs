//! [`Probe`]: when a supervised child (or a pipeline service) is ready, and whether it is still
//! alive — started, a line of its output, a TCP port, an HTTP GET — with Kubernetes' interval,
//! timeout and thresholds.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::services::health::http_get;
use crate::services::process::Process;

/// A regular expression matched against each line of a child's output (the `regex` crate's
/// syntax; matching takes linear time whatever the output).
#[derive(Clone)]
pub struct LinePattern(regex::Regex);

impl LinePattern {
    /// Compiles `pattern`.
    ///
    /// # Errors
    /// [`Error::InvalidProbe`] naming the pattern and what is wrong with it.
    pub fn new(pattern: &str) -> Result<Self> {
        regex::Regex::new(pattern)
            .map(LinePattern)
            .map_err(|e| Error::InvalidProbe {
                probe: format!("log line /{pattern}/"),
                reason: e.to_string(),
            })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether some line of `text` matches.
    pub fn matches_a_line(&self, text: &str) -> bool {
        text.lines().any(|line| self.0.is_match(line))
    }
}

impl fmt::Debug for LinePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/", self.as_str())
    }
}

impl PartialEq for LinePattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for LinePattern {}

/// What a [`Probe`] checks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Check {
    /// The child has started (passes at once; never fails as a liveness probe).
    Started,
    /// A line of the child's captured output matches (never fails as a liveness probe once
    /// it passed).
    LogLine(LinePattern),
    /// A TCP connection to this `host:port` succeeds.
    Tcp(String),
    /// An HTTP GET of `path` on this `host:port` answers 2xx or 3xx.
    Http {
        /// `host:port`.
        addr: String,
        /// The path and query, starting with `/`.
        path: String,
    },
}

/// A readiness or liveness probe: a [`Check`] run every `interval`, each run bounded by
/// `timeout`; `success_threshold` passes in a row make a child ready, `failure_threshold`
/// failures in a row make a liveness probe fail.
///
/// ```
/// use std::time::Duration;
/// use core_process::Probe;
///
/// let ready = Probe::http("127.0.0.1:8080", "/healthz")
///     .interval(Duration::from_millis(500))
///     .timeout(Duration::from_secs(1))
///     .success_threshold(2);
/// let alive = Probe::tcp("127.0.0.1:8080").failure_threshold(3);
/// assert_eq!(ready.success_threshold, 2);
/// # let _ = alive;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What is checked.
    pub check: Check,
    /// Wait this long after the start before the first check.
    pub initial_delay: Duration,
    /// The time between checks (default 100 ms).
    pub interval: Duration,
    /// The bound on one check (default 1 s).
    pub timeout: Duration,
    /// Passes in a row that make a child ready (default 1).
    pub success_threshold: u32,
    /// Failures in a row that fail a liveness probe (default 3).
    pub failure_threshold: u32,
}

impl Default for Probe {
    fn default() -> Self {
        Probe::started()
    }
}

impl Probe {
    fn of(check: Check) -> Self {
        Probe {
            check,
            initial_delay: Duration::ZERO,
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }

    /// Ready as soon as the child has started.
    pub fn started() -> Self {
        Probe::of(Check::Started)
    }

    /// Ready once a line of the child's output matches `pattern` (needs captured output).
    ///
    /// # Errors
    /// [`Error::InvalidProbe`] for a pattern that does not compile.
    pub fn log_line(pattern: &str) -> Result<Self> {
        Ok(Probe::of(Check::LogLine(LinePattern::new(pattern)?)))
    }

    /// Ready (alive) while `addr` (`host:port`) accepts TCP connections.
    pub fn tcp(addr: impl Into<String>) -> Self {
        Probe::of(Check::Tcp(addr.into()))
    }

    /// Ready (alive) while `GET http://{addr}{path}` answers 2xx or 3xx.
    pub fn http(addr: impl Into<String>, path: impl Into<String>) -> Self {
        Probe::of(Check::Http {
            addr: addr.into(),
            path: path.into(),
        })
    }

    setters! {
        /// Sets the delay before the first check.
        initial_delay(delay: Duration);
        /// Sets the time between checks.
        interval(interval: Duration);
        /// Sets the bound on one check.
        timeout(timeout: Duration);
        /// Sets the passes in a row that make a child ready.
        success_threshold(n: u32);
        /// Sets the failures in a row that fail a liveness probe.
        failure_threshold(n: u32);
    }

    /// Whether the check needs the child's output captured.
    pub(crate) fn needs_output(&self) -> bool {
        matches!(self.check, Check::LogLine(_))
    }

    /// A short description for logs and reasons.
    pub(crate) fn describe(&self) -> String {
        match &self.check {
            Check::Started => "started".into(),
            Check::LogLine(p) => format!("log line {p:?}"),
            Check::Tcp(addr) => format!("TCP {addr}"),
            Check::Http { addr, path } => format!("HTTP GET http://{addr}{path}"),
        }
    }

    /// Runs the check once against `process`.
    pub(crate) async fn check_once(&self, process: &Process) -> std::result::Result<(), String> {
        match &self.check {
            Check::Started => Ok(()),
            Check::LogLine(pattern) => {
                if pattern.matches_a_line(&process.output()) {
                    Ok(())
                } else {
                    Err(format!("no output line matches {pattern:?} yet"))
                }
            }
            Check::Tcp(addr) => {
                match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr)).await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("TCP {addr}: {e}")),
                    Err(_) => Err(format!("TCP {addr}: no answer within {:?}", self.timeout)),
                }
            }
            Check::Http { addr, path } => match http_get(addr, path, None, self.timeout).await {
                Ok((status, _)) if (200..400).contains(&status) => Ok(()),
                Ok((status, _)) => Err(format!("GET http://{addr}{path}: status {status}")),
                Err(e) => Err(format!("GET http://{addr}{path}: {e}")),
            },
        }
    }

    /// Resolves once the check passed `success_threshold` times in a row. Cancel safe.
    pub(crate) async fn until_ready(&self, process: &Process) {
        if matches!(self.check, Check::Started) {
            return;
        }
        tokio::time::sleep(self.initial_delay).await;
        let mut passes = 0;
        loop {
            if self.check_once(process).await.is_ok() {
                passes += 1;
                if passes >= self.success_threshold.max(1) {
                    return;
                }
            } else {
                passes = 0;
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Resolves with the last failure once the check failed `failure_threshold` times in a
    /// row (never for `Started` and `LogLine`). Cancel safe.
    pub(crate) async fn until_failed(&self, process: &Process) -> String {
        if matches!(self.check, Check::Started | Check::LogLine(_)) {
            return std::future::pending().await;
        }
        tokio::time::sleep(self.initial_delay).await;
        let mut failures = 0;
        loop {
            match self.check_once(process).await {
                Ok(()) => failures = 0,
                Err(reason) => {
                    failures += 1;
                    if failures >= self.failure_threshold.max(1) {
                        return format!(
                            "liveness probe failed {failures} times in a row: {reason}"
                        );
                    }
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_lines_and_bad_ones_are_errors() {
        let p = LinePattern::new(r"^listening on \d+$").unwrap();
        assert!(p.matches_a_line("booting\nlistening on 8080\n"));
        assert!(!p.matches_a_line("booting listening on 8080"));
        let err = Probe::log_line("(unclosed").unwrap_err();
        assert!(matches!(err, Error::InvalidProbe { .. }), "{err}");
        assert!(err.to_string().contains("(unclosed"), "{err}");
        assert_eq!(
            LinePattern::new("a").unwrap(),
            LinePattern::new("a").unwrap()
        );
    }
}

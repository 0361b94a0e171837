//! The Kubernetes probe conventions of `/livez` and `/readyz`, apart from HTTP: the query
//! (`verbose`, `exclude`), which checks a probe runs, the text the kube-apiserver writes, and
//! the start-up grace.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{CheckResult, HealthCheck, HealthReport, run_checks};
use crate::sync::lock;

/// The name of the readiness flag's line in `/readyz`.
pub(crate) const READY_FLAG: &str = "ready";

/// A Kubernetes probe endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// `/livez`: the liveness checks.
    Live,
    /// `/readyz`: the readiness flag and the readiness checks.
    Ready,
}

impl Probe {
    /// The endpoint's name, as its text says it (`livez check passed`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Probe::Live => "livez",
            Probe::Ready => "readyz",
        }
    }

    /// The kind of check it runs, in words.
    pub(crate) fn kind_name(self) -> &'static str {
        match self {
            Probe::Live => "liveness",
            Probe::Ready => "readiness",
        }
    }

    /// Whether this probe runs `check`.
    fn runs(self, check: &HealthCheck) -> bool {
        match self {
            Probe::Live => check.probe_kind().is_liveness(),
            Probe::Ready => check.probe_kind().is_readiness(),
        }
    }
}

/// What a request's query asks of a probe.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ProbeQuery {
    /// `verbose` (bare, empty, or any value but `0` and `false`).
    pub(crate) verbose: bool,
    /// The checks to skip: every `exclude=` value, each split at commas.
    pub(crate) exclude: Vec<String>,
}

impl ProbeQuery {
    /// Parses a raw query string (`verbose&exclude=db,cache`).
    pub(crate) fn parse(raw: &str) -> Self {
        let mut query = ProbeQuery::default();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "verbose" => query.verbose = is_verbose(&value),
                "exclude" => query.exclude.extend(
                    value
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_string),
                ),
                _ => {}
            }
        }
        query
    }
}

/// Whether a `verbose` value asks for detail: anything but `0` and `false`.
pub(crate) fn is_verbose(value: &str) -> bool {
    !(value == "0" || value.eq_ignore_ascii_case("false"))
}

/// Decodes `%XX` escapes (others are left as they are; `+` stays `+`).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of a probe's answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Entry {
    /// A check that ran (or the readiness flag).
    Ran(CheckResult),
    /// A check skipped by `?exclude=`.
    Excluded(String),
}

/// A probe's outcome, before it is written out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Evaluation {
    /// The answer: `200` when true.
    pub(crate) passed: bool,
    /// Whether failures were ignored because of the start-up grace.
    pub(crate) in_grace: bool,
    /// A line per check of the probe, in the order the checks were added (after the readiness
    /// flag for `/readyz`).
    pub(crate) entries: Vec<Entry>,
    /// Names in `?exclude=` that match no check of the probe.
    pub(crate) unmatched: Vec<String>,
}

impl Evaluation {
    /// The checks that ran, as a report whose `healthy` is the answer.
    pub(crate) fn report(&self) -> HealthReport {
        HealthReport {
            healthy: self.passed,
            checks: self
                .entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Ran(r) => Some(r.clone()),
                    Entry::Excluded(_) => None,
                })
                .collect(),
        }
    }

    /// The body the kube-apiserver would write: `ok` when passing and not verbose; otherwise a
    /// `[+]name ok` / `[-]name failed: reason` line per check (the reason withheld unless
    /// `verbose`) and `livez check passed` or `livez check failed`.
    pub(crate) fn text(&self, probe: Probe, verbose: bool) -> String {
        if self.passed && !verbose {
            return "ok\n".to_string();
        }
        let mut out = String::new();
        for entry in &self.entries {
            let _ = match entry {
                Entry::Excluded(name) => writeln!(out, "[+]{name} excluded: ok"),
                Entry::Ran(r) if r.ok => writeln!(out, "[+]{} ok", r.name),
                Entry::Ran(r) => {
                    let reason = match (verbose, r.reason.as_deref()) {
                        (true, Some(reason)) => reason,
                        (true, None) => "failed",
                        (false, _) => "reason withheld",
                    };
                    writeln!(out, "[-]{} failed: {reason}", r.name)
                }
            };
        }
        if !self.unmatched.is_empty() {
            let names: Vec<String> = self.unmatched.iter().map(|n| format!("{n:?}")).collect();
            let _ = writeln!(
                out,
                "warn: some health checks cannot be excluded: no matches for {}",
                names.join(",")
            );
        }
        let name = probe.name();
        let _ = match (self.passed, self.in_grace) {
            (true, false) => writeln!(out, "{name} check passed"),
            (true, true) => writeln!(
                out,
                "{name} check passed (start-up grace: failures ignored until the first successful readiness)"
            ),
            (false, _) => writeln!(out, "{name} check failed"),
        };
        out
    }
}

/// Runs the checks of `probe` that `query` does not exclude, concurrently; for `/readyz`, the
/// readiness flag `ready` comes first. No start-up grace: see [`answer`].
async fn evaluate(
    probe: Probe,
    checks: &[(String, HealthCheck)],
    ready: bool,
    query: &ProbeQuery,
    timeout: Duration,
) -> Evaluation {
    let mine: Vec<&(String, HealthCheck)> = checks.iter().filter(|(_, c)| probe.runs(c)).collect();
    let excluded = |name: &str| query.exclude.iter().any(|e| e == name);
    let report = run_checks(mine.iter().copied().filter(|(n, _)| !excluded(n)), timeout).await;
    let mut results = report.checks.into_iter();
    let mut entries = Vec::with_capacity(mine.len() + 1);
    if probe == Probe::Ready {
        entries.push(Entry::Ran(flag(ready)));
    }
    for (name, _) in &mine {
        if excluded(name) {
            entries.push(Entry::Excluded(name.clone()));
        } else if let Some(r) = results.next() {
            entries.push(Entry::Ran(r));
        }
    }
    let unmatched = query
        .exclude
        .iter()
        .filter(|e| !mine.iter().any(|(n, _)| n == *e))
        .cloned()
        .collect();
    let passed = entries.iter().all(|e| !matches!(e, Entry::Ran(r) if !r.ok));
    Evaluation {
        passed,
        in_grace: false,
        entries,
        unmatched,
    }
}

/// What `probe` answers: its checks ([`evaluate`]) under the start-up grace. `/livez`: within
/// the grace, failures pass unless the server is ready (the flag and every readiness check),
/// which ends the grace. `/readyz`: the readiness flag and checks; the first that passes ends
/// the grace.
pub(crate) async fn answer(
    probe: Probe,
    checks: &[(String, HealthCheck)],
    ready: bool,
    query: &ProbeQuery,
    timeout: Duration,
    grace: &StartupGrace,
) -> Evaluation {
    let mut evaluation = evaluate(probe, checks, ready, query, timeout).await;
    match probe {
        Probe::Ready if evaluation.passed => grace.end(),
        Probe::Live if !evaluation.passed && grace.active() => {
            let now_ready =
                evaluate(Probe::Ready, checks, ready, &ProbeQuery::default(), timeout).await;
            if now_ready.passed {
                grace.end();
            } else {
                evaluation.passed = true;
                evaluation.in_grace = true;
            }
        }
        Probe::Live | Probe::Ready => {}
    }
    evaluation
}

/// `/livez/{name}`, `/readyz/{name}`: runs the one check of `probe` called `name`
/// (`/readyz/ready`, unless a check has that name: the readiness flag); `None` when there is
/// none.
pub(crate) async fn one(
    probe: Probe,
    checks: &[(String, HealthCheck)],
    ready: bool,
    name: &str,
    timeout: Duration,
) -> Option<CheckResult> {
    let Some(check) = checks.iter().find(|(n, c)| n == name && probe.runs(c)) else {
        return (probe == Probe::Ready && name == READY_FLAG).then(|| flag(ready));
    };
    run_checks([check], timeout).await.checks.pop()
}

/// The readiness flag as the result of a check named `ready`.
fn flag(ready: bool) -> CheckResult {
    CheckResult {
        name: READY_FLAG.to_string(),
        ok: ready,
        reason: (!ready).then(|| "not ready".to_string()),
        duration: Duration::ZERO,
    }
}

/// From a server's start until its first successful readiness, at most a set period: while it
/// lasts, failing liveness checks do not fail `/livez`.
#[derive(Debug, Default)]
pub(crate) struct StartupGrace(Mutex<Option<Instant>>);

impl StartupGrace {
    /// Starts a grace of `period` (none when zero).
    pub(crate) fn begin(&self, period: Duration) {
        let until = (!period.is_zero()).then(|| Instant::now().checked_add(period));
        *lock(&self.0) = until.flatten();
    }

    /// Whether the grace lasts.
    pub(crate) fn active(&self) -> bool {
        lock(&self.0).is_some_and(|until| Instant::now() < until)
    }

    /// Ends the grace (the server was ready once).
    pub(crate) fn end(&self) {
        *lock(&self.0) = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::services::health::CheckKind;

    fn ok() -> HealthCheck {
        HealthCheck::new(|| async { Ok::<(), String>(()) })
    }

    fn fails(reason: &'static str) -> HealthCheck {
        HealthCheck::new(move || async move { Err::<(), _>(reason) })
    }

    /// A check that passes while `flag` is true.
    fn toggle(flag: &Arc<AtomicBool>) -> HealthCheck {
        let flag = flag.clone();
        HealthCheck::new(move || {
            let up = flag.load(Ordering::SeqCst);
            async move { if up { Ok(()) } else { Err("down") } }
        })
    }

    const T: Duration = Duration::from_secs(1);

    /// The checks as the probes take them: `(name, check)` pairs, in order.
    fn named<const N: usize>(checks: [(&str, HealthCheck); N]) -> Vec<(String, HealthCheck)> {
        checks.map(|(name, check)| (name.to_string(), check)).into()
    }

    /// Whether `e` passed, and its verbose text as `probe`.
    fn verdict(e: &Evaluation, probe: Probe) -> (bool, String) {
        (e.passed, e.text(probe, true))
    }

    /// What `probe` answers over `checks` for the query string `query`, with no start-up grace.
    async fn probed(
        probe: Probe,
        checks: &[(String, HealthCheck)],
        ready: bool,
        query: &str,
    ) -> Evaluation {
        let (query, grace) = (ProbeQuery::parse(query), StartupGrace::default());
        answer(probe, checks, ready, &query, T, &grace).await
    }

    #[test]
    fn parses_verbose_and_exclude() {
        let q = ProbeQuery::parse;
        assert!(q("verbose").verbose);
        assert!(q("verbose=").verbose);
        assert!(q("verbose=1").verbose);
        assert!(q("verbose=true").verbose);
        assert!(!q("verbose=0").verbose);
        assert!(!q("verbose=false").verbose);
        assert!(!q("verbose=FALSE").verbose);
        assert!(!q("").verbose);
        assert!(!q("verbosity").verbose);
        assert_eq!(
            q("exclude=db&verbose&exclude=a,b&exclude=").exclude,
            ["db", "a", "b"]
        );
        assert_eq!(
            q("exclude=poststarthook%2Fcache").exclude,
            ["poststarthook/cache"]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[tokio::test]
    async fn livez_text_is_the_apiservers() {
        let checks = named([
            ("ping", ok()),
            ("etcd", fails("connection refused")),
            ("warm", fails("cold").kind(CheckKind::Readiness)),
        ]);
        let e = probed(Probe::Live, &checks, true, "verbose").await;
        assert_eq!(
            verdict(&e, Probe::Live),
            (
                false,
                "[+]ping ok\n[-]etcd failed: connection refused\nlivez check failed\n".into()
            )
        );
        assert_eq!(
            e.text(Probe::Live, false),
            "[+]ping ok\n[-]etcd failed: reason withheld\nlivez check failed\n"
        );
        let e = probed(Probe::Live, &checks, true, "exclude=etcd&exclude=nope").await;
        assert!(e.passed);
        assert_eq!(e.text(Probe::Live, false), "ok\n");
        assert_eq!(
            e.text(Probe::Live, true),
            "[+]ping ok\n[+]etcd excluded: ok\nwarn: some health checks cannot be excluded: no matches for \"nope\"\nlivez check passed\n"
        );
        assert_eq!(e.report().checks.len(), 1);
    }

    #[tokio::test]
    async fn readyz_puts_the_flag_first_and_runs_readiness_checks_only() {
        let checks = named([
            ("alive", fails("x").kind(CheckKind::Liveness)),
            ("warm", ok().kind(CheckKind::Readiness)),
        ]);
        for (ready, text) in [
            (true, "[+]ready ok\n[+]warm ok\nreadyz check passed\n"),
            (
                false,
                "[-]ready failed: not ready\n[+]warm ok\nreadyz check failed\n",
            ),
        ] {
            let e = probed(Probe::Ready, &checks, ready, "verbose").await;
            assert_eq!(verdict(&e, Probe::Ready), (ready, text.into()));
        }
        assert!(
            one(Probe::Ready, &checks, true, "warm", T)
                .await
                .unwrap()
                .ok
        );
        assert!(one(Probe::Ready, &checks, true, "alive", T).await.is_none());
        assert!(
            !one(Probe::Live, &checks, true, "alive", T)
                .await
                .unwrap()
                .ok
        );
        assert!(
            !one(Probe::Ready, &checks, false, "ready", T)
                .await
                .unwrap()
                .ok
        );
        assert!(one(Probe::Live, &checks, false, "ready", T).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn grace_lasts_until_the_first_successful_readiness() {
        let up = Arc::new(AtomicBool::new(false));
        let checks = named([("db", toggle(&up))]);
        let grace = StartupGrace::default();
        grace.begin(Duration::from_secs(60));
        let q = ProbeQuery::default();
        // Starting: the check fails, yet liveness passes (and says why).
        let e = answer(Probe::Live, &checks, true, &q, T, &grace).await;
        assert!(e.passed && e.in_grace, "{e:?}");
        assert!(e.text(Probe::Live, true).contains("start-up grace"));
        assert!(
            !answer(Probe::Ready, &checks, true, &q, T, &grace)
                .await
                .passed
        );
        assert!(grace.active());
        // Ready once: the grace is over, a later failure fails liveness.
        up.store(true, Ordering::SeqCst);
        assert!(
            answer(Probe::Ready, &checks, true, &q, T, &grace)
                .await
                .passed
        );
        assert!(!grace.active());
        up.store(false, Ordering::SeqCst);
        let e = answer(Probe::Live, &checks, true, &q, T, &grace).await;
        assert!(!e.passed && !e.in_grace);
    }

    #[tokio::test(start_paused = true)]
    async fn grace_ends_when_liveness_alone_fails_while_ready() {
        // A liveness-only check failing while every readiness check passes: the server is
        // ready, so the grace ends on that very request.
        let checks = named([("loop", fails("stuck").kind(CheckKind::Liveness))]);
        let grace = StartupGrace::default();
        grace.begin(Duration::from_secs(60));
        let e = answer(
            Probe::Live,
            &checks,
            true,
            &ProbeQuery::default(),
            T,
            &grace,
        )
        .await;
        assert!(!e.passed);
        assert!(!grace.active());
    }

    #[tokio::test(start_paused = true)]
    async fn grace_is_bounded_by_its_period() {
        let checks = named([("db", fails("down"))]);
        let grace = StartupGrace::default();
        grace.begin(Duration::from_secs(30));
        let q = ProbeQuery::default();
        assert!(
            answer(Probe::Live, &checks, true, &q, T, &grace)
                .await
                .passed
        );
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(
            answer(Probe::Live, &checks, true, &q, T, &grace)
                .await
                .passed
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            !answer(Probe::Live, &checks, true, &q, T, &grace)
                .await
                .passed
        );
        // A zero period is no grace at all.
        grace.begin(Duration::ZERO);
        assert!(!grace.active());
    }
}

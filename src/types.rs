//! Plain data: [`Status`], [`Stream`], [`Signal`], [`RunOptions`](crate::RunOptions) and the [`Info`] snapshot.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Where a managed process is in its life.
///
/// ```text
/// Pending ──spawn──▶ Running ──exit(code)──▶ Exited
///                       │    ──signal─────▶ Killed
///                       └──── wait error ──▶ Failed
/// ```
///
/// A process ended by a signal — ours or anyone's — reports [`Status::Killed`], never
/// [`Status::Exited`] (the Go original got this wrong). Serialises lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, not yet spawned.
    Pending,
    /// Spawned and not yet reaped.
    Running,
    /// Exited on its own, with an exit code (zero or not).
    Exited,
    /// Its status could not be collected.
    Failed,
    /// Ended by a signal, or stopped because its timeout fired.
    Killed,
}

impl Status {
    /// Whether the process has finished (any state but `Pending` and `Running`).
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Exited | Status::Failed | Status::Killed)
    }

    /// The lowercase name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Failed => "failed",
            Status::Killed => "killed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which pipe a line of output came from. Serialises lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

/// A POSIX signal, by name. Our own type: no `libc` or `nix` type crosses the API.
///
/// Displays and serialises as the conventional name (`"SIGTERM"`); parses from `"SIGTERM"`,
/// `"TERM"` or `"term"`, or from the number (`"15"`, `"SIG15"`). Signals without a variant
/// travel as [`Signal::Other`] with their number on this platform: those the platform names
/// display as that name (`"SIGIO"`, `"SIGPWR"`, `"SIGSTKFLT"` on Linux; `"SIGINFO"`, `"SIGEMT"`
/// on the BSDs and macOS), the real-time signals as their number (`"SIG40"`: the same in every
/// process, unlike `SIGRTMIN+n`, which depends on the C library). Real-time signals also parse
/// from `"SIGRTMIN"`, `"SIGRTMIN+3"`, `"RTMAX-2"` and the like; aliases `"SIGIOT"` (and, on
/// Linux, `"SIGPOLL"` and `"SIGCLD"`) parse too.
///
/// Any positive number parses, so every `Signal` that displays as `"SIG<n>"` parses back; zero,
/// negative and signed numbers do not. Whether a signal can be *sent* is checked when it is used:
/// [`RunOptions::validate`](crate::RunOptions::validate) rejects a [`stop_signal`](crate::RunOptions::stop_signal) that cannot be
/// sent here, and [`Process::signal`](crate::Process::signal) fails for one.
///
/// ```
/// use core_process::Signal;
///
/// assert_eq!("term".parse::<Signal>().unwrap(), Signal::Term);
/// assert_eq!("SIGXCPU".parse::<Signal>().unwrap().to_string(), "SIGXCPU");
/// assert_eq!(Signal::Other(Signal::Xcpu.number()).to_string(), "SIGXCPU");
/// assert!("SIG0".parse::<Signal>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGHUP: hang-up, often "reload".
    Hup,
    /// SIGINT: interrupt (Ctrl-C).
    Int,
    /// SIGQUIT: quit with core dump.
    Quit,
    /// SIGILL: illegal instruction.
    Ill,
    /// SIGTRAP: trace trap.
    Trap,
    /// SIGABRT: abort.
    Abrt,
    /// SIGBUS: bus error.
    Bus,
    /// SIGFPE: arithmetic error.
    Fpe,
    /// SIGKILL: cannot be caught or ignored.
    Kill,
    /// SIGUSR1: user-defined.
    Usr1,
    /// SIGSEGV: invalid memory reference.
    Segv,
    /// SIGUSR2: user-defined.
    Usr2,
    /// SIGPIPE: write to a pipe with no reader.
    Pipe,
    /// SIGALRM: timer.
    Alrm,
    /// SIGTERM: polite request to terminate.
    Term,
    /// SIGCHLD: child status changed.
    Chld,
    /// SIGCONT: continue if stopped.
    Cont,
    /// SIGSTOP: stop; cannot be caught.
    Stop,
    /// SIGTSTP: stop from the terminal.
    Tstp,
    /// SIGWINCH: window size changed.
    Winch,
    /// SIGTTIN: background read from the terminal.
    Ttin,
    /// SIGTTOU: background write to the terminal.
    Ttou,
    /// SIGURG: urgent data on a socket.
    Urg,
    /// SIGXCPU: CPU time limit exceeded.
    Xcpu,
    /// SIGXFSZ: file size limit exceeded.
    Xfsz,
    /// SIGVTALRM: virtual timer.
    Vtalrm,
    /// SIGPROF: profiling timer.
    Prof,
    /// SIGSYS: bad system call.
    Sys,
    /// Any other signal, by its number on this platform (the platform's own signals such as
    /// SIGIO or SIGPWR, and the real-time signals).
    Other(i32),
}

pub(crate) const NAMED_SIGNALS: [(Signal, &str); 28] = [
    (Signal::Hup, "SIGHUP"),
    (Signal::Int, "SIGINT"),
    (Signal::Quit, "SIGQUIT"),
    (Signal::Ill, "SIGILL"),
    (Signal::Trap, "SIGTRAP"),
    (Signal::Abrt, "SIGABRT"),
    (Signal::Bus, "SIGBUS"),
    (Signal::Fpe, "SIGFPE"),
    (Signal::Kill, "SIGKILL"),
    (Signal::Usr1, "SIGUSR1"),
    (Signal::Segv, "SIGSEGV"),
    (Signal::Usr2, "SIGUSR2"),
    (Signal::Pipe, "SIGPIPE"),
    (Signal::Alrm, "SIGALRM"),
    (Signal::Term, "SIGTERM"),
    (Signal::Chld, "SIGCHLD"),
    (Signal::Cont, "SIGCONT"),
    (Signal::Stop, "SIGSTOP"),
    (Signal::Tstp, "SIGTSTP"),
    (Signal::Winch, "SIGWINCH"),
    (Signal::Ttin, "SIGTTIN"),
    (Signal::Ttou, "SIGTTOU"),
    (Signal::Urg, "SIGURG"),
    (Signal::Xcpu, "SIGXCPU"),
    (Signal::Xfsz, "SIGXFSZ"),
    (Signal::Vtalrm, "SIGVTALRM"),
    (Signal::Prof, "SIGPROF"),
    (Signal::Sys, "SIGSYS"),
];

impl Signal {
    /// The signal's number on this platform.
    pub fn number(self) -> i32 {
        // Looked up by name once: every spawn validates its stop signal, and a stop sends it.
        static NUMBERS: std::sync::OnceLock<[i32; NAMED_SIGNALS.len()]> =
            std::sync::OnceLock::new();
        match self {
            Signal::Other(n) => n,
            named => {
                let numbers = NUMBERS.get_or_init(|| {
                    NAMED_SIGNALS.map(|(_, name)| crate::sys::signal_by_name(name).unwrap_or(0))
                });
                NAMED_SIGNALS
                    .iter()
                    .position(|(s, _)| *s == named)
                    .map_or(0, |i| numbers[i])
            }
        }
    }

    /// The signal with this number on this platform; [`Signal::Other`] when it has no variant.
    pub fn from_number(number: i32) -> Signal {
        crate::sys::signal_name(number)
            .and_then(|name| NAMED_SIGNALS.iter().find(|(_, n)| *n == name))
            .map_or(Signal::Other(number), |(s, _)| *s)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let named = match *self {
            Signal::Other(n) => match Signal::from_number(n) {
                Signal::Other(n) => {
                    return match crate::sys::signal_name(n) {
                        Some(name) => f.write_str(name),
                        None => write!(f, "SIG{n}"),
                    };
                }
                named => named,
            },
            named => named,
        };
        let name = NAMED_SIGNALS
            .iter()
            .find(|(s, _)| *s == named)
            .map_or("SIG?", |(_, n)| *n);
        f.write_str(name)
    }
}

/// A string that names no signal, from [`Signal`]'s `FromStr`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid signal `{input}`: not a known signal name or number")]
pub struct ParseSignalError {
    /// The string as given.
    pub input: String,
}

impl FromStr for Signal {
    type Err = ParseSignalError;

    fn from_str(s: &str) -> Result<Self, ParseSignalError> {
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        if let Some((sig, _)) = NAMED_SIGNALS.iter().find(|(_, n)| *n == full) {
            return Ok(*sig);
        }
        if let Some(n) = crate::sys::signal_by_name(&full) {
            return Ok(Signal::from_number(n));
        }
        let digits = &full[3..];
        match digits.parse::<i32>() {
            Ok(n) if n > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Signal::from_number(n))
            }
            _ => Err(ParseSignalError {
                input: s.to_string(),
            }),
        }
    }
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A serialisable snapshot of a process.
///
/// `duration` is live while the process runs (time since start) and fixed once it ends.
/// Durations serialise as fractional seconds, `started_at` as RFC 3339.
///
/// ```json
/// {"id":"proc-1","command":"echo","args":["hi"],"dir":null,"pid":4242,"status":"exited",
///  "exit_code":0,"signal":null,"started_at":"2026-01-02T03:04:05.123456789Z",
///  "duration":0.002100000,"running":false}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// The service's id for the process (`proc-N`).
    pub id: String,
    /// The program.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The working directory it was given.
    pub dir: Option<PathBuf>,
    /// The OS pid (0 for a fake that never spawned).
    pub pid: u32,
    /// Where it is in its life.
    pub status: Status,
    /// The exit code, once it exited on its own.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<Signal>,
    /// When it was started.
    #[serde(with = "crate::types::rfc3339")]
    pub started_at: SystemTime,
    /// How long it ran (so far, while running).
    #[serde(with = "crate::types::secs_f64")]
    pub duration: Duration,
    /// Whether it is still running.
    pub running: bool,
}

/// Serde helper: `SystemTime` as an RFC 3339 string.
pub(crate) mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub(crate) fn format(t: SystemTime) -> String {
        OffsetDateTime::from(t)
            .format(&Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
    }

    pub(crate) fn parse(s: &str) -> Result<SystemTime, time::error::Parse> {
        OffsetDateTime::parse(s, &Rfc3339).map(SystemTime::from)
    }

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde helper: `Duration` as fractional seconds, written with nine decimals (exact, never in
/// exponent form: `0.000009787`, not `9.787e-6`).
pub(crate) mod secs_f64 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    /// The seconds of `d` as a decimal number with nine decimals.
    pub(crate) fn format(d: Duration) -> String {
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    }

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        match serde_json::value::RawValue::from_string(format(*d)) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_f64(d.as_secs_f64()),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_stream_serialise_lowercase() {
        assert_eq!(
            serde_json::to_string(&Status::Killed).unwrap(),
            "\"killed\""
        );
        assert_eq!(
            serde_json::to_string(&Stream::Stderr).unwrap(),
            "\"stderr\""
        );
        assert!(Status::Exited.is_finished());
        assert!(!Status::Running.is_finished());
    }

    #[test]
    fn status_and_stream_display_their_serialised_names() {
        let statuses = [
            (Status::Pending, "pending"),
            (Status::Running, "running"),
            (Status::Exited, "exited"),
            (Status::Failed, "failed"),
            (Status::Killed, "killed"),
        ];
        for (status, name) in statuses {
            assert_eq!(status.to_string(), name);
            assert_eq!(status.as_str(), name);
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{name}\"")
            );
        }
        for (stream, name) in [(Stream::Stdout, "stdout"), (Stream::Stderr, "stderr")] {
            assert_eq!(stream.to_string(), name);
            assert_eq!(
                serde_json::to_string(&stream).unwrap(),
                format!("\"{name}\"")
            );
        }
    }

    #[test]
    fn signal_parsing_rejects_what_is_no_signal_number() {
        for bad in [
            "0",
            "SIG0",
            "sig0",
            "-5",
            "SIG-5",
            "+5",
            "SIG+5",
            "",
            "SIG",
            " ",
            "5x",
            "SIG 5",
            "SIGRTMIN+",
            "SIGRTMIN-1",
            "SIGRTMAX+1",
            "SIGRTMIN+100000",
            "SIGRTMIN++1",
            "99999999999",
        ] {
            match bad.parse::<Signal>() {
                Err(ParseSignalError { input }) => assert_eq!(input, bad),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
        assert_eq!(" 15 ".parse::<Signal>().unwrap(), Signal::Term);
        assert_eq!("SIG015".parse::<Signal>().unwrap(), Signal::Term);
    }

    #[test]
    fn every_signal_of_the_platform_has_its_name() {
        for (sig, name) in NAMED_SIGNALS {
            assert!(sig.number() > 0, "{name}");
            assert_eq!(Signal::Other(sig.number()).to_string(), name);
        }
        assert_eq!("SIGIOT".parse::<Signal>().unwrap(), Signal::Abrt);
        #[cfg(target_os = "linux")]
        {
            // Every classic signal of Linux (1..=31) displays by name, none as "SIG<n>".
            for n in 1..=31 {
                let name = Signal::from_number(n).to_string();
                assert!(
                    !name[3..].starts_with(|c: char| c.is_ascii_digit()),
                    "{n}: {name}"
                );
                assert_eq!(name.parse::<Signal>().unwrap(), Signal::from_number(n));
            }
            assert_eq!(Signal::from_number(24), Signal::Xcpu);
            assert_eq!(Signal::Other(29).to_string(), "SIGIO");
            assert_eq!("SIGPOLL".parse::<Signal>().unwrap(), Signal::Other(29));
            assert_eq!("pwr".parse::<Signal>().unwrap(), Signal::Other(30));
            assert_eq!("SIGCLD".parse::<Signal>().unwrap(), Signal::Chld);
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            assert_eq!(Signal::Other(16).to_string(), "SIGSTKFLT");
            let (min, max) = crate::sys::realtime_signals().unwrap();
            assert_eq!("SIGRTMIN".parse::<Signal>().unwrap(), Signal::Other(min));
            assert_eq!("rtmin+3".parse::<Signal>().unwrap(), Signal::Other(min + 3));
            assert_eq!(
                "SIGRTMAX-2".parse::<Signal>().unwrap(),
                Signal::Other(max - 2)
            );
            assert_eq!("RTMAX".parse::<Signal>().unwrap(), Signal::Other(max));
            assert!(
                format!("SIGRTMIN+{}", max - min + 1)
                    .parse::<Signal>()
                    .is_err()
            );
            // Real-time signals display by number, the same in every process.
            assert_eq!(
                Signal::Other(min + 3).to_string(),
                format!("SIG{}", min + 3)
            );
        }
    }

    #[test]
    fn every_positive_number_displays_and_parses_back() {
        let check = |n: i32| {
            let sig = Signal::from_number(n);
            let text = sig.to_string();
            assert_eq!(
                text.parse::<Signal>().unwrap(),
                sig,
                "{n} displays as {text}"
            );
            assert_eq!(sig.number(), n);
            let json = serde_json::to_string(&sig).unwrap();
            assert_eq!(serde_json::from_str::<Signal>(&json).unwrap(), sig);
        };
        (1..=4096).for_each(check);
        // And a pseudo-random sample of the whole positive range (fixed seed: reproducible).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check((x % i32::MAX as u64) as i32 + 1);
        }
        check(i32::MAX);
    }

    #[test]
    fn signal_names_round_trip() {
        for (sig, name) in NAMED_SIGNALS {
            assert_eq!(sig.to_string(), name);
            assert_eq!(name.parse::<Signal>().unwrap(), sig);
            assert_eq!(Signal::from_number(sig.number()), sig);
        }
        assert_eq!("term".parse::<Signal>().unwrap(), Signal::Term);
        assert_eq!("9".parse::<Signal>().unwrap(), Signal::Kill);
        assert_eq!("SIG9".parse::<Signal>().unwrap(), Signal::Kill);
        assert!("SIGNOPE".parse::<Signal>().is_err());
        assert_eq!(serde_json::to_string(&Signal::Kill).unwrap(), "\"SIGKILL\"");
        assert_eq!(Signal::Other(40).to_string(), "SIG40");
    }

    #[test]
    fn info_serialises_rfc3339_and_seconds() {
        let info = Info {
            id: "proc-1".into(),
            command: "echo".into(),
            args: vec!["hi".into()],
            dir: None,
            pid: 7,
            status: Status::Exited,
            exit_code: Some(0),
            signal: None,
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
            duration: Duration::from_millis(1500),
            running: false,
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["started_at"], "1970-01-02T00:00:00Z");
        assert_eq!(json["duration"], 1.5);
        assert_eq!(json["status"], "exited");
        let back: Info = serde_json::from_value(json).unwrap();
        assert_eq!(back, info);
    }

    #[test]
    fn json_durations_have_fixed_precision_and_no_exponent() {
        #[derive(Serialize, Deserialize)]
        struct D(#[serde(with = "secs_f64")] Duration);
        let tiny = serde_json::to_string(&D(Duration::from_nanos(9787))).unwrap();
        assert_eq!(tiny, "0.000009787");
        assert_eq!(
            serde_json::to_string(&D(Duration::from_millis(1500))).unwrap(),
            "1.500000000"
        );
        let back: D = serde_json::from_str(&tiny).unwrap();
        assert_eq!(back.0, Duration::from_nanos(9787));
    }
}

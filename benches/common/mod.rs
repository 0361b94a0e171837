//! The shared benchmark harness: interleaved rounds, medians, summary lines, machine facts.
//!
//! Every figure is a ratio against a baseline measured in the same run, because the machines
//! these run on are shared and noisy. A figure is measured in rounds; each round measures ours
//! and the baseline(s) back to back, alternating which goes first (A B, B A, ...), so drift
//! affects both. The ratio reported is the median of the per-round ratios; "ours" and
//! "baseline" are the medians of each side.
//!
//! Each figure prints one line a script can read:
//!
//! ```text
//! bench NAME: ours X, baseline Y, ratio R (target >= T)
//! ```
//!
//! Environment:
//! - `BENCH_QUICK=1` (or the argument `--quick`): smaller workloads and 3 rounds, for a smoke
//!   run; figures from it are not for the record.
//! - `BENCH_ROUNDS=N`: rounds per figure (default 5; at least 1).
//! - `BENCH_FILTER=text`: run only the figures whose name contains `text`.
#![allow(dead_code)]

use std::time::Instant;

/// How a run is configured (from the environment and the arguments).
#[derive(Debug, Clone)]
pub struct Config {
    /// Smaller workloads, fewer rounds.
    pub quick: bool,
    /// Rounds per figure.
    pub rounds: usize,
    /// Only figures whose name contains this.
    pub filter: Option<String>,
}

impl Config {
    /// Reads `BENCH_QUICK`, `BENCH_ROUNDS`, `BENCH_FILTER` and `--quick`.
    pub fn from_env() -> Config {
        let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
            || std::env::args().any(|a| a == "--quick");
        let rounds = std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(if quick { 3 } else { 5 })
            .max(1);
        let filter = std::env::var("BENCH_FILTER").ok().filter(|f| !f.is_empty());
        Config {
            quick,
            rounds,
            filter,
        }
    }

    /// The rounds to run for a figure whose rounds are short and noisy: `BENCH_ROUNDS` when
    /// set, else `full` (or the quick default in quick mode).
    pub fn rounds_or(&self, full: usize) -> usize {
        if std::env::var_os("BENCH_ROUNDS").is_some() || self.quick {
            self.rounds
        } else {
            full.max(self.rounds)
        }
    }

    /// Whether the figure `name` is selected by `BENCH_FILTER`.
    pub fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    /// The figure [`Figure::ratio`] builds, when `BENCH_FILTER` selects its `name`.
    pub fn figure(
        &self,
        name: &str,
        unit: &'static str,
        baseline_label: &str,
        goal: Goal,
    ) -> Option<Figure> {
        self.wants(name)
            .then(|| Figure::ratio(name, unit, baseline_label, goal))
    }

    /// `full` normally, `quick` in quick mode.
    pub fn size<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// What a figure must meet: whether a higher or a lower value is better, and the bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Ours must be at least this many times the baseline (rates).
    AtLeast(f64),
    /// Ours must be at most this many times the baseline (times, sizes).
    AtMost(f64),
}

impl Goal {
    /// The bound.
    pub fn target(self) -> f64 {
        match self {
            Goal::AtLeast(t) | Goal::AtMost(t) => t,
        }
    }

    /// Whether `value` meets the bound.
    pub fn met_by(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(t) => value >= t,
            Goal::AtMost(t) => value <= t,
        }
    }

    /// The comparison, as the summary line prints it.
    pub fn op(self) -> &'static str {
        match self {
            Goal::AtLeast(_) => ">=",
            Goal::AtMost(_) => "<=",
        }
    }
}

/// One figure: samples of ours and of one baseline, with the target for their ratio.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Name printed after `bench ` (one token, no spaces).
    pub name: String,
    /// The unit of the samples, for the human table.
    pub unit: &'static str,
    /// What the baseline is, for the human table.
    pub baseline_label: String,
    /// Samples of ours, one per round.
    pub ours: Vec<f64>,
    /// Samples of the baseline, one per round (same rounds as `ours`).
    pub baseline: Vec<f64>,
    /// Whether higher or lower is better, and the target for the ratio (or for ours alone,
    /// when `absolute`).
    pub goal: Goal,
    /// When true the target applies to ours itself (in `unit`), not to the ratio.
    pub absolute: bool,
    /// A free note for the human table (lag counts, ...).
    pub note: String,
}

impl Figure {
    /// A figure comparing a rate or time of ours with a baseline.
    pub fn ratio(
        name: impl Into<String>,
        unit: &'static str,
        baseline_label: impl Into<String>,
        goal: Goal,
    ) -> Figure {
        Figure {
            name: name.into(),
            unit,
            baseline_label: baseline_label.into(),
            ours: Vec::new(),
            baseline: Vec::new(),
            goal,
            absolute: false,
            note: String::new(),
        }
    }

    /// This figure with its target applying to ours itself; the baseline is shown for scale.
    pub fn absolute(self) -> Figure {
        Figure {
            absolute: true,
            ..self
        }
    }

    /// Runs `rounds` interleaved rounds of ours (`contenders[0]`), the baseline
    /// (`contenders[1]`) and any further contenders, keeps the samples of the first two as this
    /// figure's, and returns every contender's samples.
    pub fn measure(
        &mut self,
        rounds: usize,
        contenders: &mut [&mut dyn FnMut() -> f64],
    ) -> Vec<Vec<f64>> {
        let samples = interleave(rounds, contenders);
        self.ours = samples[0].clone();
        self.baseline = samples[1].clone();
        samples
    }

    /// Measures as [`Figure::measure`], sets `note`, prints the figure ([`Figure::report`])
    /// and returns every contender's samples.
    pub fn run(
        mut self,
        rounds: usize,
        contenders: &mut [&mut dyn FnMut() -> f64],
        note: impl Into<String>,
    ) -> Vec<Vec<f64>> {
        let samples = self.measure(rounds, contenders);
        self.note = note.into();
        self.report();
        samples
    }

    /// Prints the figure ([`Figure::report`]) with these samples of ours and of the baseline
    /// (measured elsewhere) and this note.
    pub fn report_with(mut self, ours: &[f64], baseline: &[f64], note: impl Into<String>) {
        self.ours = ours.to_vec();
        self.baseline = baseline.to_vec();
        self.note = note.into();
        self.report();
    }

    /// Median of ours.
    pub fn ours_median(&self) -> f64 {
        median(&self.ours)
    }

    /// Median of the baseline.
    pub fn baseline_median(&self) -> f64 {
        median(&self.baseline)
    }

    /// Median of the per-round ratios ours / baseline.
    pub fn ratio_median(&self) -> f64 {
        median_ratio(&self.ours, &self.baseline)
    }

    /// Whether the target is met.
    pub fn passed(&self) -> bool {
        let value = if self.absolute {
            self.ours_median()
        } else {
            self.ratio_median()
        };
        self.goal.met_by(value)
    }

    /// The machine-readable summary line.
    pub fn summary_line(&self) -> String {
        let (op, bound) = (self.goal.op(), self.goal.target());
        let target = if self.absolute {
            format!("target ours {op} {bound}")
        } else {
            format!("target {op} {bound}")
        };
        format!(
            "bench {}: ours {}, baseline {}, ratio {:.3} ({target})",
            self.name,
            fmt_num(self.ours_median()),
            fmt_num(self.baseline_median()),
            self.ratio_median(),
        )
    }

    /// Prints the summary line and a short human block (samples, spread, pass/fail).
    pub fn report(&self) {
        println!("{}", self.summary_line());
        println!(
            "    {:<6} unit {}; ours vs {}; rounds {}; ours [{}]; baseline [{}]{}{}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.unit,
            self.baseline_label,
            self.ours.len(),
            fmt_list(&self.ours),
            fmt_list(&self.baseline),
            if self.note.is_empty() { "" } else { "; " },
            self.note,
        );
    }
}

/// The values, space-separated, each as [`fmt_num`] writes it.
pub fn fmt_list(v: &[f64]) -> String {
    v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(" ")
}

/// A number with about four significant digits and no exponent.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Median of the per-round ratios `a[i] / b[i]`.
pub fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&ratios)
}

/// The median (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Runs `rounds` rounds of every contender, alternating the order each round (0 1 2, 2 1 0,
/// ...), and returns the samples per contender. One unrecorded warm-up round runs first.
pub fn interleave(rounds: usize, contenders: &mut [&mut dyn FnMut() -> f64]) -> Vec<Vec<f64>> {
    let n = contenders.len();
    for c in contenders.iter_mut() {
        c();
    }
    let mut samples = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = if round % 2 == 0 { k } else { n - 1 - k };
            let value = contenders[i]();
            samples[i].push(value);
        }
    }
    samples
}

/// Seconds `f` takes.
pub fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64())
}

/// The resident set size of this process, in KiB (`VmRSS` in `/proc/self/status`).
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// The peak resident set size of this process so far, in KiB (`VmHWM` in `/proc/self/status`).
/// Process-wide and never lowered by freeing memory, so a figure that needs one workload's own
/// peak runs that workload in a fresh process ([`fresh_sample`]).
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time used by this process so far, in nanoseconds: every thread, live or exited, user
/// and system; children excluded (`clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`). That is the sum
/// `getrusage(RUSAGE_SELF)` splits into `ru_utime + ru_stime`, read at nanosecond precision
/// (the kernel's per-thread `sum_exec_runtime`, not 10 ms ticks as in `/proc/self/stat`), and
/// unlike summing `/proc/self/task/*/schedstat` it keeps the time of threads that have exited
/// (tokio's blocking pool). rustix has no `getrusage`; this needs no new dependency.
///
/// With `BENCH_NO_CPU_CLOCK` set it reads 0: under valgrind (`--tool=callgrind`, to count a
/// contender's instructions) rustix's lookup of the vDSO faults.
pub fn cpu_ns() -> u64 {
    if std::env::var_os("BENCH_NO_CPU_CLOCK").is_some() {
        return 0;
    }
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Runs this bench binary again with `args` (a sample mode the binary's `main` handles) and
/// returns what it printed on stdout, trimmed. A fresh process per sample: memory freed by one
/// workload cannot be reused by the next and hide its cost, and `VmHWM` is the sample's own.
pub fn fresh_sample(args: &[String]) -> String {
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run sample");
    assert!(out.status.success(), "sample {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Raises the soft limit on open files to the hard limit; returns `(soft, hard)` after.
pub fn raise_nofile_limit() -> (u64, u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    let now = getrlimit(Resource::Nofile);
    (
        now.current.unwrap_or(u64::MAX),
        now.maximum.unwrap_or(u64::MAX),
    )
}

/// A one-line description of the machine: cores, CPU model, memory, load.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs, {model}, {mem_gib:.1} GiB RAM, load {}",
        load.join(" ")
    )
}

/// Prints an `info NAME: MEDIAN (WHAT; rounds N: [SAMPLES])` line: a figure shown without a
/// target.
pub fn info(name: &str, what: &str, samples: &[f64]) {
    println!(
        "info {name}: {} ({what}; rounds {}: [{}])",
        fmt_num(median(samples)),
        samples.len(),
        fmt_list(samples)
    );
}

/// Prints the header of a bench binary.
pub fn header(bench: &str, cfg: &Config) {
    println!(
        "== {bench}: {} ({} rounds{}, interleaved; ratio = median of per-round ours/baseline)",
        machine(),
        cfg.rounds,
        if cfg.quick { ", QUICK" } else { "" }
    );
}

/// A multi-threaded tokio runtime with every driver on (one worker per CPU, as `#[tokio::main]`).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Reads one `200` response (head and `content-length` bytes of body) into `buf`.
pub async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) {
    let mut filled = 0;
    let total = loop {
        let n = tokio::io::AsyncReadExt::read(stream, &mut buf[filled..])
            .await
            .expect("read response");
        assert!(n > 0, "the server closed the connection");
        filled += n;
        if let Some(end) = memchr::memmem::find(&buf[..filled], b"\r\n\r\n") {
            let head = &buf[..end];
            assert!(
                head.starts_with(b"HTTP/1.1 200 "),
                "not a 200: {}",
                String::from_utf8_lossy(head)
            );
            break end + 4 + content_length(head);
        }
        assert!(filled < buf.len(), "response head over {} bytes", buf.len());
    };
    while filled < total {
        let n = tokio::io::AsyncReadExt::read(stream, &mut buf[filled..])
            .await
            .expect("read body");
        assert!(n > 0, "the server closed the connection");
        filled += n;
    }
    assert_eq!(filled, total, "one response per request");
}

/// The `content-length` of a response head (0 when absent).
pub fn content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            if !name.eq_ignore_ascii_case(b"content-length") {
                return None;
            }
            std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok()
        })
        .unwrap_or(0)
}

/// Requests per second of `request` sent to `addr` on `connections` keep-alive HTTP/1.1
/// connections for `length`, each reading the whole response (into a buffer of `buf_len` bytes,
/// allocated once per connection) before sending the next.
pub async fn http_load(
    addr: std::net::SocketAddr,
    request: std::sync::Arc<[u8]>,
    connections: usize,
    buf_len: usize,
    length: std::time::Duration,
) -> f64 {
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        streams.push(stream);
    }
    let start = Instant::now();
    let deadline = start + length;
    let mut tasks = tokio::task::JoinSet::new();
    for stream in streams {
        tasks.spawn(http_connection(stream, request.clone(), buf_len, deadline));
    }
    let mut requests = 0u64;
    while let Some(n) = tasks.join_next().await {
        requests += n.expect("client connection");
    }
    requests as f64 / start.elapsed().as_secs_f64()
}

/// One keep-alive connection of [`http_load`]: request, whole response, again, until
/// `deadline`; returns the requests made.
async fn http_connection(
    mut stream: tokio::net::TcpStream,
    request: std::sync::Arc<[u8]>,
    buf_len: usize,
    deadline: Instant,
) -> u64 {
    let mut buf = vec![0u8; buf_len];
    let mut requests = 0;
    loop {
        tokio::io::AsyncWriteExt::write_all(&mut stream, &request)
            .await
            .expect("send request");
        read_response(&mut stream, &mut buf).await;
        requests += 1;
        if Instant::now() >= deadline {
            return requests;
        }
    }
}

/// The peer (issue 18): process-wrap's tokio `CommandWrap` with the `ProcessGroup::leader()`
/// wrapper (the child leads a new process group, as ours does by default), stdin `/dev/null`,
/// stdout and stderr piped. process-wrap leaves stdio to the wrapped tokio `Command` (inherited
/// unless set); `/dev/null` is what a user capturing output sets, and what the issue measured.
pub fn peer_spawn(program: &str, args: &[String]) -> Box<dyn process_wrap::tokio::ChildWrapper> {
    use process_wrap::tokio::{CommandWrap, ProcessGroup};
    CommandWrap::with_new(program, |c| {
        c.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
    })
    .wrap(ProcessGroup::leader())
    .spawn()
    .expect("process-wrap spawn")
}

/// How the peer reads lines: tokio-util's `FramedRead` with `LinesCodec::new()` (no maximum
/// line length, as a user writes it), to end of file. Returns how many lines it read.
pub async fn peer_lines<R: tokio::io::AsyncRead + Unpin>(pipe: R) -> u64 {
    use futures_util::StreamExt;
    let mut lines = tokio_util::codec::FramedRead::new(pipe, tokio_util::codec::LinesCodec::new());
    let mut n = 0u64;
    while let Some(line) = lines.next().await {
        line.expect("LinesCodec");
        n += 1;
    }
    n
}

//! Benchmark 2, capture throughput: a child's stdout through `TokioProcessService` (capture
//! on, one subscriber counting `Output` events) against a raw tokio drain of the same producer
//! with a 64 KiB buffer, and against a Go-style reader (a line scanner with a 4 KiB buffer, a
//! `String` per line, a byte-at-a-time ring buffer under a mutex, as go-process does it).
//! Also measured, for information: the same subscriber on a bus without backpressure
//! (`Backpressure::Never`), which is faster only by letting the subscriber miss lines.
//!
//! Producers: this binary itself in producer mode (`capture --produce BYTES`: 80-byte lines
//! written in 64 KiB blocks, so producing costs next to nothing and is the same for every
//! contender) and GNU `seq 1 20000000` (short lines).
//!
//! Run: `cargo bench --bench capture` (see `docs/performance.md`).

mod common;

use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{Config, Figure, Goal};
use core_process::{
    Backpressure, BroadcastEventBus, DEFAULT_BUFFER_SIZE, EventBus, ProcessEvent, ProcessService,
    RecvError, RunOptions, TokioProcessService,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Length of a line of the 80-byte producer, newline included.
const LINE: usize = 80;

/// Producer mode: writes `bytes` bytes of 80-byte lines to stdout in 64 KiB blocks.
fn produce(bytes: u64) {
    use std::os::fd::AsFd;
    let line: Vec<u8> = (0..LINE - 1)
        .map(|i| b'a' + (i % 26) as u8)
        .chain(std::iter::once(b'\n'))
        .collect();
    let block: Vec<u8> = line.repeat(64 * 1024 / LINE);
    // Write to fd 1 directly: `Stdout` is line-buffered.
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdout");
    let mut out = std::fs::File::from(fd);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        if out.write_all(&block[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
}

/// One producer: a program and its arguments, and how many lines and bytes it writes.
#[derive(Clone)]
struct Producer {
    program: String,
    args: Vec<String>,
    lines: u64,
    bytes: u64,
}

impl Producer {
    fn lines80(bytes: u64) -> Producer {
        let exe = std::env::current_exe().expect("current exe");
        Producer {
            program: exe.to_string_lossy().into_owned(),
            args: vec!["--produce".into(), bytes.to_string()],
            lines: bytes / LINE as u64,
            bytes,
        }
    }

    fn seq(n: u64) -> Producer {
        let bytes: u64 = (1..=n).map(|i| i.to_string().len() as u64 + 1).sum();
        Producer {
            program: "seq".into(),
            args: vec!["1".into(), n.to_string()],
            lines: n,
            bytes,
        }
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd
    }
}

/// What one run through the service saw.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    lines: u64,
    lagged: u64,
}

/// MB/s through the service, with one subscriber counting the process's `Output` events, on
/// a bus with the default capacity and `backpressure`.
async fn ours(
    producer: &Producer,
    backpressure: Backpressure,
    lagged_total: &Mutex<Vec<u64>>,
) -> f64 {
    let bus = Arc::new(BroadcastEventBus::default().with_backpressure(backpressure));
    let service = TokioProcessService::new(bus.clone() as Arc<dyn EventBus>, DEFAULT_BUFFER_SIZE);
    let mut sub = bus.subscribe();
    let counter = tokio::spawn(async move {
        let mut seen = Seen::default();
        loop {
            match sub.recv().await {
                Ok(ProcessEvent::Output { .. }) => seen.lines += 1,
                Ok(ProcessEvent::Exited { .. }) => return seen,
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => seen.lagged += n,
                Err(e) => panic!("subscription ended early: {e}"),
            }
        }
    });
    let start = Instant::now();
    let p = service
        .start(RunOptions::new(&producer.program).args(producer.args.clone()))
        .await
        .expect("start producer");
    p.wait().await.expect("producer failed");
    let seen = counter.await.expect("counter");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        seen.lines + seen.lagged,
        producer.lines,
        "every line is either seen or reported missed"
    );
    lagged_total.lock().unwrap().push(seen.lagged);
    producer.bytes as f64 / secs / 1e6
}

/// MB/s through the service with capture on but nobody subscribed: the reader's side alone
/// (pipe, ring buffer, batching), without the per-line work of a subscriber.
async fn ours_unsubscribed(producer: &Producer) -> f64 {
    let bus = Arc::new(BroadcastEventBus::default());
    let service = TokioProcessService::new(bus as Arc<dyn EventBus>, DEFAULT_BUFFER_SIZE);
    let start = Instant::now();
    let p = service
        .start(RunOptions::new(&producer.program).args(producer.args.clone()))
        .await
        .expect("start producer");
    p.wait().await.expect("producer failed");
    let secs = start.elapsed().as_secs_f64();
    producer.bytes as f64 / secs / 1e6
}

/// MB/s of a raw tokio drain with a 64 KiB buffer.
async fn raw(producer: &Producer) -> f64 {
    let start = Instant::now();
    let mut child = producer.command().spawn().expect("spawn producer");
    let mut out = child.stdout.take().expect("stdout");
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = out.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(child.wait().await.expect("wait").success());
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(total, producer.bytes);
    producer.bytes as f64 / secs / 1e6
}

/// The ring buffer of go-process: a mutex, then one byte at a time with a modulo per byte.
struct GoRingBuffer {
    inner: Mutex<GoRing>,
}

struct GoRing {
    data: Vec<u8>,
    start: usize,
    end: usize,
    full: bool,
}

impl GoRingBuffer {
    fn new(size: usize) -> Self {
        GoRingBuffer {
            inner: Mutex::new(GoRing {
                data: vec![0; size],
                start: 0,
                end: 0,
                full: false,
            }),
        }
    }

    fn write(&self, p: &[u8]) {
        let mut rb = self.inner.lock().unwrap();
        let size = rb.data.len();
        for &b in p {
            let end = rb.end;
            rb.data[end] = b;
            rb.end = (end + 1) % size;
            if rb.full {
                rb.start = (rb.start + 1) % size;
            }
            if rb.end == rb.start {
                rb.full = true;
            }
        }
    }
}

/// MB/s of the Go-style design: a line scanner (4 KiB buffer), a `String` per line, and the
/// line plus a newline written into a byte-loop ring buffer. No event is sent per line, which
/// flatters this baseline.
async fn go_style(producer: &Producer) -> f64 {
    let start = Instant::now();
    let mut child = producer.command().spawn().expect("spawn producer");
    let out = child.stdout.take().expect("stdout");
    let ring = GoRingBuffer::new(DEFAULT_BUFFER_SIZE);
    let mut reader = BufReader::with_capacity(4096, out);
    let mut raw_line = Vec::new();
    let mut lines = 0u64;
    loop {
        raw_line.clear();
        let n = reader.read_until(b'\n', &mut raw_line).await.expect("read");
        if n == 0 {
            break;
        }
        if raw_line.last() == Some(&b'\n') {
            raw_line.pop();
        }
        // bufio.Scanner's Text() allocates a string per line.
        let text = String::from_utf8_lossy(&raw_line).into_owned();
        ring.write(text.as_bytes());
        ring.write(b"\n");
        lines += 1;
    }
    assert!(child.wait().await.expect("wait").success());
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(lines, producer.lines);
    producer.bytes as f64 / secs / 1e6
}

fn bench(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    label: &str,
    producer: Producer,
    go: Producer,
) {
    let lagged = Mutex::new(Vec::new());
    let lagged_lossy = Mutex::new(Vec::new());
    let mut a = || rt.block_on(ours(&producer, Backpressure::default(), &lagged));
    let mut b = || rt.block_on(raw(&producer));
    let mut c = || rt.block_on(go_style(&go));
    let mut d = || rt.block_on(ours_unsubscribed(&producer));
    let mut e = || rt.block_on(ours(&producer, Backpressure::Never, &lagged_lossy));
    let samples = common::interleave(cfg.rounds, &mut [&mut a, &mut b, &mut c, &mut d, &mut e]);
    let lagged = lagged.into_inner().unwrap();
    let lagged_max = lagged.iter().copied().max().unwrap_or(0);
    let lagged_lossy = lagged_lossy.into_inner().unwrap();

    let mut vs_raw = Figure::ratio(
        format!("capture_{label}"),
        "MB/s",
        "raw tokio drain, 64 KiB buffer",
        Goal::AtLeast,
        if label == "seq" { 0.60 } else { 0.80 },
    );
    vs_raw.ours = samples[0].clone();
    vs_raw.baseline = samples[1].clone();
    vs_raw.note = format!(
        "{} MB, {} lines per run; lines missed by the subscriber per run (incl. warm-up): {lagged:?}",
        producer.bytes / 1_000_000,
        producer.lines,
    );
    vs_raw.report();

    let mut reader = Figure::ratio(
        format!("capture_{label}_no_subscriber"),
        "MB/s",
        "raw tokio drain, 64 KiB buffer",
        Goal::AtLeast,
        0.80,
    );
    reader.ours = samples[3].clone();
    reader.baseline = samples[1].clone();
    reader.note = "capture on, nobody subscribed: the reader's side alone".into();
    reader.report();

    let mut vs_go = Figure::ratio(
        format!("capture_{label}_vs_go_style"),
        "MB/s",
        "Go-style scanner + byte-loop ring",
        Goal::AtLeast,
        8.0,
    );
    vs_go.ours = samples[0].clone();
    vs_go.baseline = samples[2].clone();
    vs_go.note = format!(
        "Go-style runs on {} MB ({} lines)",
        go.bytes / 1_000_000,
        go.lines
    );
    vs_go.report();

    let mut lag = Figure::absolute(
        format!("capture_{label}_lines_missed"),
        "lines",
        "none",
        Goal::AtMost,
        0.0,
    );
    lag.ours = vec![lagged_max as f64];
    lag.baseline = vec![0.0];
    lag.note = "the worst run; the counting subscriber must see every line".into();
    lag.report();

    // What backpressure costs: the same subscriber on a bus that never makes readers wait
    // (and so lets it miss lines).
    println!(
        "info capture_{label}_without_backpressure: {} MB/s, ratio with backpressure / without {} (lines missed per run without: {lagged_lossy:?})",
        common::fmt_num(common::median(&samples[4])),
        common::fmt_num(common::median_ratio(&samples[0], &samples[4])),
    );
}

/// Nanoseconds per line a subscriber spends turning batches into `Output` events, measured
/// alone on one thread with hot caches: a 64 KiB batch of `line_len`-byte lines is published,
/// then received and counted, and again. No pipe, no producer, no other thread: the floor of
/// the per-line cost on the subscriber's side, whatever the reader does.
fn subscriber_ns_per_line(line_len: usize, lines: u64) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let line: Vec<u8> = (0..line_len - 1)
        .map(|i| b'0' + (i % 10) as u8)
        .chain(std::iter::once(b'\n'))
        .collect();
    let per_batch = 64 * 1024 / line_len;
    let block = line.repeat(per_batch);
    let batches = (lines as usize).div_ceil(per_batch);
    let bus = BroadcastEventBus::new(4);
    let mut sub = bus.subscribe();
    let id: core_process::ProcessId = "proc-1".into();
    rt.block_on(async {
        let start = Instant::now();
        let mut n = 0u64;
        for _ in 0..batches {
            bus.publish_output(core_process::event::OutputBatch::new(
                id.clone(),
                core_process::Stream::Stdout,
                block.clone(),
            ));
            for _ in 0..per_batch {
                if let Ok(ProcessEvent::Output { .. }) = sub.recv().await {
                    n += 1;
                }
            }
        }
        start.elapsed().as_secs_f64() * 1e9 / n as f64
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    if let Some("--produce") = args.next().as_deref() {
        let bytes = args
            .next()
            .and_then(|b| b.parse().ok())
            .expect("--produce BYTES");
        produce(bytes);
        return;
    }

    let cfg = Config::from_env();
    common::header("capture", &cfg);
    if cfg.wants("capture_subscriber") {
        for line_len in [80, 9] {
            let ns: Vec<f64> = (0..cfg.rounds)
                .map(|_| subscriber_ns_per_line(line_len, cfg.size(4_000_000, 1_000_000)))
                .collect();
            println!(
                "info capture_subscriber_ns_per_line_{line_len}B: {} (one thread, hot caches, no pipe; rounds {}: [{}])",
                common::fmt_num(common::median(&ns)),
                ns.len(),
                ns.iter()
                    .map(|x| common::fmt_num(*x))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    let rt = common::runtime();
    if cfg.wants("capture_80B") {
        let full = cfg.size(1_000_000_000, 200_000_000);
        bench(
            &cfg,
            &rt,
            "80B",
            Producer::lines80(full),
            Producer::lines80(full / 5),
        );
    }
    if cfg.wants("capture_seq") {
        let n = cfg.size(20_000_000, 4_000_000);
        bench(&cfg, &rt, "seq", Producer::seq(n), Producer::seq(n / 4));
    }
}

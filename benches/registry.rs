//! Benchmark 6, registry: `FileRegistry::list` over 1,000 entries, and the rate of
//! `register` + `unregister` pairs; against the raw filesystem work of the same job, with
//! `std::fs` and `serde_json` in the same round.
//!
//! Setup: a `FileRegistry` in a temp directory (under `TMPDIR`, else `/tmp`: the bench prints
//! it, since what a sync costs depends on its filesystem) holding 1,000 entries registered with
//! this process's pid, so they are alive and `list` keeps them all.
//!
//! Two baselines per figure, both by hand with `std::fs` and `serde_json`, in the same rounds:
//!
//! - *the same work*: what the registry must do for its contract, without the registry —
//!   for `list`, the directory read, each file read and parsed into `DaemonEntry`, each entry's
//!   liveness checked (`DaemonEntry::is_alive`: `kill(pid, 0)` and the start time from
//!   `/proc/<pid>/stat`), the sort; for `register` + `unregister`, the start time read from
//!   `/proc`, the entry serialised, the directory's lock file taken, a temp file written and
//!   synced, renamed over the entry, the directory synced, the lock released; then the lock
//!   again, the file read back and parsed (only our own entry is removed) and a remove. The figure's ratio is against this: the registry's own overhead.
//! - *the bare minimum* (an `info` line): the same without the liveness check (`list`), or
//!   without the start time and the lock (`register` + `unregister`): what those cost.
//!
//! Run: `cargo bench --bench registry` (see `docs/performance.md`).

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Instant, SystemTime};

use common::{Config, Goal};
use core_process::{DaemonEntry, FileRegistry, Registry};

/// An entry of this process, as a daemon would register itself.
fn entry(code: &str, daemon: &str) -> DaemonEntry {
    let mut e = DaemonEntry::new(code, daemon);
    e.pid = std::process::id();
    e.health = "127.0.0.1:9090".into();
    e.project = "bench".into();
    e.binary = "/usr/local/bin/bench-daemon".into();
    e
}

/// Milliseconds one `list()` takes; checks it saw every entry.
async fn ours_list(registry: &FileRegistry, entries: usize) -> f64 {
    let start = Instant::now();
    let list = registry.list().await.expect("list");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert_eq!(list.len(), entries, "every entry is alive");
    ms
}

/// Milliseconds the directory read, file reads, parses (and, when `alive`, the liveness
/// checks) and sort take by hand.
fn raw_list(dir: &Path, entries: usize, alive: bool) -> f64 {
    let start = Instant::now();
    let mut list: Vec<DaemonEntry> = Vec::new();
    for item in std::fs::read_dir(dir).expect("read dir") {
        let path = item.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read entry");
        let entry: DaemonEntry = serde_json::from_slice(&bytes).expect("parse entry");
        if !alive || entry.is_alive() {
            list.push(entry);
        }
    }
    list.sort_by(|a, b| (&a.code, &a.daemon).cmp(&(&b.code, &b.daemon)));
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert_eq!(list.len(), entries);
    ms
}

/// `register` + `unregister` pairs per second through the registry.
async fn ours_pairs(registry: &FileRegistry, pairs: usize) -> f64 {
    let start = Instant::now();
    for i in 0..pairs {
        let daemon = format!("rate-{i}");
        registry
            .register(entry("churn", &daemon))
            .await
            .expect("register");
        registry
            .unregister("churn", &daemon)
            .await
            .expect("unregister");
    }
    pairs as f64 / start.elapsed().as_secs_f64()
}

/// The start time of `pid` in clock ticks (field 22 of `/proc/<pid>/stat`).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The registry directory's lock file, locked (unlocked when dropped).
struct Lock(std::fs::File);

impl Lock {
    fn take(dir: &Path) -> Lock {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(".registry.lock"))
            .expect("open lock");
        fs4::FileExt::lock(&file).expect("lock");
        Lock(file)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs4::FileExt::unlock(&self.0);
    }
}

/// Write + remove pairs per second by hand, same directory, same JSON: a durable atomic write
/// (temp file, sync, rename, directory sync), then a remove. With `full`, also the start
/// time read from `/proc`, each step under the directory's lock file and, before the remove,
/// the file read back to check that it is ours, as the registry does.
fn raw_pairs(dir: &Path, pairs: usize, full: bool) -> f64 {
    let start = Instant::now();
    for i in 0..pairs {
        let mut e = entry("raw", &format!("rate-{i}"));
        e.started = SystemTime::now();
        if full {
            e.pid_start_ticks = start_ticks(e.pid);
        }
        let bytes = serde_json::to_vec_pretty(&e).expect("serialise");
        let path = dir.join(format!("raw-rate-{i}.json"));
        let tmp = dir.join(format!(".raw-rate-{i}.json.tmp"));
        {
            let _lock = full.then(|| Lock::take(dir));
            let mut file = std::fs::File::create_new(&tmp).expect("create temp");
            file.write_all(&bytes).expect("write temp");
            file.sync_all().expect("sync temp");
            drop(file);
            std::fs::rename(&tmp, &path).expect("rename");
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .expect("sync dir");
        }
        let _lock = full.then(|| Lock::take(dir));
        if full {
            let read = std::fs::read(&path).expect("read back");
            let ours: DaemonEntry = serde_json::from_slice(&read).expect("parse");
            assert_eq!((ours.pid, ours.pid_start_ticks), (e.pid, e.pid_start_ticks));
        }
        std::fs::remove_file(&path).expect("remove");
    }
    pairs as f64 / start.elapsed().as_secs_f64()
}

/// Microseconds per `DaemonEntry::is_alive` of a live entry (the liveness check `list` adds).
fn alive_us(n: usize) -> f64 {
    let mut e = entry("x", "y");
    e.pid_start_ticks = Some(0);
    let start = Instant::now();
    let mut alive = 0;
    for _ in 0..n {
        alive += usize::from(std::hint::black_box(&e).is_alive());
    }
    std::hint::black_box(alive);
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let cfg = Config::from_env();
    common::header("registry", &cfg);
    let rt = common::runtime();
    let entries = 1000;
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("daemons");
    let registry = FileRegistry::new(&dir);

    let (_, secs) = common::time(|| {
        rt.block_on(async {
            for i in 0..entries {
                registry
                    .register(entry("bench", &format!("d{i:04}")))
                    .await
                    .expect("register");
            }
        })
    });
    println!(
        "    {entries} entries registered in {:.2} s ({} µs each) in {}",
        secs,
        common::fmt_num(secs * 1e6 / entries as f64),
        dir.display()
    );

    if let Some(fig) = cfg.figure(
        "registry_list_1000_ms",
        "ms per list() of 1,000 entries",
        "the same work by hand: read_dir, read, serde_json parse, is_alive, sort",
        Goal::AtMost(1.10),
    ) {
        let mut a = || rt.block_on(ours_list(&registry, entries));
        let mut b = || raw_list(&dir, entries, true);
        let mut c = || raw_list(&dir, entries, false);
        let samples = fig.run(cfg.rounds_or(9), &mut [&mut a, &mut b, &mut c], "");
        let per =
            |v: &[f64]| -> Vec<f64> { v.iter().map(|ms| ms * 1e3 / entries as f64).collect() };
        let ours = per(&samples[0]);
        common::info(
            "registry_list_us_per_entry",
            "ours: list() time / 1,000",
            &ours,
        );
        let bare = per(&samples[2]);
        let ratios = common::median_ratio(&samples[0], &samples[2]);
        common::info(
            "registry_list_bare_us_per_entry",
            &format!(
                "by hand without the liveness check: read_dir, read, parse, sort / 1,000; ours is {} × it",
                common::fmt_num(ratios)
            ),
            &bare,
        );
        let n = cfg.size(20_000, 5_000);
        let alive: Vec<f64> = (0..cfg.rounds).map(|_| alive_us(n)).collect();
        common::info(
            "registry_is_alive_us",
            "DaemonEntry::is_alive of a live entry, alone: kill(pid, 0) + read /proc/<pid>/stat",
            &alive,
        );
    }

    if let Some(fig) = cfg.figure(
        "registry_register_unregister_per_s",
        "register+unregister pairs/s",
        "the same work by hand: start time, lock, temp, sync, rename, sync dir; lock, remove",
        Goal::AtLeast(0.90),
    ) {
        let pairs = cfg.size(100, 30);
        let mut a = || rt.block_on(ours_pairs(&registry, pairs));
        let mut b = || raw_pairs(&dir, pairs, true);
        let mut c = || raw_pairs(&dir, pairs, false);
        let note = format!("{pairs} pairs per round, beside the {entries} entries");
        let samples = fig.run(cfg.rounds_or(9), &mut [&mut a, &mut b, &mut c], note);
        let us: Vec<f64> = samples[0].iter().map(|r| 1e6 / r).collect();
        common::info(
            "registry_pair_us",
            "ours: µs per register + unregister",
            &us,
        );
        let bare: Vec<f64> = samples[2].iter().map(|r| 1e6 / r).collect();
        let ratios = common::median_ratio(&samples[0], &samples[2]);
        common::info(
            "registry_pair_bare_us",
            &format!(
                "by hand without the start time and the lock: durable atomic write + remove; ours is {} × its rate",
                common::fmt_num(ratios)
            ),
            &bare,
        );
    }
}

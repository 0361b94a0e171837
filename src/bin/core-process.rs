//! `core-process`: operate the daemons of the registry (go-process's too) from a shell.
//!
//! Built with the `cli` feature: `cargo install core-process --features cli`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use core_process::services::control::{ControlEndpoint, token_path};
use core_process::{
    BroadcastEventBus, DaemonEntry, Error, EventBus, FileRegistry, ProcessEvent, ProcessService,
    Registry, RunOptions, Signal, Stream, TokioProcessService,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Exit codes scripts can rely on.
mod exit {
    /// Done.
    pub(super) const OK: u8 = 0;
    /// It failed: the daemon answered an error, is unhealthy, cannot be reached.
    pub(super) const FAILED: u8 = 1;
    /// Bad usage (clap's own code).
    #[allow(dead_code)]
    pub(super) const USAGE: u8 = 2;
    /// No such daemon in the registry (or its entry was dead and is pruned).
    pub(super) const NOT_FOUND: u8 = 3;
    /// Refused: the entry's pid now belongs to another process.
    pub(super) const REFUSED: u8 = 4;
    /// The timeout passed (`stop` without `--force`, `wait-health`).
    pub(super) const TIMEOUT: u8 = 5;
    /// `run`: the command timed out (as timeout(1)).
    pub(super) const RUN_TIMED_OUT: u8 = 124;
    /// `run`: the command could not be started.
    pub(super) const RUN_NOT_STARTED: u8 = 125;
}

const AFTER_HELP: &str = "\
Exit codes:
  0    done
  1    failed (an error answer, unhealthy, unreachable)
  2    bad usage
  3    no such daemon (or its entry was dead and is now pruned)
  4    refused: the entry's pid now belongs to another process
  5    timed out (stop without --force, wait-health)
  run: the command's own exit code; 124 timed out; 125 not started; 128+N killed by signal N

Examples:
  core-process list
  core-process list --json | jq '.[].pid'
  core-process status myapp/server
  core-process logs myapp/server proc-1 -f
  core-process stop myapp/server --timeout 30s --force
  core-process wait-health 127.0.0.1:9090 --timeout 5s
  core-process run --timeout 10m --grace 5s -- make test

The registry is ~/.core/daemons/ (shared with go-process) unless --registry or
CORE_PROCESS_REGISTRY says otherwise.";

/// Operate the daemons of the core-process / go-process registry.
#[derive(Parser, Debug)]
#[command(name = "core-process", version, about = "Operate the daemons of the core-process / go-process registry", after_help = AFTER_HELP)]
struct Cli {
    /// The registry directory [default: ~/.core/daemons]
    #[arg(long, global = true, env = "CORE_PROCESS_REGISTRY")]
    registry: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every daemon in the registry, with pid, uptime, live health and readiness.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One daemon: its entry, /health?verbose, /ready, its processes and supervised processes.
    Status {
        /// CODE/DAEMON
        target: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A daemon's process output, through its control API.
    Logs {
        /// CODE/DAEMON
        target: String,
        /// The process id (`proc-1`); every process when left out.
        process: Option<String>,
        /// Keep following new output.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of what is already there.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Stop a daemon: SIGTERM (after checking its pid is still that daemon), wait until it is
    /// gone and its entry removed.
    Stop {
        /// CODE/DAEMON
        target: String,
        /// How long to wait (500ms, 30s, 2m).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Send SIGKILL when the timeout passes.
        #[arg(long)]
        force: bool,
    },
    /// Wait until http://ADDR/health answers 200.
    WaitHealth {
        /// host:port
        addr: String,
        /// How long to wait.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Run a command with a timeout; on timeout or Ctrl-C its whole process tree is stopped.
    Run {
        /// Stop it after this long.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// How long the stop signal has before SIGKILL.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        grace: Duration,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (500ms, 30s, 2m, 1h)"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("`{text}`: {e}"))
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

type Outcome = Result<u8, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(fail(exit::FAILED, format!("cannot start a runtime: {e}"))),
    };
    let dir = cli
        .registry
        .clone()
        .unwrap_or_else(FileRegistry::default_dir);
    match runtime.block_on(dispatch(cli.command, dir)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => report(failure),
    }
}

fn report(failure: Failure) -> ExitCode {
    let mut stderr = std::io::stderr();
    let prefix = if stderr.is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        "\x1b[1;31merror:\x1b[0m"
    } else {
        "error:"
    };
    let _ = writeln!(stderr, "{prefix} {}", failure.message);
    ExitCode::from(failure.code)
}

async fn dispatch(command: Command, dir: PathBuf) -> Outcome {
    match command {
        Command::List { json } => list(&dir, json).await,
        Command::Status { target, json } => status(&dir, &target, json).await,
        Command::Logs {
            target,
            process,
            follow,
            tail,
        } => logs(&dir, &target, process.as_deref(), follow, tail).await,
        Command::Stop {
            target,
            timeout,
            force,
        } => stop(&dir, &target, timeout, force).await,
        Command::WaitHealth { addr, timeout } => {
            if core_process::wait_for_health(&addr, timeout).await {
                println!("healthy: {addr}");
                Ok(exit::OK)
            } else {
                Err(fail(
                    exit::TIMEOUT,
                    format!("{addr}/health did not answer 200 within {timeout:?}"),
                ))
            }
        }
        Command::Run {
            timeout,
            grace,
            command,
        } => run(timeout, grace, command).await,
    }
}

// ---- the registry, read as files (to show dead entries before they are pruned) ----

/// Every entry file of `dir` that parses, sorted, with whether it is alive.
fn read_entries(dir: &Path) -> Result<Vec<(DaemonEntry, bool)>, Failure> {
    let read_dir = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(fail(
                exit::FAILED,
                format!("cannot read registry {}: {e}", dir.display()),
            ));
        }
    };
    let mut entries: Vec<(DaemonEntry, bool)> = read_dir
        .filter_map(|item| item.ok().map(|item| item.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .filter_map(|path| std::fs::read(&path).ok())
        .filter_map(|bytes| serde_json::from_slice::<DaemonEntry>(&bytes).ok())
        .map(|entry| {
            let alive = entry.is_alive();
            (entry, alive)
        })
        .collect();
    entries.sort_by(|(a, _), (b, _)| (&a.code, &a.daemon).cmp(&(&b.code, &b.daemon)));
    Ok(entries)
}

fn split_target(target: &str) -> Result<(&str, &str), Failure> {
    target
        .split_once('/')
        .filter(|(c, d)| !c.is_empty() && !d.is_empty())
        .ok_or_else(|| {
            fail(
                exit::USAGE,
                format!("`{target}`: expected CODE/DAEMON (myapp/server)"),
            )
        })
}

/// The live entry for `target`; a dead one is pruned and reported as not found.
async fn find(dir: &Path, target: &str) -> Result<DaemonEntry, Failure> {
    let (code, daemon) = split_target(target)?;
    let registry = FileRegistry::new(dir);
    match registry.get(code, daemon).await {
        Ok(Some(entry)) => Ok(entry),
        Ok(None) => Err(fail(
            exit::NOT_FOUND,
            format!(
                "no running daemon {code}/{daemon} in {} (a dead entry is pruned)",
                dir.display()
            ),
        )),
        Err(e) => Err(fail(exit::FAILED, e.to_string())),
    }
}

// ---- a minimal HTTP/1.0 client ----

const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A connection to a health server or a control API: TCP or a unix socket.
trait Connection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Connection for T {}

/// Connects to `addr` (`IP:PORT`, or `unix:PATH` for a control API on a unix socket) and
/// sends a GET of `target`.
async fn connect(
    addr: &str,
    target: &str,
    token: Option<&str>,
) -> std::io::Result<Box<dyn Connection>> {
    let (mut stream, host): (Box<dyn Connection>, &str) =
        match addr.parse::<ControlEndpoint>() {
            Ok(ControlEndpoint::Unix(path)) => (
                Box::new(tokio::net::UnixStream::connect(&path).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?),
                "localhost",
            ),
            _ => (Box::new(tokio::net::TcpStream::connect(addr).await?), addr),
        };
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {target} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

/// `(status, body)` of a GET, within `timeout`.
async fn get(
    addr: &str,
    target: &str,
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = connect(addr, target, token).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not HTTP"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ))
        })
}

/// The entry's control API address and token, or why there is none.
fn control_of(dir: &Path, entry: &DaemonEntry) -> Result<(String, String), Failure> {
    if entry.control.is_empty() {
        return Err(fail(
            exit::FAILED,
            format!(
                "{}/{} publishes no control API (build it with feature `control`)",
                entry.code, entry.daemon
            ),
        ));
    }
    let path = token_path(dir, entry).map_err(|e| fail(exit::FAILED, e.to_string()))?;
    let token = std::fs::read_to_string(&path).map_err(|e| {
        fail(
            exit::FAILED,
            format!("cannot read the control token {}: {e}", path.display()),
        )
    })?;
    Ok((entry.control.clone(), token.trim().to_string()))
}

async fn api(addr: &str, token: &str, target: &str) -> Result<String, Failure> {
    match get(addr, target, Some(token), Duration::from_secs(10)).await {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => {
            let error = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(body);
            Err(fail(
                exit::FAILED,
                format!("GET {target}: {status}: {error}"),
            ))
        }
        Err(e) => Err(fail(exit::FAILED, format!("control API {addr}: {e}"))),
    }
}

// ---- list ----

fn uptime(started: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(started)
        .unwrap_or_default()
        .as_secs();
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `(health, ready)` probed live: `"ok"`, `"unhealthy"`, `"unreachable"`, or none without a
/// health address.
async fn probe(entry: &DaemonEntry) -> (Option<&'static str>, Option<bool>) {
    if entry.health.is_empty() {
        return (None, None);
    }
    let health = match get(&entry.health, "/health", None, PROBE_TIMEOUT).await {
        Ok((200, _)) => "ok",
        Ok(_) => "unhealthy",
        Err(_) => "unreachable",
    };
    let ready = match get(&entry.health, "/ready", None, PROBE_TIMEOUT).await {
        Ok((200, _)) => Some(true),
        Ok((503, _)) => Some(false),
        _ => None,
    };
    (Some(health), ready)
}

async fn list(dir: &Path, as_json: bool) -> Outcome {
    let entries = read_entries(dir)?;
    let registry = FileRegistry::new(dir);
    let mut rows = Vec::new();
    for (entry, alive) in &entries {
        let (health, ready) = if *alive {
            probe(entry).await
        } else {
            // Dead: prune it now (get prunes what it finds dead), and show it as pruned.
            let _ = registry.get(&entry.code, &entry.daemon).await;
            (None, None)
        };
        rows.push(json!({
            "code": entry.code,
            "daemon": entry.daemon,
            "pid": entry.pid,
            "state": if *alive { "running" } else { "pruned" },
            "started": humantime(entry.started),
            "uptime_secs": alive.then(|| SystemTime::now().duration_since(entry.started).unwrap_or_default().as_secs()),
            "health_addr": (!entry.health.is_empty()).then_some(&entry.health),
            "health": health,
            "ready": ready,
            "control": (!entry.control.is_empty()).then_some(&entry.control),
            "project": (!entry.project.is_empty()).then_some(&entry.project),
        }));
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        println!("no daemons in {}", dir.display());
        return Ok(exit::OK);
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header([
        "DAEMON", "PID", "STATE", "UPTIME", "HEALTH", "READY", "CONTROL",
    ]);
    for ((entry, alive), row) in entries.iter().zip(&rows) {
        let dash = || "-".to_string();
        table.add_row([
            format!("{}/{}", entry.code, entry.daemon),
            entry.pid.to_string(),
            row["state"].as_str().unwrap_or_default().to_string(),
            if *alive {
                uptime(entry.started)
            } else {
                dash()
            },
            row["health"].as_str().map_or_else(dash, str::to_string),
            row["ready"]
                .as_bool()
                .map_or_else(dash, |r| if r { "yes" } else { "no" }.to_string()),
            row["control"].as_str().map_or_else(dash, str::to_string),
        ]);
    }
    println!("{table}");
    Ok(exit::OK)
}

fn humantime(t: SystemTime) -> String {
    // The entry's own serialisation is RFC 3339: reuse it.
    serde_json::to_value(DaemonEntry {
        started: t,
        ..DaemonEntry::new("x", "y")
    })
    .ok()
    .and_then(|v| v["started"].as_str().map(str::to_string))
    .unwrap_or_default()
}

// ---- status ----

async fn status(dir: &Path, target: &str, as_json: bool) -> Outcome {
    let entry = find(dir, target).await?;
    let (health, ready) = if entry.health.is_empty() {
        (None, None)
    } else {
        let health = get(
            &entry.health,
            "/health?verbose",
            None,
            Duration::from_secs(2),
        )
        .await
        .ok();
        let ready = get(&entry.health, "/ready", None, Duration::from_secs(2))
            .await
            .ok()
            .map(|(s, _)| s == 200);
        (health, ready)
    };
    let (processes, supervised) = match control_of(dir, &entry) {
        Ok((addr, token)) => (
            Some(api(&addr, &token, "/processes").await?),
            Some(api(&addr, &token, "/supervised").await?),
        ),
        Err(_) => (None, None),
    };
    let supervised: Option<Vec<Value>> =
        supervised.map(|s| serde_json::from_str(&s).unwrap_or_default());
    let healthy = health.as_ref().is_none_or(|(s, _)| *s == 200);
    if as_json {
        let out = json!({
            "entry": serde_json::to_value(&entry).unwrap_or_default(),
            "health": health.as_ref().map(|(_, body)| serde_json::from_str::<Value>(body).unwrap_or(Value::String(body.clone()))),
            "healthy": health.as_ref().map(|(s, _)| *s == 200),
            "ready": ready,
            "processes": processes.as_deref().map(|p| serde_json::from_str::<Value>(p).unwrap_or_default()),
            "supervised": supervised,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "{}/{}  pid {}  up {}",
            entry.code,
            entry.daemon,
            entry.pid,
            uptime(entry.started)
        );
        if let Some((status, body)) = &health {
            println!("health  {} ({status}): {}", entry.health, body.trim());
        } else if !entry.health.is_empty() {
            println!("health  {}: unreachable", entry.health);
        }
        if let Some(r) = ready {
            println!("ready   {}", if r { "yes" } else { "no" });
        }
        if let Some(p) = processes {
            let infos: Vec<Value> = serde_json::from_str(&p).unwrap_or_default();
            let mut table = comfy_table::Table::new();
            table.load_preset(comfy_table::presets::NOTHING);
            table.set_header(["PROCESS", "PID", "STATUS", "COMMAND"]);
            for i in infos {
                table.add_row([
                    i["id"].as_str().unwrap_or_default().to_string(),
                    i["pid"].to_string(),
                    i["status"].as_str().unwrap_or_default().to_string(),
                    command_cell(&i),
                ]);
            }
            println!("{table}");
        }
        if let Some(rows) = supervised.filter(|r| !r.is_empty()) {
            println!("{}", supervised_table(&rows));
        }
    }
    Ok(if healthy { exit::OK } else { exit::FAILED })
}

/// The table of supervised processes: id, state, restarts, current pid, last exit.
fn supervised_table(rows: &[Value]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header([
        "SUPERVISED",
        "STATE",
        "RESTARTS",
        "PID",
        "LAST EXIT",
        "COMMAND",
    ]);
    let dash = || "-".to_string();
    for s in rows {
        let state = &s["state"];
        let name = state["state"].as_str().unwrap_or_default();
        let state = match name {
            "running" if state["ready"] == true => "running (ready)".to_string(),
            "running" => "running (not ready)".to_string(),
            "backoff" => format!("backoff ({}s)", state["delay"]),
            "fatal" => format!("fatal: {}", state["reason"].as_str().unwrap_or_default()),
            other => other.to_string(),
        };
        let last_exit = &s["last_exit"];
        let last_exit = if last_exit.is_null() {
            dash()
        } else {
            last_exit["reason"]
                .as_str()
                .map_or_else(dash, str::to_string)
        };
        table.add_row([
            s["id"].as_str().unwrap_or_default().to_string(),
            state,
            s["restarts"].to_string(),
            s["pid"].as_u64().map_or_else(dash, |p| p.to_string()),
            last_exit,
            command_cell(s),
        ]);
    }
    table
}

/// The COMMAND cell of a process or supervised process as the API gives it: `command` and its
/// `args`, space-separated.
fn command_cell(info: &Value) -> String {
    let args: Vec<&str> = info["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!(
        "{} {}",
        info["command"].as_str().unwrap_or_default(),
        args.join(" ")
    )
}

// ---- logs ----

async fn logs(
    dir: &Path,
    target: &str,
    process: Option<&str>,
    follow: bool,
    tail: Option<usize>,
) -> Outcome {
    let entry = find(dir, target).await?;
    let (addr, token) = control_of(dir, &entry)?;
    let ids: Vec<String> = match process {
        Some(id) => vec![id.to_string()],
        None => {
            let infos: Vec<Value> =
                serde_json::from_str(&api(&addr, &token, "/processes").await?).unwrap_or_default();
            infos
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        }
    };
    let prefix = process.is_none();
    // Following: subscribe first, so no line falls between the tail and the stream.
    let events = if follow {
        let query = process.map(|p| format!("?process={p}")).unwrap_or_default();
        let stream = connect(&addr, &format!("/events{query}"), Some(&token))
            .await
            .map_err(|e| fail(exit::FAILED, format!("control API {addr}: {e}")))?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader
            .read_line(&mut status_line)
            .await
            .map_err(|e| fail(exit::FAILED, format!("control API {addr}: {e}")))?;
        if !status_line.contains(" 200 ") {
            // Read the error body for the message.
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest).await;
            let body = rest.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            return Err(fail(
                exit::FAILED,
                format!("GET /events: {}: {}", status_line.trim(), body.trim()),
            ));
        }
        // Skip the headers.
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).await.unwrap_or(0);
            if n == 0 || line == "\r\n" {
                break;
            }
        }
        Some(reader)
    } else {
        None
    };
    let mut stdout = std::io::stdout();
    for id in &ids {
        let query = tail.map(|n| format!("?tail={n}")).unwrap_or_default();
        let text = api(&addr, &token, &format!("/processes/{id}/output{query}")).await?;
        for line in text.lines() {
            if prefix {
                let _ = writeln!(stdout, "[{id}] {line}");
            } else {
                let _ = writeln!(stdout, "{line}");
            }
        }
    }
    let _ = stdout.flush();
    let Some(mut reader) = events else {
        return Ok(exit::OK);
    };
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return Ok(exit::OK),
            Ok(_) => {}
        }
        let Some(data) = line.trim_end().strip_prefix("data:") else {
            continue;
        };
        if let Ok(event) = serde_json::from_str::<ProcessEvent>(data) {
            match event {
                ProcessEvent::Output { id, line, stream } => {
                    let text = line.to_string();
                    let out: &mut dyn Write = if stream == Stream::Stderr {
                        &mut std::io::stderr()
                    } else {
                        &mut stdout
                    };
                    let _ = if prefix {
                        writeln!(out, "[{id}] {text}")
                    } else {
                        writeln!(out, "{text}")
                    };
                    let _ = out.flush();
                }
                ProcessEvent::Exited { ref id, .. } | ProcessEvent::Killed { ref id, .. }
                    if process == Some(id.as_str()) =>
                {
                    return Ok(exit::OK);
                }
                _ => {}
            }
        } else if let Ok(v) = serde_json::from_str::<Value>(data)
            && let Some(missed) = v["missed"].as_u64()
        {
            eprintln!("[missed {missed} lines: this reader fell behind]");
        }
    }
}

// ---- stop ----

async fn stop(dir: &Path, target: &str, timeout: Duration, force: bool) -> Outcome {
    let (code, daemon) = split_target(target)?;
    // Read the file itself: a live pid with another start time is refused by name, not just
    // reported missing.
    let found = read_entries(dir)?
        .into_iter()
        .find(|(e, _)| e.code == code && e.daemon == daemon);
    let registry = FileRegistry::new(dir);
    let entry = match found {
        None => {
            return Err(fail(
                exit::NOT_FOUND,
                format!("no daemon {code}/{daemon} in {}", dir.display()),
            ));
        }
        Some((entry, true)) => entry,
        Some((entry, false)) => {
            let _ = registry.get(code, daemon).await;
            let reused = core_process_pid_exists(&entry);
            return Err(if reused {
                fail(
                    exit::REFUSED,
                    format!(
                        "refused: pid {} is alive but is no longer {code}/{daemon} (its start time differs from the entry's); nothing signalled, the dead entry is pruned",
                        entry.pid
                    ),
                )
            } else {
                fail(
                    exit::NOT_FOUND,
                    format!(
                        "{code}/{daemon} (pid {}) is not running; its entry is pruned",
                        entry.pid
                    ),
                )
            });
        }
    };
    entry
        .signal(Signal::Term)
        .map_err(|e| refused_or_failed(&e))?;
    eprintln!("sent SIGTERM to {code}/{daemon} (pid {})", entry.pid);
    if wait_gone(&registry, &entry, timeout).await {
        println!("stopped {code}/{daemon}");
        return Ok(exit::OK);
    }
    if !force {
        return Err(fail(
            exit::TIMEOUT,
            format!(
                "{code}/{daemon} (pid {}) still running after {timeout:?} (--force sends SIGKILL)",
                entry.pid
            ),
        ));
    }
    entry
        .signal(Signal::Kill)
        .map_err(|e| refused_or_failed(&e))?;
    eprintln!(
        "sent SIGKILL to {code}/{daemon} (pid {}) after {timeout:?}",
        entry.pid
    );
    if wait_gone(&registry, &entry, Duration::from_secs(10)).await {
        println!("killed {code}/{daemon}");
        Ok(exit::OK)
    } else {
        Err(fail(
            exit::FAILED,
            format!("{code}/{daemon} (pid {}) survived SIGKILL", entry.pid),
        ))
    }
}

/// Whether some process holds the entry's pid (used after the entry was judged dead: then it
/// is another process).
fn core_process_pid_exists(entry: &DaemonEntry) -> bool {
    let probe = DaemonEntry {
        pid_start_ticks: None,
        ..entry.clone()
    };
    entry.pid != 0 && probe.is_alive()
}

fn refused_or_failed(e: &Error) -> Failure {
    match e {
        Error::InvalidEntry { .. } => fail(exit::REFUSED, format!("refused: {e}")),
        _ => fail(exit::FAILED, e.to_string()),
    }
}

/// Waits until the entry's process is gone and its entry removed (pruning it when the daemon
/// did not unregister itself, as after SIGKILL).
async fn wait_gone(registry: &FileRegistry, entry: &DaemonEntry, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut gone_at: Option<Instant> = None;
    loop {
        if !entry.is_alive() {
            let since = *gone_at.get_or_insert_with(Instant::now);
            // Give the daemon's own unregister a moment, then prune.
            let present = matches!(registry.get(&entry.code, &entry.daemon).await, Ok(Some(e)) if e.pid == entry.pid);
            if !present || since.elapsed() > Duration::from_secs(1) {
                let _ = registry.get(&entry.code, &entry.daemon).await;
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- run ----

async fn run(timeout: Option<Duration>, grace: Duration, command: Vec<String>) -> Outcome {
    let bus = Arc::new(BroadcastEventBus::new(
        core_process::services::event_bus::DEFAULT_BUS_CAPACITY,
    ));
    let service = TokioProcessService::new(bus.clone() as Arc<dyn EventBus>, 64 * 1024);
    let mut events = bus.subscribe();
    let (program, args) = command
        .split_first()
        .ok_or_else(|| fail(exit::USAGE, "run: no command given"))?;
    let mut opts = RunOptions::new(program.clone())
        .args(args.iter().cloned())
        .grace_period(grace)
        .process_group(true);
    if let Some(t) = timeout {
        opts = opts.timeout(t);
    }
    let process = service
        .start(opts)
        .await
        .map_err(|e| fail(exit::RUN_NOT_STARTED, e.to_string()))?;
    let id = process.id().to_string();
    tokio::select! {
        () = forward(&mut events, &id, None) => {}
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: stopping {program} and its process tree");
            process.stop(grace).await;
            forward(&mut events, &id, Some(Duration::from_millis(500))).await;
        }
    }
    let result = process.wait().await;
    Ok(match result {
        Ok(()) => exit::OK,
        Err(Error::Exited { code, .. }) => u8::try_from(code).unwrap_or(exit::FAILED),
        Err(Error::Killed {
            timed_out: true, ..
        }) => {
            eprintln!(
                "{program}: timed out after {:?}; its process tree was stopped",
                timeout.unwrap_or_default()
            );
            exit::RUN_TIMED_OUT
        }
        Err(Error::Killed { signal, .. }) => {
            128u8.saturating_add(u8::try_from(signal.number()).unwrap_or(0))
        }
        Err(e) => return Err(fail(exit::FAILED, e.to_string())),
    })
}

/// Prints the output of process `id` until its exit event (every output line comes before
/// it), or until nothing came for `idle`.
async fn forward(events: &mut core_process::Subscription, id: &str, idle: Option<Duration>) {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let next = match idle {
            Some(idle) => match tokio::time::timeout(idle, events.recv()).await {
                Ok(next) => next,
                Err(_) => return,
            },
            None => events.recv().await,
        };
        match next {
            Ok(ProcessEvent::Output {
                id: of,
                line,
                stream,
            }) if *of == *id => {
                let _ = if stream == Stream::Stderr {
                    writeln!(stderr, "{line}")
                } else {
                    writeln!(stdout, "{line}")
                };
            }
            Ok(ProcessEvent::Exited { id: of, .. }) if *of == *id => {
                let _ = stdout.flush();
                return;
            }
            Ok(_) | Err(core_process::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    }
}

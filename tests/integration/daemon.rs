//! Daemon lifecycle: the daemon over its services, module wiring — seed parity and faults.
//! Tests that need other OS processes re-execute this test binary in a child role (see
//! `child_role`), so `cargo test` needs nothing else; the PID lock, health server and
//! registry have files of their own that use these roles.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use core_process::services::daemon::DEFAULT_SHUTDOWN_TIMEOUT;
use core_process::services::health::CheckKind;
use core_process::testing::{CallLog, FakeHealthService, FakePidLock, MemoryRegistry, http_get};
use core_process::{
    Daemon, DaemonEntry, DaemonOptions, DaemonParameters, DaemonService, Error, FilePidLock,
    FilePidLockParameters, FileRegistry, FileRegistryParameters, HealthCheck, HealthService,
    Lifecycles, PidLock, ProcessModule, Registry, WarpHealthServer, WarpHealthServerParameters,
    read_pid, wait_for_health,
};
use shaku::HasComponent;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::health::{failing, request};
use crate::registry::entry;
use crate::support::{eventually, poll_until, within};

pub(crate) const DEAD_PID: u32 = 999_999_999;
pub(crate) const LIMIT: Duration = Duration::from_secs(20);

pub(crate) fn ok_check() -> HealthCheck {
    HealthCheck::new(|| async { Ok::<(), String>(()) })
}

/// A check that never finishes and says when it has begun.
pub(crate) fn hanging_check() -> (HealthCheck, Arc<tokio::sync::Notify>) {
    let begun = Arc::new(tokio::sync::Notify::new());
    let signal = begun.clone();
    let check = HealthCheck::new(move || {
        signal.notify_one();
        std::future::pending::<Result<(), String>>()
    });
    (check, begun)
}

pub(crate) fn server() -> WarpHealthServer {
    WarpHealthServer::new("127.0.0.1:0".parse().unwrap())
}

pub(crate) async fn get(addr: SocketAddr, target: &str) -> (u16, String) {
    http_get(addr, target, None).await.expect("GET")
}

// ---------------------------------------------------------------------------------------------
// Child processes: this binary re-executed with CORE_PROCESS_TEST_ROLE set runs `child_role`
// alone, which plays the role and reports on stdout with lines starting "RESULT ".

pub(crate) const ROLE: &str = "CORE_PROCESS_TEST_ROLE";
pub(crate) const ROLE_PATH: &str = "CORE_PROCESS_TEST_PATH";
pub(crate) const ROLE_INDEX: &str = "CORE_PROCESS_TEST_INDEX";

/// Not a test of its own: the role a child started by a test plays (`#[ignore]`d, so it only
/// runs when a test re-executes this binary with `--ignored` and the role variables set).
#[test]
#[ignore = "helper process for the multi-process daemon tests"]
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(std::env::var(ROLE_PATH).expect("path"));
    let index: usize = std::env::var(ROLE_INDEX)
        .ok()
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        match role.as_str() {
            "lock" => role_lock(&path).await,
            "registry" => role_registry(&path, index).await,
            "daemon" => role_daemon(&path).await,
            "systemd" => role_systemd(&path, index).await,
            "shutdown" => crate::shutdown::role_shutdown(&path, index).await,
            other => panic!("unknown role {other}"),
        }
    });
}

pub(crate) fn report(line: impl AsRef<str>) {
    println!("RESULT {}", line.as_ref());
}

/// Waits until the parent closes our stdin.
pub(crate) async fn wait_for_parent() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    })
    .await;
}

/// Tries the lock at `path`; reports `won` or `lost <holder pid>`, holds until released.
pub(crate) async fn role_lock(path: &Path) {
    let lock = FilePidLock::new(path);
    match lock.acquire() {
        Ok(()) => report("won"),
        Err(Error::AlreadyRunning { pid, .. }) => report(format!("lost {pid}")),
        Err(e) => report(format!("error {e}")),
    }
    wait_for_parent().await;
    lock.release().unwrap();
}

/// Registers, rewrites and lists in `dir` as fast as it can; reports `ok` or the first problem,
/// then keeps its entries alive until released.
pub(crate) async fn role_registry(dir: &Path, index: usize) {
    let registry = FileRegistry::new(dir);
    let me = std::process::id();
    let own = format!("d{index}");
    let flip = format!("x{index}");
    let mut problems = Vec::new();
    for round in 0..25 {
        let mut entry = DaemonEntry::new("fault", &own);
        entry.pid = me;
        entry.project = format!("round{round}");
        registry.register(entry).await.unwrap();
        // An entry that is dead, then alive again under the same name: a concurrent reader
        // that judged the dead one must not delete the live one.
        let mut ghost = DaemonEntry::new("fault", &flip);
        ghost.pid = DEAD_PID;
        registry.register(ghost).await.unwrap();
        let listed = registry.list().await.unwrap();
        if !listed.iter().any(|e| e.daemon == own && e.pid == me) {
            problems.push(format!("round {round}: own entry missing from list"));
        }
        let mut alive = DaemonEntry::new("fault", &flip);
        alive.pid = me;
        registry.register(alive).await.unwrap();
        match registry.get("fault", &flip).await {
            Ok(Some(e)) if e.pid == me => {}
            other => problems.push(format!("round {round}: revived entry: {other:?}")),
        }
        // Every file that lists as an entry parses: no torn write is ever visible.
        for item in std::fs::read_dir(dir).unwrap() {
            let path = item.unwrap().path();
            if path.extension().is_some_and(|e| e == "json")
                && let Ok(bytes) = std::fs::read(&path)
                && let Err(e) = serde_json::from_slice::<DaemonEntry>(&bytes)
            {
                problems.push(format!("torn read of {}: {e}", path.display()));
            }
        }
    }
    match problems.first() {
        None => report("ok"),
        Some(p) => report(format!("fail {p} ({} problems)", problems.len())),
    }
    wait_for_parent().await;
}

/// A module whose daemon has a PID lock (`dir/daemon.pid`), a health server and a registry
/// entry `child/NAME` in `dir/registry`.
pub(crate) fn daemon_module(dir: &Path, name: &str) -> ProcessModule {
    let options = DaemonOptions {
        health: true,
        registry_entry: Some(DaemonEntry::new("child", name)),
        ..Default::default()
    };
    module_with(dir.join("daemon.pid"), dir.join("registry"), options).build()
}

/// A module builder whose daemon runs with `options`, its PID file at `pid_file` and its
/// registry in `registry`.
fn module_with(
    pid_file: PathBuf,
    registry: PathBuf,
    options: DaemonOptions,
) -> shaku::ModuleBuilder<ProcessModule> {
    ProcessModule::builder()
        .with_component_parameters::<FilePidLock>(FilePidLockParameters {
            path: Some(pid_file),
        })
        .with_component_parameters::<FileRegistry>(FileRegistryParameters {
            dir: Some(registry),
        })
        .with_component_parameters::<Daemon>(DaemonParameters { options })
}

/// A daemon with a PID lock, a health server and a registry entry in `dir`; runs until SIGTERM.
pub(crate) async fn role_daemon(dir: &Path) {
    let module = daemon_module(dir, "daemon");
    let daemon: Arc<dyn DaemonService> = module.resolve();
    daemon.start().await.unwrap();
    // Keeps SIGTERM from killing us before `run` listens (the parent repeats it until heard).
    let _early = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    report(format!("started {}", daemon.health_addr().unwrap()));
    let result = daemon.run(Box::pin(std::future::pending())).await;
    report(format!("stopped {result:?}"));
}

/// A daemon with a health server (no start-up grace) and one check, `gate`, that passes while
/// `dir/healthy` exists (each failing run appends a line to `dir/failures`); runs until
/// SIGTERM. The systemd variables are the ones the test set. `mode` 1: readiness held false
/// until `dir/go-ready` appears; 2: stopped and started again once, reporting `restarted ADDR`.
async fn role_systemd(dir: &Path, mode: usize) {
    let gate = dir.join("healthy");
    let failures = dir.join("failures");
    let check = HealthCheck::blocking(move || {
        if gate.exists() {
            return Ok(());
        }
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&failures)
            .unwrap();
        writeln!(log, "failed").unwrap();
        Err("gate file removed")
    });
    let module = ProcessModule::builder()
        .with_component_parameters::<WarpHealthServer>(WarpHealthServerParameters {
            startup_grace: Duration::ZERO,
            ..Default::default()
        })
        .with_component_parameters::<Daemon>(DaemonParameters {
            options: DaemonOptions {
                health: true,
                health_checks: vec![("gate".into(), check)],
                ..Default::default()
            },
        })
        .build();
    let daemon: Arc<dyn DaemonService> = module.resolve();
    let _early = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    if mode == 1 {
        daemon.set_ready(false);
    }
    if let Err(e) = daemon.start().await {
        report(format!("start failed: {e}"));
        return;
    }
    report(format!("started {}", daemon.health_addr().unwrap()));
    if mode == 1 {
        let go = dir.join("go-ready");
        while !go.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        daemon.set_ready(true);
    }
    if mode == 2 {
        daemon.stop().await.unwrap();
        daemon.start().await.unwrap();
        report(format!("restarted {}", daemon.health_addr().unwrap()));
    }
    if mode == 3 {
        // Stopped for six watchdog periods (of 50 ms), then started again.
        daemon.stop().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        daemon.start().await.unwrap();
        report("restarted");
    }
    if mode == 4 {
        // Marked by a status line, dropped running, then six watchdog periods before exit.
        daemon.set_ready(false);
        drop(daemon);
        drop(module);
        tokio::time::sleep(Duration::from_millis(300)).await;
        report("dropped");
        return;
    }
    let result = daemon.run(Box::pin(std::future::pending())).await;
    report(format!("stopped {result:?}"));
}

/// Starts this binary in `role`.
pub(crate) fn spawn_child(
    role: &str,
    path: &Path,
    index: usize,
) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "daemon::child_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(ROLE_PATH, path)
        .env(ROLE_INDEX, index.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

/// The next `RESULT` line of a child, without the prefix.
pub(crate) async fn result_line(out: &mut BufReader<ChildStdout>) -> String {
    within(LIMIT, "a child's RESULT line", async {
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).await.unwrap() == 0 {
                panic!("child ended without a RESULT line");
            }
            // The harness may print "test daemon::child_role ... " before it on the same line.
            if let Some(at) = line.find("RESULT ") {
                return line[at + "RESULT ".len()..].trim_end().to_string();
            }
        }
    })
    .await
}

/// Closes the child's stdin (its release signal) and reaps it; asserts it succeeded.
pub(crate) async fn release_child(mut child: Child) {
    drop(child.stdin.take());
    let status = within(LIMIT, "child exit", child.wait()).await.unwrap();
    assert!(status.success(), "child failed: {status}");
}

pub(crate) fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{sig} {pid}"))
        .status()
        .unwrap();
    assert!(status.success());
}

// ---------------------------------------------------------------------------------------------
// systemd: a daemon child with NOTIFY_SOCKET bound here, WATCHDOG_USEC, LISTEN_FDS

/// The notification socket a test plays systemd on.
struct FakeSystemd {
    dir: tempfile::TempDir,
    socket: tokio::net::UnixDatagram,
}

impl FakeSystemd {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("healthy"), "").unwrap();
        let socket = tokio::net::UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
        FakeSystemd { dir, socket }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the `systemd` role in `mode` with NOTIFY_SOCKET and `env` set.
    fn spawn(&self, mode: usize, env: &[(&str, &str)]) -> (Child, BufReader<ChildStdout>) {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args([
            "--ignored",
            "--exact",
            "daemon::child_role",
            "--nocapture",
            "--test-threads=1",
        ]);
        self.spawn_with(command, mode, env, Stdio::null())
    }

    fn spawn_with(
        &self,
        mut command: Command,
        mode: usize,
        env: &[(&str, &str)],
        stdin: Stdio,
    ) -> (Child, BufReader<ChildStdout>) {
        command
            .env(ROLE, "systemd")
            .env(ROLE_PATH, self.dir.path())
            .env(ROLE_INDEX, mode.to_string())
            .env("NOTIFY_SOCKET", self.path("notify.sock"))
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .envs(env.iter().copied())
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        (child, stdout)
    }

    /// The next notification.
    async fn next(&self) -> String {
        within(LIMIT, "a notification", async {
            let mut buf = vec![0u8; 4096];
            let n = self.socket.recv(&mut buf).await.unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        })
        .await
    }

    /// Notifications until (and with) the first that satisfies `last`.
    async fn until(&self, last: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let message = self.next().await;
            let done = last(&message);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }

    /// Every notification already queued.
    fn queued(&self) -> Vec<String> {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.socket.try_recv(&mut buf) {
            seen.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        seen
    }

    /// How many failing runs the child's check has recorded.
    fn failures(&self) -> usize {
        std::fs::read_to_string(self.path("failures"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

/// The address in a `started ADDR` line.
fn started_addr(line: &str) -> SocketAddr {
    line.strip_prefix("started ")
        .unwrap_or_else(|| panic!("not a start: {line}"))
        .parse()
        .unwrap()
}

/// SIGTERMs the child until it reports that it stopped (`run` may not listen yet when the
/// first lands: the signal is repeated until heard); reaps it.
async fn terminate(mut child: Child, mut out: BufReader<ChildStdout>) {
    let pid = child.id().unwrap();
    let mut stopped = tokio::spawn(async move {
        let line = result_line(&mut out).await;
        // Keep reading, so the child's last words do not meet a closed pipe.
        let mut rest = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut out, &mut rest).await;
        line
    });
    let deadline = Instant::now() + LIMIT;
    let line = loop {
        signal(pid, "TERM");
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(300), &mut stopped).await {
            break line.unwrap();
        }
        assert!(Instant::now() < deadline, "the daemon ignored SIGTERM");
    };
    assert_eq!(line, "stopped Ok(())");
    let status = within(LIMIT, "child exit", child.wait()).await.unwrap();
    assert!(status.success(), "child failed: {status}");
}

#[tokio::test]
async fn systemd_is_told_starting_ready_with_mainpid_stopping_stopped_in_order() {
    let systemd = FakeSystemd::new();
    let (child, mut out) = systemd.spawn(0, &[]);
    let pid = child.id().unwrap();
    assert_eq!(systemd.next().await, "STATUS=starting\n");
    let ready = systemd.next().await;
    let addr = started_addr(&result_line(&mut out).await);
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS=ready; health on {addr}\nMAINPID={pid}\n")
    );
    // READY=1 came after the bind: the health server answers.
    assert_eq!(get(addr, "/readyz").await.0, 200);
    terminate(child, out).await;
    assert_eq!(systemd.next().await, "STOPPING=1\nSTATUS=stopping\n");
    assert_eq!(systemd.next().await, "STATUS=stopped\n");
    assert_eq!(
        systemd.queued(),
        Vec::<String>::new(),
        "no watchdog: no ping"
    );
}

#[tokio::test]
async fn systemd_ready_waits_for_set_ready_true() {
    let systemd = FakeSystemd::new();
    let (child, mut out) = systemd.spawn(1, &[]);
    let pid = child.id().unwrap();
    assert_eq!(systemd.next().await, "STATUS=starting\n");
    let addr = started_addr(&result_line(&mut out).await);
    assert_eq!(
        systemd.next().await,
        format!("STATUS=started, not ready; health on {addr}\n")
    );
    assert_eq!(get(addr, "/readyz").await.0, 503);
    assert_eq!(systemd.queued(), Vec::<String>::new(), "READY=1 too early");
    std::fs::write(systemd.path("go-ready"), "").unwrap();
    assert_eq!(
        systemd.next().await,
        format!("READY=1\nSTATUS=ready; health on {addr}\nMAINPID={pid}\n")
    );
    assert_eq!(get(addr, "/readyz").await.0, 200);
    terminate(child, out).await;
    assert_eq!(systemd.next().await, "STOPPING=1\nSTATUS=stopping\n");
    assert_eq!(systemd.next().await, "STATUS=stopped\n");
}

#[tokio::test]
async fn systemd_watchdog_pings_only_while_the_checks_pass() {
    let systemd = FakeSystemd::new();
    // 100 ms: a ping every 50 ms.
    let (child, mut out) = systemd.spawn(0, &[("WATCHDOG_USEC", "100000")]);
    let ready = systemd.until(|m| m.starts_with("READY=1")).await;
    assert_eq!(ready[0], "STATUS=starting\n");
    assert_eq!(ready.len(), 2, "no ping before READY=1: {ready:?}");
    let addr = started_addr(&result_line(&mut out).await);
    for _ in 0..3 {
        assert_eq!(systemd.next().await, "WATCHDOG=1\n");
    }

    // The check fails: the pings stop, and the status says why.
    std::fs::remove_file(systemd.path("healthy")).unwrap();
    let before = systemd.until(|m| m.starts_with("STATUS=unhealthy")).await;
    assert_eq!(
        before.last().unwrap(),
        "STATUS=unhealthy: gate: gate file removed; watchdog withheld\n"
    );
    assert!(
        before[..before.len() - 1]
            .iter()
            .all(|m| m == "WATCHDOG=1\n"),
        "{before:?}"
    );
    let seen = systemd.failures();
    eventually(LIMIT, "three more failing watchdog checks", || {
        systemd.failures() >= seen + 3
    })
    .await;
    assert_eq!(
        systemd.queued(),
        Vec::<String>::new(),
        "a ping while failing"
    );

    // It passes again: the pings resume, with the status restored.
    std::fs::write(systemd.path("healthy"), "").unwrap();
    assert_eq!(
        systemd.next().await,
        format!("WATCHDOG=1\nSTATUS=ready; health on {addr}\n")
    );
    assert_eq!(systemd.next().await, "WATCHDOG=1\n");

    // Stopping: no ping after STOPPING=1.
    terminate(child, out).await;
    let rest = systemd.until(|m| m == "STATUS=stopped\n").await;
    let stopping = rest
        .iter()
        .position(|m| m == "STOPPING=1\nSTATUS=stopping\n")
        .unwrap_or_else(|| panic!("no STOPPING=1: {rest:?}"));
    assert!(
        rest[..stopping].iter().all(|m| m == "WATCHDOG=1\n"),
        "{rest:?}"
    );
    assert_eq!(stopping, rest.len() - 2, "{rest:?}");
}

#[tokio::test]
async fn systemd_watchdog_of_another_pid_is_not_ours() {
    let systemd = FakeSystemd::new();
    let (child, mut out) = systemd.spawn(0, &[("WATCHDOG_USEC", "100000"), ("WATCHDOG_PID", "1")]);
    systemd.until(|m| m.starts_with("READY=1")).await;
    result_line(&mut out).await;
    terminate(child, out).await;
    let rest = systemd.until(|m| m == "STATUS=stopped\n").await;
    assert_eq!(rest, ["STOPPING=1\nSTATUS=stopping\n", "STATUS=stopped\n"]);
}

/// `sh` moving its stdin to fd 3, saying that fd 3 is for it (its pid is the one the test
/// binary keeps through exec), and running the `systemd` child role.
fn socket_activated_child() -> Command {
    activated_child(
        "exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=health",
    )
}

/// `sh` running `prelude` (which moves the passed descriptors into place and exports the
/// `LISTEN_*` variables), then the `systemd` child role in its place.
fn activated_child(prelude: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", &format!("{prelude}; exec \"$@\""), "sh"]);
    command.arg(std::env::current_exe().unwrap()).args([
        "--ignored",
        "--exact",
        "daemon::child_role",
        "--nocapture",
        "--test-threads=1",
    ]);
    command
}

#[tokio::test]
async fn systemd_socket_activation_serves_the_passed_listener_across_restarts() {
    let systemd = FakeSystemd::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let passed = listener.local_addr().unwrap();
    let stdin = Stdio::from(std::os::fd::OwnedFd::from(listener));
    let (child, mut out) = systemd.spawn_with(socket_activated_child(), 2, &[], stdin);
    let addr = started_addr(&result_line(&mut out).await);
    assert_eq!(addr, passed, "the daemon bound its own port");
    let again = result_line(&mut out).await;
    assert_eq!(again, format!("restarted {passed}"));
    assert_eq!(get(addr, "/health").await, (200, "ok\n".to_string()));
    assert_eq!(request(addr, "HEAD", "/livez").await, (200, String::new()));
    terminate(child, out).await;
}

#[tokio::test]
async fn systemd_socket_activation_of_a_non_listener_is_a_bind_error() {
    let systemd = FakeSystemd::new();
    for (what, stdin) in [
        (
            "a file",
            Stdio::from(std::fs::File::open(systemd.path("healthy")).unwrap()),
        ),
        (
            "an unbound socket",
            Stdio::from(std::os::fd::OwnedFd::from(
                std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            )),
        ),
    ] {
        let (mut child, mut out) = systemd.spawn_with(socket_activated_child(), 0, &[], stdin);
        let line = result_line(&mut out).await;
        assert!(
            line.starts_with(
                "start failed: cannot bind the socket passed by the service manager (LISTEN_FDS)"
            ),
            "{what}: {line}"
        );
        assert!(
            within(LIMIT, "child exit", child.wait())
                .await
                .unwrap()
                .success()
        );
        assert_eq!(systemd.next().await, "STATUS=starting\n");
        let failed = systemd.next().await;
        assert!(
            failed.starts_with("STATUS=start failed: cannot bind"),
            "{failed}"
        );
    }
}

/// A `sleep` child standing for another live process; killed and reaped when dropped.
pub(crate) struct Sleeper(std::process::Child);

impl Sleeper {
    pub(crate) fn start() -> Self {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Sleeper(child)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this platform tells processes' start times (Linux `/proc`).
pub(crate) fn start_times_known() -> bool {
    Path::new("/proc/self/stat").exists()
}

// ---------------------------------------------------------------------------------------------
// Daemon

struct Fakes {
    log: CallLog,
    lock: Arc<FakePidLock>,
    health: Arc<FakeHealthService>,
    registry: Arc<MemoryRegistry>,
}

fn fakes() -> Fakes {
    let log = CallLog::new();
    Fakes {
        lock: Arc::new(FakePidLock::new().with_log(log.clone())),
        health: Arc::new(FakeHealthService::new().with_log(log.clone())),
        registry: Arc::new(MemoryRegistry::new().with_log(log.clone())),
        log,
    }
}

fn full_options() -> DaemonOptions {
    DaemonOptions {
        health: true,
        registry_entry: Some(DaemonEntry::new("core", "agent")),
        ..Default::default()
    }
}

fn daemon_over(f: &Fakes, options: DaemonOptions) -> Daemon {
    Daemon::new(
        options,
        f.lock.clone(),
        f.health.clone(),
        f.registry.clone(),
    )
}

/// The calls a start of a [`full_options`] daemon makes over the [`fakes`], in order.
const START_STEPS: [&str; 3] = [
    "lock.acquire",
    "health.start",
    "registry.register core/agent",
];

/// The calls its stop makes, in order.
const STOP_STEPS: [&str; 4] = [
    "health.not_ready",
    "registry.unregister core/agent",
    "health.stop",
    "lock.release",
];

/// A started [`full_options`] daemon over fresh [`fakes`] that drains for `drain` on stop, its
/// call log cleared.
async fn started_draining(drain: Duration) -> (Fakes, Arc<Daemon>) {
    let f = fakes();
    let daemon = Arc::new(daemon_over(
        &f,
        DaemonOptions {
            drain_delay: drain,
            ..full_options()
        },
    ));
    daemon.start().await.unwrap();
    f.log.clear();
    (f, daemon)
}

/// A [`MemoryRegistry`] whose register says when it has begun, then waits until the gate is
/// open (and panics instead, when told to).
struct GatedRegistry {
    inner: MemoryRegistry,
    entered: tokio::sync::Notify,
    open: tokio::sync::watch::Sender<bool>,
    panic: std::sync::atomic::AtomicBool,
}

impl GatedRegistry {
    fn new() -> Self {
        GatedRegistry {
            inner: MemoryRegistry::new(),
            entered: tokio::sync::Notify::new(),
            open: tokio::sync::watch::channel(false).0,
            panic: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

#[async_trait::async_trait]
impl Registry for GatedRegistry {
    async fn register(&self, entry: DaemonEntry) -> core_process::Result<()> {
        self.entered.notify_one();
        if self.panic.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("the registry exploded");
        }
        let _ = self.open.subscribe().wait_for(|open| *open).await;
        self.inner.register(entry).await
    }

    async fn unregister(&self, code: &str, daemon: &str) -> core_process::Result<()> {
        self.inner.unregister(code, daemon).await
    }

    async fn get(&self, code: &str, daemon: &str) -> core_process::Result<Option<DaemonEntry>> {
        self.inner.get(code, daemon).await
    }

    async fn list(&self) -> core_process::Result<Vec<DaemonEntry>> {
        self.inner.list().await
    }
}

/// A daemon over a real PID lock in `dir`, a fake health service and a gated registry.
fn gated_daemon(
    dir: &Path,
) -> (
    Arc<Daemon>,
    Arc<FilePidLock>,
    Arc<FakeHealthService>,
    Arc<GatedRegistry>,
) {
    let lock = Arc::new(FilePidLock::new(dir.join("gated.pid")));
    let health = Arc::new(FakeHealthService::new());
    let registry = Arc::new(GatedRegistry::new());
    let daemon = Daemon::new(
        full_options(),
        lock.clone(),
        health.clone(),
        registry.clone(),
    );
    (Arc::new(daemon), lock, health, registry)
}

/// A module whose daemon has a real PID lock, health server and registry under `dir`.
fn real_module(dir: &Path) -> ProcessModule {
    let options = DaemonOptions {
        health_checks: vec![("self".into(), ok_check())],
        ..full_options()
    };
    module_with(dir.join("run/agent.pid"), dir.join("daemons"), options)
        .with_component_parameters::<WarpHealthServer>(WarpHealthServerParameters {
            addr: "127.0.0.1:0".parse().unwrap(),
            check_timeout: Duration::from_secs(2),
            stop_timeout: Duration::from_secs(5),
            ..Default::default()
        })
        .build()
}

/// A temp dir, the [`real_module`] over it and the module's daemon (not started).
fn resolved_daemon() -> (tempfile::TempDir, ProcessModule, Arc<dyn DaemonService>) {
    let dir = tempfile::tempdir().unwrap();
    let module = real_module(dir.path());
    let daemon: Arc<dyn DaemonService> = module.resolve();
    (dir, module, daemon)
}

#[test]
fn daemon_default_shutdown_timeout_is_30_seconds() {
    assert_eq!(
        DaemonOptions::default().shutdown_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(DEFAULT_SHUTDOWN_TIMEOUT, Duration::from_secs(30));
}

#[tokio::test]
async fn daemon_start_and_stop_with_health_200_in_between() {
    let (dir, _module, daemon) = resolved_daemon();
    daemon.start().await.unwrap();
    assert!(daemon.is_running());
    let addr = daemon.health_addr().unwrap();
    assert_eq!(get(addr, "/health").await, (200, "ok\n".to_string()));
    assert_eq!(get(addr, "/ready").await.0, 200);
    assert_eq!(
        read_pid(dir.path().join("run/agent.pid")),
        Some((std::process::id(), true))
    );
    daemon.stop().await.unwrap();
    assert!(!daemon.is_running());
    assert_eq!(daemon.health_addr(), None);
    assert!(http_get(addr, "/health", None).await.is_err());
    assert!(!dir.path().join("run/agent.pid").exists());
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn daemon_restarted_after_stop_is_ready_again() {
    let (_dir, _module, daemon) = resolved_daemon();
    daemon.start().await.unwrap();
    daemon.stop().await.unwrap();
    daemon.start().await.unwrap();
    let addr = daemon.health_addr().unwrap();
    assert_eq!(get(addr, "/ready").await, (200, "ready\n".to_string()));
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn daemon_start_restores_only_the_readiness_stop_cleared() {
    let f = fakes();
    let daemon = daemon_over(&f, full_options());
    // The host's own "not ready" (say, until it has warmed up) survives start.
    daemon.set_ready(false);
    daemon.start().await.unwrap();
    assert!(!f.health.is_ready());
    daemon.set_ready(true);
    daemon.stop().await.unwrap();
    assert!(!f.health.is_ready());
    f.log.clear();
    // What stop cleared, start restores, before the server answers.
    daemon.start().await.unwrap();
    assert!(f.health.is_ready());
    assert_eq!(
        f.log.calls(),
        [
            "lock.acquire",
            "health.ready",
            "health.start",
            "registry.register core/agent",
        ]
    );
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn daemon_registers_itself_on_start_and_unregisters_on_stop() {
    let (dir, module, daemon) = resolved_daemon();
    let registry: Arc<dyn Registry> = module.resolve();
    daemon.start().await.unwrap();
    let got = registry.get("core", "agent").await.unwrap().unwrap();
    assert_eq!(got.pid, std::process::id());
    assert_eq!(got.health, daemon.health_addr().unwrap().to_string());
    assert_eq!(
        got.binary,
        std::env::current_exe().unwrap().to_string_lossy()
    );
    assert!(got.started > SystemTime::UNIX_EPOCH);
    assert_eq!(daemon.registered_entry(), Some(got));
    daemon.stop().await.unwrap();
    assert_eq!(registry.get("core", "agent").await.unwrap(), None);
    assert!(!dir.path().join("daemons/core-agent.json").exists());
}

#[tokio::test]
async fn daemon_double_start_fails_already_running() {
    let f = fakes();
    let daemon = daemon_over(&f, full_options());
    daemon.start().await.unwrap();
    let err = daemon.start().await.unwrap_err();
    assert!(matches!(err, Error::AlreadyStarted { .. }), "{err:?}");
    assert!(err.to_string().contains("already started"), "{err}");
    assert_eq!(f.lock.acquires(), 1);
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn daemon_second_instance_on_the_same_pid_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = real_module(dir.path());
    let second = real_module(dir.path());
    let a: Arc<dyn DaemonService> = first.resolve();
    let b: Arc<dyn DaemonService> = second.resolve();
    a.start().await.unwrap();
    match b.start().await {
        Err(Error::AlreadyRunning { pid, .. }) => assert_eq!(pid, std::process::id()),
        other => panic!("{other:?}"),
    }
    assert!(!b.is_running());
    // The refused one changed nothing.
    assert!(wait_for_health(&a.health_addr().unwrap().to_string(), LIMIT).await);
    a.stop().await.unwrap();
}

#[tokio::test]
async fn daemon_run_before_start_fails_not_started() {
    let f = fakes();
    let daemon = daemon_over(&f, full_options());
    let err = daemon.run(Box::pin(async {})).await.unwrap_err();
    assert!(matches!(err, Error::NotStarted { .. }), "{err:?}");
    assert!(err.to_string().contains("not started"), "{err}");
}

#[tokio::test]
async fn daemon_health_addr_is_none_without_health() {
    let f = fakes();
    let daemon = daemon_over(
        &f,
        DaemonOptions {
            registry_entry: Some(DaemonEntry::new("core", "agent")),
            ..Default::default()
        },
    );
    daemon.start().await.unwrap();
    assert_eq!(daemon.health_addr(), None);
    assert_eq!(f.health.starts(), 0);
    let registered = f.registry.entries();
    assert_eq!(registered[0].health, "");
    daemon.stop().await.unwrap();
    assert_eq!(f.health.stops(), 0);
}

#[tokio::test]
async fn daemon_start_then_stop_run_in_order() {
    let f = fakes();
    let daemon = daemon_over(&f, full_options());
    daemon.start().await.unwrap();
    daemon.set_ready(true);
    daemon.stop().await.unwrap();
    daemon.stop().await.unwrap();
    assert_eq!(
        f.log.calls(),
        [&START_STEPS[..], &["health.ready"], &STOP_STEPS].concat()
    );
}

#[tokio::test]
async fn daemon_lock_failure_starts_nothing() {
    let f = fakes();
    f.lock.held_by(Some(4242));
    let daemon = daemon_over(&f, full_options());
    match daemon.start().await {
        Err(Error::AlreadyRunning { pid, .. }) => assert_eq!(pid, 4242),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.log.calls(), ["lock.acquire"]);
    assert!(!daemon.is_running());
}

#[tokio::test]
async fn daemon_health_failure_releases_the_lock() {
    let f = fakes();
    f.health.fail_start(true);
    let daemon = daemon_over(&f, full_options());
    assert!(matches!(daemon.start().await, Err(Error::Bind { .. })));
    assert_eq!(
        f.log.calls(),
        ["lock.acquire", "health.start", "lock.release"]
    );
    assert!(!f.lock.is_locked());
    // Once the fault is gone, it starts.
    f.health.fail_start(false);
    daemon.start().await.unwrap();
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn daemon_register_failure_rolls_back_in_reverse() {
    let f = fakes();
    f.registry.fail_register(true);
    let daemon = daemon_over(&f, full_options());
    assert!(matches!(daemon.start().await, Err(Error::Io { .. })));
    assert_eq!(
        f.log.calls(),
        [&START_STEPS[..], &["health.stop", "lock.release"]].concat()
    );
    assert!(!daemon.is_running());
    assert_eq!(f.health.addr(), None);
}

#[tokio::test]
async fn daemon_start_abandoned_during_register_is_undone_and_frees_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, lock, health, registry) = gated_daemon(dir.path());
    // The caller gives up (its timeout, say) while register is still in progress.
    tokio::select! {
        r = daemon.start() => panic!("start finished: {r:?}"),
        () = registry.entered.notified() => {}
    }
    assert!(!daemon.is_running());
    registry.open();
    // The abandoned start finishes its step, then undoes everything on its own.
    eventually(LIMIT, "the abandoned start undone", || {
        !lock.is_locked() && health.addr().is_none() && registry.inner.entries().is_empty()
    })
    .await;
    assert!(!daemon.is_running());
    assert_eq!((health.starts(), health.stops()), (1, 1));
    FilePidLock::new(dir.path().join("gated.pid"))
        .acquire()
        .unwrap();
}

/// A start whose runtime shuts down under it (its task dropped before it sent the result)
/// fails with `Error::TaskFailed` naming the daemon; it does not panic.
#[test]
fn daemon_start_whose_runtime_shuts_down_is_task_failed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (daemon, _lock, _health, registry) = gated_daemon(dir.path());
    let caller = {
        let (handle, daemon) = (rt.handle().clone(), daemon.clone());
        std::thread::spawn(move || handle.block_on(async move { daemon.start().await }))
    };
    // The start's task is inside register (the gate stays shut) when the runtime goes.
    rt.block_on(within(LIMIT, "register begun", registry.entered.notified()));
    rt.shutdown_background();
    poll_until("start to return", || caller.is_finished());
    match caller.join().expect("start must not panic") {
        Err(Error::TaskFailed { what, reason }) => {
            assert!(what.contains("daemon core/agent"), "{what}");
            assert!(reason.contains("shutting down"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!daemon.is_running());
}

#[tokio::test]
async fn daemon_start_retried_after_an_abandoned_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, lock, health, registry) = gated_daemon(dir.path());
    // The caller gives up while register is still in progress.
    tokio::select! {
        r = daemon.start() => panic!("start finished: {r:?}"),
        () = registry.entered.notified() => {}
    }
    // Retried at once, while the abandoned start is still in its register step.
    let retry = {
        let daemon = daemon.clone();
        tokio::spawn(async move { daemon.start().await })
    };
    registry.open();
    within(LIMIT, "the retried start", retry)
        .await
        .unwrap()
        .unwrap();
    assert!(daemon.is_running());
    assert!(lock.is_locked());
    assert_eq!(registry.inner.entries().len(), 1);
    assert_eq!(health.addr(), Some("127.0.0.1:9".parse().unwrap()));
    daemon.stop().await.unwrap();
    assert!(!lock.is_locked());
    assert!(registry.inner.entries().is_empty());
}

#[tokio::test]
async fn daemon_start_whose_registry_panics_releases_what_it_took() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, lock, health, registry) = gated_daemon(dir.path());
    registry.open();
    registry
        .panic
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let started = {
        let daemon = daemon.clone();
        tokio::spawn(async move { daemon.start().await })
    };
    let joined = within(LIMIT, "the panicking start", started).await;
    assert!(
        joined.unwrap_err().is_panic(),
        "the panic reaches the caller"
    );
    eventually(LIMIT, "the steps before the panic undone", || {
        !lock.is_locked() && health.addr().is_none()
    })
    .await;
    assert!(!daemon.is_running());
    registry
        .panic
        .store(false, std::sync::atomic::Ordering::SeqCst);
    within(LIMIT, "a start after the panic", daemon.start())
        .await
        .unwrap();
    daemon.stop().await.unwrap();
}

/// A health service whose stop yields once before it stops: a stop left to another task
/// instead of awaited shows as not yet done when the caller looks.
struct YieldingHealth(Arc<FakeHealthService>);

#[async_trait::async_trait]
impl core_process::Lifecycle for YieldingHealth {}

#[async_trait::async_trait]
impl HealthService for YieldingHealth {
    async fn start(&self) -> core_process::Result<SocketAddr> {
        self.0.start().await
    }
    async fn stop(&self) -> core_process::Result<()> {
        tokio::task::yield_now().await;
        self.0.stop().await
    }
    fn add_check(&self, name: &str, check: HealthCheck) {
        self.0.add_check(name, check);
    }
    fn set_ready(&self, ready: bool) {
        self.0.set_ready(ready);
    }
    fn is_ready(&self) -> bool {
        self.0.is_ready()
    }
    fn addr(&self) -> Option<SocketAddr> {
        self.0.addr()
    }
    async fn check(&self) -> core_process::HealthReport {
        self.0.check().await
    }
}

#[tokio::test]
async fn daemon_register_failure_is_undone_before_start_returns() {
    let f = fakes();
    f.registry.fail_register(true);
    let daemon = Daemon::new(
        full_options(),
        f.lock.clone(),
        Arc::new(YieldingHealth(f.health.clone())),
        f.registry.clone(),
    );
    assert!(matches!(daemon.start().await, Err(Error::Io { .. })));
    // Undone by the start itself, not by a task still running after it returned.
    assert_eq!(f.health.addr(), None);
    assert!(!f.lock.is_locked());
    assert_eq!(
        f.log.calls().last().map(String::as_str),
        Some("lock.release")
    );
}

/// A start dropped after its first poll finishes its steps with nobody to read the result:
/// whatever it took (the lock alone, or with the health server, or with the entry) is undone
/// before a retry runs.
#[tokio::test]
async fn daemon_start_abandoned_after_its_first_poll_undoes_every_step() {
    let entry = Some(DaemonEntry::new("core", "agent"));
    let cases = [
        (false, None, vec!["lock.acquire", "lock.release"]),
        (
            true,
            None,
            vec![
                "lock.acquire",
                "health.start",
                "health.stop",
                "lock.release",
            ],
        ),
        (
            false,
            entry,
            vec![
                "lock.acquire",
                "registry.register core/agent",
                "registry.unregister core/agent",
                "lock.release",
            ],
        ),
    ];
    for (health, registry_entry, undone) in cases {
        let f = fakes();
        let options = DaemonOptions {
            health,
            registry_entry,
            ..Default::default()
        };
        let daemon = daemon_over(&f, options);
        tokio::select! {
            biased;
            r = daemon.start() => panic!("start finished at its first poll: {r:?}"),
            () = std::future::ready(()) => {}
        }
        // A retry waits until the abandoned start is undone, then starts afresh.
        within(LIMIT, "a retried start", daemon.start())
            .await
            .unwrap();
        let calls = f.log.calls();
        assert_eq!(calls[..undone.len()], undone[..], "{calls:?}");
        assert_eq!(calls[undone.len()], "lock.acquire", "{calls:?}");
        daemon.stop().await.unwrap();
        assert!(!f.lock.is_locked());
    }
}

/// A PID lock whose acquire panics (on the blocking pool, where start runs it).
struct PanickingLock;

#[async_trait::async_trait]
impl core_process::Lifecycle for PanickingLock {}

impl PidLock for PanickingLock {
    fn acquire(&self) -> core_process::Result<()> {
        panic!("the lock exploded");
    }
    fn release(&self) -> core_process::Result<()> {
        Ok(())
    }
    fn is_locked(&self) -> bool {
        false
    }
    fn path(&self) -> Option<PathBuf> {
        Some(PathBuf::from("/nonexistent/panicking.pid"))
    }
}

#[tokio::test]
async fn daemon_start_whose_lock_panics_passes_the_panic_on() {
    let f = fakes();
    let daemon = Arc::new(Daemon::new(
        full_options(),
        Arc::new(PanickingLock),
        f.health.clone(),
        f.registry.clone(),
    ));
    let started = {
        let daemon = daemon.clone();
        tokio::spawn(async move { daemon.start().await })
    };
    let joined = within(LIMIT, "the panicking start", started).await;
    let panic = joined.expect_err("the panic reaches the caller, not an error");
    assert!(panic.is_panic(), "{panic:?}");
    let payload = panic.into_panic();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"the lock exploded"));
    assert!(!daemon.is_running());
    assert_eq!(f.health.addr(), None, "nothing after the lock started");
}

/// A daemon over a real PID lock, health server (127.0.0.1:0) and registry under `dir`, with
/// the services themselves, to look behind the daemon's back.
struct RealDaemon {
    daemon: Arc<Daemon>,
    health: Arc<WarpHealthServer>,
    registry: Arc<FileRegistry>,
    pid_path: PathBuf,
}

fn real_daemon(dir: &Path) -> RealDaemon {
    let pid_path = dir.join("run/agent.pid");
    let health = Arc::new(server());
    let registry = Arc::new(FileRegistry::new(dir.join("daemons")));
    let daemon = Daemon::new(
        full_options(),
        Arc::new(FilePidLock::new(&pid_path)),
        health.clone(),
        registry.clone(),
    );
    RealDaemon {
        daemon: Arc::new(daemon),
        health,
        registry,
        pid_path,
    }
}

impl RealDaemon {
    /// Waits until an abandoned start holds nothing: a fresh lock on the PID file can be
    /// acquired, the health server (and the port it had, if seen) is closed, the registry has
    /// no entry. Then checks that a retried start succeeds, and stops it.
    async fn assert_nothing_held_and_a_retry_works(&self, seen: Option<SocketAddr>, what: &str) {
        assert!(!self.daemon.is_running(), "{what}: reads as running");
        eventually(LIMIT, &format!("{what}: the lock free again"), || {
            let fresh = FilePidLock::new(&self.pid_path);
            match fresh.acquire() {
                Ok(()) => {
                    fresh.release().unwrap();
                    true
                }
                Err(_) => false,
            }
        })
        .await;
        eventually(LIMIT, &format!("{what}: the health server stopped"), || {
            self.health.addr().is_none()
        })
        .await;
        if let Some(addr) = seen {
            assert!(
                http_get(addr, "/health", None).await.is_err(),
                "{what}: port {addr} still answers"
            );
        }
        let deadline = Instant::now() + LIMIT;
        while let Some(entry) = self.registry.get("core", "agent").await.unwrap() {
            assert!(
                Instant::now() < deadline,
                "{what}: still registered: {entry:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!self.daemon.is_running(), "{what}: reads as running");
        within(LIMIT, "the retried start", self.daemon.start())
            .await
            .unwrap_or_else(|e| panic!("{what}: the retried start failed: {e}"));
        self.assert_fully_started(what).await;
        self.daemon.stop().await.unwrap();
    }

    async fn assert_fully_started(&self, what: &str) {
        assert!(self.daemon.is_running(), "{what}: not running");
        let addr = self.daemon.health_addr().expect("a health address");
        assert_eq!(get(addr, "/health").await.0, 200, "{what}");
        assert_eq!(
            read_pid(&self.pid_path),
            Some((std::process::id(), true)),
            "{what}"
        );
        let entry = self.registry.get("core", "agent").await.unwrap();
        assert_eq!(entry.map(|e| e.health), Some(addr.to_string()), "{what}");
    }
}

/// A waker that records that it was woken.
#[derive(Default)]
struct WakeFlag(std::sync::atomic::AtomicBool);

impl WakeFlag {
    fn take(&self) -> bool {
        self.0.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Drops `start`'s future at every point: after its `n`-th poll (n = 1, 2, … until it
/// completes), either at once or once the wake that poll asked for has come (the result may
/// then be on its way, unread). After each drop nothing is held and a retry works.
#[tokio::test]
async fn daemon_start_dropped_at_every_point_holds_nothing_and_a_retry_works() {
    use std::task::{Context, Poll, Waker};

    let dir = tempfile::tempdir().unwrap();
    let real = real_daemon(dir.path());
    for wait_for_wake in [true, false] {
        let mut completed = false;
        for polls in 1..=50 {
            let what =
                format!("dropped after poll {polls} (waiting for its wake: {wait_for_wake})");
            let flag = Arc::new(WakeFlag::default());
            let waker = Waker::from(flag.clone());
            let mut cx = Context::from_waker(&waker);
            let mut start = real.daemon.start();
            let mut seen = None;
            let mut result = None;
            for poll in 1..=polls {
                match start.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => {
                        result = Some(r);
                        break;
                    }
                    Poll::Pending if poll < polls || wait_for_wake => {
                        eventually(LIMIT, &format!("{what}: the wake"), || flag.take()).await;
                    }
                    Poll::Pending => {}
                }
                seen = seen.or(real.health.addr());
            }
            if let Some(result) = result {
                result.unwrap_or_else(|e| panic!("{what}: start failed: {e}"));
                real.assert_fully_started(&what).await;
                real.daemon.stop().await.unwrap();
                println!("wait for wake {wait_for_wake}: completed at poll {polls}");
                completed = true;
                break;
            }
            drop(start);
            real.assert_nothing_held_and_a_retry_works(seen, &what)
                .await;
        }
        assert!(completed, "start never completed within 50 polls");
    }
}

/// `start` under timeouts from 0 to 2 ms: each ends fully started (and the caller knows it), or
/// timed out with nothing held and a retry that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_start_under_short_timeouts_is_started_or_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let real = real_daemon(dir.path());
    let (mut started, mut timed_out) = (0, 0);
    for round in 0..3 {
        for micros in (0..=2000).step_by(50) {
            let what = format!("round {round}, timeout {micros} µs");
            let timeout = Duration::from_micros(micros);
            match tokio::time::timeout(timeout, real.daemon.start()).await {
                Ok(Ok(())) => {
                    started += 1;
                    real.assert_fully_started(&what).await;
                    real.daemon.stop().await.unwrap();
                }
                Ok(Err(e)) => panic!("{what}: start failed: {e}"),
                Err(_) => {
                    timed_out += 1;
                    real.assert_nothing_held_and_a_retry_works(None, &what)
                        .await;
                }
            }
        }
    }
    println!("{started} started, {timed_out} timed out");
    assert!(timed_out > 0, "no start timed out ({started} started)");
}

#[tokio::test]
async fn daemon_run_stops_when_the_shutdown_future_resolves() {
    let f = fakes();
    let daemon = Arc::new(daemon_over(&f, full_options()));
    daemon.start().await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            daemon
                .run(Box::pin(async move {
                    let _ = rx.await;
                }))
                .await
        })
    };
    assert!(!runner.is_finished());
    tx.send(()).unwrap();
    within(LIMIT, "run after shutdown", runner)
        .await
        .unwrap()
        .unwrap();
    assert!(!daemon.is_running());
    assert!(f.registry.entries().is_empty());
    assert!(!f.lock.is_locked());
}

#[tokio::test]
async fn daemon_run_returns_when_stopped_elsewhere() {
    let f = fakes();
    let daemon = Arc::new(daemon_over(&f, full_options()));
    daemon.start().await.unwrap();
    let runner = {
        let daemon = daemon.clone();
        tokio::spawn(async move { daemon.run(Box::pin(std::future::pending())).await })
    };
    // On this single-threaded runtime, yielding lets `run` start waiting.
    tokio::task::yield_now().await;
    assert!(!runner.is_finished());
    daemon.stop().await.unwrap();
    within(LIMIT, "run after stop", runner)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn daemon_stops_cleanly_on_sigterm_and_unregisters() {
    let dir = tempfile::tempdir().unwrap();
    let (child, mut out) = spawn_child("daemon", dir.path(), 0);
    let pid = child.id().unwrap();
    let started = result_line(&mut out).await;
    let addr = started.strip_prefix("started ").unwrap().to_string();
    assert!(wait_for_health(&addr, LIMIT).await);
    let registry = FileRegistry::new(dir.path().join("registry"));
    assert_eq!(
        registry.get("child", "daemon").await.unwrap().unwrap().pid,
        pid
    );
    // `run` may not listen yet when the first SIGTERM lands: `terminate` repeats it.
    terminate(child, out).await;
    assert!(!dir.path().join("registry/child-daemon.json").exists());
    assert!(!dir.path().join("daemon.pid").exists());
}

// ---------------------------------------------------------------------------------------------
// Module wiring

#[tokio::test]
async fn module_builds_without_side_effects_and_resolves_every_service() {
    let module = ProcessModule::builder().build();
    let lock: Arc<dyn PidLock> = module.resolve();
    let health: Arc<dyn HealthService> = module.resolve();
    let _registry: Arc<dyn Registry> = module.resolve();
    let daemon: Arc<dyn DaemonService> = module.resolve();
    assert_eq!(lock.path(), None);
    assert!(!lock.is_locked());
    assert_eq!(health.addr(), None);
    assert!(health.is_ready());
    assert!(!daemon.is_running());
    // With the defaults, the daemon takes no lock, binds nothing and registers nothing.
    daemon.start().await.unwrap();
    assert_eq!(daemon.health_addr(), None);
    assert_eq!(daemon.registered_entry(), None);
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn module_overrides_reach_the_injected_daemon() {
    let f = fakes();
    let module = ProcessModule::builder()
        .with_component_override::<dyn PidLock>(Box::new(
            FakePidLock::new().with_log(f.log.clone()),
        ))
        .with_component_override::<dyn HealthService>(Box::new(
            FakeHealthService::new().with_log(f.log.clone()),
        ))
        .with_component_override::<dyn Registry>(Box::new(
            MemoryRegistry::new().with_log(f.log.clone()),
        ))
        .with_component_parameters::<Daemon>(DaemonParameters {
            options: full_options(),
        })
        .build();
    let lifecycles = Lifecycles::of_module(&module);
    lifecycles.start().await.unwrap();
    let daemon: Arc<dyn DaemonService> = module.resolve();
    assert!(daemon.is_running());
    assert_eq!(daemon.health_addr(), Some("127.0.0.1:9".parse().unwrap()));
    let registry: Arc<dyn Registry> = module.resolve();
    assert_eq!(registry.list().await.unwrap().len(), 1);
    lifecycles.stop().await.unwrap();
    assert!(!daemon.is_running());
    assert_eq!(f.log.calls(), [&START_STEPS[..], &STOP_STEPS].concat());
}

#[tokio::test]
async fn module_lifecycle_runs_a_real_daemon() {
    let (dir, module, daemon) = resolved_daemon();
    let lifecycles = Lifecycles::of_module(&module);
    lifecycles.start().await.unwrap();
    let addr = daemon.health_addr().unwrap();
    assert!(wait_for_health(&addr.to_string(), LIMIT).await);
    lifecycles.stop().await.unwrap();
    assert!(!dir.path().join("run/agent.pid").exists());
    assert!(!dir.path().join("daemons/core-agent.json").exists());
}

#[tokio::test]
async fn memory_registry_prunes_when_asked() {
    let registry = MemoryRegistry::new().with_pruning();
    registry
        .register(entry("a", "dead", DEAD_PID))
        .await
        .unwrap();
    registry
        .register(entry("a", "live", std::process::id()))
        .await
        .unwrap();
    assert_eq!(registry.list().await.unwrap().len(), 1);
    assert_eq!(registry.entries().len(), 1);
    assert!(matches!(
        registry.register(entry("a/b", "c", 1)).await,
        Err(Error::InvalidName { .. })
    ));
}

#[tokio::test]
async fn health_stop_is_bounded_when_a_request_hangs() {
    let server = server()
        .with_check_timeout(Duration::from_secs(30))
        .with_stop_timeout(Duration::from_millis(300));
    let (check, begun) = hanging_check();
    server.add_check("stuck", check);
    let addr = server.start().await.unwrap();
    let hung = tokio::spawn(async move { http_get(addr, "/health", None).await });
    within(LIMIT, "the hung request", begun.notified()).await;
    let started = Instant::now();
    server.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(http_get(addr, "/ready", None).await.is_err());
    hung.abort();
}

#[tokio::test]
async fn daemon_stop_bounds_the_health_server_by_shutdown_timeout_and_still_releases() {
    let dir = tempfile::tempdir().unwrap();
    let lock = Arc::new(FilePidLock::new(dir.path().join("d.pid")));
    let health = Arc::new(
        server()
            .with_check_timeout(Duration::from_secs(30))
            .with_stop_timeout(Duration::from_secs(30)),
    );
    let (check, begun) = hanging_check();
    health.add_check("stuck", check);
    let daemon = Daemon::new(
        DaemonOptions {
            health: true,
            shutdown_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        lock.clone(),
        health.clone(),
        Arc::new(MemoryRegistry::new()),
    );
    daemon.start().await.unwrap();
    let addr = daemon.health_addr().unwrap();
    let hung = tokio::spawn(async move { http_get(addr, "/health", None).await });
    within(LIMIT, "the hung request", begun.notified()).await;
    let started = Instant::now();
    match daemon.stop().await {
        Err(e @ Error::Timeout { .. }) => assert!(e.to_string().contains(&addr.to_string())),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!daemon.is_running());
    assert!(!lock.is_locked());
    // The abandoned stop still took the server down.
    assert!(http_get(addr, "/ready", None).await.is_err());
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn daemon_stop_drains_after_not_ready_before_anything_else() {
    let drain = Duration::from_secs(5);
    let (f, daemon) = started_draining(drain).await;
    let stopping = tokio::spawn({
        let daemon = daemon.clone();
        async move { daemon.stop().await }
    });
    // On the paused clock: just before the delay is over, readiness is false and nothing else
    // has happened; the stop then goes on.
    tokio::time::sleep(drain - Duration::from_millis(1)).await;
    assert_eq!(f.log.calls(), ["health.not_ready"]);
    assert!(!f.health.is_ready());
    assert!(daemon.is_running());
    let begun = tokio::time::Instant::now();
    stopping.await.unwrap().unwrap();
    assert_eq!(begun.elapsed(), Duration::from_millis(1));
    assert_eq!(f.log.calls(), STOP_STEPS);
    // Without a health server there is nothing to drain.
    let f = fakes();
    let daemon = daemon_over(
        &f,
        DaemonOptions {
            health: false,
            drain_delay: drain,
            ..full_options()
        },
    );
    daemon.start().await.unwrap();
    let begun = tokio::time::Instant::now();
    daemon.stop().await.unwrap();
    assert_eq!(begun.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn on_stopping_drains_before_the_stop_and_the_stop_does_not_drain_again() {
    let drain = Duration::from_secs(5);
    let (f, daemon) = started_draining(drain).await;
    // `run_until_signal` calls `on_stopping` before the processes stop: the drain is there.
    let begun = tokio::time::Instant::now();
    core_process::Lifecycle::on_stopping(&*daemon).await;
    assert_eq!(begun.elapsed(), drain);
    assert_eq!(f.log.calls(), ["health.not_ready"]);
    assert!(!f.health.is_ready());
    assert!(daemon.is_running());
    let begun = tokio::time::Instant::now();
    daemon.stop().await.unwrap();
    assert_eq!(begun.elapsed(), Duration::ZERO, "drained once");
    assert_eq!(f.log.calls(), STOP_STEPS);
}

#[tokio::test]
async fn daemon_refuses_invalid_or_repeated_check_names_before_any_step() {
    for (checks, name, reason) in [
        (vec!["db", "db"], "db", "another check has this name"),
        (vec!["ok", "db: primary"], "db: primary", "`:`"),
        (vec![""], "", "empty"),
        (vec!["has space"], "has space", "whitespace"),
    ] {
        let f = fakes();
        let options = DaemonOptions {
            health_checks: checks.iter().map(|n| (n.to_string(), ok_check())).collect(),
            ..full_options()
        };
        let daemon = daemon_over(&f, options);
        match daemon.start().await {
            Err(
                e @ Error::InvalidName {
                    what: "check name", ..
                },
            ) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("`{name}`")), "{msg}");
                assert!(msg.contains(reason), "{msg}");
            }
            other => panic!("{checks:?}: {other:?}"),
        }
        assert!(f.log.calls().is_empty(), "{:?}", f.log.calls());
        assert!(!daemon.is_running());
    }
}

#[tokio::test]
async fn fake_health_service_runs_liveness_checks_by_kind() {
    let health = FakeHealthService::new();
    health.add_check("alive", ok_check().kind(CheckKind::Liveness));
    health.add_check("warm", failing("cold").kind(CheckKind::Readiness));
    health.add_check("bad name", ok_check());
    assert_eq!(HealthService::check_names(&health), ["alive", "warm"]);
    assert!(health.check_liveness().await.healthy);
    assert!(!health.check().await.healthy);
    assert!(health.try_add_check("alive", ok_check()).is_err());
}

#[tokio::test]
async fn systemd_socket_activation_takes_the_socket_named_health_of_several() {
    // Two descriptors passed: fd 3 (`other`, not a socket) and fd 4 (`health`, the listener).
    // The health server takes the one named for it, not the first.
    let systemd = FakeSystemd::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let passed = listener.local_addr().unwrap();
    let stdin = Stdio::from(std::os::fd::OwnedFd::from(listener));
    let command = activated_child(
        "exec 4<&0 3</dev/null 0</dev/null; \
         export LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=other:health",
    );
    let (child, mut out) = systemd.spawn_with(command, 0, &[], stdin);
    let line = result_line(&mut out).await;
    assert_eq!(started_addr(&line), passed, "{line}");
    assert_eq!(get(passed, "/health").await, (200, "ok\n".to_string()));
    terminate(child, out).await;
}

#[tokio::test]
async fn systemd_watchdog_pings_end_with_a_stop_until_the_next_start() {
    // The child waits six watchdog periods between its stop and its next start: a ping there
    // would come from a watchdog task the stop left running.
    let systemd = FakeSystemd::new();
    let (child, mut out) = systemd.spawn(3, &[("WATCHDOG_USEC", "100000")]);
    systemd.until(|m| m.starts_with("READY=1")).await;
    systemd.until(|m| m == "STATUS=stopped\n").await;
    let idle = systemd.until(|m| m.starts_with("STATUS=starting")).await;
    assert_eq!(idle, ["STATUS=starting\n"], "a ping while stopped");
    started_addr(&result_line(&mut out).await);
    assert_eq!(result_line(&mut out).await, "restarted");
    terminate(child, out).await;
}

#[tokio::test]
async fn systemd_watchdog_pings_end_when_the_daemon_is_dropped() {
    let systemd = FakeSystemd::new();
    let (mut child, mut out) = systemd.spawn(4, &[("WATCHDOG_USEC", "100000")]);
    systemd.until(|m| m.starts_with("READY=1")).await;
    started_addr(&result_line(&mut out).await);
    // The child's `set_ready(false)`, just before it drops the daemon.
    systemd.until(|m| m.starts_with("STATUS=")).await;
    assert_eq!(result_line(&mut out).await, "dropped");
    assert!(
        within(LIMIT, "child exit", child.wait())
            .await
            .unwrap()
            .success()
    );
    // At most one ping between the status line and the drop (another thread's, racing it);
    // none in the six periods after.
    let after = systemd.queued();
    assert!(
        after.iter().filter(|m| *m == "WATCHDOG=1\n").count() <= 1,
        "pings after the daemon was dropped: {after:?}"
    );
}

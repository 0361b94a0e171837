//! [`TokioProcessService`]: the [`ProcessService`] on tokio.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use shaku::Component;

use super::{
    DEFAULT_BUFFER_SIZE, DRAIN_TIMEOUT, Launch, Process, ProcessService, RunOptions, Spec, prepare,
};
use crate::command::{command_line, exec_check, spawn_error};
use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::services::event_bus::EventBus;
use crate::sys;
use crate::text::ProcessId;

/// [`ProcessService`] on tokio: one supervisor task per process, output drained by readiness,
/// events on the injected [`EventBus`].
///
/// Dropping it kills every process that is not detached; [`Lifecycle::on_stop`] is
/// [`shutdown`](ProcessService::shutdown). See the [`crate::services::process`] module's
/// "Caveats".
#[derive(Component)]
#[shaku(interface = ProcessService)]
pub struct TokioProcessService {
    #[shaku(inject)]
    bus: Arc<dyn EventBus>,
    /// Size of each process's output ring buffer, in bytes (default [`DEFAULT_BUFFER_SIZE`]).
    #[shaku(default = DEFAULT_BUFFER_SIZE)]
    buffer_size: usize,
    #[shaku(force_default)]
    table: Table,
}

#[derive(Default)]
struct Table {
    next: AtomicU64,
    processes: Mutex<Processes>,
}

#[derive(Default)]
struct Processes {
    /// By the `N` of their id `proc-N`: in start order, and no hashing per spawn.
    by_seq: BTreeMap<u64, Process>,
    /// Set by `shutdown` (under this lock, so no start slips past it); cleared by `on_start`.
    closed: bool,
}

impl Processes {
    /// The processes a shutdown or a kill ends: running and not detached. Signalled after the
    /// table's lock is released.
    fn killable(&self) -> Vec<Process> {
        self.by_seq
            .values()
            .filter(|p| p.is_running() && !p.detached())
            .cloned()
            .collect()
    }
}

impl TokioProcessService {
    /// A service publishing to `bus`, with `buffer_size` bytes of output kept per process.
    pub fn new(bus: Arc<dyn EventBus>, buffer_size: usize) -> Self {
        TokioProcessService {
            bus,
            buffer_size,
            table: Table::default(),
        }
    }

    /// The bus the service publishes to.
    pub fn event_bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    fn table(&self) -> MutexGuard<'_, Processes> {
        crate::sync::lock(&self.table.processes)
    }

    fn closed_error() -> Error {
        Error::ShutDown {
            component: "TokioProcessService".into(),
        }
    }

    fn spawn(&self, opts: RunOptions) -> Result<Launch> {
        opts.validate()?;
        let spawn_err = |source: std::io::Error| Error::Spawn {
            command: opts.command.clone(),
            source,
        };
        let check = || exec_check(&opts.command, opts.dir.as_deref(), &opts.env);
        let mut cmd = if opts.die_with_parent {
            let wrapper = sys::pdeathsig_wrapper().ok_or_else(|| Error::InvalidOptions {
                command: opts.command.clone(),
                reason: "die_with_parent needs util-linux's `setpriv` on PATH (Linux only)".into(),
            })?;
            // The wrapper looks the program up and executes it itself, in the child; whatever
            // fails there is an exit status, not an error, and its `exec` runs through
            // `/bin/sh` what the direct spawn refuses (ENOEXEC). So refuse here, with the
            // direct spawn's errors, what the direct spawn would refuse.
            match check() {
                sys::ExecCheck::Runs(_) => {}
                sys::ExecCheck::NotFound => {
                    return Err(Error::CommandNotFound {
                        command: opts.command.clone(),
                    });
                }
                sys::ExecCheck::Fails(source) => return Err(spawn_err(source)),
            }
            let mut cmd = std::process::Command::new(&wrapper);
            // The `PWD` a direct spawn would pass: the child's own setting, else ours.
            let pwd = match opts.env.iter().rev().find(|(k, _)| k == "PWD") {
                Some((_, v)) => Some(std::ffi::OsString::from(v)),
                None => std::env::var_os("PWD"),
            };
            // The shell in the wrapper drops variables whose names are not shell identifiers
            // (`CARGO_BIN_EXE_core-process`): those the child would get are passed again
            // through `env`.
            let mut odd: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
                .filter(|(k, _)| !sys::is_shell_name(k))
                .filter(|(k, _)| !opts.env.iter().any(|(n, _)| k == n.as_str()))
                .collect();
            odd.extend(
                opts.env
                    .iter()
                    .rev()
                    .filter(|(k, _)| !sys::is_shell_name(k.as_ref()))
                    .map(|(k, v)| (k.into(), v.into())),
            );
            odd.dedup_by(|a, b| a.0 == b.0);
            cmd.args(sys::pdeathsig_args(sys::current_pid(), pwd.as_deref()))
                .args(sys::pdeathsig_env(&odd))
                .args(sys::pdeathsig_command(&wrapper, &opts.command));
            cmd
        } else {
            std::process::Command::new(&opts.command)
        };
        cmd.args(&opts.args);
        if let Some(dir) = &opts.dir {
            cmd.current_dir(dir);
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let stdin = if opts.stdin {
            let (ours, childs) = sys::input_pipe().map_err(spawn_err)?;
            cmd.stdin(Stdio::from(childs));
            Some(ours)
        } else {
            cmd.stdin(Stdio::null());
            None
        };
        let (stdout, out_write) = sys::output_pipe().map_err(spawn_err)?;
        let (stderr, err_write) = sys::output_pipe().map_err(spawn_err)?;
        cmd.stdout(Stdio::from(out_write));
        cmd.stderr(Stdio::from(err_write));
        if opts.process_group {
            sys::own_process_group(&mut cmd);
        }
        let child = sys::spawn(&mut cmd, !opts.detach)
            .map_err(|source| spawn_error(&opts.command, opts.dir.as_deref(), &opts.env, source))?;
        // `cmd` still holds the child's ends of the pipes: close them now, so end of file
        // arrives when the child (and its descendants) close theirs.
        drop(cmd);
        let seq = self.table.next.fetch_add(1, Ordering::Relaxed) + 1;
        let capture =
            (!opts.disable_capture).then(|| opts.output_capacity.unwrap_or(self.buffer_size));
        Ok(Launch {
            process_spec: Spec {
                seq,
                id: process_id(seq),
                pid: child.id(),
                command: opts.command,
                args: opts.args,
                dir: opts.dir,
                detach: opts.detach,
                grace: opts.grace_period,
                capture,
            },
            child,
            stdin,
            stdout,
            stderr,
            group: opts.process_group,
            stop_signal: opts.stop_signal,
            timeout: opts.timeout,
            cancel: opts.cancel,
            bus: self.bus.clone(),
        })
    }
}

/// What every id of the service starts with.
const PREFIX: &str = "proc-";

/// The id `proc-{seq}`, written without the formatting machinery (once per spawn).
fn process_id(seq: u64) -> ProcessId {
    let at = PREFIX.len();
    let digits = seq.checked_ilog10().map_or(1, |d| d as usize + 1);
    let mut buf = [0u8; PREFIX.len() + 20];
    buf[..at].copy_from_slice(PREFIX.as_bytes());
    let mut n = seq;
    for slot in buf[at..at + digits].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let text = std::str::from_utf8(&buf[..at + digits]).unwrap_or("proc-?");
    ProcessId::from(text)
}

/// The `N` of an id `proc-N` exactly as [`process_id`] writes it (no sign, no leading zero).
fn seq_of(id: &str) -> Option<u64> {
    let digits = id.strip_prefix(PREFIX)?;
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl std::fmt::Debug for TokioProcessService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioProcessService")
            .field("buffer_size", &self.buffer_size)
            .field("processes", &self.table().by_seq.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lifecycle for TokioProcessService {
    /// Opens the service again after a [`shutdown`](ProcessService::shutdown).
    async fn on_start(&self) -> Result<()> {
        self.table().closed = false;
        Ok(())
    }

    /// Shuts every running process down (see [`ProcessService::shutdown`]).
    async fn on_stop(&self) -> Result<()> {
        self.shutdown().await
    }

    /// Closes the service to new starts and sends SIGKILL to every running process that is
    /// not detached (group included), without waiting.
    fn on_kill(&self) {
        let targets = {
            let mut table = self.table();
            table.closed = true;
            table.killable()
        };
        for p in targets {
            p.start_kill();
        }
    }
}

#[async_trait]
impl ProcessService for TokioProcessService {
    fn events(&self) -> Option<Arc<dyn EventBus>> {
        Some(self.bus.clone())
    }

    async fn start(&self, opts: RunOptions) -> Result<Process> {
        if self.table().closed {
            return Err(Self::closed_error());
        }
        // Every spawn error names the command already; fields of a disabled `debug!` are not
        // evaluated, so logging costs nothing per spawn unless it is on.
        let launch = self.spawn(opts).inspect_err(|e| {
            tracing::debug!(error = %e, "start failed");
        })?;
        let (process, supervisor) = prepare(launch);
        {
            // Findable before anyone hears of it, and never behind a shutdown's back: a
            // shutdown that began meanwhile gets this process killed instead.
            let mut table = self.table();
            if table.closed {
                drop(table);
                drop(supervisor);
                return Err(Self::closed_error());
            }
            table.by_seq.insert(process.seq(), process.clone());
        }
        supervisor.begin();
        tracing::debug!(
            id = process.id(),
            pid = process.pid(),
            command = %command_line(process.command(), process.args()),
            "started"
        );
        Ok(process)
    }

    fn get(&self, id: &str) -> Result<Process> {
        seq_of(id)
            .and_then(|seq| self.table().by_seq.get(&seq).cloned())
            .ok_or_else(|| Error::ProcessNotFound { id: id.to_string() })
    }

    fn list(&self) -> Vec<Process> {
        self.table().by_seq.values().cloned().collect()
    }

    fn remove(&self, id: &str) -> Result<()> {
        let seq = seq_of(id);
        let mut table = self.table();
        match seq.and_then(|seq| table.by_seq.get(&seq)) {
            None => Err(Error::ProcessNotFound { id: id.to_string() }),
            Some(p) if p.is_running() => Err(Error::StillRunning {
                id: id.to_string(),
                pid: p.pid(),
            }),
            Some(p) => {
                let seq = p.seq();
                table.by_seq.remove(&seq);
                Ok(())
            }
        }
    }

    fn clear(&self) {
        self.table().by_seq.retain(|_, p| p.is_running());
    }

    async fn shutdown(&self) -> Result<()> {
        let targets: Vec<Process> = {
            let mut table = self.table();
            table.closed = true;
            table.killable()
        };
        if targets.is_empty() {
            return Ok(());
        }
        let longest = targets
            .iter()
            .map(Process::grace_period)
            .max()
            .unwrap_or_default();
        let bound = longest
            .saturating_add(DRAIN_TIMEOUT)
            .saturating_add(Duration::from_secs(5));
        let mut stops = tokio::task::JoinSet::new();
        for p in &targets {
            let p = p.clone();
            stops.spawn(async move { p.stop(p.grace_period()).await });
        }
        let all = async { while stops.join_next().await.is_some() {} };
        if tokio::time::timeout(bound, all).await.is_err() {
            let left: Vec<&str> = targets
                .iter()
                .filter(|p| p.is_running())
                .map(Process::id)
                .collect();
            return Err(Error::Timeout {
                what: format!("shutdown of {}", left.join(", ")),
                timeout: bound,
            });
        }
        Ok(())
    }
}

impl Drop for TokioProcessService {
    fn drop(&mut self) {
        let targets = self.table().killable();
        for p in targets {
            p.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_written_as_format_writes_them() {
        for seq in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX / 10, u64::MAX] {
            assert_eq!(process_id(seq).as_str(), format!("proc-{seq}"));
        }
    }

    #[test]
    fn only_ids_written_by_the_service_name_a_seq() {
        assert_eq!(seq_of("proc-1"), Some(1));
        assert_eq!(seq_of("proc-18446744073709551615"), Some(u64::MAX));
        for other in [
            "",
            "proc-",
            "proc-01",
            "proc-0",
            "proc-+1",
            "proc--1",
            "proc-1 ",
            " proc-1",
            "Proc-1",
            "proc-1a",
            "proc-١",
            "proc-18446744073709551616",
            "1",
        ] {
            assert_eq!(seq_of(other), None, "{other:?}");
        }
    }

    proptest! {
        #[test]
        fn an_id_names_its_seq_and_nothing_else(seq in 1..=u64::MAX, text in "(proc-|Proc-|)[-+0-9a ]{0,22}") {
            let id = process_id(seq);
            prop_assert_eq!(id.as_str(), format!("proc-{seq}"));
            prop_assert_eq!(seq_of(&id), Some(seq));
            // Any other text names a seq only when it is that seq's id.
            if let Some(n) = seq_of(&text) {
                prop_assert_eq!(text, format!("proc-{n}"));
            }
        }
    }
}

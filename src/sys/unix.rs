//! Unix implementation of the platform facade, on `rustix`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::process::{Pid, Signal as RawSignal};
use tokio::net::unix::pipe;

use crate::types::Signal;

const TABLE: [(Signal, RawSignal); 20] = [
    (Signal::Hup, RawSignal::HUP),
    (Signal::Int, RawSignal::INT),
    (Signal::Quit, RawSignal::QUIT),
    (Signal::Ill, RawSignal::ILL),
    (Signal::Trap, RawSignal::TRAP),
    (Signal::Abrt, RawSignal::ABORT),
    (Signal::Bus, RawSignal::BUS),
    (Signal::Fpe, RawSignal::FPE),
    (Signal::Kill, RawSignal::KILL),
    (Signal::Usr1, RawSignal::USR1),
    (Signal::Segv, RawSignal::SEGV),
    (Signal::Usr2, RawSignal::USR2),
    (Signal::Pipe, RawSignal::PIPE),
    (Signal::Alrm, RawSignal::ALARM),
    (Signal::Term, RawSignal::TERM),
    (Signal::Chld, RawSignal::CHILD),
    (Signal::Cont, RawSignal::CONT),
    (Signal::Stop, RawSignal::STOP),
    (Signal::Tstp, RawSignal::TSTP),
    (Signal::Winch, RawSignal::WINCH),
];

/// The platform number of `sig`.
pub(crate) fn signal_number(sig: Signal) -> i32 {
    match sig {
        Signal::Other(n) => n,
        named => TABLE
            .iter()
            .find(|(s, _)| *s == named)
            .map(|(_, raw)| raw.as_raw())
            .unwrap_or(0),
    }
}

/// Our name for the platform signal `number`.
pub(crate) fn signal_from_number(number: i32) -> Signal {
    TABLE
        .iter()
        .find(|(_, raw)| raw.as_raw() == number)
        .map(|(s, _)| *s)
        .unwrap_or(Signal::Other(number))
}

fn raw_signal(sig: Signal) -> io::Result<RawSignal> {
    if let Some((_, raw)) = TABLE.iter().find(|(s, _)| *s == sig) {
        return Ok(*raw);
    }
    RawSignal::from_named_raw(signal_number(sig)).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{sig} is not a signal on this platform"),
        )
    })
}

fn pid_of(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .filter(|p| p.as_raw_nonzero().get() > 1)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("pid {pid} cannot be signalled"),
            )
        })
}

/// Sends `sig` to the process `pid`, or to the process group it leads when `group`.
///
/// The caller guarantees that `pid` has not been reaped (so neither it nor its group id can
/// have been reused).
pub(crate) fn send_signal(pid: u32, sig: Signal, group: bool) -> io::Result<()> {
    let target = pid_of(pid)?;
    let raw = raw_signal(sig)?;
    if group {
        rustix::process::kill_process_group(target, raw)?;
    } else {
        rustix::process::kill_process(target, raw)?;
    }
    Ok(())
}

/// Whether `e` says the target process (or group) does not exist.
pub(crate) fn is_no_such_process(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error())
}

/// Whether a process with this pid exists (a zombie counts; "exists but not ours" counts).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(target) = pid_of(pid) else {
        return pid == 1;
    };
    match rustix::process::test_kill_process(target) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// This process's pid.
pub(crate) fn current_pid() -> u32 {
    std::process::id()
}

/// The start time of `pid` in clock ticks since boot, where the platform tells it (Linux
/// `/proc/<pid>/stat`, field 22). Used to tell a live pid from a reused one.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// When `pid` started, on the wall clock, where the platform tells it (Linux): its start time
/// since boot ([`process_start_time`]) taken back from now. Precise to a clock tick (10 ms,
/// rounded down); a step of the wall clock since the process started shifts it by the step.
pub(crate) fn process_started_at(pid: u32) -> Option<std::time::SystemTime> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::time::{Duration, SystemTime};
        let ticks = process_start_time(pid)?;
        let per_second = rustix::param::clock_ticks_per_second().max(1);
        let since_boot = Duration::from_secs(ticks / per_second)
            + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second);
        let up = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let now = SystemTime::now();
        let up = Duration::new(
            u64::try_from(up.tv_sec).ok()?,
            u32::try_from(up.tv_nsec).ok()?,
        );
        now.checked_sub(up.checked_sub(since_boot)?)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = pid;
        None
    }
}

/// A pipe for a child's output: `(our read end, registered with tokio and non-blocking; the
/// child's write end, blocking)`. Both ends are close-on-exec, so no other child inherits them
/// by accident (the child's copy on fd 1 or 2 is made by `dup2`, which clears the flag).
///
/// Must be called inside a tokio runtime.
pub(crate) fn output_pipe() -> io::Result<(pipe::Receiver, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    rustix::io::ioctl_fionbio(&read, true)?;
    Ok((pipe::Receiver::from_owned_fd(read)?, write))
}

/// Becomes ready when a child exits, before it is reaped (a Linux pidfd).
#[derive(Debug)]
pub(crate) struct ExitNotifier {
    // tokio offers no safe readiness wrapper for an arbitrary fd other than its pipe type,
    // which registers the fd with the reactor for read readiness and checks nothing else when
    // unchecked: exactly the pidfd contract (readable once the process has exited).
    fd: pipe::Receiver,
}

impl ExitNotifier {
    /// Resolves once the process has exited.
    pub(crate) async fn exited(&self) -> io::Result<()> {
        self.fd.readable().await
    }
}

/// An [`ExitNotifier`] for the unreaped child `pid`; `None` where the platform has no pidfd
/// (callers then fall back to reaping directly). Must be called inside a tokio runtime.
pub(crate) fn exit_notifier(pid: u32) -> Option<ExitNotifier> {
    #[cfg(target_os = "linux")]
    {
        let target = pid_of(pid).ok()?;
        let fd = rustix::process::pidfd_open(target, rustix::process::PidfdFlags::NONBLOCK).ok()?;
        let fd = pipe::Receiver::from_owned_fd_unchecked(fd).ok()?;
        Some(ExitNotifier { fd })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// The program that arms the parent-death signal before it executes the real command
/// (`setpriv --pdeathsig KILL -- cmd args`): util-linux's `setpriv`, looked up on `PATH`.
pub(crate) fn pdeathsig_wrapper() -> Option<PathBuf> {
    if cfg!(target_os = "linux") {
        find_program(Path::new("setpriv"))
    } else {
        None
    }
}

/// Arguments that make the wrapper arm SIGKILL as the parent-death signal.
pub(crate) const PDEATHSIG_ARGS: [&str; 3] = ["--pdeathsig", "KILL", "--"];

/// Resolves `program` the way a child started in `dir` (the manager's directory when `None`)
/// with `path` as its `PATH` (the manager's when `None`) would: a name with a `/` relative to
/// `dir`, else each `PATH` entry (relative entries relative to `dir`).
pub(crate) fn find_program_in(
    program: &Path,
    dir: Option<&Path>,
    path: Option<&str>,
) -> Option<PathBuf> {
    let in_dir = |p: PathBuf| match dir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    };
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        return find_program(&in_dir(program.to_path_buf()));
    }
    let path = match path {
        Some(p) => std::ffi::OsString::from(p),
        None => std::env::var_os("PATH")?,
    };
    std::env::split_paths(&path)
        .map(|entry| in_dir(entry).join(program))
        .find(|candidate| find_program(candidate).is_some())
}

/// Resolves `program` the way `execvp` would: a name with a `/` as it is, else each `PATH` entry.
pub(crate) fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        return executable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
}

/// The calling user's home directory.
pub(crate) fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Takes an exclusive advisory lock (`flock`) on `file` without waiting: `Ok(false)` when
/// another open file description holds it (in this process or another).
pub(crate) fn try_lock_exclusive(file: &std::fs::File) -> io::Result<bool> {
    match fs4::FileExt::try_lock(file) {
        Ok(()) => Ok(true),
        Err(fs4::TryLockError::WouldBlock) => Ok(false),
        Err(fs4::TryLockError::Error(e)) => Err(e),
    }
}

/// Takes an exclusive advisory lock on `file`, waiting for it. Blocks the thread.
pub(crate) fn lock_exclusive(file: &std::fs::File) -> io::Result<()> {
    fs4::FileExt::lock(file)
}

/// Releases a lock taken with [`try_lock_exclusive`] or [`lock_exclusive`].
pub(crate) fn unlock(file: &std::fs::File) -> io::Result<()> {
    fs4::FileExt::unlock(file)
}

/// Whether the open `file` is the file that `path` names now (same device and inode): false
/// when the path was removed or replaced after the file was opened.
pub(crate) fn is_same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes the file `path`: `Ok(false)` when there is none (removed meanwhile by someone
/// else, such as a go-process that takes no lock).
pub(crate) fn remove_if_present(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// `OpenOptions` that create files with permission bits `mode` (before the umask).
pub(crate) fn open_options(mode: u32) -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.mode(mode);
    options
}

/// Resolves once the process receives SIGTERM or SIGINT, and says which.
///
/// Once called, these signals no longer end the process by default: tokio keeps its handler
/// installed for the rest of the process's life.
///
/// # Errors
/// When the signal handlers cannot be installed (no tokio runtime with signals enabled).
pub(crate) async fn termination_signal() -> io::Result<Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok(Signal::Term),
        _ = int.recv() => Ok(Signal::Int),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_numbers_round_trip() {
        assert_eq!(signal_number(Signal::Kill), 9);
        assert_eq!(signal_number(Signal::Term), 15);
        assert_eq!(signal_from_number(15), Signal::Term);
        assert_eq!(signal_from_number(64), Signal::Other(64));
    }

    #[test]
    fn liveness() {
        assert!(pid_alive(current_pid()));
        assert!(!pid_alive(999_999_999));
        assert!(process_start_time(current_pid()).is_some());
        assert!(process_start_time(999_999_999).is_none());
        assert!(process_started_at(999_999_999).is_none());
    }

    #[test]
    fn a_process_start_is_on_the_wall_clock() {
        let before = std::time::SystemTime::now();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let after = std::time::SystemTime::now();
        let started = process_started_at(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        if cfg!(target_os = "linux") {
            let started = started.expect("Linux tells start times");
            // A clock tick of rounding down, and a little for the two clocks read apart.
            let tick = std::time::Duration::from_millis(20);
            assert!(started + tick >= before, "{started:?} < {before:?}");
            assert!(started <= after + tick, "{started:?} > {after:?}");
            let me = process_started_at(current_pid()).unwrap();
            assert!(me <= before, "{me:?} > {before:?}");
        }
    }

    #[test]
    fn removes_a_file_if_present() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        assert!(remove_if_present(&path).unwrap());
        assert!(!path.exists());
        assert!(!remove_if_present(&path).unwrap());
        // Anything else is an error: a directory is not removed as a file.
        assert!(remove_if_present(dir.path()).is_err());
        assert!(dir.path().is_dir());
    }

    #[test]
    fn refuses_to_signal_init_or_everyone() {
        assert!(send_signal(0, Signal::Term, true).is_err());
        assert!(send_signal(1, Signal::Term, false).is_err());
    }

    #[test]
    fn finds_programs() {
        assert!(find_program(Path::new("sh")).is_some());
        assert!(find_program(Path::new("definitely-not-a-program-xyz")).is_none());
        assert!(find_program(Path::new("/bin/sh")).is_some());
        let dir = std::env::temp_dir();
        assert!(find_program_in(Path::new("sh"), Some(&dir), None).is_some());
        assert!(find_program_in(Path::new("sh"), None, Some("/nonexistent-dir")).is_none());
        assert!(find_program_in(Path::new("./sh"), Some(Path::new("/bin")), None).is_some());
        assert!(find_program_in(Path::new("./sh"), Some(&dir), None).is_none());
    }
}

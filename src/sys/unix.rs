//! Unix implementation of the platform facade, on `rustix` (and `sd-notify` for the
//! descriptors of socket activation).

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::process::{Pid, Signal as RawSignal};
use tokio::net::unix::pipe;

/// The manager's end of a child's output pipe.
pub(crate) type PipeReader = pipe::Receiver;

/// A child's exit status, as the OS reports it.
pub(crate) type ExitStatus = std::process::ExitStatus;

/// How a child ended, decoded from its [`ExitStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It exited with this code.
    Code(i32),
    /// This signal (its platform number) ended it.
    Signal(i32),
    /// Neither (a stopped or continued status, which a reaped child does not have).
    Unknown,
}

/// Decodes an exit status.
pub(crate) fn exit_parts(status: ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(sig)) => Exit::Signal(sig),
        (None, None) => Exit::Unknown,
    }
}

/// Makes the child lead a process group of its own (`setpgid(0, 0)` in the child, through
/// `posix_spawn` attributes, so the spawn keeps its fast path).
pub(crate) fn own_process_group(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
}

/// The signals every Unix has (each has a variant of its own in [`Signal`]), by name.
///
/// [`Signal`]: crate::Signal
const TABLE: [(&str, RawSignal); 28] = [
    ("SIGHUP", RawSignal::HUP),
    ("SIGINT", RawSignal::INT),
    ("SIGQUIT", RawSignal::QUIT),
    ("SIGILL", RawSignal::ILL),
    ("SIGTRAP", RawSignal::TRAP),
    ("SIGABRT", RawSignal::ABORT),
    ("SIGBUS", RawSignal::BUS),
    ("SIGFPE", RawSignal::FPE),
    ("SIGKILL", RawSignal::KILL),
    ("SIGUSR1", RawSignal::USR1),
    ("SIGSEGV", RawSignal::SEGV),
    ("SIGUSR2", RawSignal::USR2),
    ("SIGPIPE", RawSignal::PIPE),
    ("SIGALRM", RawSignal::ALARM),
    ("SIGTERM", RawSignal::TERM),
    ("SIGCHLD", RawSignal::CHILD),
    ("SIGCONT", RawSignal::CONT),
    ("SIGSTOP", RawSignal::STOP),
    ("SIGTSTP", RawSignal::TSTP),
    ("SIGWINCH", RawSignal::WINCH),
    ("SIGTTIN", RawSignal::TTIN),
    ("SIGTTOU", RawSignal::TTOU),
    ("SIGURG", RawSignal::URG),
    ("SIGXCPU", RawSignal::XCPU),
    ("SIGXFSZ", RawSignal::XFSZ),
    ("SIGVTALRM", RawSignal::VTALARM),
    ("SIGPROF", RawSignal::PROF),
    ("SIGSYS", RawSignal::SYS),
];

/// A table of `(name, signal)` rows in groups, each group under one `#[cfg]` that the macro
/// puts on each of its rows: a platform list is written once per group.
macro_rules! signal_table {
    ($( #[cfg($platforms:meta)] { $( ($name:literal, $signal:ident) ),* $(,)? } )*) => {
        &[ $( $( #[cfg($platforms)] ($name, RawSignal::$signal), )* )* ]
    };
}

/// The platform's other named signals (those without a variant), by their conventional name.
/// Each `cfg` is a subset of the one under which `rustix` defines the constant.
const PLATFORM_NAMES: &[(&str, RawSignal)] = signal_table! {
    #[cfg(any(target_os = "linux", target_os = "android"))] {
        ("SIGIO", IO),
        ("SIGPWR", POWER),
    }
    #[cfg(all(
        any(target_os = "linux", target_os = "android"),
        not(any(
            target_arch = "mips",
            target_arch = "mips32r6",
            target_arch = "mips64",
            target_arch = "mips64r6",
            target_arch = "sparc",
            target_arch = "sparc64",
        )),
    ))] {
        ("SIGSTKFLT", STKFLT),
    }
    #[cfg(any(
        target_vendor = "apple",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "netbsd",
        target_os = "openbsd",
    ))] {
        ("SIGIO", IO),
        ("SIGEMT", EMT),
        ("SIGINFO", INFO),
    }
    #[cfg(target_os = "freebsd")] {
        ("SIGTHR", THR),
        ("SIGLIBRT", LIBRT),
    }
};

/// Other names that parse (never displayed).
const ALIASES: &[(&str, RawSignal)] = &[
    ("SIGIOT", RawSignal::ABORT),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    ("SIGPOLL", RawSignal::IO),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    ("SIGCLD", RawSignal::CHILD),
];

/// The conventional name of the platform's signal `number` (`SIGTERM`, `SIGIO`, `SIGPWR`,
/// ...). Real-time signals have none: they display by number.
pub(crate) fn signal_name(number: i32) -> Option<&'static str> {
    TABLE
        .iter()
        .chain(PLATFORM_NAMES)
        .find(|(_, raw)| raw.as_raw() == number)
        .map(|(name, _)| *name)
}

/// The number of the signal called `name` (upper case, with its `SIG` prefix) among the
/// platform's signals, the aliases, and the real-time signals (`SIGRTMIN`, `SIGRTMIN+n`,
/// `SIGRTMAX`, `SIGRTMAX-n`, within the C library's range).
pub(crate) fn signal_by_name(name: &str) -> Option<i32> {
    if let Some((_, raw)) = TABLE
        .iter()
        .chain(PLATFORM_NAMES)
        .chain(ALIASES)
        .find(|(n, _)| *n == name)
    {
        return Some(raw.as_raw());
    }
    let (min, max) = realtime_signals()?;
    let offset = |rest: &str, sign: u8| -> Option<i32> {
        match rest.as_bytes() {
            [] => Some(0),
            [s, digits @ ..] if *s == sign && !digits.is_empty() => {
                if !digits.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                std::str::from_utf8(digits).ok()?.parse().ok()
            }
            _ => None,
        }
    };
    let number = if let Some(rest) = name.strip_prefix("SIGRTMIN") {
        min.checked_add(offset(rest, b'+')?)?
    } else if let Some(rest) = name.strip_prefix("SIGRTMAX") {
        max.checked_sub(offset(rest, b'-')?)?
    } else {
        return None;
    };
    (min..=max).contains(&number).then_some(number)
}

/// The real-time signals that may be sent here (the C library's `SIGRTMIN..=SIGRTMAX`, which
/// leaves out those it reserves for itself), where the platform has them.
pub(crate) fn realtime_signals() -> Option<(i32, i32)> {
    realtime::range()
}

/// `number` as a signal that may be sent: a named signal of the platform, or a real-time one.
fn checked_signal(number: i32) -> Option<RawSignal> {
    realtime::checked(number)
}

/// The items of the first block where the `cfg` predicate holds, those of the second where it
/// does not: the predicate is written once.
macro_rules! cfg_else {
    (#[cfg($predicate:meta)] { $($then:item)* } else { $($otherwise:item)* }) => {
        $( #[cfg($predicate)] $then )*
        $( #[cfg(not($predicate))] $otherwise )*
    };
}

cfg_else! {
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "solaris",
        target_os = "illumos",
        target_os = "hurd",
    ))] {
        /// Platforms with real-time signals: through `rustix-libc-wrappers`' safe constructors,
        /// which refuse the numbers the C library reserves (glibc's 32 and 33).
        mod realtime {
            use rustix::process::Signal as RawSignal;
            use rustix_libc_wrappers::process::SignalExt;

            pub(super) fn range() -> Option<(i32, i32)> {
                Some((RawSignal::rt_min().as_raw(), RawSignal::rt_max().as_raw()))
            }

            pub(super) fn checked(number: i32) -> Option<RawSignal> {
                RawSignal::from_raw(number)
            }
        }
    } else {
        /// Platforms without real-time signals: the named ones only.
        mod realtime {
            use rustix::process::Signal as RawSignal;

            pub(super) fn range() -> Option<(i32, i32)> {
                None
            }

            pub(super) fn checked(number: i32) -> Option<RawSignal> {
                RawSignal::from_named_raw(number)
            }
        }
    }
}

fn raw_signal(number: i32) -> io::Result<RawSignal> {
    if let Some((_, raw)) = TABLE.iter().find(|(_, raw)| raw.as_raw() == number) {
        return Ok(*raw);
    }
    checked_signal(number).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "signal {number} cannot be sent: it is not a signal on this platform, or the C library reserves it"
            ),
        )
    })
}

/// Whether the signal `number` can be sent on this platform (whatever the target).
pub(crate) fn can_send(number: i32) -> bool {
    raw_signal(number).is_ok()
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

/// Sends the signal `number` to the process `pid`, or to the process group it leads when
/// `group`.
///
/// The caller guarantees that `pid` has not been reaped (so neither it nor its group id can
/// have been reused).
pub(crate) fn send_signal(pid: u32, number: i32, group: bool) -> io::Result<()> {
    let target = pid_of(pid)?;
    let raw = raw_signal(number)?;
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

/// The resident set size of `pid` in bytes, where the platform tells it (Linux
/// `/proc/<pid>/statm`, field 2, in pages). `None` elsewhere or once the process is gone.
pub(crate) fn resident_memory(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(rustix::param::page_size() as u64))
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
    // Unchecked: it is a pipe's read end, non-blocking, as tokio requires; the checked
    // conversion would spend two more system calls per pipe finding that out.
    Ok((pipe::Receiver::from_owned_fd_unchecked(read)?, write))
}

/// A pipe for a child's standard input: `(our write end, the child's read end)`, both
/// close-on-exec (the child's copy on fd 0 is made by `dup2`, which clears the flag).
///
/// Our end costs nothing but the descriptor until it is first written to: only then is it
/// made non-blocking and registered with the runtime (most children are never written to, and
/// registering and deregistering each one's stdin cost four system calls per spawn).
pub(crate) fn input_pipe() -> io::Result<(InputPipe, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    Ok((
        InputPipe {
            state: InputState::Idle(Some(write)),
        },
        read,
    ))
}

/// Our end of a child's stdin pipe (see [`input_pipe`]): an [`AsyncWrite`](tokio::io::AsyncWrite)
/// that registers with the runtime on its first write. Closing it (dropping) closes the pipe.
#[derive(Debug)]
pub(crate) struct InputPipe {
    state: InputState,
}

#[derive(Debug)]
enum InputState {
    /// Not written to yet: a plain descriptor (`None` only if making it ready failed).
    Idle(Option<OwnedFd>),
    /// Non-blocking and registered with the runtime.
    Ready(pipe::Sender),
}

impl InputPipe {
    /// The registered pipe, registering it now if it is not yet.
    fn ready(&mut self) -> io::Result<&mut pipe::Sender> {
        if let InputState::Idle(fd) = &mut self.state {
            let fd = fd.take().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the stdin pipe could not be set up",
                )
            })?;
            rustix::io::ioctl_fionbio(&fd, true)?;
            // Unchecked: a pipe's write end, now non-blocking.
            self.state = InputState::Ready(pipe::Sender::from_owned_fd_unchecked(fd)?);
        }
        match &mut self.state {
            InputState::Ready(sender) => Ok(sender),
            // Made ready just above, or returned its error.
            InputState::Idle(_) => Err(io::Error::other("the stdin pipe is not set up")),
        }
    }
}

impl tokio::io::AsyncWrite for InputPipe {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.ready() {
            Ok(sender) => std::pin::Pin::new(sender).poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match &mut self.state {
            InputState::Ready(sender) => std::pin::Pin::new(sender).poll_flush(cx),
            // Nothing buffered: a pipe never written to has nothing to flush.
            InputState::Idle(_) => std::task::Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match &mut self.state {
            InputState::Ready(sender) => std::pin::Pin::new(sender).poll_shutdown(cx),
            InputState::Idle(_) => std::task::Poll::Ready(Ok(())),
        }
    }
}

/// A spawned child process: its exit is watched by a pidfd where the platform has one (else
/// by `SIGCHLD`), and it is reaped by [`Child::wait`]. Dropped before that, it is killed
/// (when spawned with `kill_on_drop`) and reaped anyway, so it never stays a zombie.
///
/// This replaces tokio's `Child`, which watches the child with a pidfd of its own: with ours
/// too that was two pidfds, four more system calls and one more wake-up per spawn.
#[derive(Debug)]
pub(crate) struct Child {
    /// `None` once reaped.
    child: Option<std::process::Child>,
    watch: ExitWatch,
    kill_on_drop: bool,
}

#[derive(Debug)]
enum ExitWatch {
    /// Readable once the child has exited, before it is reaped. tokio offers no safe readiness
    /// wrapper for an arbitrary fd other than its pipe type, which registers the fd with the
    /// reactor for read readiness and checks nothing else when unchecked: exactly the pidfd
    /// contract.
    Pidfd(pipe::Receiver),
    /// Woken by every child's exit: look with `try_wait` after each.
    Sigchld(tokio::signal::unix::Signal),
}

/// Spawns `cmd` (inside a tokio runtime). `kill_on_drop`: whether dropping the [`Child`]
/// before it was reaped sends it SIGKILL.
///
/// # Errors
/// The spawn's error; or, the child then killed and reaped, the error of listening for its
/// exit.
pub(crate) fn spawn(cmd: &mut std::process::Command, kill_on_drop: bool) -> io::Result<Child> {
    spawn_watched(cmd, kill_on_drop, true)
}

/// [`spawn`], watching the exit with a pidfd only when `use_pidfd` (and the platform has one).
fn spawn_watched(
    cmd: &mut std::process::Command,
    kill_on_drop: bool,
    use_pidfd: bool,
) -> io::Result<Child> {
    let mut child = cmd.spawn()?;
    // Without a pidfd, SIGCHLD: listening starts before the first look, so an exit is either
    // seen by that look or signalled after it.
    let fd = if use_pidfd { pidfd(child.id()) } else { None };
    let watch = match fd {
        Some(fd) => Ok(ExitWatch::Pidfd(fd)),
        None => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .map(ExitWatch::Sigchld),
    };
    match watch {
        Ok(watch) => Ok(Child {
            child: Some(child),
            watch,
            kill_on_drop,
        }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// A pidfd for the unreaped child `pid`, registered with the runtime; `None` where the
/// platform has none.
fn pidfd(pid: u32) -> Option<pipe::Receiver> {
    #[cfg(target_os = "linux")]
    {
        let target = pid_of(pid).ok()?;
        let fd = rustix::process::pidfd_open(target, rustix::process::PidfdFlags::NONBLOCK).ok()?;
        pipe::Receiver::from_owned_fd_unchecked(fd).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

impl Child {
    /// The child's pid.
    pub(crate) fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// Whether [`poll_exited`](Child::poll_exited) can tell the exit before reaping (a pidfd
    /// watches it).
    pub(crate) fn tells_exit_before_reaping(&self) -> bool {
        matches!(self.watch, ExitWatch::Pidfd(_))
    }

    /// [`poll_exited`](Child::poll_exited) as a future (for tests).
    #[cfg(test)]
    pub(crate) async fn exited(&mut self) -> io::Result<Option<ExitStatus>> {
        std::future::poll_fn(|cx| self.poll_exited(cx)).await
    }

    /// Ready once the child has exited, registering `cx` to be woken then (a poll, for a
    /// caller that waits for several things at once without a future per thing: the
    /// supervisor). Watched by a pidfd, the child is not reaped yet (`None`: its pid, and its
    /// process group, are still its own, so they can be signalled safely); otherwise it is
    /// reaped and its status returned.
    ///
    /// # Errors
    /// Waiting for the child failed.
    pub(crate) fn poll_exited(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<Option<ExitStatus>>> {
        use std::task::Poll;
        let Child { child, watch, .. } = self;
        match watch {
            ExitWatch::Pidfd(fd) => fd.poll_read_ready(cx).map_ok(|()| None),
            ExitWatch::Sigchld(signal) => loop {
                let Some(running) = child.as_mut() else {
                    return Poll::Ready(Err(io::Error::other("the child was reaped already")));
                };
                if let Some(status) = running.try_wait()? {
                    *child = None;
                    return Poll::Ready(Ok(Some(status)));
                }
                match signal.poll_recv(cx) {
                    Poll::Ready(Some(())) => {}
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(io::Error::other(
                            "the runtime stopped listening for SIGCHLD",
                        )));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            },
        }
    }

    /// Reaps the child, waiting until it exits.
    ///
    /// # Errors
    /// Waiting for the child failed (or it was reaped already).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let mut told = false;
        loop {
            let child = self
                .child
                .as_mut()
                .ok_or_else(|| io::Error::other("the child was reaped already"))?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            match &mut self.watch {
                ExitWatch::Pidfd(fd) => {
                    if told {
                        // Exited as far as the pidfd tells, not yet waitable (a thread of the
                        // process still winding down): look again shortly, not in a spin.
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    fd.readable().await?;
                    told = true;
                }
                ExitWatch::Sigchld(signal) => {
                    if signal.recv().await.is_none() {
                        return Err(io::Error::other(
                            "the runtime stopped listening for SIGCHLD",
                        ));
                    }
                }
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.kill_on_drop {
            let _ = child.kill();
        }
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // Not gone yet (killed a moment ago, or left running): reap it when it goes, off the
        // runtime, so it never stays a zombie.
        let _ = std::thread::Builder::new()
            .name("core-process-reaper".into())
            .spawn(move || {
                let _ = child.wait();
            });
    }
}

/// The program that arms the parent-death signal before it executes the real command:
/// util-linux's `setpriv`, looked up on `PATH`.
pub(crate) fn pdeathsig_wrapper() -> Option<PathBuf> {
    if cfg!(target_os = "linux") {
        find_program(Path::new("setpriv"))
    } else {
        None
    }
}

/// The shell that checks, once the parent-death signal is armed, that the manager is still the
/// parent (POSIX requires it at this path in practice; `exec` is its builtin).
pub(crate) const SHELL: &str = "/bin/sh";

/// The arguments of the wrapper ([`pdeathsig_wrapper`]) that start a child with the
/// parent-death signal armed and the window before it closed:
/// `setpriv --pdeathsig KILL -- /bin/sh -c CHECK sh <manager pid> <PWD>`, to be followed by
/// [`pdeathsig_command`] and the arguments.
///
/// `setpriv` arms SIGKILL as the parent-death signal and executes the shell (same pid; the
/// setting survives `exec`). A manager that died before that would leave the child orphaned
/// with nothing armed; so the shell compares its parent, read after arming, with the manager's
/// pid, and kills itself with SIGKILL (what the armed signal would have done) when they differ.
/// Otherwise it executes the command: the manager's death from then on fires the signal.
///
/// The shell passes the environment on unchanged but for `PWD`, which it sets to its working
/// directory: `pwd` is the child's `PWD` as a direct spawn would pass it (`None`: unset), and
/// the shell puts it back before executing the command.
pub(crate) fn pdeathsig_args(
    manager: u32,
    pwd: Option<&std::ffi::OsStr>,
) -> Vec<std::ffi::OsString> {
    let check = r#"[ "$PPID" = "$1" ] || { kill -9 $$; exit 137; }
case $2 in 1) PWD=$3; export PWD ;; *) unset PWD ;; esac
shift 3
exec "$@""#;
    vec![
        "--pdeathsig".into(),
        "KILL".into(),
        "--".into(),
        SHELL.into(),
        "-c".into(),
        check.into(),
        "sh".into(),
        manager.to_string().into(),
        if pwd.is_some() { "1" } else { "0" }.into(),
        pwd.unwrap_or_default().to_owned(),
    ]
}

/// Whether `name` is a shell identifier (`[A-Za-z_][A-Za-z0-9_]*`): the only environment
/// names a POSIX shell passes on to what it executes.
pub(crate) fn is_shell_name(name: &std::ffi::OsStr) -> bool {
    let b = name.as_encoded_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// What goes between [`pdeathsig_args`] and [`pdeathsig_command`] so that environment
/// variables the wrapper's shell drops (names that are no shell identifiers) still reach the
/// command: `/usr/bin/env NAME=VALUE ...`, nothing when there are none (no extra `exec`).
/// (`env` would read a command whose name contains `=` as one more assignment.)
pub(crate) fn pdeathsig_env(
    vars: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Vec<std::ffi::OsString> {
    if vars.is_empty() {
        return Vec::new();
    }
    let mut args = vec![std::ffi::OsString::from("/usr/bin/env")];
    for (k, v) in vars {
        let mut kv = k.clone();
        kv.push("=");
        kv.push(v);
        args.push(kv);
    }
    args
}

/// What follows [`pdeathsig_args`]: the command itself, or, for a command starting with `-`,
/// `setpriv --pdeathsig KILL -- command`. Some shells' `exec` would read such a command as an
/// option (bash's), and others have no `--` (dash's): an absolute path for the shell, and
/// `setpriv`'s own `--` for the command, work with all.
pub(crate) fn pdeathsig_command(wrapper: &Path, command: &str) -> Vec<std::ffi::OsString> {
    if command.starts_with('-') {
        vec![
            wrapper.as_os_str().to_owned(),
            "--pdeathsig".into(),
            "KILL".into(),
            "--".into(),
            command.into(),
        ]
    } else {
        vec![command.into()]
    }
}

/// What `execve` would do with a program, looked up as a child started in a given directory
/// with a given `PATH` would look it up.
#[derive(Debug)]
pub(crate) enum ExecCheck {
    /// It would run this file.
    Runs(#[allow(dead_code)] PathBuf),
    /// There is no such program.
    NotFound,
    /// The program exists, and starting it would fail with this error.
    Fails(io::Error),
}

/// What one file would do under `execve`.
#[derive(Debug)]
enum Verdict {
    Runs,
    /// The file itself does not exist (ENOENT, ENOTDIR).
    Missing,
    /// Its `#!` interpreter does not exist (ENOENT from `execve`), with the error that says so.
    NoInterpreter(io::Error),
    /// EACCES: a directory, not a regular file, not executable, or an interpreter that is not.
    Denied,
    /// ENOEXEC: neither a binary the kernel runs nor a `#!` script.
    NotExecutable,
    /// Any other error.
    Other(io::Error),
}

/// How deep Linux follows `#!` interpreters, one inside another: a script at this depth (the
/// program is at depth 0) gets ELOOP, so at most five scripts and a binary (`exec_binprm`).
const MAX_INTERPRETER_DEPTH: u8 = 5;

/// What `execve(file)` would do, for a child whose working directory is `cwd` (the manager's
/// when `None`), without executing anything: the file's type and permission (`access(X_OK)`,
/// with the real ids), then its first bytes: an ELF binary runs; a `#!` line needs an
/// interpreter that exists and would run in turn; anything else is ENOEXEC, unless the kernel
/// has `binfmt_misc` handlers, which may run it (then it counts as running). A file that
/// cannot be read (execute-only) counts as running: the kernel can read it, we cannot tell.
fn verdict(file: &Path, cwd: Option<&Path>, depth: u8) -> Verdict {
    use rustix::io::Errno;
    let os = |e: Errno| io::Error::from_raw_os_error(e.raw_os_error());
    match rustix::fs::stat(file) {
        Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() => {}
        Ok(_) => return Verdict::Denied,
        Err(Errno::NOENT | Errno::NOTDIR) => return Verdict::Missing,
        Err(Errno::ACCESS) => return Verdict::Denied,
        Err(e) => return Verdict::Other(os(e)),
    }
    match rustix::fs::access(file, rustix::fs::Access::EXEC_OK) {
        Ok(()) => {}
        Err(Errno::NOENT | Errno::NOTDIR) => return Verdict::Missing,
        Err(Errno::ACCESS) => return Verdict::Denied,
        Err(e) => return Verdict::Other(os(e)),
    }
    // Linux reads 256 bytes for the `#!` line (BINPRM_BUF_SIZE).
    let mut head = [0u8; 256];
    let len = {
        use std::io::Read;
        let Ok(mut f) = std::fs::File::open(file) else {
            return Verdict::Runs;
        };
        let mut len = 0;
        while len < head.len() {
            match f.read(&mut head[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Runs,
            }
        }
        len
    };
    let head = &head[..len];
    if head.starts_with(b"\x7fELF") {
        return Verdict::Runs;
    }
    let Some(line) = head.strip_prefix(b"#!") else {
        return if may_have_other_binary_formats() {
            Verdict::Runs
        } else {
            Verdict::NotExecutable
        };
    };
    let terminated = line.contains(&b'\n') || len < 256;
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = match line.iter().position(|b| !matches!(b, b' ' | b'\t')) {
        Some(i) => &line[i..],
        None => return Verdict::NotExecutable,
    };
    let end = line
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | 0))
        .unwrap_or(line.len());
    if end == line.len() && !terminated {
        // The interpreter's name does not fit in what the kernel reads.
        return Verdict::NotExecutable;
    }
    let name =
        Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&line[..end]));
    if depth >= MAX_INTERPRETER_DEPTH {
        return Verdict::Other(os(Errno::LOOP));
    }
    let interpreter = match cwd {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.to_path_buf(),
    };
    match verdict(&interpreter, cwd, depth + 1) {
        Verdict::Missing => Verdict::NoInterpreter(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "its interpreter `{}` (the `#!` line of {}) does not exist",
                name.display(),
                file.display()
            ),
        )),
        other => other,
    }
}

/// Whether the kernel may run files of formats other than ELF and `#!` (Linux `binfmt_misc`
/// with a handler registered). Elsewhere the binary formats are not ELF: answer yes, so that
/// nothing is refused for its format.
fn may_have_other_binary_formats() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    std::fs::read_dir("/proc/sys/fs/binfmt_misc").is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| !matches!(e.file_name().to_str(), Some("register" | "status")))
    })
}

/// What starting `program` would do in a child whose working directory is `dir` (the
/// manager's when `None`) and whose `PATH` is `path` (the manager's when `None`): a name with
/// a `/` is that file (relative to `dir`); any other name is looked up in each `PATH` entry
/// the way `execvp` and `posix_spawnp` do (relative entries relative to `dir`; a file that is
/// missing, not executable or whose interpreter is missing is passed over; EACCES reported
/// when one was denied and none ran).
///
/// `lookup_runs_unknown_formats`: a file found on `PATH` that is neither a binary nor a `#!`
/// script (ENOEXEC) is run by `/bin/sh` rather than refused (what `execvp` does, and what the
/// standard library's spawn does when the child's environment sets `PATH`).
pub(crate) fn check_exec(
    program: &Path,
    dir: Option<&Path>,
    path: Option<&str>,
    lookup_runs_unknown_formats: bool,
) -> ExecCheck {
    let os = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
    let in_dir = |p: PathBuf| match dir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    };
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        let file = in_dir(program.to_path_buf());
        return match verdict(&file, dir, 0) {
            Verdict::Runs => ExecCheck::Runs(file),
            Verdict::Missing => ExecCheck::NotFound,
            Verdict::NoInterpreter(e) | Verdict::Other(e) => ExecCheck::Fails(e),
            Verdict::Denied => ExecCheck::Fails(os(rustix::io::Errno::ACCESS)),
            Verdict::NotExecutable => ExecCheck::Fails(os(rustix::io::Errno::NOEXEC)),
        };
    }
    let path = match path {
        Some(p) => std::ffi::OsString::from(p),
        // glibc's default search path when `PATH` is unset.
        None => std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into()),
    };
    let mut denied = false;
    let mut no_interpreter = None;
    for entry in std::env::split_paths(&path) {
        // An empty entry is the working directory.
        let entry = if entry.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            entry
        };
        let file = in_dir(entry).join(program);
        match verdict(&file, dir, 0) {
            Verdict::Runs => return ExecCheck::Runs(file),
            Verdict::Missing => {}
            Verdict::NoInterpreter(e) => {
                no_interpreter.get_or_insert(e);
            }
            Verdict::Denied => denied = true,
            Verdict::NotExecutable if lookup_runs_unknown_formats => return ExecCheck::Runs(file),
            Verdict::NotExecutable => return ExecCheck::Fails(os(rustix::io::Errno::NOEXEC)),
            Verdict::Other(e) => return ExecCheck::Fails(e),
        }
    }
    match no_interpreter {
        _ if denied => ExecCheck::Fails(os(rustix::io::Errno::ACCESS)),
        Some(e) => ExecCheck::Fails(e),
        None => ExecCheck::NotFound,
    }
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

#[cfg(feature = "control")]
/// The identity of a file: its device and inode numbers.
pub(crate) type FileId = (u64, u64);

#[cfg(feature = "control")]
/// Binds a listening unix socket at `path` that only this user can connect to, and returns it
/// (non-blocking) with the identity of the socket file.
///
/// - A missing parent directory is created, with every missing component, mode 0700; an
///   existing one is left as it is.
/// - A socket file already at `path` is tried: when a server answers it is live and the bind
///   fails ([`io::ErrorKind::AddrInUse`]); when nobody listens (`ECONNREFUSED`) it is stale,
///   left by a dead process, and replaced. Anything else at `path` (a file, a directory) is
///   never removed ([`io::ErrorKind::AlreadyExists`]).
/// - The socket file's mode is set to 0600 right after the bind (connecting needs write
///   permission on it), before the first connection is accepted.
///
/// # Errors
/// As above, and the OS error of creating the directory, binding (a path over the `sun_path`
/// limit of about 100 bytes) or changing the mode.
pub(crate) fn bind_private_unix_socket(
    path: &Path,
) -> io::Result<(std::os::unix::net::UnixListener, FileId)> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "a live server already listens on this socket",
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    remove_if_present(path)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket: not replaced",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    let restrict = || -> io::Result<FileId> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok((meta.dev(), meta.ino()))
    };
    match restrict() {
        Ok(id) => Ok((listener, id)),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

#[cfg(feature = "control")]
/// Removes the file at `path` if it is still the one identified by `id` (a socket that a
/// newer server bound at the same path is left alone). Returns whether it removed it.
///
/// # Errors
/// The OS error of reading or removing it (a missing file is no error).
pub(crate) fn remove_if_same_file(path: &Path, id: FileId) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == id => remove_if_present(path),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The listening TCP socket the service manager passed (socket activation,
/// `sd_listen_fds(3)`): when `LISTEN_PID` names this process and `LISTEN_FDS` counts the
/// descriptors passed from 3 on, the one named `name` in `LISTEN_FDNAMES`, else the first.
/// Taken once per process: later calls, like calls without socket activation, return `None`.
/// Every descriptor passed is made close-on-exec, so no child inherits it; the listener
/// returned is a duplicate (the descriptor passed stays open for the process's life, as the
/// service manager expects).
///
/// # Errors
/// When the variables are malformed, the descriptor chosen is not a listening TCP socket, or
/// it cannot be duplicated (Linux 5.6's `pidfd_getfd`, which a seccomp filter may forbid).
pub(crate) fn take_activated_listener(name: &str) -> io::Result<Option<std::net::TcpListener>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if std::env::var_os("LISTEN_FDS").is_none() || TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    let fds: Vec<(i32, String)> = sd_notify::listen_fds_with_names()?.collect();
    let Some(&(fd, _)) = fds.iter().find(|(_, n)| n == name).or(fds.first()) else {
        return Ok(None);
    };
    let owned = duplicate_inherited_fd(fd)?;
    let not_a_listener = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} passed in LISTEN_FDS is not a listening TCP socket ({what})"),
        )
    };
    let kind = rustix::net::sockopt::socket_type(&owned)
        .map_err(|e| not_a_listener(&io::Error::from(e).to_string()))?;
    if kind != rustix::net::SocketType::STREAM {
        return Err(not_a_listener("not a stream socket"));
    }
    if !rustix::net::sockopt::socket_acceptconn(&owned)? {
        return Err(not_a_listener("not listening"));
    }
    let listener = std::net::TcpListener::from(owned);
    listener
        .local_addr()
        .map_err(|e| not_a_listener(&format!("not an IP socket: {e}")))?;
    Ok(Some(listener))
}

/// A duplicate of this process's descriptor `fd`, owned, close-on-exec: `pidfd_getfd` on our
/// own pidfd, the one way to take a descriptor by number without `unsafe`.
fn duplicate_inherited_fd(fd: i32) -> io::Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
        let me = pidfd_open(getpid(), PidfdFlags::empty())?;
        Ok(pidfd_getfd(&me, fd, PidfdGetfdFlags::empty())?)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "socket activation is supported on Linux only",
        ))
    }
}

/// Resolves once the process receives SIGTERM or SIGINT, and says which.
///
/// Once called, these signals no longer end the process by default: tokio keeps its handler
/// installed for the rest of the process's life.
///
/// # Errors
/// When the signal handlers cannot be installed (no tokio runtime with signals enabled).
pub(crate) async fn termination_signal() -> io::Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok(RawSignal::TERM.as_raw()),
        _ = int.recv() => Ok(RawSignal::INT.as_raw()),
    }
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`), retrying on interruption.
///
/// # Errors
/// The call's error (no random source: a kernel before 3.17).
#[cfg(feature = "control")]
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// SIGTERM and SIGINT, watched from creation on: a signal that arrives between two
/// [`recv`](Self::recv)s is kept for the next one.
///
/// Once created, these signals no longer end the process by default: tokio keeps its handler
/// installed for the rest of the process's life.
pub(crate) struct TerminationSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl TerminationSignals {
    /// Installs the handlers.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed (no tokio runtime with signals enabled).
    pub(crate) fn new() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(TerminationSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The number of the next SIGTERM or SIGINT.
    pub(crate) async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => RawSignal::TERM.as_raw(),
            _ = self.int.recv() => RawSignal::INT.as_raw(),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Whether `pid` is still a process (running or a zombie nobody reaped).
    fn exists(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    /// Polls until `pid` is gone (reaped), with a deadline.
    async fn until_gone(pid: u32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while exists(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} was never reaped"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    fn sh(script: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[tokio::test]
    async fn a_child_is_told_exited_then_reaped_with_either_watch() {
        for use_pidfd in [true, false] {
            let mut child = super::spawn_watched(&mut sh("exit 7"), true, use_pidfd).unwrap();
            let pid = child.id();
            let early = child.exited().await.unwrap();
            let status = match early {
                // Told before reaping: still there (a zombie) until waited for.
                None => {
                    assert!(use_pidfd && child.tells_exit_before_reaping());
                    assert!(exists(pid), "not reaped before wait");
                    child.wait().await.unwrap()
                }
                Some(status) => {
                    assert!(!child.tells_exit_before_reaping());
                    status
                }
            };
            assert_eq!(status.code(), Some(7), "pidfd: {use_pidfd}");
            assert!(!exists(pid), "reaped");
            assert!(child.wait().await.is_err(), "reaping twice is an error");
        }
    }

    #[tokio::test]
    async fn dropping_an_unreaped_child_kills_and_reaps_it_unless_asked_not_to_kill() {
        for use_pidfd in [true, false] {
            let child = super::spawn_watched(&mut sh("exec sleep 600"), true, use_pidfd).unwrap();
            let pid = child.id();
            drop(child);
            until_gone(pid).await;
        }
        // Left running when dropped: reaped once it exits by itself (here: once its stdin,
        // gated by the test, closes).
        let mut cmd = sh("read x");
        cmd.stdin(std::process::Stdio::piped());
        let mut child = super::spawn(&mut cmd, false).unwrap();
        let pid = child.id();
        let stdin = child.child.as_mut().unwrap().stdin.take().unwrap();
        drop(child);
        assert!(exists(pid), "not killed");
        drop(stdin);
        until_gone(pid).await;
    }
    use super::*;

    #[test]
    fn signal_names_and_numbers_round_trip() {
        assert_eq!(signal_by_name("SIGKILL"), Some(9));
        assert_eq!(signal_by_name("SIGTERM"), Some(15));
        assert_eq!(signal_name(15), Some("SIGTERM"));
        assert_eq!(signal_name(0), None);
        for (name, raw) in TABLE.iter().chain(PLATFORM_NAMES) {
            assert_eq!(signal_by_name(name), Some(raw.as_raw()), "{name}");
            assert_eq!(signal_name(raw.as_raw()), Some(*name), "{name}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn every_linux_signal_can_be_sent_except_the_reserved_ones() {
        let (min, max) = realtime_signals().unwrap();
        assert!(min >= 32 && max <= 64 && max - min >= 7, "{min}..={max}");
        for n in -2..=70 {
            let sendable = (1..=31).contains(&n) || (min..=max).contains(&n);
            assert_eq!(can_send(n), sendable, "{n}");
        }
        let err = send_signal(current_pid(), 1000, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("signal 1000"), "{err}");
    }

    #[test]
    fn liveness() {
        assert!(pid_alive(current_pid()));
        assert!(!pid_alive(999_999_999));
        // The pids no signal may be sent to: init always lives, 0 and beyond i32 name no one.
        assert!(pid_alive(1));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
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
    fn a_file_replaced_at_its_path_is_not_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "a").unwrap();
        let old = std::fs::File::open(&path).unwrap();
        assert!(is_same_file(&old, &path));
        std::fs::remove_file(&path).unwrap();
        assert!(!is_same_file(&old, &path));
        // The same directory, so the same device; a new inode (the old one is still open).
        std::fs::write(&path, "b").unwrap();
        assert!(!is_same_file(&old, &path));
    }

    #[test]
    fn refuses_to_signal_init_or_everyone() {
        assert!(send_signal(0, 15, true).is_err());
        assert!(send_signal(1, 15, false).is_err());
    }

    #[test]
    fn finds_programs() {
        assert!(find_program(Path::new("sh")).is_some());
        assert!(find_program(Path::new("definitely-not-a-program-xyz")).is_none());
        assert!(find_program(Path::new("/bin/sh")).is_some());
    }

    #[test]
    fn check_exec_finds_programs_where_the_child_would() {
        let runs = |c: ExecCheck| matches!(c, ExecCheck::Runs(_));
        let missing = |c: ExecCheck| matches!(c, ExecCheck::NotFound);
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        assert!(runs(check_exec(Path::new("sh"), Some(dir), None, false)));
        assert!(missing(check_exec(
            Path::new("sh"),
            None,
            Some("/nonexistent-dir"),
            true
        )));
        assert!(runs(check_exec(
            Path::new("./sh"),
            Some(Path::new("/bin")),
            None,
            false
        )));
        assert!(missing(check_exec(
            Path::new("./sh"),
            Some(dir),
            None,
            false
        )));
        // Relative and empty PATH entries are relative to the child's directory.
        assert!(runs(check_exec(
            Path::new("sh"),
            Some(Path::new("/")),
            Some("bin"),
            false
        )));
        assert!(runs(check_exec(
            Path::new("sh"),
            Some(Path::new("/bin")),
            Some(""),
            false
        )));
    }

    #[test]
    fn check_exec_reads_the_interpreter_line_as_linux_does() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let script = |name: &str, text: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        let check = |path: &Path| check_exec(path, Some(dir), None, false);
        let errno = |c: ExecCheck| match c {
            ExecCheck::Fails(e) => e.raw_os_error(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            check(&script("spaces", b"#!  /bin/sh  -e \n")),
            ExecCheck::Runs(_)
        ));
        assert!(matches!(
            check(&script("no-newline", b"#!/bin/sh")),
            ExecCheck::Runs(_)
        ));
        assert_eq!(errno(check(&script("blank", b"#!   \n"))), Some(8));
        assert_eq!(errno(check(&script("bare", b"#!"))), Some(8));
        // An interpreter name longer than the 256 bytes Linux reads.
        let long = [b"#!/".as_slice(), &[b'x'; 300]].concat();
        assert_eq!(errno(check(&script("long", &long))), Some(8));
        // Interpreters inside interpreters: Linux runs five scripts deep, not six (measured).
        let mut previous = script("level-0", b"#!/bin/sh\n");
        for level in 1..=5 {
            let line = format!("#!{}\n", previous.display());
            previous = script(&format!("level-{level}"), line.as_bytes());
            let result = check(&previous);
            if level <= 4 {
                assert!(matches!(result, ExecCheck::Runs(_)), "{level}: {result:?}");
            } else {
                assert_eq!(errno(result), Some(rustix::io::Errno::LOOP.raw_os_error()));
            }
        }
        match check(&script("gone", b"#!/no/such/interpreter\n")) {
            ExecCheck::Fails(e) => {
                assert_eq!(e.kind(), io::ErrorKind::NotFound);
                assert!(e.to_string().contains("/no/such/interpreter"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shell_names_are_the_identifiers_a_shell_passes_on() {
        for name in ["PATH", "_", "_x1", "a", "Z9_", "lower_case"] {
            assert!(is_shell_name(std::ffi::OsStr::new(name)), "{name}");
        }
        for name in [
            "",
            "1A",
            "9",
            "a-b",
            "CARGO_BIN_EXE_core-process",
            "a.b",
            "é",
            "A B",
        ] {
            assert!(!is_shell_name(std::ffi::OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn the_odd_variables_go_through_env_and_a_dash_command_through_the_wrapper() {
        assert!(
            pdeathsig_env(&[]).is_empty(),
            "no extra exec without odd names"
        );
        let odd = [
            ("a-b".into(), "1".into()),
            ("x.y".into(), "two words".into()),
        ];
        assert_eq!(
            pdeathsig_env(&odd),
            ["/usr/bin/env", "a-b=1", "x.y=two words"]
        );
        let wrapper = Path::new("/usr/bin/setpriv");
        assert_eq!(pdeathsig_command(wrapper, "cat"), ["cat"]);
        assert_eq!(
            pdeathsig_command(wrapper, "-weird"),
            ["/usr/bin/setpriv", "--pdeathsig", "KILL", "--", "-weird"]
        );
    }

    /// Runs the wrapper's arguments after `setpriv --`, that is the shell and its check, for
    /// `manager`, with `printf '%s|' args...` as the command: its output and exit status.
    fn run_check(manager: u32, args: &[&str]) -> std::process::Output {
        let full = pdeathsig_args(manager, Some(std::ffi::OsStr::new("/")));
        assert_eq!(full[..3], ["--pdeathsig", "KILL", "--"], "{full:?}");
        let mut cmd = std::process::Command::new(&full[3]);
        cmd.args(&full[4..])
            .args(["printf", "%s|"])
            .args(args)
            .stdin(std::process::Stdio::null());
        cmd.output().unwrap()
    }

    #[test]
    fn the_wrapper_shell_runs_the_command_only_under_its_manager() {
        use std::os::unix::process::ExitStatusExt;
        // We are the shell's parent: it executes the command, with its arguments as they are.
        let out = run_check(current_pid(), &["a b", "", "$x", "*"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b||$x|*|");
        // A manager that is not its parent (it died before the signal was armed): the
        // shell kills itself as the armed signal would have, and runs nothing.
        let out = run_check(1, &["c"]);
        assert_eq!(out.status.signal(), Some(9), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }

    #[tokio::test]
    async fn a_child_in_its_own_process_group_leads_it() {
        // Its group can be signalled by its pid only when it leads one (`kill(-pid)`).
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("600");
        let mut child = super::spawn(&mut cmd, true).unwrap();
        assert!(
            send_signal(child.id(), 9, true).is_err(),
            "no group of its own by default"
        );
        drop(child);
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("600");
        own_process_group(&mut cmd);
        child = super::spawn(&mut cmd, true).unwrap();
        send_signal(child.id(), 9, true).unwrap();
        let status = child.wait().await.unwrap();
        assert!(matches!(exit_parts(status), Exit::Signal(9)), "{status:?}");
    }

    #[test]
    fn check_exec_refuses_a_directory_and_passes_over_one_on_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // A directory is executable (searchable) and can be opened, but execve refuses it.
        match check_exec(dir, None, None, false) {
            ExecCheck::Fails(e) => assert_eq!(e.raw_os_error(), Some(13), "{e}"),
            other => panic!("{other:?}"),
        }
        // `sh` a directory in the first PATH entry: the lookup goes on to /bin's.
        std::fs::create_dir(dir.join("sh")).unwrap();
        let path = format!("{}:/bin", dir.display());
        match check_exec(Path::new("sh"), None, Some(&path), false) {
            ExecCheck::Runs(file) => assert_eq!(file, Path::new("/bin/sh")),
            other => panic!("{other:?}"),
        }
    }

    /// An executable file `name` in `dir` holding `text`.
    fn executable(dir: &Path, name: &str, text: &[u8], mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn check_exec_agrees_with_execve_on_a_file_of_no_known_format() {
        // Neither ELF nor `#!`: execve refuses it (ENOEXEC) unless a binfmt_misc handler
        // takes it. Whatever this machine does, the check must say the same.
        let tmp = tempfile::tempdir().unwrap();
        let plain = executable(tmp.path(), "plain", b"exit 0\n", 0o755);
        // ETXTBSY (26): another test's child, forked while the file was open for writing,
        // still holds it; it closes it when it executes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let real = loop {
            match std::process::Command::new(&plain)
                .stdin(std::process::Stdio::null())
                .spawn()
            {
                Ok(mut child) => {
                    child.wait().unwrap();
                    break None;
                }
                Err(e) if e.raw_os_error() == Some(26) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => break e.raw_os_error(),
            }
        };
        match check_exec(&plain, None, None, false) {
            ExecCheck::Runs(_) => assert_eq!(real, None, "execve refused it"),
            ExecCheck::Fails(e) => assert_eq!(e.raw_os_error(), real, "{e}"),
            ExecCheck::NotFound => panic!("it exists"),
        }
        // Found on PATH: refused as the direct spawn refuses it, or run by `/bin/sh` as
        // `execvp` runs it, as asked.
        let path = tmp.path().to_str().unwrap();
        let found = |runs_unknown| check_exec(Path::new("plain"), None, Some(path), runs_unknown);
        assert!(matches!(found(true), ExecCheck::Runs(_)));
        match (found(false), real) {
            (ExecCheck::Runs(_), None) => {}
            (ExecCheck::Fails(e), Some(errno)) => assert_eq!(e.raw_os_error(), Some(errno)),
            (other, real) => panic!("{other:?}, execve: {real:?}"),
        }
    }

    #[test]
    fn check_exec_tells_a_denied_program_and_a_relative_interpreter_in_the_childs_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // Not executable, and nothing else on PATH by that name: EACCES, not "not found".
        executable(dir, "denied", b"#!/bin/sh\n", 0o644);
        let path = dir.to_str().unwrap();
        match check_exec(Path::new("denied"), None, Some(path), false) {
            ExecCheck::Fails(e) => assert_eq!(e.raw_os_error(), Some(13), "{e}"),
            other => panic!("{other:?}"),
        }
        // A relative `#!` interpreter is relative to the child's working directory.
        executable(dir, "interp", b"#!/bin/sh\n", 0o755);
        let script = executable(dir, "script", b"#!./interp\n", 0o755);
        assert!(matches!(
            check_exec(&script, Some(dir), None, false),
            ExecCheck::Runs(_)
        ));
        let elsewhere = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_exec(&script, Some(elsewhere.path()), None, false),
            ExecCheck::Fails(_)
        ));
    }

    #[test]
    fn find_program_takes_only_an_executable_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let yes = executable(dir, "yes", b"#!/bin/sh\n", 0o755);
        let no = executable(dir, "no", b"#!/bin/sh\n", 0o644);
        assert_eq!(find_program(&yes), Some(yes));
        assert_eq!(find_program(&no), None, "not executable");
        assert_eq!(find_program(dir), None, "a directory");
    }

    #[tokio::test]
    async fn where_the_platform_has_pidfds_a_child_is_watched_by_one() {
        // Told of its exit before it is reaped, so its pid and group stay its own until then.
        let have_pidfds = cfg!(target_os = "linux")
            && rustix::process::pidfd_open(
                rustix::process::getpid(),
                rustix::process::PidfdFlags::empty(),
            )
            .is_ok();
        let mut child = super::spawn(&mut sh("exit 3"), true).unwrap();
        assert_eq!(child.tells_exit_before_reaping(), have_pidfds);
        if have_pidfds {
            assert!(child.exited().await.unwrap().is_none(), "not reaped yet");
        }
        assert_eq!(child.wait().await.unwrap().code(), Some(3));
    }

    #[test]
    fn the_parent_death_wrapper_is_setpriv_on_path() {
        let expected = if cfg!(target_os = "linux") {
            find_program(Path::new("setpriv"))
        } else {
            None
        };
        assert_eq!(pdeathsig_wrapper(), expected);
        if let Some(wrapper) = expected {
            assert!(wrapper.ends_with("setpriv"), "{}", wrapper.display());
        }
    }

    /// Set in the child of [`the_activated_listener_is_taken_once`].
    const ACTIVATION_ROLE: &str = "CORE_PROCESS_TEST_ACTIVATION_ROLE";

    #[test]
    #[ignore = "child role of the_activated_listener_is_taken_once"]
    fn activation_role() {
        if std::env::var_os(ACTIVATION_ROLE).is_none() {
            return;
        }
        let first = take_activated_listener("health").unwrap();
        let second = take_activated_listener("health").unwrap();
        println!("RESULT {} {}", first.is_some(), second.is_some());
    }

    #[test]
    fn the_activated_listener_is_taken_once() {
        // A child of ours with a listener on fd 3 and the variables saying so (`sh` keeps its
        // pid through `exec`): the first call takes it, the second finds nothing.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                "exec 3<&0 0</dev/null; \
                 export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=health; exec \"$@\"",
                "sh",
            ])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "sys::unix::tests::activation_role",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ACTIVATION_ROLE, "1")
            .stdin(std::process::Stdio::from(OwnedFd::from(listener)))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(stdout.contains("RESULT true false"), "{stdout}");
    }
}

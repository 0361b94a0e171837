//! Every platform call the crate makes, behind one facade: signals, process groups, liveness,
//! pipes and exit notification. Nothing outside `sys` names `rustix` or `libc`, and no type of
//! theirs leaves this module.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(not(unix))]
compile_error!("core-process supports Unix-like systems only (Linux, macOS, the BSDs)");

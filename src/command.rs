//! Command plumbing shared by the process service and [`exec`](crate::exec): validation and the
//! command line shown in messages.

use crate::error::{Error, Result};

/// The checks of [`RunOptions::validate`], for every command-like builder (also
/// [`exec::Command`](crate::exec::Command)).
pub(crate) fn validate_command(
    command: &str,
    args: &[String],
    env: &[(String, String)],
    dir: Option<&std::path::Path>,
) -> Result<()> {
    let invalid = |reason: String| Error::InvalidOptions {
        command: command.to_string(),
        reason,
    };
    if command.trim().is_empty() {
        return Err(invalid("the command is empty".into()));
    }
    if command.contains('\0') {
        return Err(invalid("the command contains a NUL byte".into()));
    }
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(invalid(format!("argument {i} contains a NUL byte")));
    }
    for (key, value) in env {
        if key.is_empty() {
            return Err(invalid("an environment key is empty".into()));
        }
        if key.contains('=') {
            return Err(invalid(format!("environment key {key:?} contains '='")));
        }
        if key.contains('\0') || value.contains('\0') {
            return Err(invalid(format!(
                "environment variable {key:?} contains a NUL byte"
            )));
        }
    }
    if let Some(dir) = dir
        && !dir.is_dir()
    {
        return Err(Error::WorkingDirectory {
            command: command.to_string(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// What starting `program` would do, found where the child would find it: in `dir`, on the
/// child's own `PATH` when `env` sets one (the last setting wins), else the manager's. With a
/// `PATH` of its own, the standard library spawns through `execvp`, which runs a file found on
/// that `PATH` that is no binary nor `#!` script through `/bin/sh`: so does the check then.
pub(crate) fn exec_check(
    program: &str,
    dir: Option<&std::path::Path>,
    env: &[(String, String)],
) -> crate::sys::ExecCheck {
    let child_path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    crate::sys::check_exec(program.as_ref(), dir, child_path, child_path.is_some())
}

/// The error for a spawn of `program` that failed with `source`, the same for the process
/// service and [`exec`](crate::exec): a working directory that is gone is
/// [`Error::WorkingDirectory`], a program that is not there [`Error::CommandNotFound`], and
/// anything else (not executable, ENOEXEC, a `#!` interpreter that is missing, out of
/// descriptors) [`Error::Spawn`] naming the program and the OS's reason. Looks at the file
/// system on this error path only, so a spawn that works costs nothing more.
pub(crate) fn spawn_error(
    program: &str,
    dir: Option<&std::path::Path>,
    env: &[(String, String)],
    source: std::io::Error,
) -> Error {
    let spawn = |source| Error::Spawn {
        command: program.to_string(),
        source,
    };
    if source.kind() != std::io::ErrorKind::NotFound {
        return spawn(source);
    }
    if let Some(dir) = dir
        && !dir.is_dir()
    {
        return Error::WorkingDirectory {
            command: program.to_string(),
            dir: dir.to_path_buf(),
        };
    }
    // ENOENT also means "the script's `#!` interpreter does not exist": only a program that
    // is not there is `CommandNotFound`.
    match exec_check(program, dir, env) {
        crate::sys::ExecCheck::NotFound => Error::CommandNotFound {
            command: program.to_string(),
        },
        crate::sys::ExecCheck::Fails(e) => spawn(e),
        crate::sys::ExecCheck::Runs(_) => spawn(source),
    }
}

/// Joins a program and its arguments for display, quoting what a shell would need quoted.
pub(crate) fn command_line(command: &str, args: &[String]) -> String {
    fn quote(s: &str, out: &mut String) {
        let plain = !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
        if plain {
            out.push_str(s);
        } else {
            out.push('\'');
            out.push_str(&s.replace('\'', r"'\''"));
            out.push('\'');
        }
    }
    let mut out =
        String::with_capacity(command.len() + args.iter().map(|a| a.len() + 3).sum::<usize>());
    quote(command, &mut out);
    for a in args {
        out.push(' ');
        quote(a, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_what_needs_it() {
        assert_eq!(
            command_line("sh", &["-c".into(), "exit 1".into()]),
            "sh -c 'exit 1'"
        );
        assert_eq!(command_line("echo", &["it's".into()]), r"echo 'it'\''s'");
        assert_eq!(command_line("echo", &["".into()]), "echo ''");
    }
}

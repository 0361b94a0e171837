//! Crate-internal macros.

/// The `arg`, `args`, `dir` and `env` setters shared by every command-like builder
/// ([`RunOptions`](crate::RunOptions), [`RunSpec`](crate::RunSpec),
/// [`exec::Command`](crate::exec::Command)). The type needs fields `args: Vec<String>`,
/// `dir: Option<PathBuf>` and `env: Vec<(String, String)>`.
macro_rules! command_setters {
    () => {
        /// Adds one argument.
        pub fn arg(mut self, arg: impl Into<String>) -> Self {
            self.args.push(arg.into());
            self
        }

        /// Adds several arguments.
        pub fn args<I, S>(mut self, args: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.args.extend(args.into_iter().map(Into::into));
            self
        }

        /// Sets the working directory.
        pub fn dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
            self.dir = Some(dir.into());
            self
        }

        /// Adds an environment variable (on top of the inherited environment).
        pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
            self.env.push((key.into(), value.into()));
            self
        }
    };
}

/// Builder setters that store their argument in a field, one per line: `/// docs` then
/// `name(arg: Type);` (`self.name = arg`), with `sets field` when the field has another
/// name (`self.field = arg`) and `=> Some` when it is an `Option` (`self.name = Some(arg)`).
/// Each setter keeps its own doc comment.
macro_rules! setters {
    (@value $arg:ident) => {
        $arg
    };
    (@value $arg:ident, $wrap:ident) => {
        $wrap($arg)
    };
    (@fn [$(#[$doc:meta])*] $name:ident($arg:ident: $ty:ty) [$field:ident] [$($wrap:ident)?]) => {
        $(#[$doc])*
        pub fn $name(mut self, $arg: $ty) -> Self {
            self.$field = setters!(@value $arg $(, $wrap)?);
            self
        }
    };
    (@field $doc:tt $name:ident $args:tt [] $wrap:tt) => {
        setters!(@fn $doc $name $args [$name] $wrap);
    };
    (@field $doc:tt $name:ident $args:tt [$field:ident] $wrap:tt) => {
        setters!(@fn $doc $name $args [$field] $wrap);
    };
    ($(
        $(#[$doc:meta])*
        $name:ident($arg:ident: $ty:ty) $(sets $field:ident)? $(=> $wrap:ident)?;
    )*) => {
        $(
            setters!(@field [$(#[$doc])*] $name ($arg: $ty) [$($field)?] [$($wrap)?]);
        )*
    };
}

/// The stop and capture setters shared by [`RunOptions`](crate::RunOptions) and
/// [`RunSpec`](crate::RunSpec): `timeout`, `grace_period`, `stop_signal`, `output_capacity`,
/// `disable_capture`, `die_with_parent` and `process_group`. The type needs the fields of
/// those names, typed as in [`RunOptions`](crate::RunOptions).
macro_rules! process_setters {
    () => {
        setters! {
            /// Stops the process when it runs longer than `timeout`.
            timeout(timeout: std::time::Duration) => Some;
            /// Sets how long a stop waits between the stop signal and SIGKILL.
            grace_period(grace: std::time::Duration);
            /// Sets the signal a stop sends first.
            stop_signal(signal: $crate::types::Signal);
            /// Sets the process's ring-buffer size in bytes.
            output_capacity(bytes: usize) => Some;
            /// Keeps output out of the ring buffer (events are still published).
            disable_capture(disable: bool);
            /// Linux: the child gets SIGKILL when the manager dies. See
            /// [`RunOptions::die_with_parent`](crate::RunOptions::die_with_parent).
            die_with_parent(on: bool);
            /// Starts the child in its own process group (`true`, the default) or in the manager's.
            process_group(own_group: bool);
        }
    };
}

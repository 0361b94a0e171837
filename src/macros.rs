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

/// The stop and capture setters shared by [`RunOptions`](crate::RunOptions) and
/// [`RunSpec`](crate::RunSpec): `timeout`, `grace_period`, `stop_signal`, `output_capacity`,
/// `disable_capture`, `die_with_parent` and `process_group`. The type needs the fields of
/// those names, typed as in [`RunOptions`](crate::RunOptions).
macro_rules! process_setters {
    () => {
        /// Stops the process when it runs longer than `timeout`.
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.timeout = Some(timeout);
            self
        }

        /// Sets how long a stop waits between the stop signal and SIGKILL.
        pub fn grace_period(mut self, grace: std::time::Duration) -> Self {
            self.grace_period = grace;
            self
        }

        /// Sets the signal a stop sends first.
        pub fn stop_signal(mut self, signal: $crate::types::Signal) -> Self {
            self.stop_signal = signal;
            self
        }

        /// Sets the process's ring-buffer size in bytes.
        pub fn output_capacity(mut self, bytes: usize) -> Self {
            self.output_capacity = Some(bytes);
            self
        }

        /// Keeps output out of the ring buffer (events are still published).
        pub fn disable_capture(mut self, disable: bool) -> Self {
            self.disable_capture = disable;
            self
        }

        /// Linux: the child gets SIGKILL when the manager dies. See
        /// [`RunOptions::die_with_parent`](crate::RunOptions::die_with_parent).
        pub fn die_with_parent(mut self, on: bool) -> Self {
            self.die_with_parent = on;
            self
        }

        /// Starts the child in its own process group (`true`, the default) or in the manager's.
        pub fn process_group(mut self, own_group: bool) -> Self {
            self.process_group = own_group;
            self
        }
    };
}

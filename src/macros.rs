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

//! Integration tests: one binary, a module per area (run with `--features testing`).

mod support;
mod process;
mod stop;
mod module;
mod runner;
mod exec;
mod daemon;
mod backpressure;
mod pid_lock;
mod health;
mod registry;

//! Integration tests: one binary, a module per area (run with `--features testing`).

mod backpressure;
mod config;
#[cfg(feature = "control")]
mod control;
mod daemon;
mod daemon_surface;
mod exec;
mod handle;
mod health;
mod module;
mod pid_lock;
mod process;
mod registry;
mod runner;
mod shutdown;
mod sink;
mod stop;
mod supervise;
mod support;
mod testing;
mod tokio_service;
mod warnings;

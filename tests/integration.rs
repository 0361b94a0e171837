//! Integration tests: one binary, a module per area.

#[path = "integration/support.rs"]
mod support;

#[path = "integration/process.rs"]
mod process;

#[path = "integration/stop.rs"]
mod stop;

#[path = "integration/module.rs"]
mod module;

#[path = "integration/runner.rs"]
mod runner;

#[path = "integration/exec.rs"]
mod exec;

#[path = "integration/daemon.rs"]
mod daemon;

#[path = "integration/backpressure.rs"]
mod backpressure;

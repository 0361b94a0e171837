#[path = "integration/exec.rs"]
mod exec;
#[path = "integration/runner.rs"]
mod runner;

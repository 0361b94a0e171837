//! A host component tested without spawning anything: `CargoChecks` runs `cargo clippy`, then
//! `cargo test` only if clippy passed. Its tests (below, `#[cfg(test)]`, run by
//! `cargo test --all-features`) build the host module over `testing::FakeModule`, script what
//! each command does, and assert on what ran and on the events the host's own subscriber got.
//!
//! `cargo run --example mock_in_tests --features testing` plays both scripted runs and prints
//! what the component reported; it spawns nothing either.

use std::sync::Arc;

use async_trait::async_trait;
use core_process::testing::{FakeModule, FakeOutcome};
use core_process::{EventBus, ProcessModule, ProcessService, RunOptions};
use shaku::{Component, HasComponent, Interface, module};

/// The host's own component: the checks a build agent runs before building.
#[async_trait]
trait Checks: Interface {
    /// Runs clippy, then the tests if clippy passed; the first failure, with its output.
    async fn check(&self) -> Result<(), String>;
}

#[derive(Component)]
#[shaku(interface = Checks)]
struct CargoChecks {
    #[shaku(inject)]
    processes: Arc<dyn ProcessService>,
}

#[async_trait]
impl Checks for CargoChecks {
    async fn check(&self) -> Result<(), String> {
        for args in [&["clippy", "--all-targets"][..], &["test", "--all"][..]] {
            self.processes
                .run(RunOptions::new("cargo").args(args.iter().copied()))
                .await
                .map_err(|e| format!("{e}: {}", e.output().unwrap_or_default().trim()))?;
        }
        Ok(())
    }
}

module! {
    HostModule {
        components = [CargoChecks],
        providers = [],
        use ProcessModule {
            components = [dyn ProcessService, dyn EventBus],
            providers = [],
        },
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    for clippy in [
        FakeOutcome::exit(1).stderr("error: unused variable `x`\n"),
        FakeOutcome::success(""),
    ] {
        let fakes = FakeModule::new();
        fakes
            .process()
            .script("cargo clippy", clippy)
            .script("cargo test", FakeOutcome::success("test result: ok\n"));
        let host = HostModule::builder(fakes.module()).build();
        let checks: Arc<dyn Checks> = host.resolve();
        println!("check: {:?}", checks.check().await);
        println!("  ran: {:?}", fakes.process().command_lines());
        println!("  events published: {}", fakes.bus().events().len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core_process::{ProcessEvent, Stream};

    #[tokio::test]
    async fn clippy_failing_means_cargo_test_never_runs() {
        let fakes = FakeModule::new();
        let fake = fakes.process();
        fake.script(
            "cargo clippy",
            FakeOutcome::exit(1).stderr("error: unused\n"),
        );
        fake.script("cargo test", FakeOutcome::success(""));
        let host = HostModule::builder(fakes.module()).build();
        let mut events = HasComponent::<dyn EventBus>::resolve(&host).subscribe();
        let checks: Arc<dyn Checks> = host.resolve();

        let err = checks.check().await.unwrap_err();
        assert!(err.ends_with("exited with code 1: error: unused"), "{err}");
        assert!(!fake.ran("cargo test"));
        assert_eq!(fake.unused(), [r#"prefix "cargo test""#]);
        let mut seen = vec![events.recv().await.unwrap()];
        while !matches!(seen.last(), Some(ProcessEvent::Exited { .. })) {
            seen.push(events.recv().await.unwrap());
        }
        use ProcessEvent::{Exited, Output, Started};
        let clippy_failed = matches!(&seen[..], [Started { args, .. }, Output { line, .. },
            Exited { exit_code: Some(1), .. }] if args[0] == "clippy" && line.as_str() == "error: unused");
        assert!(clippy_failed, "{seen:?}");
        assert!(fake.list().iter().all(|p| p.pid() == 0));
        assert_eq!(children_of_this_process(), Vec::<u32>::new());
    }

    #[tokio::test]
    async fn clippy_passing_runs_the_tests() {
        let fakes = FakeModule::new();
        fakes
            .process()
            .script("cargo clippy", FakeOutcome::success(""))
            .script(
                "cargo test",
                FakeOutcome::exit(101).stdout("test foo ... FAILED\n"),
            );
        let host = HostModule::builder(fakes.module()).build();
        let checks: Arc<dyn Checks> = host.resolve();

        let err = checks.check().await.unwrap_err();
        assert!(
            err.ends_with("exited with code 101: test foo ... FAILED"),
            "{err}"
        );
        assert_eq!(
            fakes.process().command_lines(),
            ["cargo clippy --all-targets", "cargo test --all"]
        );
        assert_eq!(
            fakes.bus().lines("fake-2", Stream::Stdout),
            ["test foo ... FAILED"]
        );
        fakes.process().assert_all_used();
        assert_eq!(children_of_this_process(), Vec::<u32>::new());
    }

    /// The pids whose parent is this test binary (no test here starts a child, so any would
    /// have come from the code under test). Empty where `/proc` is missing.
    fn children_of_this_process() -> Vec<u32> {
        let me = std::process::id().to_string();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    // `pid (comm) state ppid ...`: comm may hold spaces, so split after ')'.
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(|p| p == me))
                        .unwrap_or(false)
                })
            })
            .collect()
    }
}

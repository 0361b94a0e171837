//! Quickstart: build the module, start a command, print its events live, print its `Info` as
//! JSON, and exit non-zero if the command failed.
//!
//! Run it with `cargo run --example quickstart` (or pass your own command:
//! `cargo run --example quickstart -- ls -l /`).

use std::process::ExitCode;
use std::sync::Arc;

use core_process::{EventBus, Lifecycles, ProcessEvent, ProcessModule, ProcessService, RunOptions};
use shaku::HasComponent;

#[tokio::main]
async fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let opts = match argv.next() {
        Some(command) => RunOptions::new(command).args(argv),
        None => RunOptions::new("sh").args([
            "-c",
            "echo 'hello from core-process'; echo 'a warning' >&2; for i in 1 2 3; do echo line $i; done",
        ]),
    };

    let module = ProcessModule::builder().build();
    let service: Arc<dyn ProcessService> = module.resolve();
    let bus: Arc<dyn EventBus> = module.resolve();

    // Ctrl-C or SIGTERM stops the command (its stop signal, then SIGKILL after its grace
    // period) and leaves nothing behind.
    let mut outcome = None;
    let ended = Lifecycles::of_module(&module)
        .run_until_signal(async { outcome = Some(follow(&*service, &*bus, opts).await) })
        .await;
    match (outcome, ended) {
        (Some(code), _) => code,
        (None, Ok(ended)) => {
            eprintln!("interrupted by {:?}; the command was stopped", ended.signal);
            ExitCode::from(ended.exit_code())
        }
        (None, Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the command, prints its events until it exits, then its `Info`.
async fn follow(service: &dyn ProcessService, bus: &dyn EventBus, opts: RunOptions) -> ExitCode {
    // Subscribe before starting, so no event is missed.
    let mut events = bus.subscribe();
    let process = match service.start(opts).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };

    loop {
        match events.recv().await {
            Ok(ProcessEvent::Started {
                id,
                command,
                args,
                pid,
                ..
            }) => {
                println!("[{id}] started `{command} {}` as pid {pid}", args.join(" "))
            }
            Ok(ProcessEvent::Output { id, line, stream }) => println!("[{id} {stream}] {line}"),
            Ok(ProcessEvent::Killed { id, signal, .. }) => println!("[{id}] killed by {signal}"),
            Ok(ProcessEvent::Exited {
                id,
                exit_code,
                duration,
                error,
            }) => {
                println!(
                    "[{id}] exited with {exit_code:?} after {duration:?} ({})",
                    error.as_deref().unwrap_or("ok")
                );
                if id.as_ref() == process.id() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("events: {e}"),
        }
    }

    let result = process.wait().await;
    println!(
        "{}",
        serde_json::to_string_pretty(&process.info()).expect("Info serialises")
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! A CI-style pipeline (fmt, lint, tests, build, package) run by dependency: live output
//! prefixed with each spec's name, a summary table at the end, and an exit code that says
//! whether everything passed.
//!
//! Run it with `cargo run --example pipeline`; `cargo run --example pipeline -- fail` makes
//! the unit tests fail, so the build and package steps are skipped and the exit code is 1.
//!
//! `test-unit` and `lint` run alongside each other; `build` starts the moment both are done,
//! without waiting for the slower, unrelated `test-integration`. Ctrl-C stops every running
//! step gracefully and leaves no child behind.

use std::process::ExitCode;
use std::sync::Arc;

use core_process::{
    Lifecycles, PipelineEvent, PipelineOptions, PipelineRunner, ProcessModule, RunAllResult,
    RunSpec, Stream,
};
use shaku::HasComponent;

fn step(name: &str, script: &str) -> RunSpec {
    RunSpec::new(name, "sh").args(["-c", script])
}

fn specs(fail: bool) -> Vec<RunSpec> {
    let unit = if fail {
        "echo 'test parse ... ok'; sleep 0.2; echo 'test eval ... FAILED' >&2; exit 101"
    } else {
        "for t in parse eval print; do echo \"test $t ... ok\"; sleep 0.1; done"
    };
    vec![
        step("fmt", "echo 'checking formatting'; sleep 0.1; echo 'all files formatted'"),
        step(
            "lint",
            "echo 'linting src/'; sleep 0.3; echo 'warning: unused variable `x`' >&2; echo 'lint done'",
        )
        .after("fmt"),
        step("test-unit", unit).after("fmt"),
        step(
            "test-integration",
            "for t in spawn stream stop; do echo \"it $t ... ok\"; sleep 0.4; done",
        )
        .after("fmt")
        .allow_failure(true),
        step("build", "echo 'compiling app'; sleep 0.3; echo 'built target/app'")
            .after("lint")
            .after("test-unit"),
        step("package", "echo 'packing target/app.tar.gz'; sleep 0.1")
            .after("build")
            .after("test-integration"),
    ]
}

/// Prints one labelled line.
fn print_line(width: usize, name: &str, stream: Stream, line: &str) {
    let mark = if stream == Stream::Stderr { '!' } else { '|' };
    println!("{name:>width$} {mark} {line}");
}

fn summary(result: &RunAllResult, specs: &[RunSpec], width: usize) {
    println!();
    println!(
        "{:<width$}  {:<8}  {:>4}  {:>7}  NOTE",
        "SPEC", "STATUS", "EXIT", "TIME"
    );
    for (r, spec) in result.results.iter().zip(specs) {
        let status = if r.skipped {
            "skipped"
        } else if r.cancelled {
            "stopped"
        } else if r.passed() {
            "passed"
        } else {
            "FAILED"
        };
        let exit = r.exit_code.map_or("-".to_string(), |c| c.to_string());
        let time = if r.skipped {
            "-".to_string()
        } else {
            format!("{:.2}s", r.duration.as_secs_f64())
        };
        let note = match &r.error {
            Some(e) if r.skipped => e.to_string(),
            Some(_) if spec.allow_failure => "failure allowed".to_string(),
            // The exit code is in its column; say more for a start failure or a kill.
            Some(_) if r.exit_code.is_some() => String::new(),
            Some(e) => e.to_string(),
            None => String::new(),
        };
        let row = format!(
            "{:<width$}  {status:<8}  {exit:>4}  {time:>7}  {note}",
            r.name
        );
        println!("{}", row.trim_end());
    }
    println!(
        "\n{} passed, {} failed, {} skipped in {:.2}s: {}",
        result.passed,
        result.failed,
        result.skipped,
        result.duration.as_secs_f64(),
        if result.success() {
            "SUCCESS"
        } else {
            "FAILURE"
        }
    );
}

#[tokio::main]
async fn main() -> ExitCode {
    let fail = std::env::args().nth(1).as_deref() == Some("fail");
    let specs = specs(fail);
    let width = specs.iter().map(|s| s.name.len()).max().unwrap_or(4);

    let module = ProcessModule::builder().build();
    let runner: Arc<dyn PipelineRunner> = module.resolve();

    // Every line arrives labelled with its step's name, from the first one on.
    let opts = PipelineOptions::new().on_event(move |event| match event {
        PipelineEvent::Output { spec, stream, line } => print_line(width, spec, *stream, line),
        PipelineEvent::Finished {
            spec,
            passed,
            duration,
            ..
        } => println!(
            "{spec:>width$} {} {:.2}s",
            if *passed {
                "✔ passed in"
            } else {
                "✘ failed after"
            },
            duration.as_secs_f64()
        ),
        PipelineEvent::Cancelled { spec, .. } => println!("{spec:>width$} ■ stopped"),
        PipelineEvent::Skipped { spec, reason } => println!("{spec:>width$} ⤼ {reason}"),
        _ => {}
    });

    // Ctrl-C or SIGTERM ends the run: every step still running gets its stop signal and
    // grace period, and nothing is left behind (a second Ctrl-C kills at once).
    let mut outcome = None;
    let ended = Lifecycles::of_module(&module)
        .run_until_signal(async { outcome = Some(runner.run_all(&specs, opts).await) })
        .await;
    let result = match (outcome, ended) {
        (Some(Ok(result)), _) => result,
        (Some(Err(e)), _) => {
            eprintln!("pipeline rejected: {e}");
            return ExitCode::from(2);
        }
        (None, Ok(ended)) => {
            eprintln!("interrupted by {:?}; every step stopped", ended.signal);
            return ExitCode::from(ended.exit_code());
        }
        (None, Err(e)) => {
            eprintln!("stopped with an error: {e}");
            return ExitCode::FAILURE;
        }
    };
    summary(&result, &specs, width);
    if result.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! `thaw-bench`: the benchmarks `thaw bench` runs (the `thaw` command execs this
//! binary, found next to it or on PATH, with its arguments). Parse, run, print; the
//! measurements live in the `thaw_bench` library.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

mod args;
mod chart;

fn main() -> ExitCode {
    thaw::fsutil::private_umask();
    let args = match args::BenchArgs::try_parse() {
        Ok(args) => args,
        Err(e) if e.use_stderr() => return usage_error(&e),
        Err(e) => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("THAW_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let json = args.json;
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        // SIGINT or SIGTERM ends the benchmark at once with 128 + the signal's number,
        // as `thaw` ends its other commands: its QEMUs die with it (PR_SET_PDEATHSIG),
        // and a benchmark's home holds nothing worth finishing.
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => (int, term),
            (Err(e), _) | (_, Err(e)) => {
                return Err(anyhow::Error::new(e).context("could not handle signals"))
            }
        };
        tokio::select! {
            biased;
            _ = int.recv() => std::process::exit(130),
            _ = term.recv() => std::process::exit(143),
            r = args::run(args) => r,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away: nobody reads the answer; end quietly.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error and its causes.
            let line = format!("{err:#}");
            if json {
                let _ = writeln!(
                    std::io::stdout(),
                    "{}",
                    serde_json::json!({ "error": line })
                );
            }
            eprintln!("thaw: error: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `value` as JSON, or as the text `human` gives.
fn emit<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
    } else {
        let text = human(value);
        if !text.is_empty() {
            writeln!(out, "{text}")?;
        }
    }
    Ok(())
}

/// One line of progress on stderr (not under --json unless stderr is a terminal).
fn progress(json: bool) -> impl FnMut(&str) {
    move |line: &str| {
        if !json || std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("thaw: {line}");
        }
    }
}

/// One line, like every other error: clap's first line minus its prefix, the indented
/// lines that follow it (the arguments a "required arguments were not provided" error
/// names), and clap's tips ("tip: a similar subcommand exists: 'boot'"), up to the usage.
fn usage_error_line(text: &str) -> String {
    let mut lines = text.lines();
    let mut line = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned();
    let (mut named, mut tips) = (Vec::new(), Vec::new());
    let body = lines.take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"));
    for l in body.map(str::trim).filter(|l| !l.is_empty()) {
        match l.starts_with("tip:") {
            true => tips.push(l),
            false => named.push(l),
        }
    }
    if !named.is_empty() {
        line = format!("{line} {}", named.join(", "));
    }
    for tip in tips {
        line = format!("{line}; {tip}");
    }
    line
}

/// A usage error: one line on stderr, and with `--json` among the arguments (before any
/// `--`) also `{"error": ...}` on stdout, as every other error; exit status 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    let line = format!("{} (see --help)", usage_error_line(&e.to_string()));
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if json {
        println!("{}", serde_json::json!({ "error": line }));
    }
    eprintln!("thaw: {line}");
    ExitCode::from(2)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || e.downcast_ref::<serde_json::Error>()
                .and_then(|e| e.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}

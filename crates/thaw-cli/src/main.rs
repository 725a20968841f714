//! The `thaw` command: parse, call, print, exit code. The arguments are in [`args`],
//! each command in [`cmd`]; where it runs (here or in the daemon) is [`backend`].

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use thaw::Home;

mod args;
mod backend;
mod bench;
mod cmd;
mod interrupt;
mod print;
mod progress;
mod remote;

use args::{Cli, Command};
use backend::Local;
use interrupt::{Interrupt, OnSignal};

fn main() -> ExitCode {
    thaw::fsutil::private_umask();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            eprintln!("thaw: {} (see --help)", usage_error_line(&e.to_string()));
            return ExitCode::from(2);
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayVersion => {
            return cmd::version(args::json_requested());
        }
        Err(e) => {
            let _ = e.print(); // --help
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
    let json = cli.json;
    let on_signal = on_signal(&cli.command);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (result, signal) = runtime.block_on(async {
        let interrupt = match Interrupt::install() {
            Ok(i) => i,
            Err(e) => {
                return (
                    Err(anyhow::Error::new(e).context("could not handle signals")),
                    None,
                )
            }
        };
        let result = interrupt.run(on_signal, run(cli, &interrupt)).await;
        (result, interrupt.received())
    });
    // A signal that came during an operation: it finished or rolled back; say which,
    // and end with the signal's exit status.
    let interrupted = match on_signal {
        OnSignal::Finish(what) => signal.map(|s| (s, what)),
        _ => None,
    };
    match result {
        Ok(code) => match interrupted {
            Some((signal, what)) => {
                eprintln!("thaw: interrupted: {what} was completed");
                ExitCode::from(signal.exit_code())
            }
            None => code,
        },
        // The reader of our output went away (`thaw ls --json | grep -q`): what was
        // asked is done and nobody reads the answer; end quietly, as ripgrep does.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error and its causes.
            let line = format!("{err:#}");
            if json {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stdout(),
                    "{}",
                    serde_json::json!({ "error": line })
                );
            }
            match interrupt::rolled_back(&err) {
                true => eprintln!("thaw: {line}"),
                false => eprintln!("thaw: error: {line}"),
            }
            match interrupted {
                Some((signal, _)) => ExitCode::from(signal.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// What `command` does on SIGINT/SIGTERM (see [`interrupt`]).
fn on_signal(command: &Command) -> OnSignal {
    match command {
        Command::Boot(_) => OnSignal::Finish("the boot"),
        Command::Snapshot { .. } => OnSignal::Finish("the snapshot"),
        Command::Restore(_) => OnSignal::Finish("the restore"),
        Command::Reset { .. } => OnSignal::Finish("the reset"),
        Command::Up { .. } => OnSignal::Finish("thaw up"),
        Command::Serve { .. } => OnSignal::Own,
        _ => OnSignal::Exit,
    }
}

/// One line, like every other error: clap's first line minus its prefix, with the
/// indented lines that follow it (the arguments a "required arguments were not
/// provided" error names), up to the blank line before the usage.
fn usage_error_line(text: &str) -> String {
    let mut lines = text.lines();
    let first = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    let named: Vec<&str> = lines
        .take_while(|l| l.starts_with(' '))
        .map(str::trim)
        .collect();
    match named.as_slice() {
        [] => first.to_owned(),
        _ => format!("{} {}", first, named.join(", ")),
    }
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

fn progress(json: bool) -> impl FnMut(&str) {
    move |line: &str| {
        if !json || std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("thaw: {line}");
        }
    }
}

/// The daemon serving this home, for a command it serves, unless `THAW_NO_DAEMON` is
/// set. Restores that only this process can do (`--verify`, `--accel`, the hidden
/// `--keep-vmgenid`) run here.
async fn daemon_for(command: &Command, home: &Home) -> Option<thaw_daemon::client::Client> {
    let served = match command {
        Command::Restore(a) => !(a.keep_vmgenid || a.verify || a.accel.is_some()),
        Command::Boot(_)
        | Command::Exec { .. }
        | Command::Snapshot { .. }
        | Command::Reset { .. }
        | Command::Ls
        | Command::Snapshots
        | Command::Stop { .. }
        | Command::Resume { .. }
        | Command::Rm { .. }
        | Command::Pool { .. }
        | Command::Pools => true,
        _ => false,
    };
    if !served {
        return None;
    }
    if std::env::var_os("THAW_NO_DAEMON").is_some() {
        return None;
    }
    thaw_daemon::client::Client::connect_async(&thaw_daemon::default_socket(home)).await
}

async fn run(cli: Cli, interrupt: &Interrupt) -> Result<ExitCode> {
    let here = Local {
        home: Home::from_env(),
        cancel: interrupt.token().clone(),
    };
    match daemon_for(&cli.command, &here.home).await {
        Some(daemon) => cmd::run(cli.command, &daemon, &here, cli.json).await,
        None => cmd::run(cli.command, &here, &here, cli.json).await,
    }
}

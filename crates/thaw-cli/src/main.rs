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
mod transfer;

use args::{Cli, Command};
use backend::Local;
use interrupt::{Interrupt, OnSignal};

fn main() -> ExitCode {
    // Held until the handlers below exist: a signal during thaw's own start is then
    // handled like one during the command, not the end of the process.
    let held = thaw::cancel::InterruptsHeld::hold();
    thaw::fsutil::private_umask();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => return usage_error(&e),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayVersion => {
            return cmd::version(args::json_requested());
        }
        Err(e) => {
            let _ = e.print(); // --help
            return ExitCode::SUCCESS;
        }
    };
    if let Err(e) = thaw_daemon::log::init("warn") {
        if cli.json {
            println!("{}", serde_json::json!({ "error": e.to_string() }));
        }
        eprintln!("thaw: error: {e}");
        return ExitCode::from(2);
    }
    if matches!(cli.command, Command::Lazyfs) {
        drop(held);
        return match thaw::lazyfs::run(&Home::from_env()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("thaw lazyfs: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let json = cli.json;
    let is_exec = matches!(cli.command, Command::Exec(_));
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
        drop(held);
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
                None if is_exec => ExitCode::from(exec_failure(&err)),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// `thaw exec`'s own failures: 124 when the command timed out (and was killed), else
/// 125 (Docker's convention), so that they differ from the guest command's codes.
fn exec_failure(err: &anyhow::Error) -> u8 {
    use thaw::guestio::exec::StreamExecError;
    match err.chain().any(|e| {
        matches!(
            e.downcast_ref::<StreamExecError>(),
            Some(StreamExecError::TimedOut(_))
        )
    }) {
        true => 124,
        false => 125,
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
        Command::Park(_) => OnSignal::Finish("the park"),
        Command::Wake(_) => OnSignal::Finish("the wake"),
        // The guest command is killed, then thaw ends (130/143).
        Command::Exec(_) => OnSignal::Finish("the exec"),
        Command::Serve { .. } => OnSignal::Own,
        _ => OnSignal::Exit,
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
    // `thaw exec`'s usage errors are its own failures too (125, as Docker's).
    let exec = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|a| a == "exec");
    ExitCode::from(if exec { 125 } else { 2 })
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

/// Where `command` runs when a daemon is around.
enum Reach {
    /// The daemon serves it.
    Served,
    /// A daemon named by `-H` or `THAW_HOST` serves it; otherwise it runs here (it
    /// uses this process's environment, e.g. S3 credentials): `push`, `pull`, `park`,
    /// `wake`, `logs`, `screenshot`, `type`, `key`, `export`, `import`, `inspect`, `up`.
    Named,
    /// It acts on this host's state (`thaw logs`, `thaw push`, ...): here, or refused
    /// when the configured daemon is on another host.
    Here,
    /// It needs no daemon and ignores a configured one (`thaw guest build`, `thaw token
    /// new`, `thaw serve`, `thaw bench`).
    Own,
}

fn reach(command: &Command) -> Reach {
    match command {
        Command::Restore(a) if a.keep_vmgenid || a.verify || a.accel.is_some() => Reach::Here,
        // The key alone: no boot, no network, no daemon.
        Command::Up {
            print_key: true, ..
        } => Reach::Own,
        Command::Boot(_)
        | Command::Restore(_)
        | Command::Exec(_)
        | Command::Cp { .. }
        | Command::Snapshot { .. }
        | Command::Reset { .. }
        | Command::Ls { .. }
        | Command::Ttl { .. }
        | Command::Snapshots
        | Command::Stop { .. }
        | Command::Pause { .. }
        | Command::Resume { .. }
        | Command::Rm { .. }
        | Command::Pool { .. }
        | Command::Pools
        | Command::Events => Reach::Served,
        Command::Push { .. }
        | Command::Pull { .. }
        | Command::Park(_)
        | Command::Wake(_)
        | Command::Logs { .. }
        | Command::Screenshot { .. }
        | Command::Type { .. }
        | Command::Key { .. }
        | Command::Export { .. }
        | Command::Import { .. }
        | Command::Inspect { .. }
        | Command::Up { .. } => Reach::Named,
        Command::Guest { .. }
        | Command::Token { .. }
        | Command::Serve { .. }
        | Command::ParkWorker { .. }
        | Command::Bench(_) => Reach::Own,
        _ => Reach::Here,
    }
}

/// The daemon `command` goes to, if any. A daemon configured with `-H` or
/// `THAW_HOST` must answer (else one line says why, and nothing runs here); with none
/// configured, the one serving this home's socket if it answers, unless
/// `THAW_NO_DAEMON` is set. Restores that only this process can do (`--verify`,
/// `--accel`, the hidden `--keep-vmgenid`) run here.
async fn daemon_for(
    command: &Command,
    flag: Option<&str>,
    home: &Home,
) -> Result<Option<thaw_daemon::client::Client>> {
    use thaw_daemon::client::{Client, Host};
    let reach = reach(command);
    if matches!(reach, Reach::Own) {
        return Ok(None);
    }
    if let Some(client) = Client::from_env(flag)? {
        client.check().await?;
        return match (reach, client.host()) {
            (Reach::Served | Reach::Named, _) => Ok(Some(client)),
            // A daemon on this host's socket: the command acts on this host's home,
            // as beside the default socket.
            (_, Host::Unix(_)) => Ok(None),
            (_, host) => anyhow::bail!(
                "this command does not run through thawd yet, and {host} is another host: \
                 run it there, or unset THAW_HOST (and -H) to run it here"
            ),
        };
    }
    if !matches!(reach, Reach::Served) || std::env::var_os("THAW_NO_DAEMON").is_some() {
        return Ok(None);
    }
    Ok(Client::connect_async(&thaw_daemon::default_socket(home)).await)
}

async fn run(cli: Cli, interrupt: &Interrupt) -> Result<ExitCode> {
    let here = Local {
        home: Home::from_env(),
        cancel: interrupt.token().clone(),
        parked_here: cli.host.is_none()
            && std::env::var_os("THAW_HOST").is_none_or(|h| h.is_empty()),
    };
    match daemon_for(&cli.command, cli.host.as_deref(), &here.home).await? {
        Some(daemon) => cmd::run(cli.command, &daemon, &here, cli.json).await,
        None => cmd::run(cli.command, &here, &here, cli.json).await,
    }
}

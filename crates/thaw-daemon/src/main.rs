//! `thawd`: parse, serve until SIGTERM/SIGINT, map errors to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use thaw_daemon::{serve, ServeConfig};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "thawd",
    version,
    about = "The thaw daemon: thaw's operations as an HTTP/JSON API on a Unix socket (and TCP)",
    long_about = "The thaw daemon: thaw's operations as an HTTP/JSON API on a Unix socket \
        (see docs/api.md), and with --listen on TCP with TLS and bearer tokens, a warm pool of clones per snapshot, and state in \
        $THAW_HOME/thawd.db that a restarted daemon picks up.\n\n\
        SIGTERM or SIGINT ends it gracefully: pooled processes end, VMs keep running."
)]
struct Args {
    /// The socket to listen on [default: $THAW_HOME/thawd.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The most VMs at once (booted and restored, counting those starting); requests
    /// beyond it get 429.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_vms: u32,
    /// Close a connection that has not sent a whole request head within SECS (from the
    /// connect, or from the previous answer when kept alive); a body that takes longer
    /// gets 408.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    #[command(flatten)]
    tcp: thaw_daemon::TcpArgs,
    /// Run as the pool keeper of the daemon for HOME (started by the daemon itself).
    #[arg(long = "pool-keeper", value_name = "HOME", hide = true)]
    pool_keeper: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the API's OpenAPI document (docs/openapi.json is its output:
    /// `thawd openapi > docs/openapi.json`).
    Openapi,
    /// Write thawd's man page (thawd.1) into DIR (for packaging).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

fn main() -> ExitCode {
    thaw::fsutil::private_umask();
    let args = Args::parse();
    match args.command {
        Some(Command::Openapi) => {
            println!("{}", thaw_daemon::openapi::document());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man { dir }) => {
            use clap::CommandFactory;
            return match thaw_daemon::manpages::write(Args::command(), &dir) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("thawd: error: {}", thaw::one_line(&e));
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    if let Some(home) = args.pool_keeper {
        return thaw_daemon::keeper::run(&home);
    }
    if let Err(e) = thaw_daemon::log::init("info") {
        eprintln!("thawd: error: {e}");
        return ExitCode::from(2);
    }
    let mut config = ServeConfig::new(thaw::Home::from_env());
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    config.max_vms = args.max_vms;
    config.header_timeout = std::time::Duration::from_secs(args.header_timeout);
    config.tcp = args.tcp.config();

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        // Installed before serving starts, so that an early SIGTERM is graceful too.
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        serve(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thawd: error: {}", thaw_daemon::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

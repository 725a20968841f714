//! One function per command: [`vm`] for those the daemon serves (through [`Ops`]),
//! [`local`] for those that always run in this process. [`run`] picks it.

mod local;
mod park;
mod vm;

use std::process::ExitCode;

use anyhow::Result;
use thaw::pool::PoolConfig;
use thaw::snapshot::take::SnapshotRequest;

use crate::args::{Command, TokenCommand};
use crate::backend::{Local, Ops};

/// Runs `command`: through `ops` if the daemon serves it, else in `here`.
pub(crate) async fn run(
    command: Command,
    ops: &impl Ops,
    here: &Local,
    json: bool,
) -> Result<ExitCode> {
    let (home, cancel) = (&here.home, &here.cancel);
    match command {
        Command::Boot(args) => vm::boot(ops, args, json).await?,
        Command::Exec(args) => return vm::exec(ops, args, cancel, json).await,
        Command::Cp { src, dst } => vm::cp(ops, &src, &dst, json).await?,
        Command::Snapshot {
            name,
            tag,
            stop,
            pin,
        } => {
            vm::snapshot(
                ops,
                SnapshotRequest {
                    name,
                    tag,
                    stop,
                    pin,
                },
                json,
            )
            .await?
        }
        Command::Restore(args) => vm::restore(ops, args, json).await?,
        Command::Reset { name, to, timeout } => vm::reset(ops, name, to, timeout, json).await?,
        Command::Ls { filter } => {
            // Parked VMs have no labels: a filter matches none.
            let parked = match filter.is_empty() {
                true => park::parked(here),
                false => Vec::new(),
            };
            vm::ls(ops, &filter, &parked, json).await?
        }
        Command::Snapshots => vm::snapshots(ops, &park::parked(here), json).await?,
        Command::Park(args) => park::park(args, ops.daemon(), here, json).await?,
        Command::Wake(args) => park::wake(args, ops.daemon(), here, json).await?,
        Command::ParkWorker { name } => park::worker(name, here).await?,
        Command::Stop { names, all, filter } => vm::stop(ops, names, all, &filter, json).await?,
        Command::Ttl { name, duration } => vm::ttl(ops, name, &duration, json).await?,
        Command::Resume { name } => vm::resume(ops, name, json).await?,
        Command::Rm { tag, recursive } => vm::rm(ops, tag, recursive, json).await?,
        Command::Pool {
            tag,
            size,
            mode,
            warm_ports,
            bind,
        } => {
            let config = PoolConfig {
                size,
                mode,
                warm_ports,
                bind: bind.as_deref().map(thaw::ports::parse_bind).transpose()?,
            };
            vm::pool(ops, tag, config, json).await?
        }
        Command::Pools => vm::pools(ops, json).await?,
        Command::Events => vm::events(ops, json).await?,
        Command::Up {
            boot,
            remote,
            print_key: true,
        } => local::print_key(boot, remote, json)?,
        Command::Up { boot, remote, .. } => local::up(ops, boot, remote, json).await?,
        Command::Push { tag, remote } => vm::transfer(ops, false, tag, &remote, json).await?,
        Command::Pull { tag, remote } => vm::transfer(ops, true, tag, &remote, json).await?,
        Command::Export { tag, file } => local::export(ops, tag, file, json).await?,
        Command::Import { file } => local::import(ops, file, json).await?,
        Command::Gc => local::gc(home, json).await?,
        Command::Store { command } => local::store(command, home, json).await?,
        Command::Pause { name } => vm::pause(ops, name, json).await?,
        Command::Screenshot { name, file } => vm::screenshot(ops, name, file, json).await?,
        Command::Type { name, text } => vm::keys(ops, name, Ok(text), json).await?,
        Command::Key { name, combos } => vm::keys(ops, name, Err(combos), json).await?,
        Command::Logs { name, follow } => vm::logs(ops, name, follow, json).await?,
        Command::Inspect { name } => local::inspect(ops, &name, json).await?,
        Command::Serve {
            socket,
            max_vms,
            tcp,
        } => local::serve(socket, max_vms, tcp, home, json, cancel).await?,
        Command::Token {
            command: TokenCommand::New { name, tokens },
        } => local::new_token(&name, &tokens, json)?,
        Command::Guest { command } => local::guest(command, json)?,
        Command::Completions { shell } => local::completions(shell, json)?,
        Command::Man { dir } => local::man_pages(&dir, json)?,
        Command::Lazyfs => unreachable!("run by main before the runtime starts"),
        Command::Bench(args) => return Err(crate::bench::exec(json, &args.args)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `thaw --version`: this build, the snapshot format it writes and the QEMU it would
/// run, one fact per line or one JSON document. Finding no QEMU is not an error here.
pub(crate) fn version(json: bool) -> ExitCode {
    let about = thaw::about::About::gather(env!("THAW_COMMIT"), &thaw::guest::cache_dir());
    let shown = match json {
        true => serde_json::to_string(&about).map_err(std::io::Error::from),
        false => Ok(about.to_string()),
    };
    use std::io::Write;
    match shown.and_then(|text| writeln!(std::io::stdout(), "{text}")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thaw: error: could not print the version: {e}");
            ExitCode::FAILURE
        }
    }
}

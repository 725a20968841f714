//! The `thaw` command: parse, call the library, print. No domain logic here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use thaw::ops;
use thaw::qemu::Qemu;
use thaw::{Accel, Home, MachineSpec, SnapshotTag, VmName};

#[derive(Parser)]
#[command(
    name = "thaw",
    version,
    about = "Boot a VM once, checkpoint it, and restore it (or many clones) in milliseconds",
    long_about = "Boot a VM once, checkpoint it, and restore it (or many clones) in milliseconds.\n\n\
        State lives in $THAW_HOME (default ~/.local/share/thaw); built guests are cached in \
        $THAW_CACHE (default ~/.cache/thaw). QEMU is found on $PATH or at $THAW_QEMU.\n\n\
        Try it:  thaw boot demo && thaw snapshot demo base && thaw restore base --count 3"
)]
struct Cli {
    /// Print exactly one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM in the background; returns when its guest agent answers.
    Boot(BootArgs),
    /// Run a command in a VM's guest through the agent; exits with its exit code.
    Exec {
        name: VmName,
        /// Seconds the command may run.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Checkpoint a running VM into a snapshot (the VM keeps running unless --stop).
    Snapshot {
        name: VmName,
        tag: SnapshotTag,
        /// End the VM and move its RAM file into the snapshot (no copy).
        #[arg(long)]
        stop: bool,
    },
    /// Start clones of a snapshot; each returns when its guest agent answers.
    Restore(RestoreArgs),
    /// List VMs and their state.
    Ls,
    /// List snapshots.
    Snapshots,
    /// Stop VMs and remove their state.
    Stop {
        /// VMs to stop.
        #[arg(required_unless_present = "all")]
        names: Vec<VmName>,
        /// Stop every VM.
        #[arg(long, conflicts_with = "names")]
        all: bool,
    },
    /// Resume a paused VM (for example one an interrupted snapshot left paused).
    Resume { name: VmName },
    /// Delete a snapshot.
    Rm { tag: SnapshotTag },
    /// Print a VM's serial console output.
    Logs { name: VmName },
    /// Measure cold boot against restore of the default guest.
    Bench(BenchArgs),
    /// Build guests.
    Guest {
        #[command(subcommand)]
        command: GuestCommand,
    },
}

#[derive(Args)]
struct BootArgs {
    name: VmName,
    /// Kernel to boot (default: the default guest, built if missing).
    #[arg(long, requires = "initrd")]
    kernel: Option<PathBuf>,
    /// Initramfs to boot with --kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (default: the default guest's).
    #[arg(long)]
    append: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// QEMU machine type.
    #[arg(long, default_value = "pc")]
    machine: String,
    /// Accelerator (default: kvm where it can run a guest, else tcg).
    #[arg(long)]
    accel: Option<Accel>,
    /// Attach a virtio-blk disk: PATH[,format=raw|qcow2][,readonly]. The image is never
    /// written; the VM runs on a qcow2 overlay. Repeatable.
    #[arg(long = "disk", value_name = "PATH[,OPTS]")]
    disks: Vec<String>,
    /// Forward 127.0.0.1:HOSTPORT to the guest's GUESTPORT (TCP); HOSTPORT 0 picks a
    /// free port. Repeatable.
    #[arg(long = "port", value_name = "HOSTPORT:GUESTPORT", value_parser = parse_forward)]
    ports: Vec<thaw::spec::PortForward>,
    /// No network card (user-mode networking is on by default).
    #[arg(long, conflicts_with = "ports")]
    no_net: bool,
    #[command(flatten)]
    ready: ReadyArgs,
    /// Seconds to wait for the guest to become ready.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(Args)]
struct ReadyArgs {
    /// Also wait until this guest TCP port accepts connections (through its forward).
    #[arg(long, value_name = "GUESTPORT")]
    ready_port: Option<u16>,
    /// Also wait until the serial console matches this regex.
    #[arg(long, value_name = "REGEX")]
    ready_serial: Option<String>,
}

impl ReadyArgs {
    fn spec(self) -> thaw::ready::ReadySpec {
        thaw::ready::ReadySpec {
            port: self.ready_port,
            redis_ping: false,
            serial: self.ready_serial,
        }
    }
}

fn parse_forward(s: &str) -> Result<thaw::spec::PortForward, String> {
    let (h, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HOSTPORT:GUESTPORT"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port number"))
    };
    let guest = port(g)?;
    if guest == 0 {
        return Err("the guest port cannot be 0".into());
    }
    Ok(thaw::spec::PortForward {
        host: port(h)?,
        guest,
    })
}

#[derive(Args)]
struct RestoreArgs {
    tag: SnapshotTag,
    /// How many clones to start.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Name of the clone (with --count > 1: NAME-1, NAME-2, ...). Default: TAG-N.
    #[arg(long)]
    name: Option<VmName>,
    /// Accelerator (default: kvm where it can run a guest, else tcg).
    #[arg(long)]
    accel: Option<Accel>,
    /// Hash the whole RAM image before restoring (reads every byte).
    #[arg(long)]
    verify: bool,
    /// Seconds to wait for each clone's guest agent.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Give clones the snapshot's VM Generation ID instead of a fresh one. Clones then
    /// share RNG state; only for demonstrating what the fresh id prevents.
    #[arg(long, hide = true)]
    keep_vmgenid: bool,
    /// Run this shell command in each clone before reporting it ready (for example to
    /// regenerate machine-id or SSH host keys); a non-zero exit fails the restore.
    #[arg(long, value_name = "CMD")]
    exec_after: Option<String>,
    #[command(flatten)]
    ready: ReadyArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Runs of each measurement.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Cold boots and snapshots to measure (default: --runs), e.g. fewer when measuring
    /// many pooled restores.
    #[arg(long)]
    cold_runs: Option<u32>,
    /// Guest memory in MiB; give it twice (e.g. --memory 256 --memory 2048) to compare
    /// restore times across RAM sizes in one run.
    #[arg(long, default_values_t = [256])]
    memory: Vec<u32>,
    /// Take the restores from a warm pool of this many clones.
    #[arg(long, value_name = "K")]
    pool: Option<u32>,
    /// The warm pool's mode: paused (state loaded, vCPUs not resumed) or running
    /// (resumed, agent connected).
    #[arg(long, default_value = "running", requires = "pool")]
    pool_mode: thaw::pool::PoolMode,
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Build the default guest (Debian cloud kernel + busybox/qemu-guest-agent initramfs).
    Build {
        /// Rebuild even if it is already built.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line, like every other error: clap's first line, minus its prefix.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("thaw: {} (see --help)", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
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
    let json = cli.json;
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            // One line: the error and its causes.
            let line = format!("{err:#}");
            if json {
                println!("{}", serde_json::json!({ "error": line }));
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

fn ports_text(ports: &[thaw::spec::PortForward]) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let list: Vec<String> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{} -> {}", p.host, p.guest))
        .collect();
    format!(", ports {}", list.join(", "))
}

fn progress(json: bool) -> impl FnMut(&str) {
    move |line: &str| {
        if !json || std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("thaw: {line}");
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let home = Home::from_env();
    let json = cli.json;
    match cli.command {
        Command::Boot(args) => {
            let qemu = Qemu::find(&thaw::guest::cache_dir())?;
            let (kernel, initrd, default_append) = match args.kernel {
                Some(k) => (k, args.initrd, None),
                None => {
                    let g = thaw::guest::ensure_default_guest(
                        &thaw::guest::cache_dir(),
                        &mut progress(json),
                    )
                    .context("could not build the default guest")?;
                    (g.kernel, Some(g.initrd), Some(g.cmdline))
                }
            };
            let cmdline = args
                .append
                .or(default_append)
                .unwrap_or_else(|| "console=ttyS0".to_owned());
            let disks = args
                .disks
                .iter()
                .map(|d| thaw::disk::resolve(d))
                .collect::<Result<Vec<_>, _>>()?;
            let req = ops::BootRequest {
                name: args.name,
                spec: MachineSpec {
                    machine: args.machine,
                    memory_mib: args.memory,
                    cpus: args.cpus,
                    kernel,
                    initrd,
                    cmdline,
                    accel: args.accel.unwrap_or_else(Accel::detect),
                    disks,
                    net: (!args.no_net).then(thaw::spec::NetSpec::default),
                },
                forwards: args.ports,
                ready: args.ready.spec(),
                timeout: Duration::from_secs(args.timeout),
            };
            let report = ops::boot(&home, &qemu, &req).await?;
            emit(json, &report, |r| {
                format!(
                    "booted {} in {:.0} ms (pid {}){}",
                    r.name,
                    r.boot_ms,
                    r.pid,
                    ports_text(&r.ports)
                )
            })?;
        }
        Command::Exec {
            name,
            timeout,
            command,
        } => {
            let out = ops::exec(&home, &name, &command, Duration::from_secs(timeout)).await?;
            if json {
                emit(true, &out, |_| String::new())?;
            } else {
                std::io::stdout().write_all(out.stdout.as_bytes())?;
                std::io::stderr().write_all(out.stderr.as_bytes())?;
            }
            return Ok(ExitCode::from(out.exit_code.clamp(0, 255) as u8));
        }
        Command::Snapshot { name, tag, stop } => {
            let report = ops::snapshot(&home, &ops::SnapshotRequest { name, tag, stop }).await?;
            emit(json, &report, |r| {
                format!(
                    "snapshot {}: paused {:.1} ms, state {} KiB, RAM {} MiB ({})",
                    r.tag,
                    r.pause_ms,
                    r.state_bytes / 1024,
                    r.ram_bytes >> 20,
                    r.ram_copy
                )
            })?;
        }
        Command::Restore(args) => {
            let qemu = Qemu::find(&thaw::guest::cache_dir())?;
            let req = ops::RestoreRequest {
                tag: args.tag,
                count: args.count,
                name: args.name,
                accel: args.accel,
                verify: args.verify,
                timeout: Duration::from_secs(args.timeout),
                keep_vmgenid: args.keep_vmgenid,
                ready: args.ready.spec(),
                exec_after: args.exec_after,
            };
            let reports = ops::restore(&home, &qemu, &req).await?;
            emit(json, &reports, |rs| {
                rs.iter()
                    .map(|r| {
                        format!(
                            "restored {} (pid {}): running in {:.1} ms, ready in {:.1} ms{}",
                            r.name,
                            r.pid,
                            r.restore_ms,
                            r.ready_ms,
                            ports_text(&r.ports)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        Command::Ls => {
            let vms = ops::list(&home).await;
            emit(json, &vms, |vms| {
                let mut s = format!(
                    "{:<24} {:>8} {:<13} {:>7} {:>4}  {}",
                    "NAME", "PID", "STATE", "MEMORY", "CPUS", "ORIGIN"
                );
                for v in vms {
                    let origin = match &v.origin {
                        Some(thaw::vm::Origin::Booted) => "booted".to_owned(),
                        Some(thaw::vm::Origin::Restored { snapshot }) => {
                            format!("restored from {snapshot}")
                        }
                        None => "unknown (no record)".to_owned(),
                    };
                    s.push_str(&format!(
                        "\n{:<24} {:>8} {:<13} {:>7} {:>4}  {}{}",
                        v.name,
                        v.pid.map(|p| p.to_string()).unwrap_or_default(),
                        v.state,
                        v.memory_mib.map(|m| format!("{m}M")).unwrap_or_default(),
                        v.cpus.map(|c| c.to_string()).unwrap_or_default(),
                        origin,
                        ports_text(&v.ports)
                    ));
                }
                s
            })?;
        }
        Command::Snapshots => {
            let snaps = ops::list_snapshots(&home);
            emit(json, &snaps, |snaps| {
                let mut s = format!(
                    "{:<24} {:>7} {:>4} {:>10} {:<8} {}",
                    "TAG", "MEMORY", "CPUS", "ON DISK", "QEMU", "FROM"
                );
                for i in snaps {
                    if let Some(p) = &i.problem {
                        s.push_str(&format!("\n{:<24} unusable: {p}", i.tag));
                        continue;
                    }
                    s.push_str(&format!(
                        "\n{:<24} {:>7} {:>4} {:>9}M {:<8} {}",
                        i.tag,
                        i.memory_mib.map(|m| format!("{m}M")).unwrap_or_default(),
                        i.cpus.unwrap_or(0),
                        i.disk_bytes >> 20,
                        i.qemu_version.clone().unwrap_or_default(),
                        i.source_vm
                            .as_ref()
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                    ));
                }
                s
            })?;
        }
        Command::Stop { names, all } => {
            let names = if all {
                thaw::vm::list_names(&home)
            } else {
                names
            };
            let mut stopped = Vec::new();
            for name in names {
                ops::stop(&home, &name).await?;
                stopped.push(name);
            }
            emit(json, &serde_json::json!({ "stopped": stopped }), |_| {
                stopped
                    .iter()
                    .map(|n| format!("stopped {n}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        Command::Resume { name } => {
            ops::resume(&home, &name).await?;
            emit(json, &serde_json::json!({ "resumed": name }), |_| {
                format!("resumed {name}")
            })?;
        }
        Command::Rm { tag } => {
            ops::remove_snapshot(&home, &tag)?;
            emit(json, &serde_json::json!({ "removed": tag }), |_| {
                format!("removed snapshot {tag}")
            })?;
        }
        Command::Logs { name } => {
            thaw::vm::VmState::load(&home, &name)?;
            let path = thaw::vm::VmPaths::new(&home, &name).console();
            let text = std::fs::read(&path)
                .with_context(|| format!("could not read {}", path.display()))?;
            if json {
                emit(
                    true,
                    &serde_json::json!({ "name": name, "console": String::from_utf8_lossy(&text) }),
                    |_| String::new(),
                )?;
            } else {
                std::io::stdout().write_all(&text)?;
            }
        }
        Command::Bench(args) => {
            let qemu = Qemu::find(&thaw::guest::cache_dir())?;
            let guest =
                thaw::guest::ensure_default_guest(&thaw::guest::cache_dir(), &mut progress(json))
                    .context("could not build the default guest")?;
            let cfg = thaw::bench::BenchConfig {
                runs: args.runs,
                cold_runs: args.cold_runs.unwrap_or(args.runs),
                memory_mib: args.memory,
                guest,
                accel: Accel::detect(),
                pool: args.pool.map(|size| thaw::pool::PoolConfig {
                    size,
                    mode: args.pool_mode,
                }),
            };
            let report = thaw::bench::run(&home, &qemu, &cfg, &mut progress(json)).await?;
            emit(json, &report, thaw::bench::BenchReport::table)?;
        }
        Command::Guest {
            command: GuestCommand::Build { force },
        } => {
            let g = thaw::guest::build_default_guest(
                &thaw::guest::cache_dir(),
                force,
                &mut progress(json),
            )?;
            emit(json, &g, |g| {
                format!(
                    "default guest: kernel {}, initrd {}",
                    g.kernel.display(),
                    g.initrd.display()
                )
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

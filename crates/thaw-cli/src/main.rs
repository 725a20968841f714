//! The `thaw` command: parse, call the library, print. No domain logic here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use thaw::boot::{self, BootRequest};
use thaw::control;
use thaw::profile::{BootOptions, Profile, REDIS_PORT};
use thaw::qemu::Qemu;
use thaw::restore::{self, RestoreRequest};
use thaw::snapshot::{catalog, take};
use thaw::{Accel, Home, MachineSpec, SnapshotTag, VmName};

mod chart;
mod interrupt;
mod print;
mod progress;
mod remote;

use interrupt::{Interrupt, OnSignal};
use print::emit;

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
    /// Throw a VM's changes away: back to the snapshot it was restored from (or --to
    /// TAG), keeping its name and host ports, with a fresh VM Generation ID and the
    /// clock set. Through a running daemon, from its warm pool when it has one.
    Reset {
        name: VmName,
        /// The snapshot to go back to.
        #[arg(long, value_name = "TAG")]
        to: Option<SnapshotTag>,
        /// Seconds to wait for the guest agent.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
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
    /// Resume a paused VM (for example one an interrupted snapshot left paused, or a
    /// clone restored with --paused).
    Resume { name: VmName },
    /// Pause a running VM's vCPUs (resume continues it).
    Pause { name: VmName },
    /// Write a PNG of a VM's screen (a VM with --display vnc; paused VMs too).
    Screenshot {
        name: VmName,
        /// The PNG file to write.
        file: PathBuf,
    },
    /// Type text on a VM's keyboard (US layout; \n is Enter).
    Type {
        name: VmName,
        /// The text (printable ASCII, tab, newline).
        text: String,
    },
    /// Press keys on a VM's keyboard: each COMBO is one press, e.g. ret, ctrl-alt-f2,
    /// shift-a (QEMU key names).
    Key {
        name: VmName,
        #[arg(required = true, value_name = "COMBO")]
        combos: Vec<String>,
    },
    /// Delete a snapshot (refused while snapshots taken on top of it exist).
    Rm {
        tag: SnapshotTag,
        /// Also delete every snapshot taken on top of it (children first).
        #[arg(long, short = 'r')]
        recursive: bool,
    },
    /// Print a VM's serial console output.
    Logs { name: VmName },
    /// Measure cold boot against restore (of the default guest, or --profile), both to
    /// the same readiness; --pool takes the restores from a warm pool.
    Bench(BenchArgs),
    /// Build guests.
    Guest {
        #[command(subcommand)]
        command: GuestCommand,
    },
    /// Run the daemon (thawd) in the foreground: an HTTP/JSON API on a Unix socket that
    /// owns this $THAW_HOME's VMs and warm pools. While it runs, thaw's commands go
    /// through it (set THAW_NO_DAEMON=1 to bypass it).
    Serve {
        /// The socket (default $THAW_HOME/thawd.sock), created mode 0600.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The most VMs at once; requests beyond it are refused.
        #[arg(long, default_value_t = 64)]
        max_vms: u32,
    },
    /// Set a snapshot's warm pool (needs a running daemon: thaw serve).
    Pool {
        tag: SnapshotTag,
        /// Clones kept ready (0 empties the pool).
        #[arg(long)]
        size: u32,
        /// paused: state loaded, vCPUs not resumed; running: resumed, agent connected.
        #[arg(long, default_value = "running")]
        mode: thaw::pool::PoolMode,
        /// Running pools: connect once to each forwarded port of a clone (and send a
        /// PING line) before it counts as ready.
        #[arg(long)]
        warm_ports: bool,
    },
    /// List warm pools (needs a running daemon).
    Pools,
    /// Boot through the cache: restore the snapshot of this exact boot (kernel, initrd
    /// and disks by content, machine, QEMU, readiness) if there is one — locally or on
    /// --remote — else cold-boot, snapshot into the cache (and push), and hand the VM
    /// over. --json says which path was taken.
    Up {
        #[command(flatten)]
        boot: BootArgs,
        /// An S3 remote (s3://bucket/prefix; endpoint and keys from THAW_S3_ENDPOINT,
        /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
    },
    /// Send a snapshot to S3-compatible storage: only the chunks it lacks.
    Push {
        tag: SnapshotTag,
        /// s3://bucket/prefix (endpoint and keys from the environment, see `up`).
        remote: String,
    },
    /// Fetch a snapshot from S3-compatible storage (every chunk checked on arrival).
    Pull {
        tag: SnapshotTag,
        /// s3://bucket/prefix.
        remote: String,
    },
    /// Write a snapshot and everything it needs into one file (for CI caches).
    Export { tag: SnapshotTag, file: PathBuf },
    /// Read a file written by `thaw export`.
    Import { file: PathBuf },
    /// Remove the store's chunks that no snapshot needs.
    Gc,
    /// The content-addressed store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Re-hash every chunk and name what is damaged.
    Verify,
    /// Remove a snapshot's materialized files, keeping it in the store: the next
    /// restore writes them again from the store's chunks.
    Evict { tag: SnapshotTag },
}

#[derive(Args)]
struct BootArgs {
    name: VmName,
    /// Kernel to boot. Without one, a --disk is booted through the firmware (its own
    /// bootloader), and with no --disk either, the default guest (built if missing).
    #[arg(long, requires = "initrd")]
    kernel: Option<PathBuf>,
    /// Initramfs to boot with --kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (default: the default guest's).
    #[arg(long)]
    append: Option<String>,
    /// A guest thaw builds: `default` (busybox + agent in an initramfs), `debian`
    /// (Debian bookworm with systemd and redis on a disk image; guest port 6379 is
    /// forwarded), `debian-bios` / `debian-uefi` (the same system on a disk with GRUB,
    /// booted through SeaBIOS / UEFI) or `debian-vnc` (debian-bios with a display whose
    /// screen shows a clock and what is typed). Extra --disk options attach more disks.
    #[arg(long, conflicts_with = "kernel")]
    profile: Option<Profile>,
    /// The firmware: bios (SeaBIOS) or uefi (OVMF, from Debian's ovmf package; the VM
    /// gets its own copy of the UEFI variables).
    #[arg(long)]
    firmware: Option<thaw::firmware::FirmwareKind>,
    /// A display: `vnc` (a VGA card served over VNC on 127.0.0.1), or `none`.
    #[arg(long, value_name = "vnc|none")]
    display: Option<thaw::profile::DisplayKind>,
    /// The VNC port (default: a free one; thaw ls lists it).
    #[arg(long, value_name = "PORT")]
    vnc_port: Option<u16>,
    /// Also serve VNC over a websocket (for browser clients), on PORT or a free port.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "0")]
    vnc_websocket: Option<u16>,
    /// VNC clients must give the password in the first line of FILE (at most 8
    /// characters; it is never stored: clones need it given again).
    #[arg(long, value_name = "FILE")]
    vnc_password_file: Option<PathBuf>,
    /// Guest memory in MiB (default 256; 512 for the debian profile).
    #[arg(long)]
    memory: Option<u32>,
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
    /// Leave the clones paused at the snapshot point (state loaded, vCPUs stopped);
    /// thaw resume continues them.
    #[arg(long, conflicts_with = "exec_after")]
    paused: bool,
    /// The clones' VNC password (first line of FILE), for a snapshot whose display asks
    /// for one.
    #[arg(long, value_name = "FILE")]
    vnc_password_file: Option<PathBuf>,
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
    /// Guest memory in MiB (default 256; 512 for debian); give it twice (e.g. --memory
    /// 256 --memory 2048) to compare restore times across RAM sizes in one run.
    #[arg(long)]
    memory: Vec<u32>,
    /// The guest: `default`, or `debian`, `debian-bios`, `debian-uefi`, `debian-vnc`
    /// (ready = redis answers PING).
    #[arg(long, default_value = "default")]
    profile: Profile,
    /// Take the restores from a warm pool of this many clones.
    #[arg(long, value_name = "K")]
    pool: Option<u32>,
    /// The warm pool's mode: paused (state loaded, vCPUs not resumed) or running
    /// (resumed, agent connected).
    #[arg(long, default_value = "running", requires = "pool")]
    pool_mode: thaw::pool::PoolMode,
    /// Running pools: warm up each clone's forwarded ports before it counts as ready
    /// (with --pool, and for the running pools of --compare).
    #[arg(long)]
    warm_ports: bool,
    /// Compare thaw with the methods people use today on the same guest, in one run:
    /// cold boot, QEMU savevm / -loadvm, migration to gzip and zstd files restored with
    /// -incoming exec, libvirt's virsh save / restore, and thaw without a pool, from a
    /// paused and a running pool (library and daemon).
    #[arg(long, conflicts_with_all = ["pool", "density"])]
    compare: bool,
    /// With --compare: only these methods (comma-separated): cold-boot, savevm,
    /// exec-gzip, exec-zstd, libvirt, thaw-bare (the mechanism alone: private RAM map,
    /// device state, agent ping), thaw, thaw-pool-paused, thaw-pool-running,
    /// thawd-pool-running.
    #[arg(long, value_delimiter = ',', requires = "compare")]
    methods: Vec<String>,
    /// With --compare: also draw the charts, restore → ready per method into FILE
    /// (.svg or .png) and restore → running against RAM size into FILE-ram.EXT.
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Draw --chart from this saved `bench --compare --json` report instead of
    /// measuring.
    #[arg(long, value_name = "REPORT.json", requires = "chart")]
    chart_from: Option<PathBuf>,
    /// Start N clones of one snapshot at once (no pool), check every agent answers and
    /// report the host memory they use.
    #[arg(long, value_name = "N", conflicts_with = "pool")]
    density: Option<u32>,
    /// With --density: each clone's TCG translation buffer in MiB (0: QEMU's default,
    /// 1 GiB). Overrides THAW_TCG_TB_SIZE.
    #[arg(long, value_name = "MIB", requires = "density",
          default_value_t = thaw::bench::density::DENSITY_TB_SIZE_MIB)]
    tb_size: u32,
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Build the default guest (Debian cloud kernel + busybox/qemu-guest-agent initramfs).
    Build {
        /// Rebuild even if it is already built.
        #[arg(long)]
        force: bool,
        /// Which guest: `default`, `debian`, or the firmware-booted image that
        /// `debian-bios`, `debian-uefi` and `debian-vnc` share.
        #[arg(long, default_value = "default")]
        profile: Profile,
    },
}

/// The profile's guest, built if missing (progress on stderr).
fn profile_guest(profile: Profile, json: bool) -> Result<thaw::profile::ProfileGuest> {
    Ok(thaw::profile::profile_guest(profile, &mut progress(json))?)
}

/// The first line of a password file.
fn read_password(file: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("could not read the VNC password file {}", file.display()))?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

fn main() -> ExitCode {
    thaw::fsutil::private_umask();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            eprintln!("thaw: {} (see --help)", usage_error_line(&e.to_string()));
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

/// The daemon serving this home, unless `THAW_NO_DAEMON` is set.
async fn daemon(home: &Home) -> Option<thaw_daemon::client::Client> {
    if std::env::var_os("THAW_NO_DAEMON").is_some() {
        return None;
    }
    thaw_daemon::client::Client::connect_async(&thaw_daemon::default_socket(home)).await
}

async fn run(cli: Cli, interrupt: &Interrupt) -> Result<ExitCode> {
    let cancel = interrupt.token();
    let home = Home::from_env();
    let json = cli.json;
    let remote = match &cli.command {
        Command::Serve { .. }
        | Command::Bench(_)
        | Command::Guest { .. }
        | Command::Logs { .. }
        | Command::Up { .. }
        | Command::Push { .. }
        | Command::Pull { .. }
        | Command::Export { .. }
        | Command::Import { .. }
        | Command::Gc
        | Command::Store { .. }
        | Command::Pause { .. }
        | Command::Screenshot { .. }
        | Command::Type { .. }
        | Command::Key { .. } => None,
        _ => daemon(&home).await,
    };
    match cli.command {
        Command::Boot(args) => {
            let report = match &remote {
                Some(d) => remote::boot(d, &boot_options(args)?).await?,
                None => {
                    let req = boot_request(args, json)?;
                    let qemu = Qemu::find(&thaw::guest::cache_dir())?;
                    boot::boot_cancellable(&home, &qemu, &req, cancel).await?
                }
            };
            emit(json, &report, print::boot)?;
        }
        Command::Exec {
            name,
            timeout,
            command,
        } => {
            let out = match &remote {
                Some(d) => remote::exec(d, &name, &command, timeout).await?,
                None => control::exec(&home, &name, &command, Duration::from_secs(timeout)).await?,
            };
            print::exec(json, &out)?;
            return Ok(ExitCode::from(out.exit_code.clamp(0, 255) as u8));
        }
        Command::Snapshot { name, tag, stop } => {
            let req = take::SnapshotRequest { name, tag, stop };
            let report = match &remote {
                Some(d) => remote::snapshot(d, &req).await?,
                None => take::take_cancellable(&home, &req, cancel).await?,
            };
            emit(json, &report, print::snapshot)?;
        }
        Command::Restore(args) => {
            let local_only = args.keep_vmgenid || args.verify || args.accel.is_some();
            let vnc_password = args
                .vnc_password_file
                .as_deref()
                .map(read_password)
                .transpose()?;
            let req = RestoreRequest {
                tag: args.tag,
                count: args.count,
                name: args.name,
                accel: args.accel,
                verify: args.verify,
                timeout: Duration::from_secs(args.timeout),
                keep_vmgenid: args.keep_vmgenid,
                ready: args.ready.spec(),
                exec_after: args.exec_after,
                paused: args.paused,
                vnc_password,
            };
            let reports = match &remote {
                Some(d) if !local_only => remote::restore(d, &req).await?,
                _ => {
                    let qemu = Qemu::find(&thaw::guest::cache_dir())?;
                    restore::restore_cancellable(&home, &qemu, &req, None, cancel).await?
                }
            };
            emit(json, &reports, |r| print::restore(r))?;
        }
        Command::Up { boot, remote } => {
            let req = thaw::up::UpRequest {
                boot: boot_request(boot, json)?,
                remote: remote
                    .map(|r| thaw::store::Remote::from_env(&r))
                    .transpose()?,
            };
            let cache = thaw::guest::cache_dir();
            let qemu = Qemu::find(&cache)?;
            let report = thaw::up::up(
                &home,
                &qemu,
                &cache,
                &req,
                &mut progress::Bars::new(),
                cancel,
            )
            .await?;
            emit(json, &report, |r| {
                format!(
                    "{} is up ({} {}) in {:.1} ms (pid {}){}",
                    r.name,
                    r.path,
                    r.tag,
                    r.ready_ms,
                    r.pid,
                    if r.pushed { ", pushed" } else { "" }
                )
            })?;
        }
        Command::Push { tag, remote } => {
            let remote = thaw::store::Remote::from_env(&remote)?;
            let r = thaw::store::push(&home, &tag, &remote, &mut progress::Bars::new()).await?;
            emit(json, &r, |r| print::transfer("pushed", r))?;
        }
        Command::Pull { tag, remote } => {
            let remote = thaw::store::Remote::from_env(&remote)?;
            let r = thaw::store::pull(&home, &tag, &remote, &mut progress::Bars::new()).await?;
            emit(json, &r, |r| print::transfer("pulled", r))?;
        }
        Command::Export { tag, file } => {
            let r = thaw::store::export(&home, &tag, &file, &mut progress::Bars::new())?;
            emit(
                json,
                &serde_json::json!({"tag": tag, "file": file, "chunks": r.chunks, "bytes": r.file_bytes}),
                |_| {
                    format!(
                        "exported {tag} to {} ({} chunks, {} bytes)",
                        file.display(),
                        r.chunks,
                        r.file_bytes
                    )
                },
            )?;
        }
        Command::Import { file } => {
            let tag = thaw::store::import(&home, &file, &mut progress::Bars::new())?;
            emit(json, &serde_json::json!({"imported": tag}), |_| {
                format!("imported snapshot {tag}")
            })?;
        }
        Command::Gc => {
            let r = thaw::store::gc(&home)?;
            emit(json, &r, |r| {
                format!(
                    "removed {} chunks ({} bytes); the store holds {} bytes",
                    r.chunks_removed, r.bytes_freed, r.stored_bytes
                )
            })?;
        }
        Command::Store {
            command: StoreCommand::Verify,
        } => {
            let r = thaw::store::verify(&home, &mut progress::Bars::new())?;
            if !r.damaged.is_empty() {
                anyhow::bail!(
                    "the store has {} damaged chunk(s): {} (snapshots that need them: {})",
                    r.damaged.len(),
                    r.damaged.join("; "),
                    r.snapshots_affected.join(", ")
                );
            }
            if !r.snapshots_affected.is_empty() {
                anyhow::bail!(
                    "snapshots name chunks the store lacks: {}",
                    r.snapshots_affected.join(", ")
                );
            }
            emit(json, &r, |r| {
                format!("{} chunks checked, none damaged", r.chunks_checked)
            })?;
        }
        Command::Store {
            command: StoreCommand::Evict { tag },
        } => {
            thaw::store::evict(&home, &tag)?;
            emit(json, &serde_json::json!({"evicted": tag}), |_| {
                format!("evicted the files of {tag}; it stays in the store")
            })?;
        }
        Command::Reset { name, to, timeout } => {
            let req = thaw::reset::ResetRequest {
                name,
                to,
                timeout: Duration::from_secs(timeout),
                accel: None,
            };
            let report = match &remote {
                Some(d) => remote::reset(d, &req).await?,
                None => {
                    let qemu = Qemu::find(&thaw::guest::cache_dir())?;
                    thaw::reset::reset_cancellable(&home, &qemu, &req, None, cancel).await?
                }
            };
            emit(json, &report, print::reset)?;
        }
        Command::Ls => {
            let vms = match &remote {
                Some(d) => remote::list(d).await?,
                None => control::list(&home).await,
            };
            emit(json, &vms, |v| print::vms(v))?;
        }
        Command::Snapshots => {
            let snaps = match &remote {
                Some(d) => remote::snapshots(d).await?,
                None => catalog::list(&home),
            };
            emit(json, &snaps, |s| print::snapshots(s))?;
        }
        Command::Stop { names, all } => {
            let names = match (all, &remote) {
                (false, _) => names,
                (true, Some(d)) => remote::list(d).await?.into_iter().map(|v| v.name).collect(),
                (true, None) => thaw::vm::list_names(&home),
            };
            let mut stopped = Vec::new();
            for name in names {
                match &remote {
                    Some(d) => remote::stop(d, &name).await?,
                    None => control::stop(&home, &name).await?,
                }
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
            match &remote {
                Some(d) => remote::resume(d, &name).await?,
                None => control::resume(&home, &name).await?,
            }
            emit(json, &serde_json::json!({ "resumed": name }), |_| {
                format!("resumed {name}")
            })?;
        }
        Command::Pause { name } => {
            control::pause(&home, &name).await?;
            emit(json, &serde_json::json!({ "paused": name }), |_| {
                format!("paused {name}")
            })?;
        }
        Command::Screenshot { name, file } => {
            let file = std::path::absolute(&file)?;
            let shot = thaw::display::screenshot(&home, &name, &file).await?;
            emit(json, &shot, |s| {
                format!(
                    "wrote {} ({}x{}, {} KiB)",
                    s.file.display(),
                    s.width,
                    s.height,
                    s.bytes / 1024
                )
            })?;
        }
        Command::Type { name, text } => {
            let sent = thaw::display::type_text(&home, &name, &text).await?;
            emit(json, &sent, |s| {
                format!("typed {} keys into {}", s.keys, s.name)
            })?;
        }
        Command::Key { name, combos } => {
            let sent = thaw::display::send_keys(&home, &name, &combos).await?;
            emit(json, &sent, |s| {
                format!("pressed {} keys in {}", s.keys, s.name)
            })?;
        }
        Command::Rm { tag, recursive } => {
            let removed = match &remote {
                Some(d) => remote::remove_snapshot(d, &tag, recursive).await?,
                None => catalog::remove(&home, &tag, recursive)?,
            };
            emit(json, &serde_json::json!({ "removed": removed }), |_| {
                removed
                    .iter()
                    .map(|t| format!("removed snapshot {t}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        Command::Logs { name } => {
            thaw::vm::VmState::load(&home, &name)?;
            let path = thaw::vm::VmPaths::new(&home, &name).console();
            let text = thaw::console::read(&path);
            if json {
                let doc =
                    serde_json::json!({ "name": name, "console": String::from_utf8_lossy(&text) });
                emit(true, &doc, |_| String::new())?;
            } else {
                std::io::stdout().write_all(&text)?;
            }
        }
        Command::Pool {
            tag,
            size,
            mode,
            warm_ports,
        } => {
            let d = remote.context("warm pools live in the daemon: start it with `thaw serve`")?;
            let status = remote::set_pool(
                &d,
                &tag,
                thaw::pool::PoolConfig {
                    size,
                    mode,
                    warm_ports,
                },
            )
            .await?;
            emit(json, &status, |s| print::pools(std::slice::from_ref(s)))?;
        }
        Command::Pools => {
            let d = remote.context("warm pools live in the daemon: start it with `thaw serve`")?;
            let pools = remote::pools(&d).await?;
            emit(json, &pools, |p| print::pools(p))?;
        }
        Command::Serve { socket, max_vms } => {
            let mut config = thaw_daemon::ServeConfig::new(home);
            if let Some(s) = socket {
                config.socket = s;
            }
            config.max_vms = max_vms;
            if !json {
                eprintln!("thaw: serving on {}", config.socket.display());
            }
            thaw_daemon::serve(config, cancel.clone().cancelled_owned()).await?;
            emit(json, &serde_json::json!({ "stopped": true }), |_| {
                String::new()
            })?;
        }
        Command::Bench(args)
            if args.chart_from.is_some() || args.chart.is_some() && !args.compare =>
        {
            let (Some(from), Some(path)) = (&args.chart_from, &args.chart) else {
                anyhow::bail!("--chart needs --compare (or --chart-from REPORT.json)");
            };
            let text = std::fs::read_to_string(from)
                .with_context(|| format!("could not read {}", from.display()))?;
            let report: thaw::bench::compare::CompareReport = serde_json::from_str(&text)
                .with_context(|| {
                    format!("{} is not a bench --compare --json report", from.display())
                })?;
            for written in chart::draw(&report, path)? {
                progress(json)(&format!("wrote {}", written.display()));
            }
            // The saved report's table, as the run printed it.
            emit(json, &report, thaw::bench::compare::CompareReport::table)?;
        }
        Command::Bench(args) if args.compare => {
            let qemu = Qemu::find(&thaw::guest::cache_dir())?;
            let (cfg, _) = bench_config(&args, json)?;
            let daemon = thaw_daemon::bench::DaemonRestores {
                warm_ports: args.warm_ports,
                ready: cfg.ready.clone(),
            };
            let ccfg = thaw::bench::compare::CompareConfig {
                runs: cfg.runs,
                cold_runs: cfg.cold_runs,
                memory_mib: cfg.memory_mib,
                spec: cfg.spec,
                forwards: cfg.forwards,
                ready: cfg.ready,
                guest_name: cfg.guest_name,
                accel: cfg.accel,
                pool_size: 1,
                warm_ports: args.warm_ports,
                only: args.methods.clone(),
            };
            let external: [&dyn thaw::bench::compare::ExternalMethod; 1] = [&daemon];
            let report =
                thaw::bench::compare::run(&home, &qemu, &ccfg, &external, &mut progress(json))
                    .await?;
            // The report first: a chart that cannot be drawn must not lose the figures.
            emit(json, &report, thaw::bench::compare::CompareReport::table)?;
            if let Some(path) = &args.chart {
                for written in chart::draw(&report, path)? {
                    progress(json)(&format!("wrote {}", written.display()));
                }
            }
        }
        Command::Bench(args) if args.density.is_some() => {
            let qemu = Qemu::find(&thaw::guest::cache_dir())?;
            let (cfg, _) = bench_config(&args, json)?;
            let dcfg = thaw::bench::density::DensityConfig {
                clones: args.density.unwrap_or(0),
                spec: MachineSpec {
                    memory_mib: cfg.memory_mib[0],
                    ..cfg.spec
                },
                forwards: cfg.forwards,
                ready: cfg.ready,
                guest_name: cfg.guest_name,
                accel: cfg.accel,
                tcg_tb_size_mib: (args.tb_size > 0).then_some(args.tb_size),
            };
            let report =
                thaw::bench::density::run(&home, &qemu, &dcfg, &mut progress(json)).await?;
            emit(json, &report, thaw::bench::density::DensityReport::table)?;
        }
        Command::Bench(args) => {
            let qemu = Qemu::find(&thaw::guest::cache_dir())?;
            let (cfg, _) = bench_config(&args, json)?;
            let report = thaw::bench::run(&home, &qemu, &cfg, &mut progress(json)).await?;
            emit(json, &report, thaw::bench::BenchReport::table)?;
        }
        Command::Guest {
            command: GuestCommand::Build { force, profile },
        } => {
            let cache = thaw::guest::cache_dir();
            match profile {
                Profile::Default => {
                    let g = thaw::guest::build_default_guest(&cache, force, &mut progress(json))?;
                    emit(json, &g, |g| {
                        format!(
                            "default guest: kernel {}, initrd {}",
                            g.kernel.display(),
                            g.initrd.display()
                        )
                    })?;
                }
                Profile::Debian => {
                    let g = thaw::guest::build_debian_guest(&cache, force, &mut progress(json))?;
                    emit(json, &g, |g| {
                        format!(
                            "debian guest: disk {}, kernel {}",
                            g.disk.display(),
                            g.kernel.display()
                        )
                    })?;
                }
                Profile::DebianBios | Profile::DebianUefi | Profile::DebianVnc => {
                    let g = thaw::guest::build_firmware_guest(&cache, force, &mut progress(json))?;
                    emit(json, &g, |g| {
                        format!(
                            "firmware-booted debian image (BIOS and UEFI): {}",
                            g.disk.display()
                        )
                    })?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The benchmark's machine and readiness for `thaw bench`'s arguments (building the
/// profile's guest if needed); also whether it is the debian profile.
fn bench_config(args: &BenchArgs, json: bool) -> Result<(thaw::bench::BenchConfig, bool)> {
    let g = profile_guest(args.profile, json)?;
    let debian = args.profile.has_redis();
    let memory = if args.memory.is_empty() {
        vec![args.profile.memory_mib()]
    } else {
        args.memory.clone()
    };
    let redis = thaw::spec::PortForward {
        host: 0,
        guest: REDIS_PORT,
    };
    let cfg = thaw::bench::BenchConfig {
        runs: args.runs,
        cold_runs: args.cold_runs.unwrap_or(args.runs),
        memory_mib: memory,
        spec: MachineSpec {
            machine: "pc".into(),
            memory_mib: 0,
            cpus: 1,
            kernel: g.kernel,
            initrd: g.initrd,
            cmdline: g.cmdline,
            accel: Accel::detect(),
            firmware: thaw::firmware::resolve(g.firmware)?,
            display: g.display.then(thaw::display::DisplaySpec::default),
            disks: g.disks,
            net: Some(thaw::spec::NetSpec::default()),
        },
        forwards: if debian { vec![redis] } else { Vec::new() },
        ready: thaw::ready::ReadySpec {
            port: debian.then_some(REDIS_PORT),
            redis_ping: debian,
            serial: None,
        },
        guest_name: args.profile.name().into(),
        accel: Accel::detect(),
        pool: args.pool.map(|size| thaw::pool::PoolConfig {
            size,
            mode: args.pool_mode,
            warm_ports: args.warm_ports,
        }),
    };
    Ok((cfg, debian))
}

/// Turns `thaw boot`'s arguments into the library's boot options (resolved by
/// [`thaw::profile::resolve`], here or in the daemon): a kernel boot with `--kernel`; a
/// firmware boot of the first disk with `--disk` and no `--kernel` or `--profile`;
/// otherwise a profile's guest (the default one unless `--profile` says). Paths are made
/// absolute: the daemon does not share our working directory.
fn boot_options(args: BootArgs) -> Result<BootOptions> {
    use thaw::firmware::FirmwareKind;
    use thaw::profile::DisplayKind;
    let firmware_boot = args.kernel.is_none() && args.profile.is_none() && !args.disks.is_empty();
    let custom = args.kernel.is_some() || firmware_boot;
    let disks = args
        .disks
        .iter()
        .map(|d| absolute_disk(d))
        .collect::<Result<Vec<_>>>()?;
    let password = args
        .vnc_password_file
        .as_deref()
        .map(read_password)
        .transpose()?;
    let vnc_options = args.vnc_port.is_some() || args.vnc_websocket.is_some() || password.is_some();
    Ok(BootOptions {
        name: args.name.to_string(),
        profile: (!custom).then(|| args.profile.unwrap_or(Profile::Default)),
        memory_mib: args.memory,
        cpus: Some(args.cpus),
        machine: Some(args.machine),
        accel: args.accel,
        kernel: args.kernel.map(std::path::absolute).transpose()?,
        initrd: args.initrd.map(std::path::absolute).transpose()?,
        append: args.append,
        disks,
        ports: args.ports,
        no_net: args.no_net,
        ready_port: args.ready.ready_port,
        ready_serial: args.ready.ready_serial,
        timeout_secs: Some(args.timeout),
        firmware: match firmware_boot {
            true => Some(args.firmware.unwrap_or(FirmwareKind::Bios)),
            false => args.firmware,
        },
        // A boot of your own kernel or disk has no display unless --display says.
        display_kind: args.display.or(custom.then_some(DisplayKind::None)),
        display: vnc_options.then(|| thaw::profile::DisplayOptions {
            vnc_port: args.vnc_port,
            websocket: args.vnc_websocket.is_some(),
            websocket_port: args.vnc_websocket,
            password,
        }),
    })
}

/// A `--disk` argument with its path made absolute (the options after it kept).
fn absolute_disk(arg: &str) -> Result<String> {
    match arg.split_once(',') {
        _ if arg.is_empty() || arg.starts_with(',') => Ok(arg.to_owned()),
        Some((path, opts)) => Ok(format!("{},{opts}", std::path::absolute(path)?.display())),
        None => Ok(std::path::absolute(arg)?.display().to_string()),
    }
}

/// `thaw boot`'s arguments resolved here, for a boot in this process.
fn boot_request(args: BootArgs, json: bool) -> Result<BootRequest> {
    let options = boot_options(args)?;
    Ok(thaw::profile::resolve(
        options,
        Accel::detect(),
        &mut progress(json),
    )?)
}

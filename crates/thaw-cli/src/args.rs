//! `thaw`'s arguments (clap). `thaw bench`'s are the `thaw-bench` binary's ([`crate::bench`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use thaw::profile::Profile;
use thaw::{Accel, SnapshotTag, VmName};

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
pub(crate) struct Cli {
    /// Print exactly one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The daemon to drive: unix:///path/thawd.sock or https://HOST:PORT (overrides
    /// $THAW_HOST; the token is $THAW_TOKEN or the file $THAW_TOKEN_FILE, a private
    /// CA's certificate $THAW_CA).
    #[arg(short = 'H', long, global = true, value_name = "URL")]
    pub host: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// Whether `--json` is among the arguments before any subcommand or `--`: how `thaw
/// --version --json` asks for JSON, since clap stops parsing at `--version`.
pub(crate) fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a.to_str().is_some_and(|a| a.starts_with('-') && a != "--"))
        .any(|a| a == "--json")
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Boot a VM in the background; returns when its guest agent answers.
    Boot(BootArgs),
    /// Run a command in a VM's guest; its output streams as the guest writes it, and
    /// thaw exits with its exit code (125: thaw's own error, 124: the timeout).
    Exec(ExecArgs),
    /// Copy a file into or out of a VM: `thaw cp FILE VM:/path` or `thaw cp VM:/path
    /// FILE` (streamed in chunks, mode kept).
    Cp {
        /// The source: a host file or VM:/path.
        src: String,
        /// The destination: a host path or VM:/path (a directory: the same name in it).
        dst: String,
    },
    /// Checkpoint a running VM into a snapshot (the VM keeps running unless --stop).
    Snapshot {
        name: VmName,
        tag: SnapshotTag,
        /// End the VM and move its RAM file into the snapshot (no copy).
        #[arg(long)]
        stop: bool,
        /// Also keep the RAM image and device state as plain files, beside the store's
        /// copy (twice on disk). By default the store holds the only copy and restores
        /// read it through the lazy server, page by page.
        #[arg(long)]
        pin: bool,
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
    /// List VMs and their state (with their labels and time left).
    Ls {
        /// Only VMs with this label: `label=KEY=VALUE` (repeatable: all must match).
        #[arg(long = "filter", value_name = "label=K=V")]
        filter: Vec<String>,
    },
    /// List snapshots.
    Snapshots,
    /// Stop VMs and remove their state.
    Stop {
        /// VMs to stop.
        #[arg(required_unless_present_any = ["all", "filter"])]
        names: Vec<VmName>,
        /// Stop every VM.
        #[arg(long, conflicts_with_all = ["names", "filter"])]
        all: bool,
        /// Stop every VM with this label: `label=KEY=VALUE` (repeatable: all must match).
        #[arg(long = "filter", value_name = "label=K=V", conflicts_with = "names")]
        filter: Vec<String>,
    },
    /// Set a VM's time to live to DURATION from now (30s, 10m, 2h, 1d).
    Ttl {
        name: VmName,
        /// The new time to live, counted from now.
        duration: String,
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
    /// Print a VM's serial console output (its newest 1-2 MiB).
    Logs {
        name: VmName,
        /// Then print what the guest writes until Ctrl-C or the VM ends (with --json:
        /// one JSON document per line, `{"name": ..., "console": ...}`).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Print what happens in the daemon as it happens (VMs created, ready, stopped,
    /// died; snapshots taken, removed; pools refilled) until Ctrl-C or the daemon stops;
    /// with --json one JSON object per line. Needs a daemon (thaw serve or THAW_HOST).
    Events,
    /// Show a VM (its record and its state now) or, when no VM has that name, a
    /// snapshot (its manifest's summary).
    Inspect {
        #[arg(value_name = "VM|TAG")]
        name: String,
    },
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
        #[command(flatten)]
        tcp: thaw_daemon::TcpArgs,
    },
    /// Tokens for thawd's TCP listener (thaw serve --listen ... --tokens FILE).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
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
        /// The host address the pooled clones' forwards and displays listen on
        /// (default 127.0.0.1); a restore takes them only when it asks for the same
        /// --bind.
        #[arg(long, value_name = "ADDR")]
        bind: Option<String>,
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
        /// Print the cache key of this boot and exit: no boot, no network (the key a CI
        /// cache is restored under; --json adds the snapshot tag).
        #[arg(long)]
        print_key: bool,
    },
    /// Put a VM away: snapshot it with the VM stopped (tag: its name), the VM ends; with
    /// --remote, the snapshot then goes to S3 in the background (a worker that
    /// outlives this command; --wait waits for it). `thaw wake NAME` brings it back.
    Park(ParkArgs),
    /// Bring a parked VM back under its name (RAM and disks as parked, clock set): from
    /// this host, else fetched from --from.
    Wake(WakeArgs),
    /// The background upload of a parked VM (started by `thaw park`).
    #[command(hide = true)]
    ParkWorker { name: VmName },
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
    /// Print a shell completion script: bash, zsh, fish (also elvish, powershell).
    /// E.g. `thaw completions bash > /etc/bash_completion.d/thaw`.
    Completions { shell: clap_complete::Shell },
    /// Write thaw's man pages into DIR: thaw.1 and one per subcommand (for packaging).
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Serve this home's lazily restored snapshots (started by thaw when needed; runs
    /// until idle).
    #[command(hide = true)]
    Lazyfs,
}

#[derive(Args)]
pub(crate) struct ParkArgs {
    /// The VM to park (with --resume: a parked VM whose upload to resume).
    pub name: VmName,
    /// s3://BUCKET/PREFIX to upload the snapshot to (endpoint and keys from the
    /// environment, see `up`). Without it the snapshot stays here only.
    #[arg(long, value_name = "URL", conflicts_with = "resume")]
    pub remote: Option<String>,
    /// Wait for the upload and show its progress.
    #[arg(long)]
    pub wait: bool,
    /// Resume the upload of an already parked VM (one whose worker died or failed).
    #[arg(long)]
    pub resume: bool,
}

#[derive(Args)]
pub(crate) struct WakeArgs {
    /// The parked VM's name (its snapshot's tag).
    pub name: VmName,
    /// s3://BUCKET/PREFIX to fetch the snapshot from when it is not here.
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
    /// Seconds to wait for the guest agent.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Subcommand)]
pub(crate) enum StoreCommand {
    /// Re-hash every chunk and name what is damaged.
    Verify,
    /// Remove a snapshot's materialized files, keeping it in the store: the next
    /// restore writes them again from the store's chunks.
    Evict { tag: SnapshotTag },
}

#[derive(Args)]
pub(crate) struct BootArgs {
    pub name: VmName,
    /// Time to live (30s, 10m, 2h, 1d): the VM is then stopped and removed.
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// A label KEY=VALUE (repeatable), shown by `thaw ls` and matched by --filter.
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Kernel to boot. Without one, a --disk is booted through the firmware (its own
    /// bootloader), and with no --disk either, the default guest (built if missing).
    #[arg(long, requires = "initrd")]
    pub kernel: Option<PathBuf>,
    /// Initramfs to boot with --kernel.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (default: the default guest's).
    #[arg(long)]
    pub append: Option<String>,
    /// A guest thaw builds: `default` (busybox + agent in an initramfs), `debian`
    /// (Debian bookworm with systemd and redis on a disk image; guest port 6379 is
    /// forwarded), `debian-bios` / `debian-uefi` (the same system on a disk with GRUB,
    /// booted through SeaBIOS / UEFI) or `debian-vnc` (debian-bios with a display whose
    /// screen shows a clock and what is typed). Extra --disk options attach more disks.
    #[arg(long, conflicts_with = "kernel")]
    pub profile: Option<Profile>,
    /// The firmware: bios (SeaBIOS) or uefi (OVMF, from Debian's ovmf package; the VM
    /// gets its own copy of the UEFI variables).
    #[arg(long)]
    pub firmware: Option<thaw::firmware::FirmwareKind>,
    /// A display: `vnc` (a VGA card served over VNC on the --bind address), or `none`.
    #[arg(long, value_name = "vnc|none")]
    pub display: Option<thaw::profile::DisplayKind>,
    /// The VNC port (default: a free one; thaw ls lists it).
    #[arg(long, value_name = "PORT")]
    pub vnc_port: Option<u16>,
    /// Also serve VNC over a websocket (for browser clients), on PORT or a free port.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "0")]
    pub vnc_websocket: Option<u16>,
    /// VNC clients must give the password in the first line of FILE (at most 8
    /// characters; it is never stored: clones need it given again).
    #[arg(long, value_name = "FILE")]
    pub vnc_password_file: Option<PathBuf>,
    /// Guest memory in MiB (default 256; 512 for the debian profile).
    #[arg(long)]
    pub memory: Option<u32>,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// QEMU machine type.
    #[arg(long, default_value = "pc")]
    pub machine: String,
    /// Accelerator (default: kvm where it can run a guest, else tcg).
    #[arg(long)]
    pub accel: Option<Accel>,
    /// Attach a virtio-blk disk: PATH[,format=raw|qcow2][,readonly]. The image is never
    /// written; the VM runs on a qcow2 overlay. Repeatable.
    #[arg(long = "disk", value_name = "PATH[,OPTS]")]
    pub disks: Vec<String>,
    /// Forward HOSTPORT (on the --bind address) to the guest's GUESTPORT (TCP);
    /// HOSTPORT 0 picks a free port. Repeatable.
    #[arg(long = "port", value_name = "HOSTPORT:GUESTPORT", value_parser = parse_forward)]
    pub ports: Vec<thaw::spec::PortForward>,
    #[command(flatten)]
    pub bind: BindArg,
    /// No network card (user-mode networking is on by default).
    #[arg(long, conflicts_with = "ports")]
    pub no_net: bool,
    #[command(flatten)]
    pub ready: ReadyArgs,
    /// Seconds to wait for the guest to become ready.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Args)]
pub(crate) struct BindArg {
    /// The host address the port forwards and the VNC display listen on: an IPv4
    /// address of this host (of the daemon's, through one), or 0.0.0.0 for all
    /// (default 127.0.0.1: only this host reaches them).
    #[arg(long = "bind", value_name = "ADDR")]
    pub bind: Option<String>,
}

impl BindArg {
    /// The address, its syntax checked (whether this host has it is checked where the
    /// VM starts).
    pub fn addr(&self) -> Result<std::net::Ipv4Addr, thaw::ports::BindError> {
        match self.bind.as_deref() {
            Some(b) => thaw::ports::parse_bind(b),
            None => Ok(thaw::ports::DEFAULT_BIND),
        }
    }
}

#[derive(Args)]
pub(crate) struct ReadyArgs {
    /// Also wait until this guest TCP port accepts connections (through its forward).
    #[arg(long, value_name = "GUESTPORT")]
    pub ready_port: Option<u16>,
    /// Also wait until the serial console matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub ready_serial: Option<String>,
}

impl ReadyArgs {
    pub fn spec(self) -> thaw::ready::ReadySpec {
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
pub(crate) struct RestoreArgs {
    pub tag: SnapshotTag,
    /// Time to live (30s, 10m, 2h, 1d): the VM is then stopped and removed.
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// A label KEY=VALUE (repeatable), shown by `thaw ls` and matched by --filter.
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// How many clones to start.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Name of the clone (with --count > 1: NAME-1, NAME-2, ...). Default: TAG-N.
    #[arg(long)]
    pub name: Option<VmName>,
    /// Accelerator (default: kvm where it can run a guest, else tcg).
    #[arg(long)]
    pub accel: Option<Accel>,
    /// Hash the whole RAM image before restoring (reads every byte).
    #[arg(long)]
    pub verify: bool,
    /// Seconds to wait for each clone's guest agent.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Give clones the snapshot's VM Generation ID instead of a fresh one. Clones then
    /// share RNG state; only for demonstrating what the fresh id prevents.
    #[arg(long, hide = true)]
    pub keep_vmgenid: bool,
    /// Run this shell command in each clone before reporting it ready (for example to
    /// regenerate machine-id or SSH host keys); a non-zero exit fails the restore.
    #[arg(long, value_name = "CMD")]
    pub exec_after: Option<String>,
    /// Leave the clones paused at the snapshot point (state loaded, vCPUs stopped);
    /// thaw resume continues them.
    #[arg(long, conflicts_with = "exec_after")]
    pub paused: bool,
    /// Restore straight from S3-compatible storage (s3://bucket/prefix) when this host
    /// does not have TAG: lazily, fetching chunks as the clones touch them and the
    /// rest in the background (endpoint and keys from the environment, see `up`)
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
    /// The clones' VNC password (first line of FILE), for a snapshot whose display asks
    /// for one.
    #[arg(long, value_name = "FILE")]
    pub vnc_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub bind: BindArg,
    #[command(flatten)]
    pub ready: ReadyArgs,
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a new token NAME, append its SHA-256 to the tokens file (created 0600) and
    /// print the token: the only time it is shown.
    New {
        /// The token's name (letters, digits, '-', '_', '.'), e.g. the client's.
        name: String,
        /// The tokens file thawd reads (--tokens).
        #[arg(long, value_name = "FILE")]
        tokens: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum GuestCommand {
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

/// `thaw bench`: everything after it goes to the `thaw-bench` binary (see
/// [`crate::bench`]), `--help` included.
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct BenchArgs {
    /// The benchmark's arguments (`thaw bench --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<std::ffi::OsString>,
}

#[derive(Args)]
pub(crate) struct ExecArgs {
    pub name: VmName,
    /// Seconds the command may run; then the guest process is killed (exit 124).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Send this command's stdin to the guest command (copied to the guest first).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// An environment variable for the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The guest directory the command runs in.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

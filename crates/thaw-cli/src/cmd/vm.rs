//! The commands the daemon serves when one runs for this home (`thaw serve`): each
//! builds the library's request, hands it to [`Ops`] and prints the answer.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use thaw::boot::BootRequest;
use thaw::lifetime::{LabelFilter, Lifetime};
use thaw::pool::PoolConfig;
use thaw::profile::{BootOptions, Profile};
use thaw::restore::RestoreRequest;
use thaw::snapshot::take::SnapshotRequest;
use thaw::{Accel, SnapshotTag, VmName};

use thaw::agent::ExecOutput;
use thaw::cancel::{CancellationToken, Interrupted};
use thaw::guestio::exec::{ExecEvent, ExecSpec};
use tokio::sync::mpsc;

use crate::args::{BootArgs, ExecArgs, RestoreArgs};
use crate::backend::Ops;
use crate::print::{self, emit};

pub(crate) async fn boot(ops: &impl Ops, args: BootArgs, json: bool) -> Result<()> {
    let report = ops.boot(boot_options(args)?, json).await?;
    emit(json, &report, print::boot)?;
    Ok(())
}

/// Runs the command, its output streamed to ours as it comes; exits with its exit
/// code. With `--json`, the output is gathered into one document instead.
/// On SIGINT/SIGTERM (`cancel`), the output stops being read: the guest command is
/// killed and thaw says so (exit 130/143).
pub(crate) async fn exec(
    ops: &impl Ops,
    args: ExecArgs,
    cancel: &CancellationToken,
    json: bool,
) -> Result<ExitCode> {
    let spec = ExecSpec {
        command: args.command,
        env: args.env,
        cwd: args.workdir,
        timeout: Duration::from_secs(args.timeout),
    };
    let (tx, rx) = mpsc::channel::<ExecEvent>(4);
    let mut stdin = args.interactive.then(tokio::io::stdin);
    let stdin = stdin
        .as_mut()
        .map(|s| s as &mut (dyn tokio::io::AsyncRead + Unpin + Send));
    let mut gathered = ExecOutput {
        exit_code: 0,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    let print = async {
        let mut rx = rx;
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                () = cancel.cancelled() => return Ok(true),
            };
            let Some(ev) = ev else { break };
            // Blocking writes: a slow reader of our output slows the guest command
            // (through the relay's back pressure), nothing piles up here.
            match (ev, json) {
                (ExecEvent::Stdout(b), false) => write_flush(&mut std::io::stdout().lock(), &b)?,
                (ExecEvent::Stderr(b), false) => write_flush(&mut std::io::stderr().lock(), &b)?,
                (ExecEvent::Stdout(b), true) => gathered.stdout.extend_from_slice(&b),
                (ExecEvent::Stderr(b), true) => gathered.stderr.extend_from_slice(&b),
            }
        }
        Ok::<bool, std::io::Error>(false)
    };
    let (code, interrupted) = tokio::join!(ops.exec_stream(&args.name, &spec, stdin, tx), print);
    if interrupted? {
        return Err(anyhow::Error::new(Interrupted::Exec).context("interrupted"));
    }
    let code = code?;
    if json {
        gathered.exit_code = code;
        print::exec(true, &gathered)?;
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

fn write_flush(w: &mut impl std::io::Write, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes)?;
    w.flush()
}

/// `thaw cp SRC DST`, one of them `VM:/path`.
pub(crate) async fn cp(ops: &impl Ops, src: &str, dst: &str, json: bool) -> Result<()> {
    let copied = match (guest_path(src)?, guest_path(dst)?) {
        (Some(_), Some(_)) | (None, None) => {
            anyhow::bail!("one side of thaw cp must be VM:/path and the other a host path")
        }
        (None, Some((name, path))) => {
            let host = std::path::Path::new(src);
            let meta = std::fs::metadata(host).with_context(|| format!("cannot read {src}"))?;
            if meta.is_dir() {
                anyhow::bail!("{src} is a directory; thaw cp copies files");
            }
            let mut file = tokio::fs::File::open(host)
                .await
                .with_context(|| format!("cannot read {src}"))?;
            let file_name = host.file_name().unwrap_or_default().to_string_lossy();
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            ops.upload(&name, &mut file, &path, &file_name, mode)
                .await?
        }
        (Some((name, path)), None) => {
            let mut host = std::path::PathBuf::from(dst);
            if host.is_dir() {
                let base = path.rsplit('/').next().unwrap_or_default();
                host.push(base);
            }
            let part = host.with_extension("thaw-part");
            let mut file = tokio::fs::File::create(&part)
                .await
                .with_context(|| format!("cannot write {}", part.display()))?;
            let copied = match ops.download(&name, &path, &mut file).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(e);
                }
            };
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&part, std::fs::Permissions::from_mode(copied.mode))
                .and_then(|()| std::fs::rename(&part, &host))
                .with_context(|| format!("cannot write {}", host.display()))?;
            copied
        }
    };
    emit(json, &copied, |c| {
        format!("copied {} bytes (mode {:o})", c.bytes, c.mode)
    })
}

/// `VM:/path` as a VM and a guest path; `None` for a host path (one with a `/` before
/// any `:`, or no `:`).
fn guest_path(arg: &str) -> Result<Option<(VmName, String)>> {
    let Some((vm, path)) = arg.split_once(':') else {
        return Ok(None);
    };
    if vm.contains('/') || vm.is_empty() {
        return Ok(None);
    }
    let name: VmName = vm
        .parse()
        .map_err(|e| anyhow::anyhow!("{arg:?}: {vm:?} is not a VM name: {e}"))?;
    if !path.starts_with('/') {
        anyhow::bail!("{arg:?}: the guest path must be absolute (VM:/path)");
    }
    Ok(Some((name, path.to_owned())))
}

pub(crate) async fn snapshot(ops: &impl Ops, req: SnapshotRequest, json: bool) -> Result<()> {
    let report = ops.snapshot(&req).await?;
    emit(json, &report, print::snapshot)?;
    Ok(())
}

pub(crate) async fn restore(ops: &impl Ops, args: RestoreArgs, json: bool) -> Result<()> {
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
        lifetime: lifetime(args.ttl.as_deref(), &args.labels)?,
        from: args.from,
        bind: args.bind.addr()?,
    };
    let reports = ops.restore(&req).await?;
    emit(json, &reports, |r| print::restore(r))?;
    Ok(())
}

pub(crate) async fn reset(
    ops: &impl Ops,
    name: VmName,
    to: Option<SnapshotTag>,
    timeout: u64,
    json: bool,
) -> Result<()> {
    let req = thaw::reset::ResetRequest {
        name,
        to,
        timeout: Duration::from_secs(timeout),
        accel: None,
    };
    let report = ops.reset(&req).await?;
    emit(json, &report, print::reset)?;
    Ok(())
}

pub(crate) async fn ls(
    ops: &impl Ops,
    filter: &[String],
    parked: &[thaw::park::ParkRecord],
    json: bool,
) -> Result<()> {
    let vms = matching(ops, filter).await?;
    super::park::ls(vms, parked, json)
}

/// The VMs whose labels match every `--filter` (all of them without one).
async fn matching(ops: &impl Ops, filter: &[String]) -> Result<Vec<thaw::control::VmInfo>> {
    let filter = LabelFilter::parse_filters(filter)?;
    let mut vms = ops.list().await?;
    vms.retain(|v| filter.matches(&v.labels));
    Ok(vms)
}

/// `--ttl` and `--label`s, checked.
fn lifetime(ttl: Option<&str>, labels: &[String]) -> Result<Lifetime> {
    let labels = labels
        .iter()
        .map(|l| thaw::lifetime::parse_label(l))
        .collect::<Result<_, _>>()?;
    Ok(Lifetime::from_wire(ttl, &labels)?)
}

pub(crate) async fn ttl(ops: &impl Ops, name: VmName, duration: &str, json: bool) -> Result<()> {
    let ttl = thaw::lifetime::parse_ttl(duration)?;
    let info = ops.set_ttl(&name, ttl).await?;
    emit(json, &info, |v| {
        format!(
            "{} expires in {}",
            v.name,
            print::time_left(v.expires_in_secs.unwrap_or(0))
        )
    })?;
    Ok(())
}

pub(crate) async fn snapshots(
    ops: &impl Ops,
    parked: &[thaw::park::ParkRecord],
    json: bool,
) -> Result<()> {
    let snaps = ops.snapshots().await?;
    super::park::snapshots(snaps, parked, json)
}

pub(crate) async fn stop(
    ops: &impl Ops,
    names: Vec<VmName>,
    all: bool,
    filter: &[String],
    json: bool,
) -> Result<()> {
    let names = if all {
        ops.vm_names().await?
    } else if !filter.is_empty() {
        matching(ops, filter)
            .await?
            .into_iter()
            .map(|v| v.name)
            .collect()
    } else {
        names
    };
    let mut stopped = Vec::new();
    for name in names {
        ops.stop(&name).await?;
        stopped.push(name);
    }
    emit(json, &serde_json::json!({ "stopped": stopped }), |_| {
        stopped
            .iter()
            .map(|n| format!("stopped {n}"))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(())
}

pub(crate) async fn pause(ops: &impl Ops, name: VmName, json: bool) -> Result<()> {
    ops.pause(&name).await?;
    emit(json, &serde_json::json!({ "paused": name }), |_| {
        format!("paused {name}")
    })?;
    Ok(())
}

pub(crate) async fn resume(ops: &impl Ops, name: VmName, json: bool) -> Result<()> {
    ops.resume(&name).await?;
    emit(json, &serde_json::json!({ "resumed": name }), |_| {
        format!("resumed {name}")
    })?;
    Ok(())
}

pub(crate) async fn rm(
    ops: &impl Ops,
    tag: SnapshotTag,
    recursive: bool,
    json: bool,
) -> Result<()> {
    let removed = ops.remove_snapshot(&tag, recursive).await?;
    emit(json, &serde_json::json!({ "removed": removed }), |_| {
        removed
            .iter()
            .map(|t| format!("removed snapshot {t}"))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(())
}

pub(crate) async fn pool(
    ops: &impl Ops,
    tag: SnapshotTag,
    config: PoolConfig,
    json: bool,
) -> Result<()> {
    let status = ops.set_pool(&tag, config).await?;
    emit(json, &status, |s| print::pools(std::slice::from_ref(s)))?;
    Ok(())
}

pub(crate) async fn pools(ops: &impl Ops, json: bool) -> Result<()> {
    let pools = ops.pools().await?;
    emit(json, &pools, |p| print::pools(p))?;
    Ok(())
}

/// `thaw events`: every event as it comes, one line each (`--json`: the event's JSON
/// object), until the daemon ends the stream; a closed stdout ends it quietly.
pub(crate) async fn events(ops: &impl Ops, json: bool) -> Result<()> {
    use std::io::Write;
    let mut failed = None;
    ops.events(&mut |event| {
        let line = match json {
            true => event.to_string(),
            false => print::event(&event),
        };
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })
    .await?;
    match failed {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `thaw logs [-f]`: here, or through a daemon named by THAW_HOST or -H.
pub(crate) async fn logs(ops: &impl Ops, name: VmName, follow: bool, json: bool) -> Result<()> {
    ops.console(&name, follow, &mut |text, whole| {
        print::console(&name, text, json, whole)
    })
    .await
}

/// `thaw screenshot`: here, or through a daemon named by THAW_HOST or -H (the PNG is
/// written here either way).
pub(crate) async fn screenshot(
    ops: &impl Ops,
    name: VmName,
    file: std::path::PathBuf,
    json: bool,
) -> Result<()> {
    let file = std::path::absolute(&file)?;
    let shot = ops.screenshot(&name, &file).await?;
    emit(json, &shot, |s| {
        format!(
            "wrote {} ({}x{}, {} KiB)",
            s.file.display(),
            s.width,
            s.height,
            s.bytes / 1024
        )
    })?;
    Ok(())
}

/// `thaw type` (`Ok(text)`) and `thaw key` (`Err(combos)`).
pub(crate) async fn keys(
    ops: &impl Ops,
    name: VmName,
    what: std::result::Result<String, Vec<String>>,
    json: bool,
) -> Result<()> {
    let typed = what.is_ok();
    let sent = match &what {
        Ok(text) => ops.keys(&name, Ok(text)).await?,
        Err(combos) => ops.keys(&name, Err(combos)).await?,
    };
    emit(json, &sent, |s| match typed {
        true => format!("typed {} keys into {}", s.keys, s.name),
        false => format!("pressed {} keys in {}", s.keys, s.name),
    })?;
    Ok(())
}

/// `thaw push` / `thaw pull`: here, or through a daemon named by THAW_HOST or -H.
pub(crate) async fn transfer(
    ops: &impl Ops,
    pull: bool,
    tag: SnapshotTag,
    remote: &str,
    json: bool,
) -> Result<()> {
    let r = ops.transfer(pull, &tag, remote, json).await?;
    let verb = if pull { "pulled" } else { "pushed" };
    emit(json, &r, |r| print::transfer(verb, r))?;
    Ok(())
}

/// Turns `thaw boot`'s arguments into the library's boot options (resolved by
/// [`thaw::profile::resolve`], here or in the daemon): a kernel boot with `--kernel`; a
/// firmware boot of the first disk with `--disk` and no `--kernel` or `--profile`;
/// otherwise a profile's guest (the default one unless `--profile` says). Paths are made
/// absolute: the daemon does not share our working directory.
pub(crate) fn boot_options(args: BootArgs) -> Result<BootOptions> {
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
    // Checked here too, so a bad one is refused before anything is built.
    let lifetime = lifetime(args.ttl.as_deref(), &args.labels)?;
    Ok(BootOptions {
        ttl: lifetime.ttl.map(|t| t.as_secs().to_string()),
        labels: lifetime.labels,
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
        bind: Some(args.bind.addr()?)
            .filter(|b| *b != thaw::ports::DEFAULT_BIND)
            .map(|b| b.to_string()),
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

/// `thaw boot`'s arguments resolved here (for `thaw up`, which boots in this process).
pub(crate) fn boot_request(args: BootArgs, json: bool) -> Result<BootRequest> {
    let options = boot_options(args)?;
    Ok(thaw::profile::resolve(
        options,
        Accel::detect(),
        &mut crate::progress(json),
    )?)
}

/// The first line of a password file.
fn read_password(file: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("could not read the VNC password file {}", file.display()))?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

//! The commands that always run in this process: `up`, the store (push, pull, export,
//! import, gc, verify, evict), the screen (pause, screenshot, type, key), logs, guests
//! and `serve` itself.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use thaw::cancel::CancellationToken;
use thaw::profile::Profile;
use thaw::qemu::Qemu;
use thaw::{Home, SnapshotTag};

use crate::args::{BootArgs, GuestCommand, StoreCommand};
use crate::backend::Ops;
use crate::print::{self, emit};
use crate::progress;

pub(crate) async fn up(
    ops: &impl Ops,
    boot: BootArgs,
    remote: Option<String>,
    json: bool,
) -> Result<()> {
    let options = thaw::up::UpOptions {
        boot: super::vm::boot_options(boot)?,
        remote,
    };
    let report = ops.up(options, json).await?;
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
    Ok(())
}

/// `thaw up --print-key`: the key alone on stdout; the remote is not consulted.
pub(crate) fn print_key(boot: BootArgs, _remote: Option<String>, json: bool) -> Result<()> {
    let req = super::vm::boot_request(boot, json)?;
    let cache = thaw::guest::cache_dir();
    let qemu = Qemu::find(&cache)?;
    let k = thaw::up::cache_key(&req, &qemu, &cache)?;
    emit(json, &k, |k| k.key.clone())?;
    Ok(())
}

pub(crate) async fn export(
    ops: &impl Ops,
    tag: SnapshotTag,
    file: PathBuf,
    json: bool,
) -> Result<()> {
    let r = ops.export(&tag, &file).await?;
    emit(
        json,
        &serde_json::json!({"tag": tag, "file": file, "chunks": r.chunks, "bytes": r.bytes}),
        |_| {
            format!(
                "exported {tag} to {} ({} chunks, {} bytes)",
                file.display(),
                r.chunks,
                r.bytes
            )
        },
    )?;
    Ok(())
}

pub(crate) async fn import(ops: &impl Ops, file: PathBuf, json: bool) -> Result<()> {
    let tag = ops.import(&file).await?;
    emit(json, &serde_json::json!({"imported": tag}), |_| {
        format!("imported snapshot {tag}")
    })?;
    Ok(())
}

pub(crate) async fn gc(home: &Home, json: bool) -> Result<()> {
    let r = thaw::store::gc(home)?;
    emit(json, &r, |r| {
        format!(
            "removed {} chunks ({} bytes); the store holds {} bytes",
            r.chunks_removed, r.bytes_freed, r.stored_bytes
        )
    })?;
    Ok(())
}

pub(crate) async fn inspect(ops: &impl Ops, name: &str, json: bool) -> Result<()> {
    let found = ops.inspect(name).await?;
    emit(json, &found, print::inspection)?;
    Ok(())
}

pub(crate) async fn serve(
    socket: Option<PathBuf>,
    max_vms: u32,
    tcp: thaw_daemon::TcpArgs,
    home: &Home,
    json: bool,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut config = thaw_daemon::ServeConfig::new(home.clone());
    if let Some(s) = socket {
        config.socket = s;
    }
    config.max_vms = max_vms;
    config.tcp = tcp.config();
    if !json {
        eprintln!("thaw: serving on {}", config.socket.display());
    }
    thaw_daemon::serve(config, cancel.clone().cancelled_owned()).await?;
    emit(json, &serde_json::json!({ "stopped": true }), |_| {
        String::new()
    })?;
    Ok(())
}

/// `thaw token new NAME --tokens FILE`: the token on stdout, once.
pub(crate) fn new_token(name: &str, tokens: &std::path::Path, json: bool) -> Result<()> {
    let token = thaw_daemon::tokens::new_token(tokens, name)?;
    let out = serde_json::json!({ "name": name, "token": token, "tokens": tokens });
    emit(json, &out, |_| token.clone())
}

pub(crate) async fn store(command: StoreCommand, home: &Home, json: bool) -> Result<()> {
    match command {
        StoreCommand::Verify => {
            let r = thaw::store::verify(home, &mut progress::Bars::new())?;
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
        StoreCommand::Evict { tag } => {
            thaw::store::evict(home, &tag)?;
            emit(json, &serde_json::json!({"evicted": tag}), |_| {
                format!("evicted the files of {tag}; it stays in the store")
            })?;
        }
    }
    Ok(())
}

pub(crate) fn guest(command: GuestCommand, json: bool) -> Result<()> {
    let GuestCommand::Build { force, profile } = command;
    let cache = thaw::guest::cache_dir();
    match profile {
        Profile::Default => {
            let g = thaw::guest::build_default_guest(&cache, force, &mut crate::progress(json))?;
            emit(json, &g, |g| {
                format!(
                    "default guest: kernel {}, initrd {}",
                    g.kernel.display(),
                    g.initrd.display()
                )
            })?;
        }
        Profile::Debian => {
            let g = thaw::guest::build_debian_guest(&cache, force, &mut crate::progress(json))?;
            emit(json, &g, |g| {
                format!(
                    "debian guest: disk {}, kernel {}",
                    g.disk.display(),
                    g.kernel.display()
                )
            })?;
        }
        Profile::DebianBios | Profile::DebianUefi | Profile::DebianVnc => {
            let g = thaw::guest::build_firmware_guest(&cache, force, &mut crate::progress(json))?;
            emit(json, &g, |g| {
                format!(
                    "firmware-booted debian image (BIOS and UEFI): {}",
                    g.disk.display()
                )
            })?;
        }
    }
    Ok(())
}

/// `thaw completions SHELL`: the completion script on stdout (with --json, inside
/// `{"shell", "script"}`).
pub(crate) fn completions(shell: clap_complete::Shell, json: bool) -> Result<()> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut crate::args::Cli::command(), "thaw", &mut script);
    let script = String::from_utf8(script)?;
    let out = serde_json::json!({ "shell": shell.to_string(), "script": script });
    if json {
        return emit(true, &out, |_| String::new());
    }
    std::io::stdout().lock().write_all(script.as_bytes())?;
    Ok(())
}

/// `thaw man DIR` (hidden): thaw.1 and one page per subcommand, written into DIR.
pub(crate) fn man_pages(dir: &std::path::Path, json: bool) -> Result<()> {
    use clap::CommandFactory;
    let written = thaw_daemon::manpages::write(crate::args::Cli::command(), dir)?;
    emit(json, &serde_json::json!({ "pages": written }), |_| {
        format!("{} man pages written into {}", written.len(), dir.display())
    })
}

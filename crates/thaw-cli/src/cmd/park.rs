//! `thaw park`, `thaw wake`, the hidden `thaw park-worker`, and the parked VMs that
//! `thaw ls` and `thaw snapshots` show (see `thaw::park`). They run in this process:
//! the upload uses this process's S3 settings, and its worker outlives it.

use anyhow::{Context, Result};
use serde_json::Value;
use thaw::control::VmInfo;
use thaw::park::{self, ParkRecord, ParkReport, ParkRequest, ParkState, WakeRequest};
use thaw::snapshot::catalog::SnapshotInfo;
use thaw::VmName;
use thaw_daemon::client::Client;

use crate::args::{ParkArgs, WakeArgs};
use crate::backend::Local;
use crate::print::{self, emit};

/// The `thaw` binary, which the detached upload worker runs.
fn program() -> Result<std::path::PathBuf> {
    std::env::current_exe().context("could not find the thaw binary to start the upload worker")
}

pub(crate) async fn park(
    args: ParkArgs,
    daemon: Option<&Client>,
    here: &Local,
    json: bool,
) -> Result<()> {
    let home = &here.home;
    if let Some(d) = daemon {
        if args.resume {
            anyhow::bail!(
                "thaw park --resume runs on the host where the VM was parked: without -H/THAW_HOST there"
            );
        }
        let answer = crate::remote::park(d, &args.name, args.remote.as_deref(), args.wait).await?;
        let report: ParkReport = serde_json::from_value(answer.clone())
            .context("unexpected reply from the daemon to the park")?;
        return emit(json, &answer, |_| human(&report));
    }
    if args.resume {
        return resume(args, here, json).await;
    }
    let req = ParkRequest {
        name: args.name.clone(),
        remote: args.remote.clone(),
    };
    let mut report = park::park(home, &req, &here.cancel).await?;
    if report.park.state == ParkState::Pushing {
        report.park = match args.wait {
            true => {
                let mut bars = crate::progress::Bars::new();
                park::upload(home, &args.name, &mut bars).await?
            }
            false => {
                let pid = park::spawn_worker(home, &args.name, &program()?)?;
                let mut r = report.park.clone();
                r.worker_pid = Some(pid);
                r
            }
        };
    }
    emit(json, &report, human)
}

/// `thaw park --resume NAME`: the upload again, here (`--wait`) or by a new worker.
async fn resume(args: ParkArgs, here: &Local, json: bool) -> Result<()> {
    let home = &here.home;
    let name = &args.name;
    let record = park::get(home, name)?.ok_or_else(|| park::ParkError::NotParked(name.clone()))?;
    if record.remote.is_none() {
        return Err(park::ParkError::NoRemote(name.clone()).into());
    }
    let record = match (record.state, args.wait) {
        (ParkState::Parked | ParkState::Parking, _) => record,
        (_, true) => {
            let mut bars = crate::progress::Bars::new();
            park::upload(home, name, &mut bars).await?
        }
        (_, false) if record.worker_alive => record,
        (_, false) => {
            let pid = park::spawn_worker(home, name, &program()?)?;
            ParkRecord {
                worker_pid: Some(pid),
                state: ParkState::Pushing,
                error: None,
                ..record
            }
        }
    };
    emit(json, &record, upload_line)
}

fn human(r: &ParkReport) -> String {
    format!(
        "parked {} (paused {:.1} ms, snapshot {}); {}",
        r.name,
        r.snapshot.pause_ms,
        r.snapshot.tag,
        upload_line(&r.park)
    )
}

/// Where a parked VM's upload is, in words.
fn upload_line(r: &ParkRecord) -> String {
    let Some(remote) = &r.remote else {
        return "kept here only".into();
    };
    let pct = match r.bytes_total {
        0 => 0,
        t => r.bytes_done * 100 / t,
    };
    match r.state {
        ParkState::Parking => "being parked".into(),
        ParkState::Pushing if r.worker_alive || r.worker_pid.is_some() => {
            format!("uploading to {remote} ({pct}%, `thaw ls` shows progress)")
        }
        ParkState::Pushing => format!("upload to {remote} interrupted at {pct}%: resuming"),
        ParkState::Parked => format!("uploaded to {remote}"),
        ParkState::Failed => format!(
            "upload to {remote} failed: {} (thaw park --resume {})",
            r.error.as_deref().unwrap_or("unknown error"),
            r.name
        ),
    }
}

pub(crate) async fn wake(
    args: WakeArgs,
    daemon: Option<&Client>,
    here: &Local,
    json: bool,
) -> Result<()> {
    if let Some(d) = daemon {
        let clones = crate::remote::wake(d, &args.name, args.from.as_deref(), args.timeout).await?;
        return emit(json, &clones, |c| {
            format!("woke {}: {}", args.name, print::restore(c))
        });
    }
    let qemu = thaw::qemu::Qemu::find(&thaw::guest::cache_dir())?;
    let req = WakeRequest {
        name: args.name,
        from: args.from,
        timeout: std::time::Duration::from_secs(args.timeout),
    };
    let clone = park::wake(&here.home, &qemu, &req, &here.cancel).await?;
    emit(json, &vec![clone], |c| {
        format!("woke {}: {}", req.name, print::restore(c))
    })
}

/// The detached worker: uploads, and its record says how it went.
pub(crate) async fn worker(name: VmName, here: &Local) -> Result<()> {
    park::upload(&here.home, &name, &mut thaw::store::NoProgress).await?;
    Ok(())
}

/// Restarts the uploads whose worker died (see `thaw::park::revive`), then lists the
/// parked VMs. Only for this host's home (`parked_here`).
pub(crate) fn parked(here: &Local) -> Vec<ParkRecord> {
    if !here.parked_here {
        return Vec::new();
    }
    if let Ok(p) = program() {
        park::revive(&here.home, &p, &[]);
    }
    park::list(&here.home)
}

/// `thaw ls` with the parked VMs after the running ones: `"state": "parked"` and their
/// record under `"park"`.
pub(crate) fn ls(vms: Vec<VmInfo>, parked: &[ParkRecord], json: bool) -> Result<()> {
    if !json {
        let mut text = print::vms(&vms);
        for r in parked {
            text.push_str(&format!(
                "\n{:<24} {:>8} {:<13} {:>7} {:>4} {:>8}  {}",
                r.name,
                "",
                "parked",
                "",
                "",
                "-",
                upload_line(r)
            ));
        }
        return emit(false, &(), |_| text);
    }
    let mut out: Vec<Value> = vms
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    for r in parked {
        out.push(serde_json::json!({ "name": r.name, "state": "parked", "park": r }));
    }
    emit(true, &out, |_| String::new())
}

/// `thaw snapshots`, each parked VM's snapshot with its record under `"parked"`.
pub(crate) fn snapshots(snaps: Vec<SnapshotInfo>, parked: &[ParkRecord], json: bool) -> Result<()> {
    let of = |s: &SnapshotInfo| parked.iter().find(|r| r.tag == s.tag);
    if !json {
        let mut lines: Vec<String> = print::snapshots(&snaps)
            .lines()
            .map(str::to_owned)
            .collect();
        for (line, s) in lines.iter_mut().skip(1).zip(&snaps) {
            if let Some(r) = of(s) {
                line.push_str(&format!(" (parked: {})", upload_line(r)));
            }
        }
        return emit(false, &(), |_| lines.join("\n"));
    }
    let mut out = Vec::new();
    for s in &snaps {
        let mut v = serde_json::to_value(s)?;
        if let (Some(r), Some(o)) = (of(s), v.as_object_mut()) {
            o.insert("parked".into(), serde_json::to_value(r)?);
        }
        out.push(v);
    }
    emit(true, &out, |_| String::new())
}

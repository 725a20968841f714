//! Human-readable output; `--json` prints the same values as JSON.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use thaw::boot::BootReport;
use thaw::clone::CloneReport;
use thaw::control::VmInfo;
use thaw::display::VncPorts;
use thaw::pool::PoolStatus;
use thaw::snapshot::catalog::SnapshotInfo;
use thaw::snapshot::take::SnapshotReport;
use thaw::spec::PortForward;
use thaw::vm::Origin;

/// Prints `value` as JSON, or as the text `human` gives.
pub fn emit<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) -> Result<()> {
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

fn ports(ports: &[PortForward]) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let list: Vec<String> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{} -> {}", p.host, p.guest))
        .collect();
    format!(", ports {}", list.join(", "))
}

fn vnc(vnc: &Option<VncPorts>) -> String {
    match vnc {
        None => String::new(),
        Some(VncPorts {
            port,
            websocket: None,
        }) => format!(", vnc 127.0.0.1:{port}"),
        Some(VncPorts {
            port,
            websocket: Some(ws),
        }) => format!(", vnc 127.0.0.1:{port} (websocket {ws})"),
    }
}

pub fn boot(r: &BootReport) -> String {
    format!(
        "booted {} in {:.0} ms (pid {}){}{}",
        r.name,
        r.boot_ms,
        r.pid,
        ports(&r.ports),
        vnc(&r.vnc)
    )
}

pub fn snapshot(r: &SnapshotReport) -> String {
    format!(
        "snapshot {}: paused {:.1} ms, state {} KiB, RAM {} MiB ({})",
        r.tag,
        r.pause_ms,
        r.state_bytes / 1024,
        r.ram_bytes >> 20,
        r.ram_copy
    )
}

pub fn restore(reports: &[CloneReport]) -> String {
    reports
        .iter()
        .map(|r| {
            if r.paused {
                return format!(
                    "restored {} (pid {}): paused at the snapshot point in {:.1} ms{}{}",
                    r.name,
                    r.pid,
                    r.restore_ms,
                    ports(&r.ports),
                    vnc(&r.vnc)
                );
            }
            format!(
                "restored {} (pid {}, {}): running in {:.1} ms, ready in {:.1} ms{}{}",
                r.name,
                r.pid,
                r.breakdown.source,
                r.restore_ms,
                r.ready_ms,
                ports(&r.ports),
                vnc(&r.vnc)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn vms(vms: &[VmInfo]) -> String {
    let mut s = format!(
        "{:<24} {:>8} {:<13} {:>7} {:>4}  {}",
        "NAME", "PID", "STATE", "MEMORY", "CPUS", "ORIGIN"
    );
    for v in vms {
        let origin = match &v.origin {
            Some(Origin::Booted) => "booted".to_owned(),
            Some(Origin::Restored { snapshot }) => format!("restored from {snapshot}"),
            None => "unknown (no record)".to_owned(),
        };
        s.push_str(&format!(
            "\n{:<24} {:>8} {:<13} {:>7} {:>4}  {}{}{}",
            v.name,
            v.pid.map(|p| p.to_string()).unwrap_or_default(),
            v.state,
            v.memory_mib.map(|m| format!("{m}M")).unwrap_or_default(),
            v.cpus.map(|c| c.to_string()).unwrap_or_default(),
            origin,
            ports(&v.ports),
            vnc(&v.vnc)
        ));
    }
    s
}

pub fn snapshots(snaps: &[SnapshotInfo]) -> String {
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
}

pub fn pools(pools: &[PoolStatus]) -> String {
    let mut s = format!(
        "{:<24} {:>5} {:<8} {:>6} {:>8}",
        "SNAPSHOT", "SIZE", "MODE", "READY", "FILLING"
    );
    for p in pools {
        let mode = serde_json::to_value(p.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        s.push_str(&format!(
            "\n{:<24} {:>5} {:<8} {:>6} {:>8}",
            p.tag, p.size, mode, p.ready, p.filling
        ));
        if let Some(e) = &p.last_error {
            s.push_str(&format!("  last error: {e}"));
        }
    }
    s
}

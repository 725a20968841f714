//! Human-readable output; `--json` prints the same values as JSON.

use std::io::Write;
use std::net::Ipv4Addr;

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

/// A command's output: its bytes as the guest wrote them, stdout and stderr apart
/// (with `--json`, one document whose streams are also base64, see `ExecOutput`).
pub fn exec(json: bool, out: &thaw::agent::ExecOutput) -> Result<()> {
    if json {
        return emit(true, out, |_| String::new());
    }
    std::io::stdout().lock().write_all(&out.stdout)?;
    std::io::stderr().lock().write_all(&out.stderr)?;
    Ok(())
}

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

fn ports(ports: &[PortForward], bind: Ipv4Addr) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let list: Vec<String> = ports
        .iter()
        .map(|p| format!("{bind}:{} -> {}", p.host, p.guest))
        .collect();
    format!(", ports {}", list.join(", "))
}

fn vnc(vnc: &Option<VncPorts>, bind: Ipv4Addr) -> String {
    match vnc {
        None => String::new(),
        Some(VncPorts {
            port,
            websocket: None,
        }) => format!(", vnc {bind}:{port}"),
        Some(VncPorts {
            port,
            websocket: Some(ws),
        }) => format!(", vnc {bind}:{port} (websocket {ws})"),
    }
}

pub fn boot(r: &BootReport) -> String {
    format!(
        "booted {} in {:.0} ms (pid {}){}{}",
        r.name,
        r.boot_ms,
        r.pid,
        ports(&r.ports, r.bind),
        vnc(&r.vnc, r.bind)
    )
}

pub fn snapshot(r: &SnapshotReport) -> String {
    format!(
        "snapshot {}: paused {:.1} ms, state {} KiB, RAM {} MiB ({}), {}",
        r.tag,
        r.pause_ms,
        r.state_bytes / 1024,
        r.ram_bytes >> 20,
        r.ram_copy,
        match r.pinned {
            true => "pinned (plain files kept beside the store)",
            false => "kept once, in the store",
        }
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
                    ports(&r.ports, r.bind),
                    vnc(&r.vnc, r.bind)
                );
            }
            format!(
                "restored {} (pid {}, {}): running in {:.1} ms, ready in {:.1} ms{}{}",
                r.name,
                r.pid,
                r.breakdown.source,
                r.restore_ms,
                r.ready_ms,
                ports(&r.ports, r.bind),
                vnc(&r.vnc, r.bind)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn vms(vms: &[VmInfo]) -> String {
    let mut s = format!(
        "{:<24} {:>8} {:<13} {:>7} {:>4} {:>8}  {}",
        "NAME", "PID", "STATE", "MEMORY", "CPUS", "TTL", "ORIGIN"
    );
    for v in vms {
        let origin = match &v.origin {
            Some(Origin::Booted) => "booted".to_owned(),
            Some(Origin::Restored { snapshot }) => format!("restored from {snapshot}"),
            None => "unknown (no record)".to_owned(),
        };
        s.push_str(&format!(
            "\n{:<24} {:>8} {:<13} {:>7} {:>4} {:>8}  {}{}{}{}",
            v.name,
            v.pid.map(|p| p.to_string()).unwrap_or_default(),
            v.state,
            v.memory_mib.map(|m| format!("{m}M")).unwrap_or_default(),
            v.cpus.map(|c| c.to_string()).unwrap_or_default(),
            v.expires_in_secs
                .map(time_left)
                .unwrap_or_else(|| "-".into()),
            origin,
            ports(&v.ports, v.bind.unwrap_or(thaw::ports::DEFAULT_BIND)),
            vnc(&v.vnc, v.bind.unwrap_or(thaw::ports::DEFAULT_BIND)),
            labels(&v.labels)
        ));
    }
    s
}

/// Seconds left as `1h02m`, `4m05s` or `12s`.
pub fn time_left(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn labels(labels: &thaw::lifetime::Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" labels {}", l.join(","))
}

pub fn reset(r: &thaw::reset::ResetReport) -> String {
    let c = &r.clone;
    let ports = c
        .ports
        .iter()
        .map(|p| format!(" {}:{}→{}", c.bind, p.host, p.guest))
        .collect::<String>();
    format!(
        "reset {} to {} in {:.1} ms (ready in {:.1} ms, {}, pid {}){ports}",
        c.name, r.snapshot, c.restore_ms, c.ready_ms, c.breakdown.source, c.pid
    )
}

/// The snapshots as a tree: children under their parent, indented.
pub fn snapshots(snaps: &[SnapshotInfo]) -> String {
    let mut s = format!(
        "{:<28} {:>7} {:>4} {:>10} {:<7} {:<8} {}",
        "TAG", "MEMORY", "CPUS", "ON DISK", "LAYOUT", "QEMU", "FROM"
    );
    let mut depth: std::collections::HashMap<&str, usize> = Default::default();
    for i in snaps {
        // The list comes parents first, so a parent's depth is known.
        let d = i
            .parent
            .as_ref()
            .and_then(|p| depth.get(p.as_str()))
            .map_or(0, |d| d + 1);
        depth.insert(i.tag.as_str(), d);
        let name = match d {
            0 => i.tag.to_string(),
            d => format!("{}└ {}", "  ".repeat(d - 1), i.tag),
        };
        if let Some(p) = &i.problem {
            s.push_str(&format!("\n{name:<28} unusable: {p}"));
            continue;
        }
        s.push_str(&format!(
            "\n{:<28} {:>7} {:>4} {:>9}M {:<7} {:<8} {}",
            name,
            i.memory_mib.map(|m| format!("{m}M")).unwrap_or_default(),
            i.cpus.unwrap_or(0),
            i.disk_bytes >> 20,
            i.layout.clone().unwrap_or_default(),
            i.qemu_version.clone().unwrap_or_default(),
            i.source_vm
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default()
        ));
        if !i.local {
            s.push_str(" (in the store only)");
        }
    }
    s
}

pub fn pools(pools: &[PoolStatus]) -> String {
    let mut s = format!(
        "{:<24} {:>5} {:<8} {:>6} {:>8} {:<15}",
        "SNAPSHOT", "SIZE", "MODE", "READY", "FILLING", "BIND"
    );
    for p in pools {
        let mode = serde_json::to_value(p.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        s.push_str(&format!(
            "\n{:<24} {:>5} {:<8} {:>6} {:>8} {:<15}",
            p.tag,
            p.size,
            mode,
            p.ready,
            p.filling,
            p.bind.to_string()
        ));
        if let Some(e) = &p.last_error {
            s.push_str(&format!("  last error: {e}"));
        }
    }
    s
}

pub fn transfer(verb: &str, r: &thaw::store::TransferReport) -> String {
    format!(
        "{verb} {}: {} chunks ({} bytes compressed) moved, {} already there; {} bytes of files",
        r.tag, r.chunks_moved, r.bytes_moved, r.chunks_present, r.file_bytes
    )
}

/// `thaw inspect`: a VM as `ls` lists it and what its record says of the machine, or a
/// snapshot as `snapshots` lists it.
pub fn inspection(i: &thaw::control::Inspection) -> String {
    match i {
        thaw::control::Inspection::Vm { record: None, live } => vms(std::slice::from_ref(live)),
        thaw::control::Inspection::Vm {
            record: Some(record),
            live,
        } => {
            let s = &record.spec;
            let mut lines = vec![
                vms(std::slice::from_ref(live)),
                format!(
                    "machine {} ({}), {} MiB, {} vCPU(s), QEMU {}",
                    s.machine, s.accel, s.memory_mib, s.cpus, record.qemu_version
                ),
            ];
            if let Some(k) = &s.kernel {
                lines.push(format!("kernel {}", k.display()));
            }
            if let Some(i) = &s.initrd {
                lines.push(format!("initrd {}", i.display()));
            }
            lines.extend(s.disks.iter().map(|d| format!("disk {}", d.base.display())));
            lines.join("\n")
        }
        thaw::control::Inspection::Snapshot(info) => snapshots(std::slice::from_ref(info)),
    }
}

/// One event of `thaw events`: its time (UTC, to the millisecond), its type, then its
/// other fields as `key=value`.
pub(crate) fn event(event: &serde_json::Value) -> String {
    let ms = event["time_unix_ms"].as_u64().unwrap_or(0);
    let day_ms = ms % 86_400_000;
    let (h, m, sec, milli) = (
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000,
    );
    let mut line = format!(
        "{h:02}:{m:02}:{sec:02}.{milli:03} {}",
        event["type"].as_str().unwrap_or("?")
    );
    if let Some(fields) = event.as_object() {
        for (k, v) in fields {
            if matches!(k.as_str(), "type" | "id" | "time_unix_ms") {
                continue;
            }
            match v.as_str() {
                Some(text) => line.push_str(&format!(" {k}={text}")),
                None => line.push_str(&format!(" {k}={v}")),
            }
        }
    }
    line
}

/// Console bytes as they are, or with --json as `{"name", "console"}` (pretty as one
/// document, compact as one line of a followed log).
pub(crate) fn console(
    name: &thaw::VmName,
    text: &[u8],
    json: bool,
    whole: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match json {
        false => out.write_all(text)?,
        true => {
            let doc = serde_json::json!({ "name": name, "console": String::from_utf8_lossy(text) });
            match whole {
                true => serde_json::to_writer_pretty(&mut out, &doc)?,
                false => serde_json::to_writer(&mut out, &doc)?,
            }
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

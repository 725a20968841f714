//! The methods people use today, driven directly with their own QEMU command lines
//! (rendered from the same [`MachineSpec`] as thaw's, RAM as a plain anonymous
//! backend): QEMU's internal snapshot (`savevm` onto a qcow2, restored with
//! `-loadvm`), and migration to a compressed file (`exec:gzip`, `exec:zstd`) restored
//! with `-incoming exec:`.
//!
//! One source VM per RAM size serves every method here: it is saved by each method in
//! turn (the migrations first, each followed by `cont`; `savevm` last, since `-loadvm`
//! needs the qcow2 files the source holds), then ended, and each restore is its own
//! QEMU. Every process is a [`PeerVm`], killed and reaped when dropped, so nothing
//! outlives a failed run; files live in the method's directory, removed with the
//! benchmark's home.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;
use thaw_qmp::Qmp;
use uuid::Uuid;

use crate::method::{CompareError, MethodReport, Sample};
use thaw::agent::Agent;
use thaw::qemu::Qemu;
use thaw::ready::{self, ReadySpec};
use thaw::spec::{Launch, MachineSpec, PortForward};
use thaw::vm::VmPaths;

/// How long a peer VM may take to boot or to be restored and answer.
const TIMEOUT: Duration = Duration::from_secs(300);
/// The internal snapshot's name.
const SAVEVM_TAG: &str = "thaw-bench";

/// A compressor for the migration stream, as `exec:` runs it (`/bin/sh -c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    Gzip,
    Zstd,
}

impl Compressor {
    fn save(self, file: &Path) -> String {
        match self {
            // gzip's default level, as the gist does.
            Compressor::Gzip => format!("exec:gzip -c > {}", sh_quote(file)),
            // zstd's default level 3, one thread per core.
            Compressor::Zstd => format!("exec:zstd -q -T0 -c > {}", sh_quote(file)),
        }
    }
    fn load(self, file: &Path) -> String {
        match self {
            Compressor::Gzip => format!("exec:gzip -dc {}", sh_quote(file)),
            Compressor::Zstd => format!("exec:zstd -q -dc {}", sh_quote(file)),
        }
    }
    pub fn program(self) -> &'static str {
        match self {
            Compressor::Gzip => "gzip",
            Compressor::Zstd => "zstd",
        }
    }
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// A QEMU process a peer method started; killed and reaped when dropped.
pub struct PeerVm {
    child: Child,
    pub qmp: Qmp,
    pub paths: VmPaths,
    pub ports: Vec<PortForward>,
}

impl Drop for PeerVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PeerVm {
    /// Ends QEMU and waits for it to release its files.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.qmp.execute("quit", None)).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Dropping kills it.
    }

    /// Waits until the vCPUs run (QEMU resumes by itself after `-loadvm` or an
    /// incoming migration).
    pub async fn wait_running(&mut self) -> Result<(), CompareError> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let st = self.qmp.execute("query-status", None).await?;
            match st["status"].as_str().unwrap_or("") {
                "running" => return Ok(()),
                "inmigrate" | "prelaunch" | "restore-vm" | "paused" => {}
                other => {
                    return Err(CompareError::Peer(format!(
                        "QEMU is {other} instead of running: {}",
                        thaw::vm::last_log_line(&self.paths.qemu_log())
                    )))
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(CompareError::Peer(format!(
                    "QEMU exited ({status}): {}",
                    thaw::vm::last_log_line(&self.paths.qemu_log())
                )));
            }
            if Instant::now() > deadline {
                return Err(CompareError::Peer("QEMU did not resume".into()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until the guest agent answers `guest-ping` and the profile's check passes.
    pub async fn wait_ready(&mut self, ready: &ReadySpec) -> Result<(), CompareError> {
        wait_agent_ready(
            Some(&self.qmp),
            &self.paths,
            &self.paths.agent(),
            ready,
            &self.ports,
        )
        .await
    }
}

/// The readiness every method is measured to: the agent answers `guest-ping`, then the
/// profile's own check (a port, Redis PING).
pub async fn wait_agent_ready(
    qmp: Option<&Qmp>,
    paths: &VmPaths,
    agent_socket: &Path,
    ready: &ReadySpec,
    ports: &[PortForward],
) -> Result<(), CompareError> {
    let mut agent = Agent::connect(agent_socket, TIMEOUT).await?;
    agent.ping().await?;
    ready::wait_extra(
        qmp,
        ready,
        ports,
        thaw::ports::DEFAULT_BIND,
        paths,
        std::time::Instant::now() + TIMEOUT,
    )
    .await?;
    Ok(())
}

/// What a peer QEMU is started with besides the spec.
pub struct PeerLaunch<'a> {
    pub spec: &'a MachineSpec,
    pub dir: &'a Path,
    pub disk_overlays: &'a [PathBuf],
    /// A qcow2 image (no device) where `savevm` puts the VM state.
    pub vmstate: Option<&'a Path>,
    /// `-loadvm` the internal snapshot.
    pub loadvm: bool,
    /// `-incoming` URI.
    pub incoming: Option<String>,
}

/// Starts a peer QEMU and connects to its QMP socket.
pub async fn spawn(qemu: &Qemu, l: &PeerLaunch<'_>) -> Result<PeerVm, CompareError> {
    std::fs::create_dir_all(l.dir).map_err(|e| CompareError::io("create", l.dir, e))?;
    let paths = VmPaths {
        dir: l.dir.to_owned(),
    };
    for f in [paths.qmp(), paths.status_qmp(), paths.agent()] {
        let _ = std::fs::remove_file(f);
    }
    if l.spec.clock_port {
        thaw::clockport::make_pipe(&paths.clock_pipe())
            .map_err(|e| CompareError::io("make the clock channel", &paths.clock_pipe(), e))?;
    }
    let ports = l
        .spec
        .net
        .iter()
        .flat_map(|n| n.guest_ports.iter())
        .map(|&guest| {
            Ok(PortForward {
                host: thaw::ports::free().map_err(|e| CompareError::io("pick a port", l.dir, e))?,
                guest,
            })
        })
        .collect::<Result<Vec<_>, CompareError>>()?;
    let argv = argv(qemu, l, &paths, &ports);
    let log = std::fs::File::create(paths.qemu_log())
        .map_err(|e| CompareError::io("create", &paths.qemu_log(), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| CompareError::io("open", &paths.qemu_log(), e))?;
    let console = thaw::console::start_keeper(&paths.console())
        .map_err(|e| CompareError::io("start the console keeper for", &paths.console(), e))?;
    let mut child = Command::new(&qemu.binary)
        .args(&argv)
        .stdin(console)
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| CompareError::io("start", &qemu.binary, e))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let qmp = loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CompareError::Peer(format!(
                "QEMU exited ({status}): {}",
                thaw::vm::last_log_line(&paths.qemu_log())
            )));
        }
        if let Ok(q) = Qmp::connect(&paths.qmp()).await {
            break q;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CompareError::Peer(
                "QEMU did not open its QMP socket".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    Ok(PeerVm {
        child,
        qmp,
        paths,
        ports,
    })
}

/// The spec's own argv with RAM as an anonymous backend (these methods copy RAM into
/// their save file) and the method's additions.
fn argv(qemu: &Qemu, l: &PeerLaunch<'_>, paths: &VmPaths, ports: &[PortForward]) -> Vec<OsString> {
    let unused_ram = paths.dir.join("unused-ram");
    let launch = Launch {
        name: "thaw-bench-peer",
        qemu: qemu.version,
        tcg_tb_size_mib: qemu.tcg_tb_size_mib,
        ram: &unused_ram,
        ram_offset: 0,
        share_ram: true,
        qmp_socket: &paths.qmp(),
        status_socket: &paths.status_qmp(),
        agent_socket: &paths.agent(),
        clock_pipe: &paths.clock_pipe(),
        console_log: &paths.console(),
        vmgenid: Uuid::new_v4(),
        incoming: false,
        disk_overlays: l.disk_overlays,
        ports,
        bind: thaw::ports::DEFAULT_BIND,
        efivars: &paths.dir.join("efivars.fd"),
        vnc: None,
        // The compared mechanisms as they are used: QEMU given the whole kernel.
        boot_stub: None,
    };
    let mut argv = l.spec.argv(&launch);
    for a in argv.iter_mut() {
        if a.to_string_lossy()
            .starts_with("memory-backend-file,id=ram0,")
        {
            *a = format!("memory-backend-ram,id=ram0,size={}M", l.spec.memory_mib).into();
        }
    }
    if let Some(vmstate) = l.vmstate {
        // A drive without a device: the guest does not see it; `savevm` stores the VM
        // state in the first snapshot-capable image.
        let mut d = OsString::from("if=none,id=vmstate,format=qcow2,file=");
        d.push(vmstate.as_os_str());
        argv.push("-drive".into());
        argv.push(d);
    }
    if l.loadvm {
        argv.push("-loadvm".into());
        argv.push(SAVEVM_TAG.into());
    }
    if let Some(uri) = &l.incoming {
        argv.push("-incoming".into());
        argv.push(uri.into());
    }
    argv
}

/// Creates an empty qcow2 image for `savevm`'s VM state.
pub fn create_vmstate(path: &Path, memory_mib: u32) -> Result<(), CompareError> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(format!("{}M", memory_mib.max(64)))
        .output()
        .map_err(|e| CompareError::io("run qemu-img for", path, e))?;
    if !out.status.success() {
        return Err(CompareError::Peer(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Copies the disk overlays of a paused VM (its disks as they were when it was saved),
/// for restores that must each start from that state.
pub fn copy_overlays(from: &[PathBuf], into: &Path) -> Result<Vec<PathBuf>, CompareError> {
    std::fs::create_dir_all(into).map_err(|e| CompareError::io("create", into, e))?;
    from.iter()
        .map(|f| {
            let to = into.join(f.file_name().expect("an overlay file"));
            std::fs::copy(f, &to).map_err(|e| CompareError::io("copy", f, e))?;
            Ok(to)
        })
        .collect()
}

/// `savevm` on the running source; returns its wall time.
pub async fn savevm(vm: &PeerVm) -> Result<f64, CompareError> {
    let t = Instant::now();
    let out = vm
        .qmp
        .execute(
            "human-monitor-command",
            Some(json!({ "command-line": format!("savevm {SAVEVM_TAG}") })),
        )
        .await?;
    let printed = out.as_str().unwrap_or("").trim();
    if !printed.is_empty() {
        return Err(CompareError::Peer(format!("savevm: {printed}")));
    }
    Ok(thaw::ms(t.elapsed()))
}

/// Migrates the running source into `file` through `compressor` and waits for it to
/// complete; the source stays paused ([`resume`] it). Returns the save's wall time (`migrate` →
/// completed) and the file's size.
pub async fn migrate_to_file(
    vm: &PeerVm,
    compressor: Compressor,
    file: &Path,
) -> Result<(f64, u64), CompareError> {
    let _ = std::fs::remove_file(file);
    // Nothing throttles the migration; the default caps it at 128 MiB/s.
    vm.qmp
        .execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": 1u64 << 40 })),
        )
        .await?;
    let t = Instant::now();
    vm.qmp
        .execute("migrate", Some(json!({ "uri": compressor.save(file) })))
        .await?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let info = vm.qmp.execute("query-migrate", None).await?;
        match info["status"].as_str().unwrap_or("") {
            "completed" => break,
            "failed" | "cancelled" => {
                return Err(CompareError::Peer(format!(
                    "migration to {} failed: {}",
                    compressor.program(),
                    info["error-desc"].as_str().unwrap_or("unknown")
                )))
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(CompareError::Peer("migration did not complete".into()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let save_ms = thaw::ms(t.elapsed());
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    Ok((save_ms, size))
}

/// Resumes the source after a save.
pub async fn resume(vm: &PeerVm) -> Result<(), CompareError> {
    thaw::migration::resume_after(&vm.qmp).await?;
    Ok(())
}

/// One restore with `-loadvm` of the (ended) source's images.
pub async fn restore_loadvm(
    qemu: &Qemu,
    spec: &MachineSpec,
    dir: &Path,
    vmstate: &Path,
    overlays: &[PathBuf],
    ready: &ReadySpec,
) -> Result<Sample, CompareError> {
    let t0 = Instant::now();
    let launch = PeerLaunch {
        spec,
        dir,
        disk_overlays: overlays,
        vmstate: Some(vmstate),
        loadvm: true,
        incoming: None,
    };
    let mut vm = spawn(qemu, &launch).await?;
    measure(&mut vm, t0, ready).await
}

/// One restore with `-incoming exec:` from a compressed file; `overlays` are fresh
/// copies of the disks as saved.
pub async fn restore_incoming(
    qemu: &Qemu,
    spec: &MachineSpec,
    dir: &Path,
    compressor: Compressor,
    file: &Path,
    overlays: &[PathBuf],
    ready: &ReadySpec,
) -> Result<Sample, CompareError> {
    let t0 = Instant::now();
    let launch = PeerLaunch {
        spec,
        dir,
        disk_overlays: overlays,
        vmstate: None,
        loadvm: false,
        incoming: Some(compressor.load(file)),
    };
    let mut vm = spawn(qemu, &launch).await?;
    measure(&mut vm, t0, ready).await
}

async fn measure(vm: &mut PeerVm, t0: Instant, ready: &ReadySpec) -> Result<Sample, CompareError> {
    vm.wait_running().await?;
    let running = thaw::ms(t0.elapsed());
    vm.wait_ready(ready).await?;
    let ready_ms = thaw::ms(t0.elapsed());
    Ok(Sample {
        running_ms: Some(running),
        ready_ms,
    })
}

/// savevm, exec:gzip and exec:zstd on one source VM (see the module's doc); a method
/// that fails is reported as failed, with why.
pub async fn methods(
    qemu: &Qemu,
    runs: u32,
    ready: &ReadySpec,
    spec: &MachineSpec,
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Vec<MethodReport> {
    let mem = spec.memory_mib;
    let labels = [
        ("exec-gzip", "migrate to gzip, -incoming exec"),
        ("exec-zstd", "migrate to zstd, -incoming exec"),
        ("savevm", "QEMU savevm / -loadvm (qcow2)"),
    ];
    match methods_in(qemu, runs, ready, spec, dir, progress).await {
        Ok(v) => v,
        Err(e) => labels
            .iter()
            .map(|(id, label)| MethodReport::failed(id, label, mem, &e))
            .collect(),
    }
}

async fn methods_in(
    qemu: &Qemu,
    runs: u32,
    ready: &ReadySpec,
    spec: &MachineSpec,
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<MethodReport>, CompareError> {
    let mem = spec.memory_mib;
    let src_dir = dir.join("source");
    std::fs::create_dir_all(&src_dir).map_err(|e| CompareError::io("create", &src_dir, e))?;
    let mut overlays = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        let o = src_dir.join(format!("disk{i}.qcow2"));
        thaw::disk::create_overlay(&d.base, d.format, &o)?;
        overlays.push(o);
    }
    let vmstate = src_dir.join("vmstate.qcow2");
    create_vmstate(&vmstate, mem)?;
    progress(&format!("{mem} MiB: peers: booting the source VM"));
    let mut source = spawn(
        qemu,
        &PeerLaunch {
            spec,
            dir: &src_dir,
            disk_overlays: &overlays,
            vmstate: Some(&vmstate),
            loadvm: false,
            incoming: None,
        },
    )
    .await?;
    source.wait_ready(ready).await?;
    let mut out = Vec::new();
    for (c, id, label) in [
        (
            Compressor::Gzip,
            "exec-gzip",
            "migrate to gzip, -incoming exec",
        ),
        (
            Compressor::Zstd,
            "exec-zstd",
            "migrate to zstd, -incoming exec",
        ),
    ] {
        let file = dir.join(format!("state.{}", c.program()));
        let saved = dir.join(format!("saved-{}", c.program()));
        let mut saves = Vec::new();
        let mut bytes = 0;
        for i in 0..runs {
            progress(&format!("{mem} MiB: {label}: save {}/{}", i + 1, runs));
            let (ms, b) = migrate_to_file(&source, c, &file).await?;
            // The disks as they were at the save, for every restore of it.
            copy_overlays(&overlays, &saved)?;
            resume(&source).await?;
            saves.push(ms);
            bytes = b;
        }
        let saved_overlays: Vec<PathBuf> = overlays
            .iter()
            .map(|o| saved.join(o.file_name().expect("a file")))
            .collect();
        let mut samples = Vec::new();
        for i in 0..runs {
            progress(&format!("{mem} MiB: {label}: restore {}/{}", i + 1, runs));
            let run_dir = dir.join(format!("{id}-{i}"));
            let fresh = copy_overlays(&saved_overlays, &run_dir.join("disks"))?;
            samples.push(restore_incoming(qemu, spec, &run_dir, c, &file, &fresh, ready).await?);
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        let _ = std::fs::remove_file(&file);
        let mut m = MethodReport::new(id, label, mem).with_samples(&saves, &samples);
        m.save_bytes = Some(bytes);
        out.push(m);
    }
    let mut saves = Vec::new();
    for i in 0..runs {
        progress(&format!("{mem} MiB: savevm: save {}/{}", i + 1, runs));
        saves.push(savevm(&source).await?);
    }
    source.quit().await;
    let bytes = std::fs::metadata(&vmstate).map(|m| m.len()).unwrap_or(0);
    let mut samples = Vec::new();
    for i in 0..runs {
        progress(&format!("{mem} MiB: -loadvm: restore {}/{}", i + 1, runs));
        let run_dir = dir.join(format!("loadvm-{i}"));
        // -loadvm reverts the images to the snapshot: every run starts from it.
        samples.push(restore_loadvm(qemu, spec, &run_dir, &vmstate, &overlays, ready).await?);
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    let mut m = MethodReport::new("savevm", "QEMU savevm / -loadvm (qcow2)", mem)
        .with_samples(&saves, &samples);
    m.save_bytes = Some(bytes);
    out.push(m);
    Ok(out)
}

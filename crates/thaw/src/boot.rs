//! Booting a VM: QEMU with the guest's RAM in a file it maps *shared* (that file is
//! what a later snapshot keeps), disks on fresh qcow2 overlays, and the ports forwarded.
//! `boot` returns once the guest agent (and any extra readiness) answers; on failure
//! nothing is left running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::agent::{Agent, AgentError};
use crate::disk::{self, DiskError};
use crate::guestref;
use crate::home::{Home, VmName};
use crate::ms;
use crate::qemu::Qemu;
use crate::ready::{self, ReadyError, ReadySpec};
use crate::spec::{Launch, MachineSpec, PortForward, SpecError};
use crate::vm::{self, Origin, VmError, VmPaths, VmState};

/// What `thaw boot` asks for.
#[derive(Debug, Clone)]
pub struct BootRequest {
    pub name: VmName,
    pub spec: MachineSpec,
    /// Port forwards; a host port of 0 means "pick a free one". Needs `spec.net`.
    pub forwards: Vec<PortForward>,
    /// What must answer besides the guest agent.
    pub ready: ReadySpec,
    /// How long the guest may take to become ready.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootReport {
    pub name: VmName,
    pub pid: u32,
    pub boot_ms: f64,
    pub ports: Vec<PortForward>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("the guest did not become ready")]
    Agent(#[source] AgentError),
    #[error("QEMU exited before the guest was ready: {0}")]
    Exited(String),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Ready(#[from] ReadyError),
    #[error("host port {0} is already in use")]
    PortInUse(u16),
    #[error("port forwards need a network (drop --no-net)")]
    NoNet,
}

/// Boots a VM with its RAM in a shared file and returns once its guest agent answers.
/// On any failure, nothing is left running and the VM's directory is removed.
pub async fn boot(home: &Home, qemu: &Qemu, req: &BootRequest) -> Result<BootReport, BootError> {
    req.spec.validate()?;
    if !req.forwards.is_empty() && req.spec.net.is_none() {
        return Err(BootError::NoNet);
    }
    for f in &req.forwards {
        if f.host != 0 && !ready::port_is_free(f.host) {
            return Err(BootError::PortInUse(f.host));
        }
    }
    let guest_ports: Vec<u16> = req.forwards.iter().map(|f| f.guest).collect();
    req.ready.validate(&guest_ports)?;
    let t0 = Instant::now();
    let paths = vm::create_dir(home, &req.name)?;
    let result = boot_in(home, qemu, req, &paths, t0).await;
    if result.is_err() {
        vm::discard(home, &req.name).await;
    }
    result
}

async fn boot_in(
    home: &Home,
    qemu: &Qemu,
    req: &BootRequest,
    paths: &VmPaths,
    t0: Instant,
) -> Result<BootReport, BootError> {
    let ram = paths.ram();
    let vmgenid = Uuid::new_v4();
    let mut spec = req.spec.clone();
    if let Some(net) = &mut spec.net {
        net.guest_ports = req.forwards.iter().map(|f| f.guest).collect();
    }
    let ports = req
        .forwards
        .iter()
        .map(|f| {
            let host = match f.host {
                0 => ready::free_port().map_err(|e| vm_io("pick a port for", &paths.dir, e))?,
                h => h,
            };
            Ok(PortForward {
                host,
                guest: f.guest,
            })
        })
        .collect::<Result<Vec<_>, VmError>>()?;
    let overlays = create_overlays(&spec, paths)?;
    let launch = Launch {
        name: req.name.as_str(),
        qemu: qemu.version,
        ram: &ram,
        ram_offset: 0,
        share_ram: true,
        qmp_socket: &paths.qmp(),
        agent_socket: &paths.agent(),
        console_log: &paths.console(),
        vmgenid,
        incoming: false,
        disk_overlays: &overlays,
        ports: &ports,
    };
    let record = |pid| VmState {
        name: req.name.clone(),
        pid,
        spec: spec.clone(),
        qemu_version: qemu.version,
        vmgenid,
        ram: ram.clone(),
        ram_shared: true,
        origin: Origin::Booted,
        created_unix_ms: vm::now_ms(),
        disk_overlays: overlays.clone(),
        ports: ports.clone(),
        lineage: None,
    };
    let mut spawned = vm::spawn(qemu, &spec, &launch, paths, false, |pid| {
        record(pid).save(home)
    })
    .await?;
    // QEMU serves one QMP client at a time: let others (ls, stop) in while the guest boots.
    drop(spawned.qmp);
    let pid = spawned.child.id();
    wait_ready(&mut spawned.child, paths, req.timeout).await?;
    ready::wait_extra(None, &req.ready, &ports, paths, t0 + req.timeout).await?;
    Ok(BootReport {
        name: req.name.clone(),
        pid,
        boot_ms: ms(t0.elapsed()),
        ports,
    })
}

fn vm_io(step: &'static str, path: &std::path::Path, source: std::io::Error) -> VmError {
    VmError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

/// Creates layer 0 of each disk: a qcow2 overlay on its base image.
/// Also links the guest's files into the VM's `guest/` directory (see `guestref`).
fn create_overlays(spec: &MachineSpec, paths: &VmPaths) -> Result<Vec<PathBuf>, BootError> {
    guestref::link_spec(&paths.dir, spec)
        .map_err(|e| vm_io("link the guest files into", &paths.dir, e))?;
    if spec.disks.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(paths.disks()).map_err(|e| vm_io("create", &paths.disks(), e))?;
    let mut overlays = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        let overlay = paths.disk_layer(i, 0);
        // Backed through the link, so the layer names no path of this machine.
        disk::create_overlay_in(
            &paths.disks(),
            &guestref::base_backing(i),
            d.format,
            &overlay,
        )?;
        overlays.push(overlay);
    }
    Ok(overlays)
}

/// Waits for the guest agent while watching that QEMU stays alive.
async fn wait_ready(
    child: &mut std::process::Child,
    paths: &VmPaths,
    timeout: Duration,
) -> Result<Agent, BootError> {
    let sock = paths.agent();
    let agent = Agent::connect(&sock, timeout);
    tokio::pin!(agent);
    loop {
        tokio::select! {
            r = &mut agent => return r.map_err(BootError::Agent),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if let Ok(Some(_)) = child.try_wait() {
                    let mut why = vm::last_log_line(&paths.qemu_log());
                    if why == "no output" {
                        why = format!("the guest stopped (console: {})", vm::last_log_line(&paths.console()));
                    }
                    return Err(BootError::Exited(why));
                }
            }
        }
    }
}

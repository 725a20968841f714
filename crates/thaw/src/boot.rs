//! Booting a VM: QEMU with the guest's RAM in a file it maps *shared* (that file is
//! what a later snapshot keeps), disks on fresh qcow2 overlays, and the ports forwarded.
//! `boot` returns once the guest agent (and any extra readiness) answers; on failure
//! nothing is left running, and the serial console is kept in `$THAW_HOME/logs/` for
//! the error to point at. An interrupted boot ([`boot_cancellable`]) is a failed one:
//! the half-booted VM is stopped and removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::agent::{Agent, AgentError};
use crate::cancel::{CancellationToken, Interrupted};
use crate::disk::{self, DiskError};
use crate::display::{self, DisplayError, VncPorts, VncRequest};
use crate::firmware::{self, FirmwareError};
use crate::fsutil::Context;
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
    /// The display's ports and password (with `spec.display`).
    pub vnc: VncRequest,
    /// The host address the forwards and the display listen on.
    pub bind: std::net::Ipv4Addr,
    /// The VM's labels and time to live.
    pub lifetime: crate::lifetime::Lifetime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootReport {
    pub name: VmName,
    pub pid: u32,
    pub boot_ms: f64,
    pub ports: Vec<PortForward>,
    /// The host address the forwards and the display listen on.
    #[serde(default = "crate::ports::default_bind")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "127.0.0.1"))]
    pub bind: std::net::Ipv4Addr,
    /// Where the display listens (on `bind`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc: Option<VncPorts>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The agent's error is in the message, not a source: the console note comes last.
    #[error("the guest did not become ready ({agent}); {console}")]
    Agent {
        console: ConsoleNote,
        agent: AgentError,
    },
    #[error("QEMU exited before the guest was ready: {why}; {console}")]
    Exited { why: String, console: ConsoleNote },
    #[error(transparent)]
    Display(#[from] DisplayError),
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    #[error("could not set the VNC password")]
    Password(#[source] thaw_qmp::QmpError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Ready(#[from] ReadyError),
    #[error("host port {0} is already in use")]
    PortInUse(u16),
    #[error(transparent)]
    Bind(#[from] crate::ports::BindError),
    #[error("port forwards need a network (drop --no-net)")]
    NoNet,
    #[error("interrupted")]
    Interrupted(#[from] Interrupted),
}

/// Boots a VM with its RAM in a shared file and returns once its guest agent answers.
/// On any failure, nothing is left running and the VM's directory is removed.
pub async fn boot(home: &Home, qemu: &Qemu, req: &BootRequest) -> Result<BootReport, BootError> {
    boot_cancellable(home, qemu, req, &CancellationToken::new()).await
}

/// [`boot`], rolled back if `cancel` fires before the guest is ready. Any moment is
/// safe: the VM's record is written the moment QEMU starts, and the failure path ends
/// what it names.
pub async fn boot_cancellable(
    home: &Home,
    qemu: &Qemu,
    req: &BootRequest,
    cancel: &CancellationToken,
) -> Result<BootReport, BootError> {
    req.spec.validate()?;
    crate::ports::check_bind(req.bind)?;
    let vnc = display::ports_for_boot(req.spec.display.as_ref(), &req.vnc, req.bind)?;
    if !req.forwards.is_empty() && req.spec.net.is_none() {
        return Err(BootError::NoNet);
    }
    for f in &req.forwards {
        if f.host != 0 && !crate::ports::is_free_on(req.bind, f.host) {
            return Err(BootError::PortInUse(f.host));
        }
    }
    let guest_ports: Vec<u16> = req.forwards.iter().map(|f| f.guest).collect();
    req.ready.validate(&guest_ports)?;
    let t0 = Instant::now();
    let paths = vm::create_dir(home, &req.name)?;
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Interrupted::Boot(req.name.clone()).into()),
        r = boot_in(home, qemu, req, &paths, vnc, t0) => r,
    };
    if result.is_err() {
        // The console says why the guest did not come up; keep it past the VM.
        let kept = kept_console(home, &req.name);
        let _ = std::fs::create_dir_all(home.root().join("logs"));
        let _ = std::fs::remove_file(&kept);
        let _ = std::fs::write(&kept, crate::console::read(&paths.console()));
        vm::discard(home, &req.name).await;
    }
    result
}

/// Where the serial console of a VM that failed to boot is kept (the last failure of
/// each name).
pub fn kept_console(home: &Home, name: &VmName) -> PathBuf {
    home.root().join("logs").join(format!("{name}.console.log"))
}

/// Where a failed boot's serial console is kept, for the error to say.
#[derive(Debug, Clone)]
pub struct ConsoleNote {
    pub log: PathBuf,
    /// Nothing was printed on it.
    pub empty: bool,
    /// The firmware was to start the disk's bootloader (no `-kernel`).
    pub firmware_boot: bool,
}

impl ConsoleNote {
    fn new(log: PathBuf, console: &Path, firmware_boot: bool) -> ConsoleNote {
        let empty = std::fs::metadata(console).map_or(true, |m| m.len() == 0);
        ConsoleNote {
            log,
            empty,
            firmware_boot,
        }
    }
}

impl std::fmt::Display for ConsoleNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let log = self.log.display();
        match (self.empty, self.firmware_boot) {
            (true, true) => write!(
                f,
                "its serial console, kept in {log}, is empty: does the first disk have a bootloader?"
            ),
            (true, false) => write!(f, "its serial console, kept in {log}, is empty"),
            (false, _) => write!(f, "its serial console is kept in {log}"),
        }
    }
}

async fn boot_in(
    home: &Home,
    qemu: &Qemu,
    req: &BootRequest,
    paths: &VmPaths,
    vnc: Option<VncPorts>,
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
                0 => crate::ports::free_on(req.bind)
                    .at("pick a port for", &paths.dir)
                    .map_err(VmError::from)?,
                h => h,
            };
            Ok(PortForward {
                host,
                guest: f.guest,
            })
        })
        .collect::<Result<Vec<_>, VmError>>()?;
    let overlays = create_overlays(&spec, paths)?;
    firmware::vars_for_boot(&spec.firmware, &paths.dir)?;
    let efivars = firmware::vars_file(&paths.dir);
    let launch = Launch {
        name: req.name.as_str(),
        qemu: qemu.version,
        tcg_tb_size_mib: qemu.tcg_tb_size_mib,
        ram: &ram,
        ram_offset: 0,
        share_ram: true,
        qmp_socket: &paths.qmp(),
        status_socket: &paths.status_qmp(),
        agent_socket: &paths.agent(),
        clock_pipe: &paths.clock_pipe(),
        console_log: &paths.console(),
        vmgenid,
        incoming: false,
        disk_overlays: &overlays,
        ports: &ports,
        bind: req.bind,
        efivars: &efivars,
        vnc,
        boot_stub: None,
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
        bind: req.bind,
        lineage: None,
        vnc,
        labels: req.lifetime.labels.clone(),
        expires_unix_ms: req.lifetime.ttl.map(crate::lifetime::expiry_from_now),
    };
    let mut spawned = vm::spawn(qemu, &spec, &launch, paths, false, |pid| {
        record(pid).save(home)
    })
    .await?;
    if let Some(password) = &req.vnc.password {
        display::set_password(&spawned.qmp, password)
            .await
            .map_err(BootError::Password)?;
    }
    // QEMU serves one QMP client at a time: let others (ls, stop) in while the guest boots.
    drop(spawned.qmp);
    let pid = spawned.child.id();
    let kept = kept_console(home, &req.name);
    let firmware_boot = spec.kernel.is_none();
    wait_ready(&mut spawned.child, paths, req.timeout)
        .await
        .map_err(|e| {
            let console = ConsoleNote::new(kept, &paths.console(), firmware_boot);
            match e {
                Waited::Agent(agent) => BootError::Agent { console, agent },
                Waited::Exited(why) => BootError::Exited { why, console },
            }
        })?;
    ready::wait_extra(None, &req.ready, &ports, req.bind, paths, t0 + req.timeout).await?;
    Ok(BootReport {
        name: req.name.clone(),
        pid,
        boot_ms: ms(t0.elapsed()),
        ports,
        bind: req.bind,
        vnc,
    })
}

/// Creates layer 0 of each disk: a qcow2 overlay on its base image.
/// Also links the guest's files into the VM's `guest/` directory (see `guestref`).
fn create_overlays(spec: &MachineSpec, paths: &VmPaths) -> Result<Vec<PathBuf>, BootError> {
    guestref::link_spec(&paths.dir, spec)
        .at("link the guest files into", &paths.dir)
        .map_err(VmError::from)?;
    if spec.disks.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(paths.disks())
        .at("create", &paths.disks())
        .map_err(VmError::from)?;
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

/// Why the guest did not become ready.
enum Waited {
    Agent(AgentError),
    Exited(String),
}

/// Waits for the guest agent while watching that QEMU stays alive.
async fn wait_ready(
    child: &mut std::process::Child,
    paths: &VmPaths,
    timeout: Duration,
) -> Result<Agent, Waited> {
    let sock = paths.agent();
    let agent = Agent::connect(&sock, timeout);
    tokio::pin!(agent);
    loop {
        tokio::select! {
            r = &mut agent => return r.map_err(Waited::Agent),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if let Ok(Some(_)) = child.try_wait() {
                    let mut why = vm::last_log_line(&paths.qemu_log());
                    if why == "no output" {
                        why = format!("the guest stopped (console: {})", vm::last_log_line(&paths.console()));
                    }
                    return Err(Waited::Exited(why));
                }
            }
        }
    }
}

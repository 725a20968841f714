//! The operations the CLI (and later the daemon) offer: boot, exec, snapshot, restore,
//! list, stop, resume, and snapshot housekeeping. Each takes a typed request and
//! returns a typed report or an error named after the operation.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thaw_qmp::Qmp;
use uuid::Uuid;

use crate::accel::Accel;
use crate::agent::{Agent, AgentError, ExecOutput};
use crate::clone;
use crate::disk::{self, DiskError};
use crate::fsutil::{self, CopyMethod};
use crate::home::{Home, SnapshotTag, VmName};
use crate::migration::{self, MigrationError};
use crate::qemu::Qemu;
use crate::ready::{self, ReadyError, ReadySpec};
use crate::snapshot::{self, FileEntry, Manifest, Snapshot, SnapshotCheckError};
use crate::spec::{Launch, MachineSpec, PortForward, SpecError};
use crate::vm::{self, Origin, VmError, VmPaths, VmState};

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

// ---------------------------------------------------------------------------- boot

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
        discard(home, &req.name).await;
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
    };
    let mut spawned = vm::spawn(qemu, &spec, &launch, paths, false, |pid| {
        record(pid).save(home)
    })
    .await?;
    // QEMU serves one QMP client at a time: let others (ls, stop) in while the guest boots.
    drop(spawned.qmp);
    let pid = spawned.child.id();
    wait_ready(&mut spawned.child, paths, req.timeout).await?;
    wait_extra_ready(None, &req.ready, &ports, paths, t0 + req.timeout).await?;
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

/// Creates the VM's qcow2 overlays on its base images.
fn create_overlays(spec: &MachineSpec, paths: &VmPaths) -> Result<Vec<PathBuf>, BootError> {
    if spec.disks.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(paths.disks()).map_err(|e| vm_io("create", &paths.disks(), e))?;
    let mut overlays = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        let overlay = paths.disk_overlay(i);
        disk::create_overlay(&d.base, d.format, &overlay)?;
        overlays.push(overlay);
    }
    Ok(overlays)
}

/// Waits for the extra readiness conditions (a port, a console line); `holds` is the
/// caller's QMP connection, if it has one open (see [`ready::wait_port`]).
pub(crate) async fn wait_extra_ready(
    holds: Option<&thaw_qmp::Qmp>,
    ready: &ReadySpec,
    ports: &[PortForward],
    paths: &VmPaths,
    deadline: Instant,
) -> Result<(), ReadyError> {
    let left = || deadline.saturating_duration_since(Instant::now());
    if let Some(guest) = ready.port {
        let host = ports
            .iter()
            .find(|f| f.guest == guest)
            .ok_or(ReadyError::NotForwarded(guest))?
            .host;
        ready::wait_port(holds, &paths.qmp(), host, guest, ready.redis_ping, left()).await?;
    }
    if let Some(regex) = &ready.serial {
        ready::wait_serial(&paths.console(), regex, left()).await?;
    }
    Ok(())
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

/// Kills whatever runs for `name` and removes its directory.
async fn discard(home: &Home, name: &VmName) {
    if let Ok(state) = VmState::load(home, name) {
        vm::terminate(&state, home).await;
        vm::reap(state.pid);
    }
    let _ = std::fs::remove_dir_all(home.vm_dir(name));
}

// ---------------------------------------------------------------------------- exec

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Loads a VM's record and checks its QEMU is alive.
fn running_vm(home: &Home, name: &VmName) -> Result<VmState, VmError> {
    let state = VmState::load(home, name)?;
    if !state.is_alive() {
        return Err(VmError::NotRunning(name.clone()));
    }
    Ok(state)
}

/// Runs a command in the guest through its agent.
pub async fn exec(
    home: &Home,
    name: &VmName,
    argv: &[String],
    timeout: Duration,
) -> Result<ExecOutput, ExecError> {
    let state = running_vm(home, name)?;
    let mut agent = Agent::connect(&state.paths(home).agent(), Duration::from_secs(10)).await?;
    Ok(agent.exec(argv, timeout).await?)
}

// ---------------------------------------------------------------------------- snapshot

#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    pub name: VmName,
    pub tag: SnapshotTag,
    /// End the VM and move its RAM file into the snapshot instead of copying it.
    pub stop: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotReport {
    pub tag: SnapshotTag,
    /// vCPUs paused → running again (or → state saved, with `stop`).
    pub pause_ms: f64,
    pub state_bytes: u64,
    pub ram_bytes: u64,
    /// How the RAM image got into the snapshot: "moved", "reflink" or "sparse-copy".
    pub ram_copy: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("a snapshot tagged {0} already exists")]
    TagExists(SnapshotTag),
    #[error("VM {0} is a restored clone; snapshots of clones are not supported yet — snapshot the VM it was restored from")]
    CloneNotSupported(VmName),
    #[error("could not {step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not pause or resume the VM")]
    Qmp(#[from] thaw_qmp::QmpError),
    #[error("saving the device state failed")]
    Migration(#[from] MigrationError),
}

fn disk_err(path: &std::path::Path, e: DiskError) -> SnapshotError {
    SnapshotError::Io {
        step: "prepare the disk layer",
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn io_err(
    step: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io { step, path, source }
}

/// A test hook: `THAW_TEST_HANG_AT=<step>` makes thaw stop forever at that step of a
/// snapshot, so tests can kill it at a known point. Never set in normal use.
fn test_hang(step: &str) {
    if std::env::var("THAW_TEST_HANG_AT").as_deref() == Ok(step) {
        eprintln!("thaw: test hook: hanging at {step}");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Checkpoints a running VM into a new snapshot, written atomically.
pub async fn snapshot(home: &Home, req: &SnapshotRequest) -> Result<SnapshotReport, SnapshotError> {
    let state = running_vm(home, &req.name)?;
    if !state.ram_shared {
        return Err(SnapshotError::CloneNotSupported(req.name.clone()));
    }
    home.ensure().map_err(io_err("create", home.root()))?;
    let dest = home.snapshot_dir(&req.tag);
    if dest.exists() {
        return Err(SnapshotError::TagExists(req.tag.clone()));
    }
    snapshot::remove_stale_temp_dirs(home);
    let tmp = snapshot::temp_dir(home, &req.tag);
    std::fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
    let qmp = Qmp::connect(&state.paths(home).qmp())
        .await
        .map_err(VmError::from)?;
    let result = snapshot_into(home, req, &state, &qmp, &tmp, &dest).await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        if !req.stop {
            // Leave the VM as we found it: running.
            let _ = qmp.execute("cont", None).await;
        }
    }
    result
}

async fn snapshot_into(
    home: &Home,
    req: &SnapshotRequest,
    state: &VmState,
    qmp: &Qmp,
    tmp: &std::path::Path,
    dest: &std::path::Path,
) -> Result<SnapshotReport, SnapshotError> {
    let paths = state.paths(home);
    let state_path = tmp.join(snapshot::STATE_FILE);
    let ram_path = tmp.join(snapshot::RAM_FILE);
    migration::set_capabilities(qmp).await?;

    let t0 = Instant::now();
    qmp.execute("stop", None).await?;
    test_hang("paused");
    migration::save(qmp, &state_path).await?;
    test_hang("state-saved");
    if !state.disk_overlays.is_empty() {
        let dir = tmp.join("disks");
        std::fs::create_dir(&dir).map_err(io_err("create", &dir))?;
    }
    let ram_copy = if req.stop {
        let pause = t0.elapsed();
        let _ = qmp.execute("quit", None).await;
        vm::wait_gone(
            state.pid,
            state.vmgenid.to_string().as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        vm::reap(state.pid);
        std::fs::rename(&state.ram, &ram_path)
            .map_err(io_err("move the RAM file to", &ram_path))?;
        for (i, overlay) in state.disk_overlays.iter().enumerate() {
            let layer = tmp.join(snapshot::layer_file(i));
            std::fs::rename(overlay, &layer).map_err(io_err("move the disk layer to", &layer))?;
        }
        ("moved", pause)
    } else {
        let method = fsutil::copy_sparse(&state.ram, &ram_path)
            .map_err(io_err("copy the RAM file to", &ram_path))?;
        // The migration flushed and deactivated the disks, so the overlays are
        // consistent until `cont`; their copies become the snapshot's layers.
        for (i, overlay) in state.disk_overlays.iter().enumerate() {
            let layer = tmp.join(snapshot::layer_file(i));
            fsutil::copy_sparse(overlay, &layer)
                .map_err(io_err("copy the disk layer to", &layer))?;
        }
        qmp.execute("cont", None).await?;
        let how = match method {
            CopyMethod::Reflink => "reflink",
            CopyMethod::Sparse => "sparse-copy",
        };
        (how, t0.elapsed())
    };
    let (ram_copy, pause) = ram_copy;
    test_hang("ram-copied");

    // Outside the pause: hash, write the manifest, make it all durable, publish.
    snapshot::sync_file(&state_path).map_err(io_err("sync", &state_path))?;
    let entry = |path: &std::path::Path| -> Result<FileEntry, SnapshotError> {
        let size = std::fs::metadata(path).map_err(io_err("read", path))?.len();
        let blake3 = fsutil::hash_file(path).map_err(io_err("hash", path))?;
        Ok(FileEntry { size, blake3 })
    };
    let state_entry = entry(&state_path)?;
    let ram_entry = entry(&ram_path)?;
    let mut files: std::collections::BTreeMap<String, FileEntry> = [
        (snapshot::STATE_FILE.to_owned(), state_entry.clone()),
        (snapshot::RAM_FILE.to_owned(), ram_entry.clone()),
    ]
    .into();
    let mut disks = Vec::new();
    for (i, d) in state.spec.disks.iter().enumerate() {
        let layer = tmp.join(snapshot::layer_file(i));
        let template = tmp.join(snapshot::template_file(i));
        let (_, virtual_size) = disk::info(&layer).map_err(|e| disk_err(&layer, e))?;
        disk::create_overlay_unchecked(
            &dest.join(snapshot::layer_file(i)),
            virtual_size,
            &template,
        )
        .map_err(|e| disk_err(&template, e))?;
        for f in [&layer, &template] {
            snapshot::sync_file(f).map_err(io_err("sync", f))?;
        }
        files.insert(snapshot::layer_file(i), entry(&layer)?);
        files.insert(snapshot::template_file(i), entry(&template)?);
        let (size, mtime_ns) = disk::stat(&d.base).map_err(io_err("read", &d.base))?;
        let blake3 = fsutil::hash_file(&d.base).map_err(io_err("hash", &d.base))?;
        disks.push(snapshot::DiskLayer {
            base: disk::BaseIdentity {
                path: d.base.clone(),
                size,
                mtime_ns,
                blake3,
            },
            virtual_size,
        });
    }
    if !disks.is_empty() {
        fsutil::fsync_dir(&tmp.join("disks")).map_err(io_err("sync", tmp))?;
    }
    let manifest = Manifest {
        format: snapshot::FORMAT_NAME.into(),
        version: snapshot::FORMAT_VERSION,
        tag: req.tag.clone(),
        created_unix_ms: vm::now_ms(),
        qemu_version: state.qemu_version,
        accel: state.spec.accel,
        spec: state.spec.clone(),
        vmgenid: state.vmgenid,
        source_vm: state.name.clone(),
        files,
        disks,
    };
    let mpath = tmp.join(snapshot::MANIFEST_FILE);
    fsutil::write_atomic(
        &mpath,
        &serde_json::to_vec_pretty(&manifest).expect("serializes"),
    )
    .map_err(io_err("write", &mpath))?;
    test_hang("manifest-written");
    std::fs::rename(tmp, dest).map_err(io_err("publish the snapshot as", dest))?;
    fsutil::fsync_dir(&home.snapshots_dir()).map_err(io_err("sync", &home.snapshots_dir()))?;
    test_hang("published");
    if req.stop {
        let _ = std::fs::remove_dir_all(&paths.dir);
    }
    tracing::info!(tag = %req.tag, vm = %req.name, "snapshot written");
    Ok(SnapshotReport {
        tag: req.tag.clone(),
        pause_ms: ms(pause),
        state_bytes: state_entry.size,
        ram_bytes: ram_entry.size,
        ram_copy: ram_copy.into(),
    })
}

// ---------------------------------------------------------------------------- restore

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub tag: SnapshotTag,
    pub count: u32,
    /// The clone's name; with `count > 1`, clones are named `<name>-1`, `<name>-2`, ...
    pub name: Option<VmName>,
    /// The accelerator to restore under (default: what this host can use).
    pub accel: Option<Accel>,
    /// Hash the whole RAM image before restoring.
    pub verify: bool,
    /// How long each clone's guest agent may take to answer.
    pub timeout: Duration,
    /// Give clones the snapshot's VM Generation ID instead of a fresh one. Only for
    /// showing what the fresh id protects against: clones then share RNG state.
    pub keep_vmgenid: bool,
    /// What must answer besides the guest agent.
    pub ready: ReadySpec,
    /// A shell command run in each clone (through the agent) before it is reported
    /// ready; a non-zero exit fails the restore.
    pub exec_after: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreReport {
    pub name: VmName,
    pub pid: u32,
    /// Request → vCPUs running.
    pub restore_ms: f64,
    /// Request → guest agent answers and clock set (and any extra readiness).
    pub ready_ms: f64,
    pub ports: Vec<PortForward>,
    /// Where the time went.
    pub breakdown: clone::Breakdown,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Check(#[from] SnapshotCheckError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("count must be at least 1")]
    Count,
    #[error("loading the device state failed")]
    Migration(#[from] MigrationError),
    #[error("could not resume the clone")]
    Qmp(#[from] thaw_qmp::QmpError),
    #[error("the clone's guest agent did not answer")]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Ready(#[from] ReadyError),
    #[error("--exec-after exited with {code}: {stderr}")]
    ExecAfter { code: i32, stderr: String },
    #[error("could not prepare the clone's disks")]
    Disk(#[from] Box<BootError>),
    #[error("restoring clone {name} failed")]
    Clone {
        name: VmName,
        #[source]
        source: Box<RestoreError>,
    },
}

/// Starts `count` clones of a snapshot. Everything is checked before QEMU starts; if
/// any clone fails, every clone of this request is stopped and removed.
pub async fn restore(
    home: &Home,
    qemu: &Qemu,
    req: &RestoreRequest,
) -> Result<Vec<RestoreReport>, RestoreError> {
    restore_from(home, qemu, req, None).await
}

/// [`restore`], taking clones from `pool` while it has them ready (the rest spawn).
pub async fn restore_from(
    home: &Home,
    qemu: &Qemu,
    req: &RestoreRequest,
    pool: Option<&std::sync::Arc<crate::pool::Pool>>,
) -> Result<Vec<RestoreReport>, RestoreError> {
    let t0 = Instant::now();
    if req.count == 0 {
        return Err(RestoreError::Count);
    }
    let snap = Snapshot::open(home, &req.tag)?;
    let accel = req.accel.unwrap_or_else(Accel::detect);
    snap.check(qemu.version, accel, req.verify)?;
    let guest_ports = snap
        .manifest
        .spec
        .net
        .as_ref()
        .map(|n| n.guest_ports.clone())
        .unwrap_or_default();
    req.ready.validate(&guest_ports)?;
    let names = claim_names(home, req)?;

    let mut tasks = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let (home, qemu, snap, name, req) = (
            home.clone(),
            qemu.clone(),
            snap.clone(),
            name.clone(),
            req.clone(),
        );
        let pool = pool.cloned();
        tasks.spawn(async move {
            let pooled = match &pool {
                Some(pool) if !req.keep_vmgenid => {
                    pool.take(&req.tag, &name, &req.finish_options(), t0).await
                }
                _ => None,
            };
            let r = match pooled {
                Some(r) => r,
                None => restore_one(&home, &qemu, &snap, &name, &req, t0).await,
            };
            (i, name, r)
        });
    }
    let mut reports = Vec::new();
    let mut first_err = None;
    while let Some(joined) = tasks.join_next().await {
        let (i, name, r) = joined.expect("restore task panicked");
        match r {
            Ok(rep) => reports.push((i, rep)),
            Err(e) => {
                first_err.get_or_insert(RestoreError::Clone {
                    name,
                    source: Box::new(e),
                });
            }
        }
    }
    if let Some(e) = first_err {
        for name in &names {
            discard(home, name).await;
        }
        return Err(e);
    }
    reports.sort_by_key(|(i, _)| *i);
    Ok(reports.into_iter().map(|(_, r)| r).collect())
}

/// Picks and claims (creates the directories of) the clones' names.
fn claim_names(home: &Home, req: &RestoreRequest) -> Result<Vec<VmName>, RestoreError> {
    let mut claimed: Vec<VmName> = Vec::new();
    let release = |claimed: &[VmName]| {
        for n in claimed {
            let _ = std::fs::remove_dir_all(home.vm_dir(n));
        }
    };
    match (&req.name, req.count) {
        (Some(name), 1) => {
            vm::create_dir(home, name)?;
            claimed.push(name.clone());
        }
        (base, count) => {
            let base = base
                .as_ref()
                .map(|n| n.as_str())
                .unwrap_or(req.tag.as_str());
            let explicit = req.name.is_some();
            let mut i = 1u32;
            while claimed.len() < count as usize {
                let name: VmName = match format!("{base}-{i}").parse() {
                    Ok(n) => n,
                    Err(e) => {
                        release(&claimed);
                        return Err(VmError::Io {
                            step: "name a clone",
                            path: home.vms_dir(),
                            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                        }
                        .into());
                    }
                };
                match vm::create_dir(home, &name) {
                    Ok(_) => claimed.push(name),
                    // Explicit names must all be free; derived names skip taken ones.
                    Err(VmError::Exists(n)) if !explicit => {
                        let _ = n;
                    }
                    Err(e) => {
                        release(&claimed);
                        return Err(e.into());
                    }
                }
                i += 1;
            }
        }
    }
    Ok(claimed)
}

async fn restore_one(
    home: &Home,
    qemu: &Qemu,
    snap: &Snapshot,
    name: &VmName,
    req: &RestoreRequest,
    t0: Instant,
) -> Result<RestoreReport, RestoreError> {
    let paths = VmPaths::new(home, name);
    let prepared = clone::prepare(qemu, snap, paths, name.clone(), req.keep_vmgenid, false).await?;
    prepared.finish(&req.finish_options(), t0).await
}

impl RestoreRequest {
    pub fn finish_options(&self) -> clone::FinishOptions {
        clone::FinishOptions {
            timeout: self.timeout,
            ready: self.ready.clone(),
            exec_after: self.exec_after.clone(),
        }
    }
}

// ---------------------------------------------------------------------------- list, stop, resume

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: VmName,
    pub pid: Option<u32>,
    /// "running", "paused", "dead" (QEMU is gone) or "unresponsive" (QMP did not answer).
    pub state: String,
    /// QEMU's own run state when it answered (e.g. "postmigrate").
    pub qemu_status: Option<String>,
    pub origin: Option<Origin>,
    pub memory_mib: Option<u32>,
    pub cpus: Option<u32>,
    pub created_unix_ms: Option<u64>,
    /// Host ports forwarded to guest ports.
    pub ports: Vec<PortForward>,
}

/// Lists every VM with its state as QEMU reports it now.
pub async fn list(home: &Home) -> Vec<VmInfo> {
    let mut out = Vec::new();
    for name in vm::list_names(home) {
        let Ok(state) = VmState::load(home, &name) else {
            out.push(VmInfo {
                name,
                pid: None,
                state: "dead".into(),
                qemu_status: None,
                origin: None,
                memory_mib: None,
                cpus: None,
                created_unix_ms: None,
                ports: Vec::new(),
            });
            continue;
        };
        let (st, qemu_status) = if !state.is_alive() {
            ("dead".to_owned(), None)
        } else {
            match query_status(&state.paths(home).qmp()).await {
                Some(s) => (
                    if s == "running" { "running" } else { "paused" }.to_owned(),
                    Some(s),
                ),
                None => ("unresponsive".to_owned(), None),
            }
        };
        out.push(VmInfo {
            name,
            pid: Some(state.pid),
            state: st,
            qemu_status,
            origin: Some(state.origin.clone()),
            memory_mib: Some(state.spec.memory_mib),
            cpus: Some(state.spec.cpus),
            created_unix_ms: Some(state.created_unix_ms),
            ports: state.ports.clone(),
        });
    }
    out
}

async fn query_status(sock: &std::path::Path) -> Option<String> {
    let q = async {
        let qmp = Qmp::connect(sock).await.ok()?;
        let st = qmp.execute("query-status", None).await.ok()?;
        st["status"].as_str().map(str::to_owned)
    };
    tokio::time::timeout(Duration::from_secs(2), q)
        .await
        .ok()
        .flatten()
}

/// Stops a VM (whatever its state) and removes its directory.
pub async fn stop(home: &Home, name: &VmName) -> Result<(), VmError> {
    let dir = home.vm_dir(name);
    match VmState::load(home, name) {
        Ok(state) => {
            vm::terminate(&state, home).await;
            vm::reap(state.pid);
        }
        Err(VmError::NotFound(n)) => return Err(VmError::NotFound(n)),
        // A directory without a readable record (thaw died while creating it): end any
        // QEMU that runs from it, found by its command line.
        Err(_) => {
            for pid in vm::pids_using(&dir) {
                vm::kill(pid);
                vm::wait_gone(
                    pid,
                    dir.as_os_str().as_encoded_bytes(),
                    Duration::from_secs(5),
                )
                .await;
            }
        }
    }
    std::fs::remove_dir_all(&dir).map_err(|source| VmError::Io {
        step: "remove",
        path: dir.clone(),
        source,
    })
}

/// Resumes a paused VM (e.g. one left paused by an interrupted snapshot).
pub async fn resume(home: &Home, name: &VmName) -> Result<(), VmError> {
    let state = running_vm(home, name)?;
    let qmp = Qmp::connect(&state.paths(home).qmp()).await?;
    qmp.execute("cont", None).await?;
    Ok(())
}

// ---------------------------------------------------------------------------- snapshots

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub tag: SnapshotTag,
    /// Null when the manifest cannot be read; `problem` says why.
    pub created_unix_ms: Option<u64>,
    pub source_vm: Option<VmName>,
    pub memory_mib: Option<u32>,
    pub cpus: Option<u32>,
    pub qemu_version: Option<String>,
    pub accel: Option<Accel>,
    /// Bytes on disk (sparse RAM counted as allocated).
    pub disk_bytes: u64,
    pub problem: Option<String>,
}

pub fn list_snapshots(home: &Home) -> Vec<SnapshotInfo> {
    snapshot::list_tags(home)
        .into_iter()
        .map(|tag| {
            let dir = home.snapshot_dir(&tag);
            let disk_bytes = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| fsutil::allocated_bytes(&e.path()).ok())
                .sum();
            match Snapshot::open(home, &tag) {
                Ok(s) => {
                    let m = s.manifest;
                    SnapshotInfo {
                        tag,
                        created_unix_ms: Some(m.created_unix_ms),
                        source_vm: Some(m.source_vm),
                        memory_mib: Some(m.spec.memory_mib),
                        cpus: Some(m.spec.cpus),
                        qemu_version: Some(m.qemu_version.to_string()),
                        accel: Some(m.accel),
                        disk_bytes,
                        problem: None,
                    }
                }
                Err(e) => SnapshotInfo {
                    tag,
                    created_unix_ms: None,
                    source_vm: None,
                    memory_mib: None,
                    cpus: None,
                    qemu_version: None,
                    accel: None,
                    disk_bytes,
                    problem: Some(e.to_string()),
                },
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum RemoveSnapshotError {
    #[error("no snapshot tagged {0}")]
    UnknownTag(SnapshotTag),
    #[error("could not remove {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Removes a snapshot. Clones running from it keep working: their RAM mapping holds
/// the image's inode until they end.
pub fn remove_snapshot(home: &Home, tag: &SnapshotTag) -> Result<(), RemoveSnapshotError> {
    let dir = home.snapshot_dir(tag);
    if !dir.is_dir() {
        return Err(RemoveSnapshotError::UnknownTag(tag.clone()));
    }
    // Rename first so a crash half-way never leaves a half-removed snapshot visible.
    let doomed = home
        .snapshots_dir()
        .join(format!(".tmp-rm-{tag}-{}", std::process::id()));
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| RemoveSnapshotError::Io { path, source }
    };
    std::fs::rename(&dir, &doomed).map_err(io(&dir))?;
    std::fs::remove_dir_all(&doomed).map_err(io(&doomed))
}

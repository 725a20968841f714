//! A QEMU process: its directory, its persisted record, spawning, liveness, stopping.
//!
//! Every VM has a directory `vms/<name>/` holding `vm.json` (its [`VmState`]), the QMP
//! and agent sockets, the serial console log, QEMU's own log, and for a booted VM its
//! RAM file. The record is written right after QEMU is spawned, so whatever happens to
//! thaw afterwards (a crash, kill -9), `thaw ls` can find the process and `thaw stop`
//! can end it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thaw_qmp::{QemuVersion, Qmp};
use uuid::Uuid;

use crate::fsutil;
use crate::fsutil::{Context, IoError};
use crate::home::{Home, SnapshotTag, VmName};
use crate::qemu::Qemu;
use crate::record::{Record, RecordError};
use crate::spec::{Launch, MachineSpec, PortForward};

/// What is persisted about a VM (`vms/<name>/vm.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmState {
    pub name: VmName,
    pub pid: u32,
    pub spec: MachineSpec,
    pub qemu_version: QemuVersion,
    pub vmgenid: Uuid,
    /// The RAM file QEMU maps: the VM's own (shared) or a snapshot's image (private).
    pub ram: PathBuf,
    pub ram_shared: bool,
    pub origin: Origin,
    pub created_unix_ms: u64,
    /// This VM's top (written) qcow2 layer for each disk of the spec. The layers
    /// below it are in the same directory (see `disk`).
    #[serde(default)]
    pub disk_overlays: Vec<PathBuf>,
    /// Host ports forwarded to guest ports.
    #[serde(default)]
    pub ports: Vec<PortForward>,
    /// The host address the forwards and the display listen on (`--bind`).
    #[serde(default = "crate::ports::default_bind")]
    pub bind: std::net::Ipv4Addr,
    /// The snapshot this VM's state last came from or went into: the parent of the
    /// next snapshot taken of it.
    #[serde(default)]
    pub lineage: Option<crate::home::ParentRef>,
    /// The ports this VM's display listens on, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc: Option<crate::display::VncPorts>,
    /// Labels given at boot or restore (`--label K=V`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: crate::lifetime::Labels,
    /// When the VM's time to live ends (`--ttl`): it is then stopped and removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Origin {
    Booted,
    Restored { snapshot: SnapshotTag },
}

/// The files of one VM directory.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn new(home: &Home, name: &VmName) -> VmPaths {
        VmPaths {
            dir: home.vm_dir(name),
        }
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn agent(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }
    /// A second QMP monitor, for reading the VM's state (`thaw ls`) while a command
    /// holds the first (QEMU serves one client per monitor).
    pub fn status_qmp(&self) -> PathBuf {
        self.dir.join("status.sock")
    }
    /// The clock channel's FIFOs, without their `.in` / `.out` suffix.
    pub fn clock_pipe(&self) -> PathBuf {
        self.dir.join("clock")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    pub fn ram(&self) -> PathBuf {
        self.dir.join("ram")
    }
    pub fn disks(&self) -> PathBuf {
        self.dir.join("disks")
    }
    /// Layer `k` of disk `i` (see `disk`).
    pub fn disk_layer(&self, i: usize, k: u32) -> PathBuf {
        self.disks().join(crate::disk::layer_name(i, k))
    }
}

/// Errors of VM process handling.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no VM named {0}")]
    NotFound(VmName),
    #[error("a VM named {0} already exists")]
    Exists(VmName),
    #[error("VM {0} is not running")]
    NotRunning(VmName),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Record(crate::record::RecordError),
    #[error("the record of VM {name} is unreadable ({path})")]
    BadRecord { name: VmName, path: PathBuf },
    #[error("could not start {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited during startup: {0}")]
    EarlyExit(String),
    #[error("QEMU did not open its QMP socket within {0:?}")]
    QmpTimeout(Duration),
    #[error(transparent)]
    Qmp(#[from] thaw_qmp::QmpError),
}

/// `vms/<name>/vm.json`: version 1 is the unversioned record of before. Not synced
/// (see [`VmState::save_in`]).
impl Record for VmState {
    const KIND: &'static str = "VM record";
    const VERSION: u32 = 1;
    const MAX_BYTES: u64 = 1 << 20;
    const SYNCED: bool = false;
}

/// Claims the directory for a new VM; fails if the name is taken.
pub fn create_dir(home: &Home, name: &VmName) -> Result<VmPaths, VmError> {
    let paths = VmPaths::new(home, name);
    std::fs::create_dir_all(home.vms_dir()).at("create", &home.vms_dir())?;
    match std::fs::create_dir(&paths.dir) {
        Ok(()) => Ok(paths),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(VmError::Exists(name.clone()))
        }
        Err(e) => Err(IoError::new("create", &paths.dir, e).into()),
    }
}

/// Claims `name` by moving the directory `from` (a pooled clone's) to it, in one
/// step: `renameat2(RENAME_NOREPLACE)` fails when the name is taken, so two claims
/// of one name cannot both win and no empty directory is made first (a `mkdir` and
/// a rename over it cost about half a millisecond more on ext4). On a filesystem
/// without that flag, the name is claimed with [`create_dir`] and `from` renamed
/// over the empty directory. A name the caller `claimed` already (its empty
/// directory made by [`create_dir`]) is moved over.
pub fn move_dir_to(
    home: &Home,
    from: &Path,
    name: &VmName,
    claimed: bool,
) -> Result<VmPaths, VmError> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let paths = VmPaths::new(home, name);
    if claimed {
        std::fs::rename(from, &paths.dir).at("move the clone to", &paths.dir)?;
        return Ok(paths);
    }
    let mut result = renameat_with(CWD, from, CWD, &paths.dir, RenameFlags::NOREPLACE);
    if result == Err(rustix::io::Errno::NOENT) && from.is_dir() {
        std::fs::create_dir_all(home.vms_dir()).at("create", &home.vms_dir())?;
        result = renameat_with(CWD, from, CWD, &paths.dir, RenameFlags::NOREPLACE);
    }
    match result {
        Ok(()) => Ok(paths),
        Err(rustix::io::Errno::EXIST) => Err(VmError::Exists(name.clone())),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            create_dir(home, name)?;
            std::fs::rename(from, &paths.dir).map_err(|e| {
                let _ = std::fs::remove_dir(&paths.dir);
                VmError::from(IoError::new("move the clone to", &paths.dir, e))
            })?;
            Ok(paths)
        }
        Err(e) => Err(IoError::new("move the clone to", &paths.dir, e.into()).into()),
    }
}

/// A QEMU process this thaw process started.
pub struct Spawned {
    pub child: Child,
    pub qmp: Qmp,
}

/// Starts QEMU for `spec` in `paths`, then connects to QMP. The process is put in its
/// own process group so that it outlives the thaw command that started it.
pub async fn spawn(
    qemu: &Qemu,
    spec: &MachineSpec,
    launch: &Launch<'_>,
    paths: &VmPaths,
    kill_with_parent: bool,
    on_spawn: impl FnOnce(u32) -> Result<(), VmError>,
) -> Result<Spawned, VmError> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(paths.qemu_log()).at("create", &paths.qemu_log())?;
    let log2 = log.try_clone().at("open", &paths.qemu_log())?;
    if spec.clock_port {
        crate::clockport::make_pipe(launch.clock_pipe)
            .at("make the clock channel", launch.clock_pipe)?;
    }
    let argv = spec.argv(launch);
    tracing::debug!(?argv, "starting QEMU");
    let console = crate::console::start_keeper(launch.console_log)
        .at("start the console keeper for", launch.console_log)?;
    let mut cmd = Command::new(&qemu.binary);
    if kill_with_parent {
        crate::sys::kill_with_parent(&mut cmd);
    }
    if !launch.share_ram && crate::fsutil::on_fuse(launch.ram) {
        // RAM from a lazily served snapshot: see `sys::refuse_huge_page_advice`.
        match crate::sys::huge_page_advice_filter() {
            Some(filter) => crate::sys::refuse_huge_page_advice(&mut cmd, filter),
            None => tracing::warn!("cannot refuse QEMU's huge page advice on this architecture"),
        }
    }
    let mut child = cmd
        .args(&argv)
        .stdin(console)
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|source| VmError::Spawn {
            binary: qemu.binary.clone(),
            source,
        })?;
    if let Err(e) = on_spawn(child.id()) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    match connect_qmp(&mut child, paths, Duration::from_secs(30)).await {
        Ok(qmp) => Ok(Spawned { child, qmp }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

async fn connect_qmp(
    child: &mut Child,
    paths: &VmPaths,
    timeout: Duration,
) -> Result<Qmp, VmError> {
    let deadline = Instant::now() + timeout;
    let sock = paths.qmp();
    loop {
        if let Ok(Some(_status)) = child.try_wait() {
            return Err(VmError::EarlyExit(last_log_line(&paths.qemu_log())));
        }
        if sock.exists() {
            match Qmp::connect(&sock).await {
                Ok(q) => return Ok(q),
                Err(thaw_qmp::QmpError::Connect { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if Instant::now() >= deadline {
            return Err(VmError::QmpTimeout(timeout));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The last non-empty line QEMU printed, with its "qemu-system-x86_64: " prefix cut.
pub fn last_log_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output");
    match line.split_once(": ") {
        Some((prog, rest)) if prog.contains("qemu-system") => rest.to_owned(),
        _ => line.to_owned(),
    }
}

impl VmState {
    pub fn load(home: &Home, name: &VmName) -> Result<VmState, VmError> {
        Self::load_named(&VmPaths::new(home, name), name)
    }

    /// Reads the record in `paths` (a directory outside `vms/<name>`: a pool clone, or
    /// the clone of a reset).
    pub fn load_in(paths: &VmPaths) -> Result<VmState, VmError> {
        let name: VmName = "unnamed".parse().expect("a valid name");
        Self::load_named(paths, &name)
    }

    fn load_named(paths: &VmPaths, name: &VmName) -> Result<VmState, VmError> {
        match <VmState as Record>::read_from(&paths.record()) {
            Ok(state) => Ok(state),
            Err(e) if e.is_not_found() => Err(if paths.dir.exists() {
                VmError::BadRecord {
                    name: name.clone(),
                    path: paths.record(),
                }
            } else {
                VmError::NotFound(name.clone())
            }),
            Err(RecordError::Io(e)) => Err(e.into()),
            Err(e @ RecordError::Newer { .. }) => Err(VmError::Record(e)),
            Err(RecordError::TooLarge { .. } | RecordError::Corrupt { .. }) => {
                Err(VmError::BadRecord {
                    name: name.clone(),
                    path: paths.record(),
                })
            }
        }
    }

    pub fn save(&self, home: &Home) -> Result<(), VmError> {
        self.save_in(&VmPaths::new(home, &self.name))
    }

    /// Writes the record into `paths` (a pool clone lives outside `vms/` until taken).
    ///
    /// Atomically (a temporary file renamed over it), so a thaw killed mid-write leaves
    /// the old record or the new one, but not synced: the record describes a running
    /// QEMU process, and a host crash, the only thing a sync would guard against, ends
    /// that process too. The two syncs cost about a millisecond on the restore path.
    pub fn save_in(&self, paths: &VmPaths) -> Result<(), VmError> {
        let path = paths.record();
        Ok(self.write_to(&path)?)
    }

    /// Writes the record into `paths` in place (over the old one, not beside it):
    /// for a directory that is not a VM yet (a pooled clone's, a reset's side
    /// directory) and is published whole by a rename afterwards. Nothing reads a
    /// record there but recovery, which also finds the QEMU by its command line.
    /// Replacing a file frees its old blocks, which on ext4 mounted with `discard`
    /// cost about 0.2 ms on this path; overwriting costs 10 µs.
    pub fn prepare_in(&self, paths: &VmPaths) -> Result<(), VmError> {
        let path = paths.record();
        Ok(fsutil::overwrite(&path, &self.to_bytes()).at("write", &path)?)
    }

    /// Loads a VM's record and checks that its QEMU is alive.
    pub fn load_running(home: &Home, name: &VmName) -> Result<VmState, VmError> {
        let state = VmState::load(home, name)?;
        if !state.is_alive() {
            return Err(VmError::NotRunning(name.clone()));
        }
        Ok(state)
    }

    pub fn paths(&self, home: &Home) -> VmPaths {
        VmPaths::new(home, &self.name)
    }

    /// Whether the recorded pid is still this VM's QEMU (not a reused pid): its
    /// command line carries this VM's unique generation id.
    pub fn is_alive(&self) -> bool {
        process_mentions(self.pid, self.vmgenid.to_string().as_bytes())
    }
}

/// True if `pid` is a live (non-zombie) process whose command line mentions `dir`.
pub fn process_is_vm(pid: u32, dir: &Path) -> bool {
    process_mentions(pid, dir.as_os_str().as_encoded_bytes())
}

/// True if `pid` is a live process: it exists and is not a zombie (which has released
/// its files and locks).
pub fn process_lives(pid: u32) -> bool {
    stat_lives(Path::new(&format!("/proc/{pid}/stat")))
}

/// Whether the process or thread whose `stat` file is `stat` exists and has not exited
/// (its state, which follows the parenthesised command name, is neither Z nor X).
fn stat_lives(stat: &Path) -> bool {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// True while any thread of process `pid` has not exited. Its files (and the locks on
/// them) are released only when the last thread exits, and a process whose first
/// thread exited first already reads as a zombie in `/proc/PID/stat` while the others
/// still run: [`process_lives`] says false then, this says true.
pub fn any_thread_lives(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|t| stat_lives(&t.path().join("stat")))
}

/// True if `pid` is a live (non-zombie) process whose command line contains `needle`.
pub fn process_mentions(pid: u32, needle: &[u8]) -> bool {
    if !process_lives(pid) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Waits until `pid` no longer is the process whose command line contains `needle`.
pub async fn wait_gone(pid: u32, needle: &[u8], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_mentions(pid, needle) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Waits until `pid` has exited and released its files (sockets, ports): it is gone or
/// a zombie. (Its command line empties earlier, while it still holds them.)
pub async fn wait_exited(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !process_lives(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Ends the VM's QEMU: `quit` over QMP, then SIGKILL if it lingers.
pub async fn terminate(state: &VmState, home: &Home) {
    let paths = state.paths(home);
    if !state.is_alive() {
        return;
    }
    let id = state.vmgenid.to_string();
    let quit = async {
        let qmp = Qmp::connect(&paths.qmp()).await.ok()?;
        qmp.execute("quit", None).await.ok()
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), quit).await;
    if !wait_gone(state.pid, id.as_bytes(), Duration::from_secs(3)).await {
        kill(state.pid);
        wait_gone(state.pid, id.as_bytes(), Duration::from_secs(5)).await;
    }
}

/// Kills whatever runs for `name` and removes its directory.
pub async fn discard(home: &Home, name: &VmName) {
    if let Ok(state) = VmState::load(home, name) {
        terminate(&state, home).await;
        reap(state.pid);
    }
    let _ = std::fs::remove_dir_all(home.vm_dir(name));
}

/// Reaps `pid` if it is a child of this process that has exited (thaw's benchmark and
/// daemon start QEMU themselves); does nothing otherwise.
pub fn reap(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
    }
}

/// Pids of live processes whose command line mentions `dir`.
pub fn pids_using(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && process_is_vm(pid, dir))
        .collect()
}

pub fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Lists the names of all VM directories.
pub fn list_names(home: &Home) -> Vec<VmName> {
    let mut names: Vec<VmName> = std::fs::read_dir(home.vms_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    names.sort();
    names
}

/// Gives VM `name` the labels and TTL of `lifetime` (the TTL counted from now).
pub fn apply_lifetime(
    home: &Home,
    name: &VmName,
    lifetime: &crate::lifetime::Lifetime,
) -> Result<(), VmError> {
    if lifetime.is_empty() {
        return Ok(());
    }
    let mut state = VmState::load(home, name)?;
    state.labels = lifetime.labels.clone();
    state.expires_unix_ms = lifetime.ttl.map(crate::lifetime::expiry_from_now);
    state.save(home)
}

/// Sets VM `name`'s time to live to `ttl` from now (`thaw ttl VM 10m`); returns the
/// new expiry (unix ms).
pub fn extend_ttl(home: &Home, name: &VmName, ttl: std::time::Duration) -> Result<u64, VmError> {
    let mut state = VmState::load(home, name)?;
    let expires = crate::lifetime::expiry_from_now(ttl);
    state.expires_unix_ms = Some(expires);
    state.save(home)?;
    Ok(expires)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let s = VmState {
            name: "web".parse().unwrap(),
            pid: 42,
            spec: MachineSpec {
                machine: "pc".into(),
                memory_mib: 256,
                cpus: 1,
                kernel: Some("/k".into()),
                initrd: None,
                cmdline: "console=ttyS0".into(),
                accel: crate::Accel::Tcg,
                firmware: crate::firmware::Firmware::Bios,
                display: Some(crate::display::DisplaySpec::default()),
                disks: vec![],
                net: None,
                clock_port: false,
            },
            qemu_version: "10.0.2".parse().unwrap(),
            vmgenid: Uuid::new_v4(),
            ram: "/h/vms/web/ram".into(),
            ram_shared: true,
            origin: Origin::Restored {
                snapshot: "base".parse().unwrap(),
            },
            created_unix_ms: 1,
            disk_overlays: vec!["/h/vms/web/disks/d0.1.qcow2".into()],
            ports: vec![PortForward {
                host: 4000,
                guest: 80,
            }],
            bind: "127.0.0.2".parse().unwrap(),
            lineage: Some(crate::home::ParentRef {
                tag: "base".parse().unwrap(),
                manifest_blake3: "ab".into(),
            }),
            vnc: Some(crate::display::VncPorts {
                port: 5901,
                websocket: Some(5701),
            }),
            labels: [("team".to_owned(), "ci".to_owned())].into(),
            expires_unix_ms: Some(1_700_000_000_000),
        };
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"kind\":\"restored\""));
        assert_eq!(serde_json::from_str::<VmState>(&j).unwrap(), s);
        crate::record::tests::round_trip(&s);
        // A record written before labels and lifetimes loads without them.
        let mut old: serde_json::Value = serde_json::from_str(&j).unwrap();
        old.as_object_mut().unwrap().remove("labels");
        old.as_object_mut().unwrap().remove("expires_unix_ms");
        // ... and one written before bind addresses listens on 127.0.0.1.
        old.as_object_mut().unwrap().remove("bind");
        let old: VmState = serde_json::from_value(old).unwrap();
        assert!(old.labels.is_empty());
        assert_eq!(old.expires_unix_ms, None);
        assert_eq!(old.bind, crate::ports::DEFAULT_BIND);
    }

    #[test]
    fn a_record_of_a_newer_thaw_is_refused_not_called_unreadable() {
        let d = tempfile::tempdir().unwrap();
        let paths = VmPaths {
            dir: d.path().to_owned(),
        };
        std::fs::write(paths.record(), br#"{"record_version": 99}"#).unwrap();
        let err = VmState::load_in(&paths).unwrap_err();
        assert!(
            matches!(err, VmError::Record(RecordError::Newer { found: 99, .. })),
            "{err:?}"
        );
        std::fs::write(paths.record(), b"{}").unwrap();
        assert!(matches!(
            VmState::load_in(&paths),
            Err(VmError::BadRecord { .. })
        ));
    }

    #[test]
    fn own_process_is_not_a_vm_of_another_dir() {
        let me = std::process::id();
        assert!(!process_is_vm(
            me,
            Path::new("/definitely/not/in/my/cmdline")
        ));
        assert!(!process_is_vm(u32::MAX - 1, Path::new("/")));
    }

    #[test]
    fn last_log_line_strips_the_program_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("qemu.log");
        std::fs::write(
            &p,
            "warning\nqemu-system-x86_64: -kernel /x: could not open\n\n",
        )
        .unwrap();
        assert_eq!(last_log_line(&p), "-kernel /x: could not open");
    }

    #[test]
    fn moving_a_directory_to_a_name_claims_it_once() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path().join("home"));
        let name: VmName = "web".parse().unwrap();
        let (a, b) = (d.path().join("pool-a"), d.path().join("pool-b"));
        for dir in [&a, &b] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("vm.json"), dir.to_str().unwrap()).unwrap();
        }
        // vms/ does not exist yet: the move makes it.
        let paths = move_dir_to(&home, &a, &name, false).unwrap();
        assert_eq!(paths.dir, home.vm_dir(&name));
        assert!(!a.exists());
        match move_dir_to(&home, &b, &name, false) {
            Err(VmError::Exists(n)) => assert_eq!(n, name),
            other => panic!("a taken name is refused: {:?}", other.map(|p| p.dir)),
        }
        // The loser moved nothing; the winner's files are untouched.
        assert!(b.join("vm.json").is_file());
        assert_eq!(
            std::fs::read_to_string(home.vm_dir(&name).join("vm.json")).unwrap(),
            a.to_str().unwrap()
        );
        // An empty directory of that name (a claim by `create_dir`) is taken too.
        let other: VmName = "db".parse().unwrap();
        create_dir(&home, &other).unwrap();
        assert!(matches!(
            move_dir_to(&home, &b, &other, false),
            Err(VmError::Exists(_))
        ));
        // Unless the caller made it: then the clone moves over it.
        move_dir_to(&home, &b, &other, true).unwrap();
        assert!(home.vm_dir(&other).join("vm.json").is_file());
    }
}

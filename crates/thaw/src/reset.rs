//! Resetting a VM: throwing its changes away and going back to a snapshot, keeping its
//! name and its host ports.
//!
//! The VM's process is replaced, not rewound: a clone of the snapshot is made ready
//! first — taken from a warm pool where one exists for that snapshot, else started
//! beside the VM — while the VM still runs. Then the VM's QEMU is killed (its state is
//! being thrown away), the clone takes over its host ports (QEMU's `hostfwd_add`) and
//! its directory, and is resumed with a fresh VM Generation ID and the clock set. The
//! VM is gone only for the moment between the kill and the clone's `cont`.
//!
//! An interrupt ([`reset_cancellable`]) before the VM's QEMU is killed discards the
//! clone and leaves the VM as it was; from the kill on, the reset finishes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::cancel::{CancellationToken, Interrupted};
use crate::clone::{self, CloneError, CloneReport, FinishOptions, Ports, Prepared};
use crate::fsutil::Context;
use crate::home::{Home, SnapshotTag, VmName};
use crate::pool::Pool;
use crate::ports;
use crate::qemu::Qemu;
use crate::ready::ReadySpec;
use crate::snapshot::{Snapshot, SnapshotCheckError};
use crate::spec::PortForward;
use crate::vm::{self, Origin, VmError, VmPaths, VmState};

#[derive(Debug, Clone)]
pub struct ResetRequest {
    pub name: VmName,
    /// The snapshot to go back to (default: the one the VM was restored from, or for a
    /// booted VM the last snapshot taken of it).
    pub to: Option<SnapshotTag>,
    /// How long the guest agent may take to answer after the reset.
    pub timeout: Duration,
    /// The accelerator (default: what this host can use).
    pub accel: Option<Accel>,
}

/// A reset as a client asks for it: `POST /v1/vms/{name}/reset`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"to": "configured"})))]
pub struct ResetOptions {
    /// The snapshot to go back to (default: the one the VM was restored from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Seconds the guest agent may take after the reset (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl ResetOptions {
    /// The options of `req` (what a client sends for it).
    pub fn of(req: &ResetRequest) -> ResetOptions {
        ResetOptions {
            to: req.to.as_ref().map(SnapshotTag::to_string),
            timeout_secs: Some(req.timeout.as_secs()),
        }
    }

    /// The request for resetting VM `name` under `accel`.
    pub fn into_request(
        self,
        name: VmName,
        accel: Option<Accel>,
    ) -> Result<ResetRequest, crate::home::NameError> {
        Ok(ResetRequest {
            name,
            to: self.to.map(|t| t.parse()).transpose()?,
            timeout: Duration::from_secs(self.timeout_secs.unwrap_or(60)),
            accel,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResetReport {
    /// The snapshot the VM went back to.
    pub snapshot: SnapshotTag,
    #[serde(flatten)]
    pub clone: CloneReport,
}

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("VM {0} was booted and no snapshot was taken of it: name one with --to TAG")]
    NoSnapshot(VmName),
    #[error(transparent)]
    Check(#[from] SnapshotCheckError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("resetting VM {name} failed")]
    Clone {
        name: VmName,
        #[source]
        source: CloneError,
    },
    #[error("interrupted")]
    Interrupted(#[from] Interrupted),
}

/// The snapshot a reset of `state` goes back to when none is named.
pub fn default_target(state: &VmState) -> Option<SnapshotTag> {
    match &state.origin {
        Origin::Restored { snapshot } => Some(snapshot.clone()),
        Origin::Booted => state.lineage.as_ref().map(|l| l.tag.clone()),
    }
}

/// Resets a VM to a snapshot (see the module docs), taking the clone from `pool` when
/// it has one ready for that snapshot.
pub async fn reset(
    home: &Home,
    qemu: &Qemu,
    req: &ResetRequest,
    pool: Option<&Arc<Pool>>,
) -> Result<ResetReport, ResetError> {
    reset_cancellable(home, qemu, req, pool, &CancellationToken::new()).await
}

/// [`reset`], which `cancel` interrupts until the VM's QEMU is replaced: the clone is
/// then discarded and the VM left as it was ([`Interrupted`]).
pub async fn reset_cancellable(
    home: &Home,
    qemu: &Qemu,
    req: &ResetRequest,
    pool: Option<&Arc<Pool>>,
    cancel: &CancellationToken,
) -> Result<ResetReport, ResetError> {
    let t0 = Instant::now();
    recover_interrupted(home);
    let old = VmState::load(home, &req.name)?;
    let tag = req
        .to
        .clone()
        .or_else(|| default_target(&old))
        .ok_or_else(|| ResetError::NoSnapshot(req.name.clone()))?;
    crate::store::ensure_materialized(home, &tag, &mut crate::store::NoProgress)?;
    // A snapshot kept once (the default) is read through the lazy server, which may
    // have gone idle since the VM started.
    crate::lazy_restore::ensure_for(home, &tag)
        .map_err(|e| crate::store::StoreError::Lazy(Box::new(e)))?;
    let snap = Snapshot::open(home, &tag)?;
    snap.check(qemu.version, req.accel.unwrap_or_else(Accel::detect), false)?;
    let ports = keep_ports(&old.ports, old.bind, &snap)?;
    let failed = |source| ResetError::Clone {
        name: req.name.clone(),
        source,
    };

    if cancel.is_cancelled() {
        return Err(Interrupted::Reset(req.name.clone()).into());
    }
    // A pool's clones listen on its address; a VM bound elsewhere gets a new clone on
    // its own address (as a restore does).
    let pooled = pool
        .filter(|p| p.bind_of(&tag) == old.bind)
        .and_then(|p| p.pop(&tag));
    let from_pool = pooled.is_some();
    let mut side = None;
    let mut prepared = match pooled {
        Some(p) => p,
        None => {
            let dir = side_dir(home);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)
                .at("create", &dir)
                .map_err(VmError::from)?;
            side = Some(dir.clone());
            let paths = VmPaths { dir: dir.clone() };
            match clone::prepare(
                qemu,
                &snap,
                paths,
                req.name.clone(),
                clone::StartOptions::default(),
                Ports::None(old.bind),
            )
            .await
            {
                Ok(p) => p,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(failed(e));
                }
            }
        }
    };
    // The last moment to interrupt: the VM's QEMU is killed next.
    let result = match cancel.is_cancelled() {
        true => Err(None),
        false => take_over(home, &old, &mut prepared, &ports)
            .await
            .map_err(Some),
    };
    let report = match result {
        Ok(()) => {
            let opts = FinishOptions {
                timeout: req.timeout,
                ready: ReadySpec::default(),
                exec_after: None,
                vnc_password: None,
            };
            if from_pool {
                prepared.breakdown.source = "pool".into();
                prepared.breakdown.spawn_ms = 0.0;
                prepared.breakdown.state_load_ms = 0.0;
            }
            prepared.finish(&opts, t0).await.map_err(failed)
        }
        Err(e) => {
            prepared.discard().await;
            if let Some(dir) = side {
                let _ = std::fs::remove_dir_all(dir);
            }
            Err(match e {
                Some(e) => failed(e),
                None => Interrupted::Reset(req.name.clone()).into(),
            })
        }
    };
    if let (Some(pool), true) = (pool, from_pool) {
        pool.refill(&tag);
    }
    Ok(ResetReport {
        snapshot: tag,
        clone: report?,
    })
}

/// The VM's host ports for the snapshot's guest ports: the same host port for a guest
/// port the VM forwarded already, a free one for any other.
fn keep_ports(
    old: &[PortForward],
    bind: std::net::Ipv4Addr,
    snap: &Snapshot,
) -> Result<Vec<PortForward>, VmError> {
    let guest_ports = snap
        .manifest
        .spec
        .net
        .as_ref()
        .map(|n| n.guest_ports.clone())
        .unwrap_or_default();
    guest_ports
        .into_iter()
        .map(|guest| match old.iter().find(|f| f.guest == guest) {
            Some(f) => Ok(*f),
            None => Ok(PortForward {
                guest,
                host: ports::free_on(bind).at("pick a port for", &snap.dir)?,
            }),
        })
        .collect()
}

/// Ends the old VM and gives its ports, name and directory to the prepared clone.
async fn take_over(
    home: &Home,
    old: &VmState,
    prepared: &mut Prepared,
    ports: &[PortForward],
) -> Result<(), CloneError> {
    if old.is_alive() {
        vm::kill(old.pid);
        // Its host ports are free once it has exited, not when its command line goes.
        vm::wait_exited(old.pid, Duration::from_secs(5)).await;
        vm::reap(old.pid);
    }
    prepared.take_ports(ports, old.bind).await?;
    if let Some(vnc) = old.vnc {
        prepared.take_vnc(vnc, old.bind).await?;
    }
    let dir = home.vm_dir(&old.name);
    let doomed = home.vms_dir().join(format!(
        "{DOOMED_PREFIX}{}-{}",
        old.name,
        std::process::id()
    ));
    std::fs::rename(&dir, &doomed)
        .at("move aside", &dir)
        .map_err(VmError::from)?;
    // The VM keeps its labels and time to live.
    prepared.state.labels = old.labels.clone();
    prepared.state.expires_unix_ms = old.expires_unix_ms;
    prepared.claim_name(home, &old.name, false)?;
    // The old VM's files (its RAM file, disks, logs) go now; nothing runs from them.
    let _ = std::fs::remove_dir_all(&doomed);
    Ok(())
}

/// Where a reset prepares its clone beside the VM: `vms/.reset-<pid>-<n>`. Short
/// whatever the VM's name (the QMP and agent sockets inside must fit a Unix socket
/// path: named after a 64-character VM, they did not), and carrying the pid of the
/// process resetting, which is how [`recover_interrupted`] tells an abandoned one.
fn side_dir(home: &Home) -> std::path::PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    home.vms_dir()
        .join(format!("{SIDE_PREFIX}{}-{n}", std::process::id()))
}

const SIDE_PREFIX: &str = ".reset-";
const DOOMED_PREFIX: &str = ".doomed-";

/// Whether the process `pid` (as written in a directory name) is gone.
fn writer_gone(pid: Option<&str>) -> bool {
    let pid = pid
        .and_then(|p| p.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw);
    match pid {
        Some(p) if p.as_raw_nonzero().get() as u32 == std::process::id() => false,
        Some(p) => matches!(
            rustix::process::test_kill_process(p),
            Err(rustix::io::Errno::SRCH)
        ),
        None => true,
    }
}

/// Cleans up after resets whose process was killed (SIGKILL, a crash): the clone a
/// reset was preparing (`.reset-*`) runs from a directory no command lists, so its
/// QEMU is ended and the directory removed; a VM moved aside to be replaced
/// (`.doomed-*`) goes back to its name if nothing took it, where `thaw ls` shows it
/// (dead: its QEMU was ended first) and a new reset or `thaw stop` handles it. Resets
/// still running are left alone.
pub fn recover_interrupted(home: &Home) {
    for entry in std::fs::read_dir(home.vms_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let path = entry.path();
        if let Some(rest) = name.strip_prefix(SIDE_PREFIX) {
            if !writer_gone(rest.split('-').next()) {
                continue;
            }
            let paths = VmPaths { dir: path.clone() };
            let mut doomed: Vec<u32> = VmState::load_in(&paths)
                .ok()
                .filter(|s| s.is_alive())
                .map(|s| s.pid)
                .into_iter()
                .collect();
            // Also a QEMU started just before its record was written.
            doomed.extend(vm::pids_using(&path));
            for &pid in &doomed {
                vm::kill(pid);
            }
            // Gone before this returns, so that what the caller lists next is true.
            let deadline = Instant::now() + Duration::from_secs(5);
            while doomed
                .iter()
                .any(|&p| vm::process_is_vm(p, &path) || vm::process_mentions(p, b"qemu"))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            tracing::info!(dir = %path.display(), "removed the clone of an interrupted reset");
            let _ = std::fs::remove_dir_all(&path);
        } else if let Some(rest) = name.strip_prefix(DOOMED_PREFIX) {
            let Some((vm_name, pid)) = rest.rsplit_once('-') else {
                continue;
            };
            if !writer_gone(Some(pid)) {
                continue;
            }
            let back = vm_name
                .parse::<VmName>()
                .ok()
                .map(|n| home.vm_dir(&n))
                .filter(|d| !d.exists());
            match back {
                Some(dir) if std::fs::rename(&path, &dir).is_ok() => {
                    tracing::info!(
                        vm = vm_name,
                        "put back a VM an interrupted reset had moved aside"
                    );
                }
                _ => {
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
    }
}

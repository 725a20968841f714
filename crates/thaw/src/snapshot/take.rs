//! Taking a snapshot of a running VM — booted, restored, or taken from a pool.
//!
//! The steps, in order (each has a test hook, see [`crate::cancel`]'s `test_hang`):
//!
//! 1. Before any pause: read the VM's disk tops from QEMU and create each disk's next,
//!    empty layer (the VM moves onto it at the pause).
//! 2. **migrating** (mapped only: RAM is being copied while the guest runs), then
//!    **paused**: the vCPUs stop. How RAM gets into the snapshot decides how long:
//!    - *mapped* (QEMU >= 9.0, every VM that keeps running, and clones with `--stop`):
//!      a live `mapped-ram` migration copies RAM while the guest runs; QEMU stops the
//!      vCPUs only for the last dirty pages and the device state, a few milliseconds
//!      whatever the RAM size;
//!    - *moved* (a booted VM with `--stop`): the VM's own RAM file becomes the image;
//!    - *copied* (QEMU < 9.0, a booted VM that keeps running): the RAM file is copied
//!      while the vCPUs are stopped, so the pause grows with RAM.
//!
//!    While the vCPUs are stopped, each disk's top layer is frozen: QEMU moves the VM
//!    onto the new empty layer (`blockdev-snapshot-sync`), so RAM and disks are exactly
//!    as they were at the same instant.
//! 3. **state-saved**: the device state is in the file; the VM resumes (or ends).
//! 4. **ram-copied**: outside the pause, the snapshot's files are completed: the
//!    mapped-ram file sealed (see `mapped`), the disk chains hard-linked, a clone
//!    template made, everything hashed and synced.
//! 5. **manifest-written**, then **published**: the directory is renamed into place.
//!
//! A kill at any step leaves no half snapshot (the temporary directory is removed by
//! the next snapshot) and a VM that runs, or is paused and `thaw resume` resumes.
//! An interrupt ([`take_cancellable`]) is honoured only before the pause (the snapshot
//! is abandoned, the VM runs on); from the pause on, the snapshot is finished — with
//! `--stop`, the VM ends only into a published snapshot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use thaw_qmp::{QemuVersion, Qmp};

use crate::cancel::{test_hang, CancellationToken, Interrupted};
use crate::disk::{self, DiskError};
use crate::fsutil::{self, CopyMethod};
use crate::fsutil::{Context, FileLock, IoError, LockMode};
use crate::home::{Home, SnapshotTag, VmName};
use crate::mapped::{self, MappedError};
use crate::migration::{self, LiveSave, MigrationError};
use crate::ms;
use crate::snapshot::staging::Staging;
use crate::snapshot::{self, FileEntry, Manifest, Memory, ParentRef, Snapshot};
use crate::vm::{self, VmError, VmState};

mod chain;

#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    pub name: VmName,
    pub tag: SnapshotTag,
    /// End the VM after the snapshot (a booted VM's RAM file then moves into it).
    pub stop: bool,
    /// Keep the RAM image and device state as plain files beside the store's copy.
    /// Without it they are kept once, in the store, and restores read them through
    /// the lazy server (see `snapshot::stored::keep_once`).
    pub pin: bool,
}

/// A snapshot as a client asks for it: `POST /v1/vms/{name}/snapshot`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"tag": "base", "stop": false})))]
pub struct SnapshotOptions {
    pub tag: String,
    /// End the VM after the snapshot.
    #[serde(default)]
    pub stop: bool,
    /// Also keep the RAM image and device state as plain files (twice on disk); by
    /// default the store's copy is the only one and restores read it lazily.
    #[serde(default)]
    pub pin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotReport {
    pub tag: SnapshotTag,
    /// The snapshot this one was taken on top of (for a restored clone).
    #[serde(default)]
    pub parent: Option<SnapshotTag>,
    /// vCPUs stopped → running again (or → state saved, with `stop`).
    pub pause_ms: f64,
    /// The whole operation, request → published.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub total_ms: f64,
    /// Bytes of everything but the RAM image (device state, firmware and ROM blocks).
    pub state_bytes: u64,
    pub ram_bytes: u64,
    /// How the RAM image got into the snapshot: "mapped-ram" (written live by QEMU),
    /// "moved", "reflink" or "sparse-copy".
    pub ram_copy: String,
    /// Compressed bytes this snapshot added to the store (what it does not share).
    #[serde(default)]
    pub stored_added_bytes: u64,
    /// Compressed bytes the whole store holds now.
    #[serde(default)]
    pub store_bytes: u64,
    /// Whether the RAM image and device state are also kept as plain files (`pin`, or
    /// `THAW_LAZY=off`). If not, the store holds the only copy.
    #[serde(default)]
    pub pinned: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("a snapshot tagged {0} already exists")]
    TagExists(SnapshotTag),
    #[error("a snapshot of VM {0} is being taken; wait for it to finish")]
    Busy(VmName),
    #[error("VM {name} is a restored clone: snapshots of clones need QEMU 9.0 or later (mapped-ram), this is QEMU {qemu}")]
    CloneNeedsMappedRam { name: VmName, qemu: QemuVersion },
    #[error("VM {name}'s disk {disk} is on {path}, which is not a thaw disk layer (a VM started by an older thaw?)")]
    UnknownLayer {
        name: VmName,
        disk: usize,
        path: PathBuf,
    },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("could not pause, freeze or resume the VM")]
    Qmp(#[from] thaw_qmp::QmpError),
    #[error("saving the VM failed")]
    Migration(#[from] MigrationError),
    #[error("the saved RAM image is unusable")]
    Mapped(#[from] MappedError),
    #[error("could not prepare the disk layers")]
    Disk(#[from] DiskError),
    #[error("could not add the snapshot to the store")]
    Store(#[from] super::stored::StoreError),
    #[error("interrupted")]
    Interrupted(#[from] Interrupted),
    /// QEMU reports a write that failed for want of space as an I/O error of its own
    /// ("ram_save_setup failed: Input/output error"); this says what it was.
    #[error("the filesystem of {path} is full ({free} bytes free)")]
    DiskFull {
        path: PathBuf,
        free: u64,
        #[source]
        source: Box<SnapshotError>,
    },
}

/// Below this much free space, a failed migration is taken to have run out of it.
const NEARLY_FULL: u64 = 16 << 20;

/// Bytes free for an unprivileged writer on the filesystem of `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// How RAM gets into the snapshot (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Mapped,
    Moved,
    Copied,
}

/// A disk of the VM at the start of the snapshot.
struct Disk {
    /// The layer the VM writes now (frozen by the snapshot), and its index.
    top: PathBuf,
    k: u32,
    virtual_size: u64,
    /// The empty layer the VM moves onto (none with `stop`).
    next: Option<PathBuf>,
}

/// Takes the VM's snapshot lock, held by a snapshot for as long as it runs: an exclusive `flock` on
/// `vms/<name>/snapshot.lock`, which the kernel drops when the process dies. So a
/// second snapshot of the VM is refused, and a migration found running while nobody
/// holds it was left by a killed snapshot. `None` if a live process holds it.
pub fn try_lock_owner(paths: &vm::VmPaths) -> Result<Option<FileLock>, IoError> {
    FileLock::try_acquire(&paths.dir.join("snapshot.lock"), LockMode::Exclusive)
}

/// Cancels the live migration of a snapshot that was killed (see
/// [`migration::cancel_live`]), if the VM has one and no snapshot holds it. Called
/// whenever thaw looks at a running VM (`thaw ls`, exec): without it the VM ran on for
/// a few seconds after the kill and then paused itself for good. A migration already
/// paused at the switchover is left for `thaw resume`.
pub async fn cancel_abandoned(paths: &vm::VmPaths, qmp: &Qmp) -> bool {
    if !paths.dir.join("snapshot.lock").exists() {
        return false; // never snapshotted
    }
    let Ok(Some(_held)) = try_lock_owner(paths) else {
        return false;
    };
    match migration::cancel_live(qmp).await {
        Ok(cancelled) => {
            if cancelled {
                tracing::info!(dir = %paths.dir.display(), "cancelled the migration of a killed snapshot");
            }
            cancelled
        }
        Err(_) => false,
    }
}

/// Checkpoints a running VM into a new snapshot, written atomically.
pub async fn take(home: &Home, req: &SnapshotRequest) -> Result<SnapshotReport, SnapshotError> {
    take_cancellable(home, req, &CancellationToken::new()).await
}

/// [`take`], which `cancel` interrupts until the VM is paused: the snapshot is then
/// abandoned ([`Interrupted`]) and the VM runs on. From the pause on it finishes.
pub async fn take_cancellable(
    home: &Home,
    req: &SnapshotRequest,
    cancel: &CancellationToken,
) -> Result<SnapshotReport, SnapshotError> {
    let t0 = Instant::now();
    let state = VmState::load_running(home, &req.name)?;
    let _owner =
        try_lock_owner(&state.paths(home))?.ok_or_else(|| SnapshotError::Busy(req.name.clone()))?;
    home.ensure().at("create", home.root())?;
    if home.snapshot_dir(&req.tag).exists() {
        return Err(SnapshotError::TagExists(req.tag.clone()));
    }
    let mut staging = Staging::new(home, &req.tag)?;
    let qmp = Qmp::connect(&state.paths(home).qmp())
        .await
        .map_err(VmError::from)?;
    // A live migration a killed snapshot left: ours could not start beside it.
    let _ = migration::cancel_live(&qmp).await;
    let mut disks = Vec::new();
    let result = async {
        disks = disks_of(&qmp, &state, req.stop).await?;
        let at = Taking {
            home,
            req,
            state: &state,
            qmp: &qmp,
            cancel,
        };
        take_into(&at, &disks, &mut staging, t0).await
    }
    .await;
    // Measured before the temporary files go, which frees the space again.
    let result = result.map_err(|e| match (&e, free_bytes(staging.dir())) {
        (SnapshotError::Migration(_), Some(free)) if free < NEARLY_FULL => {
            SnapshotError::DiskFull {
                path: home.snapshots_dir(),
                free,
                source: Box::new(e),
            }
        }
        _ => e,
    });
    drop(staging); // removes what was written unless it was published
    if result.is_err() && !req.stop {
        // Leave the VM as we found it: running (on whichever layer QEMU uses).
        let _ = migration::cancel_pending(&qmp).await;
        let _ = qmp.execute("cont", None).await;
        let used = tops(&qmp).await.unwrap_or_default();
        for next in disks.iter().filter_map(|d| d.next.as_ref()) {
            if !used.contains(next) {
                let _ = std::fs::remove_file(next);
            }
        }
    }
    result
}

/// The file QEMU writes for each disk now (its top layer), in disk order.
async fn tops(qmp: &Qmp) -> Result<Vec<PathBuf>, SnapshotError> {
    let blocks = qmp.execute("query-block", None).await?;
    let mut tops: Vec<(usize, PathBuf)> = blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            let i = b["device"].as_str()?.strip_prefix("disk")?.parse().ok()?;
            Some((i, top_file(b["inserted"]["file"].as_str()?)?))
        })
        .collect();
    tops.sort();
    Ok(tops.into_iter().map(|(_, p)| p).collect())
}

/// The file of a disk's top node. After `blockdev-snapshot-sync` onto a layer whose
/// header names its backing relatively, QEMU describes the node as
/// `json:{"driver": "qcow2", "file": {"filename": ...}, "backing": ...}`.
fn top_file(name: &str) -> Option<PathBuf> {
    match name.strip_prefix("json:") {
        None => Some(PathBuf::from(name)),
        Some(json) => {
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            Some(PathBuf::from(v["file"]["filename"].as_str()?))
        }
    }
}

/// The VM's disks as QEMU has them, and (unless `stop`) a new empty layer for each.
async fn disks_of(qmp: &Qmp, state: &VmState, stop: bool) -> Result<Vec<Disk>, SnapshotError> {
    if state.spec.disks.is_empty() {
        return Ok(Vec::new());
    }
    let mut disks = Vec::new();
    for (i, top) in tops(qmp).await?.into_iter().enumerate() {
        let k = disk::layer_index(&top).ok_or_else(|| SnapshotError::UnknownLayer {
            name: state.name.clone(),
            disk: i,
            path: top.clone(),
        })?;
        let (_, virtual_size) = disk::info(&top)?;
        let next = if stop {
            None
        } else {
            let next = top.with_file_name(disk::layer_name(i, k + 1));
            // Left by an interrupted snapshot: QEMU does not use it (it uses `top`).
            let _ = std::fs::remove_file(&next);
            disk::create_layer_on(i, k, virtual_size, &next)?;
            Some(next)
        };
        disks.push(Disk {
            top,
            k,
            virtual_size,
            next,
        });
    }
    Ok(disks)
}

/// Moves the paused VM onto its disks' new layers; the old tops are frozen from now.
/// Returns the VM's record as it should now be saved (after the pause: the next
/// snapshot reads the layers from QEMU anyway, so a crash before the save loses
/// nothing).
async fn freeze_disks(
    qmp: &Qmp,
    state: &VmState,
    disks: &[Disk],
) -> Result<VmState, SnapshotError> {
    let mut moved = state.clone();
    for (i, d) in disks.iter().enumerate() {
        let Some(next) = &d.next else { continue };
        qmp.execute(
            "blockdev-snapshot-sync",
            Some(json!({
                "device": format!("disk{i}"),
                "snapshot-file": next,
                "format": "qcow2",
                "mode": "existing",
            })),
        )
        .await?;
        moved.disk_overlays[i] = next.clone();
    }
    Ok(moved)
}

/// What a snapshot is being taken of, and by whom.
struct Taking<'a> {
    home: &'a Home,
    req: &'a SnapshotRequest,
    state: &'a VmState,
    qmp: &'a Qmp,
    cancel: &'a CancellationToken,
}

impl Taking<'_> {
    /// Before the pause: an interrupt abandons the snapshot (the caller's error path
    /// resumes the VM and removes what was written).
    fn unless_interrupted(&self) -> Result<(), SnapshotError> {
        match self.cancel.is_cancelled() {
            true => Err(Interrupted::Snapshot(self.req.name.clone()).into()),
            false => Ok(()),
        }
    }
}

/// The snapshot from the pause on: saves the state and RAM into `staging`, records
/// and hashes the files, seals the manifest, stores and publishes it.
async fn take_into(
    at: &Taking<'_>,
    disks: &[Disk],
    staging: &mut Staging,
    t0: Instant,
) -> Result<SnapshotReport, SnapshotError> {
    let (home, req, state) = (at.home, at.req, at.state);
    let method = choose_method(at).await?;
    let mut events = at.qmp.events();
    let saved = save_state(at, method, disks, staging.dir()).await?;
    let pause = match saved.state_saved_at {
        Some(saved_at) => ms(saved_at.duration_since(saved.paused_at)),
        None => pause_from_events(&mut events).unwrap_or_else(|| ms(saved.paused_at.elapsed())),
    };
    if !req.stop && !disks.is_empty() {
        // The record says which layer the VM writes now.
        saved.moved.save(home)?;
    }
    test_hang("ram-copied", at.cancel).await;

    // Outside the pause: complete the files, hash, write the manifest, publish.
    let (mut files, memory, state_bytes) = record_files(method, staging.dir())?;
    // The parent, if it is still the snapshot this VM came from (a tag can be reused).
    let parent = state.lineage.as_ref().and_then(|l| {
        Snapshot::open(home, &l.tag)
            .ok()
            .filter(|p| p.manifest_blake3 == l.manifest_blake3)
    });
    let tmp = staging.dir();
    let vm_dir = state.paths(home).dir;
    if vm_dir.join(crate::guestref::DIR).is_dir() {
        crate::guestref::copy_links(&vm_dir, tmp)
    } else {
        crate::guestref::link_spec(tmp, &state.spec)
    }
    .at("link the guest files into", tmp)?;
    let chains = chain::chain_disks(state, disks, tmp, parent.as_ref(), &mut files)?;
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
        parent: state.lineage.clone(),
        memory,
        files,
        disks: chains,
        checksum: None,
    };
    let bytes = manifest.to_bytes();
    staging.seal(&bytes)?;
    test_hang("manifest-written", at.cancel).await;
    let (stored_before, stored_bytes, pinned) = store_and_publish(at, staging, parent.as_ref())?;
    test_hang("published", at.cancel).await;
    after_publish(at, &bytes);
    tracing::info!(tag = %req.tag, vm = %req.name, method = saved.ram_copy, "snapshot written");
    Ok(SnapshotReport {
        tag: req.tag.clone(),
        parent: manifest.parent.map(|p| p.tag),
        pause_ms: pause,
        total_ms: ms(t0.elapsed()),
        state_bytes,
        ram_bytes: state.spec.memory_bytes(),
        ram_copy: saved.ram_copy.into(),
        stored_added_bytes: stored_bytes.saturating_sub(stored_before),
        store_bytes: stored_bytes,
        pinned,
    })
}

/// How this VM's RAM gets into the snapshot.
async fn choose_method(at: &Taking<'_>) -> Result<Method, SnapshotError> {
    let mapped_ram = migration::has_mapped_ram(at.qmp).await?;
    Ok(match (at.state.ram_shared, at.req.stop, mapped_ram) {
        (true, true, _) => Method::Moved,
        (_, _, true) => Method::Mapped,
        (true, false, false) => Method::Copied,
        (false, _, false) => {
            return Err(SnapshotError::CloneNeedsMappedRam {
                name: at.state.name.clone(),
                qemu: at.state.qemu_version,
            })
        }
    })
}

/// What [`save_state`] did.
struct Saved {
    paused_at: Instant,
    /// With `stop`: when the device state (and the UEFI variables) were saved, the
    /// end of the pause that matters (the VM never runs again; what follows is QEMU
    /// ending and, with the RAM moved, a rename).
    state_saved_at: Option<Instant>,
    /// How the RAM got into the snapshot, for the report.
    ram_copy: &'static str,
    /// The VM's record as it should now be saved (see [`freeze_disks`]).
    moved: VmState,
}

/// Pauses the VM, freezes its disks, saves its device state and RAM into `tmp`, then
/// ends it (`stop`) or lets it run on.
async fn save_state(
    at: &Taking<'_>,
    method: Method,
    disks: &[Disk],
    tmp: &Path,
) -> Result<Saved, SnapshotError> {
    let Taking {
        home,
        req,
        state,
        qmp,
        cancel,
    } = *at;
    match method {
        Method::Mapped => {
            let path = tmp.join(snapshot::MEMORY_FILE);
            at.unless_interrupted()?;
            if req.stop {
                qmp.execute("stop", None).await?;
            }
            let mut live = LiveSave::start(qmp, &path).await?;
            test_hang("migrating", cancel).await;
            // While RAM is copied the VM still runs: an interrupt abandons the copy
            // (the error path cancels the migration and resumes the VM). With `stop`,
            // the VM is paused already: finish.
            tokio::select! {
                biased;
                r = live.wait_paused() => r?,
                _ = cancel.cancelled(), if !req.stop => at.unless_interrupted()?,
            }
            let paused_at = Instant::now();
            test_hang("paused", cancel).await;
            let moved = freeze_disks(qmp, state, disks).await?;
            let saved = live.complete().await?;
            // The UEFI variables, as the pflash device wrote them up to the pause.
            crate::firmware::vars_into_snapshot(&state.paths(home).dir, tmp, req.stop)
                .at("keep the UEFI variables in", tmp)?;
            let state_saved_at = req.stop.then(Instant::now);
            test_hang("state-saved", cancel).await;
            if req.stop {
                end(qmp, state).await;
            } else {
                migration::resume_after(qmp).await?;
            }
            saved.close().await;
            Ok(Saved {
                paused_at,
                state_saved_at,
                ram_copy: "mapped-ram",
                moved,
            })
        }
        Method::Moved | Method::Copied => {
            at.unless_interrupted()?;
            qmp.execute("stop", None).await?;
            let paused_at = Instant::now();
            test_hang("paused", cancel).await;
            let moved = freeze_disks(qmp, state, disks).await?;
            let state_path = tmp.join(snapshot::STATE_FILE);
            migration::save(qmp, &state_path).await?;
            crate::firmware::vars_into_snapshot(&state.paths(home).dir, tmp, req.stop)
                .at("keep the UEFI variables in", tmp)?;
            let state_saved_at = req.stop.then(Instant::now);
            test_hang("state-saved", cancel).await;
            let ram_path = tmp.join(snapshot::RAM_FILE);
            let ram_copy = if method == Method::Moved {
                end(qmp, state).await;
                std::fs::rename(&state.ram, &ram_path).at("move the RAM file to", &ram_path)?;
                "moved"
            } else {
                let how = fsutil::copy_sparse(&state.ram, &ram_path)
                    .at("copy the RAM file to", &ram_path)?;
                qmp.execute("cont", None).await?;
                match how {
                    CopyMethod::Reflink => "reflink",
                    CopyMethod::Sparse => "sparse-copy",
                }
            };
            Ok(Saved {
                paused_at,
                state_saved_at,
                ram_copy,
                moved,
            })
        }
    }
}

/// Syncs and hashes the memory files (and the UEFI variables) in `tmp`: their
/// manifest entries, how the memory is laid out, and the device state's size.
fn record_files(
    method: Method,
    tmp: &Path,
) -> Result<(std::collections::BTreeMap<String, FileEntry>, Memory, u64), SnapshotError> {
    let mut files = std::collections::BTreeMap::new();
    let entry = |file: &str, exclude| -> Result<FileEntry, SnapshotError> {
        let path = tmp.join(file);
        snapshot::sync_file(&path).at("sync", &path)?;
        let size = std::fs::metadata(&path).at("read", &path)?.len();
        let blake3 = fsutil::content_hash(&path, exclude).at("hash", &path)?;
        Ok(FileEntry { size, blake3 })
    };
    let (memory, state_bytes) = match method {
        Method::Mapped => {
            let region = mapped::seal(&tmp.join(snapshot::MEMORY_FILE))?;
            let whole = entry(snapshot::MEMORY_FILE, None)?;
            let state_blake3 = entry(snapshot::MEMORY_FILE, Some((region.offset, region.len)))?;
            // Everything but the RAM image: the device state and the small RAM blocks.
            let path = tmp.join(snapshot::MEMORY_FILE);
            let outside = |from, to| fsutil::data_bytes_in(&path, from, to);
            let state_bytes = outside(0, region.offset)
                .and_then(|a| Ok(a + outside(region.offset + region.len, whole.size)?))
                .at("read", &path)?;
            files.insert(snapshot::MEMORY_FILE.to_owned(), whole);
            let memory = Memory::Mapped {
                offset: region.offset,
                len: region.len,
                state_blake3: state_blake3.blake3,
            };
            (memory, state_bytes)
        }
        Method::Moved | Method::Copied => {
            let st = entry(snapshot::STATE_FILE, None)?;
            let state_bytes = st.size;
            files.insert(snapshot::STATE_FILE.to_owned(), st);
            files.insert(
                snapshot::RAM_FILE.to_owned(),
                entry(snapshot::RAM_FILE, None)?,
            );
            (Memory::Raw, state_bytes)
        }
    };
    for f in crate::firmware::SNAPSHOT_FILES {
        if tmp.join(f).exists() {
            files.insert((*f).to_owned(), entry(f, None)?);
        }
    }
    Ok((files, memory, state_bytes))
}

/// Adds the sealed snapshot to the store (chunks shared with the parent and every
/// other snapshot), keeps its RAM image and device state only there unless pinned,
/// publishes it and names its record. Returns the store's size before and after, and
/// whether the plain files were kept.
fn store_and_publish(
    at: &Taking<'_>,
    staging: &mut Staging,
    parent: Option<&Snapshot>,
) -> Result<(u64, u64, bool), SnapshotError> {
    let store = super::stored::open(at.home)?;
    let held = super::stored::lock_shared(&store)?;
    let stored_before = store.stored_bytes().unwrap_or(0);
    let parent_stored = match parent {
        Some(p) => super::stored::get(&store, p.manifest.tag.as_str())?.map(|s| (p, s)),
        None => None,
    };
    let stored = super::stored::ingest(
        &store,
        staging.dir(),
        parent_stored.as_ref().map(|(p, s)| (*p, s)),
        &mut thaw_store::NoProgress,
    )?;
    // Before it is published, so that no restore ever maps the plain files of a
    // snapshot that is kept once.
    let pinned = at.req.pin || !super::stored::lazy_by_default();
    if !pinned {
        super::stored::keep_once(at.home, staging.dir(), &stored)?;
    }
    // The name is claimed without replacing: the loser of two snapshots of one tag
    // is told so (a plain rename failed with "Directory not empty").
    staging.publish().map_err(|e| match e {
        crate::snapshot::staging::PublishError::Exists(tag) => SnapshotError::TagExists(tag),
        crate::snapshot::staging::PublishError::Io(e) => SnapshotError::Io(e),
    })?;
    // A snapshot whose record cannot be written (a full disk) is taken back: it failed,
    // so it must not stay listed. Killed here instead, the snapshot is whole and listed
    // without a record, which push and export add again (`store::ensure`).
    if let Err(e) = super::stored::name(&store, &at.req.tag, &stored) {
        staging.take_back();
        return Err(e.into());
    }
    drop(held);
    Ok((stored_before, store.stored_bytes().unwrap_or(0), pinned))
}

/// After publishing: a VM that ends is removed; one that runs on now descends from
/// the snapshot whose manifest is `manifest`.
fn after_publish(at: &Taking<'_>, manifest: &[u8]) {
    let (home, req, state) = (at.home, at.req, at.state);
    let paths = state.paths(home);
    if req.stop {
        let _ = std::fs::remove_dir_all(&paths.dir);
        return;
    }
    // The VM's record already names its layers. The snapshot is whole whatever
    // happens here: a record that cannot be updated (a full disk) only costs the next
    // snapshot of this VM its parent link, so it is not an error of this one.
    let lineage = ParentRef {
        tag: req.tag.clone(),
        manifest_blake3: blake3::hash(manifest).to_hex().to_string(),
    };
    if let Err(e) = VmState::load(home, &state.name).and_then(|mut now| {
        now.lineage = Some(lineage);
        now.save(home)
    }) {
        tracing::warn!(vm = %state.name, "snapshot {} written, but the VM's record could not name it as its parent: {}", req.tag, crate::one_line(&e));
    }
}

/// Ends the VM whose state was just saved.
async fn end(qmp: &Qmp, state: &VmState) {
    let _ = qmp.execute("quit", None).await;
    vm::wait_gone(
        state.pid,
        state.vmgenid.to_string().as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    vm::reap(state.pid);
}

/// vCPUs stopped → running, from QEMU's own STOP and RESUME event timestamps.
fn pause_from_events(
    events: &mut tokio::sync::broadcast::Receiver<thaw_qmp::Event>,
) -> Option<f64> {
    let (mut stop, mut resume) = (None, None);
    while let Ok(ev) = events.try_recv() {
        match ev.event.as_str() {
            "STOP" => stop = Some(ev.timestamp),
            "RESUME" if stop.is_some() => resume = Some(ev.timestamp),
            _ => {}
        }
    }
    let d = resume? - stop?;
    (d >= 0.0).then(|| (d * 1e6).round() / 1e3)
}

#[cfg(test)]
mod tests {
    #[test]
    fn top_files_are_read_from_plain_and_json_names() {
        assert_eq!(
            super::top_file("/v/disks/d0.0.qcow2").unwrap().to_str(),
            Some("/v/disks/d0.0.qcow2")
        );
        let j = r#"json:{"backing": {"driver": "qcow2", "file": {"driver": "file", "filename": "/v/d0.0.qcow2"}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/v/d0.1.qcow2"}}"#;
        assert_eq!(super::top_file(j).unwrap().to_str(), Some("/v/d0.1.qcow2"));
    }
}

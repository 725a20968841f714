//! Taking a snapshot of a running VM: pause, save the device state, keep the RAM
//! image and freeze the disk layers, resume (or end the VM), then write the manifest
//! and publish the snapshot directory atomically.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thaw_qmp::Qmp;

use crate::disk::{self, DiskError};
use crate::fsutil::{self, CopyMethod};
use crate::home::{Home, SnapshotTag, VmName};
use crate::migration::{self, MigrationError};
use crate::ms;
use crate::snapshot::{self, FileEntry, Manifest};
use crate::vm::{self, VmError, VmState};

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
pub async fn take(home: &Home, req: &SnapshotRequest) -> Result<SnapshotReport, SnapshotError> {
    let state = VmState::load_running(home, &req.name)?;
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
    crate::firmware::vars_into_snapshot(&paths.dir, tmp, req.stop)
        .map_err(io_err("keep the UEFI variables in", tmp))?;
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
    for f in crate::firmware::SNAPSHOT_FILES {
        if tmp.join(f).exists() {
            files.insert((*f).to_owned(), entry(&tmp.join(f))?);
        }
    }
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

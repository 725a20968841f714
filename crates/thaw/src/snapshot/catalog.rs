//! The snapshots of a home: listing them and removing them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::fsutil;
use crate::home::{Home, SnapshotTag, VmName};
use crate::snapshot::{self, Snapshot};

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

pub fn list(home: &Home) -> Vec<SnapshotInfo> {
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
pub fn remove(home: &Home, tag: &SnapshotTag) -> Result<(), RemoveSnapshotError> {
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

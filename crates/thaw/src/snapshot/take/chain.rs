//! A snapshot's disks: each disk's chain of layers linked into it, and its clones'
//! template.

use std::path::Path;

use super::{Disk, SnapshotError};
use crate::disk;
use crate::fsutil::{self, Context};
use crate::snapshot::{self, DiskChain, FileEntry, Snapshot};
use crate::vm::VmState;

/// Hard-links each disk's chain (the frozen top included) into the snapshot, makes the
/// clone template, and records every file. The base's identity is taken from the
/// parent when the base has not changed since (hashing a base image costs a read of it).
pub(super) fn chain_disks(
    state: &VmState,
    disks: &[Disk],
    tmp: &Path,
    parent: Option<&Snapshot>,
    files: &mut std::collections::BTreeMap<String, FileEntry>,
) -> Result<Vec<DiskChain>, SnapshotError> {
    if disks.is_empty() {
        return Ok(Vec::new());
    }
    let dir = tmp.join("disks");
    std::fs::create_dir(&dir).at("create", &dir)?;
    let mut chains = Vec::new();
    for (i, (d, spec)) in disks.iter().zip(&state.spec.disks).enumerate() {
        let from = d.top.parent().expect("a layer lives in a directory");
        disk::link_chain(from, &dir, i, d.k + 1).at("link the disk layers into", &dir)?;
        let template = tmp.join(snapshot::template_file(i));
        disk::create_layer_on(i, d.k, d.virtual_size, &template)?;
        for k in 0..=d.k {
            let file = snapshot::layer_file(i, k);
            // Layers below the top are the parent's, already synced and hashed.
            let known = parent
                .and_then(|p| p.manifest.files.get(&file))
                .filter(|_| k < d.k);
            let e = match known {
                Some(e) => e.clone(),
                None => {
                    let path = tmp.join(&file);
                    snapshot::sync_file(&path).at("sync", &path)?;
                    let size = std::fs::metadata(&path).at("read", &path)?.len();
                    let blake3 = fsutil::content_hash(&path, None).at("hash", &path)?;
                    FileEntry { size, blake3 }
                }
            };
            files.insert(file, e);
        }
        snapshot::sync_file(&template).at("sync", &template)?;
        let size = std::fs::metadata(&template).at("read", &template)?.len();
        let blake3 = fsutil::content_hash(&template, None).at("hash", &template)?;
        files.insert(snapshot::template_file(i), FileEntry { size, blake3 });
        let (size, mtime_ns) = disk::stat(&spec.base).at("read", &spec.base)?;
        let inherited = parent
            .and_then(|p| p.manifest.disks.get(i))
            .map(|c| c.base.clone())
            .filter(|b| b.path == spec.base && b.size == size && b.mtime_ns == mtime_ns);
        let base = match inherited {
            Some(b) => b,
            None => disk::BaseIdentity {
                path: spec.base.clone(),
                size,
                mtime_ns,
                blake3: fsutil::hash_file(&spec.base).at("hash", &spec.base)?,
            },
        };
        chains.push(DiskChain {
            base,
            virtual_size: d.virtual_size,
            layers: d.k + 1,
        });
    }
    fsutil::fsync_dir(&dir)?;
    Ok(chains)
}

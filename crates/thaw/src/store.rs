//! Snapshots in the content-addressed store, and where they travel: S3-compatible
//! remotes and single-file exports.
//!
//! Every snapshot is also kept in the store (`$THAW_HOME/store`, see `thaw_store` and
//! docs/store.md): each of its files — the RAM image and device state, the disk
//! layers, and the guest's kernel, initrd and base disks, so that it is complete on
//! its own — as 64 KiB chunks named by BLAKE3, zstd-compressed, zero chunks elided,
//! shared with every other snapshot. A store manifest named after the tag
//! ([`StoredSnapshot`]) holds the snapshot's `manifest.json` and the chunk index of
//! each file.
//!
//! The snapshot directory is the *materialized* form a restore maps: plain sparse files.
//! A snapshot taken here is both at once. One that arrives (pull, import) exists only
//! in the store until [`materialize`] writes its directory — once; restores then read
//! it like any other. Guest files are materialized into `$THAW_HOME/files/<blake3>`,
//! and the snapshot's `guest/` links point there (see `guestref`).

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
pub use thaw_store::{ChunkId, FileIndex, NoProgress, Progress, PullError, Remote, Store};

use crate::fsutil::{Context, LockMode};
use crate::guestref;
use crate::home::{Home, SnapshotTag};
use crate::record::Record;
use crate::snapshot::staging::{self, Staging};
pub(crate) use crate::snapshot::stored::{blocking, decode, put};
pub use crate::snapshot::stored::{
    ensure, files_dir, forget, get, ingest, keep_once, lock_shared, name, open, StoreError,
    StoredSnapshot,
};
use crate::snapshot::{self, catalog, confine};

/// A BLAKE3 hash as hex: 64 lowercase hex digits.
fn is_blake3_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Writes the snapshot directory of `tag` from its record in the store, atomically:
/// every file into a temporary directory, the guest files into `files/`, the layers'
/// headers checked (`snapshot::confine`), then the directory is published under its
/// tag, which must be free ([`StoreError::Exists`] otherwise).
pub fn materialize(
    home: &Home,
    tag: &SnapshotTag,
    s: &StoredSnapshot,
    progress: &mut dyn Progress,
) -> Result<(), StoreError> {
    write_out(home, tag, s, &WriteOut::Plain, progress)
}

/// How a snapshot that is in the store becomes restorable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOut {
    /// Every file written out (a second copy beside the store's).
    Plain,
    /// Links to the lazy server's files (see `lazy`): nothing written but the
    /// manifest; chunks the store lacks come from `remote`.
    Lazy { remote: Option<String> },
}

impl WriteOut {
    /// This host's default for a snapshot that is only in the store: lazy, unless
    /// `THAW_LAZY=off` (or `0`) asks for plain files.
    pub fn default_local() -> WriteOut {
        match crate::snapshot::stored::lazy_by_default() {
            false => WriteOut::Plain,
            true => WriteOut::Lazy { remote: None },
        }
    }
}

/// [`materialize`], or links to the lazy server's files (`how`).
pub fn write_out(
    home: &Home,
    tag: &SnapshotTag,
    s: &StoredSnapshot,
    how: &WriteOut,
    progress: &mut dyn Progress,
) -> Result<(), StoreError> {
    let store = open(home)?;
    let dest = home.snapshot_dir(tag);
    if dest.exists() {
        return Err(StoreError::Exists(tag.clone()));
    }
    // The manifest is checked as a restore checks it (format, version, checksum, tag)
    // before anything is written: a damaged record used to be written out whole and
    // published, and only then refused, leaving a broken snapshot listed. So is every
    // file the record makes QEMU open (see `snapshot::confine`).
    let m = snapshot::parse_manifest_bytes(tag, s.manifest.as_bytes())?;
    confine::check_record(&m, s.files.keys().map(String::as_str))?;
    home.ensure().at("create", home.root())?;
    let mut staging = Staging::new(home, tag)?;
    let tmp = staging.dir().to_owned();
    std::fs::create_dir_all(tmp.join("disks")).at("create", &tmp)?;
    std::fs::create_dir_all(tmp.join(guestref::DIR)).at("create", &tmp)?;
    let files = files_dir(home);
    std::fs::create_dir_all(&files).at("create", &files)?;
    if let WriteOut::Lazy { .. } = how {
        crate::lazy::ensure_server(home).map_err(|e| StoreError::Lazy(Box::new(e)))?;
    }
    for (rel, index) in &s.files {
        let write = |dest: &Path, progress: &mut dyn Progress| match how {
            WriteOut::Plain => {
                blocking(|| store.materialize(index, dest, progress)).map_err(|source| {
                    StoreError::Materialize {
                        path: dest.to_owned(),
                        source: Box::new(source),
                    }
                })
            }
            WriteOut::Lazy { remote } => {
                let served = crate::lazy::register(home, index, remote.as_deref())
                    .map_err(|e| StoreError::Lazy(Box::new(e)))?;
                std::os::unix::fs::symlink(&served, dest)
                    .at("link", dest)
                    .map_err(StoreError::from)
            }
        };
        match rel.strip_prefix("guest/") {
            Some(name) => {
                // Guest files are shared by every snapshot that needs them; the
                // file name is the content's BLAKE3 (the base disks' identity).
                // The hash becomes a file name under files/: it must be one (64
                // hex digits). A record from a pull or an import is not trusted,
                // and a "hash" like "../../../../etc/passwd" padded to 64
                // characters named a file outside $THAW_HOME.
                if name.contains('/') || !is_blake3_hex(&index.blake3) {
                    return Err(StoreError::Corrupt {
                        tag: tag.to_string(),
                        why: format!("bad guest file entry {rel}"),
                    });
                }
                let file = files.join(&index.blake3);
                if file.is_file() || *how == WriteOut::Plain {
                    if !file.is_file() {
                        write(&file, progress)?;
                    }
                    std::os::unix::fs::symlink(&file, tmp.join(rel)).at("link", &tmp.join(rel))?;
                } else {
                    write(&tmp.join(rel), progress)?;
                }
            }
            None => {
                if rel.contains("..") || rel.starts_with('/') {
                    return Err(StoreError::Corrupt {
                        tag: tag.to_string(),
                        why: format!("bad file entry {rel}"),
                    });
                }
                write(&tmp.join(rel), progress)?;
            }
        }
    }
    // The layers' headers, and any qcow2 base, name only thaw's own chain.
    confine::check_layers(&tmp, &m)?;
    for i in 0..m.spec.disks.len() {
        confine::check_stored_base(&m, i, &guestref::base(&tmp, i))?;
    }
    staging.seal(s.manifest.as_bytes())?;
    staging.publish().map_err(|e| match e {
        staging::PublishError::Exists(tag) => StoreError::Exists(tag),
        staging::PublishError::Io(e) => StoreError::Io(e),
    })
}

/// Removes the materialized files of a snapshot that is in the store, keeping the
/// store's record: the next restore materializes it again. (For measuring that, and
/// for freeing disk space.)
pub fn evict(home: &Home, tag: &SnapshotTag) -> Result<StoredSnapshot, StoreError> {
    let s = ensure(home, tag, &mut NoProgress)?;
    staging::remove(home, tag)?;
    Ok(s)
}

/// Makes sure `tag` can be restored: its directory exists, or the store has it and
/// it is materialized now. Returns whether it was materialized.
pub fn ensure_materialized(
    home: &Home,
    tag: &SnapshotTag,
    progress: &mut dyn Progress,
) -> Result<bool, StoreError> {
    if home.snapshot_dir(tag).is_dir() {
        return Ok(false);
    }
    let store = open(home)?;
    match get(&store, tag.as_str())? {
        Some(s) => match write_out(home, tag, &s, &WriteOut::default_local(), progress) {
            Ok(()) => Ok(true),
            // Another restore wrote it meanwhile, from the same record.
            Err(StoreError::Exists(_)) => Ok(false),
            Err(e) => Err(e),
        },
        None => Ok(false),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferReport {
    pub tag: SnapshotTag,
    /// Chunks sent or fetched, and those the other side had already.
    pub chunks_moved: u64,
    pub chunks_present: u64,
    /// Compressed bytes sent or fetched.
    pub bytes_moved: u64,
    /// The snapshot's files, uncompressed (apparent size).
    pub file_bytes: u64,
}

/// Sends a snapshot to a remote: only the chunks it lacks, then the record.
pub async fn push(
    home: &Home,
    tag: &SnapshotTag,
    remote: &Remote,
    progress: &mut dyn Progress,
) -> Result<TransferReport, StoreError> {
    let s = ensure(home, tag, progress)?;
    let store = open(home)?;
    pack_working_set(&store, tag, &s, remote).await;
    let r = thaw_store::push(&store, remote, tag.as_str(), &s.chunk_ids(), progress)
        .await
        .map_err(|source| StoreError::Push {
            tag: tag.to_string(),
            source: Box::new(source),
        })?;
    Ok(TransferReport {
        tag: tag.clone(),
        chunks_moved: r.chunks_sent,
        chunks_present: r.chunks_present,
        bytes_moved: r.bytes_sent,
        file_bytes: s.file_bytes(),
    })
}

/// Before a push: makes sure the remote has the pack of `s`'s working set, and names
/// it in the record pushed after it. A pack is only faster, never needed: one that
/// cannot be made is left out (with a warning) and cold hosts fetch chunk by chunk.
async fn pack_working_set(store: &Store, tag: &SnapshotTag, s: &StoredSnapshot, remote: &Remote) {
    // Pushed before, with this working set, and the remote has it: nothing to read.
    if let Some(known) = &s.working_set_pack {
        if matches!(remote.has_pack(known).await, Ok(true)) {
            return;
        }
    }
    let ids = s.working_set_chunks();
    let pack = if ids.is_empty() {
        None
    } else {
        match remote.ensure_pack(store, &ids).await {
            Ok(pack) => Some(pack),
            Err(e) => {
                tracing::warn!(%tag, error = %crate::one_line(&e), "pushing without a pack of the working set");
                None
            }
        }
    };
    if pack == s.working_set_pack {
        return;
    }
    let renamed = lock_shared(store).and_then(|_lock| match get(store, tag.as_str())? {
        // Changed meanwhile (a working set recorded): the next push packs that one.
        Some(mut now) if now.same_snapshot(s) && now.working_set == s.working_set => {
            now.working_set_pack = pack;
            put(store, tag.as_str(), &now)
        }
        _ => Ok(()),
    });
    if let Err(e) = renamed {
        tracing::warn!(%tag, error = %crate::one_line(&e), "cannot name the working set's pack");
    }
}

/// Whether a remote has a snapshot.
pub async fn remote_has(remote: &Remote, tag: &SnapshotTag) -> Result<bool, StoreError> {
    match thaw_store::fetch_manifest(remote, tag.as_str()).await {
        Ok(_) => Ok(true),
        Err(thaw_store::PullError::ManifestNotFound { .. }) => Ok(false),
        Err(source) => Err(StoreError::Pull {
            tag: tag.to_string(),
            source: Box::new(source),
        }),
    }
}

/// Fetches a snapshot from a remote: the chunks the store lacks (each checked against
/// its BLAKE3 on arrival), then its record, then it is materialized.
pub async fn pull(
    home: &Home,
    tag: &SnapshotTag,
    remote: &Remote,
    progress: &mut dyn Progress,
) -> Result<TransferReport, StoreError> {
    if home.snapshot_dir(tag).exists() {
        return Err(StoreError::Exists(tag.clone()));
    }
    let pull_err = |source| StoreError::Pull {
        tag: tag.to_string(),
        source: Box::new(source),
    };
    let bytes = thaw_store::fetch_manifest(remote, tag.as_str())
        .await
        .map_err(pull_err)?;
    let s = decode(tag.as_str(), &bytes)?;
    let store = open(home)?;
    let _lock = lock_shared(&store)?;
    let r = thaw_store::pull_chunks(&store, remote, &s.chunk_ids(), progress)
        .await
        .map_err(pull_err)?;
    adopt(home, &store, tag, &s, progress)?;
    Ok(TransferReport {
        tag: tag.clone(),
        chunks_moved: r.chunks_fetched,
        chunks_present: r.chunks_present,
        bytes_moved: r.bytes_fetched,
        file_bytes: s.file_bytes(),
    })
}

/// Writes a snapshot and every chunk it needs into one file (for CI caches).
pub fn export(
    home: &Home,
    tag: &SnapshotTag,
    file: &Path,
    progress: &mut dyn Progress,
) -> Result<thaw_store::ExportReport, StoreError> {
    let s = ensure(home, tag, progress)?;
    let store = open(home)?;
    let bytes = s.to_bytes();
    blocking(|| thaw_store::export(&store, tag.as_str(), &bytes, &s.chunk_ids(), file, progress))
        .map_err(|source| StoreError::Export {
            tag: tag.to_string(),
            source: Box::new(source),
        })
}

/// Reads a file [`export`] wrote: every chunk is checked before it enters the store,
/// then the snapshot is materialized. Returns its tag.
pub fn import(
    home: &Home,
    file: &Path,
    progress: &mut dyn Progress,
) -> Result<SnapshotTag, StoreError> {
    let store = open(home)?;
    let _lock = lock_shared(&store)?;
    let imported = blocking(|| thaw_store::import(&store, file, progress)).map_err(|source| {
        StoreError::Import {
            path: file.to_owned(),
            source: Box::new(source),
        }
    })?;
    let tag: SnapshotTag =
        imported
            .manifest_name
            .parse()
            .map_err(|e: crate::home::NameError| StoreError::Corrupt {
                tag: imported.manifest_name.clone(),
                why: e.to_string(),
            })?;
    let s = decode(tag.as_str(), &imported.manifest)?;
    adopt(home, &store, &tag, &s, progress)?;
    Ok(tag)
}

/// Makes a record that arrived (pull, import) a snapshot here: its directory is
/// written and checked first, then the record is named, so a refused snapshot leaves
/// no record behind. The tag must be free; whoever publishes the directory (one
/// process only, see `catalog::publish`) is the one who names the record, so two
/// arrivals of one tag cannot leave the directory of one and the record of the other.
/// The caller holds the store lock shared, so no gc removes the chunks meanwhile.
fn adopt(
    home: &Home,
    store: &Store,
    tag: &SnapshotTag,
    s: &StoredSnapshot,
    progress: &mut dyn Progress,
) -> Result<(), StoreError> {
    if home.snapshot_dir(tag).exists() {
        return Err(StoreError::Exists(tag.clone()));
    }
    // A record of this tag whose directory is not here (evicted): only the same
    // snapshot may arrive again.
    if get(store, tag.as_str())?.is_some_and(|known| !known.same_snapshot(s)) {
        return Err(StoreError::Exists(tag.clone()));
    }
    write_out(home, tag, s, &WriteOut::default_local(), progress)?;
    if let Err(e) = put(store, tag.as_str(), s) {
        let _ = catalog::remove(home, tag, false);
        return Err(e);
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_freed: u64,
    /// Bytes the store holds now (compressed).
    pub stored_bytes: u64,
}

/// Removes chunks no snapshot needs. A chunk is needed while any snapshot's record
/// names it — also a snapshot with running clones, a pool or children, since those
/// keep their snapshot (and removing a snapshot forgets its record). Records whose
/// snapshot directory is gone and that were not just pulled are kept too: they are
/// snapshots in the store only.
pub fn gc(home: &Home) -> Result<GcReport, StoreError> {
    let store = open(home)?;
    let held = store.lock(LockMode::Exclusive)?;
    let mut live = HashSet::new();
    for name in store
        .list_manifests()
        .map_err(|source| StoreError::Manifest {
            tag: String::new(),
            source: Box::new(source),
        })?
    {
        if let Some(s) = get(&store, &name)? {
            live.extend(s.chunk_ids());
        }
    }
    // Chunks no record names that are still needed: those of files clones have open
    // through the lazy server (a snapshot kept once, removed while its clones run,
    // whose pages they have not all read), and those of snapshots arriving from a
    // remote (their pending records).
    for index in crate::lazy::open_indexes(home).map_err(|e| StoreError::Lazy(Box::new(e)))? {
        live.extend(index.chunk_ids().copied());
    }
    let pending = crate::lazy::LazyDir::new(home).root().join("pending");
    for e in std::fs::read_dir(&pending).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(tag) = name.strip_suffix(".json") else {
            continue;
        };
        if let Some(s) = std::fs::read(e.path())
            .ok()
            .and_then(|b| decode(tag, &b).ok())
        {
            live.extend(s.chunk_ids());
        }
    }
    let r = blocking(|| store.gc_locked(&held, &live))?;
    Ok(GcReport {
        chunks_removed: r.removed,
        bytes_freed: r.freed_bytes,
        stored_bytes: store.stored_bytes().unwrap_or(0),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub chunks_checked: u64,
    /// Damaged chunks: "<id>: why".
    pub damaged: Vec<String>,
    /// Snapshots whose record names a chunk the store lacks or that is damaged.
    pub snapshots_affected: Vec<String>,
}

/// Re-hashes every chunk and names what is damaged, and which snapshots need it.
pub fn verify(home: &Home, progress: &mut dyn Progress) -> Result<VerifyReport, StoreError> {
    let store = open(home)?;
    let r = blocking(|| store.verify(progress))?;
    let bad: HashSet<ChunkId> = r.damaged.iter().map(|(id, _)| *id).collect();
    let mut affected = Vec::new();
    for name in store
        .list_manifests()
        .map_err(|source| StoreError::Manifest {
            tag: String::new(),
            source: Box::new(source),
        })?
    {
        if let Some(s) = get(&store, &name)? {
            if s.chunk_ids()
                .iter()
                .any(|id| bad.contains(id) || !store.has(id))
            {
                affected.push(name);
            }
        }
    }
    Ok(VerifyReport {
        chunks_checked: r.checked,
        damaged: r
            .damaged
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect(),
        snapshots_affected: affected,
    })
}

/// Bytes the store holds (compressed chunks on disk).
pub fn stored_bytes(home: &Home) -> u64 {
    open(home)
        .ok()
        .and_then(|s| s.stored_bytes().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;

/// Makes `bytes` (a store record, checked here) the store's record of `tag`: the
/// last step of a lazily restored snapshot's fill, once every chunk is local.
pub fn keep_record(home: &Home, tag: &SnapshotTag, bytes: &[u8]) -> Result<(), StoreError> {
    let store = open(home)?;
    let _lock = lock_shared(&store)?;
    let s = decode(tag.as_str(), bytes)?;
    if let Some(missing) = s.chunk_ids().into_iter().find(|id| !store.has(id)) {
        return Err(StoreError::Corrupt {
            tag: tag.to_string(),
            why: format!("chunk {missing} is not in the store yet"),
        });
    }
    put(&store, tag.as_str(), &s)
}

//! The store's record of each snapshot ([`StoredSnapshot`]) and the steps a snapshot
//! takes into the store when it is taken or removed: open, lock against gc, ingest,
//! name, forget. What moves snapshots between the store, the snapshot directories and
//! remotes (write-out, evict, push, pull, export, import, gc) is [`crate::store`],
//! which re-exports these.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thaw_store::{ChunkId, FileIndex, Progress, Store};

use crate::fsutil::{Context, FileLock, IoError, LockMode};
use crate::guestref;
use crate::home::{Home, SnapshotTag};
use crate::record::{DecodeError, Record};
use crate::snapshot::{self, Snapshot, SnapshotCheckError};

/// What the store keeps about a snapshot (the store manifest named after its tag).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StoredSnapshot {
    /// `manifest.json`, byte for byte (children name its BLAKE3).
    pub manifest: String,
    /// Every file of the snapshot directory by its relative path, and each guest file
    /// as `guest/<name>`.
    pub files: BTreeMap<String, FileIndex>,
    /// The chunks (indexes, by file) a restore read before its clone was ready,
    /// recorded by the first lazy restore: every lazy restore prefetches them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub working_set: BTreeMap<String, Vec<u32>>,
    /// The working set's chunks as one object in the bucket (made at push): a cold
    /// host fetches it with one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set_pack: Option<thaw_store::Pack>,
    /// The snapshot's chunks as stored (compressed), each once, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
}

/// Kept by the store as the manifest named after the tag (capped there), pushed and
/// exported as is; version 1 is the unversioned record of before.
impl Record for StoredSnapshot {
    const KIND: &'static str = "store record";
    const VERSION: u32 = 1;
    const MAX_BYTES: u64 = thaw_store::MAX_MANIFEST_BYTES;
    const PRETTY: bool = false;
}

impl StoredSnapshot {
    /// Every chunk the snapshot needs, each once.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        let mut seen = HashSet::new();
        self.files
            .values()
            .flat_map(|f| f.chunk_ids().copied())
            .filter(|id| seen.insert(*id))
            .collect()
    }

    /// The chunks of the working set, each once, in the order a restore reads them
    /// first: the device state and disks before the RAM image. Zero chunks (none
    /// stored) are left out.
    pub fn working_set_chunks(&self) -> Vec<ChunkId> {
        let mut seen = HashSet::new();
        let mut rels: Vec<&String> = self.working_set.keys().collect();
        rels.sort_by_key(|rel| (rel.as_str() == snapshot::RAM_FILE, rel.as_str()));
        // A mapped memory file holds the device state around the RAM image: its
        // chunks outside the RAM go before the rest (the restore's check and QEMU's
        // load read them before the guest runs).
        let ram = self.mapped_ram();
        let mut order = Vec::new();
        for rel in rels {
            let (Some(index), Some(chunks)) = (self.files.get(rel), self.working_set.get(rel))
            else {
                continue;
            };
            let mut chunks = chunks.clone();
            if let (Some((offset, len)), true) = (ram, rel == snapshot::MEMORY_FILE) {
                let cs = u64::from(index.chunk_size);
                let in_ram = |i: u32| {
                    let start = u64::from(i) * cs;
                    start >= offset && start + cs <= offset + len
                };
                chunks.sort_by_key(|&i| in_ram(i));
            }
            order.extend(
                chunks
                    .iter()
                    .filter_map(|&i| index.chunks.get(i as usize).copied().flatten()),
            );
        }
        order.retain(|id| seen.insert(*id));
        order
    }

    /// Where the RAM image is in a mapped memory file (offset, length), from the
    /// manifest.
    fn mapped_ram(&self) -> Option<(u64, u64)> {
        #[derive(Deserialize)]
        struct Layout {
            memory: snapshot::Memory,
        }
        match serde_json::from_str::<Layout>(&self.manifest).ok()?.memory {
            snapshot::Memory::Mapped { offset, len, .. } => Some((offset, len)),
            snapshot::Memory::Raw => None,
        }
    }

    /// Bytes of the files (apparent size).
    pub fn file_bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    /// Whether `other` is the same snapshot (its working set and sizes aside).
    pub fn same_snapshot(&self, other: &StoredSnapshot) -> bool {
        self.manifest == other.manifest && self.files == other.files
    }

    /// The stored size of its chunks in `store`, when every one is there.
    pub fn stored_in(&self, store: &Store) -> Option<u64> {
        self.chunk_ids()
            .iter()
            .map(|id| {
                std::fs::metadata(store.chunk_path(id))
                    .ok()
                    .map(|m| m.len())
            })
            .sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not open the store")]
    Open(#[source] Box<thaw_store::OpenError>),
    #[error("could not add {path} to the store")]
    Ingest {
        path: PathBuf,
        #[source]
        source: Box<thaw_store::IngestError>,
    },
    #[error("could not write {path} from the store")]
    Materialize {
        path: PathBuf,
        #[source]
        source: Box<thaw_store::MaterializeError>,
    },
    #[error("the store's record of {tag}")]
    Manifest {
        tag: String,
        #[source]
        source: Box<thaw_store::ManifestError>,
    },
    #[error("the lazily served snapshot")]
    Lazy(#[source] Box<crate::lazy::LazyError>),
    #[error("the store's record of {tag} is corrupt ({why})")]
    Corrupt { tag: String, why: String },
    #[error("the store's record of {tag} has format version {found}, newer than this thaw reads: upgrade thaw")]
    NewerRecord { tag: String, found: u32 },
    #[error("a snapshot tagged {0} already exists here")]
    Exists(SnapshotTag),
    #[error(transparent)]
    Check(#[from] SnapshotCheckError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("pushing {tag} failed")]
    Push {
        tag: String,
        #[source]
        source: Box<thaw_store::PushError>,
    },
    #[error("pulling {tag} failed")]
    Pull {
        tag: String,
        #[source]
        source: Box<thaw_store::PullError>,
    },
    #[error("the remote is unusable")]
    Remote(#[source] Box<thaw_store::RemoteConfigError>),
    #[error("exporting {tag} failed")]
    Export {
        tag: String,
        #[source]
        source: Box<thaw_store::ExportError>,
    },
    #[error("importing {path} failed")]
    Import {
        path: PathBuf,
        #[source]
        source: Box<thaw_store::ImportError>,
    },
    #[error("the store is damaged: {0}")]
    Damaged(String),
    #[error("store housekeeping failed")]
    Gc(#[source] Box<thaw_store::GcError>),
    #[error("verifying the store failed")]
    Verify(#[source] Box<thaw_store::VerifyError>),
}

macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),*) => {$(
        impl From<$ty> for StoreError {
            fn from(e: $ty) -> StoreError {
                StoreError::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(
    Open(thaw_store::OpenError),
    Remote(thaw_store::RemoteConfigError),
    Gc(thaw_store::GcError),
    Verify(thaw_store::VerifyError)
);

/// The home's store.
pub fn open(home: &Home) -> Result<Store, StoreError> {
    Ok(Store::open(home.root().join("store"))?)
}

/// Runs `f`, a long file-system step of the store (ingest, write-out, gc, ...), from
/// whatever called it: on a multi-threaded tokio runtime through `block_in_place`, so
/// that the worker's other tasks move to other workers meanwhile; on a current-thread
/// runtime (where `block_in_place` panics, and there is no other worker) or outside
/// any runtime, directly. Not `spawn_blocking`: the steps borrow the caller's
/// progress reporter, which is neither `Send` nor `'static`.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Where guest files that came from the store live: `$THAW_HOME/files/<blake3>`.
pub fn files_dir(home: &Home) -> PathBuf {
    home.root().join("files")
}

/// Holds the store against gc while a snapshot's chunks are added and named: the
/// store's one lock ([`Store::lock`]), shared; gc takes it exclusively.
pub fn lock_shared(store: &Store) -> Result<FileLock, StoreError> {
    Ok(store.lock(LockMode::Shared)?)
}

/// The stored record of `tag`, if the store has one.
pub fn get(store: &Store, tag: &str) -> Result<Option<StoredSnapshot>, StoreError> {
    match store.get_manifest(tag) {
        Ok(bytes) => decode(tag, &bytes).map(Some),
        Err(thaw_store::ManifestError::NotFound { .. }) => Ok(None),
        Err(source) => Err(StoreError::Manifest {
            tag: tag.into(),
            source: Box::new(source),
        }),
    }
}

/// The record of `tag` from its bytes (the store's, a remote's, an archive's).
pub(crate) fn decode(tag: &str, bytes: &[u8]) -> Result<StoredSnapshot, StoreError> {
    StoredSnapshot::from_bytes(bytes).map_err(|e| match e {
        DecodeError::Newer { found } => StoreError::NewerRecord {
            tag: tag.into(),
            found,
        },
        DecodeError::Corrupt(why) => StoreError::Corrupt {
            tag: tag.into(),
            why,
        },
    })
}

pub(crate) fn put(store: &Store, tag: &str, s: &StoredSnapshot) -> Result<(), StoreError> {
    let mut s = s.clone();
    if s.stored_bytes.is_none() {
        s.stored_bytes = s.stored_in(store);
    }
    let bytes = s.to_bytes();
    store
        .put_manifest(tag, &bytes)
        .map_err(|source| StoreError::Manifest {
            tag: tag.into(),
            source: Box::new(source),
        })
}

/// Every regular file under `dir` (manifest.json and the `guest/` links excepted),
/// by relative path.
fn files_under(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for sub in ["", "disks"] {
        let d = dir.join(sub);
        if !d.is_dir() {
            continue;
        }
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if !e.file_type()?.is_file() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if sub.is_empty() {
                name
            } else {
                format!("{sub}/{name}")
            };
            if rel != snapshot::MANIFEST_FILE && !rel.starts_with('.') {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Adds the snapshot written in `dir` (with its manifest) to the store and returns
/// its record, not yet named. Files the parent has unchanged (the layers below the
/// top, an unchanged base disk) are taken from the parent's record without reading
/// them again.
pub fn ingest(
    store: &Store,
    dir: &Path,
    parent: Option<(&Snapshot, &StoredSnapshot)>,
    progress: &mut dyn Progress,
) -> Result<StoredSnapshot, StoreError> {
    let mpath = dir.join(snapshot::MANIFEST_FILE);
    let manifest = std::fs::read_to_string(&mpath).at("read", &mpath)?;
    let m: snapshot::Manifest =
        serde_json::from_str(&manifest).map_err(|e| StoreError::Corrupt {
            tag: dir.display().to_string(),
            why: e.to_string(),
        })?;
    let mut files = BTreeMap::new();
    let ingest = |path: &Path, progress: &mut dyn Progress| {
        blocking(|| store.ingest(path, progress)).map_err(|source| StoreError::Ingest {
            path: path.to_owned(),
            source: Box::new(source),
        })
    };
    for rel in files_under(dir).at("list", dir)? {
        let known = parent.and_then(|(p, ps)| {
            let same = p.manifest.files.contains_key(&rel)
                && p.manifest.files.get(&rel) == m.files.get(&rel);
            same.then(|| ps.files.get(&rel).cloned()).flatten()
        });
        let index = match known {
            Some(i) => i,
            None => ingest(&dir.join(&rel), progress)?,
        };
        files.insert(rel, index);
    }
    // The guest's files, through the snapshot's links.
    let local = guestref::resolve(dir, &m.spec);
    let mut guest: Vec<(String, PathBuf)> = local
        .kernel
        .iter()
        .map(|k| ("guest/kernel".to_owned(), k.clone()))
        .collect();
    if let Some(i) = &local.initrd {
        guest.push(("guest/initrd".into(), i.clone()));
    }
    for (i, d) in local.disks.iter().enumerate() {
        guest.push((format!("guest/base{i}"), d.base.clone()));
    }
    for (rel, path) in guest {
        // A base disk the parent had, unchanged (same identity): its index is known.
        let known = parent.and_then(|(p, ps)| {
            let i: usize = rel.strip_prefix("guest/base")?.parse().ok()?;
            (p.manifest.disks.get(i)?.base == m.disks.get(i)?.base)
                .then(|| ps.files.get(&rel).cloned())
                .flatten()
        });
        let index = match known {
            Some(i) => i,
            None => ingest(&path, progress)?,
        };
        files.insert(rel, index);
    }
    Ok(StoredSnapshot {
        manifest,
        files,
        working_set: BTreeMap::new(),
        working_set_pack: None,
        stored_bytes: None,
    })
}

/// Names a snapshot's record in the store (the last step of adding it).
pub fn name(store: &Store, tag: &SnapshotTag, s: &StoredSnapshot) -> Result<(), StoreError> {
    put(store, tag.as_str(), s)
}

/// Adds a published snapshot to the store if it is not there yet, and returns its
/// record (for push and export of snapshots taken before the store, or whose record
/// a crash lost).
pub fn ensure(
    home: &Home,
    tag: &SnapshotTag,
    progress: &mut dyn Progress,
) -> Result<StoredSnapshot, StoreError> {
    let store = open(home)?;
    let _lock = lock_shared(&store)?;
    if let Some(s) = get(&store, tag.as_str())? {
        return Ok(s);
    }
    // Kept once, but killed before its record was named: its files are read through
    // the lazy server.
    if ram_is_served(home, tag) {
        crate::lazy::ensure_server(home).map_err(|e| StoreError::Lazy(Box::new(e)))?;
    }
    let snap = Snapshot::open(home, tag)?;
    let s = ingest(&store, &snap.dir, None, progress)?;
    name(&store, tag, &s)?;
    Ok(s)
}

/// Forgets a snapshot's record (its chunks go at the next gc unless shared).
pub fn forget(home: &Home, tag: &SnapshotTag) -> Result<(), StoreError> {
    let store = open(home)?;
    match store.remove_manifest(tag.as_str()) {
        Ok(()) | Err(thaw_store::ManifestError::NotFound { .. }) => Ok(()),
        Err(source) => Err(StoreError::Manifest {
            tag: tag.to_string(),
            source: Box::new(source),
        }),
    }
}

/// Whether snapshots are served lazily from the store on this host (the default), or
/// written out as plain files (`THAW_LAZY=off`).
pub fn lazy_by_default() -> bool {
    !matches!(
        std::env::var("THAW_LAZY").as_deref(),
        Ok("off" | "0" | "false" | "no")
    )
}

/// Whether the RAM image of `tag` is a link to the lazy server's files (kept once,
/// pulled or evicted).
pub fn ram_is_served(home: &Home, tag: &SnapshotTag) -> bool {
    let dir = home.snapshot_dir(tag);
    [snapshot::MEMORY_FILE, snapshot::RAM_FILE]
        .iter()
        .any(|f| crate::lazy::is_served(home, &dir.join(f)))
}

/// Keeps the RAM image and device state of the snapshot in `dir` (its directory, or
/// the staging directory about to be published) once on disk: each becomes a link to
/// the lazy server's file of the same content, which reads the store's chunks `s`
/// names (ingested already). Disk layers stay: they are hard links shared with the VM
/// that writes on top of them, and clones' layers name them as their backing files.
/// Guest files are links to `files/` already.
pub fn keep_once(home: &Home, dir: &Path, s: &StoredSnapshot) -> Result<(), StoreError> {
    for (rel, index) in &s.files {
        // The top-level files only: `disks/` and `guest/` stay as they are.
        if rel.contains('/') {
            continue;
        }
        let path = dir.join(rel);
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let served =
            crate::lazy::register(home, index, None).map_err(|e| StoreError::Lazy(Box::new(e)))?;
        let link = dir.join(format!(".{rel}.lazy"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&served, &link).at("link", &link)?;
        std::fs::rename(&link, &path).at("replace", &path)?;
    }
    crate::fsutil::fsync_dir(dir)?;
    Ok(())
}

#[cfg(test)]
mod working_set_tests {
    use super::*;

    #[test]
    fn the_device_state_around_the_ram_goes_first() {
        let id = |b: &[u8]| Some(ChunkId::of(b));
        let memory = FileIndex {
            size: 5 * 10,
            chunk_size: 10,
            blake3: String::new(),
            chunks: vec![id(b"head"), id(b"ram1"), id(b"ram2"), None, id(b"tail")],
        };
        let disk = FileIndex {
            size: 10,
            chunk_size: 10,
            blake3: String::new(),
            chunks: vec![id(b"disk")],
        };
        let s = StoredSnapshot {
            manifest: r#"{"memory":{"layout":"mapped","offset":10,"len":30,"state_blake3":""}}"#
                .into(),
            files: [("memory".into(), memory), ("disks/0".into(), disk)].into(),
            working_set: [
                ("memory".into(), vec![0, 1, 2, 3, 4]),
                ("disks/0".into(), vec![0]),
            ]
            .into(),
            ..StoredSnapshot::default()
        };
        let names: Vec<ChunkId> = [b"disk".as_slice(), b"head", b"tail", b"ram1", b"ram2"]
            .iter()
            .map(|b| ChunkId::of(b))
            .collect();
        assert_eq!(s.working_set_chunks(), names);
        // A raw RAM file (no layout in the manifest) keeps its order.
        let raw = StoredSnapshot {
            manifest: "{}".into(),
            ..s.clone()
        };
        assert_eq!(
            raw.working_set_chunks()[1..],
            [names[1], names[3], names[4], names[2]]
        );
    }
}

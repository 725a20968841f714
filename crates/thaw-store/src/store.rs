//! [`Store`]: the local chunk store — ingest, materialize, verify, gc.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

use serde::{Deserialize, Serialize};

use crate::chunk::{self, ChunkDefect, Codec, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::extents::DataExtents;
use crate::fsio::{self, Context, FileLock, IoError, LockMode};
use crate::{ChunkId, Progress};

const FORMAT_FILE: &str = "store.json";
const FORMAT_NAME: &str = "thaw-store";
const FORMAT_VERSION: u32 = 1;

/// Threads that hash, compress and write chunks during an ingest. More than
/// the cores: most of their time is spent waiting in `sync_all`, and
/// concurrent fsyncs share journal commits.
const INGEST_WRITERS: usize = 8;

/// A run of zeros to hash holes with, without reading them.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// What a file became in the store: its size, its chunking and, per chunk, the
/// chunk id or `None` for a chunk that is all zeros (never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIndex {
    /// Length of the file in bytes.
    pub size: u64,
    /// Bytes per chunk; the last chunk holds the remainder.
    pub chunk_size: u32,
    /// BLAKE3 of the whole file, hex.
    pub blake3: String,
    /// One entry per chunk, in file order; `None` is a chunk of zeros.
    pub chunks: Vec<Option<ChunkId>>,
}

impl FileIndex {
    /// The ids of the chunks this file needs stored (zero chunks need none),
    /// each once.
    pub fn chunk_ids(&self) -> impl Iterator<Item = &ChunkId> + '_ {
        let mut seen = HashSet::new();
        self.chunks
            .iter()
            .flatten()
            .filter(move |id| seen.insert(**id))
    }

    /// Checks the fields agree with each other.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(format!("chunk size {} is out of range", self.chunk_size));
        }
        let expected = self.size.div_ceil(u64::from(self.chunk_size));
        if self.chunks.len() as u64 != expected {
            return Err(format!(
                "{} chunk entries for {} bytes in {}-byte chunks (expected {expected})",
                self.chunks.len(),
                self.size,
                self.chunk_size
            ));
        }
        Ok(())
    }

    /// Byte range of chunk `i`.
    pub fn range(&self, i: usize) -> (u64, usize) {
        let start = i as u64 * u64::from(self.chunk_size);
        let len = (self.size - start).min(u64::from(self.chunk_size)) as usize;
        (start, len)
    }
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chunk files re-hashed.
    pub checked: u64,
    /// Chunks whose contents are not what their name says, and why.
    pub damaged: Vec<(ChunkId, String)>,
}

/// What [`Store::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunk files removed.
    pub removed: u64,
    /// Bytes those chunk files and stale temp files held.
    pub freed_bytes: u64,
    /// Temp files left by writers that were killed, removed.
    pub stale_temps_removed: u64,
}

/// [`Store::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the store")]
    Io(#[source] IoError),
    #[error("{} is not a {FORMAT_NAME} version {FORMAT_VERSION} store ({found})", path.display())]
    Format { path: PathBuf, found: String },
}

/// [`Store::ingest`] failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot ingest {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: IoError,
    },
    #[error("cannot ingest {}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("chunk size {chunk_size} is not a multiple of 4096 between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")]
    ChunkSize { chunk_size: u32 },
}

/// A stored chunk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {id} is missing from the store (no file {})", path.display())]
    Missing { id: ChunkId, path: PathBuf },
    #[error("chunk {id} is damaged ({}): {defect}", path.display())]
    Damaged {
        id: ChunkId,
        path: PathBuf,
        defect: ChunkDefect,
    },
}

impl ChunkError {
    /// The chunk in question.
    pub fn id(&self) -> &ChunkId {
        match self {
            ChunkError::Missing { id, .. } | ChunkError::Damaged { id, .. } => id,
        }
    }
}

/// [`Store::materialize`] failed; `dest` was left untouched.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error("the file index for {} is inconsistent: {why}", dest.display())]
    BadIndex { dest: PathBuf, why: String },
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("{} would hash to {actual}, but its index says {expected}", dest.display())]
    WrongFileHash {
        dest: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("cannot materialize {}", dest.display())]
    Io {
        dest: PathBuf,
        #[source]
        source: IoError,
    },
}

/// [`Store::verify`] could not walk the store (damage is reported, not an error).
#[derive(Debug, thiserror::Error)]
#[error("cannot verify the store")]
pub struct VerifyError(#[source] pub IoError);

/// [`Store::gc`] failed; what it removed so far is gone, the rest is intact.
#[derive(Debug, thiserror::Error)]
#[error("cannot collect garbage in the store")]
pub struct GcError(#[source] pub IoError);

#[derive(Debug, Serialize, Deserialize)]
struct StoreFormat {
    format: String,
    version: u32,
}

/// A content-addressed store in a directory. Cheap to clone (it is a path).
///
/// The directory holds `store.json` (format and version), `chunks/<2 hex>/<64
/// hex>` (one zstd frame per chunk), `manifests/<name>.json` and `lock`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store in `dir`, creating it (and `dir`) if it does not exist.
    ///
    /// # Errors
    /// The directory cannot be created or read, or holds a store of another
    /// format or version.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, OpenError> {
        let root = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&root)
            .at("create directory", &root)
            .map_err(OpenError::Io)?;
        let store = Store { root };
        let format_path = store.root.join(FORMAT_FILE);
        match std::fs::File::open(&format_path) {
            Ok(f) => {
                let bytes = fsio::read_capped(f, 4096)
                    .at("read", &format_path)
                    .map_err(OpenError::Io)?;
                let format: Option<StoreFormat> = serde_json::from_slice(&bytes).ok();
                match format {
                    Some(f) if f.format == FORMAT_NAME && f.version == FORMAT_VERSION => {}
                    Some(f) => {
                        return Err(OpenError::Format {
                            path: store.root.clone(),
                            found: format!("format {:?} version {}", f.format, f.version),
                        })
                    }
                    None => {
                        return Err(OpenError::Format {
                            path: store.root.clone(),
                            found: format!("{} is not valid", format_path.display()),
                        })
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let format = StoreFormat {
                    format: FORMAT_NAME.into(),
                    version: FORMAT_VERSION,
                };
                let bytes = serde_json::to_vec_pretty(&format).expect("serializes");
                fsio::write_atomic(&format_path, &bytes).map_err(OpenError::Io)?;
            }
            Err(e) => return Err(OpenError::Io(IoError::new("open", format_path, e))),
        }
        for dir in [store.chunks_dir(), store.manifests_dir()] {
            fsio::ensure_dir(&dir).map_err(OpenError::Io)?;
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where chunk `id` is (or would be) stored.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks_dir().join(&hex[..2]).join(hex)
    }

    /// Whether chunk `id` is stored.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.chunk_path(id).is_file()
    }

    /// Bytes the stored chunks occupy (their compressed lengths).
    ///
    /// # Errors
    /// The chunk directories cannot be read.
    pub fn stored_bytes(&self) -> Result<u64, IoError> {
        Ok(self.chunk_files()?.iter().map(|c| c.len).sum())
    }

    /// Removes chunk `id` if present, for dropping a chunk `verify` reported
    /// damaged so that a pull or import can bring it back. Returns whether it existed.
    ///
    /// # Errors
    /// The file exists but cannot be removed.
    pub fn remove_chunk(&self, id: &ChunkId) -> Result<bool, IoError> {
        let path = self.chunk_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                fsio::fsync_dir(path.parent().expect("chunk paths have a parent"))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(IoError::new("remove", path, e)),
        }
    }

    /// Splits the file at `path` into [`DEFAULT_CHUNK_SIZE`] chunks and stores
    /// those not already stored. See [`Store::ingest_with_chunk_size`].
    pub fn ingest(
        &self,
        path: impl AsRef<Path>,
        progress: &mut dyn Progress,
    ) -> Result<FileIndex, IngestError> {
        self.ingest_with_chunk_size(path, DEFAULT_CHUNK_SIZE, progress)
    }

    /// Splits the file at `path` into `chunk_size` chunks and stores those not
    /// already stored; all-zero chunks are recorded as `None` and not stored.
    ///
    /// Holes (found with `SEEK_DATA`/`SEEK_HOLE`) are not read: a chunk lying
    /// wholly in a hole is a zero chunk, and the whole-file hash is fed zeros
    /// for it. Every chunk the returned index names is durable in the store
    /// when this returns. The file must not change while it is read.
    ///
    /// # Errors
    /// The file cannot be read, a chunk cannot be written, or `chunk_size` is
    /// not a multiple of 4096 within [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
    pub fn ingest_with_chunk_size(
        &self,
        path: impl AsRef<Path>,
        chunk_size: u32,
        progress: &mut dyn Progress,
    ) -> Result<FileIndex, IngestError> {
        let path = path.as_ref();
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
            || !chunk_size.is_multiple_of(4096)
        {
            return Err(IngestError::ChunkSize { chunk_size });
        }
        let io_err = |source| IngestError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).at("open", path).map_err(io_err)?;
        let meta = file.metadata().at("stat", path).map_err(io_err)?;
        if !meta.is_file() {
            return Err(IngestError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let size = meta.len();
        let count = size.div_ceil(u64::from(chunk_size)) as usize;
        let writer = ChunkWriter::new(self).map_err(io_err)?;
        progress.start(&format!("ingest {}", path.display()), size);

        let chunks = Mutex::new(vec![None; count]);
        let failure: Mutex<Option<IoError>> = Mutex::new(None);
        let failed = AtomicBool::new(false);
        let fail = |e: IoError| {
            failure.lock().expect("not poisoned").get_or_insert(e);
            failed.store(true, Ordering::Relaxed);
        };
        let mut hasher = blake3::Hasher::new();

        let (jobs, inbox) = mpsc::sync_channel::<(usize, Vec<u8>)>(INGEST_WRITERS * 2);
        let inbox = Mutex::new(inbox);
        std::thread::scope(|scope| {
            for _ in 0..INGEST_WRITERS {
                scope.spawn(|| {
                    let mut codec = Codec::new();
                    loop {
                        let job = inbox.lock().expect("not poisoned").recv();
                        let Ok((i, data)) = job else { break };
                        // After a failure keep draining, so the reader never blocks.
                        if failed.load(Ordering::Relaxed) {
                            continue;
                        }
                        let id = ChunkId::of(&data);
                        let stored = match writer.existing(&id) {
                            true => Ok(()),
                            false => codec
                                .encode(&data)
                                .at("compress a chunk for", &writer.store.chunk_path(&id))
                                .and_then(|bytes| writer.put(&id, &bytes).map(drop)),
                        };
                        match stored {
                            Ok(()) => chunks.lock().expect("not poisoned")[i] = Some(id),
                            Err(e) => fail(e),
                        }
                    }
                });
            }

            let mut extents = DataExtents::new(&file);
            for i in 0..count {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let start = i as u64 * u64::from(chunk_size);
                let len = (size - start).min(u64::from(chunk_size)) as usize;
                let has_data = match extents.overlaps(start, start + len as u64) {
                    Ok(has_data) => has_data,
                    Err(e) => {
                        fail(IoError::new("seek data in", path, e));
                        break;
                    }
                };
                if has_data {
                    let mut data = vec![0u8; len];
                    if let Err(e) = file.read_exact_at(&mut data, start) {
                        fail(IoError::new("read", path, e));
                        break;
                    }
                    hasher.update(&data);
                    if !chunk::is_zero(&data) && jobs.send((i, data)).is_err() {
                        break;
                    }
                } else {
                    hash_zeros(&mut hasher, len as u64);
                }
                progress.advance(len as u64);
            }
            drop(jobs);
        });

        if let Some(e) = failure.into_inner().expect("not poisoned") {
            return Err(io_err(e));
        }
        writer.finish().map_err(io_err)?;
        progress.finish();
        Ok(FileIndex {
            size,
            chunk_size,
            blake3: hasher.finalize().to_hex().to_string(),
            chunks: chunks.into_inner().expect("not poisoned"),
        })
    }

    /// Writes the file `index` describes to `dest`, sparse: zero chunks stay
    /// holes. Each chunk is checked against its id after decompression, and the
    /// whole file against the index's hash, before the file is renamed to `dest`
    /// (replacing any file there); on error `dest` is untouched.
    ///
    /// # Errors
    /// The index is inconsistent, a chunk is missing or damaged (the error
    /// names it and its file), or `dest` cannot be written.
    pub fn materialize(
        &self,
        index: &FileIndex,
        dest: impl AsRef<Path>,
        progress: &mut dyn Progress,
    ) -> Result<(), MaterializeError> {
        let dest = dest.as_ref();
        index.check().map_err(|why| MaterializeError::BadIndex {
            dest: dest.to_path_buf(),
            why,
        })?;
        let io_err = |source| MaterializeError::Io {
            dest: dest.to_path_buf(),
            source,
        };
        let mut codec = Codec::new();
        let tmp = fsio::temp_path_for(dest);
        let result = (|| {
            let out = File::create(&tmp).at("create", &tmp).map_err(io_err)?;
            // set_len first: every range not written below stays a hole.
            out.set_len(index.size)
                .at("set_len", &tmp)
                .map_err(io_err)?;
            progress.start(&format!("materialize {}", dest.display()), index.size);
            let mut hasher = blake3::Hasher::new();
            let mut stored = Vec::new();
            let mut data = Vec::new();
            for (i, slot) in index.chunks.iter().enumerate() {
                let (start, len) = index.range(i);
                match slot {
                    None => hash_zeros(&mut hasher, len as u64),
                    Some(id) => {
                        self.read_verified(id, Some(len), &mut codec, &mut stored, &mut data)?;
                        out.write_all_at(&data, start)
                            .at("write", &tmp)
                            .map_err(io_err)?;
                        hasher.update(&data);
                    }
                }
                progress.advance(len as u64);
            }
            let actual = hasher.finalize().to_hex().to_string();
            if actual != index.blake3 {
                return Err(MaterializeError::WrongFileHash {
                    dest: dest.to_path_buf(),
                    expected: index.blake3.clone(),
                    actual,
                });
            }
            out.sync_all().at("sync_all", &tmp).map_err(io_err)?;
            std::fs::rename(&tmp, dest)
                .at("rename into place", dest)
                .map_err(io_err)?;
            fsio::fsync_dir(dest.parent().unwrap_or(Path::new("."))).map_err(io_err)?;
            progress.finish();
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The stored (compressed) bytes of chunk `id`, appended to `stored`.
    pub(crate) fn read_stored(&self, id: &ChunkId, stored: &mut Vec<u8>) -> Result<(), ChunkError> {
        let path = self.chunk_path(id);
        match File::open(&path) {
            Ok(f) => fsio::read_capped_into(f, chunk::max_stored_len(), stored),
            Err(e) => Err(e),
        }
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ChunkError::Missing { id: *id, path },
            _ => ChunkError::Damaged {
                id: *id,
                path,
                defect: ChunkDefect::Unreadable(e.to_string()),
            },
        })
    }

    /// The stored bytes of chunk `id`, after checking they decompress to its
    /// contents: what push and export send.
    pub(crate) fn read_stored_verified(&self, id: &ChunkId) -> Result<Vec<u8>, ChunkError> {
        let mut stored = Vec::new();
        self.read_stored(id, &mut stored)?;
        chunk::with_codec(|codec| {
            let mut data = Vec::new();
            codec.decode_verified(id, &stored, MAX_CHUNK_SIZE as usize, None, &mut data)
        })
        .map_err(|defect| ChunkError::Damaged {
            id: *id,
            path: self.chunk_path(id),
            defect,
        })?;
        Ok(stored)
    }

    /// Reads chunk `id` into `data` (its stored form into `stored`), checked
    /// against its id, and against `len` if given.
    pub(crate) fn read_verified(
        &self,
        id: &ChunkId,
        len: Option<usize>,
        codec: &mut Codec,
        stored: &mut Vec<u8>,
        data: &mut Vec<u8>,
    ) -> Result<(), ChunkError> {
        stored.clear();
        self.read_stored(id, stored)?;
        let limit = len.unwrap_or(MAX_CHUNK_SIZE as usize);
        codec
            .decode_verified(id, stored, limit, len, data)
            .map_err(|defect| ChunkError::Damaged {
                id: *id,
                path: self.chunk_path(id),
                defect,
            })
    }

    /// Re-hashes every stored chunk and reports those whose contents are not
    /// what their name says. Temp files are skipped.
    ///
    /// # Errors
    /// The chunk directories cannot be listed (unreadable chunks are reported
    /// as damaged instead).
    pub fn verify(&self, progress: &mut dyn Progress) -> Result<VerifyReport, VerifyError> {
        let files = self.chunk_files().map_err(VerifyError)?;
        progress.start("verify", files.iter().map(|c| c.len).sum());
        let mut codec = Codec::new();
        let mut report = VerifyReport::default();
        let (mut stored, mut data) = (Vec::new(), Vec::new());
        for file in &files {
            report.checked += 1;
            match self.read_verified(&file.id, None, &mut codec, &mut stored, &mut data) {
                Ok(()) => {}
                Err(ChunkError::Damaged { defect, .. }) => {
                    report.damaged.push((file.id, defect.to_string()))
                }
                // Removed while we looked: a concurrent gc, not damage.
                Err(ChunkError::Missing { .. }) => report.checked -= 1,
            }
            progress.advance(file.len);
        }
        progress.finish();
        Ok(report)
    }

    /// Removes every chunk not in `live`, and temp files left by killed writers.
    ///
    /// Each removal is one `unlink`, so a gc killed at any point leaves a valid
    /// store with fewer orphans. It holds the store lock exclusively, so it
    /// waits for ingests, pulls and imports in flight. The caller computes
    /// `live` from every manifest it keeps, and must not write a manifest naming
    /// chunks outside `live` while gc runs.
    ///
    /// # Errors
    /// A directory cannot be listed or a file cannot be removed.
    pub fn gc(&self, live: &HashSet<ChunkId>) -> Result<GcReport, GcError> {
        let held = self.lock(LockMode::Exclusive).map_err(GcError)?;
        self.gc_locked(&held, live)
    }

    /// The store's one lock: held shared by every writer (each ingest, pull or
    /// import takes it for its chunks; a caller that names the chunks in a
    /// manifest afterwards holds it across both, so no gc runs in between) and
    /// exclusive by gc. Shared holders never wait for each other.
    ///
    /// # Errors
    /// The lock file cannot be opened or locked.
    pub fn lock(&self, mode: LockMode) -> Result<FileLock, IoError> {
        FileLock::acquire(&self.lock_path(), mode)
    }

    /// [`Store::gc`] for a caller that already holds the store lock exclusively
    /// (taken with [`Store::lock`]), so that it computes `live` from its
    /// manifests with no writer in between.
    ///
    /// # Errors
    /// As [`Store::gc`].
    pub fn gc_locked(
        &self,
        _held: &FileLock,
        live: &HashSet<ChunkId>,
    ) -> Result<GcReport, GcError> {
        let mut report = GcReport::default();
        let mut touched = Vec::new();
        for file in self.chunk_files().map_err(GcError)? {
            if live.contains(&file.id) {
                continue;
            }
            match std::fs::remove_file(&file.path) {
                Ok(()) => {
                    report.removed += 1;
                    report.freed_bytes += file.len;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(GcError(IoError::new("remove", file.path, e))),
            }
            touched.push(file.path.parent().expect("has a parent").to_path_buf());
        }
        let mut dirs = vec![self.root.clone(), self.manifests_dir()];
        dirs.extend(self.prefix_dirs().map_err(GcError)?);
        for dir in &dirs {
            for entry in read_dir(dir).map_err(GcError)? {
                let name = entry.file_name();
                let path = entry.path();
                if !fsio::is_temp_name(&name.to_string_lossy()) || !fsio::is_stale_temp(&path) {
                    continue;
                }
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                if std::fs::remove_file(&path).is_ok() {
                    report.stale_temps_removed += 1;
                    report.freed_bytes += len;
                    touched.push(dir.clone());
                }
            }
        }
        touched.sort();
        touched.dedup();
        for dir in touched {
            fsio::fsync_dir(&dir).map_err(GcError)?;
        }
        Ok(report)
    }

    pub(crate) fn chunks_dir(&self) -> PathBuf {
        self.root.join("chunks")
    }

    pub(crate) fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// The `chunks/<2 hex>` directories.
    fn prefix_dirs(&self) -> Result<Vec<PathBuf>, IoError> {
        let mut dirs: Vec<PathBuf> = read_dir(&self.chunks_dir())?
            .into_iter()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Every chunk file, in id order. Temp files and stray names are skipped.
    fn chunk_files(&self) -> Result<Vec<ChunkFile>, IoError> {
        let mut files = Vec::new();
        for dir in self.prefix_dirs()? {
            let prefix = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            for entry in read_dir(&dir)? {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let Ok(id) = name.parse::<ChunkId>() else {
                    if !fsio::is_temp_name(&name) {
                        tracing::warn!(path = %entry.path().display(), "stray file in the chunk store");
                    }
                    continue;
                };
                if prefix.as_deref() != Some(&name[..2]) {
                    tracing::warn!(path = %entry.path().display(), "chunk file in the wrong directory");
                    continue;
                }
                let len = match entry.metadata() {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(IoError::new("stat", entry.path(), e)),
                };
                files.push(ChunkFile {
                    id,
                    path: entry.path(),
                    len,
                });
            }
        }
        files.sort_by_key(|f| f.id);
        Ok(files)
    }
}

struct ChunkFile {
    id: ChunkId,
    path: PathBuf,
    len: u64,
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, IoError> {
    std::fs::read_dir(dir)
        .and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
        .at("list", dir)
}

fn hash_zeros(hasher: &mut blake3::Hasher, mut len: u64) {
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// Writes chunks into the store for one operation (ingest, pull, import).
///
/// It holds the store lock shared, so `gc` cannot run meanwhile, and remembers
/// the prefix directory of every chunk the operation relies on, written or
/// found, so that [`ChunkWriter::finish`] can fsync each once: the chunk files
/// are synced one by one before their rename, the directories at the end, and
/// only then does the operation report success.
pub(crate) struct ChunkWriter {
    store: Store,
    _lock: FileLock,
    touched: Mutex<[bool; 256]>,
}

impl ChunkWriter {
    pub(crate) fn new(store: &Store) -> Result<ChunkWriter, IoError> {
        Ok(ChunkWriter {
            store: store.clone(),
            _lock: store.lock(LockMode::Shared)?,
            touched: Mutex::new([false; 256]),
        })
    }

    fn touch(&self, id: &ChunkId) {
        self.touched.lock().expect("not poisoned")[usize::from(id.as_bytes()[0])] = true;
    }

    /// Whether chunk `id` is already stored; the operation will rely on it.
    pub(crate) fn existing(&self, id: &ChunkId) -> bool {
        self.touch(id);
        self.store.has(id)
    }

    /// Stores the already verified (or freshly encoded) `stored` bytes as chunk
    /// `id` unless it is there. Returns whether it wrote.
    pub(crate) fn put(&self, id: &ChunkId, stored: &[u8]) -> Result<bool, IoError> {
        if self.existing(id) {
            return Ok(false);
        }
        let path = self.store.chunk_path(id);
        fsio::ensure_dir(path.parent().expect("chunk paths have a parent"))?;
        fsio::write_atomic_with(&path, |f| f.write_all(stored))?;
        Ok(true)
    }

    /// Makes every chunk the operation relied on durable.
    pub(crate) fn finish(&self) -> Result<(), IoError> {
        let touched = *self.touched.lock().expect("not poisoned");
        for (byte, _) in touched.iter().enumerate().filter(|(_, t)| **t) {
            let dir = self.store.chunks_dir().join(format!("{byte:02x}"));
            if dir.exists() {
                fsio::fsync_dir(&dir)?;
            }
        }
        Ok(())
    }
}

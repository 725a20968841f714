//! The FUSE file system of the lazy server: one read-only file per registered store
//! file, its bytes decompressed from the chunks on demand and checked against their
//! ids. Reads are answered from tokio tasks, so the session's thread never waits for
//! a chunk and many are fetched at once.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, Request,
};
use thaw_store::{ChunkError, ChunkId, ChunkSink, FileIndex, Remote, Store};
use tokio::sync::{oneshot, Notify, OnceCell, Semaphore};

use crate::lazy::{FileRecord, LazyDir};

mod pack;

const ROOT: u64 = 1;
/// The files never change: the kernel may keep their names and attributes.
const TTL: Duration = Duration::from_secs(3600);
/// Chunks fetched from a remote at once (for readers; as many again for prefetches).
const FETCHES: usize = 16;
/// How long a restore on its way to ready may keep fetched chunks from being written
/// (it ends that when it is ready): far longer than a restore takes.
const SINK_HOLD: Duration = Duration::from_secs(10);

/// A registered file.
pub(super) struct Served {
    pub ino: u64,
    pub blake3: String,
    pub index: FileIndex,
    pub remote: Option<Remote>,
}

type Loaded = Result<Arc<Vec<u8>>, String>;

/// Hands a chunk's checked contents from a pack to the task waiting for them.
type Delivery = oneshot::Sender<Arc<Vec<u8>>>;

/// A chunk being loaded (or prefetched and not read yet).
#[derive(Default)]
struct Pending {
    loaded: OnceCell<Loaded>,
    /// Signalled by readers: a prefetch of this chunk still waiting for a prefetch
    /// slot takes a reader's slot instead, so that a reader never waits behind the
    /// queue of prefetches its chunk is in.
    wanted: Notify,
}

/// What the file system and the control socket share.
pub(super) struct Shared {
    pub dir: LazyDir,
    pub store: Store,
    sink: ChunkSink,
    pub rt: tokio::runtime::Handle,
    files: Mutex<Files>,
    remotes: Mutex<HashMap<String, Remote>>,
    /// Chunks being loaded, and prefetched ones not read yet.
    inflight: Mutex<HashMap<ChunkId, Arc<Pending>>>,
    /// Fetches for readers, and for prefetches (the working set): a reader
    /// never queues behind a prefetch.
    fetch_slots: Semaphore,
    prefetch_slots: Semaphore,
    /// Bytes (stored form) fetched from remotes.
    pub fetched_bytes: AtomicU64,
    pub open_handles: AtomicU64,
    /// Open handles per file (inode): a garbage collection keeps the chunks of the
    /// files clones still have open (see [`Shared::open_files`]).
    open_by_ino: Mutex<HashMap<u64, u64>>,
    /// Fills and other work that keeps the server up.
    pub busy: AtomicU64,
    pub last_activity: Mutex<Instant>,
    /// Set (under `last_activity`) once the server has decided to end: it answers no
    /// more control requests, so no client is told it runs while it unmounts.
    closing: std::sync::atomic::AtomicBool,
    /// Per file, the chunks read by a reader (not a prefetch) since it was served.
    touched: Mutex<HashMap<String, BTreeSet<u32>>>,
    /// Puts chunks into the kernel's page cache (see [`Shared::to_page_cache`]).
    notifier: std::sync::OnceLock<fuser::Notifier>,
    /// Per file, the chunks put into the kernel's page cache: a later prefetch leaves
    /// them (as it leaves those a reader read).
    cached: Mutex<HashMap<String, BTreeSet<u32>>>,
}

#[derive(Default)]
struct Files {
    by_ino: HashMap<u64, Arc<Served>>,
    by_hash: HashMap<String, u64>,
    next: u64,
}

impl Shared {
    pub fn new(dir: LazyDir, store: Store, rt: tokio::runtime::Handle) -> Shared {
        let sink = ChunkSink::start(store.clone(), Duration::from_millis(500), |id, e| {
            tracing::warn!(chunk = %id, error = %e, "cannot keep a fetched chunk");
        });
        Shared {
            dir,
            store,
            sink,
            rt,
            files: Mutex::new(Files {
                next: ROOT + 1,
                ..Files::default()
            }),
            remotes: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            fetch_slots: Semaphore::new(FETCHES),
            prefetch_slots: Semaphore::new(FETCHES),
            fetched_bytes: AtomicU64::new(0),
            open_handles: AtomicU64::new(0),
            open_by_ino: Mutex::new(HashMap::new()),
            busy: AtomicU64::new(0),
            last_activity: Mutex::new(Instant::now()),
            closing: std::sync::atomic::AtomicBool::new(false),
            touched: Mutex::new(HashMap::new()),
            notifier: std::sync::OnceLock::new(),
            cached: Mutex::new(HashMap::new()),
        }
    }

    /// Lets the server put chunks into the kernel's page cache (once mounted).
    pub fn set_notifier(&self, notifier: fuser::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Puts chunk `i` of `file` (its checked contents, `data`) into the kernel's page
    /// cache, so that the clones' faults on it are served there instead of each
    /// becoming a request to this server: a prefetched chunk before it is read, and
    /// the whole chunk once a reader has read part of it (the kernel asks for its
    /// readahead's window, which straddles chunks, so a chunk would otherwise be asked
    /// for again, and fetched again while it is not in the store yet). From the
    /// blocking pool: the kernel waits for pages a read in flight has locked, and
    /// that read may be waiting for this server. The kernel refuses it for a file it
    /// does not know yet (nothing has opened it): then readers ask as before.
    ///
    /// A prefetched chunk (`prefetched`, kept in memory for its reader) is let go once
    /// the kernel has it: its reader is the kernel's page cache now, and one that
    /// asks after all (the page was reclaimed) loads it again from the store.
    fn to_page_cache(
        self: &Arc<Self>,
        file: &Served,
        i: usize,
        data: Arc<Vec<u8>>,
        prefetched: Option<ChunkId>,
    ) {
        let Some(notifier) = self.notifier.get().filter(|_| store_in_page_cache()) else {
            return;
        };
        let (start, _) = file.index.range(i);
        let (notifier, ino, this) = (notifier.clone(), file.ino, Arc::clone(self));
        let blake3 = file.blake3.clone();
        self.rt.spawn_blocking(move || match notifier.store(ino, start, &data) {
            Ok(()) => {
                if let Some(id) = prefetched {
                    this.inflight.lock().expect("not poisoned").remove(&id);
                }
                this.cached
                    .lock()
                    .expect("not poisoned")
                    .entry(blake3)
                    .or_default()
                    .insert(i as u32);
            }
            Err(e) => {
                tracing::debug!(ino, chunk = i, error = %e, "cannot put a chunk in the page cache");
            }
        });
    }

    /// A restore prefetching its working set is on its way to ready: the chunks it
    /// fetches wait in memory before they are written to the store (see
    /// [`thaw_store::ChunkSink`]), until [`Shared::release_writes`] or [`SINK_HOLD`].
    pub fn hold_writes(&self) {
        self.sink.hold(SINK_HOLD);
    }

    /// The restore is ready: the held chunks are written.
    pub fn release_writes(&self) {
        self.sink.release();
    }

    /// [`Shared::release_writes`], returning once the store has them (a fill, which
    /// fetches what the store lacks, starts).
    pub fn release_writes_and_wait(&self) {
        self.sink.release_and_wait();
    }

    pub fn touch(&self) {
        *self.last_activity.lock().expect("not poisoned") = Instant::now();
    }

    /// Counts a control request as activity, unless the server is closing (then
    /// `false`: the request must not be answered as if it would keep serving).
    pub fn touch_unless_closing(&self) -> bool {
        let mut last = self.last_activity.lock().expect("not poisoned");
        if self.closing.load(Ordering::SeqCst) {
            return false;
        }
        *last = Instant::now();
        true
    }

    /// Decides to close when nothing is open, nothing is busy and nothing happened
    /// for `limit`. Decided under the activity lock: a request answered before this
    /// counted as activity, and every one after is refused.
    pub fn close_if_idle(&self, limit: Duration) -> bool {
        let last = self.last_activity.lock().expect("not poisoned");
        let quiet =
            self.open_handles.load(Ordering::SeqCst) == 0 && self.busy.load(Ordering::SeqCst) == 0;
        if quiet && last.elapsed() >= limit {
            self.closing.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// The client for the remote `url` (made on first use).
    pub fn remote(&self, url: &str) -> Result<Remote, String> {
        let mut remotes = self.remotes.lock().expect("not poisoned");
        if let Some(r) = remotes.get(url) {
            return Ok(r.clone());
        }
        let r = Remote::from_env(url).map_err(|e| crate::one_line(&e))?;
        remotes.insert(url.to_owned(), r.clone());
        Ok(r)
    }

    /// The file named `blake3`, from its registration (read on first use).
    pub fn file(&self, blake3: &str) -> Option<Arc<Served>> {
        if blake3.len() != 64 || !blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let known = self
            .files
            .lock()
            .expect("not poisoned")
            .by_hash
            .get(blake3)
            .copied();
        if let Some(ino) = known {
            return self.by_ino(ino);
        }
        let bytes = std::fs::read(self.dir.record(blake3)).ok()?;
        let record: FileRecord = serde_json::from_slice(&bytes).ok()?;
        if record.index.blake3 != blake3 || record.index.check().is_err() {
            return None;
        }
        let remote = match record.remote.as_deref().map(|u| self.remote(u)) {
            Some(Ok(r)) => Some(r),
            Some(Err(why)) => {
                tracing::warn!(%why, "a registered file's remote cannot be used");
                None
            }
            None => None,
        };
        let mut files = self.files.lock().expect("not poisoned");
        if let Some(ino) = files.by_hash.get(blake3) {
            return files.by_ino.get(ino).cloned();
        }
        let ino = files.next;
        files.next += 1;
        let served = Arc::new(Served {
            ino,
            blake3: blake3.to_owned(),
            index: record.index,
            remote,
        });
        files.by_hash.insert(blake3.to_owned(), ino);
        files.by_ino.insert(ino, Arc::clone(&served));
        Some(served)
    }

    /// The files (BLAKE3) some reader has open now.
    pub fn open_files(&self) -> Vec<String> {
        let open: Vec<u64> = self
            .open_by_ino
            .lock()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        open.into_iter()
            .filter_map(|ino| self.by_ino(ino).map(|f| f.blake3.clone()))
            .collect()
    }

    fn by_ino(&self, ino: u64) -> Option<Arc<Served>> {
        self.files
            .lock()
            .expect("not poisoned")
            .by_ino
            .get(&ino)
            .cloned()
    }

    /// Chunk `i` of `file`, checked; a reader's read drops it from memory afterwards
    /// (the page cache keeps it), a prefetch leaves it there for the reader.
    pub async fn chunk(self: &Arc<Self>, file: &Arc<Served>, i: usize, read: bool) -> Loaded {
        let (_, len) = file.index.range(i);
        let Some(id) = file.index.chunks[i] else {
            return Ok(Arc::new(vec![0; len]));
        };
        let pending = Arc::clone(
            self.inflight
                .lock()
                .expect("not poisoned")
                .entry(id)
                .or_default(),
        );
        if read {
            pending.wanted.notify_one();
        }
        let loaded = pending
            .loaded
            .get_or_init(|| self.load(file, id, len, read, &pending.wanted))
            .await
            .clone();
        if read {
            self.inflight.lock().expect("not poisoned").remove(&id);
        } else if let Ok(data) = &loaded {
            self.to_page_cache(file, i, Arc::clone(data), Some(id));
        }
        loaded
    }

    async fn load(
        &self,
        file: &Served,
        id: ChunkId,
        len: usize,
        read: bool,
        wanted: &Notify,
    ) -> Loaded {
        let what = |e: String| format!("chunk {id} of {}: {e}", file.blake3);
        if self.store.has(&id) {
            let store = self.store.clone();
            let read = tokio::task::spawn_blocking(move || store.read_chunk(&id, Some(len)))
                .await
                .map_err(|e| what(e.to_string()))?;
            match read {
                Ok(data) => return Ok(Arc::new(data)),
                // Removed meanwhile (a gc), or damaged: the remote may have it.
                Err(e @ ChunkError::Damaged { .. }) if file.remote.is_none() => {
                    return Err(what(crate::one_line(&e)))
                }
                Err(_) => {}
            }
        }
        let Some(remote) = &file.remote else {
            return Err(what(
                "not in the store, and no remote to fetch it from".into(),
            ));
        };
        let t0 = Instant::now();
        let _slot = if read {
            self.fetch_slots.acquire().await
        } else {
            tokio::select! {
                slot = self.prefetch_slots.acquire() => slot,
                () = wanted.notified() => self.fetch_slots.acquire().await,
            }
        }
        .expect("never closed");
        let waited = t0.elapsed();
        let fetched = remote
            .fetch_chunk(&id, Some(len))
            .await
            .map_err(|e| crate::one_line(&e))?;
        tracing::debug!(
            chunk = %id,
            file = %file.blake3,
            read,
            waited_ms = waited.as_secs_f64() * 1e3,
            fetch_ms = (t0.elapsed() - waited).as_secs_f64() * 1e3,
            "fetched"
        );
        self.fetched_bytes
            .fetch_add(fetched.stored.len() as u64, Ordering::Relaxed);
        self.sink.keep(id, fetched.stored);
        Ok(Arc::new(fetched.data))
    }

    /// Bytes `offset..offset+size` of `file` (fewer at its end).
    async fn read(self: &Arc<Self>, file: &Arc<Served>, offset: u64, size: u32) -> Loaded {
        let end = (offset + u64::from(size)).min(file.index.size);
        if offset >= end {
            return Ok(Arc::new(Vec::new()));
        }
        let cs = u64::from(file.index.chunk_size);
        let (first, last) = ((offset / cs) as usize, ((end - 1) / cs) as usize);
        self.touched
            .lock()
            .expect("not poisoned")
            .entry(file.blake3.clone())
            .or_default()
            .extend((first..=last).map(|i| i as u32));
        let chunks =
            futures::future::join_all((first..=last).map(|i| self.chunk(file, i, true))).await;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (i, c) in (first..=last).zip(chunks) {
            let c = c?;
            let start = i as u64 * cs;
            // Only part of it asked for: the rest goes to the page cache (a zero chunk
            // costs nothing to serve again).
            let whole = offset <= start && start + c.len() as u64 <= end;
            if !whole && file.index.chunks[i].is_some() {
                self.to_page_cache(file, i, Arc::clone(&c), None);
            }
            let from = offset.max(start) - start;
            let to = end.min(start + c.len() as u64) - start;
            out.extend_from_slice(&c[from as usize..to as usize]);
        }
        Ok(Arc::new(out))
    }

    /// Chunks held in memory: being loaded, or prefetched and neither read nor in the
    /// kernel's page cache yet.
    pub fn held_chunks(&self) -> u64 {
        self.inflight.lock().expect("not poisoned").len() as u64
    }

    /// Of `chunks` of `file`, those neither read by a reader nor put into the kernel's
    /// page cache since the server started: what a prefetch loads.
    pub fn not_cached(&self, file: &str, chunks: &[u32]) -> Vec<u32> {
        let touched = self.touched.lock().expect("not poisoned");
        let cached = self.cached.lock().expect("not poisoned");
        let (read, pushed) = (touched.get(file), cached.get(file));
        chunks
            .iter()
            .copied()
            .filter(|i| !read.is_some_and(|r| r.contains(i)))
            .filter(|i| !pushed.is_some_and(|p| p.contains(i)))
            .collect()
    }

    /// The chunks readers read of each of `files`.
    pub fn touched(&self, files: &[String]) -> HashMap<String, Vec<u32>> {
        let touched = self.touched.lock().expect("not poisoned");
        files
            .iter()
            .map(|f| {
                let set = touched.get(f).map(|s| s.iter().copied().collect());
                (f.clone(), set.unwrap_or_default())
            })
            .collect()
    }

    /// Keeps why the reads of process `pid` (a thread id) failed, for `thaw ls`.
    fn failed(&self, pid: u32, why: &str) {
        tracing::error!(pid, %why, "a read failed");
        let tgid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Tgid:").map(|v| v.trim().parse().ok()))
                    .flatten()
            })
            .unwrap_or(pid);
        let path = self.dir.failure(tgid);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(path, format!("{why}\n"));
    }
}

/// Where SEEK_DATA or SEEK_HOLE from `offset` lands in a file made of `index`'s
/// chunks, a zero chunk being a hole (lseek(2): ENXIO past the end, or when no data
/// follows; the end of the file is a hole).
pub(super) fn seek(index: &FileIndex, offset: u64, whence: i32) -> Result<u64, libc::c_int> {
    if offset >= index.size {
        return Err(libc::ENXIO);
    }
    let cs = u64::from(index.chunk_size);
    let first = (offset / cs) as usize;
    let found = |want_data: bool| {
        index.chunks[first..]
            .iter()
            .position(|c| c.is_some() == want_data)
            .map(|n| first + n)
    };
    // The kernel asks only these two (SEEK_SET, SEEK_CUR and SEEK_END it answers itself).
    match whence {
        libc::SEEK_DATA => found(true)
            .map(|i| offset.max(i as u64 * cs))
            .ok_or(libc::ENXIO),
        libc::SEEK_HOLE => Ok(found(false).map_or(index.size, |i| offset.max(i as u64 * cs))),
        _ => Err(libc::EINVAL),
    }
}

/// Whether chunks go to the kernel's page cache ahead of faults (`THAW_LAZY_STORE=off`
/// turns it off, to measure both).
fn store_in_page_cache() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("THAW_LAZY_STORE").as_deref(),
            Ok("off" | "0" | "no")
        )
    })
}

fn readahead() -> u32 {
    std::env::var("THAW_LAZY_READAHEAD")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64 * 1024)
}

pub(super) struct LazyFs {
    pub shared: Arc<Shared>,
}

fn attr(ino: u64, size: u64, kind: FileType) -> FileAttr {
    // Private like everything else in the home (the mount is read-only: writes fail
    // with EROFS whatever the mode says).
    let (perm, nlink) = match kind {
        FileType::Directory => (0o700, 2),
        _ => (0o600, 1),
    };
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm,
        nlink,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        rdev: 0,
        blksize: 64 * 1024,
        flags: 0,
    }
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // One chunk: a fault then fetches about the chunk it needs, not its neighbours
        // too (what a guest touches is scattered; every byte from a remote counts).
        let _ = config.set_max_readahead(readahead());
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        self.shared.touch();
        match (parent, name.to_str().and_then(|n| self.shared.file(n))) {
            (ROOT, Some(f)) => {
                reply.entry(&TTL, &attr(f.ino, f.index.size, FileType::RegularFile), 0)
            }
            _ => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        if ino == ROOT {
            return reply.attr(&TTL, &attr(ROOT, 0, FileType::Directory));
        }
        match self.shared.by_ino(ino) {
            Some(f) => reply.attr(&TTL, &attr(ino, f.index.size, FileType::RegularFile)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        self.shared.touch();
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        if self.shared.by_ino(ino).is_none() {
            return reply.error(libc::ENOENT);
        }
        self.shared.open_handles.fetch_add(1, Ordering::SeqCst);
        *self
            .shared
            .open_by_ino
            .lock()
            .expect("not poisoned")
            .entry(ino)
            .or_default() += 1;
        reply.opened(0, fuser::consts::FOPEN_KEEP_CACHE);
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.touch();
        self.shared.open_handles.fetch_sub(1, Ordering::SeqCst);
        let mut open = self.shared.open_by_ino.lock().expect("not poisoned");
        if let Some(n) = open.get_mut(&ino) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&ino);
            }
        }
        drop(open);
        reply.ok();
    }

    fn read(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(file) = self.shared.by_ino(ino) else {
            return reply.error(libc::ENOENT);
        };
        let (shared, pid) = (Arc::clone(&self.shared), req.pid());
        let offset = u64::try_from(offset).unwrap_or(0);
        self.shared.rt.spawn(async move {
            match shared.read(&file, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(why) => {
                    shared.failed(pid, &why);
                    reply.error(libc::EIO);
                }
            }
        });
    }

    /// SEEK_DATA and SEEK_HOLE: a zero chunk is a hole, so that what skips holes
    /// (the state hash of a snapshot's check) reads no zeros through this server.
    fn lseek(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        let Some(file) = self.shared.by_ino(ino) else {
            return reply.error(libc::ENOENT);
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        match seek(&file.index, offset, whence) {
            Ok(at) => reply.offset(at as i64),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(libc::ENOTDIR);
        }
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ROOT, FileType::Directory, ".".into()),
            (ROOT, FileType::Directory, "..".into()),
        ];
        {
            let files = self.shared.files.lock().expect("not poisoned");
            let mut known: Vec<_> = files.by_hash.iter().collect();
            known.sort();
            entries.extend(
                known
                    .into_iter()
                    .map(|(h, ino)| (*ino, FileType::RegularFile, h.clone())),
            );
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of 10 bytes: data, zeros, zeros, data, and a last one of 5 bytes of zeros.
    fn index() -> FileIndex {
        let d = Some(ChunkId::of(b"data"));
        FileIndex {
            size: 45,
            chunk_size: 10,
            blake3: String::new(),
            chunks: vec![d, None, None, d, None],
        }
    }

    #[test]
    fn zero_chunks_are_holes_to_seek_data_and_seek_hole() {
        let i = index();
        assert_eq!(seek(&i, 0, libc::SEEK_DATA), Ok(0));
        assert_eq!(seek(&i, 5, libc::SEEK_DATA), Ok(5));
        assert_eq!(seek(&i, 10, libc::SEEK_DATA), Ok(30));
        assert_eq!(seek(&i, 25, libc::SEEK_DATA), Ok(30));
        assert_eq!(seek(&i, 39, libc::SEEK_DATA), Ok(39));
        assert_eq!(seek(&i, 40, libc::SEEK_DATA), Err(libc::ENXIO));
        assert_eq!(seek(&i, 0, libc::SEEK_HOLE), Ok(10));
        assert_eq!(seek(&i, 12, libc::SEEK_HOLE), Ok(12));
        assert_eq!(seek(&i, 31, libc::SEEK_HOLE), Ok(40));
        assert_eq!(seek(&i, 45, libc::SEEK_HOLE), Err(libc::ENXIO));
        assert_eq!(seek(&i, 45, libc::SEEK_DATA), Err(libc::ENXIO));
        // A file that ends in data: its end is the hole.
        let mut j = index();
        j.chunks[4] = Some(ChunkId::of(b"end"));
        assert_eq!(seek(&j, 31, libc::SEEK_HOLE), Ok(45));
    }
}

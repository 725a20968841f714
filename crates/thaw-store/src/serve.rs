//! Single chunks on demand, for a file served lazily from the store (thaw's `lazy`
//! module): read one chunk from the local store, or fetch it from a remote, always
//! checked against its id before a byte of it is handed out; and a [`ChunkSink`] that
//! keeps fetched chunks in the local store in the background.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::chunk::{self, ChunkDefect, MAX_CHUNK_SIZE};
use crate::fsio::IoError;
use crate::id::ChunkId;
use crate::remote::{PullError, Remote};
use crate::store::{ChunkError, ChunkWriter, Store};

impl Store {
    /// Chunk `id`'s contents, checked against its id (and against `len` when given).
    ///
    /// # Errors
    /// The chunk is not in the store, or its file is damaged (the error names it).
    pub fn read_chunk(&self, id: &ChunkId, len: Option<usize>) -> Result<Vec<u8>, ChunkError> {
        let mut stored = Vec::new();
        let mut data = Vec::new();
        chunk::with_codec(|codec| self.read_verified(id, len, codec, &mut stored, &mut data))?;
        Ok(data)
    }
}

/// A chunk fetched from a remote and checked: its contents, and its stored form (to
/// keep in the local store).
#[derive(Debug)]
pub struct Fetched {
    pub data: Vec<u8>,
    pub stored: Vec<u8>,
}

impl Remote {
    /// The stored size of every chunk on the remote (one listing).
    ///
    /// # Errors
    /// The listing fails.
    pub async fn chunk_sizes(
        &self,
    ) -> Result<std::collections::HashMap<ChunkId, u64>, crate::remote::RemoteError> {
        self.list_chunks().await
    }

    /// Fetches chunk `id`, checks it decompresses to `len` bytes (when given) that hash
    /// to `id`, and returns it. Nothing is written.
    ///
    /// # Errors
    /// The chunk is not on the remote, it is damaged (a different or corrupt object:
    /// the error names the chunk and its key), or the request fails or times out.
    pub async fn fetch_chunk(
        &self,
        id: &ChunkId,
        len: Option<usize>,
    ) -> Result<Fetched, PullError> {
        let key = self.chunk_key(id);
        let describe = self.describe(&key);
        let stored = self
            .get_capped(&key, chunk::max_stored_len())
            .await
            .map_err(|source| PullError::Remote {
                url: self.url().to_owned(),
                source,
            })?
            .ok_or_else(|| PullError::ChunkMissing {
                id: *id,
                url: self.url().to_owned(),
                key: describe.clone(),
            })?;
        let id = *id;
        let (stored, data) = tokio::task::spawn_blocking(move || {
            let mut data = Vec::new();
            let limit = len.unwrap_or(MAX_CHUNK_SIZE as usize);
            chunk::with_codec(|codec| codec.decode_verified(&id, &stored, limit, len, &mut data))
                .map(|()| (stored, data))
        })
        .await
        .unwrap_or_else(|e| Err(ChunkDefect::Unreadable(e.to_string())))
        .map_err(|defect| PullError::ChunkDamaged {
            id,
            key: describe,
            defect,
        })?;
        Ok(Fetched { data, stored })
    }
}

/// Keeps chunks in the local store from a thread of its own, so that serving a chunk
/// never waits for a disk sync. It holds the store's shared lock (which a gc waits
/// for) only while it has chunks to write, and makes them durable (directory fsyncs)
/// once it has nothing more to do for `settle`.
///
/// While a restore is on its way to ready it can be told to [`hold`](ChunkSink::hold)
/// its writes: the chunks wait in memory (up to [`HOLD_BYTES`]) until it is
/// [`release`](ChunkSink::release)d or the hold runs out, so that writing hundreds of
/// chunk files does not take the cores the restoring QEMU needs. Until written, a chunk
/// is only not cached: one asked for meanwhile is fetched again.
pub struct ChunkSink {
    tx: mpsc::Sender<SinkMessage>,
}

/// Most a held sink keeps in memory (stored bytes); past it, it writes as it goes.
pub const HOLD_BYTES: usize = 256 << 20;

enum SinkMessage {
    Keep(ChunkId, Vec<u8>),
    Hold(Instant),
    /// Write what is held; then say so on the sender, if one is given.
    Release(Option<mpsc::Sender<()>>),
}

/// The sink's thread: what it writes with, and what it holds.
struct SinkState<F> {
    store: Store,
    writer: Option<ChunkWriter>,
    held: Vec<(ChunkId, Vec<u8>)>,
    held_bytes: usize,
    hold_until: Option<Instant>,
    failed: F,
}

impl<F: Fn(ChunkId, IoError)> SinkState<F> {
    fn put(&mut self, id: ChunkId, stored: &[u8]) {
        if self.writer.is_none() {
            match ChunkWriter::new(&self.store) {
                Ok(w) => self.writer = Some(w),
                Err(e) => return (self.failed)(id, e),
            }
        }
        let w = self.writer.as_ref().expect("made above");
        if let Err(e) = w.put(&id, stored) {
            (self.failed)(id, e);
        }
    }

    fn keep(&mut self, id: ChunkId, stored: Vec<u8>) {
        if self.hold_until.is_some() && self.held_bytes + stored.len() <= HOLD_BYTES {
            self.held_bytes += stored.len();
            self.held.push((id, stored));
        } else {
            self.put(id, &stored);
        }
    }

    fn release(&mut self) {
        self.hold_until = None;
        self.held_bytes = 0;
        for (id, stored) in std::mem::take(&mut self.held) {
            self.put(id, &stored);
        }
    }

    fn sync(&mut self) {
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.finish() {
                tracing::warn!(error = %e, "cannot sync kept chunks");
            }
        }
    }

    fn run(mut self, rx: mpsc::Receiver<SinkMessage>, settle: Duration) {
        use mpsc::RecvTimeoutError::{Disconnected, Timeout};
        loop {
            let wait = match (self.hold_until, &self.writer) {
                (Some(until), _) => Some(until.saturating_duration_since(Instant::now())),
                (None, Some(_)) => Some(settle),
                (None, None) => None,
            };
            let next = match wait {
                Some(d) => rx.recv_timeout(d),
                None => rx.recv().map_err(|_| Disconnected),
            };
            match next {
                Ok(SinkMessage::Keep(id, stored)) => self.keep(id, stored),
                Ok(SinkMessage::Hold(until)) => {
                    self.hold_until = Some(self.hold_until.map_or(until, |u| u.max(until)));
                }
                Ok(SinkMessage::Release(done)) => {
                    self.release();
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                // The hold ran out: write what it kept (and sync once settled).
                Err(Timeout) if self.hold_until.is_some() => self.release(),
                Err(Timeout) => self.sync(),
                Err(Disconnected) => {
                    self.release();
                    self.sync();
                    return;
                }
            }
        }
    }
}

impl ChunkSink {
    /// Starts the sink's thread; `failed` is told of every chunk it could not keep.
    pub fn start(
        store: Store,
        settle: Duration,
        failed: impl Fn(ChunkId, IoError) + Send + 'static,
    ) -> ChunkSink {
        let (tx, rx) = mpsc::channel::<SinkMessage>();
        let state = SinkState {
            store,
            writer: None,
            held: Vec::new(),
            held_bytes: 0,
            hold_until: None,
            failed,
        };
        std::thread::Builder::new()
            .name("chunk-sink".into())
            .spawn(move || state.run(rx, settle))
            .expect("spawn the chunk sink");
        ChunkSink { tx }
    }

    /// Keeps the chunks given from now on in memory for at most `longest` (or until
    /// [`ChunkSink::release`]) before writing them.
    pub fn hold(&self, longest: Duration) {
        let _ = self.tx.send(SinkMessage::Hold(Instant::now() + longest));
    }

    /// Writes the chunks a hold kept, and those given from now on, as they come.
    pub fn release(&self) {
        let _ = self.tx.send(SinkMessage::Release(None));
    }

    /// [`ChunkSink::release`], returning once the held chunks are written (not synced):
    /// from then on the store has them.
    pub fn release_and_wait(&self) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(SinkMessage::Release(Some(done))).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Keeps `stored` (already checked) as chunk `id`, soon.
    pub fn keep(&self, id: ChunkId, stored: Vec<u8>) {
        let _ = self.tx.send(SinkMessage::Keep(id, stored));
    }
}

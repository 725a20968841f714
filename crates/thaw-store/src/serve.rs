//! Single chunks on demand, for a file served lazily from the store (thaw's `lazy`
//! module): read one chunk from the local store, or fetch it from a remote, always
//! checked against its id before a byte of it is handed out; and a [`ChunkSink`] that
//! keeps fetched chunks in the local store in the background.

use std::sync::mpsc;
use std::time::Duration;

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
pub struct ChunkSink {
    tx: mpsc::Sender<(ChunkId, Vec<u8>)>,
}

impl ChunkSink {
    /// Starts the sink's thread; `failed` is told of every chunk it could not keep.
    pub fn start(
        store: Store,
        settle: Duration,
        failed: impl Fn(ChunkId, IoError) + Send + 'static,
    ) -> ChunkSink {
        let (tx, rx) = mpsc::channel::<(ChunkId, Vec<u8>)>();
        std::thread::Builder::new()
            .name("chunk-sink".into())
            .spawn(move || {
                let mut writer: Option<ChunkWriter> = None;
                loop {
                    let next = match writer {
                        Some(_) => rx.recv_timeout(settle),
                        None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                    };
                    match next {
                        Ok((id, stored)) => {
                            if writer.is_none() {
                                match ChunkWriter::new(&store) {
                                    Ok(w) => writer = Some(w),
                                    Err(e) => {
                                        failed(id, e);
                                        continue;
                                    }
                                }
                            }
                            let w = writer.as_ref().expect("made above");
                            if let Err(e) = w.put(&id, &stored) {
                                failed(id, e);
                            }
                        }
                        Err(timeout_or_closed) => {
                            if let Some(w) = writer.take() {
                                if let Err(e) = w.finish() {
                                    tracing::warn!(error = %e, "cannot sync kept chunks");
                                }
                            }
                            if timeout_or_closed == mpsc::RecvTimeoutError::Disconnected {
                                return;
                            }
                        }
                    }
                }
            })
            .expect("spawn the chunk sink");
        ChunkSink { tx }
    }

    /// Keeps `stored` (already checked) as chunk `id`, soon.
    pub fn keep(&self, id: ChunkId, stored: Vec<u8>) {
        let _ = self.tx.send((id, stored));
    }
}

//! The working set's pack: the chunks a restore reads before its clone is ready,
//! fetched from the remote with one request (see `thaw_store::pack`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use thaw_store::ChunkId;
use tokio::sync::oneshot;

use super::{Delivery, Served, Shared};

impl Shared {
    /// Prefetches the chunks of `pack` the store lacks, with one request to the
    /// remote of `files` (whose chunks they are): each is served as soon as its bytes
    /// have arrived and it is checked against its id. One the pack cannot give (it is
    /// missing, short, damaged, or the request fails) is fetched on its own, as
    /// without a pack.
    pub fn prefetch_pack(self: &Arc<Self>, pack: thaw_store::Pack, files: &[Arc<Served>]) {
        let Some(remote) = files.iter().find_map(|f| f.remote.clone()) else {
            return;
        };
        // The request goes out first; what arrives waits in `arrived` while the chunks
        // are registered as on their way (readers then wait for the pack's copy).
        let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
        let fetch = {
            let pack = pack.clone();
            tokio::spawn(async move {
                remote
                    .fetch_pack(&pack, |entry, stored| {
                        let _ = arrived_tx.send((entry, stored));
                    })
                    .await
            })
        };
        let in_pack: HashSet<ChunkId> = pack.chunks.iter().map(|c| c.id).collect();
        let mut whose: HashMap<ChunkId, (Arc<Served>, usize)> = HashMap::new();
        for f in files {
            for (i, id) in f.index.chunks.iter().enumerate() {
                if let Some(id) = id.filter(|id| in_pack.contains(id)) {
                    whose.entry(id).or_insert_with(|| (Arc::clone(f), i));
                }
            }
        }
        // Per chunk: where its contents go, and its length.
        let mut waiting: HashMap<ChunkId, (Delivery, usize)> = HashMap::new();
        for entry in &pack.chunks {
            let Some((file, i)) = whose.get(&entry.id).cloned() else {
                continue;
            };
            if waiting.contains_key(&entry.id) || self.store.has(&entry.id) {
                continue;
            }
            let pending = Arc::clone(
                self.inflight
                    .lock()
                    .expect("not poisoned")
                    .entry(entry.id)
                    .or_default(),
            );
            if pending.loaded.initialized() {
                continue;
            }
            let (_, len) = file.index.range(i);
            let (tx, rx) = oneshot::channel();
            waiting.insert(entry.id, (tx, len));
            let (this, id) = (Arc::clone(self), entry.id);
            tokio::spawn(async move {
                let p = Arc::clone(&pending);
                pending
                    .loaded
                    .get_or_init(|| async move {
                        match rx.await {
                            Ok(data) => Ok(data),
                            Err(_) => this.load(&file, id, len, false, &p.wanted).await,
                        }
                    })
                    .await;
            });
        }
        if waiting.is_empty() {
            fetch.abort();
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let t0 = Instant::now();
            let chunks = waiting.len();
            while let Some((entry, stored)) = arrived.recv().await {
                let Some((tx, len)) = waiting.remove(&entry.id) else {
                    continue;
                };
                this.fetched_bytes
                    .fetch_add(stored.len() as u64, Ordering::Relaxed);
                let this = Arc::clone(&this);
                tokio::task::spawn_blocking(move || {
                    match thaw_store::unpack(&entry, &stored, Some(len)) {
                        Ok(data) => {
                            this.sink.keep(entry.id, stored);
                            let _ = tx.send(Arc::new(data));
                        }
                        // Dropping `tx` makes its waiter fetch the chunk alone.
                        Err(defect) => tracing::warn!(
                            chunk = %entry.id,
                            %defect,
                            "a chunk of the working set's pack is damaged: fetching it alone"
                        ),
                    }
                });
            }
            // The chunks still waiting (dropped with `waiting`) are fetched alone.
            match fetch.await.expect("the pack's fetch does not panic") {
                Ok(()) => tracing::debug!(
                    pack = %pack.name,
                    chunks,
                    ms = t0.elapsed().as_secs_f64() * 1e3,
                    "fetched the working set's pack"
                ),
                Err(e) => tracing::warn!(
                    pack = %pack.name,
                    error = %crate::one_line(&e),
                    "the working set's pack failed: fetching its chunks one by one"
                ),
            }
        });
    }
}

//! Packs: the chunks a snapshot's restore reads before its clone is ready (its working
//! set), kept once more in the bucket as one object, `<prefix>/packs/<64 hex>`, their
//! stored forms one after another. A host that has never seen the snapshot fetches
//! them with one request instead of one per chunk (hundreds of requests, each a
//! connection, were most of a cold restore's time). The pack is only a faster way to
//! the same bytes: each chunk in it is checked against its id before it is used, and
//! whatever a pack cannot give (missing, short, damaged) is fetched chunk by chunk.
//!
//! A pack is named by the BLAKE3 of its chunks' ids in order, so the same working set
//! pushed twice is one object.

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::chunk::{self, ChunkDefect, MAX_CHUNK_SIZE};
use crate::id::ChunkId;
use crate::remote::{Remote, RemoteError};
use crate::store::{ChunkError, Store};

/// At most this many chunks in a pack (a 4 GiB image has 65,536).
pub const MAX_PACK_CHUNKS: usize = 1 << 20;
/// At most this many bytes in a pack: a working set larger than that has its first
/// chunks packed (the device state first), the rest fetched alone.
pub const MAX_PACK_BYTES: u64 = 256 << 20;

/// A chunk of a pack: its id and its stored (compressed) length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    pub id: ChunkId,
    pub len: u32,
}

/// A pack: its name and its chunks in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pack {
    pub name: String,
    pub chunks: Vec<PackEntry>,
}

impl Pack {
    /// The name of a pack of `ids`, in this order.
    pub fn name_of<'a>(ids: impl IntoIterator<Item = &'a ChunkId>) -> String {
        let mut h = blake3::Hasher::new();
        for id in ids {
            h.update(id.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    /// Its size in the bucket.
    pub fn total(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// Checks a pack read from an untrusted record: a name that matches its chunks,
    /// and lengths a stored chunk can have.
    ///
    /// # Errors
    /// What is wrong, in a few words.
    pub fn check(&self) -> Result<(), String> {
        if self.chunks.is_empty() || self.chunks.len() > MAX_PACK_CHUNKS {
            return Err(format!("a pack of {} chunks", self.chunks.len()));
        }
        if self.total() > MAX_PACK_BYTES {
            return Err(format!("a pack of {} bytes", self.total()));
        }
        if self.name != Pack::name_of(self.chunks.iter().map(|c| &c.id)) {
            return Err(format!("pack {} does not match its chunks", self.name));
        }
        let max = chunk::max_stored_len();
        if let Some(c) = self
            .chunks
            .iter()
            .find(|c| c.len == 0 || u64::from(c.len) > max)
        {
            return Err(format!("chunk {} of {} stored bytes", c.id, c.len));
        }
        Ok(())
    }
}

/// The contents of a chunk a pack gave in its stored form, checked: they hash to its
/// id (and are `len` bytes long, when given).
///
/// # Errors
/// The stored form does not decompress, or not to the chunk's contents.
pub fn unpack(
    entry: &PackEntry,
    stored: &[u8],
    len: Option<usize>,
) -> Result<Vec<u8>, ChunkDefect> {
    let mut data = Vec::new();
    chunk::with_codec(|codec| {
        codec.decode_verified(
            &entry.id,
            stored,
            len.unwrap_or(MAX_CHUNK_SIZE as usize),
            len,
            &mut data,
        )
    })?;
    Ok(data)
}

/// Why a pack could not be made or fetched.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot pack a local chunk")]
    Chunk(#[source] ChunkError),
    #[error("pack {name}: {why}")]
    Invalid { name: String, why: String },
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl Remote {
    fn pack_key(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join("packs").join(name)
    }

    /// Whether the remote holds an object of `pack`'s name and size.
    ///
    /// # Errors
    /// The request fails or times out.
    pub async fn has_pack(&self, pack: &Pack) -> Result<bool, RemoteError> {
        let key = self.pack_key(&pack.name);
        let size = self
            .within("head", &key, async {
                match self.client.head(&key).await {
                    Ok(meta) => Ok(Some(meta.size)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.request_err("head", &key)(e)),
                }
            })
            .await?;
        Ok(size == Some(pack.total()))
    }

    /// Makes sure the remote has the pack of `ids` (in this order, each once; as many
    /// as fit in [`MAX_PACK_BYTES`]): uploads it from the local store unless an object
    /// of its name and size is there.
    ///
    /// # Errors
    /// A chunk is missing or damaged locally, or a request fails.
    pub async fn ensure_pack(&self, store: &Store, ids: &[ChunkId]) -> Result<Pack, PackError> {
        let (store2, ids2) = (store.clone(), ids.to_vec());
        let stored = tokio::task::spawn_blocking(move || {
            let mut stored = Vec::new();
            let mut total = 0;
            for id in ids2.iter().take(MAX_PACK_CHUNKS) {
                let bytes = store2.read_stored_verified(id)?;
                total += bytes.len() as u64;
                if total > MAX_PACK_BYTES {
                    break;
                }
                stored.push((*id, bytes));
            }
            Ok(stored)
        })
        .await
        .expect("reading chunks does not panic")
        .map_err(PackError::Chunk)?;
        let pack = Pack {
            name: Pack::name_of(stored.iter().map(|(id, _)| id)),
            chunks: stored
                .iter()
                .map(|(id, s)| PackEntry {
                    id: *id,
                    len: s.len() as u32,
                })
                .collect(),
        };
        if pack.chunks.is_empty() {
            return Err(PackError::Invalid {
                name: pack.name,
                why: "no chunk fits".into(),
            });
        }
        let key = self.pack_key(&pack.name);
        if !self.has_pack(&pack).await? {
            let mut body = Vec::with_capacity(pack.total() as usize);
            for (_, s) in &stored {
                body.extend_from_slice(s);
            }
            self.within("put", &key, async {
                self.client
                    .put(&key, PutPayload::from(body))
                    .await
                    .map(drop)
                    .map_err(self.request_err("put", &key))
            })
            .await?;
        }
        Ok(pack)
    }

    /// Fetches `pack` and hands each chunk's stored form to `each` as soon as its
    /// bytes have arrived, unchecked: check it with [`unpack`]. A large pack comes in
    /// a few ranged requests at once (a single connection to an object store is
    /// slower than the host's link), each of whole chunks, the first holding the
    /// chunks a restore reads first. Chunks the pack did not give (a request failed
    /// or ended early) are not handed out: the error says why.
    ///
    /// # Errors
    /// The pack is invalid, absent, of another size than it says, or a request
    /// fails or times out.
    pub async fn fetch_pack(
        &self,
        pack: &Pack,
        each: impl FnMut(PackEntry, Vec<u8>),
    ) -> Result<(), PackError> {
        pack.check().map_err(|why| PackError::Invalid {
            name: pack.name.clone(),
            why,
        })?;
        let key = self.pack_key(&pack.name);
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        // The parts run in this one task (not spawned): `each` is locked by one of them
        // at a time, never across an await.
        let each = std::sync::Mutex::new(each);
        let parts = parts_of(&pack.chunks);
        futures::future::try_join_all(
            parts.into_iter().map(|(start, entries)| {
                self.fetch_part(pack, &key, start, entries, deadline, &each)
            }),
        )
        .await?;
        Ok(())
    }

    async fn fetch_part(
        &self,
        pack: &Pack,
        key: &ObjectPath,
        start: u64,
        entries: &[PackEntry],
        deadline: tokio::time::Instant,
        each: &std::sync::Mutex<impl FnMut(PackEntry, Vec<u8>)>,
    ) -> Result<(), PackError> {
        let invalid = |why: String| PackError::Invalid {
            name: pack.name.clone(),
            why,
        };
        let timeout = |step| RemoteError::Timeout {
            endpoint: self.endpoint.clone(),
            step,
            key: self.describe(key),
            limit: self.request_timeout,
        };
        let end = start + entries.iter().map(|e| u64::from(e.len)).sum::<u64>();
        let options = GetOptions {
            range: Some((start..end).into()),
            ..GetOptions::default()
        };
        let result = match tokio::time::timeout_at(deadline, self.client.get_opts(key, options))
            .await
            .map_err(|_| timeout("get"))?
        {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(invalid("not in the bucket".into()))
            }
            Err(e) => return Err(self.request_err("get", key)(e).into()),
        };
        if result.meta.size != pack.total() || result.range != (start..end) {
            return Err(invalid(format!(
                "{} bytes in the bucket, {} expected",
                result.meta.size,
                pack.total()
            )));
        }
        let mut body = result.into_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut next = entries.iter().copied().peekable();
        loop {
            while let Some(entry) = next.next_if(|e| buf.len() >= e.len as usize) {
                let rest = buf.split_off(entry.len as usize);
                let stored = std::mem::replace(&mut buf, rest);
                (each.lock().expect("not poisoned"))(entry, stored);
            }
            if next.peek().is_none() {
                return Ok(());
            }
            let piece = tokio::time::timeout_at(deadline, body.next())
                .await
                .map_err(|_| timeout("read"))?;
            match piece {
                Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
                Some(Err(e)) => return Err(self.request_err("read", key)(e).into()),
                None => return Err(invalid("the object ended early".into())),
            }
        }
    }
}

/// At most this many requests fetch one pack at once.
const PARTS: u64 = 4;
/// A part is at least this large (smaller packs come in fewer parts).
const MIN_PART: u64 = 2 << 20;

/// `entries` cut into up to [`PARTS`] runs of about equal bytes: each run's offset in
/// the pack, and its entries.
fn parts_of(entries: &[PackEntry]) -> Vec<(u64, &[PackEntry])> {
    let total: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
    let target = (total / PARTS).max(MIN_PART);
    let mut parts = Vec::new();
    let (mut from, mut offset, mut bytes) = (0, 0, 0);
    for (i, e) in entries.iter().enumerate() {
        bytes += u64::from(e.len);
        if bytes >= target && i + 1 < entries.len() {
            parts.push((offset, &entries[from..=i]));
            (from, offset, bytes) = (i + 1, offset + bytes, 0);
        }
    }
    if from < entries.len() {
        parts.push((offset, &entries[from..]));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack_of(ids: &[ChunkId], len: u32) -> Pack {
        Pack {
            name: Pack::name_of(ids),
            chunks: ids.iter().map(|id| PackEntry { id: *id, len }).collect(),
        }
    }

    #[test]
    fn a_pack_is_named_by_its_chunks_in_order() {
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        assert_eq!(Pack::name_of(&[a, b]), Pack::name_of(&[a, b]));
        assert_ne!(Pack::name_of(&[a, b]), Pack::name_of(&[b, a]));
        assert_eq!(pack_of(&[a, b], 10).total(), 20);
        assert_eq!(pack_of(&[a, b], 10).check(), Ok(()));
    }

    #[test]
    fn a_pack_from_an_untrusted_record_is_checked() {
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let mut renamed = pack_of(&[a, b], 10);
        renamed.name = Pack::name_of(&[b, a]);
        assert!(renamed.check().unwrap_err().contains("does not match"));
        let mut traversal = pack_of(&[a], 10);
        traversal.name = "../manifests/x".into();
        assert!(traversal.check().is_err());
        assert!(pack_of(&[a], 0)
            .check()
            .unwrap_err()
            .contains("0 stored bytes"));
        let huge = u32::try_from(chunk::max_stored_len() + 1).unwrap();
        assert!(pack_of(&[a], huge).check().is_err());
        assert!(pack_of(&[], 10).check().unwrap_err().contains("0 chunks"));
        // Past MAX_PACK_BYTES: 4,200 chunks of 64,000 bytes is 268.8 MB.
        let many: Vec<ChunkId> = (0..4200u32)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .collect();
        assert!(pack_of(&many, 64_000)
            .check()
            .unwrap_err()
            .contains("bytes"));
    }

    #[test]
    fn a_pack_is_fetched_in_up_to_four_parts_of_whole_chunks() {
        let entries: Vec<PackEntry> = (0..100u32)
            .map(|i| PackEntry {
                id: ChunkId::of(&i.to_le_bytes()),
                len: 200_000,
            })
            .collect();
        let parts = parts_of(&entries);
        assert_eq!(parts.len(), 4);
        let mut offset = 0;
        let mut seen = 0;
        for (start, run) in &parts {
            assert_eq!(*start, offset, "parts follow each other");
            offset += run.iter().map(|e| u64::from(e.len)).sum::<u64>();
            seen += run.len();
        }
        assert_eq!(seen, entries.len());
        assert_eq!(offset, 100 * 200_000);
        // A small pack is one request; an empty one none.
        assert_eq!(parts_of(&entries[..5]).len(), 1);
        assert!(parts_of(&[]).is_empty());
    }

    #[test]
    fn unpack_checks_the_chunk_against_its_id() {
        let data = vec![7u8; 4096];
        let id = ChunkId::of(&data);
        let stored = zstd::bulk::compress(&data, 3).unwrap();
        let entry = PackEntry {
            id,
            len: stored.len() as u32,
        };
        assert_eq!(unpack(&entry, &stored, Some(4096)).unwrap(), data);
        assert!(unpack(&entry, &stored, Some(4095)).is_err());
        let other = PackEntry {
            id: ChunkId::of(b"other"),
            ..entry
        };
        assert!(unpack(&other, &stored, None).is_err());
        assert!(unpack(&entry, b"not zstd", None).is_err());
    }
}

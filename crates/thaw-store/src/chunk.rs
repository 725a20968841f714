//! How one chunk is encoded: a single zstd frame of its uncompressed bytes, named
//! by the BLAKE3 of those bytes. The same encoding is used on disk, in a bucket
//! and in an export, so chunks move between them byte for byte.

use std::cell::RefCell;
use std::fmt;

use crate::ChunkId;

/// Chunk size used by `Store::ingest`: 64 KiB, a multiple of the 4 KiB guest page
/// and of qcow2's default 64 KiB cluster.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 << 10;
/// Smallest chunk size an index may record.
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
/// Largest chunk size an index may record; also the most any stored chunk may
/// decompress to, which bounds what a damaged or hostile chunk can make us allocate.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;

/// zstd level: 3 is zstd's default, fast enough to keep up with a disk.
const ZSTD_LEVEL: i32 = 3;

/// The most bytes a stored (compressed) chunk may have.
pub(crate) fn max_stored_len() -> u64 {
    zstd::zstd_safe::compress_bound(MAX_CHUNK_SIZE as usize) as u64
}

/// Why a stored chunk is not what its name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkDefect {
    /// The file cannot be read, or is larger than any chunk can be.
    Unreadable(String),
    /// The bytes are not a zstd frame (or not a whole one).
    NotZstd(String),
    /// It decompresses to more than is allowed.
    TooLarge { limit: usize },
    /// It decompresses to a length other than the file index expects.
    WrongLength { expected: usize, actual: usize },
    /// Its BLAKE3 is not its name.
    WrongHash { actual: ChunkId },
}

impl fmt::Display for ChunkDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkDefect::Unreadable(why) => write!(f, "cannot be read ({why})"),
            ChunkDefect::NotZstd(why) => write!(f, "does not decompress ({why})"),
            ChunkDefect::TooLarge { limit } => {
                write!(f, "decompresses to more than {limit} bytes")
            }
            ChunkDefect::WrongLength { expected, actual } => write!(
                f,
                "decompresses to {actual} bytes where the index expects {expected}"
            ),
            ChunkDefect::WrongHash { actual } => {
                write!(f, "its contents hash to {actual}, not to its name")
            }
        }
    }
}

/// A reusable zstd compressor and decompressor (their contexts are worth keeping).
pub(crate) struct Codec {
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl Codec {
    /// # Panics
    /// When zstd cannot allocate its contexts (out of memory): setting a valid
    /// level and flag cannot fail otherwise.
    pub(crate) fn new() -> Codec {
        let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd compressor");
        // The frame records its decompressed size, so a reader can bound its
        // buffer before decompressing (the bulk API does this by default; be explicit).
        compressor
            .include_contentsize(true)
            .expect("zstd content size flag");
        Codec {
            compressor,
            decompressor: zstd::bulk::Decompressor::new().expect("zstd decompressor"),
        }
    }

    /// The stored form of `data`.
    pub(crate) fn encode(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        self.compressor.compress(data)
    }

    /// Decompresses `stored` into `out` and checks it is the chunk `id`: at most
    /// `limit` bytes, exactly `expected_len` if given, hashing to `id`.
    pub(crate) fn decode_verified(
        &mut self,
        id: &ChunkId,
        stored: &[u8],
        limit: usize,
        expected_len: Option<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), ChunkDefect> {
        if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(stored) {
            if size > limit as u64 {
                return Err(ChunkDefect::TooLarge { limit });
            }
        }
        out.clear();
        out.reserve(limit);
        // Decompressing into a Vec never grows it, so `limit` bounds the output
        // even for a frame that records no size.
        match self.decompressor.decompress_to_buffer(stored, out) {
            Ok(_) => {}
            Err(_) if out.len() >= limit && limit > 0 => {
                return Err(ChunkDefect::TooLarge { limit })
            }
            Err(e) => return Err(ChunkDefect::NotZstd(e.to_string())),
        }
        if out.len() > limit {
            return Err(ChunkDefect::TooLarge { limit });
        }
        if let Some(expected) = expected_len {
            if out.len() != expected {
                return Err(ChunkDefect::WrongLength {
                    expected,
                    actual: out.len(),
                });
            }
        }
        let actual = ChunkId::of(out);
        if actual != *id {
            return Err(ChunkDefect::WrongHash { actual });
        }
        Ok(())
    }
}

thread_local! {
    static CODEC: RefCell<Option<Codec>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's codec, made on first use (blocking-pool threads
/// of the remote and archive code reuse theirs across chunks).
pub(crate) fn with_codec<R>(f: impl FnOnce(&mut Codec) -> R) -> R {
    CODEC.with(|cell| f(cell.borrow_mut().get_or_insert_with(Codec::new)))
}

/// Whether every byte is zero. Folds 4 KiB at a time, which vectorizes, rather
/// than stopping at the first non-zero byte, which does not.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_defect() {
        let mut codec = Codec::new();
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let id = ChunkId::of(&data);
        let stored = codec.encode(&data).unwrap();
        assert!(stored.len() < data.len() / 10, "repetitive data compresses");
        let mut out = Vec::new();
        codec
            .decode_verified(&id, &stored, 1 << 20, Some(data.len()), &mut out)
            .unwrap();
        assert_eq!(out, data);

        let other = ChunkId::of(b"other");
        assert!(matches!(
            codec.decode_verified(&other, &stored, 1 << 20, None, &mut out),
            Err(ChunkDefect::WrongHash { actual }) if actual == id
        ));
        assert!(matches!(
            codec.decode_verified(&id, &stored, 1000, None, &mut out),
            Err(ChunkDefect::TooLarge { limit: 1000 })
        ));
        assert!(matches!(
            codec.decode_verified(&id, &stored, 1 << 20, Some(5), &mut out),
            Err(ChunkDefect::WrongLength { expected: 5, .. })
        ));
        assert!(matches!(
            codec.decode_verified(&id, b"not zstd at all", 1 << 20, None, &mut out),
            Err(ChunkDefect::NotZstd(_))
        ));
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 10_000]));
        let mut v = vec![0u8; 10_000];
        v[9_999] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }
}

//! thaw-store: a content-addressed store for snapshot files, with S3 remotes
//! and single-file exports.
//!
//! The store knows nothing about VMs. It keeps *files* as lists of chunks and
//! *named manifests* as opaque JSON bytes; the caller (thaw) decides what a
//! manifest says and which chunks it needs.
//!
//! # Contract
//!
//! - **Chunking.** A file is cut into fixed-size, aligned chunks
//!   ([`DEFAULT_CHUNK_SIZE`], 64 KiB; the last one may be short). The big files
//!   thaw stores are raw guest RAM images and qcow2 layers, whose changes are
//!   aligned to 4 KiB pages and 64 KiB clusters, so a region that did not change
//!   produces exactly the same chunk in the next snapshot and deduplicates, with
//!   no content-defined boundary search. The chunk size is recorded in each
//!   [`FileIndex`].
//! - **Naming.** A chunk is named by the BLAKE3 of its uncompressed bytes
//!   ([`ChunkId`]) and stored once as a zstd frame (level 3). All-zero chunks
//!   are never stored: the index records them as `None`, and
//!   [`Store::materialize`] leaves them as holes.
//! - **Verification.** Every chunk is re-hashed whenever it is read for use:
//!   materialize, push, pull, export and import refuse a chunk whose contents do
//!   not match its name, and the error names the chunk.
//! - **Atomicity.** Every file the store writes (chunks, manifests, exports,
//!   materialized files) goes to a temp file in the target directory, is
//!   synced, renamed into place, and the directory is synced before the
//!   operation reports success. A process killed at any moment leaves a store
//!   that [`Store::verify`] passes; at worst it holds orphan chunks and temp
//!   files, which [`Store::gc`] removes.
//! - **Order.** A manifest is written after the chunks it names, locally
//!   ([`Store::put_manifest`] is the caller's last step) and remotely
//!   ([`push`] uploads it last), so a manifest never names a missing chunk.
//!
//! See `docs/store.md` for the on-disk and in-bucket layout.

mod archive;
mod chunk;
mod extents;
pub mod fsio;
mod id;
mod manifest;
mod pack;
mod progress;
mod remote;
mod serve;
mod store;

pub use archive::{export, import, ExportError, ExportReport, ImportError, Imported};
pub use chunk::{ChunkDefect, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
pub use fsio::IoError;
pub use id::{ChunkId, ParseChunkIdError};
pub use manifest::{
    validate_manifest_name, InvalidManifestName, ManifestError, MAX_MANIFEST_BYTES,
    MAX_MANIFEST_NAME,
};
pub use pack::{unpack, Pack, PackEntry, PackError, MAX_PACK_CHUNKS};
pub use progress::{NoProgress, Progress};
pub use remote::{
    fetch_manifest, install_crypto, list_remote_manifests, pull_chunks, push, CredentialSource,
    PullError, PullReport, PushError, PushReport, Remote, RemoteConfig, RemoteConfigError,
    RemoteError,
};
pub use serve::{ChunkSink, Fetched};
pub use store::{
    ChunkError, FileIndex, GcError, GcReport, IngestError, MaterializeError, OpenError, Store,
    VerifyError, VerifyReport,
};

//! Export / import: one file holding a manifest and the chunks it needs, for CI
//! caches and air-gapped copies.
//!
//! The file is a plain ustar archive (the `tar` crate), so `tar tvf` lists it
//! and `tar xf` into a store directory would lay the chunks out where the store
//! keeps them. Its entries, in order:
//!
//! 1. `thaw-export.json`: `{"format":"thaw-export","version":1,"manifest":NAME,
//!    "manifest_bytes":N,"manifest_blake3":HEX,"chunks":COUNT}`;
//! 2. `manifests/NAME.json`: the manifest bytes;
//! 3. `chunks/XX/HEX`, COUNT times: each chunk's zstd frame as stored.
//!
//! Tar checksums only its headers, so the contents are checked here: the
//! manifest against `manifest_blake3`, each chunk against its name, and the
//! number of chunks against `chunks` (a truncated file is refused). Import reads
//! entries itself and never lets tar create files, so no path in the archive
//! can reach outside the store.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chunk::{self, ChunkDefect, MAX_CHUNK_SIZE};
use crate::fsio::{self, Context, IoError};
use crate::manifest::{validate_manifest_name, InvalidManifestName, MAX_MANIFEST_BYTES};
use crate::store::{ChunkError, ChunkWriter};
use crate::{ChunkId, Progress, Store};

const HEADER_ENTRY: &str = "thaw-export.json";
const FORMAT_NAME: &str = "thaw-export";
const FORMAT_VERSION: u32 = 1;
const MAX_HEADER_BYTES: u64 = 64 << 10;
/// Entry names are quoted in errors up to this many characters (thaw writes none
/// longer: a header's name field holds at most 255 bytes).
const MAX_QUOTED_NAME: usize = 120;

#[derive(Debug, Serialize, Deserialize)]
struct ExportHeader {
    format: String,
    version: u32,
    manifest: String,
    manifest_bytes: u64,
    manifest_blake3: String,
    chunks: u64,
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Chunks in the file.
    pub chunks: u64,
    /// Size of the file.
    pub file_bytes: u64,
}

/// [`export`] failed; no file was left at the destination.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    InvalidName(#[from] InvalidManifestName),
    #[error("manifest {name:?} has {len} bytes, more than the {MAX_MANIFEST_BYTES}-byte limit")]
    ManifestTooLarge { name: String, len: u64 },
    #[error("cannot export to {}", file.display())]
    Chunk {
        file: PathBuf,
        #[source]
        source: ChunkError,
    },
    #[error("cannot export to {}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: IoError,
    },
}

/// Writes `file`: manifest `manifest_name` with `manifest_bytes`, and every
/// chunk in `chunk_ids` (each re-verified first), atomically.
///
/// # Errors
/// The name is invalid or the manifest too large, a chunk is missing or damaged
/// (the error names it), or the file cannot be written.
pub fn export(
    store: &Store,
    manifest_name: &str,
    manifest_bytes: &[u8],
    chunk_ids: &[ChunkId],
    file: impl AsRef<Path>,
    progress: &mut dyn Progress,
) -> Result<ExportReport, ExportError> {
    let file = file.as_ref();
    validate_manifest_name(manifest_name)?;
    if manifest_bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ExportError::ManifestTooLarge {
            name: manifest_name.into(),
            len: manifest_bytes.len() as u64,
        });
    }
    let mut seen = HashSet::new();
    let ids: Vec<ChunkId> = chunk_ids
        .iter()
        .copied()
        .filter(|id| seen.insert(*id))
        .collect();
    let total = ids
        .iter()
        .map(|id| std::fs::metadata(store.chunk_path(id)).map_or(0, |m| m.len()))
        .sum();
    let header = ExportHeader {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        manifest: manifest_name.into(),
        manifest_bytes: manifest_bytes.len() as u64,
        manifest_blake3: blake3::hash(manifest_bytes).to_hex().to_string(),
        chunks: ids.len() as u64,
    };
    let io_err = |source| ExportError::Io {
        file: file.to_path_buf(),
        source,
    };
    let tmp = fsio::temp_path_for(file);
    let result = (|| {
        let out = File::create(&tmp).at("create", &tmp).map_err(io_err)?;
        let mut tar = tar::Builder::new(BufWriter::new(out));
        let mut append =
            |name: &str, bytes: &[u8]| tar.append(&entry_header(name, bytes.len() as u64)?, bytes);
        let header_json = serde_json::to_vec(&header).expect("serializes");
        append(HEADER_ENTRY, &header_json)
            .at("write", &tmp)
            .map_err(io_err)?;
        append(&format!("manifests/{manifest_name}.json"), manifest_bytes)
            .at("write", &tmp)
            .map_err(io_err)?;
        progress.start(&format!("export {manifest_name}"), total);
        for id in &ids {
            let stored = store
                .read_stored_verified(id)
                .map_err(|source| ExportError::Chunk {
                    file: file.to_path_buf(),
                    source,
                })?;
            append(&chunk_entry_name(id), &stored)
                .at("write", &tmp)
                .map_err(io_err)?;
            progress.advance(stored.len() as u64);
        }
        let out = tar
            .into_inner()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .at("write", &tmp)
            .map_err(io_err)?;
        out.sync_all().at("sync_all", &tmp).map_err(io_err)?;
        let file_bytes = out.metadata().at("stat", &tmp).map_err(io_err)?.len();
        std::fs::rename(&tmp, file)
            .at("rename into place", file)
            .map_err(io_err)?;
        fsio::fsync_dir(file.parent().unwrap_or(Path::new("."))).map_err(io_err)?;
        progress.finish();
        Ok(ExportReport {
            chunks: ids.len() as u64,
            file_bytes,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn entry_header(name: &str, size: u64) -> std::io::Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(header)
}

fn chunk_entry_name(id: &ChunkId) -> String {
    let hex = id.to_hex();
    format!("chunks/{}/{hex}", &hex[..2])
}

/// What [`import`] brought in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The manifest's name, as exported.
    pub manifest_name: String,
    /// The manifest's bytes. Import does not store it: the caller does, with
    /// [`Store::put_manifest`], now that its chunks are in.
    pub manifest: Vec<u8>,
    /// Chunks written into the store.
    pub chunks_added: u64,
    /// Chunks the store already had.
    pub chunks_present: u64,
}

/// [`import`] failed; chunks it stored before failing are complete and verified.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{} is not a thaw export: {why}", file.display())]
    Format { file: PathBuf, why: String },
    #[error("chunk {id} in {} is damaged, and was not stored: {defect}", file.display())]
    ChunkDamaged {
        id: ChunkId,
        file: PathBuf,
        defect: ChunkDefect,
    },
    #[error("cannot import {}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: IoError,
    },
}

/// Reads an [`export`] file into `store`: every chunk is decompressed and
/// hashed, and stored (atomically) only if it matches its name. Returns the
/// manifest, which the caller stores once this succeeds.
///
/// # Errors
/// The file is not an export of this version, is truncated, or an entry is too
/// large; a chunk is damaged (the error names it); or the store cannot be
/// written.
pub fn import(
    store: &Store,
    file: impl AsRef<Path>,
    progress: &mut dyn Progress,
) -> Result<Imported, ImportError> {
    let file = file.as_ref();
    let bad = |why: String| ImportError::Format {
        file: file.to_path_buf(),
        why,
    };
    let io_err = |source| ImportError::Io {
        file: file.to_path_buf(),
        source,
    };
    let input = File::open(file).at("open", file).map_err(io_err)?;
    let total = input.metadata().at("stat", file).map_err(io_err)?.len();
    let writer = ChunkWriter::new(store).map_err(io_err)?;
    let mut archive = tar::Archive::new(BufReader::new(input));
    // Raw: the tar crate would otherwise read a GNU long-name or PAX pseudo-entry
    // whole into memory (whatever size its header claims) before handing out the
    // entry it describes. Raw, each comes out as an entry of its own type, refused
    // below before a byte of it is read; thaw's exports have none (short names).
    let mut entries = archive
        .entries()
        .at("read", file)
        .map_err(io_err)?
        .raw(true);
    progress.start(&format!("import {}", file.display()), total);
    // Bytes of the archive consumed so far, for progress: where the last entry ended.
    let mut consumed = 0u64;
    let mut next = |limit: u64| -> Result<Option<(String, Vec<u8>)>, ImportError> {
        let Some(entry) = entries.next() else {
            return Ok(None);
        };
        let entry = entry.map_err(|e| bad(format!("unreadable tar entry ({e})")))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad("it holds an entry that is not a regular file".into()));
        }
        let name = entry
            .path()
            .map_err(|e| bad(format!("unreadable entry name ({e})")))?
            .to_str()
            .ok_or_else(|| bad("an entry name is not UTF-8".into()))?
            .chars()
            .take(MAX_QUOTED_NAME)
            .collect::<String>();
        if entry.size() > limit {
            return Err(bad(format!("entry {name} is larger than {limit} bytes")));
        }
        let end = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        let bytes = fsio::read_capped(entry, limit)
            .map_err(|e| bad(format!("entry {name} cannot be read ({e})")))?;
        progress.advance(end.saturating_sub(consumed));
        consumed = end;
        Ok(Some((name, bytes)))
    };

    let (name, bytes) = next(MAX_HEADER_BYTES)?.ok_or_else(|| bad("it is empty".into()))?;
    if name != HEADER_ENTRY {
        return Err(bad(format!(
            "its first entry is {name}, not {HEADER_ENTRY}"
        )));
    }
    let header: ExportHeader = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("{HEADER_ENTRY} is not valid ({e})")))?;
    if header.format != FORMAT_NAME || header.version != FORMAT_VERSION {
        return Err(bad(format!(
            "format {:?} version {}, but this build reads {FORMAT_NAME} version {FORMAT_VERSION}",
            header.format, header.version
        )));
    }
    validate_manifest_name(&header.manifest).map_err(|e| bad(e.to_string()))?;

    let (name, manifest) =
        next(MAX_MANIFEST_BYTES)?.ok_or_else(|| bad("it holds no manifest".into()))?;
    if name != format!("manifests/{}.json", header.manifest) {
        return Err(bad(format!("its second entry is {name}, not the manifest")));
    }
    if manifest.len() as u64 != header.manifest_bytes
        || blake3::hash(&manifest).to_hex().as_str() != header.manifest_blake3
    {
        return Err(bad(format!("manifest {:?} is damaged", header.manifest)));
    }

    let (mut added, mut present, mut count) = (0, 0, 0);
    let mut data = Vec::new();
    let result = (|| {
        while let Some((name, stored)) = next(chunk::max_stored_len())? {
            let id = name
                .strip_prefix("chunks/")
                .and_then(|rest| rest.split_once('/'))
                .filter(|(dir, hex)| hex.get(..2) == Some(*dir))
                .and_then(|(_, hex)| hex.parse::<ChunkId>().ok())
                .ok_or_else(|| bad(format!("unexpected entry {name}")))?;
            count += 1;
            if writer.existing(&id) {
                present += 1;
            } else {
                chunk::with_codec(|codec| {
                    codec.decode_verified(&id, &stored, MAX_CHUNK_SIZE as usize, None, &mut data)
                })
                .map_err(|defect| ImportError::ChunkDamaged {
                    id,
                    file: file.to_path_buf(),
                    defect,
                })?;
                writer.put(&id, &stored).map_err(io_err)?;
                added += 1;
            }
        }
        if count != header.chunks {
            return Err(bad(format!(
                "it holds {count} chunks where its header says {} (truncated?)",
                header.chunks
            )));
        }
        Ok(())
    })();
    // Sync what was stored even on failure, so a retry can rely on it.
    let finished = writer.finish();
    result?;
    finished.map_err(io_err)?;
    progress.finish();
    Ok(Imported {
        manifest_name: header.manifest,
        manifest,
        chunks_added: added,
        chunks_present: present,
    })
}

//! The snapshot format (v2) and its checks.
//!
//! ```text
//! snapshots/<tag>/
//!   manifest.json   format name and version, QEMU version, accelerator, machine spec,
//!                   parent, memory layout, and for every file its size and hash
//!   state, ram      layout "raw": QEMU's device state (x-ignore-shared stream, no RAM)
//!                   and the raw guest RAM image, sparse
//!   memory          layout "mapped": a mapped-ram migration file holding the device
//!                   state and, at a 1 MiB aligned offset, the raw RAM image (see `mapped`)
//!   disks/d<i>.<k>.qcow2      the layers of disk i, k = 0 (on the base image) up to
//!                             the frozen top; each backed by the one below, by a
//!                             relative name, so the chain resolves in any directory
//!   disks/d<i>.template.qcow2 the empty overlay every clone starts from
//! ```
//!
//! A snapshot is complete on its own: the layers of its parents are hard links (no
//! copies), and a mapped RAM image holds every page. Removing a parent therefore never
//! breaks a child; `catalog::remove` refuses it anyway while children exist.
//!
//! A snapshot is written into `snapshots/.tmp-<tag>-<pid>/`, every file is synced, the
//! directory is renamed into place and the parent directory synced: a crash leaves
//! either no snapshot or a whole one. Restore checks the manifest, the device state's
//! hash and the RAM image's size before it starts QEMU; hashing the RAM image too is
//! optional (`verify`), since it reads every page.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thaw_qmp::QemuVersion;
use uuid::Uuid;

use crate::accel::Accel;
use crate::fsutil;
use crate::home::{Home, SnapshotTag, VmName};
use crate::spec::MachineSpec;

pub mod catalog;
pub mod confine;
pub mod inuse;
pub mod staging;
pub mod stored;
pub mod take;

/// The `format` field of every manifest.
pub const FORMAT_NAME: &str = "thaw-snapshot";
/// The format version this build writes; it reads any minor version of this major.
/// 2.1 added the manifest's own `checksum`.
pub const FORMAT_VERSION: FormatVersion = FormatVersion { major: 2, minor: 1 };
/// A manifest larger than this is refused unread.
pub const MANIFEST_MAX_BYTES: u64 = 1 << 20;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const STATE_FILE: &str = "state";
pub const RAM_FILE: &str = "ram";
pub const MEMORY_FILE: &str = "memory";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatVersion {
    pub major: u32,
    pub minor: u32,
}

/// Size and hash of one file of a snapshot. The hash is [`fsutil::content_hash`]:
/// BLAKE3 over the non-zero pages, so gigabytes of holes cost nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub blake3: String,
}

/// How the guest's RAM and device state are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "layout", rename_all = "lowercase")]
pub enum Memory {
    /// `state` (device state only) and `ram` (the VM's own RAM file, kept as is):
    /// snapshots of booted VMs taken with `--stop`, and any snapshot on QEMU < 9.0.
    Raw,
    /// `memory`: a mapped-ram migration file; the RAM image is `len` bytes at `offset`.
    /// `state_blake3` hashes the file without that region (the device state and the
    /// small RAM blocks), which restore checks every time.
    Mapped {
        offset: u64,
        len: u64,
        state_blake3: String,
    },
}

pub use crate::home::ParentRef;

/// What is persisted about a snapshot (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: FormatVersion,
    pub tag: SnapshotTag,
    pub created_unix_ms: u64,
    pub qemu_version: QemuVersion,
    pub accel: Accel,
    pub spec: MachineSpec,
    /// The generation id the VM had; clones get fresh ones.
    pub vmgenid: Uuid,
    pub source_vm: VmName,
    pub parent: Option<ParentRef>,
    pub memory: Memory,
    pub files: BTreeMap<String, FileEntry>,
    /// One entry per disk of the spec.
    pub disks: Vec<DiskChain>,
    /// BLAKE3 of the manifest itself without this field ([`manifest_checksum`]), so
    /// that a changed byte anywhere in it is found (format 2.1; absent in 2.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

impl Manifest {
    /// The bytes of `manifest.json`: the manifest with its checksum filled in.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.checksum = None;
        let value = serde_json::to_value(&m).expect("serializes");
        m.checksum = Some(manifest_checksum(&value));
        serde_json::to_vec_pretty(&m).expect("serializes")
    }
}

/// The checksum a manifest carries: BLAKE3 (hex) of its JSON without the `checksum`
/// field, in a canonical form (object keys sorted, no whitespace), so that it does not
/// depend on how the file was laid out, and fields a later minor version adds are
/// covered too.
pub fn manifest_checksum(manifest: &serde_json::Value) -> String {
    fn canon(v: &serde_json::Value, out: &mut Vec<u8>) {
        use serde_json::Value;
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, k).expect("a string serializes");
                    out.push(b':');
                    canon(&map[k], out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    canon(item, out);
                }
                out.push(b']');
            }
            scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar serializes"),
        }
    }
    let mut without = manifest.clone();
    if let Some(map) = without.as_object_mut() {
        map.remove("checksum");
    }
    let mut bytes = Vec::new();
    canon(&without, &mut bytes);
    blake3::hash(&bytes).to_hex().to_string()
}

/// A disk of a snapshot: the base image and how many layers are stacked on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskChain {
    pub base: crate::disk::BaseIdentity,
    pub virtual_size: u64,
    /// Layers `d<i>.0` .. `d<i>.<layers-1>`; the last is the frozen top.
    pub layers: u32,
}

/// The snapshot-relative path of layer `k` of disk `i`.
pub fn layer_file(i: usize, k: u32) -> String {
    format!("disks/{}", crate::disk::layer_name(i, k))
}

/// The snapshot-relative path of disk `i`'s clone template.
pub fn template_file(i: usize) -> String {
    format!("disks/d{i}.template.qcow2")
}

/// A snapshot that cannot be used, found before anything was started.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotCheckError {
    #[error("no snapshot tagged {0}")]
    UnknownTag(SnapshotTag),
    #[error("snapshot {tag}: manifest is missing")]
    ManifestMissing { tag: SnapshotTag },
    #[error("snapshot {tag}: manifest is corrupt ({why})")]
    ManifestCorrupt { tag: SnapshotTag, why: String },
    #[error("snapshot {tag}: format version {found_major}.{found_minor} is not supported (this thaw reads {}.x); take the snapshot again", FORMAT_VERSION.major)]
    UnsupportedVersion {
        tag: SnapshotTag,
        found_major: u32,
        found_minor: u32,
    },
    #[error("snapshot {tag}: {file} is missing")]
    FileMissing { tag: SnapshotTag, file: String },
    #[error("snapshot {tag}: {file} is {found} bytes, the manifest says {expected} (truncated or replaced)")]
    FileSize {
        tag: SnapshotTag,
        file: String,
        found: u64,
        expected: u64,
    },
    #[error(
        "snapshot {tag}: the device state in {file} does not match its BLAKE3 hash (corrupted)"
    )]
    StateHash { tag: SnapshotTag, file: String },
    #[error("snapshot {tag}: RAM image is {found} bytes, expected {expected}")]
    RamSize {
        tag: SnapshotTag,
        found: u64,
        expected: u64,
    },
    #[error("snapshot {tag}: {file} does not match its BLAKE3 hash (corrupted)")]
    FileHash { tag: SnapshotTag, file: String },
    #[error("snapshot {tag} was taken with QEMU {snapshot}, but QEMU {running} would restore it; restore with the same QEMU")]
    QemuMismatch {
        tag: SnapshotTag,
        snapshot: QemuVersion,
        running: QemuVersion,
    },
    #[error(
        "snapshot {tag} was taken under {snapshot}, but this host would restore it under {running}"
    )]
    AccelMismatch {
        tag: SnapshotTag,
        snapshot: Accel,
        running: Accel,
    },
    #[error("snapshot {tag}: the guest's {what} {path} is missing")]
    GuestFileMissing {
        tag: SnapshotTag,
        what: &'static str,
        path: PathBuf,
    },
    #[error("snapshot {tag}: base disk {path} changed since the snapshot ({why}); its clones would see a different disk")]
    BaseChanged {
        tag: SnapshotTag,
        path: PathBuf,
        why: String,
    },
    #[error("snapshot {tag}: {file} does not match its manifest entry")]
    LayerChanged { tag: SnapshotTag, file: String },
    #[error("snapshot {tag}: {file} is refused: {defect}")]
    LayerRefused {
        tag: SnapshotTag,
        file: String,
        defect: Box<crate::qcow2::HeaderDefect>,
    },
    #[error("snapshot {tag}: its UEFI firmware {path} is not this host's OVMF; refused")]
    FirmwareRefused { tag: SnapshotTag, path: String },
    #[error("could not read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A snapshot on disk whose manifest has been read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// BLAKE3 of manifest.json as read (what a child records as its parent).
    pub manifest_blake3: String,
}

impl Snapshot {
    /// The file a clone maps its RAM from, and at which offset.
    pub fn ram_image(&self) -> (PathBuf, u64) {
        match &self.manifest.memory {
            Memory::Raw => (self.dir.join(RAM_FILE), 0),
            Memory::Mapped { offset, .. } => (self.dir.join(MEMORY_FILE), *offset),
        }
    }

    /// The file `migrate-incoming` loads the device state from.
    pub fn state_path(&self) -> PathBuf {
        match &self.manifest.memory {
            Memory::Raw => self.dir.join(STATE_FILE),
            Memory::Mapped { .. } => self.dir.join(MEMORY_FILE),
        }
    }

    /// Reads and checks the manifest (not the files).
    pub fn open(home: &Home, tag: &SnapshotTag) -> Result<Snapshot, SnapshotCheckError> {
        let dir = home.snapshot_dir(tag);
        if !dir.is_dir() {
            return Err(SnapshotCheckError::UnknownTag(tag.clone()));
        }
        let path = dir.join(MANIFEST_FILE);
        let bytes = match fsutil::read_file_capped(&path, MANIFEST_MAX_BYTES) {
            Ok(b) => b,
            Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotCheckError::ManifestMissing { tag: tag.clone() })
            }
            Err(e) if e.source.kind() == std::io::ErrorKind::InvalidData => {
                return Err(SnapshotCheckError::ManifestCorrupt {
                    tag: tag.clone(),
                    why: format!("{}", e.source),
                })
            }
            Err(e) => {
                return Err(SnapshotCheckError::Io {
                    path,
                    source: e.source,
                })
            }
        };
        let manifest = parse_manifest(tag, &bytes)?;
        Ok(Snapshot {
            dir,
            manifest,
            manifest_blake3: blake3::hash(&bytes).to_hex().to_string(),
        })
    }

    /// Everything restore checks before loading the snapshot: the files, their sizes,
    /// the device state's hash, and that this QEMU and accelerator can run it. With
    /// `verify`, every file's hash (the RAM image's too) and the base disks' contents.
    pub fn check(
        &self,
        qemu: QemuVersion,
        accel: Accel,
        verify: bool,
    ) -> Result<(), SnapshotCheckError> {
        self.check_to_start(qemu, accel, verify)?.check(self)
    }

    /// [`Snapshot::check`] but for the hashes: what must hold before QEMU starts on
    /// this snapshot (its files can be opened, and its layers name only thaw's chain).
    /// The hashes ([`HashCheck::check`]) must hold before the device state is loaded:
    /// a restore computes them while its QEMUs start (the device state of a lazily
    /// served snapshot may still be on its way from the bucket).
    pub fn check_to_start(
        &self,
        qemu: QemuVersion,
        accel: Accel,
        verify: bool,
    ) -> Result<HashCheck, SnapshotCheckError> {
        let m = &self.manifest;
        // The cheap checks first, so that a bad snapshot costs no hashing.
        let (state_file, exclude, state_hash) = self.check_memory_files()?;
        if m.qemu_version != qemu {
            return Err(SnapshotCheckError::QemuMismatch {
                tag: self.tag(),
                snapshot: m.qemu_version,
                running: qemu,
            });
        }
        if m.accel != accel {
            return Err(SnapshotCheckError::AccelMismatch {
                tag: self.tag(),
                snapshot: m.accel,
                running: accel,
            });
        }
        // The guest's files as this machine has them (see `guestref`).
        let local = crate::guestref::resolve(&self.dir, &m.spec);
        self.check_guest_files(&local)?;
        for i in 0..m.disks.len() {
            self.check_disk(&local, i, verify)?;
        }
        // The files the layers make QEMU open: exactly thaw's chain (a layer from
        // elsewhere could name any host file).
        confine::check_layers(&self.dir, m)?;
        let whole = verify.then_some(match m.memory {
            Memory::Raw => RAM_FILE,
            Memory::Mapped { .. } => MEMORY_FILE,
        });
        let whole = match whole {
            Some(file) => Some((file, self.entry(file)?.blake3.clone())),
            None => None,
        };
        Ok(HashCheck {
            state: (state_file, exclude, state_hash),
            whole,
        })
    }

    fn tag(&self) -> SnapshotTag {
        self.manifest.tag.clone()
    }

    fn entry(&self, file: &str) -> Result<&FileEntry, SnapshotCheckError> {
        self.manifest
            .files
            .get(file)
            .ok_or_else(|| SnapshotCheckError::ManifestCorrupt {
                tag: self.tag(),
                why: format!("no entry for {file}"),
            })
    }

    fn size_of(&self, file: &str) -> Result<u64, SnapshotCheckError> {
        match std::fs::metadata(self.dir.join(file)) {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(SnapshotCheckError::FileMissing {
                    tag: self.tag(),
                    file: file.to_owned(),
                })
            }
            Err(source) => Err(SnapshotCheckError::Io {
                path: self.dir.join(file),
                source,
            }),
        }
    }

    /// The manifest's entry for `file`, which must have the size it says.
    fn sized(&self, file: &str) -> Result<&FileEntry, SnapshotCheckError> {
        let e = self.entry(file)?;
        let found = self.size_of(file)?;
        if found != e.size {
            return Err(SnapshotCheckError::FileSize {
                tag: self.tag(),
                file: file.to_owned(),
                found,
                expected: e.size,
            });
        }
        Ok(e)
    }

    fn hash(&self, file: &str, exclude: Option<(u64, u64)>) -> Result<String, SnapshotCheckError> {
        let path = self.dir.join(file);
        fsutil::content_hash(&path, exclude)
            .map_err(|source| SnapshotCheckError::Io { path, source })
    }

    /// The RAM and device state files' sizes; returns where the device state's hash is
    /// ([`StateHash`]).
    fn check_memory_files(&self) -> Result<StateHash, SnapshotCheckError> {
        let expected_ram = self.manifest.spec.memory_bytes();
        match &self.manifest.memory {
            Memory::Raw => {
                let state = self.sized(STATE_FILE)?;
                let ram = self.entry(RAM_FILE)?;
                let found = self.size_of(RAM_FILE)?;
                if found != expected_ram || ram.size != expected_ram {
                    return Err(SnapshotCheckError::RamSize {
                        tag: self.tag(),
                        found,
                        expected: expected_ram,
                    });
                }
                Ok((STATE_FILE, None, state.blake3.clone()))
            }
            Memory::Mapped {
                offset,
                len,
                state_blake3,
            } => {
                let e = self.sized(MEMORY_FILE)?;
                if *len != expected_ram || offset + len > e.size {
                    return Err(SnapshotCheckError::RamSize {
                        tag: self.tag(),
                        found: *len,
                        expected: expected_ram,
                    });
                }
                Ok((MEMORY_FILE, Some((*offset, *len)), state_blake3.clone()))
            }
        }
    }

    /// The kernel, initrd and firmware the machine starts from are here.
    fn check_guest_files(
        &self,
        local: &crate::spec::MachineSpec,
    ) -> Result<(), SnapshotCheckError> {
        let m = &self.manifest;
        if let Some(kernel) = local.kernel.as_ref().filter(|k| !k.is_file()) {
            return Err(SnapshotCheckError::GuestFileMissing {
                tag: self.tag(),
                what: "kernel",
                path: kernel.clone(),
            });
        }
        let vars = m.files.get(crate::firmware::VARS_FILE).map(|e| e.size);
        if let Err((what, path)) =
            crate::firmware::check_snapshot(&m.spec.firmware, &self.dir, vars)
        {
            return Err(SnapshotCheckError::GuestFileMissing {
                tag: self.tag(),
                what,
                path,
            });
        }
        if let Some(initrd) = local.initrd.as_ref().filter(|p| !p.is_file()) {
            return Err(SnapshotCheckError::GuestFileMissing {
                tag: self.tag(),
                what: "initrd",
                path: initrd.clone(),
            });
        }
        Ok(())
    }

    /// Disk `i`'s base is the one the snapshot was taken on, and its layers are intact.
    fn check_disk(
        &self,
        local: &crate::spec::MachineSpec,
        i: usize,
        verify: bool,
    ) -> Result<(), SnapshotCheckError> {
        let m = &self.manifest;
        let disk = &m.disks[i];
        let b = &disk.base;
        let path = local
            .disks
            .get(i)
            .map(|d| d.base.clone())
            .unwrap_or(b.path.clone());
        let changed = |why: String| SnapshotCheckError::BaseChanged {
            tag: self.tag(),
            path: path.clone(),
            why,
        };
        // A base that came with the snapshot from a store is a copy named by its
        // hash: its content is the snapshot's, its mtime is its own.
        let relocated = path != b.path;
        if relocated && path.file_name().and_then(|n| n.to_str()) != Some(b.blake3.as_str()) {
            return Err(changed(
                "it is not the base the snapshot was taken on".into(),
            ));
        }
        match crate::disk::stat(&path) {
            Err(_) => return Err(changed("it is missing".into())),
            Ok((size, _)) if size != b.size => {
                return Err(changed(format!("{size} bytes, was {}", b.size)))
            }
            Ok((_, mtime)) if mtime != b.mtime_ns && !relocated => {
                return Err(changed("modified after the snapshot".into()))
            }
            Ok(_) => {}
        }
        if verify && fsutil::hash_file(&path).ok().as_deref() != Some(b.blake3.as_str()) {
            return Err(changed("its BLAKE3 differs".into()));
        }
        if relocated {
            confine::check_stored_base(m, i, &path)?;
        }
        let files = (0..disk.layers)
            .map(|k| layer_file(i, k))
            .chain([template_file(i)]);
        for file in files {
            let e = m.files.get(&file);
            let size = std::fs::metadata(self.dir.join(&file))
                .map(|md| md.len())
                .ok();
            let intact = match (e, size) {
                (Some(e), Some(sz)) => {
                    e.size == sz && (!verify || self.hash(&file, None)? == e.blake3)
                }
                _ => false,
            };
            if !intact {
                return Err(SnapshotCheckError::LayerChanged {
                    tag: self.tag(),
                    file,
                });
            }
        }
        Ok(())
    }
}

/// The file holding a snapshot's device state, the range of it to leave out of its
/// hash (the RAM, in a mapped memory file), and the hash.
type StateHash = (&'static str, Option<(u64, u64)>, String);

/// The hashes a snapshot's check computes ([`Snapshot::check_to_start`]): its device
/// state's, and with `verify` its whole RAM image's.
#[derive(Debug, Clone)]
pub struct HashCheck {
    state: StateHash,
    whole: Option<(&'static str, String)>,
}

impl HashCheck {
    /// Hashes `snap`'s files and compares them with its manifest (reads the device
    /// state, and with `verify` every page).
    pub fn check(&self, snap: &Snapshot) -> Result<(), SnapshotCheckError> {
        let (state_file, exclude, state_hash) = &self.state;
        if &snap.hash(state_file, *exclude)? != state_hash {
            return Err(SnapshotCheckError::StateHash {
                tag: snap.tag(),
                file: (*state_file).to_owned(),
            });
        }
        if let Some((file, hash)) = &self.whole {
            if &snap.hash(file, None)? != hash {
                return Err(SnapshotCheckError::FileHash {
                    tag: snap.tag(),
                    file: (*file).to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Parses and checks the bytes of a `manifest.json` that should describe `tag`: the
/// format name, the major version, the checksum (format 2.1 and later, or whenever one
/// is present), the shape, and the tag. Never panics, whatever the bytes.
pub fn parse_manifest_bytes(
    tag: &SnapshotTag,
    bytes: &[u8],
) -> Result<Manifest, SnapshotCheckError> {
    parse_manifest(tag, bytes)
}

fn parse_manifest(tag: &SnapshotTag, bytes: &[u8]) -> Result<Manifest, SnapshotCheckError> {
    let corrupt = |why: String| SnapshotCheckError::ManifestCorrupt {
        tag: tag.clone(),
        why,
    };
    // Read the version first, so a future major version with another shape gets the
    // right error rather than "corrupt".
    let loose: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    if loose["format"] != FORMAT_NAME {
        return Err(corrupt(format!("format is not {FORMAT_NAME:?}")));
    }
    let major = loose["version"]["major"].as_u64();
    let minor = loose["version"]["minor"].as_u64().unwrap_or(0);
    match major {
        Some(m) if m == u64::from(FORMAT_VERSION.major) => {}
        Some(m) => {
            return Err(SnapshotCheckError::UnsupportedVersion {
                tag: tag.clone(),
                found_major: m as u32,
                found_minor: minor as u32,
            })
        }
        None => return Err(corrupt("no format version".into())),
    }
    // Without the checksum a flipped byte in, say, the kernel command line or the
    // vmgenid would go unnoticed: nothing else covers the manifest's own bytes. A
    // checksum that is present is always checked, so that a flip of the minor version
    // cannot switch the check off.
    match loose.get("checksum") {
        Some(serde_json::Value::String(sum)) if *sum != manifest_checksum(&loose) => {
            return Err(corrupt(
                "its checksum does not match its content (a changed byte?)".into(),
            ));
        }
        Some(serde_json::Value::String(_)) => {}
        Some(_) => return Err(corrupt("its checksum is not a string".into())),
        None if minor >= 1 => return Err(corrupt("its checksum is missing".into())),
        None => {}
    }
    let manifest: Manifest = serde_json::from_value(loose).map_err(|e| corrupt(e.to_string()))?;
    if &manifest.tag != tag {
        return Err(corrupt(format!("it names tag {}", manifest.tag)));
    }
    Ok(manifest)
}

/// The temporary directory a snapshot is written into.
pub fn temp_dir(home: &Home, tag: &SnapshotTag) -> PathBuf {
    home.snapshots_dir()
        .join(format!(".tmp-{tag}-{}", std::process::id()))
}

/// Removes temporary snapshot directories whose writer is gone (a crash or kill -9).
pub fn remove_stale_temp_dirs(home: &Home) {
    for entry in std::fs::read_dir(home.snapshots_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".tmp-") else {
            continue;
        };
        let pid = rest
            .rsplit_once('-')
            .and_then(|(_, p)| p.parse::<i32>().ok());
        let writer_alive = pid
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
        if !writer_alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Tags of all complete snapshots (directories with a manifest), sorted.
pub fn list_tags(home: &Home) -> Vec<SnapshotTag> {
    let mut tags: Vec<SnapshotTag> = std::fs::read_dir(home.snapshots_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tags.sort();
    tags
}

/// Syncs a file's data to disk (the migration stream is written by QEMU, unsynced).
pub fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests;

//! The snapshot format (v1) and its checks.
//!
//! ```text
//! snapshots/<tag>/
//!   manifest.json   format name and version, QEMU version, accelerator, machine spec,
//!                   and for every file its size and BLAKE3
//!   state           QEMU migration stream: devices and vCPUs, no RAM (x-ignore-shared)
//!   ram             raw guest RAM image, sparse
//! ```
//!
//! A snapshot is written into `snapshots/.tmp-<tag>-<pid>/`, every file is synced, the
//! directory is renamed into place and the parent directory synced: a crash leaves
//! either no snapshot or a whole one. Restore checks the manifest, the state file's
//! hash and the RAM image's size before it starts QEMU; hashing the RAM image too is
//! optional (`verify`), since it reads every byte.

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
pub mod take;

/// The `format` field of every manifest.
pub const FORMAT_NAME: &str = "thaw-snapshot";
/// The format version this build writes; it reads any minor version of this major.
pub const FORMAT_VERSION: FormatVersion = FormatVersion { major: 1, minor: 1 };
/// A manifest larger than this is refused unread.
pub const MANIFEST_MAX_BYTES: u64 = 1 << 20;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const STATE_FILE: &str = "state";
pub const RAM_FILE: &str = "ram";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatVersion {
    pub major: u32,
    pub minor: u32,
}

/// Size and hash of one file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub blake3: String,
}

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
    pub files: BTreeMap<String, FileEntry>,
    /// One entry per disk of the spec (format 1.1): the frozen layer is the file
    /// `disks/disk<i>.qcow2`, backed by `base`; `disks/disk<i>.clone.qcow2` is the
    /// empty overlay every clone starts from.
    #[serde(default)]
    pub disks: Vec<DiskLayer>,
}

/// A disk of a snapshot: its frozen layer and the base image under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLayer {
    pub base: crate::disk::BaseIdentity,
    pub virtual_size: u64,
}

/// The snapshot-relative path of disk `i`'s frozen layer.
pub fn layer_file(i: usize) -> String {
    format!("disks/disk{i}.qcow2")
}

/// The snapshot-relative path of disk `i`'s clone template.
pub fn template_file(i: usize) -> String {
    format!("disks/disk{i}.clone.qcow2")
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
    #[error("snapshot {tag}: format version {found_major}.{found_minor} is not supported (this thaw reads {}.x)", FORMAT_VERSION.major)]
    UnsupportedVersion {
        tag: SnapshotTag,
        found_major: u32,
        found_minor: u32,
    },
    #[error("snapshot {tag}: {file} is missing")]
    FileMissing {
        tag: SnapshotTag,
        file: &'static str,
    },
    #[error("snapshot {tag}: state file is {found} bytes, the manifest says {expected} (truncated or replaced)")]
    StateSize {
        tag: SnapshotTag,
        found: u64,
        expected: u64,
    },
    #[error("snapshot {tag}: state file does not match its BLAKE3 hash (corrupted)")]
    StateHash { tag: SnapshotTag },
    #[error("snapshot {tag}: RAM image is {found} bytes, expected {expected}")]
    RamSize {
        tag: SnapshotTag,
        found: u64,
        expected: u64,
    },
    #[error("snapshot {tag}: RAM image does not match its BLAKE3 hash (corrupted)")]
    RamHash { tag: SnapshotTag },
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
}

impl Snapshot {
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn ram_path(&self) -> PathBuf {
        self.dir.join(RAM_FILE)
    }

    /// Reads and checks the manifest (not the files).
    pub fn open(home: &Home, tag: &SnapshotTag) -> Result<Snapshot, SnapshotCheckError> {
        let dir = home.snapshot_dir(tag);
        if !dir.is_dir() {
            return Err(SnapshotCheckError::UnknownTag(tag.clone()));
        }
        let path = dir.join(MANIFEST_FILE);
        let bytes = match fsutil::read_capped(&path, MANIFEST_MAX_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotCheckError::ManifestMissing { tag: tag.clone() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(SnapshotCheckError::ManifestCorrupt {
                    tag: tag.clone(),
                    why: format!("{e}"),
                })
            }
            Err(source) => return Err(SnapshotCheckError::Io { path, source }),
        };
        let manifest = parse_manifest(tag, &bytes)?;
        Ok(Snapshot { dir, manifest })
    }

    /// Everything restore checks before starting QEMU: the files, their sizes, the
    /// state file's hash, and that this QEMU and accelerator can run it.
    pub fn check(
        &self,
        qemu: QemuVersion,
        accel: Accel,
        verify_ram: bool,
    ) -> Result<(), SnapshotCheckError> {
        let m = &self.manifest;
        let tag = || m.tag.clone();
        let entry = |file: &'static str| {
            m.files
                .get(file)
                .ok_or_else(|| SnapshotCheckError::ManifestCorrupt {
                    tag: tag(),
                    why: format!("no entry for {file}"),
                })
        };
        let state = entry(STATE_FILE)?;
        let ram = entry(RAM_FILE)?;
        let size_of = |file: &'static str| -> Result<u64, SnapshotCheckError> {
            match std::fs::metadata(self.dir.join(file)) {
                Ok(meta) => Ok(meta.len()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(SnapshotCheckError::FileMissing { tag: tag(), file })
                }
                Err(source) => Err(SnapshotCheckError::Io {
                    path: self.dir.join(file),
                    source,
                }),
            }
        };
        let found = size_of(STATE_FILE)?;
        if found != state.size {
            return Err(SnapshotCheckError::StateSize {
                tag: tag(),
                found,
                expected: state.size,
            });
        }
        let found = size_of(RAM_FILE)?;
        let expected = m.spec.memory_bytes();
        if found != expected || ram.size != expected {
            return Err(SnapshotCheckError::RamSize {
                tag: tag(),
                found,
                expected,
            });
        }
        if m.qemu_version != qemu {
            return Err(SnapshotCheckError::QemuMismatch {
                tag: tag(),
                snapshot: m.qemu_version,
                running: qemu,
            });
        }
        if m.accel != accel {
            return Err(SnapshotCheckError::AccelMismatch {
                tag: tag(),
                snapshot: m.accel,
                running: accel,
            });
        }
        if let Some(kernel) = m.spec.kernel.as_ref().filter(|k| !k.is_file()) {
            return Err(SnapshotCheckError::GuestFileMissing {
                tag: tag(),
                what: "kernel",
                path: kernel.clone(),
            });
        }
        let vars = m.files.get(crate::firmware::VARS_FILE).map(|e| e.size);
        if let Err((what, path)) =
            crate::firmware::check_snapshot(&m.spec.firmware, &self.dir, vars)
        {
            return Err(SnapshotCheckError::GuestFileMissing {
                tag: tag(),
                what,
                path,
            });
        }
        if let Some(initrd) = m.spec.initrd.as_ref().filter(|p| !p.is_file()) {
            return Err(SnapshotCheckError::GuestFileMissing {
                tag: tag(),
                what: "initrd",
                path: initrd.clone(),
            });
        }
        let hash = |file: &str| {
            let path = self.dir.join(file);
            fsutil::hash_file(&path).map_err(|source| SnapshotCheckError::Io { path, source })
        };
        for (i, disk) in m.disks.iter().enumerate() {
            let b = &disk.base;
            let changed = |why: String| SnapshotCheckError::BaseChanged {
                tag: tag(),
                path: b.path.clone(),
                why,
            };
            match crate::disk::stat(&b.path) {
                Err(_) => return Err(changed("it is missing".into())),
                Ok((size, _)) if size != b.size => {
                    return Err(changed(format!("{size} bytes, was {}", b.size)))
                }
                Ok((_, mtime)) if mtime != b.mtime_ns => {
                    return Err(changed("modified after the snapshot".into()))
                }
                Ok(_) => {}
            }
            if verify_ram && fsutil::hash_file(&b.path).ok().as_deref() != Some(b.blake3.as_str()) {
                return Err(changed("its BLAKE3 differs".into()));
            }
            for file in [layer_file(i), template_file(i)] {
                let entry = m.files.get(&file);
                let size = std::fs::metadata(self.dir.join(&file))
                    .map(|md| md.len())
                    .ok();
                let intact = match (entry, size) {
                    (Some(e), Some(sz)) => {
                        e.size == sz && (!verify_ram || hash(&file)? == e.blake3)
                    }
                    _ => false,
                };
                if !intact {
                    return Err(SnapshotCheckError::LayerChanged { tag: tag(), file });
                }
            }
        }
        if hash(STATE_FILE)? != state.blake3 {
            return Err(SnapshotCheckError::StateHash { tag: tag() });
        }
        if verify_ram && hash(RAM_FILE)? != ram.blake3 {
            return Err(SnapshotCheckError::RamHash { tag: tag() });
        }
        Ok(())
    }
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
mod tests {
    use super::*;

    fn manifest(tag: &str) -> Manifest {
        Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            tag: tag.parse().unwrap(),
            created_unix_ms: 5,
            qemu_version: "10.0.2".parse().unwrap(),
            accel: Accel::Tcg,
            spec: MachineSpec {
                machine: "pc".into(),
                memory_mib: 16,
                cpus: 1,
                kernel: Some("/bin/sh".into()),
                initrd: None,
                cmdline: String::new(),
                accel: Accel::Tcg,
                firmware: crate::firmware::Firmware::Bios,
                display: None,
                disks: vec![],
                net: None,
            },
            vmgenid: Uuid::nil(),
            source_vm: "web".parse().unwrap(),
            files: BTreeMap::new(),
            disks: vec![],
        }
    }

    /// Writes a small but complete snapshot by hand.
    fn write_snapshot(home: &Home, tag: &str) -> Snapshot {
        let mut m = manifest(tag);
        let dir = home.snapshot_dir(&m.tag);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), b"device state").unwrap();
        let ram = std::fs::File::create(dir.join(RAM_FILE)).unwrap();
        ram.set_len(16 << 20).unwrap();
        for f in [STATE_FILE, RAM_FILE] {
            let p = dir.join(f);
            m.files.insert(
                f.into(),
                FileEntry {
                    size: std::fs::metadata(&p).unwrap().len(),
                    blake3: fsutil::hash_file(&p).unwrap(),
                },
            );
        }
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        Snapshot::open(home, &m.tag).unwrap()
    }

    fn v10() -> QemuVersion {
        "10.0.2".parse().unwrap()
    }

    #[test]
    fn manifest_round_trips() {
        let m = manifest("base");
        let bytes = serde_json::to_vec(&m).unwrap();
        assert_eq!(parse_manifest(&m.tag, &bytes).unwrap(), m);
    }

    #[test]
    fn a_whole_snapshot_passes_every_check() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path());
        let s = write_snapshot(&home, "base");
        s.check(v10(), Accel::Tcg, true).unwrap();
    }

    #[test]
    fn each_defect_is_named() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path());
        let tag: SnapshotTag = "base".parse().unwrap();

        assert!(matches!(
            Snapshot::open(&home, &tag),
            Err(SnapshotCheckError::UnknownTag(_))
        ));

        let s = write_snapshot(&home, "base");
        assert!(matches!(
            s.check("9.2.0".parse().unwrap(), Accel::Tcg, false),
            Err(SnapshotCheckError::QemuMismatch { .. })
        ));
        assert!(matches!(
            s.check(v10(), Accel::Kvm, false),
            Err(SnapshotCheckError::AccelMismatch { .. })
        ));

        // Truncated state.
        std::fs::write(s.state_path(), b"device").unwrap();
        assert!(matches!(
            s.check(v10(), Accel::Tcg, false),
            Err(SnapshotCheckError::StateSize { .. })
        ));
        // Same size, other bytes.
        std::fs::write(s.state_path(), b"DEVICE state").unwrap();
        assert!(matches!(
            s.check(v10(), Accel::Tcg, false),
            Err(SnapshotCheckError::StateHash { .. })
        ));
        std::fs::write(s.state_path(), b"device state").unwrap();

        // RAM image of the wrong size.
        std::fs::File::options()
            .write(true)
            .open(s.ram_path())
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        assert!(matches!(
            s.check(v10(), Accel::Tcg, false),
            Err(SnapshotCheckError::RamSize { .. })
        ));
        std::fs::File::options()
            .write(true)
            .open(s.ram_path())
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        // RAM content changed: only --verify notices.
        std::fs::write(s.ram_path(), vec![1u8; 16 << 20]).unwrap();
        s.check(v10(), Accel::Tcg, false).unwrap();
        assert!(matches!(
            s.check(v10(), Accel::Tcg, true),
            Err(SnapshotCheckError::RamHash { .. })
        ));

        // Corrupt, missing and future manifests.
        let mpath = s.dir.join(MANIFEST_FILE);
        std::fs::write(&mpath, b"{\"format\": \"thaw-snap").unwrap();
        assert!(matches!(
            Snapshot::open(&home, &tag),
            Err(SnapshotCheckError::ManifestCorrupt { .. })
        ));
        let mut future = serde_json::to_value(manifest("base")).unwrap();
        future["version"]["major"] = 2.into();
        std::fs::write(&mpath, serde_json::to_vec(&future).unwrap()).unwrap();
        let err = Snapshot::open(&home, &tag).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotCheckError::UnsupportedVersion { found_major: 2, .. }
            ),
            "{err}"
        );
        std::fs::remove_file(&mpath).unwrap();
        assert!(matches!(
            Snapshot::open(&home, &tag),
            Err(SnapshotCheckError::ManifestMissing { .. })
        ));
        std::fs::write(&mpath, vec![b' '; (MANIFEST_MAX_BYTES + 1) as usize]).unwrap();
        assert!(matches!(
            Snapshot::open(&home, &tag),
            Err(SnapshotCheckError::ManifestCorrupt { .. })
        ));
    }

    #[test]
    fn stale_temp_dirs_are_removed_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path());
        home.ensure().unwrap();
        let live = temp_dir(&home, &"a".parse().unwrap());
        let dead = home.snapshots_dir().join(".tmp-b-999999999");
        std::fs::create_dir(&live).unwrap();
        std::fs::create_dir(&dead).unwrap();
        remove_stale_temp_dirs(&home);
        assert!(live.exists());
        assert!(!dead.exists());
        assert!(list_tags(&home).is_empty(), "temp dirs are not snapshots");
    }
}

//! The one load/save path of thaw's persisted records: a VM's `vm.json`, the guest
//! manifests (`guest.json`), the QEMU version cache, and the store's snapshot records
//! (which the store keeps as named manifests, so they use [`Record::to_bytes`] and
//! [`Record::from_bytes`] only).
//!
//! A record is JSON with a format version of its own beside its fields
//! (`"record_version": N`). Loading refuses a version newer than this thaw knows with
//! one line saying so, reads a file without the field (every file written before it
//! existed) as version 1, and refuses a file larger than the record's cap before
//! parsing it. Saving is atomic (temp file, rename; synced with the directory unless
//! the record says it need not be, see [`Record::SYNCED`]).
//!
//! The snapshot manifest is not one of these: it has a versioned format of its own
//! (format name, major/minor version, checksum; see `snapshot`), written and read with
//! the same primitives.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, IoError};

/// The name of the version field in every record.
pub const VERSION_FIELD: &str = "record_version";

/// A persisted record. Implement it with the three constants; the methods are the
/// shared path.
pub trait Record: Serialize + DeserializeOwned {
    /// What the record is, for errors: "VM record", "guest manifest".
    const KIND: &'static str;
    /// The format version this thaw writes; it reads this one and older ones.
    const VERSION: u32;
    /// The largest file accepted; a larger one is refused unread.
    const MAX_BYTES: u64;
    /// Whether a save is synced (the file and its directory). Off only for a record
    /// a host crash makes moot anyway (a VM's: its QEMU dies with the host), where
    /// the two syncs cost a millisecond on the restore path.
    const SYNCED: bool = true;
    /// Whether the JSON is indented (for records people read); off for large ones.
    const PRETTY: bool = true;

    /// The record's bytes: its JSON with [`VERSION_FIELD`] first.
    fn to_bytes(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Envelope<'a, T> {
            record_version: u32,
            #[serde(flatten)]
            body: &'a T,
        }
        let envelope = Envelope {
            record_version: Self::VERSION,
            body: self,
        };
        if Self::PRETTY {
            let mut bytes = serde_json::to_vec_pretty(&envelope).expect("a record serializes");
            bytes.push(b'\n');
            bytes
        } else {
            serde_json::to_vec(&envelope).expect("a record serializes")
        }
    }

    /// Parses bytes written by [`Record::to_bytes`] of this version or an older one.
    ///
    /// # Errors
    /// A newer version, or bytes that are not this record.
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Probe {
            record_version: Option<u32>,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        let found = probe.record_version.unwrap_or(1);
        if found > Self::VERSION {
            return Err(DecodeError::Newer { found });
        }
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Corrupt(e.to_string()))
    }

    /// Reads the record at `path`.
    ///
    /// # Errors
    /// See [`RecordError`]; a missing file is `Io` with [`RecordError::is_not_found`].
    fn read_from(path: &Path) -> Result<Self, RecordError> {
        let bytes = match fsutil::read_file_capped(path, Self::MAX_BYTES) {
            Ok(b) => b,
            Err(e) if e.source.kind() == std::io::ErrorKind::InvalidData => {
                return Err(RecordError::TooLarge {
                    kind: Self::KIND,
                    path: path.to_owned(),
                    cap: Self::MAX_BYTES,
                })
            }
            Err(e) => return Err(e.into()),
        };
        Self::from_bytes(&bytes).map_err(|e| e.at(Self::KIND, path, Self::VERSION))
    }

    /// Writes the record to `path` atomically (see [`Record::SYNCED`]).
    ///
    /// # Errors
    /// The file cannot be written or renamed into place.
    fn write_to(&self, path: &Path) -> Result<(), IoError> {
        let bytes = self.to_bytes();
        if Self::SYNCED {
            fsutil::write_atomic(path, &bytes)
        } else {
            fsutil::write_atomic_unsynced(path, &bytes)
        }
    }
}

/// Why bytes are not a record (without the path; [`Record::read_from`] adds it).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("it is version {found}, newer than this thaw reads: upgrade thaw")]
    Newer { found: u32 },
    #[error("it is damaged: {0}")]
    Corrupt(String),
}

impl DecodeError {
    fn at(self, kind: &'static str, path: &Path, supported: u32) -> RecordError {
        let path = path.to_owned();
        match self {
            DecodeError::Newer { found } => RecordError::Newer {
                kind,
                path,
                found,
                supported,
            },
            DecodeError::Corrupt(why) => RecordError::Corrupt { kind, path, why },
        }
    }
}

/// A record could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{kind} {} is larger than {cap} bytes: it is not one of thaw's", path.display())]
    TooLarge {
        kind: &'static str,
        path: PathBuf,
        cap: u64,
    },
    #[error("{kind} {} has format version {found}; this thaw reads up to {supported}: upgrade thaw", path.display())]
    Newer {
        kind: &'static str,
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{kind} {} is damaged: {why}", path.display())]
    Corrupt {
        kind: &'static str,
        path: PathBuf,
        why: String,
    },
}

impl RecordError {
    /// Whether the file is simply not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RecordError::Io(e) if e.source.kind() == std::io::ErrorKind::NotFound)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Saves `record`, loads it back and checks it is equal; also that the file says
    /// its version and that the bytes without the version field (a file written
    /// before records had one) load as the same record.
    pub(crate) fn round_trip<R: Record + PartialEq + std::fmt::Debug>(record: &R) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.json");
        record.write_to(&p).unwrap();
        assert_eq!(&R::read_from(&p).unwrap(), record);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v[VERSION_FIELD], R::VERSION);
        v.as_object_mut().unwrap().remove(VERSION_FIELD);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            &R::read_from(&p).unwrap(),
            record,
            "an unversioned file reads as version 1"
        );
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        n: u64,
    }

    impl Record for Sample {
        const KIND: &'static str = "sample record";
        const VERSION: u32 = 2;
        const MAX_BYTES: u64 = 200;
    }

    fn sample() -> Sample {
        Sample {
            name: "a".into(),
            n: 7,
        }
    }

    #[test]
    fn sample_round_trips() {
        round_trip(&sample());
    }

    #[test]
    fn a_newer_version_is_refused_in_one_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.json");
        std::fs::write(&p, br#"{"record_version": 3, "name": "a", "n": 7}"#).unwrap();
        let e = Sample::read_from(&p).unwrap_err();
        assert!(
            matches!(
                e,
                RecordError::Newer {
                    found: 3,
                    supported: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        let line = e.to_string();
        assert!(
            line.contains(&p.display().to_string()) && line.contains("upgrade thaw"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn an_older_version_is_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.json");
        std::fs::write(&p, br#"{"record_version": 1, "name": "a", "n": 7}"#).unwrap();
        assert_eq!(Sample::read_from(&p).unwrap(), sample());
    }

    #[test]
    fn too_large_damaged_and_missing_files_say_which() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.json");
        std::fs::write(&p, vec![b' '; 201]).unwrap();
        assert!(matches!(
            Sample::read_from(&p),
            Err(RecordError::TooLarge { cap: 200, .. })
        ));
        std::fs::write(&p, b"{\"name\": 1}").unwrap();
        assert!(matches!(
            Sample::read_from(&p),
            Err(RecordError::Corrupt { .. })
        ));
        let missing = Sample::read_from(&d.path().join("none")).unwrap_err();
        assert!(missing.is_not_found(), "{missing:?}");
    }
}

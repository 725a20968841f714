//! Named manifests: small JSON documents (opaque to the store) kept under
//! `manifests/<name>.json`, each written atomically.

use std::path::PathBuf;

use crate::fsio::{self, Context, IoError};
use crate::Store;

/// The most bytes a manifest may have, wherever it is read from (local file,
/// bucket, export). A manifest lists every chunk id of the files it covers, about
/// 67 bytes of JSON per 64 KiB chunk of data (1 KiB per MiB), so this admits
/// manifests for some 60 GiB of non-zero data while refusing anything absurd.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// Longest manifest name.
pub const MAX_MANIFEST_NAME: usize = 64;

/// A manifest name that is not allowed.
#[derive(Debug, thiserror::Error)]
#[error("invalid manifest name {name:?}: {why}")]
pub struct InvalidManifestName {
    pub name: String,
    pub why: &'static str,
}

/// Checks a manifest name: 1 to 64 ASCII letters, digits, `.`, `_` or `-`, not
/// starting with `.` or `-`. Such a name can never reach outside the manifest
/// directory (no `/`, and `..` cannot start a name) nor be taken for an option.
///
/// # Errors
/// The name breaks one of those rules; the error says which.
pub fn validate_manifest_name(name: &str) -> Result<(), InvalidManifestName> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_MANIFEST_NAME {
        Some("it is longer than 64 characters")
    } else if name.starts_with('.') || name.starts_with('-') {
        Some("it starts with '.' or '-'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("only letters, digits, '.', '_' and '-' are allowed")
    } else {
        None
    };
    match why {
        Some(why) => Err(InvalidManifestName {
            name: name.chars().take(80).collect(),
            why,
        }),
        None => Ok(()),
    }
}

/// A manifest operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    InvalidName(#[from] InvalidManifestName),
    #[error("no manifest named {name:?} in the store")]
    NotFound { name: String },
    #[error("manifest {name:?} has {len} bytes, more than the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge { name: String, len: u64 },
    #[error("cannot access manifest {name:?}")]
    Io {
        name: String,
        #[source]
        source: IoError,
    },
}

impl Store {
    fn manifest_path(&self, name: &str) -> Result<PathBuf, ManifestError> {
        validate_manifest_name(name)?;
        Ok(self.manifests_dir().join(format!("{name}.json")))
    }

    /// Stores `bytes` as manifest `name`, replacing any manifest of that name
    /// atomically. Write it only after the chunks it names are in the store.
    ///
    /// # Errors
    /// The name is invalid, `bytes` exceeds [`MAX_MANIFEST_BYTES`], or the write fails.
    pub fn put_manifest(&self, name: &str, bytes: &[u8]) -> Result<(), ManifestError> {
        let path = self.manifest_path(name)?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                name: name.into(),
                len: bytes.len() as u64,
            });
        }
        fsio::write_atomic(&path, bytes).map_err(|source| ManifestError::Io {
            name: name.into(),
            source,
        })
    }

    /// The bytes of manifest `name`.
    ///
    /// # Errors
    /// The name is invalid, there is no such manifest, it is larger than
    /// [`MAX_MANIFEST_BYTES`], or it cannot be read.
    pub fn get_manifest(&self, name: &str) -> Result<Vec<u8>, ManifestError> {
        let path = self.manifest_path(name)?;
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError::NotFound { name: name.into() })
            }
            Err(e) => {
                return Err(ManifestError::Io {
                    name: name.into(),
                    source: IoError::new("open", path, e),
                })
            }
        };
        fsio::read_capped(file, MAX_MANIFEST_BYTES).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                ManifestError::TooLarge {
                    name: name.into(),
                    len: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                }
            } else {
                ManifestError::Io {
                    name: name.into(),
                    source: IoError::new("read", &path, e),
                }
            }
        })
    }

    /// The names of all manifests, sorted.
    ///
    /// # Errors
    /// The manifest directory cannot be listed.
    pub fn list_manifests(&self) -> Result<Vec<String>, ManifestError> {
        let dir = self.manifests_dir();
        let io_err = |source| ManifestError::Io {
            name: String::new(),
            source,
        };
        let entries = std::fs::read_dir(&dir).at("list", &dir).map_err(io_err)?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.at("list", &dir).map_err(io_err)?;
            // A manifest is a regular file; anything else under its name is not one.
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if validate_manifest_name(name).is_ok() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes manifest `name`. The chunks it named stay until `gc`.
    ///
    /// # Errors
    /// The name is invalid, there is no such manifest, or it cannot be removed.
    pub fn remove_manifest(&self, name: &str) -> Result<(), ManifestError> {
        let path = self.manifest_path(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => fsio::fsync_dir(&self.manifests_dir()).map_err(|source| ManifestError::Io {
                name: name.into(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ManifestError::NotFound { name: name.into() })
            }
            Err(e) => Err(ManifestError::Io {
                name: name.into(),
                source: IoError::new("remove", path, e),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in ["a", "debian-12.base", "x_1", "A.b-c_d", &"n".repeat(64)] {
            validate_manifest_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "../x",
            "a\\b",
            "a b",
            "é",
            "a\0",
            &"n".repeat(65),
        ] {
            assert!(validate_manifest_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn put_get_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        store.put_manifest("b", b"{\"v\":1}").unwrap();
        store.put_manifest("a", b"{}").unwrap();
        store.put_manifest("b", b"{\"v\":2}").unwrap();
        assert_eq!(store.get_manifest("b").unwrap(), b"{\"v\":2}");
        assert_eq!(store.list_manifests().unwrap(), ["a", "b"]);
        store.remove_manifest("a").unwrap();
        assert_eq!(store.list_manifests().unwrap(), ["b"]);
        assert!(matches!(
            store.get_manifest("a"),
            Err(ManifestError::NotFound { .. })
        ));
        assert!(matches!(
            store.remove_manifest("a"),
            Err(ManifestError::NotFound { .. })
        ));
        assert!(matches!(
            store.put_manifest("../escape", b"{}"),
            Err(ManifestError::InvalidName(_))
        ));
        assert!(!d.path().join("escape.json").exists());
    }
}

//! What `thaw --version` says: this build (version, commit), the snapshot format it
//! writes, and the QEMU it would run ([`Qemu::find`]).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::qemu::Qemu;
use crate::snapshot::FORMAT_VERSION;

/// This build and what it finds on this host.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct About {
    /// The package version (`0.1.0`).
    pub version: String,
    /// The commit it was built from (the caller's build script gives it), or `unknown`.
    pub commit: String,
    /// The snapshot format version this build writes (`major.minor`; it reads any minor
    /// version of the major).
    pub snapshot_format: String,
    /// The QEMU thaw would run; `None` when there is none (or it gives no version).
    pub qemu: Option<QemuFound>,
    /// Why there is no QEMU, when there is none (text output only).
    #[serde(skip)]
    pub qemu_missing: Option<String>,
}

/// A QEMU binary and its version.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QemuFound {
    pub binary: PathBuf,
    pub version: String,
}

impl About {
    /// `commit` comes from the binary's build (see `crates/thaw-cli/build.rs`); QEMU is
    /// looked for as every command does, its version cached in `cache_dir`.
    pub fn gather(commit: &str, cache_dir: &Path) -> About {
        let (qemu, qemu_missing) = match Qemu::find(cache_dir) {
            Ok(q) => (
                Some(QemuFound {
                    binary: q.binary,
                    version: q.version.to_string(),
                }),
                None,
            ),
            Err(e) => (None, Some(crate::one_line(&e))),
        };
        About {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: commit.to_owned(),
            snapshot_format: format!("{}.{}", FORMAT_VERSION.major, FORMAT_VERSION.minor),
            qemu,
            qemu_missing,
        }
    }
}

impl std::fmt::Display for About {
    /// One fact per line: `thaw 0.1.0`, `commit: ...`, `snapshot format: 2.1`,
    /// `qemu: 10.0.2 (/usr/bin/qemu-system-x86_64)` or `qemu: none (why)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "thaw {}", self.version)?;
        writeln!(f, "commit: {}", self.commit)?;
        writeln!(f, "snapshot format: {}", self.snapshot_format)?;
        match (&self.qemu, &self.qemu_missing) {
            (Some(q), _) => write!(f, "qemu: {} ({})", q.version, q.binary.display()),
            (None, Some(why)) => write!(f, "qemu: none ({why})"),
            (None, None) => write!(f, "qemu: none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_say_the_same() {
        let about = About {
            version: "1.2.3".into(),
            commit: "abc".into(),
            snapshot_format: "2.1".into(),
            qemu: None,
            qemu_missing: Some("QEMU binary x not found".into()),
        };
        assert_eq!(
            about.to_string(),
            "thaw 1.2.3\ncommit: abc\nsnapshot format: 2.1\nqemu: none (QEMU binary x not found)"
        );
        let json = serde_json::to_value(&about).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"version": "1.2.3", "commit": "abc", "snapshot_format": "2.1", "qemu": null})
        );
    }
}

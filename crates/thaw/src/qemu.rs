//! Finding the QEMU binary and knowing its version before starting it.
//!
//! Restore must refuse a snapshot taken with another QEMU *before* starting QEMU, so
//! the version is read from `qemu-system-x86_64 --version`. That costs a process
//! start, so it is cached in `$THAW_CACHE/qemu-version.json`, keyed by the binary's
//! path, size and modification time.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use thaw_qmp::QemuVersion;

use crate::record::Record;

/// Finding or probing QEMU failed.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(
        "QEMU binary {0} not found: install qemu-system-x86 (scripts/setup.sh) or set THAW_QEMU"
    )]
    NotFound(String),
    #[error("could not run {path} --version")]
    Probe {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} --version printed no version: {output:?}")]
    NoVersion { path: PathBuf, output: String },
}

/// A QEMU system emulator binary, its version, and how thaw runs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Qemu {
    pub binary: PathBuf,
    pub version: QemuVersion,
    /// The TCG translation buffer each QEMU started through this handle gets
    /// (`-accel tcg,tb-size=`), in MiB; `None` leaves QEMU's default (1 GiB, madvised for
    /// huge pages, filled in 2 MiB steps as code is translated). [`Qemu::find`] takes it
    /// from `THAW_TCG_TB_SIZE` (0 = QEMU's default). A smaller buffer bounds what a
    /// long-running clone can spend on translations, which matters for many clones at
    /// once (`thaw bench --density` uses 32 MiB), but 32 MiB made restore → ready
    /// without a pool ~150 ms slower in an interleaved A/B on a 2-core TCG host, so
    /// the default stays QEMU's. It changes nothing the guest sees.
    #[serde(default)]
    pub tcg_tb_size_mib: Option<u32>,
}

/// `$THAW_CACHE/qemu-version.json`: the version of the QEMU binary last probed, kept
/// while the binary's path, size and mtime stay the same.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct VersionCache {
    binary: PathBuf,
    size: u64,
    mtime_ns: u128,
    version: QemuVersion,
}

impl Record for VersionCache {
    const KIND: &'static str = "QEMU version cache";
    const VERSION: u32 = 1;
    const MAX_BYTES: u64 = 64 * 1024;
}

impl Qemu {
    /// `$THAW_QEMU` if set (a path or a name on `$PATH`), else `qemu-system-x86_64`.
    pub fn find(cache_dir: &Path) -> Result<Qemu, QemuError> {
        let wanted = std::env::var("THAW_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
        let binary = resolve(&wanted).ok_or_else(|| QemuError::NotFound(wanted.clone()))?;
        let meta = std::fs::metadata(&binary).map_err(|_| QemuError::NotFound(wanted.clone()))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let cache_path = cache_dir.join("qemu-version.json");
        // A cache that cannot be read (missing, damaged, newer) only costs a probe.
        if let Ok(c) = VersionCache::read_from(&cache_path) {
            if c.binary == binary && c.size == meta.len() && c.mtime_ns == mtime_ns {
                return Ok(Qemu {
                    binary,
                    version: c.version,
                    tcg_tb_size_mib: tb_size_from_env(),
                });
            }
        }
        let version = probe_version(&binary)?;
        let cache = VersionCache {
            binary: binary.clone(),
            size: meta.len(),
            mtime_ns,
            version,
        };
        // A cache that cannot be written only costs a probe next time.
        if std::fs::create_dir_all(cache_dir).is_ok() {
            let _ = cache.write_to(&cache_path);
        }
        Ok(Qemu {
            binary,
            version,
            tcg_tb_size_mib: tb_size_from_env(),
        })
    }
}

/// `THAW_TCG_TB_SIZE` in MiB; unset, unparsable or 0 means QEMU's default.
fn tb_size_from_env() -> Option<u32> {
    std::env::var("THAW_TCG_TB_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&mib| mib > 0)
}

fn resolve(wanted: &str) -> Option<PathBuf> {
    if wanted.contains('/') {
        let p = PathBuf::from(wanted);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(wanted))
        .find(|p| p.is_file())
}

fn probe_version(binary: &Path) -> Result<QemuVersion, QemuError> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|source| QemuError::Probe {
            path: binary.to_owned(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_version_output(&text).ok_or_else(|| QemuError::NoVersion {
        path: binary.to_owned(),
        output: text.lines().next().unwrap_or("").to_owned(),
    })
}

/// Parses "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2...)".
fn parse_version_output(text: &str) -> Option<QemuVersion> {
    let rest = text.split("version ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_version_lines() {
        let v = parse_version_output(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright",
        )
        .unwrap();
        assert_eq!(v.to_string(), "10.0.2");
        assert_eq!(
            parse_version_output("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)")
                .unwrap()
                .to_string(),
            "7.2.15"
        );
        assert!(parse_version_output("nothing here").is_none());
    }

    #[test]
    fn version_cache_round_trips() {
        crate::record::tests::round_trip(&VersionCache {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            size: 123_456,
            mtime_ns: 1_765_000_000_123_456_789,
            version: parse_version_output("QEMU emulator version 10.0.2").unwrap(),
        });
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        assert!(resolve("/nonexistent/qemu-system-x86_64").is_none());
        assert!(resolve("no-such-qemu-binary-anywhere").is_none());
        assert!(resolve("sh").is_some());
    }
}

//! Disk images through qcow2 overlays, with `qemu-img`.
//!
//! A VM never writes its base image: it runs on a qcow2 overlay in its own directory.
//! A snapshot freezes that overlay as a layer of the snapshot (copied, or moved with
//! `--stop`), together with a small "clone template": an empty qcow2 overlay whose
//! backing file is that layer. A clone's overlay is a copy of the template, so a
//! restore starts no `qemu-img` process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::spec::{DiskFormat, DiskSpec};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk image {0} not found")]
    Missing(PathBuf),
    #[error("disk image {path} is {found}, not {given}")]
    FormatMismatch {
        path: PathBuf,
        given: DiskFormat,
        found: String,
    },
    #[error("disk image {path} has format {found}; thaw supports raw and qcow2")]
    UnsupportedFormat { path: PathBuf, found: String },
    #[error("qemu-img {what} failed for {path}: {stderr}")]
    QemuImg {
        what: &'static str,
        path: PathBuf,
        stderr: String,
    },
    #[error("could not run qemu-img (install qemu-utils)")]
    NoQemuImg(#[source] std::io::Error),
    #[error("invalid --disk {0:?}: {1}")]
    BadArg(String, String),
}

/// Identity of a base image at snapshot time: restore refuses a base that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: u128,
    pub blake3: String,
}

fn qemu_img() -> String {
    std::env::var("THAW_QEMU_IMG").unwrap_or_else(|_| "qemu-img".into())
}

fn run(what: &'static str, path: &Path, args: &[&std::ffi::OsStr]) -> Result<String, DiskError> {
    let out = Command::new(qemu_img())
        .args(args)
        .output()
        .map_err(DiskError::NoQemuImg)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        return Err(DiskError::QemuImg {
            what,
            path: path.to_owned(),
            stderr: line.trim_start_matches("qemu-img: ").to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `qemu-img info` of an image: its probed format and virtual size.
pub fn info(path: &Path) -> Result<(String, u64), DiskError> {
    let out = run(
        "info",
        path,
        &[
            "info".as_ref(),
            "--output=json".as_ref(),
            "-U".as_ref(),
            path.as_os_str(),
        ],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| DiskError::QemuImg {
        what: "info",
        path: path.to_owned(),
        stderr: e.to_string(),
    })?;
    Ok((
        v["format"].as_str().unwrap_or("unknown").to_owned(),
        v["virtual-size"].as_u64().unwrap_or(0),
    ))
}

/// Parses `PATH[,format=raw|qcow2][,readonly]` and checks the image: it exists, and its
/// real format is the one given (a qcow2 image passed as raw would expose its metadata
/// to the guest; a raw image passed as qcow2 would not open).
pub fn resolve(arg: &str) -> Result<DiskSpec, DiskError> {
    let mut parts = arg.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| DiskError::BadArg(arg.into(), "no path".into()))?;
    let mut format = None;
    let mut readonly = false;
    for opt in parts {
        match opt.split_once('=') {
            Some(("format", f)) => {
                format = Some(f.parse().map_err(|e| DiskError::BadArg(arg.into(), e))?)
            }
            None if opt == "readonly" => readonly = true,
            _ => {
                return Err(DiskError::BadArg(
                    arg.into(),
                    format!("unknown option {opt:?}"),
                ))
            }
        }
    }
    let base = std::path::absolute(path).map_err(|_| DiskError::Missing(path.into()))?;
    if !base.is_file() {
        return Err(DiskError::Missing(base));
    }
    let (found, _) = info(&base)?;
    let probed = match found.as_str() {
        "raw" => DiskFormat::Raw,
        "qcow2" => DiskFormat::Qcow2,
        _ => return Err(DiskError::UnsupportedFormat { path: base, found }),
    };
    if let Some(given) = format {
        if given != probed {
            return Err(DiskError::FormatMismatch {
                path: base,
                given,
                found,
            });
        }
    }
    Ok(DiskSpec {
        base,
        format: probed,
        readonly,
    })
}

/// Creates a qcow2 overlay on `backing`.
pub fn create_overlay(
    backing: &Path,
    backing_format: DiskFormat,
    overlay: &Path,
) -> Result<(), DiskError> {
    run(
        "create",
        overlay,
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            backing_format.as_str().as_ref(),
            "-b".as_ref(),
            backing.as_os_str(),
            overlay.as_os_str(),
        ],
    )
    .map(|_| ())
}

/// Creates a qcow2 overlay on a backing file that does not exist yet (the published
/// path of a snapshot layer), with the given virtual size.
pub fn create_overlay_unchecked(
    backing: &Path,
    size: u64,
    overlay: &Path,
) -> Result<(), DiskError> {
    let size = size.to_string();
    run(
        "create",
        overlay,
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-u".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            backing.as_os_str(),
            overlay.as_os_str(),
            size.as_ref(),
        ],
    )
    .map(|_| ())
}

/// Size and modification time of a file (a cheap "has it changed" check).
pub fn stat(path: &Path) -> std::io::Result<(u64, u128)> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok((meta.len(), mtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_checks_existence_options_and_format() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("base.raw");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let spec = resolve(raw.to_str().unwrap()).unwrap();
        assert_eq!(spec.format, DiskFormat::Raw);
        assert!(!spec.readonly);
        let spec = resolve(&format!("{},format=raw,readonly", raw.display())).unwrap();
        assert!(spec.readonly);
        let err = resolve(&format!("{},format=qcow2", raw.display())).unwrap_err();
        assert!(err.to_string().ends_with("is raw, not qcow2"), "{err}");
        assert!(matches!(
            resolve("/no/such/disk.img"),
            Err(DiskError::Missing(_))
        ));
        assert!(matches!(
            resolve(&format!("{},bogus", raw.display())),
            Err(DiskError::BadArg(..))
        ));

        let overlay = d.path().join("o.qcow2");
        create_overlay(&raw, DiskFormat::Raw, &overlay).unwrap();
        assert_eq!(info(&overlay).unwrap(), ("qcow2".to_owned(), 1 << 20));
        let err = resolve(&format!("{},format=raw", overlay.display())).unwrap_err();
        assert!(matches!(err, DiskError::FormatMismatch { .. }), "{err}");
    }
}

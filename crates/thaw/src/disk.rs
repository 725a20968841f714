//! Disk images through chains of qcow2 layers, with `qemu-img`.
//!
//! A VM never writes its base image: it runs on a qcow2 overlay in its own directory.
//! Layer `k` of disk `i` is the file `d<i>.<k>.qcow2`; layer 0 is backed by the base
//! image through the directory's link `../guest/base<i>` (see `guestref`), layer `k > 0`
//! by `d<i>.<k-1>.qcow2` — *relative* names, so a chain resolves in whatever directory
//! holds it. These exact names (and backing formats) are all a snapshot's layers may
//! name: `snapshot::confine` refuses any other before QEMU opens them. A snapshot freezes the VM's top layer
//! (QEMU moves the running VM onto a new empty one, `blockdev-snapshot-sync`) and keeps
//! the whole chain as hard links: no data is copied, the frozen files are never written
//! again, and a snapshot directory is complete on its own. A clone gets hard links to
//! the chain plus a copy of the snapshot's "template" (an empty layer on the frozen
//! top), so a restore starts no `qemu-img` process.

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
    use std::os::unix::process::CommandExt;
    // In a process group of its own, as QEMU is: a terminal's Ctrl-C goes to the whole
    // foreground group, and thaw finishes the snapshot it interrupts — with this
    // qemu-img's layer, which it must not lose to the same Ctrl-C.
    let out = Command::new(qemu_img())
        .args(args)
        .process_group(0)
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

/// Creates a qcow2 overlay whose backing file is named `backing`, relative to `dir`
/// (the overlay's directory), where it must exist now.
pub fn create_overlay_in(
    dir: &Path,
    backing: &Path,
    backing_format: DiskFormat,
    overlay: &Path,
) -> Result<(), DiskError> {
    let (_, size) = info(&dir.join(backing))?;
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
            backing_format.as_str().as_ref(),
            "-b".as_ref(),
            backing.as_os_str(),
            overlay.as_os_str(),
            size.as_ref(),
        ],
    )
    .map(|_| ())
}

/// The file name of layer `k` of disk `i`.
pub fn layer_name(i: usize, k: u32) -> String {
    format!("d{i}.{k}.qcow2")
}

/// Creates `overlay`, an empty layer on layer `k` of disk `i`, which lives beside it
/// (named relatively, see the module docs); the backing file need not exist yet.
pub fn create_layer_on(i: usize, k: u32, size: u64, overlay: &Path) -> Result<(), DiskError> {
    create_overlay_unchecked(Path::new(&layer_name(i, k)), size, overlay)
}

/// Hard-links layers `0..layers` of disk `i` from directory `from` into `to` (a
/// snapshot's chain into a clone's directory, or a VM's into a snapshot).
pub fn link_chain(from: &Path, to: &Path, i: usize, layers: u32) -> std::io::Result<()> {
    for k in 0..layers {
        let name = layer_name(i, k);
        std::fs::hard_link(from.join(&name), to.join(&name))?;
    }
    Ok(())
}

/// Parses the layer index out of a layer's file name (`d0.3.qcow2` → 3).
pub fn layer_index(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix('d')?.strip_suffix(".qcow2")?;
    rest.split_once('.')?.1.parse().ok()
}

/// Creates a qcow2 overlay on a backing file that need not exist (yet), with the given
/// virtual size.
fn create_overlay_unchecked(backing: &Path, size: u64, overlay: &Path) -> Result<(), DiskError> {
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

    #[test]
    fn chains_resolve_by_relative_names_in_any_directory() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("base.raw");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        create_overlay(&raw, DiskFormat::Raw, &a.join(layer_name(0, 0))).unwrap();
        create_layer_on(0, 0, 1 << 20, &a.join(layer_name(0, 1))).unwrap();
        link_chain(&a, &b, 0, 2).unwrap();
        // The top resolves its backing in its new directory.
        let out = run(
            "info",
            &b,
            &[
                "info".as_ref(),
                "--backing-chain".as_ref(),
                b.join(layer_name(0, 1)).as_os_str(),
            ],
        )
        .unwrap();
        assert!(
            out.contains(&format!("{}", b.join(layer_name(0, 0)).display())),
            "{out}"
        );
        assert_eq!(layer_index(&b.join("d0.1.qcow2")), Some(1));
        assert_eq!(layer_index(Path::new("disk0.qcow2")), None);
    }
}

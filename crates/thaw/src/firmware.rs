//! The machine's firmware: SeaBIOS (QEMU's default) or UEFI (OVMF), and the UEFI variable
//! store that is part of a VM's state.
//!
//! A UEFI machine runs OVMF's code from a read-only flash chip and keeps its variables
//! (boot entries, anything the guest stores with `SetVariable`) on a second, writable one
//! backed by a file of the VM's own, `efivars.fd`, first copied from OVMF's template. The
//! flash contents are in the migration stream, but the file is what the chip writes
//! through to, so it is VM state like a disk layer:
//!
//! - a snapshot keeps the file as it was when the VM was paused
//!   ([`vars_into_snapshot`]: moved with `--stop`, else copied), listed in the manifest
//!   with its hash ([`SNAPSHOT_FILES`]);
//! - every clone gets its own copy ([`vars_for_clone`]), so what one clone writes no
//!   other clone and not the snapshot sees.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::fsutil::IoError;

/// The UEFI variable store in a VM's directory and in a snapshot.
pub const VARS_FILE: &str = "efivars.fd";
/// The files a snapshot holds for the firmware (those that exist), for its manifest.
pub const SNAPSHOT_FILES: &[&str] = &[VARS_FILE];

/// Where OVMF is looked for unless `THAW_OVMF_DIR` says otherwise (Debian's `ovmf`).
pub const OVMF_DIR: &str = "/usr/share/OVMF";
/// The environment variable naming another directory holding OVMF's files.
pub const OVMF_DIR_ENV: &str = "THAW_OVMF_DIR";
/// OVMF's code (4 MiB flash layout, no Secure Boot: runs on the `pc` machine).
pub const OVMF_CODE: &str = "OVMF_CODE_4M.fd";
/// The empty variable store that matches [`OVMF_CODE`].
pub const OVMF_VARS: &str = "OVMF_VARS_4M.fd";

/// The firmware a machine boots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS, QEMU's default: nothing on the command line.
    #[default]
    Bios,
    /// OVMF: `code` is mapped read-only; the variables are the VM's [`VARS_FILE`].
    Uefi { code: PathBuf },
}

impl Firmware {
    pub fn is_bios(&self) -> bool {
        matches!(self, Firmware::Bios)
    }
}

/// What the user names on the command line (`--firmware bios|uefi`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FirmwareKind {
    #[default]
    Bios,
    Uefi,
}

impl std::str::FromStr for FirmwareKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bios" | "seabios" => Ok(FirmwareKind::Bios),
            "uefi" | "ovmf" => Ok(FirmwareKind::Uefi),
            other => Err(format!("unknown firmware {other:?} (use bios or uefi)")),
        }
    }
}

impl FirmwareKind {
    /// Which kind a spec's firmware is.
    pub fn of(firmware: &Firmware) -> FirmwareKind {
        match firmware {
            Firmware::Bios => FirmwareKind::Bios,
            Firmware::Uefi { .. } => FirmwareKind::Uefi,
        }
    }
}

impl std::fmt::Display for FirmwareKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FirmwareKind::Bios => "bios",
            FirmwareKind::Uefi => "uefi",
        })
    }
}

/// OVMF's two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("UEFI firmware not found ({} is missing): install the Debian package ovmf (scripts/setup.sh --images), or set {OVMF_DIR_ENV}", .0.display())]
    OvmfMissing(PathBuf),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Finds OVMF in `$THAW_OVMF_DIR` or [`OVMF_DIR`].
pub fn ovmf() -> Result<Ovmf, FirmwareError> {
    let dir = std::env::var_os(OVMF_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(OVMF_DIR), PathBuf::from);
    ovmf_in(&dir)
}

fn ovmf_in(dir: &Path) -> Result<Ovmf, FirmwareError> {
    let code = dir.join(OVMF_CODE);
    let vars_template = dir.join(OVMF_VARS);
    for f in [&code, &vars_template] {
        if !f.is_file() {
            return Err(FirmwareError::OvmfMissing(f.clone()));
        }
    }
    Ok(Ovmf {
        code,
        vars_template,
    })
}

/// Resolves what the user asked for into the spec's [`Firmware`].
pub fn resolve(kind: FirmwareKind) -> Result<Firmware, FirmwareError> {
    Ok(match kind {
        FirmwareKind::Bios => Firmware::Bios,
        FirmwareKind::Uefi => Firmware::Uefi { code: ovmf()?.code },
    })
}

/// The UEFI variable store of the VM (or snapshot) whose directory is `dir`.
pub fn vars_file(dir: &Path) -> PathBuf {
    dir.join(VARS_FILE)
}

/// Gives a new VM booting `firmware` its own variable store, a copy of OVMF's template.
/// Nothing to do for BIOS.
pub fn vars_for_boot(firmware: &Firmware, vm_dir: &Path) -> Result<(), FirmwareError> {
    if firmware.is_bios() {
        return Ok(());
    }
    let ovmf = ovmf()?;
    let dest = vars_file(vm_dir);
    copy_writable(&ovmf.vars_template, &dest).map_err(|source| {
        FirmwareError::Io(IoError::new("copy OVMF's variable store to", dest, source))
    })
}

/// Puts a paused VM's variable store into the snapshot being written in `snapshot_dir`:
/// moved when the VM ends (`stop`), copied when it continues. Nothing to do for a VM
/// without one (BIOS).
///
/// The caller holds the VM paused with its disks flushed (after the migration), so the
/// file is what the flash chip holds.
pub fn vars_into_snapshot(vm_dir: &Path, snapshot_dir: &Path, stop: bool) -> std::io::Result<()> {
    let from = vars_file(vm_dir);
    if !from.exists() {
        return Ok(());
    }
    let to = vars_file(snapshot_dir);
    if stop {
        std::fs::rename(&from, &to)?;
    } else {
        fsutil::copy_sparse(&from, &to)?;
    }
    std::fs::File::open(&to)?.sync_all()
}

/// Gives a clone in `clone_dir` its own copy of the snapshot's variable store, if it has
/// one.
pub fn vars_for_clone(snapshot_dir: &Path, clone_dir: &Path) -> std::io::Result<()> {
    let from = vars_file(snapshot_dir);
    if !from.exists() {
        return Ok(());
    }
    copy_writable(&from, &vars_file(clone_dir))
}

/// What restore must find for the firmware of a snapshot in `snapshot_dir` whose manifest
/// lists `files`: OVMF's code where the spec says, and the variable store the manifest
/// lists, of its size. The error is (what is missing, where).
pub fn check_snapshot(
    firmware: &Firmware,
    snapshot_dir: &Path,
    listed_size: Option<u64>,
) -> Result<(), (&'static str, PathBuf)> {
    let Firmware::Uefi { code } = firmware else {
        return Ok(());
    };
    if !code.is_file() {
        return Err(("UEFI firmware", code.clone()));
    }
    let vars = vars_file(snapshot_dir);
    match (std::fs::metadata(&vars).ok().map(|m| m.len()), listed_size) {
        (Some(found), Some(listed)) if found == listed => Ok(()),
        _ => Err(("UEFI variable store", vars)),
    }
}

/// Copies `from` to `to` (which must not exist yet) and makes the copy writable: Debian's
/// template is read-only for everyone but root.
fn copy_writable(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fsutil::copy_sparse(from, to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ovmf_names_the_package() {
        let d = tempfile::tempdir().unwrap();
        let err = ovmf_in(d.path()).unwrap_err().to_string();
        assert!(err.contains("install the Debian package ovmf"), "{err}");
        assert!(err.contains(OVMF_CODE), "{err}");
        std::fs::write(d.path().join(OVMF_CODE), b"code").unwrap();
        std::fs::write(d.path().join(OVMF_VARS), b"vars").unwrap();
        let o = ovmf_in(d.path()).unwrap();
        assert_eq!(o.code, d.path().join(OVMF_CODE));
    }

    #[test]
    fn vars_move_or_copy_into_the_snapshot_and_each_clone_gets_its_own() {
        let d = tempfile::tempdir().unwrap();
        let (vm, snap, a, b) = (
            d.path().join("vm"),
            d.path().join("snap"),
            d.path().join("a"),
            d.path().join("b"),
        );
        for dir in [&vm, &snap, &a, &b] {
            std::fs::create_dir(dir).unwrap();
        }
        // BIOS: nothing anywhere.
        vars_into_snapshot(&vm, &snap, true).unwrap();
        vars_for_clone(&snap, &a).unwrap();
        assert!(!vars_file(&snap).exists() && !vars_file(&a).exists());

        std::fs::write(vars_file(&vm), b"vars").unwrap();
        vars_into_snapshot(&vm, &snap, false).unwrap();
        assert!(vars_file(&vm).exists(), "a VM that continues keeps its own");
        std::fs::remove_file(vars_file(&snap)).unwrap();
        vars_into_snapshot(&vm, &snap, true).unwrap();
        assert!(!vars_file(&vm).exists(), "moved with --stop");
        vars_for_clone(&snap, &a).unwrap();
        vars_for_clone(&snap, &b).unwrap();
        std::fs::write(vars_file(&a), b"VARS").unwrap();
        assert_eq!(std::fs::read(vars_file(&b)).unwrap(), b"vars");
        assert_eq!(std::fs::read(vars_file(&snap)).unwrap(), b"vars");

        let uefi = Firmware::Uefi {
            code: vars_file(&snap),
        };
        check_snapshot(&uefi, &snap, Some(4)).unwrap();
        assert_eq!(
            check_snapshot(&uefi, &snap, Some(5)).unwrap_err().0,
            "UEFI variable store"
        );
        assert_eq!(
            check_snapshot(&uefi, &a, None).unwrap_err().0,
            "UEFI variable store"
        );
        check_snapshot(&Firmware::Bios, &a, None).unwrap();
    }

    #[test]
    fn firmware_round_trips_and_defaults_to_bios() {
        let u = Firmware::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
        };
        let j = serde_json::to_string(&u).unwrap();
        assert_eq!(
            j,
            r#"{"kind":"uefi","code":"/usr/share/OVMF/OVMF_CODE_4M.fd"}"#
        );
        assert_eq!(serde_json::from_str::<Firmware>(&j).unwrap(), u);
        assert_eq!(Firmware::default(), Firmware::Bios);
        assert_eq!("uefi".parse::<FirmwareKind>().unwrap(), FirmwareKind::Uefi);
        assert!("coreboot".parse::<FirmwareKind>().is_err());
    }
}

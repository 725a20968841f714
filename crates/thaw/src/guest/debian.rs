//! The Debian guest: Debian bookworm on a disk image, booted with the same cloud kernel as
//! the default guest.
//!
//! The disk holds a debootstrapped system (see [`super::rootfs`]) with systemd as init,
//! qemu-guest-agent (started early in the boot on the port `org.qemu.guest_agent.0`),
//! redis-server on 0.0.0.0:6379 with protected mode off, systemd-networkd doing DHCP on
//! the NIC (QEMU's user networking gives 10.0.2.15), a root login with no password on the
//! serial console, and the kernel's modules. A unit prints [`super::READY_LINE`] on the
//! console once redis and the agent are started.
//!
//! The kernel boots with an initramfs thaw writes (busybox, virtio_blk, and an `/init`
//! that mounts `/dev/vda` and switches to its `/sbin/init`), so the disk needs no
//! bootloader and no initramfs-tools.
//!
//! Built guests live in `<cache>/guests/debian/` as `vmlinuz`, `initrd.cpio`, `disk.qcow2`
//! (read-only: VMs run on overlays of it) and `guest.json`, built under a lock and renamed
//! into place like the default guest.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    build_atomically, guests_dir, initramfs, kernel, lock, modules, rootfs, sync_dir, unreadable,
    write_synced, FileRecord, GuestBuildError, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE,
};
use crate::fsutil::Context;
use crate::record::Record;

const NAME: &str = "debian";
/// `net.ifnames=0` names the NIC `eth0` as in the default guest; `quiet` keeps systemd's
/// status lines off the emulated UART; `cryptomgr.notests` skips the crypto self-tests.
const CMDLINE: &str =
    "console=ttyS0 root=/dev/vda rw panic=-1 quiet cryptomgr.notests net.ifnames=0";
/// Bump when the guest changes in a way [`recipe`] does not see.
const RECIPE_VERSION: u32 = 1;
const MANIFEST_FORMAT: u32 = 1;
/// Loaded by the initramfs: the disk's driver to reach the root file system, and the NIC's
/// so that eth0 is there before systemd starts rather than after udev has decompressed and
/// loaded it. udev loads the rest from the disk's /lib/modules.
const MODULES: &[&str] = &["virtio_blk", "virtio_net"];
const DISK_FILE: &str = "disk.qcow2";

/// PID 1 of the initramfs; see `init-disk.sh`.
const INIT_SCRIPT: &str = include_str!("init-disk.sh");

/// A guest that boots from a disk image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The qcow2 base image. Read-only: thaw never writes it; VMs run on overlays.
    pub disk: PathBuf,
}

/// What `guest.json` records about a built Debian guest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct DebianManifest {
    format: u32,
    recipe: String,
    kernel_package: String,
    kernel_version: String,
    suite: String,
    mirror: String,
    cmdline: String,
    kernel: FileRecord,
    initrd: FileRecord,
    disk: FileRecord,
}

impl Record for DebianManifest {
    const KIND: &'static str = "guest manifest";
    const VERSION: u32 = 1;
    const MAX_BYTES: u64 = super::MANIFEST_MAX_BYTES;
}

fn dir(cache: &Path) -> PathBuf {
    guests_dir(cache).join(NAME)
}

/// BLAKE3 of everything in thaw that decides the guest's contents.
fn recipe() -> String {
    let mut h = blake3::Hasher::new();
    h.update(&RECIPE_VERSION.to_le_bytes());
    for part in [INIT_SCRIPT, CMDLINE].iter().chain(MODULES) {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    super::recipe::fingerprint(&mut h);
    h.finalize().to_hex().to_string()
}

/// The Debian guest if it is already built in `cache` (all files present, built by this
/// version of the recipe), else None.
pub fn debian_guest(cache: &Path) -> Option<DiskGuest> {
    let dir = std::path::absolute(dir(cache)).ok()?;
    let manifest = DebianManifest::read_from(&dir.join(MANIFEST_FILE)).ok()?;
    if manifest.format != MANIFEST_FORMAT || manifest.recipe != recipe() {
        return None;
    }
    let path = |r: &FileRecord| {
        let p = dir.join(&r.name);
        (fs::metadata(&p).ok()?.len() == r.size).then_some(p)
    };
    Some(DiskGuest {
        kernel: path(&manifest.kernel)?,
        initrd: path(&manifest.initrd)?,
        disk: path(&manifest.disk)?,
        cmdline: manifest.cmdline,
    })
}

/// Builds (or rebuilds when `force`) the Debian guest into `cache`/guests/debian/. Without
/// `force`, a guest already built there is returned as is. Takes a minute or two, most of
/// it debootstrap downloading and installing packages.
///
/// `progress` gets one short human line per step.
///
/// # Errors
/// When not run as root, when a tool it needs is missing (debootstrap, e2fsprogs,
/// qemu-utils, xz-utils, busybox-static, apt), when debootstrap fails (its log is kept
/// beside the cache's guests), or the cache cannot be written.
pub fn build_debian_guest(
    cache: &Path,
    force: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<DiskGuest, GuestBuildError> {
    let _lock = lock(cache, NAME)?;
    if !force {
        if let Some(guest) = debian_guest(cache) {
            return Ok(guest);
        }
    }
    let started = Instant::now();
    let log = guests_dir(cache).join(format!("{NAME}.debootstrap.log"));
    let dest = build_atomically(cache, NAME, progress, |scratch, progress| {
        build_into(scratch, &log, progress)
    })?;
    let guest = debian_guest(cache).ok_or_else(|| unreadable(&dest))?;
    // The log of an earlier failed attempt, if any, no longer says anything.
    let _ = fs::remove_file(&log);
    tracing::info!(dir = %dest.display(), "built the Debian guest");
    progress(&format!(
        "built the Debian guest in {} ({:.0} s)",
        dest.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(guest)
}

/// [`debian_guest`] if present, otherwise [`build_debian_guest`]. Safe to call from
/// several processes at once: one builds, the others wait for it and use its result.
///
/// # Errors
/// As [`build_debian_guest`].
pub fn ensure_debian_guest(
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<DiskGuest, GuestBuildError> {
    build_debian_guest(cache, false, progress)
}

/// Writes `scratch/out/{vmlinuz,initrd.cpio,disk.qcow2,guest.json}`, every file synced.
fn build_into(
    scratch: &Path,
    failed_log: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), GuestBuildError> {
    if !rootfs::is_root() {
        return Err(GuestBuildError::NeedsRoot {
            guest: NAME,
            why: "debootstrap and chroot do",
        });
    }
    // Everything that can be missing on the host fails before the downloads.
    rootfs::check_tools()?;
    let mut tree = initramfs::busybox_tree(INIT_SCRIPT)?;

    let mut apt = kernel::Apt::new();
    let pkg = apt.resolve(progress)?;
    let deb_dir = scratch.join("deb");
    fs::create_dir_all(&deb_dir).at("create the download directory", &deb_dir)?;
    let deb = apt.download(&pkg, &deb_dir, progress)?;
    progress(&format!("unpacking {}", pkg.name));
    let kernel_root = scratch.join("kernel");
    let vmlinuz = kernel::extract(&pkg, &deb, &kernel_root)?;
    let modules_dir = kernel::modules_dir(&pkg, &kernel_root)?;
    let mods = modules::collect(&modules_dir, MODULES, &pkg.name)?;
    modules::install(&mut tree, &mods);
    let initrd = tree
        .write_to(Vec::new())
        .at("write the initramfs", Path::new(INITRD_FILE))?;

    let root = scratch.join("rootfs");
    let mirror = rootfs::mirror();
    let started = Instant::now();
    rootfs::debootstrap(&root, &mirror, failed_log, progress)?;
    progress(&format!(
        "debootstrap done in {:.0} s; configuring the guest",
        started.elapsed().as_secs_f64()
    ));
    rootfs::configure(&root)?;
    rootfs::install_modules(&root, &modules_dir)?;
    rootfs::trim(&root)?;

    progress(&format!(
        "making the {} disk image",
        super::recipe::DISK_SIZE
    ));
    let out = scratch.join("out");
    fs::create_dir_all(&out).at("create the output directory", &out)?;
    let disk = out.join(DISK_FILE);
    let raw = scratch.join("disk.raw");
    rootfs::make_image(&root, &raw, &disk)?;
    let _ = fs::remove_file(&raw);
    fs::File::open(&disk)
        .and_then(|f| f.sync_all())
        .at("sync the disk image", &disk)?;
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o444))
        .at("make the disk image read-only", &disk)?;

    let kernel = fs::read(&vmlinuz).at("read the unpacked kernel", &vmlinuz)?;
    write_synced(&out.join(KERNEL_FILE), &kernel, "write the kernel")?;
    write_synced(&out.join(INITRD_FILE), &initrd, "write the initramfs")?;
    let manifest = DebianManifest {
        format: MANIFEST_FORMAT,
        recipe: recipe(),
        kernel_package: pkg.name,
        kernel_version: pkg.version,
        suite: super::recipe::SUITE.to_owned(),
        mirror,
        cmdline: CMDLINE.to_owned(),
        kernel: FileRecord::new(KERNEL_FILE, &kernel),
        initrd: FileRecord::new(INITRD_FILE, &initrd),
        disk: file_record(DISK_FILE, &disk)?,
    };
    manifest.write_to(&out.join(MANIFEST_FILE))?;
    sync_dir(&out)
}

/// A [`FileRecord`] of a file too big to read into memory at once.
pub(crate) fn file_record(name: &str, path: &Path) -> Result<FileRecord, GuestBuildError> {
    let mut hasher = blake3::Hasher::new();
    let mut file = fs::File::open(path).at("hash the disk image", path)?;
    let size = io::copy(&mut file, &mut hasher).at("hash the disk image", path)?;
    Ok(FileRecord {
        name: name.to_owned(),
        size,
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_guest(cache: &Path) -> DebianManifest {
        let dir = dir(cache);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(KERNEL_FILE), b"kernel").unwrap();
        fs::write(dir.join(INITRD_FILE), b"initrd").unwrap();
        fs::write(dir.join(DISK_FILE), b"qcow2 disk").unwrap();
        let manifest = DebianManifest {
            format: MANIFEST_FORMAT,
            recipe: recipe(),
            kernel_package: "linux-image-test".into(),
            kernel_version: "6.12-1".into(),
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            cmdline: CMDLINE.into(),
            kernel: FileRecord::new(KERNEL_FILE, b"kernel"),
            initrd: FileRecord::new(INITRD_FILE, b"initrd"),
            disk: file_record(DISK_FILE, &dir.join(DISK_FILE)).unwrap(),
        };
        fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        manifest
    }

    #[test]
    fn debian_manifest_round_trips() {
        let cache = tempfile::tempdir().unwrap();
        crate::record::tests::round_trip(&fake_guest(cache.path()));
    }

    #[test]
    fn debian_guest_finds_a_complete_build_and_no_other() {
        let cache = tempfile::tempdir().unwrap();
        assert_eq!(debian_guest(cache.path()), None);
        let manifest = fake_guest(cache.path());
        let d = std::path::absolute(dir(cache.path())).unwrap();
        assert_eq!(
            debian_guest(cache.path()),
            Some(DiskGuest {
                kernel: d.join(KERNEL_FILE),
                initrd: d.join(INITRD_FILE),
                cmdline: CMDLINE.into(),
                disk: d.join(DISK_FILE),
            })
        );
        // Without force, nothing is built (this would need root and the network).
        let built = build_debian_guest(cache.path(), false, &mut |_| {}).unwrap();
        assert_eq!(Some(built), debian_guest(cache.path()));

        fs::write(d.join(DISK_FILE), b"short").unwrap();
        assert_eq!(debian_guest(cache.path()), None, "disk size differs");
        fake_guest(cache.path());
        let stale = DebianManifest {
            recipe: "another".into(),
            ..manifest
        };
        fs::write(d.join(MANIFEST_FILE), serde_json::to_vec(&stale).unwrap()).unwrap();
        assert_eq!(debian_guest(cache.path()), None, "other recipe");
    }

    #[test]
    fn manifest_and_guest_round_trip() {
        let cache = tempfile::tempdir().unwrap();
        let m = fake_guest(cache.path());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<DebianManifest>(&json).unwrap(), m);
        let g = debian_guest(cache.path()).unwrap();
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<DiskGuest>(&json).unwrap(), g);
    }

    #[test]
    fn initramfs_mounts_the_disk_and_switches_root() {
        assert!(INIT_SCRIPT.starts_with("#!/bin/busybox sh\n"));
        assert!(INIT_SCRIPT.contains("exec switch_root /newroot /sbin/init"));
        assert!(CMDLINE.split(' ').any(|a| a == "root=/dev/vda"));
        assert!(CMDLINE.split(' ').any(|a| a == "console=ttyS0"));
    }
}

//! The firmware-booted guest: Debian bookworm on a partitioned disk image with its own
//! bootloader, which SeaBIOS and UEFI (OVMF) both start. No `-kernel`: QEMU is given the
//! disk and the firmware does the rest, as with any cloud image or installed system.
//!
//! One image serves BIOS and UEFI (GPT, written by `sfdisk`):
//!
//! ```text
//! 1 MiB   partition 1  BIOS boot   GRUB's core image (i386-pc), found through the MBR's boot.img
//! 2 MiB   partition 2  ESP (FAT)   EFI/BOOT/BOOTX64.EFI: GRUB (x86_64-efi)
//! 34 MiB  partition 3  ext4        the system, label thaw-root, with /boot/grub/grub.cfg
//! ```
//!
//! Both GRUB images are made with `grub-mkimage` from the host's grub-pc-bin and
//! grub-efi-amd64-bin, with every module they need built in and a first config that
//! finds the root by its label; thaw itself writes boot.img and the core image into
//! place (what `grub-bios-setup` does), so no loop device and no mount are needed. GRUB
//! and the kernel print on the serial console (and the screen), so a boot that fails
//! says where in `console.log`.
//!
//! The system is the Debian guest's (see [`super::rootfs`]: systemd, qemu-guest-agent,
//! redis) with Debian's generic kernel (`linux-image-amd64`, which has the bochs DRM
//! driver for QEMU's VGA card; only the modules the guest uses are installed) and thaw's
//! small initramfs (busybox, the disk and ext4 drivers), both in `/boot`. With a display,
//! tty1 shows a clock that changes every second and echoes what is typed: the graphical
//! guest (`thaw-screen`, started by udev when the frame buffer appears).
//!
//! Built images live in `<cache>/guests/debian-firmware/` as `disk.qcow2` (read-only)
//! and `guest.json`, built under a lock and renamed into place like the other guests.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    build_atomically, guests_dir, initramfs, kernel, lock, modules, rootfs, sync_dir, unreadable,
    write_synced, FileRecord, GuestBuildError, MANIFEST_FILE,
};
use crate::fsutil::Context;
use crate::record::Record;

const NAME: &str = "debian-firmware";
/// Bump when the image changes in a way [`recipe`] does not see.
const RECIPE_VERSION: u32 = 1;
const MANIFEST_FORMAT: u32 = 1;
const DISK_FILE: &str = "disk.qcow2";

/// PID 1 of the initramfs: the Debian guest's (load the modules, mount `root=`, switch).
const INIT_SCRIPT: &str = include_str!("init-disk.sh");

/// The kernel command line GRUB passes. The screen (tty0) and the serial console both get
/// the kernel's messages; the last `console=` is `/dev/console`, where systemd and the
/// ready line go. `vt.global_cursor_default=0` hides the text cursor (a blinking cursor
/// would make two screenshots of one moment differ), `consoleblank=0` keeps the screen
/// on, `fbcon=font:TER16x32` is a font big enough to read on a screenshot.
const CMDLINE: &str = "root=/dev/vda3 rw console=tty0 console=ttyS0 panic=-1 quiet loglevel=3 \
                       cryptomgr.notests net.ifnames=0 consoleblank=0 vt.global_cursor_default=0 \
                       fbcon=font:TER16x32";

/// The initramfs loads these (Debian's generic kernel has ext4 as a module, and ext4's
/// metadata checksums need crc32c).
const INITRD_MODULES: &[&str] = &["virtio_blk", "virtio_net", "crc32c_generic", "ext4"];
/// Installed in the guest's /lib/modules for udev: the initramfs's, the VGA card's
/// driver, and efivarfs (systemd mounts the UEFI variables under UEFI).
const ROOTFS_MODULES: &[&str] = &[
    "virtio_blk",
    "virtio_net",
    "crc32c_generic",
    "ext4",
    "bochs",
    "efivarfs",
];

/// The disk, in 512-byte sectors.
const SECTOR: u64 = 512;
const BIOS_BOOT_START: u64 = 2048;
const BIOS_BOOT_SECTORS: u64 = 2048;
const ESP_START: u64 = 4096;
const ESP_SECTORS: u64 = 65536;
const ROOT_START: u64 = 69632;
/// The root file system: 1 GiB, like the Debian guest's.
const ROOT_SECTORS: u64 = 2 * 1024 * 1024;
/// The backup GPT at the end of the disk.
const GPT_BACKUP_SECTORS: u64 = 33;
const DISK_SECTORS: u64 = ROOT_START + ROOT_SECTORS + GPT_BACKUP_SECTORS + 2015;
const ROOT_LABEL: &str = "thaw-root";

/// The partition table (sfdisk's script format), with fixed ids so that two builds of
/// one recipe make the same table.
fn sfdisk_script() -> String {
    format!(
        "label: gpt\n\
         label-id: 7A9E1C52-56B1-4F3A-8E0B-5448415731AB\n\
         unit: sectors\n\
         first-lba: 34\n\
         start={BIOS_BOOT_START}, size={BIOS_BOOT_SECTORS}, type=21686148-6453-6F6E-744E-656564454649, uuid=1B3C0D2E-0A55-4B69-9A0D-5448415731B1, name=\"bios-boot\"\n\
         start={ESP_START}, size={ESP_SECTORS}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=1B3C0D2E-0A55-4B69-9A0D-5448415731B2, name=\"esp\"\n\
         start={ROOT_START}, size={ROOT_SECTORS}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=1B3C0D2E-0A55-4B69-9A0D-5448415731B3, name=\"root\"\n"
    )
}

/// Built into both GRUB images: the first config, the partition map and file systems to
/// reach /boot, the commands grub.cfg uses, the terminals, and Linux's loader.
const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "ext2",
    "fat",
    "normal",
    "configfile",
    "search",
    "search_label",
    "test",
    "echo",
    "linux",
    "gzio",
    "serial",
    "terminal",
];
/// Only in the BIOS image: disks through the BIOS.
const GRUB_BIOS_MODULES: &[&str] = &["biosdisk"];
/// Only in the UEFI image: the screen through UEFI's graphics output.
const GRUB_EFI_MODULES: &[&str] = &["efi_gop"];

/// The config built into both GRUB images: find the root file system by its label.
const GRUB_EARLY_CFG: &str = "search --no-floppy --label --set=root thaw-root\n\
                              set prefix=($root)/boot/grub\n";

/// /boot/grub/grub.cfg: boot at once, telling the serial console (UEFI's console already
/// reaches the serial port, so GRUB's own serial terminal is for BIOS only).
fn grub_cfg() -> String {
    format!(
        r#"# thaw's firmware-booted guest: no menu, straight into Linux.
if [ "$grub_platform" = efi ]; then
    terminal_input console
    terminal_output console
else
    serial --unit=0 --speed=115200
    terminal_input console serial
    terminal_output console serial
fi
set timeout=0
echo "thaw: GRUB ($grub_platform) is starting Linux"
linux /boot/vmlinuz {CMDLINE}
initrd /boot/initrd.img
boot
"#
    )
}

/// The root is found by its label (the kernel command line names /dev/vda3 too).
const FSTAB: &str = "LABEL=thaw-root / ext4 rw,noatime 0 0\n";

/// tty1 of the graphical guest: a banner, a clock line that changes every second, and a
/// prompt that echoes each line typed. The clock is drawn at line 2 with the cursor saved
/// and restored around it, in one write, so typing and the clock do not mix. It marks
/// `/run/thaw-screen.drawn` once the screen is whole.
const SCREEN_SCRIPT_PATH: &str = "usr/local/sbin/thaw-screen";
const SCREEN_SCRIPT: &str = r#"#!/bin/sh
# thaw's graphical guest on tty1 (thaw-screen.service): a clock and what is typed.
dmesg -n 1
printf '\033[2J\033[H'
printf 'thaw graphical guest: %s\n\n\n' "$(hostname)"
(
    while :; do
        line=$(date '+%Y-%m-%d %H:%M:%S')
        up=$(cut -d. -f1 /proc/uptime)
        printf '\0337\033[2;1H%s   up %ss\033[K\0338' "$line" "$up"
        : >/run/thaw-screen.drawn
        sleep 1
    done
) &
printf 'type here> '
while IFS= read -r typed; do
    printf 'you typed: %s\ntype here> ' "$typed"
done
"#;

const SCREEN_UNIT: &str = "\
[Unit]
Description=The graphical guest's screen on tty1 (thaw)
After=systemd-user-sessions.service

[Service]
ExecStart=/usr/local/sbin/thaw-screen
StandardInput=tty
StandardOutput=tty
TTYPath=/dev/tty1
TTYReset=yes
TTYVHangup=yes
Restart=always
";

/// Starts the screen when a frame buffer appears (the VGA card's driver loaded), and only
/// then: without a display, nothing draws.
const SCREEN_UDEV_RULE: &str = "\
SUBSYSTEM==\"graphics\", KERNEL==\"fb0\", TAG+=\"systemd\", ENV{SYSTEMD_WANTS}+=\"thaw-screen.service\"
";

/// Files the image adds to (or replaces in) the Debian guest's root file system.
fn extra_files() -> Vec<(&'static str, u32, String)> {
    vec![
        ("etc/fstab", 0o644, FSTAB.to_owned()),
        ("boot/grub/grub.cfg", 0o644, grub_cfg()),
        (SCREEN_SCRIPT_PATH, 0o755, SCREEN_SCRIPT.to_owned()),
        (
            "etc/systemd/system/thaw-screen.service",
            0o644,
            SCREEN_UNIT.to_owned(),
        ),
        (
            "etc/udev/rules.d/70-thaw-screen.rules",
            0o644,
            SCREEN_UDEV_RULE.to_owned(),
        ),
    ]
}

/// The host programs and files a build needs, checked before anything is downloaded.
const TOOLS: &[(&str, &str)] = &[
    ("sfdisk", "fdisk"),
    ("grub-mkimage", "grub-common"),
    ("mkfs.vfat", "dosfstools"),
    ("mmd", "mtools"),
    ("mcopy", "mtools"),
];
const GRUB_BIOS_DIR: &str = "/usr/lib/grub/i386-pc";
const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";

/// A guest whose disk boots through firmware.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FirmwareGuest {
    /// The qcow2 image. Read-only: thaw never writes it; VMs run on overlays.
    pub disk: PathBuf,
}

/// What `guest.json` records about a built image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct ImageManifest {
    format: u32,
    recipe: String,
    kernel_package: String,
    kernel_version: String,
    suite: String,
    mirror: String,
    cmdline: String,
    disk: FileRecord,
}

impl Record for ImageManifest {
    const KIND: &'static str = "guest manifest";
    const VERSION: u32 = 1;
    const MAX_BYTES: u64 = super::MANIFEST_MAX_BYTES;
}

fn dir(cache: &Path) -> PathBuf {
    guests_dir(cache).join(NAME)
}

/// BLAKE3 of everything in thaw that decides the image's contents.
fn recipe() -> String {
    let mut h = blake3::Hasher::new();
    h.update(&RECIPE_VERSION.to_le_bytes());
    let mut add = |s: &str| {
        h.update(s.as_bytes());
        h.update(b"\0");
    };
    add(INIT_SCRIPT);
    add(CMDLINE);
    add(kernel::GENERIC_METAPACKAGE);
    INITRD_MODULES.iter().for_each(|m| add(m));
    ROOTFS_MODULES.iter().for_each(|m| add(m));
    add(&sfdisk_script());
    add(&format!("{DISK_SECTORS}"));
    GRUB_MODULES
        .iter()
        .chain(GRUB_BIOS_MODULES)
        .chain(GRUB_EFI_MODULES)
        .for_each(|m| add(m));
    add(GRUB_EARLY_CFG);
    for (path, mode, text) in extra_files() {
        add(path);
        add(&format!("{mode:o}"));
        add(&text);
    }
    super::recipe::fingerprint(&mut h);
    h.finalize().to_hex().to_string()
}

/// The image if it is already built in `cache` (built by this version of the recipe),
/// else None.
pub fn firmware_guest(cache: &Path) -> Option<FirmwareGuest> {
    let dir = std::path::absolute(dir(cache)).ok()?;
    let manifest = ImageManifest::read_from(&dir.join(MANIFEST_FILE)).ok()?;
    if manifest.format != MANIFEST_FORMAT || manifest.recipe != recipe() {
        return None;
    }
    let disk = dir.join(&manifest.disk.name);
    (fs::metadata(&disk).ok()?.len() == manifest.disk.size).then_some(FirmwareGuest { disk })
}

/// Builds (or rebuilds when `force`) the image into `cache`/guests/debian-firmware/.
/// Without `force`, an image already built there is returned as is. Takes a few minutes,
/// most of it debootstrap.
///
/// # Errors
/// When not run as root, when a tool it needs is missing (debootstrap, e2fsprogs,
/// qemu-utils, fdisk, grub-common, grub-pc-bin, grub-efi-amd64-bin, dosfstools, mtools,
/// busybox-static), when debootstrap fails, or the cache cannot be written.
pub fn build_firmware_guest(
    cache: &Path,
    force: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<FirmwareGuest, GuestBuildError> {
    let _lock = lock(cache, NAME)?;
    if !force {
        if let Some(guest) = firmware_guest(cache) {
            return Ok(guest);
        }
    }
    let started = Instant::now();
    let log = guests_dir(cache).join(format!("{NAME}.debootstrap.log"));
    let dest = build_atomically(cache, NAME, progress, |scratch, progress| {
        build_into(scratch, &log, progress)
    })?;
    let guest = firmware_guest(cache).ok_or_else(|| unreadable(&dest))?;
    let _ = fs::remove_file(&log);
    tracing::info!(dir = %dest.display(), "built the firmware-booted Debian image");
    progress(&format!(
        "built the firmware-booted Debian image in {} ({:.0} s)",
        dest.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(guest)
}

/// [`firmware_guest`] if present, otherwise [`build_firmware_guest`]; safe to call from
/// several processes at once.
///
/// # Errors
/// As [`build_firmware_guest`].
pub fn ensure_firmware_guest(
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<FirmwareGuest, GuestBuildError> {
    build_firmware_guest(cache, false, progress)
}

fn check_tools() -> Result<(), GuestBuildError> {
    rootfs::check_tools()?;
    rootfs::check_programs(TOOLS)?;
    for (dir, package) in [
        (GRUB_BIOS_DIR, "grub-pc-bin"),
        (GRUB_EFI_DIR, "grub-efi-amd64-bin"),
    ] {
        if !Path::new(dir).join("linux.mod").is_file() {
            return Err(GuestBuildError::MissingTool {
                tool: format!("{dir}/linux.mod"),
                package,
            });
        }
    }
    Ok(())
}

/// Writes `scratch/out/{disk.qcow2,guest.json}`, every file synced.
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
    check_tools()?;
    let mut tree = initramfs::busybox_tree(INIT_SCRIPT)?;

    let mut apt = kernel::Apt::new();
    let pkg = apt.resolve_from(kernel::GENERIC_METAPACKAGE, progress)?;
    let deb_dir = scratch.join("deb");
    fs::create_dir_all(&deb_dir).at("create the download directory", &deb_dir)?;
    let deb = apt.download(&pkg, &deb_dir, progress)?;
    progress(&format!("unpacking {}", pkg.name));
    let kernel_root = scratch.join("kernel");
    let vmlinuz = kernel::extract(&pkg, &deb, &kernel_root)?;
    let modules_dir = kernel::modules_dir(&pkg, &kernel_root)?;
    let mods = modules::collect(&modules_dir, INITRD_MODULES, &pkg.name)?;
    modules::install(&mut tree, &mods);
    let initrd = tree
        .write_to(Vec::new())
        .at("write the initramfs", Path::new("initrd.img"))?;

    let root = scratch.join("rootfs");
    let mirror = rootfs::mirror();
    let started = Instant::now();
    rootfs::debootstrap(&root, &mirror, failed_log, progress)?;
    progress(&format!(
        "debootstrap done in {:.0} s; configuring the guest",
        started.elapsed().as_secs_f64()
    ));
    rootfs::configure(&root)?;
    write_files(&root, &extra_files())?;
    install_modules(&root, &modules_dir, &pkg.name)?;
    let boot = root.join("boot");
    fs::copy(&vmlinuz, boot.join("vmlinuz")).at("copy the kernel to", &boot)?;
    write_synced(&boot.join("initrd.img"), &initrd, "write the initramfs")?;
    rootfs::trim(&root)?;

    progress("making the disk image (GPT: BIOS boot, ESP, root) and installing GRUB");
    let raw = scratch.join("disk.raw");
    make_disk(scratch, &root, &raw)?;
    let out = scratch.join("out");
    fs::create_dir_all(&out).at("create the output directory", &out)?;
    let disk = out.join(DISK_FILE);
    let output = rootfs::command("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&disk)
        .output()
        .map_err(|source| super::spawn_error("qemu-img", source))?;
    rootfs::check(&output, "convert the disk to qcow2 (qemu-img convert)")?;
    let _ = fs::remove_file(&raw);
    fs::File::open(&disk)
        .and_then(|f| f.sync_all())
        .at("sync the disk image", &disk)?;
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o444))
        .at("make the disk image read-only", &disk)?;

    let manifest = ImageManifest {
        format: MANIFEST_FORMAT,
        recipe: recipe(),
        kernel_package: pkg.name,
        kernel_version: pkg.version,
        suite: super::recipe::SUITE.to_owned(),
        mirror,
        cmdline: CMDLINE.to_owned(),
        disk: super::debian::file_record(DISK_FILE, &disk)?,
    };
    manifest.write_to(&out.join(MANIFEST_FILE))?;
    sync_dir(&out)
}

fn write_files(root: &Path, files: &[(&str, u32, String)]) -> Result<(), GuestBuildError> {
    for (path, mode, text) in files {
        let path = root.join(path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).at("create a directory in the guest", dir)?;
        }
        let _ = fs::remove_file(&path);
        fs::write(&path, text).at("write a file of the guest", &path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
            .at("set a file's mode in the guest", &path)?;
    }
    Ok(())
}

/// Puts [`ROOTFS_MODULES`] (and what they need) into the guest's
/// `/lib/modules/<version>/kernel/thaw/`, with the kernel's lists of built-in modules, and
/// indexes them with depmod.
fn install_modules(root: &Path, version_dir: &Path, package: &str) -> Result<(), GuestBuildError> {
    let version = version_dir
        .file_name()
        .expect("a lib/modules/<version> directory has a name")
        .to_string_lossy()
        .into_owned();
    let dest = root.join("lib/modules").join(&version);
    let kdir = dest.join("kernel/thaw");
    fs::create_dir_all(&kdir).at("create a directory in the guest", &kdir)?;
    for m in modules::collect(version_dir, ROOTFS_MODULES, package)? {
        let path = kdir.join(format!("{}.ko", m.name));
        fs::write(&path, &m.data).at("copy a module into the guest", &path)?;
    }
    for list in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let from = version_dir.join(list);
        if from.is_file() {
            fs::copy(&from, dest.join(list)).at("copy a module list into the guest", &from)?;
        }
    }
    rootfs::in_chroot(
        root,
        "index the kernel's modules in the guest (depmod)",
        "depmod",
        &["-a", &version],
    )
}

/// Makes the raw disk: the partition table, the root file system from `root` (made in
/// place by mkfs.ext4 at its offset), the ESP with GRUB for UEFI, and GRUB for BIOS in
/// the MBR and the BIOS boot partition.
fn make_disk(scratch: &Path, root: &Path, raw: &Path) -> Result<(), GuestBuildError> {
    let file = fs::File::create(raw).at("create the disk image", raw)?;
    file.set_len(DISK_SECTORS * SECTOR)
        .at("size the disk image", raw)?;
    drop(file);
    run_with_input(
        rootfs::command("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(raw),
        "sfdisk",
        &sfdisk_script(),
        "write the partition table (sfdisk)",
    )?;

    let output = rootfs::command("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", ROOT_LABEL, "-d"])
        .arg(root)
        .arg("-E")
        .arg(format!("offset={},nodiscard", ROOT_START * SECTOR))
        .arg(raw)
        .arg(format!("{}k", ROOT_SECTORS * SECTOR / 1024))
        .output()
        .map_err(|source| super::spawn_error("mkfs.ext4", source))?;
    rootfs::check(&output, "make the root file system (mkfs.ext4 -d)")?;

    // GRUB for UEFI, on a FAT file system copied into the ESP.
    let efi = scratch.join("BOOTX64.EFI");
    let early = scratch.join("grub-early.cfg");
    fs::write(&early, GRUB_EARLY_CFG).at("write GRUB's first config", &early)?;
    grub_mkimage("x86_64-efi", GRUB_EFI_DIR, &early, &efi, GRUB_EFI_MODULES)?;
    let esp = scratch.join("esp.img");
    let output = rootfs::command("mkfs.vfat")
        .args(["-C", "-n", "ESP"])
        .arg(&esp)
        .arg(format!("{}", ESP_SECTORS * SECTOR / 1024))
        .output()
        .map_err(|source| super::spawn_error("mkfs.vfat", source))?;
    rootfs::check(&output, "make the EFI system partition (mkfs.vfat)")?;
    let image = esp.to_string_lossy().into_owned();
    let output = rootfs::command("mmd")
        .args(["-i", &image, "::/EFI", "::/EFI/BOOT"])
        .output()
        .map_err(|source| super::spawn_error("mmd", source))?;
    rootfs::check(&output, "make EFI/BOOT on the ESP (mmd)")?;
    let output = rootfs::command("mcopy")
        .args(["-i", &image])
        .arg(&efi)
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .output()
        .map_err(|source| super::spawn_error("mcopy", source))?;
    rootfs::check(&output, "copy GRUB onto the ESP (mcopy)")?;
    copy_into(&esp, raw, ESP_START * SECTOR)?;

    // GRUB for BIOS: boot.img in the MBR, the core image in the BIOS boot partition.
    let core = scratch.join("core.img");
    grub_mkimage("i386-pc", GRUB_BIOS_DIR, &early, &core, GRUB_BIOS_MODULES)?;
    let boot_img = Path::new(GRUB_BIOS_DIR).join("boot.img");
    let boot_img = fs::read(&boot_img).at("read GRUB's boot.img", &boot_img)?;
    let core_img = fs::read(&core).at("read GRUB's core image", &core)?;
    install_bios_grub(raw, &boot_img, &core_img)
}

fn grub_mkimage(
    format: &str,
    dir: &str,
    early: &Path,
    out: &Path,
    extra: &[&str],
) -> Result<(), GuestBuildError> {
    let output = rootfs::command("grub-mkimage")
        .args(["-O", format, "-d", dir, "-p", "/boot/grub", "-c"])
        .arg(early)
        .arg("-o")
        .arg(out)
        .args(GRUB_MODULES)
        .args(extra)
        .output()
        .map_err(|source| super::spawn_error("grub-mkimage", source))?;
    rootfs::check(&output, "make a GRUB image (grub-mkimage)")
}

fn run_with_input(
    cmd: &mut std::process::Command,
    program: &'static str,
    input: &str,
    step: &'static str,
) -> Result<(), GuestBuildError> {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| super::spawn_error(program, source))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .at("write to", Path::new(program))?;
    let output = child
        .wait_with_output()
        .at("wait for", Path::new(program))?;
    rootfs::check(&output, step)
}

/// Copies the file `from` into `to` at byte `offset`, skipping all-zero blocks (the disk
/// stays sparse).
fn copy_into(from: &Path, to: &Path, offset: u64) -> Result<(), GuestBuildError> {
    let mut input = fs::File::open(from).at("read", from)?;
    let mut output = fs::OpenOptions::new()
        .write(true)
        .open(to)
        .at("open the disk image", to)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut at = offset;
    loop {
        let n = input.read(&mut buf).at("read", from)?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            output
                .seek(SeekFrom::Start(at))
                .and_then(|_| output.write_all(&buf[..n]))
                .at("write the disk image", to)?;
        }
        at += n as u64;
    }
}

/// Offsets in GRUB's i386-pc boot.img (include/grub/i386/pc/boot.h).
const BOOT_BPB_START: usize = 0x3;
const BOOT_BPB_END: usize = 0x5a;
/// Where boot.img reads the LBA of the core image's first sector from.
const BOOT_KERNEL_SECTOR: usize = 0x5c;
/// A jump that boot.img skips for hard disks (some BIOSes pass a wrong drive number).
const BOOT_DRIVE_CHECK: usize = 0x66;
/// From here on the MBR keeps its own bytes: disk signature and partition table.
const BOOT_WINDOWS_NT_MAGIC: usize = 0x1b8;
/// In the core image's first sector (diskboot.img): the LBA of the rest, counted by
/// grub-mkimage already (the length and load segment follow).
const CORE_BLOCKLIST_START: usize = 0x1f4;

/// Does what `grub-bios-setup` does for a GPT disk with a BIOS boot partition: the MBR
/// gets boot.img (keeping the MBR's partition table) pointing at the core image, which
/// goes to the BIOS boot partition with its block list pointing at its own second sector.
fn install_bios_grub(raw: &Path, boot_img: &[u8], core_img: &[u8]) -> Result<(), GuestBuildError> {
    let bad = |why: &str| {
        GuestBuildError::Io(crate::fsutil::IoError::new(
            "install GRUB for BIOS into",
            raw.to_owned(),
            io::Error::new(io::ErrorKind::InvalidData, why.to_owned()),
        ))
    };
    if boot_img.len() != SECTOR as usize {
        return Err(bad("GRUB's boot.img is not one sector"));
    }
    let sectors = (core_img.len() as u64).div_ceil(SECTOR);
    if sectors > BIOS_BOOT_SECTORS {
        return Err(bad(
            "GRUB's core image is larger than the BIOS boot partition",
        ));
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(raw)
        .at("open the disk image", raw)?;
    let mut mbr = vec![0u8; SECTOR as usize];
    file.read_exact(&mut mbr).at("read the disk's MBR", raw)?;
    let (mbr, core) = bios_boot_sectors(&mbr, boot_img, core_img);
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&mbr))
        .and_then(|_| file.seek(SeekFrom::Start(BIOS_BOOT_START * SECTOR)))
        .and_then(|_| file.write_all(&core))
        .and_then(|_| file.sync_all())
        .at("write GRUB for BIOS into", raw)?;
    Ok(())
}

/// The new MBR and the core image (padded to whole sectors) as [`install_bios_grub`]
/// writes them.
fn bios_boot_sectors(mbr: &[u8], boot_img: &[u8], core_img: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut new = boot_img.to_vec();
    new[BOOT_BPB_START..BOOT_BPB_END].copy_from_slice(&mbr[BOOT_BPB_START..BOOT_BPB_END]);
    new[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&BIOS_BOOT_START.to_le_bytes());
    new[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    new[BOOT_WINDOWS_NT_MAGIC..].copy_from_slice(&mbr[BOOT_WINDOWS_NT_MAGIC..]);
    let mut core = core_img.to_vec();
    core.resize(
        core_img.len().div_ceil(SECTOR as usize) * SECTOR as usize,
        0,
    );
    core[CORE_BLOCKLIST_START..CORE_BLOCKLIST_START + 8]
        .copy_from_slice(&(BIOS_BOOT_START + 1).to_le_bytes());
    (new, core)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partitions_fit_and_do_not_overlap() {
        const { assert!(BIOS_BOOT_START + BIOS_BOOT_SECTORS <= ESP_START) };
        const { assert!(ESP_START + ESP_SECTORS <= ROOT_START) };
        const { assert!(ROOT_START + ROOT_SECTORS + GPT_BACKUP_SECTORS <= DISK_SECTORS) };
        // 1 MiB alignment.
        for start in [BIOS_BOOT_START, ESP_START, ROOT_START] {
            assert_eq!(start % 2048, 0);
        }
        assert!(sfdisk_script().contains(&format!("start={ROOT_START}, size={ROOT_SECTORS}")));
        assert!(
            CMDLINE.contains("root=/dev/vda3"),
            "partition 3 is the root"
        );
    }

    #[test]
    fn bios_boot_keeps_the_partition_table_and_points_at_the_core_image() {
        let mut mbr = vec![0u8; 512];
        mbr[0x1be..0x1ce].copy_from_slice(&[0xee; 16]); // the protective partition
        mbr[0x1fe] = 0x55;
        mbr[0x1ff] = 0xaa;
        let boot_img = vec![0xb0u8; 512];
        let mut core_img = vec![0xc0u8; 1000];
        core_img[0x1fc..0x1fe].copy_from_slice(&1u16.to_le_bytes()); // mkimage's count
        let (new, core) = bios_boot_sectors(&mbr, &boot_img, &core_img);
        assert_eq!(
            &new[0x1b8..],
            &mbr[0x1b8..],
            "partition table and signature kept"
        );
        assert_eq!(&new[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(&new[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&new[..3], &[0xb0; 3], "boot.img's code");
        assert_eq!(&new[3..0x5a], &mbr[3..0x5a], "the MBR's BPB area");
        assert_eq!(core.len(), 1024, "whole sectors");
        assert_eq!(&core[0x1f4..0x1fc], &2049u64.to_le_bytes());
        assert_eq!(
            &core[0x1fc..0x1fe],
            &1u16.to_le_bytes(),
            "count left as made"
        );
    }

    #[test]
    fn grub_boots_linux_on_partition_three_with_the_serial_console() {
        let cfg = grub_cfg();
        assert!(cfg.contains("linux /boot/vmlinuz root=/dev/vda3"));
        assert!(cfg.contains("terminal_output console serial"));
        assert!(cfg.contains("set timeout=0"));
        assert!(GRUB_EARLY_CFG.contains(ROOT_LABEL));
        assert!(CMDLINE.contains("console=tty0 console=ttyS0"));
    }

    #[test]
    fn the_screen_draws_a_clock_and_echoes_typing() {
        assert!(SCREEN_SCRIPT.starts_with("#!/bin/sh\n"));
        assert!(SCREEN_SCRIPT.contains("/run/thaw-screen.drawn"));
        assert!(SCREEN_SCRIPT.contains("you typed: %s"));
        assert!(SCREEN_UDEV_RULE.contains("thaw-screen.service"));
        assert!(SCREEN_UNIT.contains("TTYPath=/dev/tty1"));
        let paths: Vec<_> = extra_files().iter().map(|(p, _, _)| *p).collect();
        assert!(paths.iter().all(|p| !p.starts_with('/')));
    }

    #[test]
    fn firmware_guest_needs_a_complete_build_of_this_recipe() {
        let cache = tempfile::tempdir().unwrap();
        assert_eq!(firmware_guest(cache.path()), None);
        let d = dir(cache.path());
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(DISK_FILE), b"qcow2").unwrap();
        let mut m = ImageManifest {
            format: MANIFEST_FORMAT,
            recipe: recipe(),
            kernel_package: "linux-image-6.12-amd64".into(),
            kernel_version: "6.12-1".into(),
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            cmdline: CMDLINE.into(),
            disk: FileRecord::new(DISK_FILE, b"qcow2"),
        };
        crate::record::tests::round_trip(&m);
        fs::write(d.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        let g = firmware_guest(cache.path()).unwrap();
        assert_eq!(g.disk, std::path::absolute(&d).unwrap().join(DISK_FILE));
        assert_eq!(
            build_firmware_guest(cache.path(), false, &mut |_| {}).unwrap(),
            g
        );
        m.recipe = "older".into();
        fs::write(d.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(firmware_guest(cache.path()), None, "other recipe");
    }
}

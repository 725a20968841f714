//! The default guest: a small Linux VM that thaw builds for its demo and its tests.
//!
//! It is Debian's cloud kernel (through apt, from bookworm-backports on a bookworm host)
//! and an initramfs thaw writes itself: static busybox, Debian's `qemu-ga` with the shared
//! libraries it loads, the kernel's virtio block and network drivers (modules in Debian's
//! kernel), and an `/init` that mounts the usual filesystems (with a tmpfs on `/tmp`),
//! loads the drivers, configures `eth0` statically for QEMU's user networking (10.0.2.15/24,
//! gateway 10.0.2.2, DNS 10.0.2.3), starts the agent on the virtio-serial port named
//! `org.qemu.guest_agent.0`, waits for the kernel's RNG, prints [`READY_LINE`] on the
//! serial console and then idles forever.
//!
//! [`debian_guest`] and its builders make the other guest, Debian with systemd, the agent
//! and redis on a disk image; see the `debian` module. [`firmware_guest`] is the same
//! system on a partitioned disk with GRUB, booted through SeaBIOS or UEFI with no
//! `-kernel`, and with a screen that changes; see the `image` module.
//!
//! Built guests live in `<cache>/guests/default/` as `vmlinuz`, `initrd.cpio` and
//! `guest.json` (what was built, from which package, with BLAKE3 hashes). A build happens
//! in a scratch directory beside it that is renamed into place, under an exclusive lock
//! on `<cache>/guests/default.lock`, so parallel callers build once and a crash never
//! leaves a half-built guest.

mod clock;
mod cpio;
mod debian;
mod image;
mod initramfs;
mod kernel;
mod modules;
mod recipe;
mod rootfs;

pub use debian::{build_debian_guest, debian_guest, ensure_debian_guest, DiskGuest};
pub use image::{build_firmware_guest, ensure_firmware_guest, firmware_guest, FirmwareGuest};

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

use serde::{Deserialize, Serialize};

use crate::fsutil::{Context, FileLock, IoError, LockMode};
use crate::record::Record;

/// The line the guest's init prints on the serial console once the agent is started.
pub const READY_LINE: &str = "THAW-GUEST-READY";

/// The default guest's kernel command line. `quiet` keeps the kernel's messages off the
/// emulated UART while init's output still goes to ttyS0; `panic=-1` turns a guest panic
/// into a reboot, which `-no-reboot` makes QEMU exit; `cryptomgr.notests` skips the crypto
/// self-tests, about a second of a boot under TCG.
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet cryptomgr.notests";

/// Bump when the guest's contents change in a way the init script and command line do not
/// show (e.g. another file in the initramfs): cached guests of another recipe are rebuilt.
/// 3: `/sbin/hwclock` skips `-w` (see `initramfs::HWCLOCK_SCRIPT`).
/// 4: `thaw-clock` on the clock channel's port (see `clock`).
const RECIPE_VERSION: u32 = 4;
/// The drivers the default guest loads; their dependencies come along.
const MODULES: &[&str] = &["virtio_blk", "virtio_net"];
const MANIFEST_FORMAT: u32 = 1;
/// guest.json is a few hundred bytes; anything much larger is not one of ours.
pub(crate) const MANIFEST_MAX_BYTES: u64 = 64 * 1024;

const KERNEL_FILE: &str = "vmlinuz";
const INITRD_FILE: &str = "initrd.cpio";
const MANIFEST_FILE: &str = "guest.json";

/// A bootable guest: kernel, initramfs and the kernel command line to pass.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

/// Why the default guest could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GuestBuildError {
    #[error(
        "thaw-clock (the guest side of the clock channel) not found (looked in {searched}): \
         build the whole workspace (cargo build --workspace) or set THAW_CLOCK_BIN"
    )]
    ClockHelperMissing { searched: String },
    #[error("{tool} is missing: install the Debian package {package}")]
    MissingTool { tool: String, package: &'static str },
    #[error("could not run {command}")]
    Spawn {
        command: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("could not update apt's package lists: {stderr_line}")]
    AptUpdate { stderr_line: String },
    #[error(
        "apt knows no {package}: add bookworm-backports to apt's sources and run apt-get update"
    )]
    NoKernelPackage { package: &'static str },
    #[error(
        "the newest {package} apt knows is {version} and the guest needs Linux 6.12 or newer: \
         add bookworm-backports to apt's sources and run apt-get update"
    )]
    KernelTooOld {
        package: &'static str,
        version: String,
    },
    #[error("could not download the guest kernel package {package}: {stderr_line}")]
    DownloadKernel {
        package: String,
        stderr_line: String,
    },
    #[error("could not unpack the guest kernel package {package}: {stderr_line}")]
    UnpackKernel {
        package: String,
        stderr_line: String,
    },
    #[error("the guest kernel package {package} holds no {what}")]
    NoKernelFile { package: String, what: &'static str },
    #[error("the guest kernel package {package} has no module {module}")]
    NoModule { package: String, module: String },
    #[error("{} is not a kernel module (no .modinfo section)", path.display())]
    BadModule { path: PathBuf },
    #[error("could not decompress {}: {stderr_line}", path.display())]
    Decompress { path: PathBuf, stderr_line: String },
    #[error(
        "{} is not a statically linked x86-64 program: install the Debian package busybox-static",
        path.display()
    )]
    BusyboxNotStatic { path: PathBuf },
    #[error("could not list the shared libraries of {}: {stderr_line}", path.display())]
    ListLibraries { path: PathBuf, stderr_line: String },
    #[error(
        "{} needs {library}, which ldd cannot find: reinstall the package that provides it",
        binary.display()
    )]
    MissingLibrary { binary: PathBuf, library: String },
    #[error("building the {guest} guest needs root ({why}): run it as root")]
    NeedsRoot {
        guest: &'static str,
        why: &'static str,
    },
    #[error("debootstrap failed: {stderr_line} (its log: {})", log.display())]
    Debootstrap { stderr_line: String, log: PathBuf },
    #[error("could not {step}: {stderr_line}")]
    Command {
        step: &'static str,
        stderr_line: String,
    },
    #[error(
        "{} is still mounted (left by an interrupted build): unmount it, then build again",
        path.display()
    )]
    Mounted { path: PathBuf },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// What `guest.json` records about a built guest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct GuestManifest {
    format: u32,
    /// BLAKE3 of what decides the guest's contents besides the host's packages; see
    /// [`recipe`].
    recipe: String,
    kernel_package: String,
    kernel_version: String,
    cmdline: String,
    kernel: FileRecord,
    initrd: FileRecord,
}

impl Record for GuestManifest {
    const KIND: &'static str = "guest manifest";
    const VERSION: u32 = 1;
    const MAX_BYTES: u64 = MANIFEST_MAX_BYTES;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct FileRecord {
    name: String,
    size: u64,
    blake3: String,
}

impl FileRecord {
    fn new(name: &str, data: &[u8]) -> Self {
        FileRecord {
            name: name.to_owned(),
            size: data.len() as u64,
            blake3: blake3::hash(data).to_hex().to_string(),
        }
    }
}

/// Where built guests are cached: `$THAW_CACHE`, else `$XDG_CACHE_HOME/thaw`, else
/// `$HOME/.cache/thaw` (and a directory under the system's temp dir if even `HOME` is unset).
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|name| std::env::var_os(name))
}

fn cache_dir_from(env: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let var = |name| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("THAW_CACHE") {
        return dir;
    }
    // The XDG spec says to ignore a relative XDG_CACHE_HOME.
    if let Some(dir) = var("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return dir.join("thaw");
    }
    match var("HOME") {
        Some(home) => home.join(".cache/thaw"),
        None => std::env::temp_dir().join("thaw-cache"),
    }
}

fn guests_dir(cache: &Path) -> PathBuf {
    cache.join("guests")
}

fn default_dir(cache: &Path) -> PathBuf {
    guests_dir(cache).join("default")
}

/// The default guest if it is already built in `cache` (all files present, built by this
/// version of the recipe), else None.
pub fn default_guest(cache: &Path) -> Option<GuestImage> {
    // Absolute, so that the paths still hold for a QEMU started in another directory.
    let dir = std::path::absolute(default_dir(cache)).ok()?;
    let manifest = GuestManifest::read_from(&dir.join(MANIFEST_FILE)).ok()?;
    if manifest.format != MANIFEST_FORMAT || manifest.recipe != recipe(CMDLINE) {
        return None;
    }
    let kernel = dir.join(&manifest.kernel.name);
    let initrd = dir.join(&manifest.initrd.name);
    for (path, record) in [(&kernel, &manifest.kernel), (&initrd, &manifest.initrd)] {
        if fs::metadata(path).ok()?.len() != record.size {
            return None;
        }
    }
    Some(GuestImage {
        kernel,
        initrd,
        cmdline: manifest.cmdline,
    })
}

/// BLAKE3 of the recipe version, the init script and the command line: a cached guest
/// built from another recipe is stale.
fn recipe(cmdline: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&RECIPE_VERSION.to_le_bytes());
    h.update(initramfs::INIT_SCRIPT.as_bytes());
    h.update(b"\0");
    h.update(cmdline.as_bytes());
    clock::fingerprint(&mut h);
    h.finalize().to_hex().to_string()
}

/// Builds (or rebuilds when `force`) the default guest into `cache`/guests/default/.
/// Without `force`, a guest already built there is returned as is.
///
/// `progress` gets one short human line per step.
///
/// # Errors
/// When a tool or package it needs is missing (apt, dpkg, busybox-static,
/// qemu-guest-agent), the kernel cannot be downloaded, or the cache cannot be written.
pub fn build_default_guest(
    cache: &Path,
    force: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<GuestImage, GuestBuildError> {
    let _lock = lock(cache, "default")?;
    if !force {
        if let Some(guest) = default_guest(cache) {
            return Ok(guest);
        }
    }
    build_locked(cache, progress)
}

/// [`default_guest`] if present, otherwise [`build_default_guest`]. Safe to call from
/// several processes at once: one builds, the others wait for it and use its result.
///
/// # Errors
/// As [`build_default_guest`].
pub fn ensure_default_guest(
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<GuestImage, GuestBuildError> {
    build_default_guest(cache, false, progress)
}

/// Takes the exclusive lock for building the guest `name`, blocking until whoever holds it
/// is done. It is released when the returned file is closed, also when the process dies.
fn lock(cache: &Path, name: &str) -> Result<FileLock, GuestBuildError> {
    let guests = guests_dir(cache);
    fs::create_dir_all(&guests).at("create the guest cache", &guests)?;
    let path = guests.join(format!("{name}.lock"));
    Ok(FileLock::acquire(&path, LockMode::Exclusive)?)
}

/// Builds the default guest and reads it back. The caller holds the lock.
fn build_locked(
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<GuestImage, GuestBuildError> {
    let dest = build_atomically(cache, "default", progress, build_into)?;
    let guest = default_guest(cache).ok_or_else(|| unreadable(&dest))?;
    tracing::info!(dir = %dest.display(), "built the default guest");
    progress(&format!("built the default guest in {}", dest.display()));
    Ok(guest)
}

fn unreadable(dir: &Path) -> GuestBuildError {
    GuestBuildError::Io(IoError::new(
        "read back the built guest",
        dir.to_owned(),
        io::Error::new(io::ErrorKind::InvalidData, "guest.json is unreadable"),
    ))
}

/// Runs `build` in a scratch directory `<cache>/guests/.<name>.build-<pid>/`, which must
/// leave the guest's files in `out/` there, and renames `out` to `<cache>/guests/<name>`.
/// The caller holds the lock for `name`, so no one else is building it and leftovers of
/// crashed builds can go.
fn build_atomically(
    cache: &Path,
    name: &str,
    progress: &mut dyn FnMut(&str),
    build: impl FnOnce(&Path, &mut dyn FnMut(&str)) -> Result<(), GuestBuildError>,
) -> Result<PathBuf, GuestBuildError> {
    let guests = guests_dir(cache);
    let prefix = format!(".{name}.build-");
    fs::create_dir_all(&guests).at("create the guest cache", &guests)?;
    // Absolute, for the tools that run in other directories (chroot, debootstrap).
    let guests = std::path::absolute(&guests).at("resolve the guest cache", &guests)?;
    remove_stale_builds(&guests, &prefix)?;
    let scratch = guests.join(format!("{prefix}{}", std::process::id()));
    fs::create_dir_all(&scratch).at("create the build directory", &scratch)?;
    let built = build(&scratch, progress).and_then(|()| {
        let dest = guests.join(name);
        if dest.exists() {
            let old = scratch.join("old");
            fs::rename(&dest, &old).at("move the previous guest away", &dest)?;
        }
        let out = scratch.join("out");
        fs::rename(&out, &dest).at("move the built guest into place", &dest)?;
        sync_dir(&guests)?;
        Ok(dest)
    });
    // Scratch holds downloads, unpacked trees and the replaced guest; all disposable.
    let cleaned = remove_scratch(&scratch);
    let dest = built?;
    cleaned?;
    Ok(dest)
}

fn remove_stale_builds(guests: &Path, prefix: &str) -> Result<(), GuestBuildError> {
    let entries = fs::read_dir(guests).at("list the guest cache", guests)?;
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            remove_scratch(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes a build directory, but never through a mount point: an interrupted debootstrap
/// can leave the host's /proc, /sys or /dev mounted in its target, and deleting through
/// those would delete the host's files. Such mounts are unmounted first.
fn remove_scratch(dir: &Path) -> Result<(), GuestBuildError> {
    let Ok(abs) = fs::canonicalize(dir) else {
        return Ok(()); // already gone
    };
    let mounted = || {
        fs::read_to_string("/proc/self/mountinfo")
            .map(|info| mounts_under(&info, &abs))
            .at("read the mount table", Path::new("/proc/self/mountinfo"))
    };
    let leftovers = mounted()?;
    if !leftovers.is_empty() {
        // Deepest first; --lazy detaches even what is busy.
        for m in leftovers.iter().rev() {
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(m)
                .output();
        }
        if let Some(still) = mounted()?.into_iter().next() {
            return Err(GuestBuildError::Mounted { path: still });
        }
    }
    Ok(fs::remove_dir_all(&abs).at("remove a build directory", &abs)?)
}

/// The mount points in `mountinfo` (the format of /proc/self/mountinfo) at or under `dir`,
/// in the order they were mounted.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `scratch/out/{vmlinuz,initrd.cpio,guest.json}`, every file synced.
fn build_into(scratch: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), GuestBuildError> {
    // The initramfs comes from local files; collect it first so that a missing package
    // fails before a 30 MB download.
    let mut tree = initramfs::collect(progress)?;

    let mut apt = kernel::Apt::new();
    let pkg = apt.resolve(progress)?;
    let deb_dir = scratch.join("deb");
    fs::create_dir_all(&deb_dir).at("create the download directory", &deb_dir)?;
    let deb = apt.download(&pkg, &deb_dir, progress)?;
    progress(&format!("unpacking {}", pkg.name));
    let root = scratch.join("root");
    let vmlinuz = kernel::extract(&pkg, &deb, &root)?;
    let kernel = fs::read(&vmlinuz).at("read the unpacked kernel", &vmlinuz)?;
    let mods = modules::collect(&kernel::modules_dir(&pkg, &root)?, MODULES, &pkg.name)?;
    modules::install(&mut tree, &mods);

    let (files, bytes) = tree.file_stats();
    progress(&format!(
        "writing initramfs ({files} files, {:.1} MiB)",
        bytes as f64 / (1024.0 * 1024.0)
    ));
    let initrd = tree
        .write_to(Vec::new())
        .at("write the initramfs", Path::new(INITRD_FILE))?;

    let out = scratch.join("out");
    fs::create_dir_all(&out).at("create the output directory", &out)?;
    write_synced(&out.join(KERNEL_FILE), &kernel, "write the kernel")?;
    write_synced(&out.join(INITRD_FILE), &initrd, "write the initramfs")?;
    let manifest = GuestManifest {
        format: MANIFEST_FORMAT,
        recipe: recipe(CMDLINE),
        kernel_package: pkg.name,
        kernel_version: pkg.version,
        cmdline: CMDLINE.to_owned(),
        kernel: FileRecord::new(KERNEL_FILE, &kernel),
        initrd: FileRecord::new(INITRD_FILE, &initrd),
    };
    manifest.write_to(&out.join(MANIFEST_FILE))?;
    sync_dir(&out)
}

fn write_synced(path: &Path, data: &[u8], step: &'static str) -> Result<(), GuestBuildError> {
    let mut file = File::create(path).at(step, path)?;
    file.write_all(data).at(step, path)?;
    Ok(file.sync_all().at(step, path)?)
}

/// fsync a directory so that the entries just created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), GuestBuildError> {
    Ok(crate::fsutil::fsync_dir(dir)?)
}

/// The error for a command that could not be started: a missing program is a missing
/// package.
fn spawn_error(command: &'static str, source: io::Error) -> GuestBuildError {
    if source.kind() != io::ErrorKind::NotFound {
        return GuestBuildError::Spawn { command, source };
    }
    let package = match command {
        "apt-get" | "apt-cache" => "apt",
        "dpkg" => "dpkg",
        "ldd" => "libc-bin",
        "xz" => "xz-utils",
        "mkfs.ext4" => "e2fsprogs",
        "qemu-img" => "qemu-utils",
        "chroot" => "coreutils",
        "umount" => "mount",
        other => other,
    };
    GuestBuildError::MissingTool {
        tool: command.to_owned(),
        package,
    }
}

/// The line of a failed command's stderr that says why: apt's last `E:` line (its `W:`
/// warnings come after it), else the last line, else the exit status.
fn command_error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("E:"))
        .or(lines.last())
        .map_or_else(|| format!("it {}", output.status), |l| (*l).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn init_prints_the_ready_line() {
        assert!(initramfs::INIT_SCRIPT
            .lines()
            .any(|l| l.trim() == format!("echo {READY_LINE}")));
        assert!(initramfs::INIT_SCRIPT.starts_with("#!/bin/busybox sh\n"));
    }

    #[test]
    fn cmdline_keeps_the_serial_console() {
        assert!(CMDLINE.split(' ').any(|a| a == "console=ttyS0"));
        assert!(CMDLINE.split(' ').any(|a| a == "panic=-1"));
    }

    fn output(code: i32, stderr: &str) -> Output {
        Output {
            status: ExitStatus::from_raw(code << 8),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn error_line_prefers_apts_error_over_its_warnings() {
        let out = output(
            100,
            "E: Can't select candidate version\nW: Download is performed unsandboxed\n",
        );
        assert_eq!(
            command_error_line(&out),
            "E: Can't select candidate version"
        );
        assert_eq!(command_error_line(&output(2, "a\nlast\n\n")), "last");
        assert_eq!(command_error_line(&output(3, "")), "it exit status: 3");
    }

    #[test]
    fn missing_program_names_its_package() {
        let err = spawn_error("dpkg", io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(
            err.to_string(),
            "dpkg is missing: install the Debian package dpkg"
        );
    }

    fn fake_guest(cache: &Path) -> GuestManifest {
        let dir = default_dir(cache);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(KERNEL_FILE), b"kernel").unwrap();
        fs::write(dir.join(INITRD_FILE), b"initrd!").unwrap();
        let manifest = GuestManifest {
            format: MANIFEST_FORMAT,
            recipe: recipe(CMDLINE),
            kernel_package: "linux-image-test".into(),
            kernel_version: "6.12-1".into(),
            cmdline: CMDLINE.into(),
            kernel: FileRecord::new(KERNEL_FILE, b"kernel"),
            initrd: FileRecord::new(INITRD_FILE, b"initrd!"),
        };
        fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        manifest
    }

    #[test]
    fn guest_manifest_round_trips() {
        let cache = tempfile::tempdir().unwrap();
        crate::record::tests::round_trip(&fake_guest(cache.path()));
    }

    #[test]
    fn default_guest_finds_a_complete_build() {
        let cache = tempfile::tempdir().unwrap();
        assert_eq!(default_guest(cache.path()), None);
        fake_guest(cache.path());
        let dir = default_dir(cache.path());
        assert_eq!(
            default_guest(cache.path()),
            Some(GuestImage {
                kernel: dir.join(KERNEL_FILE),
                initrd: dir.join(INITRD_FILE),
                cmdline: CMDLINE.into(),
            })
        );
        // build_default_guest without force returns it without building anything.
        let built = build_default_guest(cache.path(), false, &mut |_| {}).unwrap();
        assert_eq!(Some(built), default_guest(cache.path()));
    }

    #[test]
    fn default_guest_ignores_partial_or_stale_builds() {
        let cache = tempfile::tempdir().unwrap();
        let dir = default_dir(cache.path());

        let mut manifest = fake_guest(cache.path());
        fs::remove_file(dir.join(INITRD_FILE)).unwrap();
        assert_eq!(default_guest(cache.path()), None, "initrd missing");

        fake_guest(cache.path());
        fs::write(dir.join(KERNEL_FILE), b"short").unwrap();
        assert_eq!(default_guest(cache.path()), None, "kernel size differs");

        fake_guest(cache.path());
        manifest.recipe = "an older recipe".into();
        fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        assert_eq!(default_guest(cache.path()), None, "other recipe");

        fs::write(dir.join(MANIFEST_FILE), b"{not json").unwrap();
        assert_eq!(default_guest(cache.path()), None, "corrupt guest.json");
    }

    #[test]
    fn manifest_round_trips() {
        let m = GuestManifest {
            format: MANIFEST_FORMAT,
            recipe: recipe(CMDLINE),
            kernel_package: "linux-image-6.12.95+deb12-cloud-amd64".into(),
            kernel_version: "6.12.95-1~bpo12+1".into(),
            cmdline: CMDLINE.into(),
            kernel: FileRecord::new(KERNEL_FILE, b"k"),
            initrd: FileRecord::new(INITRD_FILE, b"i"),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<GuestManifest>(&json).unwrap(), m);
    }

    #[test]
    fn mounts_under_a_build_directory_are_found_with_escapes() {
        let info = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:5 / /tmp/c/guests/.debian.build-7/rootfs/proc rw - proc proc rw
36 22 0:6 / /tmp/c/guests/.debian.build-7/rootfs/sys rw - sysfs sysfs rw
37 22 0:7 / /tmp/c/my\\040cache/x rw - tmpfs tmpfs rw
38 22 0:8 / /tmp/c/guests/.debian.build-70 rw - tmpfs tmpfs rw
";
        let build = Path::new("/tmp/c/guests/.debian.build-7");
        assert_eq!(
            mounts_under(info, build),
            [build.join("rootfs/proc"), build.join("rootfs/sys")]
        );
        assert_eq!(
            mounts_under(info, Path::new("/tmp/c/my cache")),
            [PathBuf::from("/tmp/c/my cache/x")]
        );
        assert!(mounts_under(info, Path::new("/elsewhere")).is_empty());
    }

    #[test]
    fn scratch_removal_leaves_no_directory() {
        let cache = tempfile::tempdir().unwrap();
        let dest = build_atomically(cache.path(), "t", &mut |_| {}, |scratch, _| {
            fs::create_dir_all(scratch.join("out")).unwrap();
            fs::write(scratch.join("out/f"), b"x").unwrap();
            fs::create_dir_all(scratch.join("junk/deep")).unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"x");
        let left: Vec<_> = fs::read_dir(guests_dir(cache.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("t")]);
    }

    #[test]
    fn cache_dir_follows_thaw_cache_then_xdg_then_home() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let all = &[
            ("THAW_CACHE", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_dir_from(env(all)), Path::new("/c"));
        let no_thaw = &[("THAW_CACHE", ""), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(cache_dir_from(env(no_thaw)), Path::new("/x/thaw"));
        let relative_xdg = &[("XDG_CACHE_HOME", "x"), ("HOME", "/h")];
        assert_eq!(
            cache_dir_from(env(relative_xdg)),
            Path::new("/h/.cache/thaw")
        );
        assert!(cache_dir_from(env(&[])).ends_with("thaw-cache"));
    }
}

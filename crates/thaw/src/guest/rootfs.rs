//! The Debian guest's root filesystem and disk image.
//!
//! debootstrap (variant minbase) installs Debian with systemd, udev, qemu-guest-agent and
//! redis-server into a directory; thaw then writes its configuration files, masks the
//! units that only cost boot time in a throwaway VM, copies in the guest kernel's modules
//! (for udev to load what the initramfs did not), trims documentation, locales and apt's
//! caches, and makes the ext4 image from the directory with `mkfs.ext4 -d` (no loop
//! mount), converted to qcow2.
//!
//! Building needs root: debootstrap unpacks packages as root and runs their maintainer
//! scripts in a chroot, and thaw runs `depmod`, `systemctl enable` and `passwd` there too.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::recipe::{
    config_files, redis_conf, DEFAULT_MIRROR, DISK_SIZE, ENABLED, HWCLOCK_DIVERTED, MASKED,
    MASKED_GENERATORS, MIRROR_ENV, PACKAGES, SUITE, TRIMMED,
};
use super::{command_error_line, spawn_error, GuestBuildError};
use crate::fsutil::Context;

/// The tools a build runs, found before anything is downloaded: (program, package).
pub(crate) const TOOLS: &[(&str, &str)] = &[
    ("debootstrap", "debootstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("qemu-img", "qemu-utils"),
    ("chroot", "coreutils"),
    ("xz", "xz-utils"),
];

/// Fails with the package to install for the first tool in [`TOOLS`] not on `PATH` (or in
/// /usr/sbin, /sbin, which a non-login root shell may lack).
pub(crate) fn check_tools() -> Result<(), GuestBuildError> {
    check_programs(TOOLS)
}

/// Fails with the package to install for the first program in `tools` not on `PATH` (or
/// in the sbin and bin directories).
pub(crate) fn check_programs(tools: &[(&str, &'static str)]) -> Result<(), GuestBuildError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for (tool, package) in tools {
        if !dirs.iter().any(|d| d.join(tool).is_file()) {
            return Err(GuestBuildError::MissingTool {
                tool: (*tool).to_owned(),
                package,
            });
        }
    }
    Ok(())
}

/// The mirror to install from: `$THAW_DEBIAN_MIRROR`, else the one apt uses for Debian on
/// this host, else deb.debian.org.
pub(crate) fn mirror() -> String {
    if let Some(m) = std::env::var(MIRROR_ENV).ok().filter(|m| !m.is_empty()) {
        return m;
    }
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| fs::read_to_string(p).ok()));
    }
    mirror_from_sources(texts.iter().map(String::as_str))
        .unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

/// The URI of the first apt source (one-line `deb URI SUITE ...` or deb822 `URIs:`) that
/// serves a plain Debian release suite: one with no `-security`/`-updates`/`-backports`
/// suffix, from an archive whose path ends in `/debian`.
pub(crate) fn mirror_from_sources<'a>(texts: impl Iterator<Item = &'a str>) -> Option<String> {
    let is_release =
        |suite: &str| !suite.is_empty() && !suite.contains('-') && !suite.contains('/');
    let is_debian = |uri: &str| uri.trim_end_matches('/').ends_with("/debian");
    for text in texts {
        // One-line format.
        for line in text.lines().map(str::trim) {
            let mut words = line.split_whitespace();
            if words.next() != Some("deb") {
                continue;
            }
            let mut words = words.skip_while(|w| w.starts_with('['));
            if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
                if is_debian(uri) && is_release(suite) {
                    return Some(uri.trim_end_matches('/').to_owned());
                }
            }
        }
        // deb822: stanzas separated by blank lines.
        for stanza in text.split("\n\n") {
            let field = |key: &str| {
                stanza.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
                })
            };
            let types = field("Types").unwrap_or("");
            let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
                continue;
            };
            if !types.split_whitespace().any(|t| t == "deb")
                || !suites.split_whitespace().any(is_release)
            {
                continue;
            }
            if let Some(uri) = uris.split_whitespace().find(|u| is_debian(u)) {
                return Some(uri.trim_end_matches('/').to_owned());
            }
        }
    }
    None
}

/// Runs debootstrap into `target`. On failure its log is kept at `failed_log`.
pub(crate) fn debootstrap(
    target: &Path,
    mirror: &str,
    failed_log: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), GuestBuildError> {
    progress(&format!(
        "installing Debian {SUITE} with debootstrap from {mirror} (a minute or two)"
    ));
    let include = format!("--include={}", PACKAGES.join(","));
    let output = command("debootstrap")
        .args(["--variant=minbase", &include, SUITE])
        .arg(target)
        .arg(mirror)
        .output()
        .map_err(|source| spawn_error("debootstrap", source))?;
    if output.status.success() {
        return Ok(());
    }
    let log = target.join("debootstrap/debootstrap.log");
    let kept = fs::copy(&log, failed_log).is_ok();
    Err(GuestBuildError::Debootstrap {
        stderr_line: command_error_line(&output),
        log: if kept { failed_log.to_owned() } else { log },
    })
}

/// Writes thaw's files into `root`, configures redis, masks and enables units, removes
/// root's password.
pub(crate) fn configure(root: &Path) -> Result<(), GuestBuildError> {
    // Moves the package's hwclock aside (and keeps it there through upgrades) before
    // HWCLOCK_SCRIPT is written in its place.
    in_chroot(
        root,
        "divert hwclock in the guest",
        "dpkg-divert",
        &[
            "--local",
            "--rename",
            "--divert",
            HWCLOCK_DIVERTED,
            "--add",
            "/sbin/hwclock",
        ],
    )?;
    for (path, mode, text) in config_files() {
        let path = root.join(path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).at("create a directory in the guest", dir)?;
        }
        // resolv.conf and machine-id may be symlinks or read-only files; replace them.
        let _ = fs::remove_file(&path);
        fs::write(&path, text).at("write a file of the guest", &path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .at("set a file's mode in the guest", &path)?;
    }
    let clock = root.join(super::clock::GUEST_PATH);
    fs::write(&clock, super::clock::read()?).at("write a file of the guest", &clock)?;
    fs::set_permissions(&clock, fs::Permissions::from_mode(0o755))
        .at("set a file's mode in the guest", &clock)?;
    let conf = root.join("etc/redis/redis.conf");
    let text = fs::read_to_string(&conf).at("read redis.conf", &conf)?;
    fs::write(&conf, redis_conf(&text)).at("write redis.conf", &conf)?;

    let units = root.join("etc/systemd/system");
    for unit in MASKED {
        let link = units.join(unit);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link).at("mask a unit in the guest", &link)?;
    }
    let generators = root.join("etc/systemd/system-generators");
    fs::create_dir_all(&generators).at("create a directory in the guest", &generators)?;
    for generator in MASKED_GENERATORS {
        let link = generators.join(generator);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link)
            .at("mask a generator in the guest", &link)?;
    }
    // multi-user, not graphical: there is no display manager to wait for.
    let default = units.join("default.target");
    let _ = fs::remove_file(&default);
    std::os::unix::fs::symlink("/lib/systemd/system/multi-user.target", &default)
        .at("set the guest's default target", &default)?;
    in_chroot(root, "enable units in the guest", "systemctl", &{
        let mut args = vec!["enable", "--quiet"];
        args.extend_from_slice(ENABLED);
        args
    })?;
    // Login on the serial console as root with no password.
    in_chroot(
        root,
        "remove root's password in the guest",
        "passwd",
        &["-d", "root"],
    )?;
    Ok(())
}

/// Copies the kernel's `lib/modules/<version>` into `root` and runs depmod there, so that
/// udev finds the modules for the devices it sees.
pub(crate) fn install_modules(root: &Path, version_dir: &Path) -> Result<(), GuestBuildError> {
    let version = version_dir
        .file_name()
        .expect("a lib/modules/<version> directory has a name");
    let dest = root.join("lib/modules").join(version);
    copy_tree(version_dir, &dest)?;
    in_chroot(
        root,
        "index the kernel's modules in the guest (depmod)",
        "depmod",
        &["-a", &version.to_string_lossy()],
    )
}

/// Removes documentation, manual pages, locales, apt's package lists and cache and the
/// install logs: about 150 MiB nobody reads in a test VM. `apt-get update` brings the
/// lists back.
pub(crate) fn trim(root: &Path) -> Result<(), GuestBuildError> {
    for (dir, keep) in TRIMMED {
        let dir = root.join(dir);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            match (is_dir, keep) {
                (true, Some(keep)) => {
                    for inner in fs::read_dir(&path)
                        .into_iter()
                        .flatten()
                        .filter_map(Result::ok)
                    {
                        if inner.file_name() != OsStr::new(keep) {
                            remove_any(&inner.path())?;
                        }
                    }
                }
                // apt wants its directories (lists/partial, archives/partial) to exist.
                (true, None) if dir.starts_with(root.join("var")) => empty_files(&path)?,
                _ => remove_any(&path)?,
            }
        }
    }
    Ok(())
}

/// Removes the files under `dir`, keeping its directories.
fn empty_files(dir: &Path) -> Result<(), GuestBuildError> {
    for entry in fs::read_dir(dir)
        .at("list a directory of the guest", dir)?
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            empty_files(&path)?;
        } else {
            remove_any(&path)?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<(), GuestBuildError> {
    let meta = fs::symlink_metadata(path).at("trim the guest", path)?;
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .at("trim the guest", path)?;
    Ok(())
}

/// Makes `qcow2` from the directory `root`: an ext4 file system of [`DISK_SIZE`] built
/// from the tree by mkfs.ext4 in the sparse file `raw`, then converted (unallocated
/// blocks stay unallocated).
pub(crate) fn make_image(root: &Path, raw: &Path, qcow2: &Path) -> Result<(), GuestBuildError> {
    let output = command("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", "thaw-root", "-d"])
        .arg(root)
        .arg(raw)
        .arg(DISK_SIZE)
        .output()
        .map_err(|source| spawn_error("mkfs.ext4", source))?;
    check(&output, "make the guest's file system (mkfs.ext4 -d)")?;
    let output = command("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(qcow2)
        .output()
        .map_err(|source| spawn_error("qemu-img", source))?;
    check(
        &output,
        "convert the guest's disk to qcow2 (qemu-img convert)",
    )
}

/// Copies a tree of directories, regular files and symlinks.
fn copy_tree(from: &Path, to: &Path) -> Result<(), GuestBuildError> {
    fs::create_dir_all(to).at("create a directory in the guest", to)?;
    for entry in fs::read_dir(from)
        .at("list the kernel's modules", from)?
        .filter_map(Result::ok)
    {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().at("list the kernel's modules", &src)?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&src).at("read a symlink", &src)?;
            std::os::unix::fs::symlink(target, &dst).at("copy a symlink into the guest", &dst)?;
        } else {
            fs::copy(&src, &dst).at("copy a module into the guest", &dst)?;
        }
    }
    Ok(())
}

/// A command with a predictable environment: C locale, and a PATH with the sbin
/// directories (debootstrap and mkfs live there; a non-login root shell may lack them).
pub(crate) fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    let mut path = OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    cmd.env("LC_ALL", "C")
        .env("PATH", path)
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Runs `program` inside `root` with chroot.
pub(crate) fn in_chroot(
    root: &Path,
    step: &'static str,
    program: &str,
    args: &[&str],
) -> Result<(), GuestBuildError> {
    let output = command("chroot")
        .arg(root)
        .arg(program)
        .args(args)
        .output()
        .map_err(|source| spawn_error("chroot", source))?;
    check(&output, step)
}

pub(crate) fn check(output: &Output, step: &'static str) -> Result<(), GuestBuildError> {
    if output.status.success() {
        Ok(())
    } else {
        Err(GuestBuildError::Command {
            step,
            stderr_line: command_error_line(output),
        })
    }
}

/// Whether this process can build the image (debootstrap and chroot need root).
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_comes_from_the_release_entry_of_either_format() {
        let deb822 = "\
Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
";
        assert_eq!(
            mirror_from_sources([deb822].into_iter()).as_deref(),
            Some("http://mirror.example/debian")
        );
        let backports_only = "Types: deb\nURIs: http://a/debian\nSuites: bookworm-backports\n";
        let one_line = "# deb http://old/debian bookworm main\n\
                        deb [signed-by=/k.gpg] http://b.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_sources([backports_only, one_line].into_iter()).as_deref(),
            Some("http://b.example/debian")
        );
        assert_eq!(mirror_from_sources([backports_only].into_iter()), None);
        let ubuntu = "deb http://archive.ubuntu.com/ubuntu jammy main\n";
        assert_eq!(mirror_from_sources([ubuntu].into_iter()), None);
    }

    #[test]
    fn trim_keeps_copyrights_and_apts_directories() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for dir in [
            "usr/share/doc/redis",
            "usr/share/man/man1",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
        ] {
            fs::create_dir_all(r.join(dir)).unwrap();
        }
        for file in [
            "usr/share/doc/redis/copyright",
            "usr/share/doc/redis/changelog.gz",
            "usr/share/man/man1/ls.1.gz",
            "var/lib/apt/lists/deb.debian.org_Packages",
            "var/cache/apt/archives/redis.deb",
            "var/cache/apt/pkgcache.bin",
        ] {
            fs::write(r.join(file), b"x").unwrap();
        }
        trim(r).unwrap();
        assert!(r.join("usr/share/doc/redis/copyright").exists());
        assert!(!r.join("usr/share/doc/redis/changelog.gz").exists());
        assert!(!r.join("usr/share/man/man1").exists());
        assert!(r.join("var/lib/apt/lists/partial").is_dir());
        assert!(!r.join("var/lib/apt/lists/deb.debian.org_Packages").exists());
        assert!(r.join("var/cache/apt/archives/partial").is_dir());
        assert!(!r.join("var/cache/apt/archives/redis.deb").exists());
        assert!(!r.join("var/cache/apt/pkgcache.bin").exists());
    }
}

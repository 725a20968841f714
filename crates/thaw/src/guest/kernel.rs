//! Fetching the guest kernel: Debian's cloud kernel (or, for the firmware-booted image,
//! the generic one), through apt.
//!
//! `linux-image-cloud-amd64` is a metapackage; the kernel itself is in the versioned
//! package it depends on. Of every version apt knows (bookworm's 6.1 and
//! bookworm-backports' 6.12 on a bookworm host), the newest is taken.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{command_error_line, spawn_error, GuestBuildError};

const METAPACKAGE: &str = "linux-image-cloud-amd64";
/// Debian's generic kernel: the DRM drivers a graphical console needs (bochs for QEMU's
/// VGA card), which the cloud kernel leaves out.
pub(crate) const GENERIC_METAPACKAGE: &str = "linux-image-amd64";
/// The oldest kernel the guest is known to work with (VMGENID, virtio console built in).
const MIN_VERSION: (u32, u32) = (6, 12);

/// A versioned kernel package, e.g. `linux-image-6.12.95+deb12-cloud-amd64` at
/// `6.12.95-1~bpo12+1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelPackage {
    pub name: String,
    pub version: String,
}

/// Runs apt, refreshing its package lists at most once when they seem to be missing.
pub(crate) struct Apt {
    updated: bool,
}

impl Apt {
    pub(crate) fn new() -> Self {
        Apt { updated: false }
    }

    /// Finds the newest kernel package the cloud metapackage depends on.
    pub(crate) fn resolve(
        &mut self,
        progress: &mut dyn FnMut(&str),
    ) -> Result<KernelPackage, GuestBuildError> {
        self.resolve_from(METAPACKAGE, progress)
    }

    /// Finds the newest kernel package `metapackage` depends on.
    pub(crate) fn resolve_from(
        &mut self,
        metapackage: &'static str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<KernelPackage, GuestBuildError> {
        progress(&format!("finding the newest {metapackage}"));
        let candidates = loop {
            let output = run("apt-cache", &["show", metapackage], None)?;
            let candidates = if output.status.success() {
                parse_show(&String::from_utf8_lossy(&output.stdout))
            } else {
                Vec::new()
            };
            if !candidates.is_empty() {
                break candidates;
            }
            if !self.update(progress)? {
                return Err(GuestBuildError::NoKernelPackage {
                    package: metapackage,
                });
            }
        };
        let mut newest = candidates[0].clone();
        for c in &candidates[1..] {
            if newer(&c.version, &newest.version)? {
                newest = c.clone();
            }
        }
        if !at_least(&newest.version, MIN_VERSION) {
            return Err(GuestBuildError::KernelTooOld {
                package: metapackage,
                version: newest.version,
            });
        }
        Ok(newest)
    }

    /// Downloads `pkg` into `dir` and returns the .deb's path.
    pub(crate) fn download(
        &mut self,
        pkg: &KernelPackage,
        dir: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<PathBuf, GuestBuildError> {
        progress(&format!("downloading {} {}", pkg.name, pkg.version));
        let spec = format!("{}={}", pkg.name, pkg.version);
        loop {
            let output = run("apt-get", &["download", "-q", &spec], Some(dir))?;
            if output.status.success() {
                break;
            }
            if !self.update(progress)? {
                return Err(GuestBuildError::DownloadKernel {
                    package: pkg.name.clone(),
                    stderr_line: command_error_line(&output),
                });
            }
        }
        find_one(dir, |name| name.ends_with(".deb")).ok_or_else(|| GuestBuildError::NoKernelFile {
            package: pkg.name.clone(),
            what: "a .deb file after apt-get download",
        })
    }

    /// Runs `apt-get update` unless it already ran; false when it had.
    fn update(&mut self, progress: &mut dyn FnMut(&str)) -> Result<bool, GuestBuildError> {
        if self.updated {
            return Ok(false);
        }
        self.updated = true;
        progress("updating apt's package lists");
        let output = run("apt-get", &["update", "-q"], None)?;
        if !output.status.success() {
            return Err(GuestBuildError::AptUpdate {
                stderr_line: command_error_line(&output),
            });
        }
        Ok(true)
    }
}

/// Unpacks the .deb into `root` and returns the path of its `boot/vmlinuz-*`.
pub(crate) fn extract(
    pkg: &KernelPackage,
    deb: &Path,
    root: &Path,
) -> Result<PathBuf, GuestBuildError> {
    let output = run(
        "dpkg",
        &["-x", &deb.to_string_lossy(), &root.to_string_lossy()],
        None,
    )?;
    if !output.status.success() {
        return Err(GuestBuildError::UnpackKernel {
            package: pkg.name.clone(),
            stderr_line: command_error_line(&output),
        });
    }
    find_one(&root.join("boot"), |name| name.starts_with("vmlinuz-")).ok_or_else(|| {
        GuestBuildError::NoKernelFile {
            package: pkg.name.clone(),
            what: "boot/vmlinuz-*",
        }
    })
}

/// The package's `lib/modules/<version>` directory, once [`extract`]ed into `root`.
pub(crate) fn modules_dir(pkg: &KernelPackage, root: &Path) -> Result<PathBuf, GuestBuildError> {
    super::modules::version_dir(root).ok_or_else(|| GuestBuildError::NoKernelFile {
        package: pkg.name.clone(),
        what: "single lib/modules/<version> directory",
    })
}

fn run(tool: &'static str, args: &[&str], cwd: Option<&Path>) -> Result<Output, GuestBuildError> {
    let mut cmd = Command::new(tool);
    cmd.args(args).env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    tracing::debug!(tool, ?args, "running");
    cmd.output().map_err(|source| spawn_error(tool, source))
}

fn find_one(dir: &Path, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_str().is_some_and(&pred))
        .map(|e| e.path())
}

/// Whether Debian version `a` is newer than `b`, as dpkg orders them.
fn newer(a: &str, b: &str) -> Result<bool, GuestBuildError> {
    let output = run("dpkg", &["--compare-versions", a, "gt", b], None)?;
    Ok(output.status.success())
}

/// The kernel packages named by the `Depends` of every stanza of `apt-cache show`.
fn parse_show(output: &str) -> Vec<KernelPackage> {
    let mut found = Vec::new();
    for stanza in output.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        let (Some(version), Some(depends)) = (field("Version"), field("Depends")) else {
            continue;
        };
        let kernel = depends
            .split([',', '|'])
            .map(|d| d.split_whitespace().next().unwrap_or(""))
            .find(|name| name.starts_with("linux-image-"));
        if let Some(name) = kernel {
            found.push(KernelPackage {
                name: name.to_owned(),
                version: version.to_owned(),
            });
        }
    }
    found
}

/// Whether the upstream part of a Debian version (`[epoch:]6.12.95-1~bpo12+1`) is at least
/// `major.minor`.
fn at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let upstream = version.split_once(':').map_or(version, |(_, v)| v);
    let mut parts = upstream
        .split(['.', '-', '~', '+'])
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "\
Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.12.95+1~bpo12+1)
Version: 6.12.95-1~bpo12+1
Depends: linux-image-6.12.95+deb12-cloud-amd64 (= 6.12.95-1~bpo12+1)
Description: Linux for x86-64 cloud (meta-package)

Package: linux-image-cloud-amd64
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
";

    #[test]
    fn apt_cache_show_gives_one_kernel_per_version() {
        assert_eq!(
            parse_show(SHOW),
            [
                KernelPackage {
                    name: "linux-image-6.12.95+deb12-cloud-amd64".into(),
                    version: "6.12.95-1~bpo12+1".into(),
                },
                KernelPackage {
                    name: "linux-image-6.1.0-56-cloud-amd64".into(),
                    version: "6.1.192-2".into(),
                },
            ]
        );
        assert!(parse_show("").is_empty());
    }

    #[test]
    fn version_floor_compares_major_and_minor() {
        assert!(at_least("6.12.95-1~bpo12+1", (6, 12)));
        assert!(at_least("1:6.13-1", (6, 12)));
        assert!(at_least("7.0-1", (6, 12)));
        assert!(!at_least("6.1.192-2", (6, 12)));
        assert!(!at_least("garbage", (6, 12)));
    }
}

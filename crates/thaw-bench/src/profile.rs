//! The guests `thaw bench --profile` measures: the same profiles, machines and
//! readiness as `thaw boot --profile` (the CLI's `Profile`; both go once the library
//! resolves profiles itself, issue 20 item 1).

use std::path::PathBuf;

use anyhow::{Context, Result};

/// The guests thaw builds itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Default,
    Debian,
    DebianBios,
    DebianUefi,
    DebianVnc,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(Profile::Default),
            "debian" => Ok(Profile::Debian),
            "debian-bios" => Ok(Profile::DebianBios),
            "debian-uefi" => Ok(Profile::DebianUefi),
            "debian-vnc" => Ok(Profile::DebianVnc),
            other => Err(format!(
                "unknown profile {other:?} (use default, debian, debian-bios, debian-uefi or debian-vnc)"
            )),
        }
    }
}

impl Profile {
    pub fn memory_mib(self) -> u32 {
        match self {
            Profile::Default => 256,
            _ => 512,
        }
    }

    /// Debian with redis on guest port [`REDIS_PORT`].
    pub fn has_redis(self) -> bool {
        self != Profile::Default
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Default => "default guest",
            Profile::Debian => "debian guest",
            Profile::DebianBios => "debian-bios guest",
            Profile::DebianUefi => "debian-uefi guest",
            Profile::DebianVnc => "debian-vnc guest",
        }
    }
}

/// Redis in the debian profiles.
pub const REDIS_PORT: u16 = 6379;

/// A profile's machine: kernel, initrd and command line (or none: the firmware boots
/// the disk), its disk if it has one, its firmware and display.
pub struct ProfileGuest {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub disks: Vec<thaw::spec::DiskSpec>,
    pub firmware: thaw::firmware::FirmwareKind,
    pub display: bool,
}

/// The profile's guest, built into the cache if missing (`progress` gets its steps).
pub fn guest(profile: Profile, progress: &mut dyn FnMut(&str)) -> Result<ProfileGuest> {
    let cache = thaw::guest::cache_dir();
    Ok(match profile {
        Profile::Default => {
            let g = thaw::guest::ensure_default_guest(&cache, progress)
                .context("could not build the default guest")?;
            ProfileGuest {
                kernel: Some(g.kernel),
                initrd: Some(g.initrd),
                cmdline: g.cmdline,
                disks: Vec::new(),
                firmware: thaw::firmware::FirmwareKind::Bios,
                display: false,
            }
        }
        Profile::Debian => {
            let g = thaw::guest::ensure_debian_guest(&cache, progress)
                .context("could not build the debian guest")?;
            let disk = thaw::disk::resolve(&format!("{},format=qcow2", g.disk.display()))?;
            ProfileGuest {
                kernel: Some(g.kernel),
                initrd: Some(g.initrd),
                cmdline: g.cmdline,
                disks: vec![disk],
                firmware: thaw::firmware::FirmwareKind::Bios,
                display: false,
            }
        }
        Profile::DebianBios | Profile::DebianUefi | Profile::DebianVnc => {
            let g = thaw::guest::ensure_firmware_guest(&cache, progress)
                .context("could not build the firmware-booted debian image")?;
            let disk = thaw::disk::resolve(&format!("{},format=qcow2", g.disk.display()))?;
            ProfileGuest {
                kernel: None,
                initrd: None,
                cmdline: String::new(),
                disks: vec![disk],
                firmware: if profile == Profile::DebianUefi {
                    thaw::firmware::FirmwareKind::Uefi
                } else {
                    thaw::firmware::FirmwareKind::Bios
                },
                display: profile == Profile::DebianVnc,
            }
        }
    })
}

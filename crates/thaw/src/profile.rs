//! Profiles and boot resolution: what a boot asks for ([`BootOptions`], the form the
//! CLI builds and `POST /v1/vms` accepts) turned into a [`BootRequest`] in one place,
//! so that `thaw boot --profile debian` and `{"profile": "debian"}` sent to thawd start
//! the same machine.
//!
//! Resolution decides which guest boots (a kernel, a profile's guest, or the first disk
//! through the firmware), its memory, firmware and display, and the Redis forward of
//! the debian profiles. It may build a profile's guest (into [`crate::guest::cache_dir`])
//! and inspects the disks, so it blocks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::boot::BootRequest;
use crate::disk::{self, DiskError};
use crate::display::{DisplayError, DisplaySpec, VncRequest};
use crate::firmware::{self, FirmwareError, FirmwareKind};
use crate::guest::{self, GuestBuildError};
use crate::home::{NameError, VmName};
use crate::ready::ReadySpec;
use crate::spec::{DiskSpec, MachineSpec, NetSpec, PortForward};
use crate::Accel;

/// Redis in the debian profiles.
pub const REDIS_PORT: u16 = 6379;

/// Guest memory of a boot without a profile (a kernel or a disk of the user's).
pub const CUSTOM_MEMORY_MIB: u32 = 512;

/// How long a boot may take to become ready, unless it says.
pub const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 120;

/// The guests thaw builds itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// busybox + guest agent in an initramfs.
    Default,
    /// Debian bookworm with systemd and redis on a disk image (guest port 6379).
    Debian,
    /// The same system on a disk with GRUB, booted through SeaBIOS.
    DebianBios,
    /// The same, booted through UEFI (OVMF).
    DebianUefi,
    /// debian-bios with a VNC display whose screen shows a clock and what is typed.
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
    /// Every profile, in the order the help lists them.
    pub const ALL: [Profile; 5] = [
        Profile::Default,
        Profile::Debian,
        Profile::DebianBios,
        Profile::DebianUefi,
        Profile::DebianVnc,
    ];

    /// The profile's name as the CLI and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Debian => "debian",
            Profile::DebianBios => "debian-bios",
            Profile::DebianUefi => "debian-uefi",
            Profile::DebianVnc => "debian-vnc",
        }
    }

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

    /// How reports name the profile's guest.
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

/// A display asked for by name (`--display vnc|none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DisplayKind {
    None,
    Vnc,
}

impl std::str::FromStr for DisplayKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(DisplayKind::None),
            "vnc" => Ok(DisplayKind::Vnc),
            other => Err(format!("unknown display {other:?} (use vnc or none)")),
        }
    }
}

/// A profile's machine: kernel, initrd and command line (or none: the firmware boots
/// the disk), its disk if it has one, its firmware and display.
#[derive(Debug, Clone)]
pub struct ProfileGuest {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub disks: Vec<DiskSpec>,
    pub firmware: FirmwareKind,
    pub display: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveBootError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("could not build the {what}")]
    Guest {
        what: &'static str,
        #[source]
        source: GuestBuildError,
    },
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    #[error(transparent)]
    Display(#[from] DisplayError),
    #[error("--append needs a --kernel (a disk's bootloader has its own command line)")]
    AppendWithoutKernel,
    /// Memory, vCPUs or machine type out of range: refused before any guest is built.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("guest port 0 cannot be forwarded or waited for")]
    GuestPortZero,
    #[error(transparent)]
    Lifetime(#[from] crate::lifetime::LifetimeError),
    #[error(transparent)]
    Bind(#[from] crate::ports::BindError),
}

/// The guest of `profile`, built into the guest cache if missing.
pub fn profile_guest(
    profile: Profile,
    progress: &mut dyn FnMut(&str),
) -> Result<ProfileGuest, ResolveBootError> {
    let cache = guest::cache_dir();
    let built = |what| move |source| ResolveBootError::Guest { what, source };
    let qcow2 = |p: &Path| disk::resolve(&format!("{},format=qcow2", p.display()));
    Ok(match profile {
        Profile::Default => {
            let g =
                guest::ensure_default_guest(&cache, progress).map_err(built("default guest"))?;
            ProfileGuest {
                kernel: Some(g.kernel),
                initrd: Some(g.initrd),
                cmdline: g.cmdline,
                disks: Vec::new(),
                firmware: FirmwareKind::Bios,
                display: false,
            }
        }
        Profile::Debian => {
            let g = guest::ensure_debian_guest(&cache, progress).map_err(built("debian guest"))?;
            ProfileGuest {
                disks: vec![qcow2(&g.disk)?],
                kernel: Some(g.kernel),
                initrd: Some(g.initrd),
                cmdline: g.cmdline,
                firmware: FirmwareKind::Bios,
                display: false,
            }
        }
        Profile::DebianBios | Profile::DebianUefi | Profile::DebianVnc => {
            let g = guest::ensure_firmware_guest(&cache, progress)
                .map_err(built("firmware-booted debian image"))?;
            ProfileGuest {
                kernel: None,
                initrd: None,
                cmdline: String::new(),
                disks: vec![qcow2(&g.disk)?],
                firmware: match profile {
                    Profile::DebianUefi => FirmwareKind::Uefi,
                    _ => FirmwareKind::Bios,
                },
                display: profile == Profile::DebianVnc,
            }
        }
    })
}

/// A boot as a client asks for it: `POST /v1/vms`'s body, and what `thaw boot` builds
/// from its arguments; `resolve` turns it into the request the library boots.
///
/// What boots: `kernel` (with `initrd`) if given; else `profile`'s guest; else, with a
/// `firmware`, the first disk through it; else the default guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "web", "memory_mib": 512, "cpus": 2, "ports": [{"host": 0, "guest": 80}], "ready_port": 80})))]
pub struct BootOptions {
    pub name: String,
    /// A guest thaw builds (not with `kernel`); extra `disks` are attached to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// Guest memory in MiB (default: the guest's, 256 for `default` and 512 for the
    /// debian ones; 512 for a kernel or a disk of your own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Virtual CPUs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// QEMU machine type (default pc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Default: kvm where it can run a guest, else tcg.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<Accel>,
    /// An absolute path to a kernel to boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub kernel: Option<PathBuf>,
    /// An absolute path to the initramfs booted with `kernel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub initrd: Option<PathBuf>,
    /// The kernel command line (default: the guest's, or `console=ttyS0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
    /// Disks: `PATH[,format=raw|qcow2][,readonly]`, PATH absolute.
    #[serde(default)]
    pub disks: Vec<String>,
    /// Port forwards; a host port of 0 picks a free one.
    #[serde(default)]
    pub ports: Vec<PortForward>,
    /// The host address the port forwards and the VNC display listen on: an IPv4
    /// address of the daemon's host, or `0.0.0.0` for all (default `127.0.0.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// No network card.
    #[serde(default)]
    pub no_net: bool,
    /// Also wait until this guest TCP port accepts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_port: Option<u16>,
    /// Also wait until the serial console matches this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_serial: Option<String>,
    /// Seconds the guest may take to become ready (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// bios or uefi (default: the profile's, else bios); without a kernel or a
    /// profile, the firmware boots the first disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareKind>,
    /// `vnc` adds a display, `none` takes the profile's away. Without it, a profile
    /// has its own display, and a boot without a profile has one when `display` is
    /// given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_kind: Option<DisplayKind>,
    /// The VNC display's ports and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<DisplayOptions>,
    /// Time to live: `30s`, `10m`, `2h`, `1d` or a bare number of seconds. When it
    /// passes, the VM is stopped and removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Labels (`KEY: VALUE`), shown by `GET /v1/vms` and matched by `?label=K=V`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, String>))]
    pub labels: crate::lifetime::Labels,
}

/// A VGA card served over VNC on the VM's bind address (127.0.0.1 by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DisplayOptions {
    /// 0 or absent: a free port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc_port: Option<u16>,
    /// Also serve VNC over a websocket.
    #[serde(default)]
    pub websocket: bool,
    /// The websocket's port (0 or absent: a free one); implies `websocket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_port: Option<u16>,
    /// The VNC password (at most 8 characters; never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl DisplayOptions {
    fn is_empty(&self) -> bool {
        self == &DisplayOptions::default()
    }
}

/// What boots, once `kernel`, `profile` and `firmware` are weighed.
enum Source {
    Kernel(PathBuf, Option<PathBuf>),
    /// A profile's guest; `explicit` when the options named it (an implicit default
    /// guest has no display of its own to keep or take away).
    Profile(Profile, bool),
    /// The firmware boots the first disk.
    Disk(FirmwareKind),
}

/// Turns a boot's options into the request the library boots: builds the profile's
/// guest if missing (progress lines go to `progress`), inspects the disks, finds the
/// firmware. `default_accel` is the accelerator when the options name none.
pub fn resolve(
    o: BootOptions,
    default_accel: Accel,
    progress: &mut dyn FnMut(&str),
) -> Result<BootRequest, ResolveBootError> {
    let name: VmName = o.name.parse()?;
    // The ranges first: nothing is fetched or built for a boot that would be refused.
    let lifetime = crate::lifetime::Lifetime::from_wire(o.ttl.as_deref(), &o.labels)?;
    if let Some(memory) = o.memory_mib {
        crate::spec::check_memory(memory)?;
    }
    crate::spec::check_cpus(o.cpus.unwrap_or(1))?;
    if let Some(machine) = &o.machine {
        crate::spec::check_machine(machine)?;
    }
    if o.ready_port == Some(0) || o.ports.iter().any(|f| f.guest == 0) {
        return Err(ResolveBootError::GuestPortZero);
    }
    let bind = match o.bind.as_deref() {
        Some(b) => crate::ports::parse_bind(b)?,
        None => crate::ports::DEFAULT_BIND,
    };
    crate::ports::check_bind(bind)?;
    let source = match (o.kernel, o.profile, o.firmware) {
        (Some(k), _, _) => Source::Kernel(k, o.initrd),
        (None, Some(p), _) => Source::Profile(p, true),
        (None, None, Some(f)) => Source::Disk(f),
        (None, None, None) => Source::Profile(Profile::Default, false),
    };
    // Every guest thaw builds runs `thaw-clock` on the clock channel's port.
    let clock_port = matches!(source, Source::Profile(..));
    let mut forwards = o.ports;
    let own_disks = o
        .disks
        .iter()
        .map(|d| disk::resolve(d))
        .collect::<Result<Vec<_>, _>>()?;
    let (kernel, initrd, guest_cmdline, mut disks, firmware, display, memory) = match source {
        Source::Kernel(k, i) => (
            Some(k),
            i,
            None,
            Vec::new(),
            FirmwareKind::Bios,
            None,
            CUSTOM_MEMORY_MIB,
        ),
        Source::Disk(f) => (None, None, None, Vec::new(), f, None, CUSTOM_MEMORY_MIB),
        Source::Profile(profile, explicit) => {
            let g = profile_guest(profile, progress)?;
            let redis_forwarded = forwards.iter().any(|f| f.guest == REDIS_PORT);
            if profile.has_redis() && !o.no_net && !redis_forwarded {
                forwards.push(PortForward {
                    host: 0,
                    guest: REDIS_PORT,
                });
            }
            let cmdline = g.kernel.as_ref().map(|_| g.cmdline);
            let memory = profile.memory_mib();
            (
                g.kernel,
                g.initrd,
                cmdline,
                g.disks,
                g.firmware,
                explicit.then_some(g.display),
                memory,
            )
        }
    };
    let cmdline = match (&kernel, o.append) {
        (Some(_), append) => append
            .or(guest_cmdline)
            .unwrap_or_else(|| "console=ttyS0".to_owned()),
        (None, Some(_)) => return Err(ResolveBootError::AppendWithoutKernel),
        (None, None) => String::new(),
    };
    disks.extend(own_disks);
    let firmware = firmware::resolve(o.firmware.unwrap_or(firmware))?;
    let display = match (o.display_kind, display) {
        (Some(kind), _) => kind == DisplayKind::Vnc,
        (None, Some(profile_has_one)) => profile_has_one,
        (None, None) => o.display.is_some(),
    };
    let vnc_options = o.display.unwrap_or_default();
    if !display && !vnc_options.is_empty() {
        return Err(DisplayError::NoDisplay.into());
    }
    let password = vnc_options.password;
    let display = display.then(|| DisplaySpec {
        password: password.is_some(),
        websocket: vnc_options.websocket || vnc_options.websocket_port.is_some(),
    });
    Ok(BootRequest {
        name,
        spec: MachineSpec {
            machine: o.machine.unwrap_or_else(|| "pc".to_owned()),
            memory_mib: o.memory_mib.unwrap_or(memory),
            cpus: o.cpus.unwrap_or(1),
            kernel,
            initrd,
            cmdline,
            accel: o.accel.unwrap_or(default_accel),
            firmware,
            display,
            disks,
            net: (!o.no_net).then(NetSpec::default),
            clock_port,
        },
        forwards,
        bind,
        ready: ReadySpec {
            port: o.ready_port,
            redis_ping: false,
            serial: o.ready_serial,
        },
        timeout: Duration::from_secs(o.timeout_secs.unwrap_or(DEFAULT_BOOT_TIMEOUT_SECS)),
        lifetime,
        vnc: VncRequest {
            port: vnc_options.vnc_port.unwrap_or(0),
            websocket_port: vnc_options.websocket_port.unwrap_or(0),
            password,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_boot() -> BootOptions {
        BootOptions {
            name: "k".into(),
            kernel: Some("/boot/k".into()),
            ..BootOptions::default()
        }
    }

    fn resolve_quietly(o: BootOptions) -> Result<BootRequest, ResolveBootError> {
        resolve(o, Accel::Tcg, &mut |_| {})
    }

    #[test]
    fn profile_names_round_trip_through_the_cli_and_the_wire() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>(), Ok(p));
            let wire = serde_json::to_value(p).unwrap();
            assert_eq!(wire, p.as_str());
        }
        assert!("debian-xp".parse::<Profile>().is_err());
    }

    #[test]
    fn a_kernel_boot_takes_the_defaults_and_its_display_from_the_options() {
        let req = resolve_quietly(kernel_boot()).unwrap();
        assert_eq!(req.spec.memory_mib, CUSTOM_MEMORY_MIB);
        assert_eq!(req.spec.cmdline, "console=ttyS0");
        assert_eq!(req.spec.display, None);
        // The API's form: a display object alone gives a display.
        let with_display = BootOptions {
            display: Some(DisplayOptions::default()),
            ..kernel_boot()
        };
        assert!(resolve_quietly(with_display)
            .unwrap()
            .spec
            .display
            .is_some());
        // The CLI's form: no --display means none, and VNC options then need one.
        let refused = BootOptions {
            display_kind: Some(DisplayKind::None),
            display: Some(DisplayOptions {
                vnc_port: Some(5999),
                ..DisplayOptions::default()
            }),
            ..kernel_boot()
        };
        assert!(matches!(
            resolve_quietly(refused),
            Err(ResolveBootError::Display(DisplayError::NoDisplay))
        ));
    }

    #[test]
    fn append_needs_a_kernel() {
        let o = BootOptions {
            name: "d".into(),
            firmware: Some(FirmwareKind::Bios),
            append: Some("quiet".into()),
            ..BootOptions::default()
        };
        assert!(matches!(
            resolve_quietly(o),
            Err(ResolveBootError::AppendWithoutKernel)
        ));
    }
}

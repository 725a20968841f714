//! A typed description of a machine and the one function that renders it as QEMU argv.
//!
//! The same spec is recorded in every snapshot; a restore renders the snapshot's spec
//! again (with the RAM file mapped private and `-incoming defer`), so the device set
//! always matches the migration stream.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thaw_qmp::QemuVersion;
use uuid::Uuid;

use crate::accel::Accel;
use crate::display::{DisplaySpec, VncPorts};
use crate::firmware::Firmware;

/// The largest guest thaw will start, in MiB.
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;

/// What the user asks for: the machine to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpec {
    /// QEMU machine type, e.g. `pc` or `q35`.
    pub machine: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The kernel QEMU loads itself (`-kernel`), or none: the firmware boots the first
    /// disk (its bootloader).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// The kernel command line (with a kernel only).
    pub cmdline: String,
    pub accel: Accel,
    /// SeaBIOS (QEMU's default) or UEFI.
    #[serde(default, skip_serializing_if = "Firmware::is_bios")]
    pub firmware: Firmware,
    /// A VGA card served over VNC, or none (`-display none`, no card).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<DisplaySpec>,
    /// virtio-blk disks, in order (`/dev/vda`, `/dev/vdb`, ...).
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// A virtio-net NIC on QEMU's user-mode network (slirp), or none.
    #[serde(default)]
    pub net: Option<NetSpec>,
    /// A second virtio-serial port, `org.thaw.clock.0`, on which the guest's
    /// `thaw-clock` sets the clock of a resumed clone (see [`crate::clockport`]).
    /// Guests thaw builds run it; for any other guest (and snapshots taken before the
    /// port existed: the device set must match theirs) the clock is set through the
    /// guest agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clock_port: bool,
}

/// A disk image the VM sees through a qcow2 overlay; the image itself is never written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// The base image (absolute path).
    pub base: PathBuf,
    pub format: DiskFormat,
    pub readonly: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DiskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            other => Err(format!("unknown disk format {other:?} (use raw or qcow2)")),
        }
    }
}

/// The NIC: user-mode networking, with TCP ports of the guest forwarded from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetSpec {
    /// Guest TCP ports reachable from the host. Host ports are chosen per VM (every
    /// clone needs its own), so they are not part of the spec.
    pub guest_ports: Vec<u16>,
}

/// A host port forwarded to a guest port (host side bound to the VM's bind address,
/// see [`crate::ports`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
}

/// The guest's MAC address: fixed, since it is part of the guest's state anyway and
/// every clone has its own user-mode network.
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// A spec that cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("kernel {0} not found")]
    KernelMissing(PathBuf),
    #[error("initrd {0} not found")]
    InitrdMissing(PathBuf),
    #[error("memory must be between 16 and {MAX_MEMORY_MIB} MiB, not {0}")]
    Memory(u32),
    #[error("cpus must be between 1 and 64, not {0}")]
    Cpus(u32),
    #[error("invalid machine type {0:?}")]
    Machine(String),
    #[error("disk image {0} not found")]
    DiskMissing(PathBuf),
    #[error("an initrd needs a kernel (--kernel)")]
    InitrdWithoutKernel,
    #[error("nothing to boot: give a --kernel, or a --disk whose bootloader the firmware starts")]
    NothingToBoot,
    #[error(
        "UEFI firmware {0} not found: install the Debian package ovmf (scripts/setup.sh --images)"
    )]
    FirmwareMissing(PathBuf),
}

/// Guest memory in MiB: 16 to [`MAX_MEMORY_MIB`].
pub fn check_memory(memory_mib: u32) -> Result<(), SpecError> {
    match (16..=MAX_MEMORY_MIB).contains(&memory_mib) {
        true => Ok(()),
        false => Err(SpecError::Memory(memory_mib)),
    }
}

/// Virtual CPUs: 1 to 64.
pub fn check_cpus(cpus: u32) -> Result<(), SpecError> {
    match (1..=64).contains(&cpus) {
        true => Ok(()),
        false => Err(SpecError::Cpus(cpus)),
    }
}

/// A QEMU machine type's name: letters, digits, '-', '.', '_'.
pub fn check_machine(machine: &str) -> Result<(), SpecError> {
    let valid = !machine.is_empty()
        && machine
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    match valid {
        true => Ok(()),
        false => Err(SpecError::Machine(machine.to_owned())),
    }
}

impl MachineSpec {
    /// Checks what can be checked before starting QEMU.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_memory(self.memory_mib)?;
        check_cpus(self.cpus)?;
        check_machine(&self.machine)?;
        match &self.kernel {
            Some(kernel) if !kernel.is_file() => {
                return Err(SpecError::KernelMissing(kernel.clone()))
            }
            Some(_) => {}
            None if self.initrd.is_some() => return Err(SpecError::InitrdWithoutKernel),
            None if self.disks.is_empty() => return Err(SpecError::NothingToBoot),
            None => {}
        }
        if let Firmware::Uefi { code } = &self.firmware {
            if !code.is_file() {
                return Err(SpecError::FirmwareMissing(code.clone()));
            }
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(SpecError::InitrdMissing(initrd.clone()));
            }
        }
        for d in &self.disks {
            if !d.base.is_file() {
                return Err(SpecError::DiskMissing(d.base.clone()));
            }
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }

    /// Renders the QEMU command line (without the binary itself).
    pub fn argv(&self, launch: &Launch<'_>) -> Vec<OsString> {
        let mut a = Argv::default();
        a.push("-name").push(launch.name);
        a.push("-machine")
            .push(format!("{},memory-backend=ram0", self.machine));
        a.push("-accel").push(match self.accel {
            Accel::Kvm => "kvm".to_owned(),
            Accel::Tcg => {
                let mut tcg = "tcg".to_owned();
                if self.cpus > 1 {
                    tcg.push_str(",thread=multi");
                }
                if let Some(mib) = launch.tcg_tb_size_mib {
                    tcg.push_str(&format!(",tb-size={mib}"));
                }
                tcg
            }
        });
        if self.accel == Accel::Kvm {
            a.push("-cpu").push("host");
        }
        a.push("-m").push(format!("{}M", self.memory_mib));
        a.push("-smp").push(self.cpus.to_string());
        // Shared for a booted VM (the file is the RAM image); private for a restore
        // (pages fault in from the image on first touch and are copied on first
        // write; the image is never modified). QEMU >= 8.2 can open the image
        // read-only and still give the guest writable private memory.
        let mut backend = OsString::from(format!(
            "memory-backend-file,id=ram0,size={}M,share={},mem-path=",
            self.memory_mib,
            if launch.share_ram { "on" } else { "off" }
        ));
        backend.push(escape_commas(launch.ram));
        if launch.ram_offset > 0 {
            backend.push(format!(",offset={}", launch.ram_offset));
        }
        if !launch.share_ram && launch.qemu.has_file_migration() {
            backend.push(",readonly=on,rom=off");
        }
        a.push("-object").push(backend);
        if let Firmware::Uefi { code } = &self.firmware {
            // OVMF's code read-only, and this VM's own variable store.
            let mut code_drive = OsString::from("if=pflash,format=raw,unit=0,readonly=on,file=");
            code_drive.push(escape_commas(code));
            a.push("-drive").push(code_drive);
            let mut vars_drive = OsString::from("if=pflash,format=raw,unit=1,file=");
            vars_drive.push(escape_commas(launch.efivars));
            a.push("-drive").push(vars_drive);
        }
        if let Some(kernel) = &self.kernel {
            match launch.boot_stub {
                Some(stub) => {
                    a.push("-kernel").push(stub.as_os_str());
                }
                None => {
                    a.push("-kernel").push(kernel.as_os_str());
                    if let Some(initrd) = &self.initrd {
                        a.push("-initrd").push(initrd.as_os_str());
                    }
                }
            }
            a.push("-append").push(&self.cmdline);
        }
        for fixed in [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ] {
            a.push(fixed);
        }
        // Serial console to a file.
        // QEMU's stdin is a socket to the console keeper (see `console`), which keeps
        // `launch.console_log` bounded.
        a.push("-chardev").push("socket,id=ser0,fd=0");
        a.push("-serial").push("chardev:ser0");
        // QMP.
        let mut qmp = OsString::from("socket,id=qmp0,server=on,wait=off,path=");
        qmp.push(escape_commas(launch.qmp_socket));
        a.push("-chardev").push(qmp);
        a.push("-mon").push("chardev=qmp0,mode=control");
        let mut status = OsString::from("socket,id=qmp1,server=on,wait=off,path=");
        status.push(escape_commas(launch.status_socket));
        a.push("-chardev").push(status);
        a.push("-mon").push("chardev=qmp1,mode=control");
        // Guest agent over virtio-serial.
        a.push("-device").push("virtio-serial-pci,id=vser0");
        let mut qga = OsString::from("socket,id=qga0,server=on,wait=off,path=");
        qga.push(escape_commas(launch.agent_socket));
        a.push("-chardev").push(qga);
        a.push("-device")
            .push("virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0");
        if self.clock_port {
            // A pipe chardev (the FIFOs PATH.in and PATH.out) is always open, so the
            // guest side blocks in its read until a request comes.
            let mut clock = OsString::from("pipe,id=thawclk0,path=");
            clock.push(escape_commas(launch.clock_pipe));
            a.push("-chardev").push(clock);
            a.push("-device").push(format!(
                "virtserialport,bus=vser0.0,chardev=thawclk0,name={}",
                thaw_clock::PORT_NAME
            ));
        }
        // A fresh generation id per clone makes the guest kernel reseed its RNG.
        a.push("-device")
            .push(format!("vmgenid,id=vmgenid0,guid={}", launch.vmgenid));
        for (i, (disk, overlay)) in self.disks.iter().zip(launch.disk_overlays).enumerate() {
            let mut drive = OsString::from(format!("if=none,id=disk{i},format=qcow2,file="));
            drive.push(escape_commas(overlay));
            if disk.readonly {
                drive.push(",readonly=on");
            }
            a.push("-drive").push(drive);
            // Without a kernel, the firmware boots the first disk.
            let boot = if i == 0 && self.kernel.is_none() {
                ",bootindex=0"
            } else {
                ""
            };
            a.push("-device")
                .push(format!("virtio-blk-pci,drive=disk{i},id=disk{i}-dev{boot}"));
        }
        if let (Some(display), Some(ports)) = (&self.display, &launch.vnc) {
            for arg in crate::display::argv(display, ports, launch.bind) {
                a.push(arg);
            }
        }
        if self.net.is_some() {
            let mut netdev = "user,id=net0".to_owned();
            for f in launch.ports {
                netdev.push_str(&format!(
                    ",hostfwd=tcp:{}:{}-:{}",
                    launch.bind, f.host, f.guest
                ));
            }
            a.push("-netdev").push(netdev);
            a.push("-device").push(format!(
                "virtio-net-pci,netdev=net0,id=net0-dev,mac={GUEST_MAC}"
            ));
        }
        if launch.incoming {
            a.push("-S").push("-incoming").push("defer");
        }
        a.0
    }
}

/// Per-process facts that are not part of the spec: where this VM's files live.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub name: &'a str,
    pub qemu: QemuVersion,
    /// The TCG translation buffer in MiB (see [`crate::qemu::Qemu::tcg_tb_size_mib`]).
    pub tcg_tb_size_mib: Option<u32>,
    pub ram: &'a Path,
    /// Where the RAM image starts in `ram` (a snapshot's mapped-ram file), else 0.
    pub ram_offset: u64,
    pub share_ram: bool,
    pub qmp_socket: &'a Path,
    /// A second QMP monitor for status queries (not part of the machine: snapshots of
    /// VMs started without it restore with it).
    pub status_socket: &'a Path,
    pub agent_socket: &'a Path,
    /// The clock channel's FIFOs without their `.in` / `.out` suffix (used when the
    /// spec has a clock port; see [`crate::clockport::make_pipe`]).
    pub clock_pipe: &'a Path,
    /// Where the console keeper writes the serial console (QEMU itself writes it to
    /// its stdin, see [`crate::console`]).
    pub console_log: &'a Path,
    pub vmgenid: Uuid,
    /// Start paused, waiting for `migrate-incoming`.
    pub incoming: bool,
    /// This VM's qcow2 overlay for each of `spec.disks`, in order.
    pub disk_overlays: &'a [PathBuf],
    /// Host ports for the spec's guest ports.
    pub ports: &'a [PortForward],
    /// The host address the forwards and the display listen on.
    pub bind: std::net::Ipv4Addr,
    /// This VM's UEFI variable store (used when the spec's firmware is UEFI).
    pub efivars: &'a Path,
    /// This VM's display ports (when the spec has a display).
    pub vnc: Option<VncPorts>,
    /// A restore's stand-in for the spec's kernel, passed instead of it and of the
    /// initrd (see [`crate::bootstub`]).
    pub boot_stub: Option<&'a Path>,
}

#[derive(Default)]
struct Argv(Vec<OsString>);

impl Argv {
    fn push(&mut self, s: impl Into<OsString>) -> &mut Self {
        self.0.push(s.into());
        self
    }
}

/// QEMU option values are comma-separated; a literal comma is written twice.
fn escape_commas(p: &Path) -> OsString {
    let s = p.as_os_str().to_string_lossy();
    OsString::from(s.replace(',', ",,"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MachineSpec {
        MachineSpec {
            machine: "pc".into(),
            memory_mib: 256,
            cpus: 2,
            kernel: Some("/k/vmlinuz".into()),
            initrd: Some("/k/initrd".into()),
            cmdline: "console=ttyS0".into(),
            accel: Accel::Tcg,
            firmware: Firmware::Bios,
            display: None,
            disks: vec![DiskSpec {
                base: "/img/base.raw".into(),
                format: DiskFormat::Raw,
                readonly: false,
            }],
            net: Some(NetSpec {
                guest_ports: vec![6379],
            }),
            clock_port: false,
        }
    }

    const OVERLAYS: &[PathBuf] = &[];
    const PORTS: &[PortForward] = &[PortForward {
        host: 40001,
        guest: 6379,
    }];

    fn launch<'a>(share: bool, incoming: bool) -> Launch<'a> {
        Launch {
            name: "web",
            qemu: "10.0.2".parse().unwrap(),
            tcg_tb_size_mib: None,
            ram: Path::new("/h/vms/web/ram"),
            ram_offset: 0,
            share_ram: share,
            qmp_socket: Path::new("/h/vms/web,x/qmp.sock"),
            status_socket: Path::new("/h/vms/web,x/status.sock"),
            agent_socket: Path::new("/h/vms/web/qga.sock"),
            clock_pipe: Path::new("/h/vms/web,x/clock"),
            console_log: Path::new("/h/vms/web,x/console.log"),
            vmgenid: Uuid::nil(),
            incoming,
            disk_overlays: OVERLAYS,
            ports: PORTS,
            bind: crate::ports::DEFAULT_BIND,
            efivars: Path::new("/h/vms/web/efivars.fd"),
            vnc: None,
            boot_stub: None,
        }
    }

    fn joined(v: &[OsString]) -> String {
        v.iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn booted_vm_maps_ram_shared() {
        let argv = joined(&spec().argv(&launch(true, false)));
        assert!(
            argv.contains("memory-backend-file,id=ram0,size=256M,share=on,mem-path=/h/vms/web/ram")
        );
        assert!(argv.contains("-machine pc,memory-backend=ram0"));
        assert!(argv.contains("-accel tcg,thread=multi"));
        assert!(argv.contains("-smp 2"));
        assert!(!argv.contains("-incoming"));
        assert!(
            argv.contains("path=/h/vms/web,,x/qmp.sock"),
            "commas escaped: {argv}"
        );
        assert!(argv.contains("-chardev socket,id=ser0,fd=0 -serial chardev:ser0"));
        assert!(argv.contains(
            "-chardev socket,id=qmp1,server=on,wait=off,path=/h/vms/web,,x/status.sock \
             -mon chardev=qmp1,mode=control"
        ));
        assert!(argv.contains("-netdev user,id=net0,hostfwd=tcp:127.0.0.1:40001-:6379"));
        assert!(argv.contains("virtio-net-pci,netdev=net0"));
        let elsewhere = Launch {
            bind: "10.1.2.3".parse().unwrap(),
            ..launch(true, false)
        };
        let argv = joined(&spec().argv(&elsewhere));
        assert!(argv.contains("hostfwd=tcp:10.1.2.3:40001-:6379"), "{argv}");
        assert!(
            !argv.contains("tb-size"),
            "QEMU's default unless asked: {argv}"
        );
    }

    #[test]
    fn the_clock_port_is_a_pipe_on_the_agents_bus_only_when_the_spec_asks() {
        let without = joined(&spec().argv(&launch(false, true)));
        assert!(!without.contains("thawclk0"), "{without}");
        let with = MachineSpec {
            clock_port: true,
            ..spec()
        };
        let argv = joined(&with.argv(&launch(false, true)));
        assert!(
            argv.contains("-chardev pipe,id=thawclk0,path=/h/vms/web,,x/clock"),
            "commas escaped: {argv}"
        );
        assert!(
            argv.contains("virtserialport,bus=vser0.0,chardev=thawclk0,name=org.thaw.clock.0"),
            "{argv}"
        );
        // After the agent's port: the device order of older snapshots is unchanged.
        assert!(argv.find("org.qemu.guest_agent.0") < argv.find("org.thaw.clock.0"));
    }

    #[test]
    fn a_spec_without_the_clock_port_serialises_as_before() {
        let json = serde_json::to_value(spec()).unwrap();
        assert!(json.get("clock_port").is_none(), "{json}");
        let old: MachineSpec = serde_json::from_value(json).unwrap();
        assert!(!old.clock_port);
    }

    #[test]
    fn a_restore_with_a_boot_stub_passes_it_instead_of_the_kernel_and_initrd() {
        let stub = Path::new("/h/vms/web/kernel-stub");
        let l = Launch {
            boot_stub: Some(stub),
            ..launch(false, true)
        };
        let argv = joined(&spec().argv(&l));
        assert!(
            argv.contains("-kernel /h/vms/web/kernel-stub -append console=ttyS0"),
            "{argv}"
        );
        assert!(
            !argv.contains("/k/vmlinuz") && !argv.contains("-initrd"),
            "{argv}"
        );
        let whole = joined(&spec().argv(&launch(false, true)));
        assert!(
            whole.contains("-kernel /k/vmlinuz -initrd /k/initrd -append"),
            "{whole}"
        );
    }

    #[test]
    fn a_tcg_translation_buffer_size_is_passed_to_qemu() {
        let l = Launch {
            tcg_tb_size_mib: Some(32),
            ..launch(false, true)
        };
        let argv = joined(&spec().argv(&l));
        assert!(
            argv.contains("-accel tcg,thread=multi,tb-size=32"),
            "{argv}"
        );
    }

    #[test]
    fn disks_run_on_overlays() {
        let overlays = [PathBuf::from("/h/vms/web/disks/disk0.qcow2")];
        let mut l = launch(true, false);
        l.disk_overlays = &overlays;
        let mut s = spec();
        s.disks[0].readonly = true;
        let argv = joined(&s.argv(&l));
        assert!(argv.contains(
            "-drive if=none,id=disk0,format=qcow2,file=/h/vms/web/disks/disk0.qcow2,readonly=on"
        ));
        assert!(argv.contains("-device virtio-blk-pci,drive=disk0,id=disk0-dev"));
        assert!(
            !argv.contains("/img/base.raw"),
            "the base is reached only through the overlay"
        );
        let mut no_net = spec();
        no_net.net = None;
        assert!(!joined(&no_net.argv(&launch(true, false))).contains("-netdev"));
    }

    #[test]
    fn restore_maps_ram_private_read_only_and_waits_for_incoming() {
        let argv = joined(&spec().argv(&launch(false, true)));
        assert!(argv.contains("share=off,mem-path=/h/vms/web/ram,readonly=on,rom=off"));
        assert!(argv.ends_with("-S -incoming defer"));
        let mut old = launch(false, true);
        old.qemu = "7.2.0".parse().unwrap();
        assert!(!joined(&spec().argv(&old)).contains("readonly=on"));
        let mut mapped = launch(false, true);
        mapped.ram_offset = 1 << 20;
        assert!(joined(&spec().argv(&mapped))
            .contains("mem-path=/h/vms/web/ram,offset=1048576,readonly=on"));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut s = spec();
        s.memory_mib = 1;
        assert!(matches!(s.validate(), Err(SpecError::Memory(1))));
        let mut s = spec();
        s.machine = "pc,accel=kvm".into();
        assert!(matches!(s.validate(), Err(SpecError::Machine(_))));
        let s = spec();
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "kernel /k/vmlinuz not found"
        );
    }

    #[test]
    fn firmware_boot_starts_the_first_disk_and_uefi_gets_its_own_vars() {
        let overlays = [PathBuf::from("/h/vms/web/disks/disk0.qcow2")];
        let mut l = launch(true, false);
        l.disk_overlays = &overlays;
        let mut s = spec();
        s.kernel = None;
        s.initrd = None;
        let argv = joined(&s.argv(&l));
        assert!(
            !argv.contains("-kernel") && !argv.contains("-append"),
            "{argv}"
        );
        assert!(argv.contains("virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=0"));
        assert!(!argv.contains("pflash"), "SeaBIOS is QEMU's default");
        s.firmware = Firmware::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
        };
        let argv = joined(&s.argv(&l));
        assert!(argv.contains(
            "-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,file=/h/vms/web/efivars.fd"
        ));
        // A kernel boot keeps the argv it always had: no boot index, no card.
        let argv = joined(&spec().argv(&l));
        assert!(argv.contains("id=disk0-dev ") || argv.ends_with("id=disk0-dev"));
        assert!(!argv.contains("bootindex") && !argv.contains("VGA"));
    }

    #[test]
    fn a_display_is_a_vga_card_served_over_vnc_on_this_vms_port() {
        let mut s = spec();
        s.display = Some(DisplaySpec::default());
        let mut l = launch(false, true);
        l.vnc = Some(VncPorts {
            port: 5905,
            websocket: None,
        });
        let argv = joined(&s.argv(&l));
        assert!(
            argv.contains("-device VGA,id=video0 -vnc 127.0.0.1:5"),
            "{argv}"
        );
        assert!(argv.contains("-display none"), "no local window either way");
    }

    #[test]
    fn firmware_boot_validation() {
        let mut s = spec();
        s.kernel = None;
        assert!(matches!(s.validate(), Err(SpecError::InitrdWithoutKernel)));
        s.initrd = None;
        s.disks.clear();
        assert!(matches!(s.validate(), Err(SpecError::NothingToBoot)));
        let mut s = spec();
        s.kernel = Some("/bin/sh".into());
        s.initrd = None;
        s.disks.clear();
        s.firmware = Firmware::Uefi {
            code: "/nonexistent/OVMF_CODE_4M.fd".into(),
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("install the Debian package ovmf"));
    }

    #[test]
    fn records_written_before_firmware_and_display_still_parse() {
        let old = r#"{"machine":"pc","memory_mib":256,"cpus":1,"kernel":"/k","initrd":null,
            "cmdline":"console=ttyS0","accel":"tcg","disks":[],"net":null}"#;
        let s: MachineSpec = serde_json::from_str(old).unwrap();
        assert_eq!(s.kernel.as_deref(), Some(Path::new("/k")));
        assert_eq!(s.firmware, Firmware::Bios);
        assert_eq!(s.display, None);
        // ... and a BIOS spec without a display is written as before.
        let j = serde_json::to_string(&s).unwrap();
        assert!(!j.contains("firmware") && !j.contains("display"), "{j}");
    }

    #[test]
    fn spec_round_trips() {
        let mut s = spec();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<MachineSpec>(&j).unwrap(), s);
        s.kernel = None;
        s.firmware = Firmware::Uefi {
            code: "/ovmf/code.fd".into(),
        };
        s.display = Some(DisplaySpec {
            password: true,
            websocket: true,
        });
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<MachineSpec>(&j).unwrap(), s);
    }
}

//! libvirt's `virsh save` / `virsh restore`, a peer users pick: a transient domain with
//! the same kernel, initrd, command line, memory and vCPUs as the spec, under TCG
//! (`<domain type='qemu'>`), measured through `virsh` as a user runs it.
//!
//! The guest agent's channel is a virtio-serial port on a Unix socket the benchmark
//! owns, added with `<qemu:commandline>`: a `<channel>` named `org.qemu.guest_agent.0`
//! would be taken by libvirtd itself (it connects to the agent, and QEMU serves one
//! client per socket). QEMU runs as root without relabelling (`<seclabel>` static
//! DAC, `relabel='no'`) so that libvirt never changes the owner of thaw's cached guest.
//!
//! If no libvirtd answers on `qemu:///system`, the benchmark starts `virtlogd` and
//! `libvirtd` itself (as root; no systemd needed) and ends them afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::method::{CompareError, MethodReport, Sample};
use crate::peer::{copy_overlays, wait_agent_ready};
use thaw::qemu::Qemu;
use thaw::ready::ReadySpec;
use thaw::spec::{MachineSpec, PortForward};
use thaw::vm::VmPaths;

const URI: &str = "qemu:///system";

/// What the benchmark tells a user to install when libvirt is missing.
pub const MISSING: &str =
    "virsh or libvirtd is missing: install libvirt-daemon-system and libvirt-clients (scripts/setup-test.sh)";

/// libvirt daemons the benchmark started (ended when dropped), or none if they ran.
pub struct Daemons {
    started: Vec<std::process::Child>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        // libvirtd first, then virtlogd.
        for child in self.started.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn virsh(args: &[&str]) -> Result<std::process::Output, CompareError> {
    Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CompareError::Libvirt(MISSING.into()),
            _ => CompareError::io("run", Path::new("virsh"), e),
        })
}

fn ok(out: std::process::Output, what: &str) -> Result<String, CompareError> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Err(CompareError::Libvirt(format!("{what}: {line}")))
}

/// Makes sure a libvirtd answers on `qemu:///system`, starting one if needed.
pub async fn ensure_daemon(progress: &mut dyn FnMut(&str)) -> Result<Daemons, CompareError> {
    let mut daemons = Daemons {
        started: Vec::new(),
    };
    if virsh(&["version"])?.status.success() {
        return Ok(daemons);
    }
    progress("starting libvirtd (and virtlogd) for the libvirt method");
    for daemon in ["virtlogd", "libvirtd"] {
        if !running(daemon) {
            let child = Command::new(daemon)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => CompareError::Libvirt(MISSING.into()),
                    _ => CompareError::io("start", Path::new(daemon), e),
                })?;
            daemons.started.push(child);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = virsh(&["version"])?;
        if out.status.success() {
            return Ok(daemons);
        }
        if Instant::now() > deadline {
            return ok(out, "libvirtd did not answer on qemu:///system").map(|_| daemons);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a process whose command name is `name` runs.
fn running(name: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // "pid (comm) S ...": a zombie is not running.
            let alive = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']));
            alive && std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name)
        })
}

/// A transient domain; destroyed (if it runs) when dropped.
pub struct Domain {
    pub name: String,
    pub dir: PathBuf,
    pub ports: Vec<PortForward>,
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The domain XML for `spec`, with its files in `dir`.
pub fn domain_xml(
    name: &str,
    qemu: &Qemu,
    spec: &MachineSpec,
    dir: &Path,
    overlays: &[PathBuf],
    ports: &[PortForward],
) -> String {
    let p = |f: &str| xml_escape(&dir.join(f).display().to_string());
    let e = |s: &Path| xml_escape(&s.display().to_string());
    let mut x = format!(
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n\
         <name>{name}</name>\n<memory unit='MiB'>{mem}</memory>\n<vcpu>{cpus}</vcpu>\n\
         <os>\n<type arch='x86_64' machine='{machine}'>hvm</type>\n{kernel}",
        mem = spec.memory_mib,
        cpus = spec.cpus,
        machine = xml_escape(&spec.machine),
        kernel = spec
            .kernel
            .as_deref()
            .map(|k| format!("<kernel>{}</kernel>\n", e(k)))
            .unwrap_or_default(),
    );
    if let Some(initrd) = &spec.initrd {
        x.push_str(&format!("<initrd>{}</initrd>\n", e(initrd)));
    }
    x.push_str(&format!(
        "<cmdline>{}</cmdline>\n</os>\n<genid/>\n\
         <features><acpi/></features>\n\
         <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\n\
         <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>\n\
         <devices>\n<emulator>{}</emulator>\n\
         <controller type='usb' model='none'/>\n<memballoon model='none'/>\n\
         <serial type='file'><source path='{}'/><target port='0'/></serial>\n",
        xml_escape(&spec.cmdline),
        e(&qemu.binary),
        p("console.log"),
    ));
    for (i, overlay) in overlays.iter().enumerate() {
        let dev = char::from(b'a' + i as u8);
        x.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{}'/><target dev='vd{dev}' bus='virtio'/></disk>\n",
            e(overlay)
        ));
    }
    // User-mode networking with the forwards is given on QEMU's command line: libvirt
    // forwards ports only with passt.
    let mut args: Vec<String> = Vec::new();
    if spec.net.is_some() {
        let mut netdev = "user,id=thawnet".to_owned();
        for f in ports {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
        }
        args.extend(["-netdev".into(), netdev, "-device".into()]);
        args.push(format!(
            "virtio-net-pci,netdev=thawnet,mac={},bus=pci.0,addr=0x11",
            thaw::spec::GUEST_MAC
        ));
    }
    x.push_str("</devices>\n<qemu:commandline>\n");
    args.extend([
        "-device".into(),
        "virtio-serial-pci,id=thawvser,bus=pci.0,addr=0x10".into(),
        "-chardev".into(),
        format!(
            "socket,id=thawqga,server=on,wait=off,path={}",
            dir.join("qga.sock").display()
        ),
        "-device".into(),
        "virtserialport,bus=thawvser.0,chardev=thawqga,name=org.qemu.guest_agent.0".into(),
    ]);
    for a in args {
        x.push_str(&format!("<qemu:arg value='{}'/>\n", xml_escape(&a)));
    }
    x.push_str("</qemu:commandline>\n</domain>\n");
    x
}

/// Defines and starts the transient domain; returns once its agent answers.
pub async fn boot(
    qemu: &Qemu,
    spec: &MachineSpec,
    dir: &Path,
    overlays: &[PathBuf],
    ready: &ReadySpec,
) -> Result<Domain, CompareError> {
    std::fs::create_dir_all(dir).map_err(|e| CompareError::io("create", dir, e))?;
    let name = format!("thaw-bench-{}-{}", std::process::id(), spec.memory_mib);
    let ports = spec
        .net
        .iter()
        .flat_map(|n| n.guest_ports.iter())
        .map(|&guest| {
            Ok(PortForward {
                host: thaw::ports::free().map_err(|e| CompareError::io("pick a port", dir, e))?,
                guest,
            })
        })
        .collect::<Result<Vec<_>, CompareError>>()?;
    let xml = domain_xml(&name, qemu, spec, dir, overlays, &ports);
    let xml_path = dir.join("domain.xml");
    std::fs::write(&xml_path, xml).map_err(|e| CompareError::io("write", &xml_path, e))?;
    // A domain left by a killed run of this same pid is unlikely; remove it anyway.
    let _ = virsh(&["destroy", &name]);
    ok(
        virsh(&["create", &xml_path.to_string_lossy()])?,
        "virsh create",
    )?;
    let domain = Domain {
        name,
        dir: dir.to_owned(),
        ports,
    };
    domain.wait_ready(ready).await?;
    Ok(domain)
}

impl Domain {
    async fn wait_ready(&self, ready: &ReadySpec) -> Result<(), CompareError> {
        let paths = VmPaths {
            dir: self.dir.clone(),
        };
        wait_agent_ready(None, &paths, &paths.agent(), ready, &self.ports).await
    }

    /// `virsh save`: the domain ends, its state in `file`. Returns the wall time.
    pub fn save(&self, file: &Path) -> Result<(f64, u64), CompareError> {
        let _ = std::fs::remove_file(file);
        let t = Instant::now();
        ok(
            virsh(&["save", &self.name, &file.to_string_lossy()])?,
            "virsh save",
        )?;
        let ms = thaw::ms(t.elapsed());
        Ok((ms, std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)))
    }

    /// `virsh restore` (returns once the domain runs), then the agent.
    pub async fn restore(&self, file: &Path, ready: &ReadySpec) -> Result<Sample, CompareError> {
        let _ = std::fs::remove_file(self.dir.join("qga.sock"));
        let t0 = Instant::now();
        ok(
            virsh(&["restore", &file.to_string_lossy()])?,
            "virsh restore",
        )?;
        let running_ms = thaw::ms(t0.elapsed());
        self.wait_ready(ready).await?;
        Ok(Sample {
            running_ms: Some(running_ms),
            ready_ms: thaw::ms(t0.elapsed()),
        })
    }

    /// Ends the running domain now (drop does too).
    pub fn destroy(&self) {
        let _ = virsh(&["destroy", &self.name]);
    }

    /// Whether libvirt still lists the domain.
    pub fn exists(&self) -> bool {
        virsh(&["domstate", &self.name]).is_ok_and(|o| o.status.success())
    }
}

/// What the table calls the method.
pub const LABEL: &str = "libvirt virsh save / restore";

/// `virsh save` and `virsh restore` of one domain, `runs` times.
pub async fn method(
    qemu: &Qemu,
    runs: u32,
    ready: &ReadySpec,
    spec: &MachineSpec,
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<MethodReport, CompareError> {
    let mem = spec.memory_mib;
    std::fs::create_dir_all(dir).map_err(|e| CompareError::io("create", dir, e))?;
    let mut overlays = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        let o = dir.join(format!("disk{i}.qcow2"));
        thaw::disk::create_overlay(&d.base, d.format, &o)?;
        overlays.push(o);
    }
    progress(&format!("{mem} MiB: libvirt: booting the domain"));
    let domain = boot(qemu, spec, dir, &overlays, ready).await?;
    let file = dir.join("domain.save");
    let saved = dir.join("saved");
    let (mut saves, mut samples, mut bytes) = (Vec::new(), Vec::new(), 0);
    for i in 0..runs {
        progress(&format!("{mem} MiB: libvirt: save {}/{}", i + 1, runs));
        let (ms, b) = domain.save(&file)?;
        saves.push(ms);
        bytes = b;
        copy_overlays(&overlays, &saved)?;
        progress(&format!("{mem} MiB: libvirt: restore {}/{}", i + 1, runs));
        samples.push(domain.restore(&file, ready).await?);
        if i + 1 == runs {
            domain.destroy();
        }
    }
    if domain.exists() {
        return Err(CompareError::Libvirt(format!(
            "domain {} still exists after destroy",
            domain.name
        )));
    }
    let mut m = MethodReport::new("libvirt", LABEL, mem).with_samples(&saves, &samples);
    m.save_bytes = Some(bytes);
    Ok(m)
}

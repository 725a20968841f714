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

use super::{command_error_line, spawn_error, GuestBuildError, READY_LINE};
use crate::fsutil::Context;

pub(crate) const SUITE: &str = "bookworm";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Set to a Debian mirror's URL to use it instead of the one apt uses on this host.
pub(crate) const MIRROR_ENV: &str = "THAW_DEBIAN_MIRROR";

/// What debootstrap installs besides the minbase variant (essential and required
/// packages, apt). minbase has no init, no udev (devices, module loading, and the NIC's
/// readiness for networkd) and no kmod (depmod, modprobe).
pub(crate) const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "iproute2",
    "qemu-guest-agent",
    "redis-server",
];

/// The file system's size: the qcow2's virtual size. The packages take about 250 MiB;
/// the rest is room for what the guest writes.
pub(crate) const DISK_SIZE: &str = "1G";

pub(crate) const HOSTNAME: &str = "thaw-debian";

/// Units masked (linked to /dev/null, so that no dependency starts them either): under
/// TCG every process a boot starts costs a noticeable fraction of a second, so whatever a
/// short-lived VM and its clones do not need goes. apt's and dpkg's timers, e2scrub, fstrim
/// and tmpfiles-clean would do background work in every clone; waiting for the network is
/// left to thaw-ready (nothing else needs network-online.target); the first-boot wizard
/// would prompt on the console; the VGA console's gettys (tty1, and tty2-6 that
/// getty-static starts without logind) are useless with a serial console; the remaining
/// ones mount or load what a server VM does not use (debugfs, tracefs, hugetlbfs, fuse,
/// configfs, binfmt_misc, loop, dm_mod, pstore), parse `ip=` from the command line, remount
/// the root (thaw's initramfs mounts it read-write) or flush a journal that is volatile
/// anyway. The random seed is not credited to the kernel's pool by default, and clones of
/// one snapshot would share it; the VM Generation ID reseeds them instead. The packages'
/// scripts already created every system user (sysusers), and nobody reads utmp here.
pub(crate) const MASKED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    "systemd-networkd-wait-online.service",
    "systemd-firstboot.service",
    "getty@tty1.service",
    "getty-static.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-binfmt.service",
    "kmod-static-nodes.service",
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "systemd-pstore.service",
    "systemd-network-generator.service",
    "systemd-remount-fs.service",
    "systemd-journal-flush.service",
    "systemd-random-seed.service",
    "systemd-sysusers.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
];

/// Generators masked: systemd runs every generator before it loads a single unit, and
/// these have nothing to find here (no encrypted, verity, integrity or GPT-discovered
/// volumes, no hibernation image, no rc.local, no SysV-only services, no `systemd.run=` or
/// debug options). The fstab and getty generators stay (the latter starts the serial
/// console's getty).
pub(crate) const MASKED_GENERATORS: &[&str] = &[
    "systemd-cryptsetup-generator",
    "systemd-debug-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
    "systemd-system-update-generator",
    "systemd-sysv-generator",
    "systemd-veritysetup-generator",
];

/// Modules udev would load for devices QEMU's pc machine has but a server VM does not use:
/// KVM (no nested virtualisation under TCG), the PC speaker, the floppy, raw serio and
/// evdev input devices.
const MODPROBE_BLACKLIST: &str = "\
blacklist kvm
blacklist kvm_amd
blacklist kvm_intel
blacklist pcspkr
blacklist floppy
blacklist serio_raw
blacklist evdev
";

/// Units enabled besides those the packages enable (redis-server); qemu-guest-agent is
/// thaw's unit ([`AGENT_UNIT`]). The serial console's getty comes from `console=ttyS0` on
/// the kernel command line.
pub(crate) const ENABLED: &[&str] = &[
    "systemd-networkd.service",
    "qemu-guest-agent.service",
    "thaw-ready.service",
];

/// DHCP from QEMU's user networking on whatever the NIC is called (`eth0` with
/// `net.ifnames=0`, `ens*`/`enp*` without).
const NETWORK_UNIT: &str = "\
[Match]
Name=eth* en*

[Network]
DHCP=ipv4
";

/// The journal in RAM only: nothing to flush at boot, nothing written to the disk.
const JOURNALD_CONF: &str = "\
[Journal]
Storage=volatile
";

/// No DHCP client writes resolv.conf (networkd does not without resolved): slirp's DNS
/// forwarder is always 10.0.2.3.
const RESOLV_CONF: &str = "nameserver 10.0.2.3\n";

/// What thaw's initramfs mounts (systemd-remount-fs is masked, so this line documents the
/// root mount rather than changes it); no fsck at boot: the image is made fresh and only
/// overlays are ever written.
const FSTAB: &str = "/dev/vda / ext4 rw,noatime 0 0\n";

/// Keep later `apt-get install`s in the guest as slim as the image.
const DPKG_EXCLUDES: &str = "\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
";

/// Trimmed from the tree like [`DPKG_EXCLUDES`] does for later installs: (directory,
/// what to keep in each of its entries).
const TRIMMED: &[(&str, Option<&str>)] = &[
    ("usr/share/doc", Some("copyright")),
    ("usr/share/man", None),
    ("usr/share/info", None),
    ("usr/share/locale", None),
    ("var/cache/apt", None),
    ("var/lib/apt/lists", None),
    ("var/log", None),
];

/// The script of `thaw-ready.service` (started after redis): prints [`READY_LINE`] on the
/// serial console once the guest is usable from the host.
const READY_SCRIPT_PATH: &str = "usr/local/sbin/thaw-ready";

fn ready_script() -> String {
    format!(
        r#"#!/bin/sh
# Says on the serial console that the guest is usable from the host (thaw-ready.service).

# The kernel's RNG: a snapshot taken at the ready line must not hold an uninitialised pool
# (its clones would each block in getrandom() after restore).
dd if=/dev/random of=/dev/null bs=1 count=1 2>/dev/null

# An IPv4 address from QEMU's DHCP server, when there is a NIC: port forwards reach the
# guest only once it has one.
if ls /sys/class/net | grep -qvx lo; then
    /lib/systemd/systemd-networkd-wait-online --ipv4 --any --timeout=120 || true
fi

# The guest agent, when its port exists (thaw-qemu-ga starts it early in the boot).
if grep -qsx org.qemu.guest_agent.0 /sys/class/virtio-ports/*/name; then
    i=0
    until systemctl is-active --quiet qemu-guest-agent.service || [ "$i" -ge 1200 ]; do
        sleep 0.1
        i=$((i + 1))
    done
fi

echo {READY_LINE} >/dev/console
"#
    )
}

/// Debian's qemu-guest-agent unit waits for udev to announce
/// /dev/virtio-ports/org.qemu.guest_agent.0, which under TCG comes when udev has worked
/// through the whole coldplug, tens of seconds into the boot. This unit (in /etc, so it
/// replaces the package's) starts the agent before sysinit.target on the port's device
/// node, found by name in sysfs; devtmpfs has it from the moment the port exists.
const AGENT_UNIT: &str = "\
[Unit]
Description=QEMU Guest Agent (started early by thaw)
DefaultDependencies=no
After=local-fs.target systemd-journald.socket
Before=sysinit.target shutdown.target
Conflicts=shutdown.target

[Service]
ExecStart=/usr/local/sbin/thaw-qemu-ga
Restart=on-failure
RestartSec=1

[Install]
WantedBy=sysinit.target
";

const AGENT_SCRIPT_PATH: &str = "usr/local/sbin/thaw-qemu-ga";
const AGENT_SCRIPT: &str = r#"#!/bin/sh
# Runs qemu-ga on the virtio-serial port named org.qemu.guest_agent.0, for thaw's
# qemu-guest-agent.service.
# The port may show up a moment after the virtio-serial device: wait up to 5 s for it.
i=0
while [ "$i" -lt 50 ]; do
    for f in /sys/class/virtio-ports/*/name; do
        if [ "$(cat "$f" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
            port=${f%/name}
            exec /usr/sbin/qemu-ga --method=virtio-serial --path="/dev/${port##*/}"
        fi
    done
    sleep 0.1
    i=$((i + 1))
done
echo "no virtio-serial port named org.qemu.guest_agent.0: the guest agent does not run"
"#;

/// Debian's redis unit sandboxes redis in its own mount and user namespaces, which costs
/// about 1.5 s of every start under TCG (the boot's critical path). A throwaway test VM
/// keeps the cheap parts (seccomp filter, no capabilities, no new privileges).
const REDIS_DROP_IN: &str = "\
[Service]
PrivateUsers=false
PrivateTmp=false
PrivateDevices=false
ProtectSystem=false
ProtectHome=false
ProtectProc=default
ProtectKernelTunables=false
ProtectKernelModules=false
ProtectKernelLogs=false
ProtectControlGroups=false
ProtectClock=false
ProtectHostname=false
ReadWritePaths=
ReadWriteDirectories=
NoExecPaths=
ExecPaths=
";

/// udev's coldplug handles `module` and `block` events first, then `net`; under TCG the
/// module events alone take seconds, and networkd configures eth0 only once udev has
/// processed it. NIC first: eth0 gets its address about 5 s sooner.
const UDEV_TRIGGER_DROP_IN: &str = "\
[Service]
ExecStart=
ExecStart=-udevadm trigger --type=all --action=add --prioritized-subsystem=net,block,module,tpmrm,tty,input
";

const READY_UNIT: &str = "\
[Unit]
Description=Tell the host that the guest is up (thaw)
After=multi-user.target redis-server.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/thaw-ready

[Install]
WantedBy=multi-user.target
";

/// Where dpkg keeps util-linux's hwclock once thaw's [`HWCLOCK_SCRIPT`] stands in for it.
const HWCLOCK_DIVERTED: &str = "/sbin/hwclock.distrib";

/// `/sbin/hwclock` in the guest. qemu-ga runs `hwclock -w` after every `guest-set-time`,
/// which thaw sends to every clone it restores, and util-linux's hwclock waits for the
/// RTC's next second boundary (up to a second) before it writes. QEMU's RTC follows the
/// host's clock (the default `-rtc base=utc,clock=host`), also across a snapshot, so the
/// write changes nothing: it is skipped, and anything else goes to the real hwclock.
const HWCLOCK_SCRIPT: &str = r#"#!/bin/sh
# thaw: skip "hwclock -w" (see thaw's guest/rootfs.rs); pass anything else on.
[ "$*" = "-w" ] && exit 0
exec /sbin/hwclock.distrib "$@"
"#;

const IPV6_HOSTS: &str = "::1\tlocalhost ip6-localhost ip6-loopback\n";

/// The files thaw writes into the root file system: path, mode, contents.
pub(crate) fn config_files() -> Vec<(&'static str, u32, String)> {
    vec![
        ("etc/hostname", 0o644, format!("{HOSTNAME}\n")),
        (
            "etc/hosts",
            0o644,
            format!("127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n{IPV6_HOSTS}"),
        ),
        ("etc/fstab", 0o644, FSTAB.to_owned()),
        ("etc/resolv.conf", 0o644, RESOLV_CONF.to_owned()),
        ("sbin/hwclock", 0o755, HWCLOCK_SCRIPT.to_owned()),
        // Empty: every boot of the image gets its own transient machine id (and does not
        // count as a first boot).
        ("etc/machine-id", 0o444, String::new()),
        (
            "etc/systemd/network/20-thaw-dhcp.network",
            0o644,
            NETWORK_UNIT.to_owned(),
        ),
        (
            "etc/systemd/journald.conf.d/thaw.conf",
            0o644,
            JOURNALD_CONF.to_owned(),
        ),
        (
            "etc/systemd/system/thaw-ready.service",
            0o644,
            READY_UNIT.to_owned(),
        ),
        (READY_SCRIPT_PATH, 0o755, ready_script()),
        (
            "etc/systemd/system/qemu-guest-agent.service",
            0o644,
            AGENT_UNIT.to_owned(),
        ),
        (AGENT_SCRIPT_PATH, 0o755, AGENT_SCRIPT.to_owned()),
        (
            "etc/systemd/system/systemd-udev-trigger.service.d/thaw.conf",
            0o644,
            UDEV_TRIGGER_DROP_IN.to_owned(),
        ),
        (
            "etc/systemd/system/redis-server.service.d/thaw.conf",
            0o644,
            REDIS_DROP_IN.to_owned(),
        ),
        (
            "etc/modprobe.d/thaw.conf",
            0o644,
            MODPROBE_BLACKLIST.to_owned(),
        ),
        (
            "etc/dpkg/dpkg.cfg.d/thaw-slim",
            0o644,
            DPKG_EXCLUDES.to_owned(),
        ),
    ]
}

/// Everything above that decides the image's contents, for the recipe hash.
pub(crate) fn fingerprint(h: &mut blake3::Hasher) {
    let mut add = |s: &str| {
        h.update(s.as_bytes());
        h.update(b"\0");
    };
    add(SUITE);
    PACKAGES.iter().for_each(|p| add(p));
    add(DISK_SIZE);
    MASKED.iter().for_each(|u| add(u));
    MASKED_GENERATORS.iter().for_each(|g| add(g));
    ENABLED.iter().for_each(|u| add(u));
    for (path, mode, text) in config_files() {
        add(path);
        add(&format!("{mode:o}"));
        add(&text);
    }
    add(&redis_conf(""));
    for (dir, keep) in TRIMMED {
        add(dir);
        add(keep.unwrap_or(""));
    }
}

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

/// Debian's redis.conf with redis listening on every IPv4 address and protected mode off,
/// so that the host reaches it through QEMU's user-net port forward (which connects from
/// 10.0.2.2, not loopback).
pub(crate) fn redis_conf(original: &str) -> String {
    let mut out = String::with_capacity(original.len() + 64);
    let (mut bind, mut protected) = (false, false);
    for line in original.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        if key == "bind" {
            if !bind {
                out.push_str("bind 0.0.0.0\n");
                bind = true;
            }
        } else if key == "protected-mode" {
            if !protected {
                out.push_str("protected-mode no\n");
                protected = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !bind {
        out.push_str("bind 0.0.0.0\n");
    }
    if !protected {
        out.push_str("protected-mode no\n");
    }
    out
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
    fn redis_listens_everywhere_without_protected_mode() {
        let debian = "\
# bind 192.168.1.100 10.0.0.1
bind 127.0.0.1 -::1
protected-mode yes
port 6379
";
        assert_eq!(
            redis_conf(debian),
            "# bind 192.168.1.100 10.0.0.1\nbind 0.0.0.0\nprotected-mode no\nport 6379\n"
        );
        assert_eq!(redis_conf(""), "bind 0.0.0.0\nprotected-mode no\n");
        assert_eq!(
            redis_conf("bind a\nbind b\nprotected-mode yes\n"),
            "bind 0.0.0.0\nprotected-mode no\n"
        );
    }

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
    fn ready_line_comes_after_redis_the_network_and_the_agent() {
        assert!(READY_UNIT.contains("After=multi-user.target redis-server.service"));
        assert!(READY_UNIT.contains(&format!("ExecStart=/{READY_SCRIPT_PATH}")));
        let script = ready_script();
        let pos = |s: &str| script.find(s).unwrap_or_else(|| panic!("no {s}"));
        assert!(script.starts_with("#!/bin/sh\n"));
        let ready = pos(&format!("echo {READY_LINE} >/dev/console"));
        assert!(pos("/dev/random") < ready);
        assert!(pos("networkd-wait-online") < ready);
        assert!(pos("is-active --quiet qemu-guest-agent") < ready);
    }

    #[test]
    fn config_files_are_relative_and_unique() {
        let files = config_files();
        let mut paths: Vec<_> = files.iter().map(|(p, _, _)| *p).collect();
        assert!(paths.iter().all(|p| !p.starts_with('/')));
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), files.len());
        let network = &files
            .iter()
            .find(|(p, _, _)| p.ends_with(".network"))
            .unwrap()
            .2;
        assert!(network.contains("Name=eth* en*") && network.contains("DHCP=ipv4"));
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

//! The Debian guest's recipe: the suite, the packages, the units masked and enabled, and
//! every file thaw writes into the root file system. [`fingerprint`] hashes all of it
//! into the image's recipe hash; [`super::rootfs`] carries it out.

use super::READY_LINE;

pub(crate) const SUITE: &str = "bookworm";
pub(crate) const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
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
    "thaw-clock.service",
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
pub(crate) const TRIMMED: &[(&str, Option<&str>)] = &[
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
pub(crate) const HWCLOCK_DIVERTED: &str = "/sbin/hwclock.distrib";

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
            "etc/systemd/system/thaw-clock.service",
            0o644,
            super::clock::UNIT.to_owned(),
        ),
        (
            super::clock::START_SCRIPT_PATH,
            0o755,
            super::clock::START_SCRIPT.to_owned(),
        ),
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
    super::clock::fingerprint(h);
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
}

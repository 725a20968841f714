#!/bin/busybox sh
# PID 1 of thaw's default guest. It must never exit: the kernel panics when PID 1 does
# (and with panic=-1 the VM reboots, which -no-reboot turns into QEMU exiting).
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs -o mode=1777 tmpfs /tmp
/bin/busybox mount -t tmpfs -o mode=0755 tmpfs /run
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
hostname -F /etc/hostname

# The virtio block and network drivers are modules in Debian's kernel; the build put them
# here decompressed (busybox's insmod takes plain ELF only) with their load order.
for m in $(cat /lib/modules/order); do
    insmod /lib/modules/"$m".ko || echo "thaw-guest: could not load the module $m"
done

# QEMU's user networking (slirp) always offers the same addresses: the guest is 10.0.2.15,
# the host's loopback is the gateway 10.0.2.2, its DNS forwarder 10.0.2.3. Static, so no
# DHCP client runs and the address is there before the ready line.
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
    echo "nameserver 10.0.2.3" > /etc/resolv.conf
fi

# Wait for the kernel's random pool before saying ready, so that a snapshot taken at the
# ready line never holds an uninitialised RNG (its clones would each block in getrandom()
# after restore). Reading /dev/random blocks until the pool is initialised and makes the
# kernel gather jitter entropy meanwhile; start it now so that it overlaps the agent's start.
dd if=/dev/random of=/dev/null bs=1 count=1 2>/dev/null &
rng=$!

# There is no udev, so no /dev/virtio-ports/<name> link: find the port by its name in
# sysfs. devtmpfs names the node after the port (vportNpM).
port=
tries=0
while [ -z "$port" ] && [ "$tries" -lt 100 ]; do
    for f in /sys/class/virtio-ports/*/name; do
        if [ -r "$f" ] && [ "$(cat "$f")" = org.qemu.guest_agent.0 ]; then
            dev=/dev/$(basename "$(dirname "$f")")
            [ -c "$dev" ] && port=$dev
        fi
    done
    [ -n "$port" ] || { tries=$((tries + 1)); usleep 50000; }
done

# thaw-clock on the clock channel's port (org.thaw.clock.0), when the VM has one: it sets
# the clock of a clone thaw restores with one system call (see thaw's clockport.rs).
for f in /sys/class/virtio-ports/*/name; do
    if [ -r "$f" ] && [ "$(cat "$f")" = org.thaw.clock.0 ]; then
        /usr/local/sbin/thaw-clock /dev/"$(basename "$(dirname "$f")")" &
    fi
done

# Whether process $1 has $2 open.
holds() {
    for fd in /proc/"$1"/fd/*; do
        [ "$(readlink "$fd")" = "$2" ] && return 0
    done
    return 1
}

if [ -n "$port" ]; then
    mkdir -p /run/qemu-ga
    qemu-ga -m virtio-serial -p "$port" -t /run/qemu-ga &
    agent=$!
    # Ready means the agent holds the port open (it writes no pidfile unless it daemonizes).
    tries=0
    until holds "$agent" "$port" || [ "$tries" -ge 250 ]; do
        tries=$((tries + 1))
        usleep 20000
    done
    wait "$rng"
    echo THAW-GUEST-READY
else
    echo "thaw-guest: no virtio-serial port named org.qemu.guest_agent.0; the agent is not running"
fi

# Sleeping in the foreground also reaps orphans: the shell waits for any child.
while :; do
    sleep 3600
done

#!/bin/busybox sh
# PID 1 of the initramfs of thaw's disk guests: load the block driver, mount the root
# filesystem and hand over to its init. Anything that goes wrong ends in a message on the
# console and the kernel's panic (PID 1 exiting), which panic=-1 and -no-reboot turn into
# QEMU exiting, rather than a VM that hangs.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/sbin:/bin

fail() {
    echo "thaw-initramfs: $*"
    exit 1
}

# virtio_blk is a module in Debian's kernel; the build put it here decompressed with its
# load order.
for m in $(cat /lib/modules/order); do
    insmod /lib/modules/"$m".ko || echo "thaw-initramfs: could not load the module $m"
done

root=/dev/vda
rootfstype=ext4
mode=rw
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=/dev/*) root=${arg#root=} ;;
        rootfstype=*) rootfstype=${arg#rootfstype=} ;;
        ro) mode=ro ;;
        rw) mode=rw ;;
    esac
done

# The driver has probed the disk when insmod returns, but devtmpfs may add the node a
# moment later.
tries=0
until [ -b "$root" ]; do
    [ "$tries" -lt 200 ] || fail "no $root: is a virtio-blk disk attached?"
    tries=$((tries + 1))
    usleep 10000
done

mkdir -p /newroot
mount -t "$rootfstype" -o "$mode,noatime" "$root" /newroot || fail "could not mount $root"
# Usually an absolute symlink (to /lib/systemd/systemd), which only resolves after the switch.
[ -L /newroot/sbin/init ] || [ -x /newroot/sbin/init ] || fail "$root has no /sbin/init"
for fs in dev proc sys; do
    mount --move /$fs /newroot/$fs
done
exec switch_root /newroot /sbin/init

#!/bin/busybox sh
# /init of dom0's initramfs: mount the host's / (9p "hostroot", read-only) under the unpacked
# Xen debs (9p "xenroot") and a tmpfs, as an overlay, and switch_root into it; stage 2 is
# $XENVM/dom0-stage2.sh, read from the host, so editing it needs no image rebuild.
# The unpacked debs come as a share of their own: overlayfs refuses a lower layer nested
# inside another lower layer.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
XENVM=/tmp/trio-vchan-xen
for arg in $(cat /proc/cmdline); do
    case "$arg" in xenvm=*) XENVM=${arg#xenvm=} ;; esac
done
for module in $(cat /modules.order); do insmod "/mod/$module" || echo "[dom0-init] insmod $module failed"; done

fatal() { echo "[dom0-init] FATAL: $*"; poweroff -f; }
mkdir -p /mnt/host /mnt/xen /mnt/rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /mnt/host \
    || fatal "cannot mount the host's root (9p hostroot)"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose xenroot /mnt/xen \
    || fatal "cannot mount the unpacked Xen debs (9p xenroot)"
mount -t tmpfs -o size=75% tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/xen:/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot \
    || fatal "overlay mount failed"
mkdir -p /newroot/xenout
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /newroot/xenout \
    || fatal "cannot mount the results directory (9p out)"
# mk-images.sh appended Python and the domU's image: keep them (switch_root frees the rest).
say() { echo "[dom0-init $(cut -d' ' -f1 /proc/uptime)s] $*"; }
say "copying the payload"
[ -d /payload ] && mkdir -p /newroot/opt/payload && cp -a /payload/. /newroot/opt/payload/
say "switching to the overlay root"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh "$XENVM/dom0-stage2.sh"

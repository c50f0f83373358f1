#!/bin/sh
# PID 1 of dom0 after switch_root: start Xen's control plane as Debian's init scripts would
# (drivers, xenfs, xenstored, xen-init-dom0, xenconsoled), run the script named by xtest= on
# the kernel command line, write its exit code to /xenout/rc, and power the machine off.
export PATH=/usr/lib/xen-4.17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
XENVM=/tmp/trio-vchan-xen XTEST=
for arg in $(cat /proc/cmdline); do
    case "$arg" in xenvm=*) XENVM=${arg#xenvm=} ;; xtest=*) XTEST=${arg#xtest=} ;; esac
done
export XENVM
say() { echo "[dom0 $(cut -d' ' -f1 /proc/uptime)s] $*"; }

mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm /run/xen /run/xenstored /var/log/xen /var/lib/xen /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
hostname dom0
# No ldconfig: the unpacked Xen libraries are all in /usr/lib/x86_64-linux-gnu, which ld.so
# searches anyway, and scanning the 9p root for a cache takes half a minute under emulation.
for module in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs; do
    modprobe "$module" || say "modprobe $module failed"
done
mount -t xenfs xenfs /proc/xen
XENSTORED_ROOTDIR=/run/xenstored xenstored --pid-file /run/xenstored.pid
i=0; until xenstore-read -s / >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 120 ] && break; sleep 0.25; done
xen-init-dom0 >/dev/null
xenconsoled --pid-file /run/xenconsoled.pid --log=guest --log-dir=/var/log/xen
say "Xen control plane up ($(cat /proc/xen/capabilities))"

if [ -n "$XTEST" ]; then
    sh "$XTEST"; rc=$?
    say "$XTEST exited with $rc"
    echo "$rc" > /xenout/rc
else
    echo "no xtest= given: shell on hvc0 (exit to power off)"
    setsid sh -c 'exec sh </dev/hvc0 >/dev/hvc0 2>&1'
fi
sync
poweroff -f

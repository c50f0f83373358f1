#!/bin/bash
# Fetch what booting Xen under QEMU needs, into $XENVM (default /tmp/trio-vchan-xen).
#
# Installs the host tools if missing (apt-get: qemu-system-x86 busybox-static kmod cpio
# e2fsprogs), then downloads Debian's Xen 4.17, its libraries, libxen-dev (headers for the C
# peer) and a kernel image, and only *unpacks* them (dpkg-deb -x) into $XENVM/x and $XENVM/dev:
# nothing is installed into the host's boot path. Re-running reuses the downloaded debs.
# Writes: $XENVM/xen.elf (the hypervisor, uncompressed for QEMU's multiboot loader),
# $XENVM/vmlinuz, $XENVM/kver, and module dependency files inside $XENVM/x.
set -euo pipefail
XENVM=${XENVM:-/tmp/trio-vchan-xen}
mkdir -p "$XENVM/debs"
chmod 755 "$XENVM" "$XENVM/debs"   # _apt downloads as an unprivileged user

export DEBIAN_FRONTEND=noninteractive
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v depmod >/dev/null \
   || ! [ -x /bin/busybox ] || ! command -v cpio >/dev/null || ! command -v mkfs.ext4 >/dev/null; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends qemu-system-x86 busybox-static kmod cpio e2fsprogs
fi

cd "$XENVM/debs"
if [ ! -e .complete ]; then
    rm -f ./*.deb
    # linux-image-amd64 is a metapackage: resolve the real image package.
    KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    if [ -z "$KPKG" ]; then apt-get update -q; KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); fi
    apt-get download -q xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils \
        libxenmisc4.17 libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 \
        libxenstore4 libxentoollog1 libxendevicemodel1 libxenhypfs1 libxentoolcore1 libyajl2 \
        libxen-dev "$KPKG"
    touch .complete
fi

rm -rf "${XENVM:?}/x" "${XENVM:?}/dev"
mkdir -p "$XENVM/x" "$XENVM/dev"
for deb in ./*.deb; do
    case "$deb" in
        *libxen-dev_*) dpkg-deb -x "$deb" "$XENVM/dev" ;;   # headers: build-time only
        *) dpkg-deb -x "$deb" "$XENVM/x" ;;
    esac
done
# Debian 12 is merged-/usr. dom0 uses $XENVM/x as an overlay layer above the host's /, so a
# real lib/ (or bin/, sbin/) directory there would hide the host's /lib, and with it libc.
for d in lib bin sbin; do
    if [ -d "$XENVM/x/$d" ] && [ ! -L "$XENVM/x/$d" ]; then
        mkdir -p "$XENVM/x/usr/$d"; cp -a "$XENVM/x/$d/." "$XENVM/x/usr/$d/"; rm -rf "${XENVM:?}/x/$d"
        ln -s "usr/$d" "$XENVM/x/$d"
    fi
done

cd "$XENVM"
KVER=$(ls x/lib/modules | head -1)
echo "$KVER" > kver
zcat x/boot/xen-4.17-amd64.gz > xen.elf
cp "x/boot/vmlinuz-$KVER" vmlinuz
depmod -b "$XENVM/x" "$KVER"
echo "prepared $XENVM: Xen 4.17, kernel $KVER"

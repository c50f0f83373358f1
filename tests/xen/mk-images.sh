#!/bin/bash
# Build what run-xen.sh boots, in $XENVM (after prepare.sh):
#   vchan-peer     tests/xen/vchan-peer.c against the unpacked libxen-dev and libxenvchan
#   pyroot/        Debian's python3 and standard library, $SITE (trio-vchan, pytest and their
#                  dependencies, see guest_site.py) at /opt/site, the tests at /opt/repo
#   domu.cpio.gz   the PV domU: busybox, Xen's drivers, vchan-peer, vchan-socket-proxy and
#                  xenstore tools (with their libraries), and pyroot
#   dom0.initrd    busybox, the virtio/9p/overlay modules and dom0-init.sh, then (a second,
#                  uncompressed cpio) /payload: pyroot as /payload/py and domu.cpio.gz. QEMU
#                  loads it straight into RAM and dom0-init.sh copies /payload into the root;
#                  reading the same files over 9p takes a minute or more under emulation.
# Env: XENVM, SITE (required), DOMU_PYTHON (/usr/bin/python3.11: same minor version as SITE's).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
XENVM=${XENVM:-/tmp/trio-vchan-xen}
SITE=${SITE:?SITE must name the directory guest_site.py filled}
PY=$(readlink -f "${DOMU_PYTHON:-/usr/bin/python3.11}")
KVER=$(cat "$XENVM/kver")
X=$XENVM/x
LIBDIR=$X/usr/lib/x86_64-linux-gnu
MODDIR=$X/lib/modules/$KVER
cd "$XENVM"

modules_in_order() {   # module files (relative to $MODDIR) in load order, dependencies first
    for m in "$@"; do modprobe -d "$X" -S "$KVER" --show-depends "$m"; done \
        | awk '$1=="insmod"{print $2}' | sed "s|^$MODDIR/||" | awk '!seen[$0]++'
}
copy_libs() {          # copy_libs ROOT ELF...: the shared libraries the ELF files load
    local root=$1; shift
    for elf in "$@"; do
        LD_LIBRARY_PATH=$LIBDIR ldd "$elf" | awk '/=>/{print $3} /^[ \t]*\//{print $1}' |
        while read -r lib; do
            [ -n "$lib" ] || continue
            dest=$root${lib#"$X"}   # libraries from the unpacked debs keep their /usr/lib path
            [ -e "$dest" ] || { mkdir -p "$(dirname "$dest")"; cp -L "$lib" "$dest"; }
        done
    done
}
copy_bin() {           # copy_bin ROOT SOURCE DEST: one program and its libraries
    mkdir -p "$1$(dirname "$3")"; cp -L "$2" "$1$3"; copy_libs "$1" "$2"
}
make_cpio() { (cd "$1" && find . | cpio -o -H newc --quiet) | gzip -1 > "$2"; }

# -- dom0 ------------------------------------------------------------------------------------
rm -rf root-dom0; mkdir -p root-dom0/{bin,proc,sys,dev,mnt,mod}
cp /bin/busybox root-dom0/bin/
cp "$HERE/dom0-init.sh" root-dom0/init
: > root-dom0/modules.order
for module in $(modules_in_order virtio_pci 9pnet_virtio 9p overlay); do
    cp "$MODDIR/$module" root-dom0/mod/; basename "$module" >> root-dom0/modules.order
done

# -- the C peer ------------------------------------------------------------------------------
gcc -O2 -Wall -Werror -o vchan-peer "$HERE/vchan-peer.c" -I"$XENVM/dev/usr/include" \
    -L"$LIBDIR" -l:libxenvchan.so.4.17 -Wl,-rpath-link,"$LIBDIR"

# -- domU ------------------------------------------------------------------------------------
rm -rf root-domu; mkdir -p root-domu/{bin,proc,sys,dev,tmp,mod,opt,usr/bin,usr/local/bin}
cp /bin/busybox root-domu/bin/
cp "$HERE/domu-init.sh" root-domu/init
: > root-domu/modules.order
for module in $(modules_in_order xen-evtchn xen-gntdev xen-gntalloc xen-privcmd); do
    cp "$MODDIR/$module" root-domu/mod/; basename "$module" >> root-domu/modules.order
done
copy_bin root-domu vchan-peer /usr/local/bin/vchan-peer
copy_bin root-domu "$X/usr/lib/xen-4.17/bin/vchan-socket-proxy" /usr/local/bin/vchan-socket-proxy
copy_bin root-domu "$X/usr/bin/xenstore" /usr/bin/xenstore
for tool in read write ls list rm exists watch; do ln -sf xenstore "root-domu/usr/bin/xenstore-$tool"; done
# glibc loads libgcc_s at run time (pthread_cancel, in libxenstore's xs_close): ldd misses it.
LIBGCC=$(gcc -print-file-name=libgcc_s.so.1)
mkdir -p root-domu/lib/x86_64-linux-gnu; cp -L "$LIBGCC" root-domu/lib/x86_64-linux-gnu/

# -- pyroot: Python, the packages and the tests, for both domains ---------------------------------
rm -rf pyroot; mkdir -p pyroot/usr/bin pyroot/opt/repo/tests/xen
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PREFIX=$("$PY" -c 'import sys; print(sys.base_prefix)')
cp -L "$PY" "pyroot/usr/bin/python$PYVER"
ln -sf "python$PYVER" pyroot/usr/bin/python3
mkdir -p "pyroot/usr/lib"
tar -C "$PREFIX/lib" --exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter \
    --exclude=turtledemo --exclude=ensurepip --exclude=lib2to3 --exclude=pydoc_data \
    --exclude=site-packages --exclude=dist-packages --exclude='config-*' \
    -cf - "python$PYVER" | tar -C pyroot/usr/lib -xf -
cp -a "$SITE" pyroot/opt/site
REPO=$(cd "$HERE/../.." && pwd)
cp "$REPO/pyproject.toml" pyroot/opt/repo/
cp "$REPO"/tests/{test_linux_backend,fake_kernel,backend_contract,test_backend_contract}.py \
    pyroot/opt/repo/tests/
cp "$HERE"/*.py pyroot/opt/repo/tests/xen/

# -- domU, continued ---------------------------------------------------------------------------
cp -a pyroot/. root-domu/
copy_libs root-domu "$PY" "pyroot/usr/lib/python$PYVER"/lib-dynload/*.so
while IFS= read -r -d '' so; do copy_libs root-domu "$so"; done < <(find "$SITE" -name '*.so' -print0)
make_cpio root-domu domu.cpio.gz

# -- dom0's initrd: its own tree, then the payload (the kernel unpacks concatenated archives) --
rm -rf root-payload; mkdir -p root-payload/payload
cp -a pyroot root-payload/payload/py
cp domu.cpio.gz root-payload/payload/
make_cpio root-dom0 dom0.cpio.gz
(cd root-payload && find . | cpio -o -H newc --quiet) > payload.cpio
# The kernel takes an uncompressed archive only at a 4-byte aligned offset; zeros are skipped.
size=$(stat -c %s dom0.cpio.gz)
{ cat dom0.cpio.gz; head -c $(( (4 - size % 4) % 4 )) /dev/zero; cat payload.cpio; } > dom0.initrd
rm -f payload.cpio
ls -la dom0.initrd domu.cpio.gz vchan-peer | awk '{print $5, $9}'

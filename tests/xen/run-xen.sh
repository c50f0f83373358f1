#!/bin/bash
# Boot Xen 4.17 with a PV dom0 under QEMU (TCG) and run a script in dom0 as root.
#
#   run-xen.sh /abs/path/dom0-script.sh      exit code: the script's, 124 on timeout
#   run-xen.sh --shell                       interactive dom0 shell on this terminal
#
# dom0's root is the host's / (read-only 9p) below the unpacked Xen debs and a tmpfs, so every
# host path (the checkout, the nox venv, $XENVM) is there unchanged. $XENVM/out is the one
# writable share (/xenout in dom0). Env: XENVM, TIMEOUT (seconds, 900), MEM (MiB, 1536),
# DOM0_MEM (768M; the rest is for the 512 MiB domU), SMP (2), LOG ($XENVM/serial.log).
# KVM does not work on these hosts (a PVM-style /dev/kvm cannot run Xen), and -cpu max makes
# the PV dom0 fault under TCG, hence -accel tcg -cpu qemu64.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
XENVM=${XENVM:-/tmp/trio-vchan-xen}
SHELL_MODE=0 TEST=
if [ "${1:-}" = --shell ]; then SHELL_MODE=1; else TEST=$(readlink -f "$1"); fi
TIMEOUT=${TIMEOUT:-900}
LOG=${LOG:-$XENVM/serial.log}
case "$XENVM$TEST" in *,*|*' '*) echo "paths must not contain commas or spaces (QEMU's multiboot syntax)"; exit 2 ;; esac

mkdir -p "$XENVM/out"; rm -f "$XENVM/out/rc"
cp "$HERE/dom0-stage2.sh" "$XENVM/dom0-stage2.sh"
XEN_ARGS="console=com1 com1=115200,8n1 dom0_mem=${DOM0_MEM:-768M},max:${DOM0_MEM:-768M} dom0_max_vcpus=${SMP:-2} loglvl=warning guest_loglvl=warning"
DOM0_ARGS="console=hvc0 earlyprintk=xen loglevel=4 xenvm=$XENVM${TEST:+ xtest=$TEST}"
# shellcheck disable=SC2054  # the commas are inside QEMU option values
QEMU=(
    # tb-size: TCG's translation cache defaults to 1 GiB of host memory; 256 MiB is plenty.
    qemu-system-x86_64 -machine q35 -accel tcg,tb-size=256 -cpu qemu64 -smp "${SMP:-2}" -m "${MEM:-1536}"
    -display none -no-reboot -nic none
    -kernel "$XENVM/xen.elf" -append "$XEN_ARGS"
    -initrd "$XENVM/vmlinuz $DOM0_ARGS,$XENVM/dom0.initrd"
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
    -fsdev local,id=xenroot,path="$XENVM/x",security_model=none,readonly=on,multidevs=remap
    -device virtio-9p-pci,fsdev=xenroot,mount_tag=xenroot
    -fsdev local,id=out,path="$XENVM/out",security_model=none,multidevs=remap
    -device virtio-9p-pci,fsdev=out,mount_tag=out
)
start=$(date +%s)
if [ "$SHELL_MODE" = 1 ]; then
    timeout --foreground -k 10 "$TIMEOUT" "${QEMU[@]}" -serial mon:stdio 2>&1 | tee "$LOG"
    exit "${PIPESTATUS[0]}"
fi
timeout -k 10 "$TIMEOUT" "${QEMU[@]}" -monitor none -serial stdio </dev/null >"$LOG" 2>&1
qemu_rc=$?
echo "QEMU exited with $qemu_rc after $(( $(date +%s) - start ))s; serial log: $LOG"
[ "$qemu_rc" = 124 ] && { echo "TIMEOUT after ${TIMEOUT}s"; exit 124; }
[ -f "$XENVM/out/rc" ] || { echo "no result: dom0 crashed or never ran the script"; exit 1; }
exit "$(cat "$XENVM/out/rc")"

#!/bin/sh
# dom0's part of `nox -s xen` (run-xen.sh runs it as root in dom0). Starts the PV domU (its
# init runs xen_agent.py), runs pytest here against it, then stops the domU. Python, the
# packages, the tests and the domU's image are in RAM at /opt/payload (see mk-images.sh).
# $XENVM/config may set PYTEST_ARGS (extra pytest arguments, shell-quoted) and PYTEST_TIMEOUT.
[ -f "$XENVM/config" ] && . "$XENVM/config"
say() { echo "[dom0 $(cut -d' ' -f1 /proc/uptime)s] $*"; }
cat > /tmp/domu.cfg <<EOC
name = "trio-vchan-domu"
type = "pv"
kernel = "$XENVM/vmlinuz"
ramdisk = "/opt/payload/domu.cpio.gz"
extra = "console=hvc0 loglevel=4"
memory = 512
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
EOC
say "creating the domU"
xl create -q /tmp/domu.cfg || exit 1
D=$(xl domid trio-vchan-domu)
say "domU $D created"

PY=/opt/payload/py
export XEN_TEST_DOMU="$D" XEN_TEST_VCHAN_PEER="$XENVM/vchan-peer" PYTHONPATH=$PY/opt/site \
    PYTHONDONTWRITEBYTECODE=1
cd "$PY/opt/repo" || exit 1
say "pytest starting"
eval "set -- ${PYTEST_ARGS:-}"
# The device-layer tests first: they need no domU, so they overlap with its boot.
timeout -k 10 "${PYTEST_TIMEOUT:-600}" "$PY/usr/bin/python3" -m pytest -p no:cacheprovider \
    -v -rs --durations=15 --junitxml=/xenout/junit.xml "$@" \
    tests/test_linux_backend.py tests/test_backend_contract.py tests/xen/test_real_xen.py
rc=$?
say "pytest exited with $rc"

xenstore-write "/local/domain/$D/data/agent/quit" 1
i=0; while xl domid trio-vchan-domu >/dev/null 2>&1; do
    i=$((i+1)); [ $i -gt 40 ] && { xl destroy trio-vchan-domu; break; }; sleep 0.25
done
cp /var/log/xen/guest-trio-vchan-domu.log /xenout/domu-console.log 2>/dev/null
exit $rc

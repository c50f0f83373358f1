#!/bin/busybox sh
# /init of the PV domU's initramfs (no disk, no network). Loads Xen's drivers and runs the
# test agent (xen_agent.py): dom0's tests ask it, through XenStore, to run peers here. When
# the agent exits (dom0 wrote data/agent/quit, or it failed), the domU powers off.
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/usr/bin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /tmp /root
mount -t devpts devpts /dev/pts
for module in $(cat /modules.order); do insmod "/mod/$module" 2>/dev/null; done
export HOME=/root LANG=C.UTF-8 PYTHONPATH=/opt/site:/opt/repo/tests/xen PYTHONDONTWRITEBYTECODE=1
echo "[domU $(cut -d' ' -f1 /proc/uptime)s] starting the agent; /dev/xen: $(ls /dev/xen | tr '\n' ' ')"
python3 /opt/repo/tests/xen/xen_agent.py
echo "[domU $(cut -d' ' -f1 /proc/uptime)s] agent exited with $?"
sync
poweroff -f

"""Reaching XenStore as libxenstore does: the daemon's socket, else the xenbus device.

libxenstore (``xs_open``) tries ``$XENSTORED_PATH``, else ``$XENSTORED_RUNDIR/socket`` (run
directory ``/var/run/xenstored``); failing that the domain device: ``$XENSTORED_PATH`` again,
else ``/dev/xen/xenbus`` if it exists, else ``/proc/xen/xenbus``. The first path that ``stat``
accepts wins, and its file type decides: a Unix socket (dom0's daemon) or a device (any
domain; the kernel forwards whole messages to the store and handles watches itself).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Final

import trio

from ._syscalls import SYSCALLS, Syscalls

DEFAULT_RUNDIR: Final = "/var/run/xenstored"
XENBUS_DEVICE: Final = "/dev/xen/xenbus"
XENBUS_PROC: Final = "/proc/xen/xenbus"


def xenstore_candidates(environ: Mapping[str, str]) -> list[str]:
    """The paths libxenstore would try, in its order (duplicates removed)."""
    explicit = environ.get("XENSTORED_PATH")
    if explicit:
        return [explicit]
    rundir = environ.get("XENSTORED_RUNDIR") or DEFAULT_RUNDIR
    device = XENBUS_DEVICE if os.path.exists(XENBUS_DEVICE) else XENBUS_PROC
    return [f"{rundir}/socket", device]


def find_xenstore(environ: Mapping[str, str]) -> tuple[str, bool] | None:
    """The first candidate that exists, and whether it is a socket; None if there is none."""
    for path in xenstore_candidates(environ):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        return path, stat.S_ISSOCK(mode)
    return None


async def connect_xenstore(
    path: str, is_socket: bool, syscalls: Syscalls = SYSCALLS
) -> trio.abc.Stream:
    """Open a fresh XenStore connection at ``path``.

    A socket gives a :class:`trio.SocketStream`; a device a :class:`trio.lowlevel.FdStream`
    over its own open file (one request stream per open, as libxenstore's handles), which
    polls for replies and writes each message in one ``write`` (a ``send_all`` of one encoded
    message), the unit the xenbus driver expects.

    Raises:
        OSError: the daemon or device refused (``ECONNREFUSED``, ``EACCES``).
    """
    if is_socket:
        return await trio.open_unix_socket(path)
    fd = syscalls.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        stream = trio.lowlevel.FdStream(fd)
    except BaseException:
        syscalls.close(fd)
        raise
    await trio.lowlevel.checkpoint()
    return stream

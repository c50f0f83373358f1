"""``open_backend()``: this domain's Xen devices and XenStore, as a :class:`Backend`."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from typing import Final

import trio

from .._backend import Backend
from .._errors import BackendUnavailableError, ProtocolError
from ._device import DeviceFile
from ._domid import read_domid_blocking
from ._evtchn import EVTCHN_PATH, EvtchnDevice
from ._memory import LinuxGrantMemory
from ._syscalls import SYSCALLS, Syscalls
from ._xenbus import connect_xenstore, find_xenstore, xenstore_candidates

GNTALLOC_PATH: Final = "/dev/xen/gntalloc"
GNTDEV_PATH: Final = "/dev/xen/gntdev"
SETUP_HINT: Final = (
    "load Xen's drivers and mount xenfs as root: modprobe xen-evtchn xen-gntdev xen-gntalloc;"
    " mount -t xenfs xenfs /proc/xen"
)
_MISSING: Final = frozenset({errno.ENOENT, errno.ENODEV, errno.ENXIO})
_DENIED: Final = frozenset({errno.EACCES, errno.EPERM})


def _unavailable(path: str, exc: OSError) -> BackendUnavailableError | None:
    """The error to raise for a device we could not open, or None to let ``exc`` through."""
    if exc.errno in _MISSING:
        return BackendUnavailableError(f"{path} is missing ({exc.strerror}): {SETUP_HINT}")
    if exc.errno in _DENIED:
        return BackendUnavailableError(
            f"no permission to open {path}: run as root, or give this user read-write access"
            f" to {EVTCHN_PATH}, {GNTALLOC_PATH} and {GNTDEV_PATH} (a udev rule, as on Qubes)"
        )
    return None


def _open_device(syscalls: Syscalls, path: str, flags: int = 0) -> DeviceFile:
    try:
        return DeviceFile(syscalls, path, flags)
    except OSError as exc:
        error = _unavailable(path, exc)
        if error is None:
            raise  # EMFILE and friends: the caller may back off and retry
        raise error from exc


def _locate_xenstore(environ: Mapping[str, str]) -> tuple[str, bool]:
    location = find_xenstore(environ)
    if location is None:
        tried = " nor ".join(xenstore_candidates(environ))
        raise BackendUnavailableError(
            f"no XenStore: neither {tried} exists ({SETUP_HINT}; in dom0, start xenstored)"
        )
    return location


def open_backend(
    *, syscalls: Syscalls = SYSCALLS, environ: Mapping[str, str] = os.environ
) -> Backend:
    """Open this domain's Xen devices and learn its domid from XenStore.

    Args:
        syscalls: the system calls to make (tests pass a recording fake).
        environ: where ``XENSTORED_PATH`` and ``XENSTORED_RUNDIR`` are looked up.

    Raises:
        BackendUnavailableError: a device is missing or not accessible, or XenStore cannot be
            reached or does not say who we are; the message says what to set up.
        OSError: any other failure to open a device (``EMFILE``...).
    """
    evtchn = _open_device(syscalls, EVTCHN_PATH, os.O_NONBLOCK)
    events = EvtchnDevice(evtchn)
    try:
        gntalloc = _open_device(syscalls, GNTALLOC_PATH)
    except BaseException:
        events.close()
        raise
    try:
        gntdev = _open_device(syscalls, GNTDEV_PATH)
    except BaseException:
        events.close()
        gntalloc.release()
        raise
    memory = LinuxGrantMemory(gntalloc, gntdev)

    def close() -> None:
        try:
            events.close()
        finally:
            memory.close()

    try:
        path, is_socket = _locate_xenstore(environ)

        async def connect() -> trio.abc.Stream:
            return await connect_xenstore(path, is_socket, syscalls)

        try:
            domid = read_domid_blocking(connect)
        except (OSError, ProtocolError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            raise BackendUnavailableError(
                f"could not read this domain's id (key 'domid') from XenStore at {path}: {exc}"
            ) from exc
    except BaseException:
        close()
        raise
    return Backend(
        domid=domid,
        events=events,
        memory=memory,
        connect_xenstore=connect,
        close=close,
        instance=f"xen {path}",
    )

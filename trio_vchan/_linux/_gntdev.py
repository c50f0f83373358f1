"""Pages another domain granted to us, mapped through ``/dev/xen/gntdev``.

``IOCTL_GNTDEV_MAP_GRANT_REF`` registers several grant refs as one range of the device file and
returns its offset ("index"); mmapping the file there performs the mapping, contiguously and in
the order of the refs, read-only unless mapped with ``PROT_WRITE``. ``SET_UNMAP_NOTIFY`` asks the
kernel to clear a byte and send an event when the mapping goes, even if the process dies: that
is how the server learns that a client crashed. ``UNMAP_GRANT_REF`` releases the range.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
from collections.abc import Sequence
from typing import TYPE_CHECKING, final

from .._backend import PAGE_SIZE, Mapping, check_domid
from .._xen_devices import ffi, lib
from ._region import MappedRegion, check_unmap_notify

if TYPE_CHECKING:
    from ._device import DeviceFile


def _check_refs(refs: object) -> list[int]:
    if isinstance(refs, (str, bytes)) or not isinstance(refs, Sequence):
        raise TypeError(f"refs must be a sequence of grant refs, not {type(refs).__name__}")
    checked = list(refs)
    if not checked:
        raise ValueError("refs must name at least one grant")
    for ref in checked:
        if isinstance(ref, bool) or not isinstance(ref, int) or not 0 <= ref <= 0xFFFF_FFFF:
            raise ValueError(f"a grant ref must be 0..{0xFFFF_FFFF}, not {ref!r}")
    return checked


@final
class GntdevMapping(Mapping):
    """Another domain's pages, mapped here through ``/dev/xen/gntdev``."""

    def __init__(
        self, device: DeviceFile, index: int, count: int, region: MappedRegion, *, writable: bool
    ) -> None:
        self._device = device
        self._index = index
        self._count = count
        self._region = region
        self._writable = writable
        self._closed = False

    def __repr__(self) -> str:
        mode = "rw" if self._writable else "ro"
        return f"<GntdevMapping {self._count} pages ({mode}) at index {self._index:#x}>"

    @property
    def buffer(self) -> memoryview:
        """The mapped pages; read-only unless mapped writable.

        Raises:
            ValueError: after :meth:`close`.
        """
        return self._region.buffer

    def set_unmap_notify(self, offset: int, port: int) -> None:
        """When the mapping goes (closed, or the process died), zero the byte at ``offset`` and
        send an event on local ``port``.

        Raises:
            ValueError: a bad offset or port, or the mapping is closed.
            OSError: ``EINVAL`` on a read-only mapping (the kernel could not clear the byte).
        """
        if self._closed:
            raise ValueError("these pages were already released")
        offset, port = check_unmap_notify(offset, port, self._region.length)
        if not self._writable:
            raise OSError(errno.EINVAL, "an unmap-notify needs a writable mapping")
        request = ffi.new("struct ioctl_gntdev_unmap_notify *")
        request.index = self._index + offset
        request.action = lib.UNMAP_NOTIFY_CLEAR_BYTE | lib.UNMAP_NOTIFY_SEND_EVENT
        request.event_channel_port = port
        self._device.ioctl(lib.IOCTL_GNTDEV_SET_UNMAP_NOTIFY, request)

    def close(self) -> None:
        """Unmap the pages (this fires the unmap-notify); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._region.close()
        finally:
            try:
                _unmap(self._device, self._index, self._count)
            finally:
                self._device.release()


def _unmap(device: DeviceFile, index: int, count: int) -> None:
    request = ffi.new("struct ioctl_gntdev_unmap_grant_ref *")
    request.index = index
    request.count = count
    device.ioctl(lib.IOCTL_GNTDEV_UNMAP_GRANT_REF, request)


def map_pages(
    device: DeviceFile, remote_domid: int, refs: Sequence[int], *, writable: bool
) -> GntdevMapping:
    """Map the pages ``remote_domid`` granted us as ``refs``, contiguously, in that order.

    Raises:
        OSError: a ref that does not exist or was not granted to us (from ``mmap``, where the
            kernel performs the mapping), or the driver's limits.
    """
    check_domid(remote_domid, "remote_domid")
    checked = _check_refs(refs)
    count = len(checked)
    # The struct ends in a variable-length refs[count]; cffi sizes it as the kernel expects.
    request = ffi.new("struct ioctl_gntdev_map_grant_ref *", {"refs": count})
    request.count = count
    for i, ref in enumerate(checked):
        request.refs[i].domid = remote_domid
        request.refs[i].ref = ref
    sys = device.syscalls
    device.ioctl(lib.IOCTL_GNTDEV_MAP_GRANT_REF, request)
    index = int(request.index)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        pages = sys.mmap(device.fd, count * PAGE_SIZE, prot, index)
    except BaseException:
        with contextlib.suppress(OSError):  # the mmap's error is the one to report
            _unmap(device, index, count)
        raise
    device.acquire()
    return GntdevMapping(device, index, count, MappedRegion(pages), writable=writable)

"""Pages this domain grants to another, through ``/dev/xen/gntalloc``.

``IOCTL_GNTALLOC_ALLOC_GREF`` allocates zeroed pages, grants them to one domain and returns
their grant refs and an offset ("index") in the device file; mmapping the file at that index
gives us the pages. ``SET_UNMAP_NOTIFY`` asks the kernel to clear a byte and send an event when
the pages are freed, even if the process dies: that is how the peer learns that a server
crashed. ``DEALLOC_GREF`` gives the grants up; the kernel frees the pages once they are
unmapped here too.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Sequence
from typing import TYPE_CHECKING, final

from .._backend import PAGE_SIZE, Share, check_domid
from .._xen_devices import ffi, lib
from ._region import MappedRegion, check_unmap_notify

if TYPE_CHECKING:
    from ._device import DeviceFile


def _check_count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, not {type(count).__name__}")
    if count < 1:
        raise ValueError(f"count must be >= 1, not {count}")
    return count


@final
class GntallocShare(Share):
    """Pages granted through ``/dev/xen/gntalloc``, mapped writable here."""

    def __init__(
        self, device: DeviceFile, index: int, refs: Sequence[int], region: MappedRegion
    ) -> None:
        self._device = device
        self._index = index
        self._refs = tuple(refs)
        self._region = region
        self._closed = False

    def __repr__(self) -> str:
        return f"<GntallocShare refs {list(self._refs)} at index {self._index:#x}>"

    @property
    def refs(self) -> Sequence[int]:
        """The grant refs, one per page, in page order."""
        return self._refs

    @property
    def buffer(self) -> memoryview:
        """The pages, writable.

        Raises:
            ValueError: after :meth:`close`.
        """
        return self._region.buffer

    def set_unmap_notify(self, offset: int, port: int) -> None:
        """When the pages are freed (closed, or the process died), zero the byte at ``offset``
        and send an event on local ``port``.

        Raises:
            ValueError: a bad offset or port, or the share is closed.
            OSError: the driver refused (``EINVAL`` for a port not bound through evtchn).
        """
        if self._closed:
            raise ValueError("these pages were already released")
        offset, port = check_unmap_notify(offset, port, self._region.length)
        request = ffi.new("struct ioctl_gntalloc_unmap_notify *")
        request.index = self._index + offset
        request.action = lib.UNMAP_NOTIFY_CLEAR_BYTE | lib.UNMAP_NOTIFY_SEND_EVENT
        request.event_channel_port = port
        self._device.ioctl(lib.IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, request)

    def close(self) -> None:
        """Unmap the pages and give up the grants; idempotent.

        A peer that still maps them keeps them alive (Xen's rule); they are freed when it
        unmaps.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._region.close()
        finally:
            try:
                _dealloc(self._device, self._index, len(self._refs))
            finally:
                self._device.release()


def _dealloc(device: DeviceFile, index: int, count: int) -> None:
    request = ffi.new("struct ioctl_gntalloc_dealloc_gref *")
    request.index = index
    request.count = count
    device.ioctl(lib.IOCTL_GNTALLOC_DEALLOC_GREF, request)


def share_pages(device: DeviceFile, remote_domid: int, count: int) -> GntallocShare:
    """Grant ``count`` fresh zeroed pages to ``remote_domid``, writable by it.

    Raises:
        OSError: the driver refused (``ENOSPC`` past its page limit, ``ENOMEM``).
    """
    check_domid(remote_domid, "remote_domid")
    count = _check_count(count)
    # The struct ends in a variable-length gref_ids[count]; cffi sizes it as the kernel expects.
    request = ffi.new("struct ioctl_gntalloc_alloc_gref *", {"gref_ids": count})
    request.domid = remote_domid
    request.flags = lib.GNTALLOC_FLAG_WRITABLE
    request.count = count
    sys = device.syscalls
    device.ioctl(lib.IOCTL_GNTALLOC_ALLOC_GREF, request)
    index = int(request.index)
    refs = [int(request.gref_ids[i]) for i in range(count)]
    try:
        pages = sys.mmap(device.fd, count * PAGE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE, index)
    except BaseException:
        with contextlib.suppress(OSError):  # the mmap's error is the one to report
            _dealloc(device, index, count)
        raise
    device.acquire()
    return GntallocShare(device, index, refs, MappedRegion(pages))

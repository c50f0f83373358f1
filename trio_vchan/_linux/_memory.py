"""Grant sharing (``/dev/xen/gntalloc``) and mapping (``/dev/xen/gntdev``) for one domain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, final

from .._backend import GrantMemory
from ._gntalloc import GntallocShare, share_pages
from ._gntdev import GntdevMapping, map_pages

if TYPE_CHECKING:
    from ._device import DeviceFile


@final
class LinuxGrantMemory(GrantMemory):
    """Shares and maps pages through one open gntalloc and one open gntdev file.

    Each share or mapping is a separate range (index) of the shared file, so one file of each
    serves any number of vchans; closing this object keeps the files open for the regions
    still using them.
    """

    def __init__(self, gntalloc: DeviceFile, gntdev: DeviceFile) -> None:
        self._gntalloc = gntalloc
        self._gntdev = gntdev
        self._closed = False

    def share(self, remote_domid: int, count: int) -> GntallocShare:
        """Grant ``count`` fresh zeroed pages to ``remote_domid`` (it may map them writable).

        Raises:
            ValueError: the backend was closed.
            OSError: the driver refused (``ENOSPC``: gntalloc's page limit, module parameter
                ``limit``, default 1024 pages for the whole domain).
        """
        self._check_open()
        return share_pages(self._gntalloc, remote_domid, count)

    def map(self, remote_domid: int, refs: Sequence[int], *, writable: bool) -> GntdevMapping:
        """Map pages that ``remote_domid`` granted to us, in the order of ``refs``.

        Raises:
            ValueError: the backend was closed.
            OSError: a ref that does not exist or was not granted to this domain.
        """
        self._check_open()
        return map_pages(self._gntdev, remote_domid, refs, writable=writable)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this backend was already closed")

    def close(self) -> None:
        """Let go of both files (each closes once its last share or mapping is gone)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._gntalloc.release()
        finally:
            self._gntdev.release()

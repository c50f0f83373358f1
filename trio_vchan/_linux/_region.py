"""An mmap of granted pages and the one view of it that a Share or Mapping hands out."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    import mmap


def check_unmap_notify(offset: object, port: object, length: int) -> tuple[int, int]:
    """Validate an unmap-notify request on a region of ``length`` bytes."""
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < length:
        raise ValueError(f"offset must be 0..{length - 1}, not {offset!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 0xFFFF_FFFF:
        raise ValueError(f"port must be a positive port number, not {port!r}")
    return offset, port


@final
class MappedRegion:
    """Owns an mmap of device pages; :meth:`close` releases our view, then unmaps.

    Python refuses to unmap while any view of the mmap is alive (so no view ever points at
    unmapped memory). If someone still holds one when we close, the pages stay mapped until
    that view is released; CPython unmaps the moment the last one goes, and the kernel then
    completes the unshare or unmap (and its unmap-notify) that the caller already requested.
    """

    def __init__(self, pages: mmap.mmap) -> None:
        self._mmap: mmap.mmap | None = pages
        self._view = memoryview(pages)
        self.length = self._view.nbytes

    @property
    def buffer(self) -> memoryview:
        if self._mmap is None:
            raise ValueError("these pages were already released")
        return self._view

    def close(self) -> None:
        """Release our view and unmap (deferred, see the class docstring); idempotent."""
        if self._mmap is None:
            return
        pages, self._mmap = self._mmap, None
        # BufferError: a view is still exported or alive somewhere; see the class docstring.
        with contextlib.suppress(BufferError):
            self._view.release()
            pages.close()

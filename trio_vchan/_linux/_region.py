"""Mapped grant pages and the one view of it that a Share or Mapping hands out."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from .._pages import Pages


def check_unmap_notify(offset: object, port: object, length: int) -> tuple[int, int]:
    """Validate an unmap-notify request on a region of ``length`` bytes."""
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < length:
        raise ValueError(f"offset must be 0..{length - 1}, not {offset!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 0xFFFF_FFFF:
        raise ValueError(f"port must be a positive port number, not {port!r}")
    return offset, port


@final
class MappedRegion:
    """Owns mapped device pages; :meth:`close` releases our view, then unmaps.

    Pages are never unmapped while any view of them is alive (so no view ever points at
    unmapped memory). If someone still holds one when we close, the pages stay mapped until
    that view is released; they are unmapped the moment the last one goes, and the kernel then
    completes the unshare or unmap (and its unmap-notify) that the caller already requested.
    """

    def __init__(self, pages: Pages) -> None:
        self._pages: Pages | None = pages
        self.length = pages.length

    @property
    def buffer(self) -> memoryview:
        if self._pages is None:
            raise ValueError("these pages were already released")
        return self._pages.view

    def close(self) -> None:
        """Release our view and unmap (deferred, see the class docstring); idempotent."""
        pages, self._pages = self._pages, None
        if pages is not None:
            pages.release()  # False: a view is alive, and the last one to go unmaps

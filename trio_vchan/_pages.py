"""Pages: shared memory mapped into this process without keeping a file descriptor.

Python's :mod:`mmap` keeps a duplicate of the mapped file's fd for as long as the mapping
lives, which would cost a vchan one fd per region (its page and each external ring): 3 of the 5
fds a vchan held. A mapping made with ``mmap(2)`` itself needs no fd once made, so the backends
map through :class:`Pages` (``mmap(2)`` in ``trio_vchan._native``) and close theirs at once.

Memory safety is Python's rule for :mod:`mmap`: never unmap while a view of the memory is alive.
Every view of the pages (slices, ``ffi.from_buffer`` of them) keeps the cffi buffer object
alive, whose reference count therefore says whether any is left; and the buffer keeps the
mapping's pointer alive, whose destructor unmaps. So the memory goes either at once, when
:meth:`Pages.release` finds no view left, or when the last view goes, never before.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Callable
from typing import Any, final

from ._compiled import native

_ffi = native.ffi
_lib = native.lib


@final
class Pages:
    """``length`` bytes of ``fd`` from ``offset``, mapped ``MAP_SHARED`` (``fd=-1``: anonymous
    shared memory); the caller may close ``fd`` at once.

    :attr:`view` is writable only with ``mmap.PROT_WRITE`` in ``prot`` (a write to read-only
    pages raises TypeError, not SIGSEGV). ``unmapped`` is called once the memory is unmapped
    (at :meth:`release`, or later when the last view goes).

    Raises:
        OSError: from ``mmap(2)`` (where gntdev maps the grants: a bad ref fails here).
    """

    def __init__(
        self,
        fd: int,
        length: int,
        prot: int,
        offset: int = 0,
        *,
        unmapped: Callable[[], None] | None = None,
    ) -> None:
        address = _lib.vchan_map_pages(fd, length, prot, offset)
        if address == _ffi.NULL:
            error = _ffi.errno
            raise OSError(error, f"{os.strerror(error)} (mmap of {length} bytes at {offset:#x})")
        self.length = length
        pointer = _ffi.gc(address, _unmapper(length, unmapped), size=length)
        self._buffer: Any = _ffi.buffer(pointer, length)
        self._pointer: Any = pointer
        self._unviewed = self._references()
        self._writable = bool(prot & mmap.PROT_WRITE)
        self._view = self._new_view()

    @property
    def view(self) -> memoryview:
        """The pages.

        Raises:
            ValueError: after :meth:`release` unmapped them.
        """
        if self._buffer is None:
            raise ValueError("these pages were already unmapped")
        return self._view

    def release(self) -> bool:
        """Release :attr:`view` and unmap, unless a view of the pages is still alive somewhere.

        Returns:
            True if the pages are unmapped (now or before); False if a view is left: then
            :attr:`view` stays usable and the pages stay mapped, to be released again, or
            unmapped by themselves when this object and every view of the pages have gone.
        """
        if self._buffer is None:
            return True
        try:
            self._view.release()
        except BufferError:  # exported: memoryview(view), ffi.from_buffer(view), ...
            return False
        if self._references() > self._unviewed:  # slices of the view are alive
            self._view = self._new_view()
            return False
        self._buffer = None
        _ffi.release(self._pointer)  # runs the destructor: unmapped now
        return True

    def _references(self) -> int:
        # The same expression each time, so that the interpreter's own references are equal.
        return sys.getrefcount(self._buffer)

    def _new_view(self) -> memoryview:
        view = memoryview(self._buffer)
        return view if self._writable else view.toreadonly()


def _unmapper(length: int, unmapped: Callable[[], None] | None) -> Callable[[Any], None]:
    def unmap(address: Any) -> None:
        # munmap of a range we mapped can only fail for a bad range: nothing to do then.
        _lib.vchan_unmap_pages(address, length)
        if unmapped is not None:
            unmapped()

    return unmap

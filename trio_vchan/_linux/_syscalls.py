"""The system calls the device layer makes, gathered in one record so tests can replace them.

Every device class takes a :class:`Syscalls`; production code uses :data:`SYSCALLS` (the real
``os``/``fcntl`` functions and ``mmap(2)``), and ``tests/test_linux_backend.py`` passes a recording
fake to assert the exact ioctl sequence and the bytes of each request struct.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import Final

import attrs

from .._pages import Pages


def _ioctl(fd: int, request: int, arg: memoryview) -> int:
    # mutate_flag=True: the kernel writes its results (ports, indices, grant refs) into ``arg``.
    return int(fcntl.ioctl(fd, request, arg, True))


@attrs.frozen
class Syscalls:
    """``open``, ``close``, ``read``, ``write``, ``ioctl`` and ``mmap`` as the devices use them.

    ``ioctl(fd, request, arg)`` passes ``arg`` (a writable view of the request struct) to the
    kernel and returns the ioctl's return value. ``mmap(fd, length, prot, offset)`` maps
    ``MAP_SHARED`` (:class:`~trio_vchan._pages.Pages`: the mapping keeps no fd).
    """

    open: Callable[[str, int], int] = os.open
    close: Callable[[int], None] = os.close
    read: Callable[[int, int], bytes] = os.read
    write: Callable[[int, bytes], int] = os.write
    ioctl: Callable[[int, int, memoryview], int] = _ioctl
    mmap: Callable[[int, int, int, int], Pages] = Pages


#: The real system calls.
SYSCALLS: Final = Syscalls()

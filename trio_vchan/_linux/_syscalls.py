"""The system calls the device layer makes, gathered in one record so tests can replace them.

Every device class takes a :class:`Syscalls`; production code uses :data:`SYSCALLS` (the real
``os``/``fcntl``/``mmap`` functions), and ``tests/test_linux_backend.py`` passes a recording
fake to assert the exact ioctl sequence and the bytes of each request struct.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Callable
from typing import Final

import attrs


def _ioctl(fd: int, request: int, arg: memoryview) -> int:
    # mutate_flag=True: the kernel writes its results (ports, indices, grant refs) into ``arg``.
    return int(fcntl.ioctl(fd, request, arg, True))


def _mmap(fd: int, length: int, prot: int, offset: int) -> mmap.mmap:
    return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=prot, offset=offset)


@attrs.frozen
class Syscalls:
    """``open``, ``close``, ``read``, ``write``, ``ioctl`` and ``mmap`` as the devices use them.

    ``ioctl(fd, request, arg)`` passes ``arg`` (a writable view of the request struct) to the
    kernel and returns the ioctl's return value. ``mmap(fd, length, prot, offset)`` maps
    ``MAP_SHARED``.
    """

    open: Callable[[str, int], int] = os.open
    close: Callable[[int], None] = os.close
    read: Callable[[int, int], bytes] = os.read
    write: Callable[[int, bytes], int] = os.write
    ioctl: Callable[[int, int, memoryview], int] = _ioctl
    mmap: Callable[[int, int, int, int], mmap.mmap] = _mmap


#: The real system calls.
SYSCALLS: Final = Syscalls()

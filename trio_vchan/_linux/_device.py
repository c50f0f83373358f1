"""An open Xen device file shared by its owner and every region that still needs it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, final

from .._xen_devices import ffi

if TYPE_CHECKING:
    from ._syscalls import Syscalls


@final
class DeviceFile:
    """An open ``/dev/xen/gntalloc``, ``gntdev`` or ``evtchn``, closed when the last user lets go.

    The backend holds one reference and each live share, mapping or port another: unsharing
    needs the fd that shared (its ioctls name the region by its index in that file), and a
    port lives as long as the file it was bound through, so closing the backend first must not
    close the fd under a live region or port.

    Raises:
        OSError: from ``open`` (``ENOENT``: no such device, ``EACCES``: no permission).
    """

    def __init__(self, syscalls: Syscalls, path: str, flags: int = 0) -> None:
        self.syscalls = syscalls
        self.path = path
        self.fd = syscalls.open(path, os.O_RDWR | os.O_CLOEXEC | flags)
        self._users = 1

    def __repr__(self) -> str:
        return f"<DeviceFile {self.path} fd {self.fd}, {self._users} users>"

    def ioctl(self, request: int, struct: Any | None) -> int:
        """Issue ``request`` on ``struct`` (a cffi struct pointer, or None for no argument);
        the kernel may update it."""
        arg = memoryview(bytearray() if struct is None else ffi.buffer(struct))
        return self.syscalls.ioctl(self.fd, request, arg)

    def acquire(self) -> None:
        """Count one more user (a share or mapping made through this file)."""
        if self._users == 0:
            raise ValueError(f"{self.path} was already closed")
        self._users += 1

    def release(self) -> None:
        """Drop one user; the last one closes the file."""
        if self._users == 0:
            return
        self._users -= 1
        if self._users == 0:
            self.syscalls.close(self.fd)

"""Passing file descriptors over Unix sockets (``SCM_RIGHTS``), for both ends of the host."""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Final

from ._proto import FDS_MAX

#: The ancillary buffer that holds the most fds a platform message carries.
ANCILLARY_SPACE: Final = socket.CMSG_SPACE(FDS_MAX * array.array("i").itemsize)

Ancillary = list[tuple[int, int, bytes]]


def received_fds(ancdata: Ancillary) -> list[int]:
    """The fds of ``SCM_RIGHTS`` messages in ``ancdata`` (now the caller's to close)."""
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def fds_ancillary(fds: Sequence[int]) -> Ancillary:
    """The ancillary data that sends ``fds`` (nothing for none)."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def close_quietly(fds: Iterable[int]) -> None:
    """Close every fd of ``fds``, ignoring those already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

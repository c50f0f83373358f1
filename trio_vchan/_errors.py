"""The project's own exception types."""

from __future__ import annotations

import errno as _errno
import os


class ProtocolError(Exception):
    """The peer broke the vchan protocol: a bad order, index, live byte or advertisement.

    Streams report it as the ``__cause__`` of a :class:`trio.BrokenResourceError`.
    """


class XenStoreError(OSError):
    """A XenStore request failed; ``errno`` is the error the store replied with."""

    def __init__(self, errno: int, message: str) -> None:
        name = _errno.errorcode.get(errno, str(errno))
        super().__init__(errno, f"{message}: {name} ({os.strerror(errno)})")


class BackendUnavailableError(RuntimeError):
    """No platform to run a vchan on: neither a simulated host nor Xen's devices were found."""

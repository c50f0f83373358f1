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

    def explained(self, doing: str, advice: str) -> XenStoreError:
        """This error with what was being done and what to do about it, in one message:
        ``"<doing> (<request>: <error>); <advice>"``."""
        error = XenStoreError.__new__(XenStoreError)
        OSError.__init__(error, self.errno, f"{doing} ({self.strerror}); {advice}")
        return error


class BackendUnavailableError(RuntimeError):
    """No platform to run a vchan on: neither a simulated host nor Xen's devices were found."""


class IncompleteReceiveError(EOFError):
    """The stream ended before :meth:`~trio_vchan.VchanStream.receive_exactly` had every byte.

    Nothing is lost: :attr:`partial` holds the bytes that did arrive.
    """

    partial: bytes | bytearray
    """The bytes that arrived before the end of stream."""
    expected: int
    """How many bytes were asked for."""

    def __init__(self, partial: bytes | bytearray, expected: int) -> None:
        super().__init__(
            f"the vchan's peer closed after {len(partial)} of the {expected} bytes asked for"
        )
        self.partial = partial
        self.expected = expected

"""The simulated host's platform protocol: constants, message encoding and the layout of the
host's directory; no I/O.

Every request and every reply is one ``SOCK_SEQPACKET`` message, little-endian::

    request: u32 op, u32 arg0, u32 arg1, u32 arg2, then u32 words (the refs of GNT_MAP)
    reply:   u32 status, u32 val0, u32 val1, u32 val2, then
             status == 0: u32 words (the refs of GNT_SHARE)
             status != 0: a UTF-8 message (status is an errno value)

File descriptors travel with the reply as ``SCM_RIGHTS``. ``docs/sim-protocol.md`` is the
reference; this module and that page must agree.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs

#: The environment that names a host's directory and the domain a process joins as.
ENV_DIR: Final = "TRIO_VCHAN_SIM"
ENV_DOMID: Final = "TRIO_VCHAN_DOMID"

VERSION: Final = 1
HEADER: Final = struct.Struct("<4I")
#: The largest message either side sends (a GNT_MAP of MAX_PAGES refs).
MAX_PAGES: Final = 1024
MESSAGE_MAX: Final = HEADER.size + 4 * MAX_PAGES
#: At most this many fds travel with one reply.
FDS_MAX: Final = 2
#: Bit 0 of GNT_MAP's arg1.
MAP_WRITABLE: Final = 1
#: GNT_SET_UNMAP_NOTIFY's offset or port for "no byte to clear" or "no event to send" (the
#: -1 of libxengnttab's calls).
NO_NOTIFY: Final = 0xFFFFFFFF


class Op(enum.IntEnum):
    """Request codes (``op``)."""

    HELLO = 1
    EVTCHN_BIND_UNBOUND = 2
    EVTCHN_BIND_INTERDOMAIN = 3
    EVTCHN_CLOSE = 4
    EVTCHN_STATUS = 5
    GNT_SHARE = 6
    GNT_MAP = 7
    GNT_SET_UNMAP_NOTIFY = 8
    GNT_RELEASE = 9
    INTRODUCE_DOMAIN = 10
    DESTROY_DOMAIN = 11


class PortState(enum.IntEnum):
    """EVTCHN_STATUS's ``val0``."""

    UNBOUND = 1  # waiting for the remote domain to bind
    CONNECTED = 2  # both ends bound
    PEER_CLOSED = 3  # the other end closed (or its process died)


@attrs.frozen
class Request:
    """A decoded request."""

    op: int
    args: tuple[int, int, int]
    words: tuple[int, ...] = ()

    def encode(self) -> bytes:
        """Return the request's wire form."""
        return HEADER.pack(self.op, *self.args) + struct.pack(f"<{len(self.words)}I", *self.words)

    @classmethod
    def decode(cls, data: bytes) -> Request:
        """Parse a request.

        Raises:
            ValueError: the message is shorter than the header or not a whole number of words.
        """
        if len(data) < HEADER.size or len(data) % 4:
            raise ValueError(f"a request is 16 + 4*n bytes, not {len(data)}")
        op, a0, a1, a2 = HEADER.unpack_from(data)
        words = struct.unpack_from(f"<{(len(data) - HEADER.size) // 4}I", data, HEADER.size)
        return cls(op, (a0, a1, a2), tuple(words))


@attrs.frozen
class Reply:
    """A decoded reply: ``status`` 0 with values and words, or an errno with a message."""

    status: int
    values: tuple[int, int, int] = (0, 0, 0)
    words: tuple[int, ...] = ()
    message: str = ""

    def encode(self) -> bytes:
        """Return the reply's wire form."""
        head = HEADER.pack(self.status, *self.values)
        if self.status:
            return head + self.message.encode("utf-8", "replace")[: MESSAGE_MAX - HEADER.size]
        return head + struct.pack(f"<{len(self.words)}I", *self.words)

    @classmethod
    def decode(cls, data: bytes) -> Reply:
        """Parse a reply.

        Raises:
            ValueError: the reply is malformed.
        """
        if len(data) < HEADER.size:
            raise ValueError(f"a reply has at least 16 bytes, not {len(data)}")
        status, v0, v1, v2 = HEADER.unpack_from(data)
        rest = data[HEADER.size :]
        if status:
            return cls(status, (v0, v1, v2), message=rest.decode("utf-8", "replace"))
        if len(rest) % 4:
            raise ValueError(f"a reply's payload is whole words, not {len(rest)} bytes")
        return cls(0, (v0, v1, v2), struct.unpack(f"<{len(rest) // 4}I", rest))


def ok(values: Sequence[int] = (), words: Sequence[int] = ()) -> Reply:
    """A success reply with up to three values and a word list."""
    padded = (*values, 0, 0, 0)[:3]
    return Reply(0, (padded[0], padded[1], padded[2]), tuple(words))


def domain_dir(directory: str | os.PathLike[str], domid: int) -> Path:
    """Return ``<directory>/domains/<domid>``, which holds the domain's two sockets."""
    return Path(directory) / "domains" / str(domid)

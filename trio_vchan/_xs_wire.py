"""XenStore packets: message types, headers, payloads, permissions and paths (sans-IO).

Everything here is pure: it turns bytes into values and back, and never imports trio, so both
the async client (:mod:`trio_vchan._xenstore`) and the simulated store
(:mod:`trio_vchan._sim._xenstored`) share one definition of the wire format, as given by Xen's
``xen/include/public/io/xs_wire.h``.
"""

from __future__ import annotations

import enum
import errno
import re
import struct
from collections.abc import Iterable
from typing import Final, final

import attrs

from ._errors import ProtocolError

#: The largest payload either side may send (XENSTORE_PAYLOAD_MAX).
PAYLOAD_MAX: Final = 4096
#: The longest absolute path (XENSTORE_ABS_PATH_MAX).
ABS_PATH_MAX: Final = 3072
#: The longest relative path (XENSTORE_REL_PATH_MAX).
REL_PATH_MAX: Final = 2048
#: A header is four host-order (on every Xen platform: little-endian) uint32s.
HEADER_SIZE: Final = 16
#: The largest domain id a permission may name (domid_t is 16 bits).
PERM_DOMID_MAX: Final = 0xFFFF

_HEADER: Final = struct.Struct("<IIII")
_PATH_CHARS: Final = re.compile(r"[A-Za-z0-9/_@-]*")


class MessageType(enum.IntEnum):
    """``enum xsd_sockmsg_type``: the operation a message asks for or answers."""

    CONTROL = 0  # also known as DEBUG
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was RESTRICT, since removed.
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26
    INVALID = 0xFFFF


#: The error names a store may reply with, in ``xsd_errors`` order.
ERROR_NAMES: Final = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
)
_ERRNO_BY_NAME: Final[dict[str, int]] = {name: getattr(errno, name) for name in ERROR_NAMES}
_NAME_BY_ERRNO: Final = {value: name for name, value in _ERRNO_BY_NAME.items()}


def errno_from_name(name: str) -> int:
    """Return the errno value for an error name from the wire.

    An unknown name maps to ``EINVAL``, as libxenstore does.
    """
    return _ERRNO_BY_NAME.get(name, errno.EINVAL)


def name_from_errno(value: int) -> str:
    """Return the wire name of an errno value; values Xen cannot send become ``"EINVAL"``."""
    return _NAME_BY_ERRNO.get(value, "EINVAL")


@final
@attrs.frozen
class Header:
    """``struct xsd_sockmsg``: the 16 bytes in front of every payload."""

    type: int
    req_id: int
    tx_id: int
    len: int

    def pack(self) -> bytes:
        """Return the 16 wire bytes.

        Raises:
            ValueError: a field does not fit in a uint32.
        """
        try:
            return _HEADER.pack(self.type, self.req_id, self.tx_id, self.len)
        except struct.error:
            raise ValueError(f"header fields must be uint32s, not {self!r}") from None

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> Header:
        """Parse the first 16 bytes of ``data``.

        Raises:
            ValueError: fewer than 16 bytes.
        """
        if len(data) < HEADER_SIZE:
            raise ValueError(f"a header is {HEADER_SIZE} bytes, not {len(data)}")
        return cls(*_HEADER.unpack_from(data))


@final
@attrs.frozen
class Message:
    """One whole message: the header fields and the payload.

    ``type`` is an ``int`` rather than a :class:`MessageType` so that unknown operation codes
    survive decoding (a store answers them with ``ENOSYS``); compare it with the enum's members.
    """

    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        """Return the header and the payload, ready to send.

        Raises:
            ValueError: the payload exceeds :data:`PAYLOAD_MAX` or a field is not a uint32.
        """
        if len(self.payload) > PAYLOAD_MAX:
            raise ValueError(
                f"payload must be at most {PAYLOAD_MAX} bytes, not {len(self.payload)}"
            )
        try:
            head = _HEADER.pack(self.type, self.req_id, self.tx_id, len(self.payload))
        except struct.error:
            raise ValueError(f"header fields must be uint32s, not {self!r}") from None
        return head + self.payload


@final
class MessageDecoder:
    """Turns a byte stream into :class:`Message` values.

    Feed it whatever arrived with :meth:`feed`, then call :meth:`next_message` until it returns
    ``None``. A header announcing more than ``max_payload`` bytes raises :class:`ProtocolError`;
    after that the decoder stays broken (the connection cannot be resynchronised).
    """

    def __init__(self, max_payload: int = PAYLOAD_MAX) -> None:
        self._buffer = bytearray()
        self._max_payload = max_payload
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """How many bytes were fed but are not yet part of a returned message."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        self._buffer += data

    def next_message(self) -> Message | None:
        """Return the next complete message, or ``None`` if more bytes are needed.

        Raises:
            ProtocolError: a header announced a payload longer than ``max_payload``.
        """
        if self._error is not None:
            raise self._error
        if len(self._buffer) < HEADER_SIZE:
            return None
        kind, req_id, tx_id, length = _HEADER.unpack_from(self._buffer)  # a Header's fields
        if length > self._max_payload:
            self._error = ProtocolError(
                f"message announces a {length}-byte payload; the limit is {self._max_payload}"
            )
            raise self._error
        end = HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]
        return Message(kind, req_id, tx_id, payload)


def join_strings(parts: Iterable[bytes | str]) -> bytes:
    """Return each part followed by a NUL (``str`` parts are encoded as UTF-8)."""
    return b"".join((p.encode() if isinstance(p, str) else p) + b"\0" for p in parts)


def split_strings(payload: bytes) -> list[bytes]:
    """Split a payload of NUL-terminated strings; bytes after the last NUL are ignored.

    This is C xenstored's ``get_strings``: ``b"a\\0b\\0"`` and ``b"a\\0b\\0junk"`` both give
    ``[b"a", b"b"]``.
    """
    return payload.split(b"\0")[:-1]


def count_strings(payload: bytes) -> int:
    """Return how many NUL-terminated strings ``payload`` holds."""
    return payload.count(b"\0")


def one_arg(payload: bytes) -> bytes:
    """Return the single argument of a ``b"arg\\0"`` payload.

    Raises:
        ValueError: the payload is not exactly one string with its NUL at the end.
    """
    if not payload.endswith(b"\0") or payload.count(b"\0") != 1:
        raise ValueError("payload must be one NUL-terminated string")
    return payload[:-1]


def encode_ok() -> bytes:
    """The payload of a successful reply that returns nothing."""
    return b"OK\0"


def encode_error(value: int) -> bytes:
    """The payload of an ERROR reply for errno ``value``."""
    return name_from_errno(value).encode() + b"\0"


def decode_error(payload: bytes) -> int:
    """Return the errno value of an ERROR reply's payload (unknown names give ``EINVAL``)."""
    return errno_from_name(payload.split(b"\0", 1)[0].decode("ascii", "replace"))


class Access(enum.Enum):
    """The access a permission entry grants, by its wire letter."""

    NONE = "n"
    READ = "r"
    WRITE = "w"
    BOTH = "b"

    @property
    def can_read(self) -> bool:
        """Whether this access includes reading."""
        return self in (Access.READ, Access.BOTH)

    @property
    def can_write(self) -> bool:
        """Whether this access includes writing."""
        return self in (Access.WRITE, Access.BOTH)


@final
@attrs.frozen
class Permission:
    """One entry of a node's permission list, such as ``r5`` (domain 5 may read).

    The first entry of a list names the owner and the access of unlisted domains.
    """

    access: Access
    domid: int = attrs.field()

    @domid.validator
    def _check_domid(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"domid must be an int, not {type(value).__name__}")
        if not 0 <= value <= PERM_DOMID_MAX:
            raise ValueError(f"domid must be 0..{PERM_DOMID_MAX}, not {value!r}")

    @classmethod
    def parse(cls, text: str | bytes) -> Permission:
        """Parse a wire permission string such as ``"b0"``.

        Raises:
            ValueError: not a letter from ``nrwb`` followed by a decimal domid.
        """
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        digits = text[1:]
        if not text or not digits.isascii() or not digits.isdecimal():
            raise ValueError(f"a permission is one of n/r/w/b and a domid, not {text!r}")
        try:
            access = Access(text[0])
        except ValueError:
            raise ValueError(f"a permission is one of n/r/w/b and a domid, not {text!r}") from None
        return cls(access, int(digits))

    def format(self) -> str:
        """Return the wire string, such as ``"r5"``."""
        return f"{self.access.value}{self.domid}"


def validate_path(path: str, *, allow_special: bool = False) -> None:
    """Check a path as C xenstored does before using it.

    Allowed: characters ``[A-Za-z0-9/_@-]``; absolute (``/...``) paths of at most
    :data:`ABS_PATH_MAX` bytes, relative ones of at most :data:`REL_PATH_MAX`; no ``//`` and no
    trailing ``/`` (except the root). ``@``-paths (``@introduceDomain``) only if
    ``allow_special``.

    Raises:
        ValueError: the path is not allowed, with the reason.
    """
    if not path:
        raise ValueError("a XenStore path must not be empty")
    if not _PATH_CHARS.fullmatch(path):
        raise ValueError(f"a XenStore path may only hold [A-Za-z0-9/_@-], not {path!r}")
    if path.startswith("@"):
        if not allow_special:
            raise ValueError(f"special paths are only for watches, not {path!r}")
        return
    limit = ABS_PATH_MAX if path.startswith("/") else REL_PATH_MAX
    if len(path) > limit:
        raise ValueError(f"this path is {len(path)} bytes; the limit is {limit}")
    if "//" in path or (path.endswith("/") and path != "/"):
        raise ValueError(f"a XenStore path has no empty components: {path!r}")


def is_relative(path: str) -> bool:
    """Whether ``path`` is resolved against the connection's home directory."""
    return not path.startswith(("/", "@"))


def resolve_path(path: str, home: str) -> str:
    """Return ``path`` made absolute against ``home`` (``/local/domain/<domid>``).

    Raises:
        ValueError: the path is invalid (see :func:`validate_path`).
    """
    validate_path(path, allow_special=True)
    return f"{home}/{path}" if is_relative(path) else path


def domain_path(domid: int) -> str:
    """Return ``/local/domain/<domid>``, the home of a domain's relative paths."""
    return f"/local/domain/{domid}"

"""The shared page, ``struct vchan_interface``, and ring orders: the one place they are defined.

Pure data and arithmetic; no I/O and no trio. Everything here must match Xen's
``xen/include/public/io/libxenvchan.h`` and libxenvchan's server, byte for byte.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import Final

import attrs

from ._errors import ProtocolError

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT

# struct vchan_interface; "left" is the ring the client writes and the server reads.
LEFT_CONS: Final = 0
LEFT_PROD: Final = 4
RIGHT_CONS: Final = 8
RIGHT_PROD: Final = 12
LEFT_ORDER: Final = 16
RIGHT_ORDER: Final = 18
CLI_LIVE: Final = 20
SRV_LIVE: Final = 21
CLI_NOTIFY: Final = 22
SRV_NOTIFY: Final = 23
GRANTS: Final = 24

SMALL_RING_ORDER: Final = 10  # a 1024-byte ring inside the shared page
LARGE_RING_ORDER: Final = 11  # a 2048-byte ring inside the shared page
MIN_ORDER: Final = SMALL_RING_ORDER
MAX_ORDER: Final = 20  # more external pages would not fit their grants into the shared page
MAX_RING_SIZE: Final = 1 << MAX_ORDER
SMALL_RING_SIZE: Final = 1 << SMALL_RING_ORDER
LARGE_RING_SIZE: Final = 1 << LARGE_RING_ORDER
IN_PAGE_RING_OFFSET: Final = {SMALL_RING_ORDER: 1024, LARGE_RING_ORDER: 2048}
INDEX_MASK: Final = 0xFFFF_FFFF


class Role(enum.Enum):
    """Which end of the vchan: the server grants the pages, the client maps them."""

    SERVER = "server"
    CLIENT = "client"


class NotifyBit(enum.IntFlag):
    """Bits of ``cli_notify``/``srv_notify``: what the requesting side wants to hear about."""

    WRITE = 1  # VCHAN_NOTIFY_WRITE: tell me when you write data
    READ = 2  # VCHAN_NOTIFY_READ: tell me when you consume data


class Live(enum.IntEnum):
    """Values of ``cli_live``/``srv_live``."""

    EXITED = 0
    CONNECTED = 1
    WAITING = 2  # the client has not connected yet (only ever in cli_live)


@attrs.frozen
class RoleOffsets:
    """Where one role's indices, notify bytes and live bytes are in the page."""

    read_prod: int  # the peer's producer index of the ring this role reads
    read_cons: int  # this role's consumer index of it
    write_prod: int
    write_cons: int
    own_notify: int  # the peer requests here; this role checks and clears it
    peer_notify: int  # this role requests here; the peer checks and clears it
    own_live: int
    peer_live: int


#: Each role's view of ``struct vchan_interface``: the client writes left, the server right.
OFFSETS: Final = {
    Role.SERVER: RoleOffsets(
        LEFT_PROD, LEFT_CONS, RIGHT_PROD, RIGHT_CONS, SRV_NOTIFY, CLI_NOTIFY, SRV_LIVE, CLI_LIVE
    ),
    Role.CLIENT: RoleOffsets(
        RIGHT_PROD, RIGHT_CONS, LEFT_PROD, LEFT_CONS, CLI_NOTIFY, SRV_NOTIFY, CLI_LIVE, SRV_LIVE
    ),
}


@attrs.frozen
class RingOrders:
    """Both rings' sizes as log2: ``left`` (client to server), ``right`` (server to client)."""

    left: int
    right: int

    def __attrs_post_init__(self) -> None:
        for name, order in (("left_order", self.left), ("right_order", self.right)):
            if not MIN_ORDER <= order <= MAX_ORDER:
                raise ProtocolError(f"{name} is {order}, outside {MIN_ORDER}..{MAX_ORDER}")
        if self.left == self.right and self.left < PAGE_SHIFT:
            raise ProtocolError(f"both rings claim the in-page slot of order {self.left}")

    @property
    def left_pages(self) -> int:
        return ring_pages(self.left)

    @property
    def right_pages(self) -> int:
        return ring_pages(self.right)

    def read_order(self, role: Role) -> int:
        """The order of the ring that ``role`` reads."""
        return self.left if role is Role.SERVER else self.right

    def write_order(self, role: Role) -> int:
        """The order of the ring that ``role`` writes."""
        return self.right if role is Role.SERVER else self.left


def ring_pages(order: int) -> int:
    """How many separately granted pages a ring of ``order`` needs (0 for in-page rings)."""
    return 1 << (order - PAGE_SHIFT) if order >= PAGE_SHIFT else 0


def check_ring_size(size: object, what: str) -> int:
    """Return ``size`` if it is a valid minimum ring size, else raise TypeError/ValueError."""
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"{what} must be an int, not {type(size).__name__}")
    if not 1 <= size <= MAX_RING_SIZE:
        raise ValueError(f"{what} must be 1..{MAX_RING_SIZE} bytes (1 MiB), not {size!r}")
    return size


def _external_order(size: int) -> int:
    order = PAGE_SHIFT
    while size > 1 << order:
        order += 1
    return order


def choose_orders(read_size: int, write_size: int) -> RingOrders:
    """Pick ring orders exactly as libxenvchan's ``libxenvchan_server_init`` does.

    Args:
        read_size: the minimum size of the ring the server reads (left), in bytes.
        write_size: the minimum size of the ring the server writes (right), in bytes.

    Raises:
        ValueError: a size outside 1..1 MiB.
    """
    left_min = check_ring_size(read_size, "read_size")
    right_min = check_ring_size(write_size, "write_size")
    small, large = SMALL_RING_SIZE, LARGE_RING_SIZE
    # Avoid allocating extra pages by using the in-page slots where both fit.
    if left_min <= small and right_min <= large:
        return RingOrders(SMALL_RING_ORDER, LARGE_RING_ORDER)
    if left_min <= large and right_min <= small:
        return RingOrders(LARGE_RING_ORDER, SMALL_RING_ORDER)
    left, right = _external_order(left_min), _external_order(right_min)
    if left_min <= large:
        left = LARGE_RING_ORDER
    elif right_min <= large:
        right = LARGE_RING_ORDER
    return RingOrders(left, right)


_ORDERS = struct.Struct("<HH")
_GRANT = struct.Struct("<I")


def read_orders(page: memoryview) -> RingOrders:
    """Copy the orders out of the shared page once and validate them.

    Raises:
        ProtocolError: an order outside 10..20, or both rings in the same in-page slot.
    """
    left, right = _ORDERS.unpack_from(page, LEFT_ORDER)
    return RingOrders(left, right)


def write_orders(page: memoryview, orders: RingOrders) -> None:
    _ORDERS.pack_into(page, LEFT_ORDER, orders.left, orders.right)


def read_grants(page: memoryview, orders: RingOrders) -> tuple[list[int], list[int]]:
    """Copy the external rings' grant refs (left's, then right's) out of the page once."""
    left = [_GRANT.unpack_from(page, GRANTS + 4 * i)[0] for i in range(orders.left_pages)]
    base = GRANTS + 4 * orders.left_pages
    right = [_GRANT.unpack_from(page, base + 4 * i)[0] for i in range(orders.right_pages)]
    return left, right


def write_grants(page: memoryview, refs: Sequence[int]) -> None:
    for i, ref in enumerate(refs):
        _GRANT.pack_into(page, GRANTS + 4 * i, ref)


def init_server_page(page: memoryview, orders: RingOrders, refs: Sequence[int]) -> None:
    """Fill in a fresh shared page as a server offers it: zeroed indices, the orders, the
    external rings' grant refs, ``cli_live`` waiting, ``srv_live`` connected, and the server
    asking to hear of the client's writes (as ``libxenvchan_server_init``)."""
    page[:] = bytes(PAGE_SIZE)
    write_orders(page, orders)
    page[CLI_LIVE] = Live.WAITING
    page[SRV_LIVE] = Live.CONNECTED
    page[CLI_NOTIFY] = NotifyBit.WRITE
    write_grants(page, refs)


def in_page_ring(page: memoryview, order: int) -> memoryview:
    """The slice of the shared page that holds an in-page ring of ``order`` (10 or 11)."""
    offset = IN_PAGE_RING_OFFSET[order]
    return page[offset : offset + (1 << order)]

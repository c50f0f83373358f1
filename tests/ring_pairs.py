"""Two RingEndpoints over one bytearray, as a vchan server and client would share it."""

from __future__ import annotations

import attrs

from trio_vchan._layout import (
    LEFT_CONS,
    LEFT_PROD,
    PAGE_SIZE,
    RIGHT_CONS,
    RIGHT_PROD,
    Live,
    RingOrders,
    Role,
    in_page_ring,
    init_server_page,
)
from trio_vchan._ring import RingEndpoint


@attrs.define
class RingPair:
    page: memoryview
    left: memoryview  # client writes, server reads
    right: memoryview  # server writes, client reads
    server: RingEndpoint
    client: RingEndpoint


def _ring(page: memoryview, order: int) -> memoryview:
    if order < 12:
        return in_page_ring(page, order)
    return memoryview(bytearray(1 << order))


def make_pair(orders: RingOrders, start_index: int = 0) -> RingPair:
    """A connected pair, every index starting at ``start_index`` (to exercise 2**32 wrap).

    The page starts as the server offers it; the client then connects as the handshake's
    client does (``trio_vchan.testing.vchan_stream_pair`` does both over real shared memory).
    """
    page = memoryview(bytearray(PAGE_SIZE))
    init_server_page(page, orders, [])  # the external rings here are not granted pages
    for offset in (LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD):
        page[offset : offset + 4] = start_index.to_bytes(4, "little")
    left, right = _ring(page, orders.left), _ring(page, orders.right)
    # Each side its own views, as each process has its own mapping: releasing one side's views
    # must not depend on the other side's.
    server = RingEndpoint(page, left[:], right[:], Role.SERVER)
    client = RingEndpoint(page, right[:], left[:], Role.CLIENT)
    client.request_data_notify()
    client.set_live(Live.CONNECTED)
    return RingPair(page, left, right, server, client)

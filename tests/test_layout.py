from __future__ import annotations

import pytest

from trio_vchan import ProtocolError
from trio_vchan._layout import (
    CLI_LIVE,
    CLI_NOTIFY,
    GRANTS,
    LEFT_ORDER,
    PAGE_SIZE,
    RIGHT_ORDER,
    SRV_LIVE,
    SRV_NOTIFY,
    RingOrders,
    choose_orders,
    in_page_ring,
    read_grants,
    read_orders,
    write_grants,
    write_orders,
)

KIB = 1024
MIB = 1024 * KIB
BOUNDARIES = [1, 1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096, 4097, MIB]


def expected_orders(left_min: int, right_min: int) -> tuple[int, int]:
    """libxenvchan_server_init's rule, restated independently of the implementation."""

    def external(size: int) -> int:
        return max(12, (size - 1).bit_length())

    if left_min <= 1024 and right_min <= 2048:
        return 10, 11
    if left_min <= 2048 and right_min <= 1024:
        return 11, 10
    if left_min <= 2048:
        return 11, external(right_min)
    if right_min <= 2048:
        return external(left_min), 11
    return external(left_min), external(right_min)


def test_struct_offsets_match_vchan_interface() -> None:
    assert (LEFT_ORDER, RIGHT_ORDER) == (16, 18)
    assert (CLI_LIVE, SRV_LIVE, CLI_NOTIFY, SRV_NOTIFY, GRANTS) == (20, 21, 22, 23, 24)


@pytest.mark.parametrize("left", BOUNDARIES)
@pytest.mark.parametrize("right", BOUNDARIES)
def test_choose_orders_around_every_boundary(left: int, right: int) -> None:
    orders = choose_orders(left, right)
    assert (orders.left, orders.right) == expected_orders(left, right)
    assert 1 << orders.left >= left
    assert 1 << orders.right >= right


@pytest.mark.parametrize(
    ("read_size", "write_size", "expected"),
    [
        (1024, 1024, (10, 11)),
        (1025, 1024, (11, 10)),
        (2049, 2049, (12, 12)),
        (4097, 1, (13, 11)),
        (MIB, MIB, (20, 20)),
        (MIB, 3000, (20, 12)),
    ],
)
def test_choose_orders_examples(read_size: int, write_size: int, expected: tuple[int, int]) -> None:
    orders = choose_orders(read_size, write_size)
    assert (orders.left, orders.right) == expected


@pytest.mark.parametrize("bad", [0, -1, MIB + 1, 2**40])
def test_ring_size_out_of_range_says_what_is_allowed(bad: int) -> None:
    with pytest.raises(ValueError, match=r"read_size must be 1\.\.1048576 bytes"):
        choose_orders(bad, 1024)
    with pytest.raises(ValueError, match=r"write_size must be 1\.\.1048576 bytes"):
        choose_orders(1024, bad)


def test_ring_size_must_be_an_int() -> None:
    with pytest.raises(TypeError, match="read_size must be an int, not float"):
        choose_orders(1024.0, 1024)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("left", "right"), [(9, 11), (10, 21), (0, 0), (10, 10), (11, 11), (65535, 12)]
)
def test_hostile_orders_are_a_protocol_error(left: int, right: int) -> None:
    page = memoryview(bytearray(PAGE_SIZE))
    page[LEFT_ORDER : LEFT_ORDER + 2] = left.to_bytes(2, "little")
    page[RIGHT_ORDER : RIGHT_ORDER + 2] = right.to_bytes(2, "little")
    with pytest.raises(ProtocolError):
        read_orders(page)


def test_orders_and_grants_round_trip_through_the_page() -> None:
    page = memoryview(bytearray(PAGE_SIZE))
    orders = RingOrders(20, 20)  # the largest: 512 grant refs must fit into the page
    write_orders(page, orders)
    refs = list(range(1000, 1000 + orders.left_pages + orders.right_pages))
    write_grants(page, refs)
    assert read_orders(page) == orders
    left, right = read_grants(page, orders)
    assert left + right == refs
    assert GRANTS + 4 * len(refs) <= PAGE_SIZE


def test_in_page_rings_sit_where_libxenvchan_puts_them() -> None:
    page = memoryview(bytearray(range(256)) * 16)
    assert in_page_ring(page, 10).tobytes() == page[1024:2048].tobytes()
    assert in_page_ring(page, 11).tobytes() == page[2048:4096].tobytes()

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
import stepping_native
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from ring_pairs import RingPair, make_pair
from sans_io import assert_imports_without_trio

from trio_vchan import ProtocolError
from trio_vchan._layout import (
    CLI_LIVE,
    LEFT_PROD,
    PAGE_SIZE,
    RIGHT_CONS,
    SRV_LIVE,
    Live,
    RingOrders,
    Role,
    choose_orders,
    in_page_ring,
)
from trio_vchan._ring import RingEndpoint, ring_step

# ocaml-vchan's interesting sizes: 1024/2048/4096 pairs, flipped, then off by one.
_BASE = [(1024, 2048), (2048, 1024), (4096, 4096), (1024, 4096), (4096, 2048)]
INTERESTING = sorted(
    {(a + d, b + e) for a, b in _BASE for d in (-1, 0, 1) for e in (-1, 0, 1)}
    | {(b, a) for a, b in _BASE}
)


def test_ring_core_never_imports_trio() -> None:
    assert_imports_without_trio("trio_vchan._ring", "trio_vchan._layout")


def put(ring: RingEndpoint, data: bytes) -> Any:
    return ring.write(memoryview(data))


def test_round_trip_with_wrap_and_notify_bits() -> None:
    pair = make_pair(RingOrders(10, 11))
    server, client = pair.server, pair.client
    # The server's initial page asks the client to notify on write (cli_notify = WRITE): the
    # write stops after its first step (a quarter of the ring), to be told now.
    first = put(client, b"x" * 1000)
    assert (first.accepted, first.notify_peer) == (ring_step(1024), True)
    rest = put(client, b"x" * (1000 - first.accepted))
    assert (rest.accepted, rest.notify_peer) == (1000 - first.accepted, False)
    assert server.read(600).data == b"x" * 600
    # Nobody asked again, so no second notification.
    assert put(client, bytes(range(256)) * 3).accepted == 624
    assert put(client, b"more").notify_peer is False
    assert client.buffer_space() == 0
    assert server.data_ready() == 1024
    got = server.read(2000).data
    assert got == b"x" * 400 + bytes(range(256)) * 2 + bytes(range(112))
    assert client.buffer_space() == 1024


def test_request_notify_reports_data_that_raced_in() -> None:
    pair = make_pair(RingOrders(12, 12))
    assert pair.server.request_data_notify() == 0
    assert put(pair.client, b"hello").notify_peer is True
    assert pair.server.request_data_notify() == 5
    assert pair.server.read(100).data == b"hello"


def test_space_notify_after_a_full_ring() -> None:
    pair = make_pair(RingOrders(10, 11))
    assert put(pair.server, b"a" * 5000).accepted == ring_step(2048)  # the client asked
    assert put(pair.server, b"a" * 5000).accepted == 2048 - ring_step(2048)
    assert pair.server.request_space_notify() == 0
    result = pair.client.read(10)
    assert result.notify_peer is True
    assert pair.server.request_space_notify() == 10


def test_a_large_read_while_the_writer_waits_takes_a_step_first() -> None:
    """The writer is told after a quarter of the ring is free, and refills while the reader
    takes the rest; asked to, read takes all at once (receive_exactly needs that)."""
    for read in ("read", "read_into", "at_once"):
        pair = make_pair(RingOrders(10, 11))
        assert put(pair.server, b"a" * 2048).accepted + put(pair.server, b"a" * 2048).accepted
        assert pair.server.request_space_notify() == 0  # it waits for room
        if read == "read_into":
            buffer = memoryview(bytearray(4096))
            count, notify, _ = pair.client.read_into(buffer)
        else:
            result = pair.client.read(4096, at_once=read == "at_once")
            count, notify = len(result.data), result.notify_peer
        assert (count, notify) == (2048 if read == "at_once" else ring_step(2048), True)
        assert pair.client.data_ready() == 2048 - count
        assert len(pair.client.read(4096).data) == 2048 - count  # nobody waits now: all of it


def test_indices_wrap_at_2_to_the_32() -> None:
    pair = make_pair(RingOrders(11, 10), start_index=2**32 - 700)
    payload = bytes(range(251)) * 8
    first = put(pair.client, payload).accepted  # a step: the server's page asks for an event
    assert first + put(pair.client, payload[first:]).accepted == 2008
    assert pair.server.read(4096).data == payload[:2008]
    assert pair.page[LEFT_PROD : LEFT_PROD + 4].tobytes() == (1308).to_bytes(4, "little")


# -- hostile pages ------------------------------------------------------------------------------


def set_u32(page: memoryview, offset: int, value: int) -> None:
    page[offset : offset + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")


@pytest.mark.parametrize("ahead", [1025, 2**31, 2**32 - 1])
def test_producer_far_ahead_is_a_protocol_error(ahead: int) -> None:
    pair = make_pair(RingOrders(10, 11))
    set_u32(pair.page, LEFT_PROD, ahead)
    for call in (pair.server.data_ready, lambda: pair.server.read(10)):
        with pytest.raises(ProtocolError, match="1024-byte ring"):
            call()
    with pytest.raises(ProtocolError):
        pair.server.request_data_notify()


@pytest.mark.parametrize("cons", [1, 2**31, 2**32 - 2049])
def test_consumer_past_our_producer_is_a_protocol_error(cons: int) -> None:
    pair = make_pair(RingOrders(10, 11))
    set_u32(pair.page, RIGHT_CONS, cons)
    with pytest.raises(ProtocolError):
        put(pair.server, b"data")
    with pytest.raises(ProtocolError):
        pair.server.request_space_notify()


@pytest.mark.parametrize(("offset", "value"), [(CLI_LIVE, 3), (CLI_LIVE, 255), (SRV_LIVE, 2)])
def test_live_bytes_out_of_range(offset: int, value: int) -> None:
    pair = make_pair(RingOrders(10, 11))
    pair.page[offset] = value
    endpoint = pair.server if offset == CLI_LIVE else pair.client
    with pytest.raises(ProtocolError, match=f"live byte is {value}"):
        endpoint.peer_live()


def test_live_states() -> None:
    pair = make_pair(RingOrders(10, 11))
    pair.page[CLI_LIVE] = Live.WAITING
    assert pair.server.peer_live() is Live.WAITING
    pair.client.set_live(Live.EXITED)
    assert pair.server.peer_live() is Live.EXITED


@pytest.mark.parametrize("accesses_before", [1, 2, 3])
def test_an_index_changed_between_steps_is_caught(
    monkeypatch: pytest.MonkeyPatch, accesses_before: int
) -> None:
    """The peer moves its prod to an impossible value in the middle of our C steps (after the
    n-th shared access): each decision used one consistent value, and the bad one raised."""
    accesses = 0
    armed = False

    def step(kind: int) -> None:
        nonlocal accesses
        if armed and kind == stepping_native.ACCESS:
            accesses += 1
            if accesses == accesses_before:
                set_u32(pair.page, LEFT_PROD, 10**6)

    with stepping_native.use(monkeypatch, step):
        pair = make_pair(RingOrders(10, 11))
        put(pair.client, b"abc")
        armed = True
        results: list[object] = []
        for _ in range(3):
            try:
                results.append(pair.server.request_data_notify())
            except ProtocolError:
                results.append(ProtocolError)
    assert ProtocolError in results
    assert all(r in (3, ProtocolError) for r in results)


def test_rings_must_be_power_of_two_views() -> None:
    page = memoryview(bytearray(PAGE_SIZE))
    with pytest.raises(ValueError, match="power of two"):
        RingEndpoint(page, page[:1000], in_page_ring(page, 11), Role.SERVER)
    with pytest.raises(ValueError, match="4096-byte"):
        RingEndpoint(page[:100], page[:1024], page[:1024], Role.SERVER)


# -- the state machine ----------------------------------------------------------------------------


class RingMachine(RuleBasedStateMachine):
    """Random interleavings of both sides against a model: a deque per direction.

    "Sleeping" models a side that asked for a notification and found nothing, so it waits on
    its event channel. The invariant is libxenvchan's contract: a sleeping side whose wait is
    satisfiable always has an event on the way.
    """

    pair: RingPair

    def __init__(self) -> None:
        super().__init__()
        self.to_server: deque[int] = deque()
        self.to_client: deque[int] = deque()
        self.counter = 0
        self.event = {Role.SERVER: False, Role.CLIENT: False}  # an event is pending for the side
        self.sleeping: dict[Role, str | None] = {Role.SERVER: None, Role.CLIENT: None}

    @initialize(
        sizes=st.sampled_from(INTERESTING),
        start=st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**32 - 1500]),
    )
    def setup(self, sizes: tuple[int, int], start: int) -> None:
        self.pair = make_pair(choose_orders(*sizes), start_index=start)

    def endpoint(self, role: Role) -> RingEndpoint:
        return self.pair.server if role is Role.SERVER else self.pair.client

    def fresh(self, count: int) -> bytes:
        data = bytes((self.counter + i) % 251 for i in range(count))
        self.counter += count
        return data

    @rule(role=st.sampled_from(Role), count=st.integers(1, 9000))
    def write(self, role: Role, count: int) -> None:
        if self.sleeping[role] is not None:
            return
        data = self.fresh(count)
        queue = self.to_client if role is Role.SERVER else self.to_server
        free = self.capacity(role) - len(queue)
        result = self.endpoint(role).write(memoryview(data))
        # A peer that asked for an event is told after the first step.
        step = ring_step(self.capacity(role)) if result.notify_peer else count
        assert result.accepted == min(count, free, step)
        queue.extend(data[: result.accepted])
        if result.notify_peer:
            self.event[self.peer(role)] = True

    @rule(role=st.sampled_from(Role), count=st.integers(1, 9000))
    def read(self, role: Role, count: int) -> None:
        if self.sleeping[role] is not None:
            return
        queue = self.to_server if role is Role.SERVER else self.to_client
        result = self.endpoint(role).read(count)
        # A writer that waits for room is told after the first step.
        step = ring_step(self.endpoint(role).read_size) if result.notify_peer else count
        expected = bytes(queue.popleft() for _ in range(min(count, len(queue), step)))
        assert result.data == expected
        if result.notify_peer:
            self.event[self.peer(role)] = True

    @rule(role=st.sampled_from(Role))
    def wait_for_data(self, role: Role) -> None:
        if self.sleeping[role] is None and not self.endpoint(role).request_data_notify():
            self.sleeping[role] = "data"

    @rule(role=st.sampled_from(Role))
    def wait_for_space(self, role: Role) -> None:
        if self.sleeping[role] is None and not self.endpoint(role).request_space_notify():
            self.sleeping[role] = "space"

    @rule(role=st.sampled_from(Role))
    def wake(self, role: Role) -> None:
        if self.event[role]:
            self.event[role] = False
            self.sleeping[role] = None

    def peer(self, role: Role) -> Role:
        return Role.CLIENT if role is Role.SERVER else Role.SERVER

    def capacity(self, writer: Role) -> int:
        return self.endpoint(writer).write_size

    @invariant()
    def indices_agree_with_the_model(self) -> None:
        if not hasattr(self, "pair"):
            return
        assert self.pair.server.data_ready() == len(self.to_server)
        assert self.pair.client.data_ready() == len(self.to_client)
        assert self.pair.client.buffer_space() == self.pair.client.write_size - len(self.to_server)

    @invariant()
    def no_lost_wake_up(self) -> None:
        if not hasattr(self, "pair"):
            return
        for role in Role:
            inbound = self.to_server if role is Role.SERVER else self.to_client
            outbound = self.to_client if role is Role.SERVER else self.to_server
            if self.sleeping[role] == "data" and inbound:
                assert self.event[role], f"{role.value} sleeps with data waiting and no event"
            if self.sleeping[role] == "space" and len(outbound) < self.capacity(role):
                assert self.event[role], f"{role.value} sleeps with space free and no event"


RingMachine.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRingMachine = RingMachine.TestCase

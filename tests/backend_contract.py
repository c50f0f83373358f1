"""What every backend promises (trio_vchan._backend's docstring), checked once for any backend.

The checks use only the protocols of :mod:`trio_vchan._backend`, on a :class:`Domains`: two
backends that are two domains of one platform (or one domain twice, on real Xen, where the
tests run in dom0 alone). tests/test_backend_contract.py runs them on the simulated host, on
the Linux backend over tests/fake_kernel.py's model kernel, and, with Xen's devices, on real
Xen (``nox -s xen``).

Run as a program (``python tests/backend_contract.py sim|xen REMOTE REFS PORT OFFSET CLOSE``),
this file is the other process of the unmap-notify check: it joins as a domain, maps ``REFS``
of domain ``REMOTE`` writable, binds to its ``PORT``, asks for an unmap-notify at ``OFFSET``,
closes that channel if ``CLOSE`` is ``True``, says ``ready`` and waits to be killed.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final, Literal

import attrs
import pytest
import trio

from trio_vchan._backend import PAGE_SIZE, Backend, ChannelStatus, EventChannel
from trio_vchan._xenstore import XenStoreClient

SELF: Final = Path(__file__).resolve()
DOMID_RANGE: Final = r"domid must be 0\.\.32751"
WAIT: Final = 10.0  # seconds an event may take to arrive (it is never this slow when it works)


@attrs.frozen
class MapperPlan:
    """What the dying mapper does: map ``refs`` of domain ``remote`` writable, bind to its
    ``port`` and ask for an unmap-notify at ``offset``; then, if ``close_port``, close its
    end of the channel (the notify must still be sent)."""

    remote: int
    refs: Sequence[int]
    port: int
    offset: int
    close_port: bool


@attrs.frozen
class Domains:
    """Two domains of one platform, and what the checks must know of the backend.

    ``mapper_dies`` runs a mapper as domain ``b`` (see :class:`MapperPlan`), lets it finish
    its setup, then ends it as a process ends: SIGKILL where it is another process; the model
    kernel cannot run a domain in another process, so there it releases the mapper's files as
    Linux does when a process dies.
    """

    name: str
    a: Backend
    b: Backend
    #: ``status()`` reports the remote end (the simulated host) or always UNKNOWN (Linux).
    knows_status: bool
    #: Closing one end of a channel fires the other (the simulated host); Xen does not.
    close_fires_peer: bool
    #: ``bind_interdomain`` leaves the new port with an event pending (Xen does; the
    #: simulated host does not).
    bind_fires_binder: bool
    #: What ``close()`` does while views of the buffer are alive.
    live_views_at_close: Literal["BufferError", "deferred"]
    mapper_dies: Callable[[MapperPlan], Awaitable[None]]


def readable(fd: int, timeout: float = 0.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def _pair(domains: Domains) -> tuple[EventChannel, EventChannel]:
    """A connected channel: a's unbound port, bound by b."""
    server = domains.a.events.bind_unbound(domains.b.domid)
    try:
        client = domains.b.events.bind_interdomain(domains.a.domid, server.port)
    except BaseException:
        server.close()
        raise
    try:
        expect_bind_event(domains, client)
    except BaseException:
        client.close()
        server.close()
        raise
    return server, client


def expect_bind_event(domains: Domains, client: EventChannel) -> None:
    """Check (and consume) the event a fresh interdomain port has where the backend says so."""
    timeout = WAIT if domains.bind_fires_binder else 0.1
    assert readable(client.fileno(), timeout) == domains.bind_fires_binder
    client.consume()
    assert not readable(client.fileno(), 0.1)


# -- event channels --------------------------------------------------------------------------------


async def test_notify_makes_the_other_end_readable_both_ways(domains: Domains) -> None:
    server, client = _pair(domains)
    try:
        assert server.port != client.port or domains.a.domid != domains.b.domid
        assert not readable(server.fileno())
        assert not readable(client.fileno())
        client.notify()
        assert readable(server.fileno(), WAIT)
        assert not readable(client.fileno())  # the sender is not fired
        server.notify()
        assert readable(client.fileno(), WAIT)
    finally:
        client.close()
        server.close()


async def test_consume_says_which_ports_fired(domains: Domains) -> None:
    """Ports of one backend may share an fd (Linux: one evtchn file); consume() names the ones
    that fired, whichever channel of that fd it is called on."""
    (first, first_peer), (second, second_peer) = _pair(domains), _pair(domains)
    try:
        second_peer.notify()
        assert readable(second.fileno(), WAIT)
        shares = first.fileno() == second.fileno()
        fired = set((first if shares else second).consume())
        assert fired == {second.port}
        assert not readable(second.fileno(), 0.1)
        assert second.port not in set(second.consume())  # taken once, and now unmasked
        first_peer.notify()
        assert readable(first.fileno(), WAIT)
        assert set(first.consume()) == {first.port}
    finally:
        for channel in (first_peer, second_peer, first, second):
            channel.close()


async def test_consume_clears_and_the_port_fires_again(domains: Domains) -> None:
    server, client = _pair(domains)
    try:
        server.consume()  # nothing pending: returns at once
        client.notify()
        assert readable(server.fileno(), WAIT)
        server.consume()
        assert not readable(server.fileno(), 0.1)
        client.notify()
        assert readable(server.fileno(), WAIT)
        server.consume()
        assert not readable(server.fileno(), 0.1)
    finally:
        client.close()
        server.close()


async def test_events_coalesce_until_consumed(domains: Domains) -> None:
    server, client = _pair(domains)
    try:
        for _ in range(50):
            client.notify()
        assert readable(server.fileno(), WAIT)
        server.consume()
        # On Linux the port was masked from the first event until this consume, and what came
        # meanwhile is one more event, delivered at the unmask; the simulated host has none.
        if readable(server.fileno(), 0.1):
            server.consume()
        assert not readable(server.fileno(), 0.1)
    finally:
        client.close()
        server.close()


async def test_status_says_what_the_backend_can_tell(domains: Domains) -> None:
    server = domains.a.events.bind_unbound(domains.b.domid)
    try:
        unbound = server.status()
        client = domains.b.events.bind_interdomain(domains.a.domid, server.port)
        connected = server.status()
        client.close()
        after = server.status()
    finally:
        server.close()
    if domains.knows_status:
        assert (unbound, connected, after) == (
            ChannelStatus.UNBOUND,
            ChannelStatus.CONNECTED,
            ChannelStatus.PEER_CLOSED,
        )
    else:
        assert unbound == connected == after == ChannelStatus.UNKNOWN
    assert server.status() == ChannelStatus.PEER_CLOSED  # this end is closed: nothing to reach


async def test_close_is_idempotent_and_the_survivor_notifies_harmlessly(domains: Domains) -> None:
    server, client = _pair(domains)
    try:
        client.close()
        client.close()
        assert client.fileno() == -1
        client.consume()  # a no-op once closed
        with pytest.raises(OSError, match="was closed") as info:
            client.notify()
        assert info.value.errno == errno.EBADF
        # The survivor is fired once where the backend says so; its notifies go nowhere.
        assert readable(server.fileno(), WAIT if domains.close_fires_peer else 0.1) == (
            domains.close_fires_peer
        )
        server.consume()
        server.notify()
    finally:
        server.close()


async def test_events_before_the_bind_are_dropped(domains: Domains) -> None:
    server = domains.a.events.bind_unbound(domains.b.domid)
    try:
        server.notify()  # nobody is bound: a no-op
        client = domains.b.events.bind_interdomain(domains.a.domid, server.port)
        try:
            expect_bind_event(domains, client)  # and nothing else: the notify was dropped
        finally:
            client.close()
    finally:
        server.close()


async def test_binding_a_port_not_offered_is_an_oserror(domains: Domains) -> None:
    server = domains.a.events.bind_unbound(domains.b.domid)
    try:
        with pytest.raises(OSError):  # noqa: PT011 (Xen says EINVAL; the simulated host more)
            domains.b.events.bind_interdomain(domains.a.domid, server.port + 1000)
        client = domains.b.events.bind_interdomain(domains.a.domid, server.port)
        try:
            with pytest.raises(OSError):  # noqa: PT011 (a port binds once)
                domains.b.events.bind_interdomain(domains.a.domid, server.port)
        finally:
            client.close()
    finally:
        server.close()


@pytest.mark.parametrize("domid", [-1, 32752, 2**40])
async def test_bad_domids_are_refused_before_anything_is_allocated(
    domains: Domains, domid: int
) -> None:
    with pytest.raises(ValueError, match=DOMID_RANGE):
        domains.a.events.bind_unbound(domid)
    with pytest.raises(ValueError, match=DOMID_RANGE):
        domains.a.events.bind_interdomain(domid, 1)
    with pytest.raises(ValueError, match=DOMID_RANGE):
        domains.a.memory.share(domid, 1)
    with pytest.raises(ValueError, match=DOMID_RANGE):
        domains.a.memory.map(domid, [1], writable=False)


# -- shares and mappings ---------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3])
async def test_share_and_map_see_the_same_bytes_both_ways(domains: Domains, count: int) -> None:
    share = domains.a.memory.share(domains.b.domid, count)
    try:
        refs = list(share.refs)
        assert len(refs) == len(set(refs)) == count
        assert all(isinstance(ref, int) and ref >= 0 for ref in refs)
        assert share.buffer.nbytes == count * PAGE_SIZE
        assert not share.buffer.readonly
        assert bytes(share.buffer) == bytes(count * PAGE_SIZE)  # fresh pages are zeroed
        mapping = domains.b.memory.map(domains.a.domid, refs, writable=True)
        try:
            assert mapping.buffer.nbytes == count * PAGE_SIZE
            assert not mapping.buffer.readonly
            last = (count - 1) * PAGE_SIZE
            share.buffer[last + 5 : last + 10] = b"hello"  # in page order
            assert bytes(mapping.buffer[last + 5 : last + 10]) == b"hello"
            mapping.buffer[17] = 0x5A
            assert share.buffer[17] == 0x5A
        finally:
            mapping.close()
        if count > 1:  # a tail of the refs maps those pages alone
            tail = domains.b.memory.map(domains.a.domid, refs[1:], writable=False)
            try:
                assert tail.buffer.nbytes == (count - 1) * PAGE_SIZE
                assert bytes(tail.buffer[last - PAGE_SIZE + 5 : last - PAGE_SIZE + 10]) == (
                    b"hello"
                )
            finally:
                tail.close()
    finally:
        share.close()


async def test_a_read_only_mapping_is_read_only(domains: Domains) -> None:
    share = domains.a.memory.share(domains.b.domid, 1)
    try:
        share.buffer[:3] = b"abc"
        mapping = domains.b.memory.map(domains.a.domid, share.refs, writable=False)
        try:
            assert mapping.buffer.readonly
            assert bytes(mapping.buffer[:3]) == b"abc"
            with pytest.raises(TypeError):
                mapping.buffer[0] = 1
            with pytest.raises(OSError, match="writable mapping"):
                mapping.set_unmap_notify(0, 1)
        finally:
            mapping.close()
    finally:
        share.close()


async def test_a_ref_that_does_not_exist_maps_nothing(domains: Domains) -> None:
    with pytest.raises(OSError):  # noqa: PT011 (the errno differs between kernels)
        domains.b.memory.map(domains.a.domid, [2**31], writable=False)


async def test_a_ref_granted_to_another_domain_does_not_map(domains: Domains) -> None:
    if domains.a.domid == domains.b.domid:
        pytest.skip("needs two domains; real Xen's tests run in dom0 alone")
    other = max(domains.a.domid, domains.b.domid) + 1
    share = domains.a.memory.share(other, 1)
    try:
        with pytest.raises(OSError):  # noqa: PT011
            domains.b.memory.map(domains.a.domid, share.refs, writable=False)
        with pytest.raises(OSError):  # noqa: PT011 (nor is it b's to offer)
            domains.a.memory.map(domains.b.domid, share.refs, writable=False)
    finally:
        share.close()


async def test_close_is_idempotent_and_ends_the_buffer(domains: Domains) -> None:
    share = domains.a.memory.share(domains.b.domid, 1)
    mapping = domains.b.memory.map(domains.a.domid, share.refs, writable=True)
    for region in (mapping, share):
        region.close()
        region.close()
        with pytest.raises(ValueError):  # noqa: PT011 (each backend words it its own way)
            region.buffer  # noqa: B018


async def test_live_views_at_close_pin_each_backends_behaviour(domains: Domains) -> None:
    # The contract asks callers to release views first; this pins what happens when they do not.
    share = domains.a.memory.share(domains.b.domid, 1)
    mapping = domains.b.memory.map(domains.a.domid, share.refs, writable=True)
    for region in (mapping, share):
        view = region.buffer[10:20]
        if domains.live_views_at_close == "BufferError":
            with pytest.raises(BufferError, match="views of the buffer are still alive"):
                region.close()
            assert region.buffer.nbytes == PAGE_SIZE  # nothing was released
            view.release()
            region.close()
        else:
            region.close()  # the grant is given up; the memory stays while the view lives
            view[0] = 5
            assert view[0] == 5
            view.release()
        with pytest.raises(ValueError):  # noqa: PT011
            region.buffer  # noqa: B018


# -- unmap-notify ----------------------------------------------------------------------------------


@pytest.mark.parametrize("close_port", [False, True], ids=["", "port-closed-first"])
async def test_unmap_notify_clears_the_byte_and_fires_when_the_mapper_dies(
    domains: Domains, close_port: bool
) -> None:
    share = domains.a.memory.share(domains.b.domid, 2)
    server = domains.a.events.bind_unbound(domains.b.domid)
    try:
        offset = PAGE_SIZE + 21  # a byte of the second page
        share.buffer[offset] = 1
        share.buffer[offset + 1] = 7
        plan = MapperPlan(domains.a.domid, list(share.refs), server.port, offset, close_port)
        await domains.mapper_dies(plan)
        with trio.fail_after(WAIT):
            await trio.lowlevel.wait_readable(server.fileno())
        assert share.buffer[offset] == 0  # cleared before the event is sent
        assert share.buffer[offset + 1] == 7  # and nothing else
    finally:
        server.close()
        share.close()


async def test_unmap_notify_on_close_of_a_share(domains: Domains) -> None:
    share = domains.a.memory.share(domains.b.domid, 1)
    server, client = _pair(domains)
    try:
        mapping = domains.b.memory.map(domains.a.domid, share.refs, writable=False)
        try:
            share.buffer[30] = 9
            share.set_unmap_notify(31, server.port)  # replaced by the next call
            share.set_unmap_notify(30, server.port)
            assert not readable(client.fileno())
            share.close()
            assert readable(client.fileno(), WAIT)
            assert mapping.buffer[30] == 0
        finally:
            mapping.close()
    finally:
        client.close()
        server.close()
        share.close()


# -- XenStore --------------------------------------------------------------------------------------


async def test_each_xenstore_connection_acts_as_its_domain(domains: Domains) -> None:
    first = XenStoreClient(await domains.a.connect_xenstore())
    second = XenStoreClient(await domains.a.connect_xenstore())
    try:
        assert int(await first.read("domid")) == domains.a.domid
        assert int(await second.read("domid")) == domains.a.domid
    finally:
        await first.aclose()
        await second.aclose()


# -- the mapper, as a process of its own -----------------------------------------------------------


async def spawn_mapper(plan: MapperPlan, kind: str, environ: dict[str, str]) -> None:
    """Run this file as the mapper (see the module docstring), wait for ``ready``, SIGKILL it."""
    refs = ",".join(map(str, plan.refs))
    args = [kind, str(plan.remote), refs, str(plan.port), str(plan.offset), str(plan.close_port)]
    process = await trio.lowlevel.open_process(
        [sys.executable, os.fspath(SELF), *args],
        stdout=subprocess.PIPE,
        env={**os.environ, **environ},
    )
    assert process.stdout is not None
    try:
        with trio.fail_after(60):
            said = b""
            while b"\n" not in said:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise AssertionError(f"the mapper exited before it was ready: {said!r}")
                said += chunk
        assert said == b"ready\n", said
    finally:
        process.kill()
        with trio.CancelScope(shield=True), trio.fail_after(60):
            await process.wait()
        await process.stdout.aclose()


def _mapper_main(argv: list[str]) -> None:
    kind, remote, refs, port, offset, close_port = argv
    if kind == "sim":
        from trio_vchan.sim import backend_from_environ

        backend = backend_from_environ()
    else:
        from trio_vchan._linux import open_backend

        backend = open_backend()
    channel = backend.events.bind_interdomain(int(remote), int(port))
    mapping = backend.memory.map(int(remote), [int(r) for r in refs.split(",")], writable=True)
    mapping.set_unmap_notify(int(offset), channel.port)
    if close_port == "True":
        channel.close()
    print("ready", flush=True)
    select.select([], [], [])  # until killed


if __name__ == "__main__":
    _mapper_main(sys.argv[1:])

"""vchan_stream_pair: both ends of a real vchan in one process, as trio's memory_stream_pair.

The two domains are connections to one simulated platform held by this process alone (the
simulated host's event-channel and grant state, without its sockets or XenStore): the pages
are memfds mapped by both ends, the event channels eventfds. The ends are set up by the
handshake's own server and client steps (:func:`trio_vchan._handshake.connect_directly`),
so the page is laid out exactly as on the wire, and each end is the :class:`VchanStream`
that ``serve`` and ``connect`` return.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

from .._api import DEFAULT_RING_SIZE
from .._backend import Backend, check_domid
from .._handshake import connect_directly, vchan_path
from .._layout import Role, choose_orders
from .._sim._client import hello, make_backend
from .._sim._host_state import LocalTransport, PlatformState
from .._stream import VchanStream


async def _no_xenstore() -> trio.abc.Stream:
    raise OSError(
        "a vchan_stream_pair has no XenStore: for code that looks domains or ports up, use"
        " trio_vchan.testing.simulated_host()"
    )


def _domain(platform: PlatformState, domid: int) -> Backend:
    platform.add_domain(domid)
    transport = LocalTransport(platform, platform.connect(domid))
    hello(transport)
    backend = make_backend(domid, transport, Path(os.devnull))  # its XenStore is replaced:
    return attrs.evolve(backend, connect_xenstore=_no_xenstore, instance="vchan_stream_pair")


def _closing(backend: Backend) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        backend.close()  # hangs up the domain's platform connection: nothing of it is left

    return close


def vchan_stream_pair(
    *,
    first: Role = Role.SERVER,
    read_size: int = DEFAULT_RING_SIZE,
    write_size: int = DEFAULT_RING_SIZE,
    server_domid: int = 1,
    client_domid: int = 2,
    port: str | int = "pair",
) -> tuple[VchanStream, VchanStream]:
    """Return both ends of a connected vchan in this process, ``first``'s end first.

    As :func:`trio.testing.memory_stream_pair`, but each end is a real
    :class:`~trio_vchan.VchanStream` over real shared memory: the shared page and rings
    (mapped by both ends, laid out as libxenvchan lays them out) and the event channels of
    a simulated Xen platform that only this pair uses. No simulated host, XenStore or other
    process is involved, and no trio run is needed to create the pair. Closing an end does
    what closing a vchan does (the other end reads what is left, then ``b""``); close both
    (``async with``) to release the memory and the event channels.

    Args:
        first: the role of the first stream returned; the second has the other role.
        read_size, write_size: the server's minimum ring sizes, rounded up exactly as
            :func:`trio_vchan.serve` (and libxenvchan) rounds them: 1 and 2 KiB rings live in
            the shared page, larger ones (4 KiB to 1 MiB) in pages of their own.
        server_domid, client_domid: the domain ids each end reports as its peer's
            (:attr:`~trio_vchan.VchanStream.peer_domid`).
        port: the port whose XenStore directory the streams report
            (:attr:`~trio_vchan.VchanStream.path`).

    Returns:
        ``(first's stream, the other's)``.

    Raises:
        TypeError, ValueError: a size outside 1..1 MiB, a bad domid or port, equal domids,
            or a ``first`` that is not a :class:`~trio_vchan.Role`.
    """
    if not isinstance(first, Role):
        raise TypeError(f"first must be Role.SERVER or Role.CLIENT, not {first!r}")
    orders = choose_orders(read_size, write_size)
    path = vchan_path(server_domid, client_domid, port)
    if check_domid(server_domid, "server_domid") == check_domid(client_domid, "client_domid"):
        raise ValueError(
            f"server_domid and client_domid are both {server_domid}: a vchan"
            " joins two different domains"
        )
    platform = PlatformState()
    server, client = _domain(platform, server_domid), _domain(platform, client_domid)
    try:
        server_end, client_end = connect_directly(server, client, orders, path)
    except BaseException:
        server.close()
        client.close()
        raise

    streams = VchanStream(server_end, _closing(server)), VchanStream(client_end, _closing(client))
    return streams if first is Role.SERVER else (streams[1], streams[0])

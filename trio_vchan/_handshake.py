"""Setting up and tearing down a vchan, written only against the backend interface.

Server: bind an unbound event channel for the client, grant the shared page (with unmap-notify
on ``srv_live``) and the external ring pages, fill in the page, then advertise ``ring-ref`` and
``event-channel`` under the vchan's XenStore path in one transaction, readable by the client
only. The server waits for ``cli_live`` to leave 2, then withdraws the advertisement (libxenvchan
withdraws at close; withdrawing as soon as the client is in means no second client can attach to
a connected endpoint and nothing stays behind if the server process dies later).

Client: watch ``event-channel`` (no polling), read both keys, bind, map the page (with
unmap-notify on ``cli_live``), copy and validate the orders and grant refs once, map the rings,
ask to be told of writes, set ``cli_live = 1`` and notify.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ._backend import Backend, check_domid
from ._errors import ProtocolError, XenStoreError
from ._layout import (
    CLI_LIVE,
    CLI_NOTIFY,
    PAGE_SIZE,
    SRV_LIVE,
    Live,
    NotifyBit,
    RingOrders,
    Role,
    in_page_ring,
    read_grants,
    read_orders,
    write_grants,
    write_orders,
)
from ._ring import RingEndpoint
from ._xenstore import XenStoreClient
from ._xs_wire import Access, Permission, validate_path

if TYPE_CHECKING:
    from ._backend import EventChannel, Mapping, Share

_PORT_NAME: Final = re.compile(r"[a-zA-Z0-9_-]+\Z")
_WATCH_TOKEN: Final = "trio-vchan"
# A cancelled server still withdraws its advertisement, but never waits on XenStore for long.
_WITHDRAW_TIMEOUT: Final = 5.0


def vchan_path(server_domid: int, client_domid: int, port: str | int) -> str:
    """The XenStore directory of a vchan.

    Args:
        port: a name matching ``[a-zA-Z0-9_-]+`` (as ocaml-vchan), a non-negative int (written in
            decimal, as Qubes does), or an absolute XenStore path used as it is (as libxenvchan).

    Raises:
        TypeError, ValueError: any other port.
    """
    check_domid(server_domid, "server_domid")
    check_domid(client_domid, "client_domid")
    if isinstance(port, bool) or not isinstance(port, (int, str)):
        raise TypeError(f"port must be a str or an int, not {type(port).__name__}")
    if isinstance(port, int):
        if port < 0:
            raise ValueError(f"an int port must be >= 0, not {port}")
        name = str(port)
    elif port.startswith("/"):
        try:
            validate_path(port)
        except ValueError as exc:
            raise ValueError(f"port {port!r} is not a valid XenStore path: {exc}") from None
        return port.rstrip("/")
    elif _PORT_NAME.match(port):
        name = port
    else:
        raise ValueError(
            f"port must match [a-zA-Z0-9_-]+, be an int, or be an absolute XenStore path,"
            f" not {port!r}"
        )
    return f"/local/domain/{server_domid}/data/vchan/{client_domid}/{name}"


@attrs.define
class Endpoint:
    """Everything one side of a vchan holds; ``release()`` gives it all back."""

    role: Role
    ring: RingEndpoint
    channel: EventChannel
    regions: list[Share | Mapping]  # released in reverse order
    path: str

    def release(self) -> None:
        """Drop the ring's views, unshare or unmap every region, close the channel."""
        _release_all(
            [self.ring.release, *[r.close for r in reversed(self.regions)], self.channel.close]
        )


def _release_all(steps: list[Callable[[], None]]) -> None:
    """Run every step even if some fail; re-raise the first failure."""
    first: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as exc:  # release the rest first
            first = first or exc
    if first is not None:
        raise first


async def _open_xenstore(backend: Backend) -> XenStoreClient:
    return XenStoreClient(await backend.connect_xenstore())


# -- server ---------------------------------------------------------------------------------------


async def advertise(backend: Backend, client_domid: int, path: str, orders: RingOrders) -> Endpoint:
    """Grant and fill in the pages, then publish them for ``client_domid`` at ``path``."""
    cleanup: list[Callable[[], None]] = []
    publishing = False
    try:
        channel = backend.events.bind_unbound(client_domid)
        cleanup.append(channel.close)
        page_share = backend.memory.share(client_domid, 1)
        cleanup.insert(0, page_share.close)
        page_share.set_unmap_notify(SRV_LIVE, channel.port)
        regions: list[Share | Mapping] = [page_share]
        page = page_share.buffer
        page[:] = bytes(PAGE_SIZE)
        write_orders(page, orders)
        page[CLI_LIVE] = Live.WAITING
        page[SRV_LIVE] = Live.CONNECTED
        page[CLI_NOTIFY] = NotifyBit.WRITE
        rings: list[memoryview] = []
        refs: list[int] = []
        for order in (orders.left, orders.right):
            if order < 12:
                view = in_page_ring(page, order)
            else:
                share = backend.memory.share(client_domid, 1 << (order - 12))
                cleanup.insert(0, share.close)
                regions.append(share)
                refs.extend(share.refs)
                view = share.buffer[: 1 << order]
            # A live view keeps its pages from being released: drop it before them.
            cleanup.insert(0, view.release)
            rings.append(view)
        write_grants(page, refs)
        ring = RingEndpoint(page[:], read_ring=rings[0], write_ring=rings[1], role=Role.SERVER)
        cleanup.insert(0, ring.release)
        publishing = True
        await _publish(backend, client_domid, path, page_share.refs[0], channel.port)
    except BaseException:
        try:
            if publishing:  # cancelled after the commit, or failed part-way: take it back
                await withdraw(backend, path)
        finally:
            _release_all(cleanup)
        raise
    return Endpoint(Role.SERVER, ring, channel, regions, path)


async def _publish(backend: Backend, client_domid: int, path: str, ref: int, port: int) -> None:
    perms = [Permission(Access.NONE, backend.domid), Permission(Access.READ, client_domid)]
    entries = {"ring-ref": ref, "event-channel": port}
    async with await _open_xenstore(backend) as xs:
        # The directory first, outside the transaction: servers advertising side by side
        # then touch only their own directories inside it, and their transactions do not
        # conflict (measured on the simulated host: 100 concurrent listeners connected at
        # 10/s before, 33/s after).
        await xs.mkdir(path)
        while True:  # one transaction, so that a watching client never sees half of it
            tx = await xs.transaction_start()
            try:
                for key, value in entries.items():
                    await xs.write(f"{path}/{key}", str(value).encode(), tx=tx)
                    await xs.set_perms(f"{path}/{key}", perms, tx=tx)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await xs.transaction_end(tx, commit=False)
                raise
            try:
                # Shielded: a commit cancelled in flight would leave us not knowing whether
                # the entries are in the store.
                with trio.CancelScope(shield=True):
                    await xs.transaction_end(tx, commit=True)
            except XenStoreError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
                continue
            return


async def withdraw(backend: Backend, path: str) -> None:
    """Remove the advertisement; runs to completion (briefly) even in a cancelled scope."""
    with trio.CancelScope(shield=True), trio.move_on_after(_WITHDRAW_TIMEOUT):
        async with await _open_xenstore(backend) as xs:
            for key in ("ring-ref", "event-channel"):
                await _remove_if_present(xs, f"{path}/{key}")
            # Also the directories the advertisement created, while nothing else is in them.
            for directory in _own_directories(backend.domid, path):
                if not await _remove_if_empty(xs, directory):
                    break


async def _remove_if_empty(xs: XenStoreClient, directory: str) -> bool:
    """Remove ``directory`` if it has no children, atomically: another server may be
    advertising below it at this very moment. Returns whether it was removed."""
    while True:
        tx = await xs.transaction_start()
        try:
            if await xs.directory(directory, tx=tx):
                await xs.transaction_end(tx, commit=False)
                return False
            await xs.rm(directory, tx=tx)
        except XenStoreError as exc:
            await xs.transaction_end(tx, commit=False)
            # EIO: C xenstored 4.17's answer when another connection removed the directory
            # after this transaction read it (reproduced on real Xen): gone already, as ENOENT.
            if exc.errno in (errno.ENOENT, errno.EACCES, errno.EIO):
                return False  # gone already, or not ours to remove
            raise
        try:
            await xs.transaction_end(tx, commit=True)
        except XenStoreError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            continue  # something changed meanwhile: look again
        return True


def _own_directories(server_domid: int, path: str) -> list[str]:
    """``path`` and its parents below ``/local/domain/<server>/data``, deepest first."""
    base = f"/local/domain/{server_domid}/data/vchan"
    if not path.startswith(base + "/"):
        return [path]
    parts = path[len(base) + 1 :].split("/")
    return [base + "/" + "/".join(parts[:n]) for n in range(len(parts), 0, -1)] + [base]


async def _remove_if_present(xs: XenStoreClient, path: str) -> None:
    try:
        await xs.rm(path)
    except XenStoreError as exc:
        if exc.errno != errno.ENOENT:
            raise


# -- client ---------------------------------------------------------------------------------------


def _parse_advertised(value: bytes, key: str, limit: int) -> int:
    text = value.decode("ascii", "replace")
    # At most 10 digits before int(): a node value can hold 2048 of them (4096 for dom0).
    if not (text.isascii() and text.isdecimal() and len(text) <= 10) or not 0 < int(text) <= limit:
        shown = repr(text) if len(text) <= 40 else f"{text[:32]!r}... ({len(value)} bytes)"
        raise ProtocolError(f"the server advertised {key} = {shown}, not a number 1..{limit}")
    return int(text)


async def _read_advertisement(xs: XenStoreClient, path: str) -> tuple[int, int] | None:
    """``(ring_ref, port)`` as advertised at ``path`` now, or None while there is none."""
    try:
        ring_ref = await xs.read(f"{path}/ring-ref")
        port = await xs.read(f"{path}/event-channel")
    except XenStoreError as exc:
        # Not there yet, or not yet readable by us.
        if exc.errno not in (errno.ENOENT, errno.EACCES):
            raise
        return None
    return (
        _parse_advertised(ring_ref, "ring-ref", 0xFFFF_FFFF),
        _parse_advertised(port, "event-channel", 0x7FFF_FFFF),
    )


async def attach(backend: Backend, server_domid: int, path: str) -> Endpoint:
    """Connect as the client to the server advertised at ``path``, waiting for it.

    Waits on a watch, never polling. Another client of our domain may take an advertisement
    just before us (binding its event channel then fails with EINVAL): we try again after
    the next change at ``path``, when the server has advertised afresh.
    """
    async with await _open_xenstore(backend) as xs:
        await xs.watch(f"{path}/event-channel", _WATCH_TOKEN)
        while True:
            advertisement = await _read_advertisement(xs, path)
            if advertisement is not None:
                endpoint = _attach_to(backend, server_domid, path, *advertisement)
                if endpoint is not None:
                    return endpoint
            await xs.next_watch_event()


def _check_grants(grants: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    """Refuse grant ref 0 (the toolstack's, never a vchan's): backends may refuse it as an
    argument rather than as a missing grant (the simulated host raises ValueError)."""
    for name, refs in zip(("left", "right"), grants, strict=True):
        if 0 in refs:
            raise ProtocolError(f"the shared page lists grant ref 0 for the {name} ring")
    return grants


def _attach_to(
    backend: Backend, server_domid: int, path: str, ring_ref: int, port: int
) -> Endpoint | None:
    """Bind, map, validate and announce, for one advertisement.

    Returns None if the advertised port cannot be bound (EINVAL: another client took it, or
    its server is gone), so that the caller waits for a fresh advertisement. Any later
    failure, an EINVAL from mapping included, is raised: it is this advertisement's fault.
    """
    try:
        channel = backend.events.bind_interdomain(server_domid, port)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise
    cleanup: list[Callable[[], None]] = [channel.close]
    try:
        page_map = backend.memory.map(server_domid, [ring_ref], writable=True)
        cleanup.insert(0, page_map.close)
        page_map.set_unmap_notify(CLI_LIVE, channel.port)
        regions: list[Share | Mapping] = [page_map]
        page = page_map.buffer
        orders = read_orders(page)  # copied once, validated
        grants = _check_grants(read_grants(page, orders))
        rings: list[memoryview] = []
        for order, refs, writable in zip(
            (orders.left, orders.right), grants, (True, False), strict=True
        ):
            if order < 12:
                view = in_page_ring(page, order)
            else:
                mapping = backend.memory.map(server_domid, refs, writable=writable)
                cleanup.insert(0, mapping.close)
                regions.append(mapping)
                view = mapping.buffer[: 1 << order]
            # Should mapping the next ring fail, this view must go before its pages can.
            cleanup.insert(0, view.release)
            rings.append(view)
        ring = RingEndpoint(page[:], read_ring=rings[1], write_ring=rings[0], role=Role.CLIENT)
        cleanup.insert(0, ring.release)
        ring.request_data_notify()  # as libxenvchan's srv_notify = VCHAN_NOTIFY_WRITE
        ring.set_live(Live.CONNECTED)
        channel.notify()
    except BaseException:
        _release_all(cleanup)
        raise
    return Endpoint(Role.CLIENT, ring, channel, regions, path)

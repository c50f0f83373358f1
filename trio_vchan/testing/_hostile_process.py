"""A hostile vchan peer in its own process: it does the handshake by hand, then scribbles.

    TRIO_VCHAN_SIM=... TRIO_VCHAN_DOMID=... python -m trio_vchan.testing._hostile_process

It never uses trio-vchan's stream or handshake: it speaks to the backend (event channels,
grants) and to XenStore directly, so it can write whatever it likes into the shared page and
the rings and send (or withhold) as many events as it likes. It is driven by one JSON command
per line on stdin and answers each with one JSON line on stdout (:mod:`._hostile` is the
driver, :class:`trio_vchan.testing.HostilePeer`):

- ``{"op": "serve", "seed": S, "victim": D, "path": P}``: act as the server for domain D at
  XenStore path P. The page is filled in from the seed, usually correctly, sometimes with bad
  orders, grant refs, indices, live or notify bytes. Replies once the advertisement is
  committed. With ``"honest": true`` the setup follows the protocol (so do ``attach``'s).
- ``{"op": "attach", "seed": S, "victim": D, "path": P}``: act as the client of domain D's
  server at P: wait for the advertisement, map, scribble (from the seed), then usually set
  ``cli_live`` and notify. Replies once done.
- ``{"op": "mutate", "count": N}``: apply N mutations chosen by the seeded generator (writes
  and reads that follow the protocol, arbitrary indices, orders, live and notify bytes, grant
  refs, ring bytes, event floods, closing the event channel). Replies with their descriptions.
- ``{"op": "quiet", "seconds": T}``: mutate for T seconds (by this process's clock) without
  sending a single event: a victim that is asleep must stay asleep. Replies with the count.
- ``{"op": "poke", "live": L, "data": HEX}``: set our live byte to L (if given), write the
  bytes as the protocol says, notify.
- ``{"op": "ping"}``: answers once this process has joined the host.
- ``{"op": "end"}``: release everything (the host then clears our live byte and fires the
  victim, through the unmap-notify) and remove our XenStore nodes.

Every reply to ``mutate`` and ``quiet`` also carries ``violations``: bytes that the victim
changed since our last command although the protocol gives it no right to write them (the
peer's indices and live byte, orders, grant refs, the ring it reads, unused parts of the page).
The check is skipped when the setup made the victim's rings overlap other memory. A command
that finds violations mutates nothing (a server may have reset the page to offer it afresh,
and setting our live byte on it would answer that offer) and says in ``dropped`` whether the
victim has closed its end of our event channel.

Everything the generator does is a function of the seed and of the commands, so a driver that
issues the same commands replays the same mutations.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .._backend import ChannelStatus
from .._errors import ProtocolError
from .._layout import (
    CLI_LIVE,
    CLI_NOTIFY,
    GRANTS,
    IN_PAGE_RING_OFFSET,
    LEFT_CONS,
    LEFT_ORDER,
    LEFT_PROD,
    OFFSETS,
    PAGE_SHIFT,
    PAGE_SIZE,
    RIGHT_CONS,
    RIGHT_PROD,
    SRV_LIVE,
    SRV_NOTIFY,
    Live,
    NotifyBit,
    RingOrders,
    Role,
    RoleOffsets,
    choose_orders,
    in_page_ring,
    ring_pages,
    write_grants,
)
from .._native import ffi, lib
from .._xenstore import XenStoreClient
from .._xs_wire import Access, Permission

if TYPE_CHECKING:
    from .._backend import Backend, EventChannel, Mapping, Share

Json = dict[str, Any]
U32: Final = 0xFFFF_FFFF
#: A domain that is neither side: pages granted to it cannot be mapped by the victim.
THIRD_DOMAIN: Final = 9
#: Kinds of mutation (the methods ``Hostile._<kind>``) and their usual weights.
_WEIGHTS: Final = {
    "write": 20,
    "read": 15,
    "index": 10,
    "orders": 4,
    "live": 6,
    "notify_byte": 8,
    "grant": 4,
    "garbage": 8,
    "silent_write": 5,
    "events": 14,
    "close": 1,
    "exit": 2,
}
#: Kinds left out of a quiet phase: they send events or end the vchan.
_LOUD: Final = frozenset({"events", "close", "exit"})
_INDEX_FIELDS: Final = {
    "left.cons": LEFT_CONS,
    "left.prod": LEFT_PROD,
    "right.cons": RIGHT_CONS,
    "right.prod": RIGHT_PROD,
}


def _u32(view: memoryview, offset: int) -> int:
    return int.from_bytes(view[offset : offset + 4], "little")


def _set_u32(view: memoryview, offset: int, value: int) -> None:
    view[offset : offset + 4] = (value & U32).to_bytes(4, "little")


def _set_orders(page: memoryview, left: int, right: int) -> None:
    """Any two u16 values, unlike ``write_orders``, which takes only valid ones."""
    page[LEFT_ORDER : LEFT_ORDER + 4] = left.to_bytes(2, "little") + right.to_bytes(2, "little")


@attrs.define
class _Vchan:
    """One connected (or half-connected) vchan as the hostile side holds it."""

    role: Role  # our role
    page: memoryview
    left: memoryview  # client writes, server reads
    right: memoryview
    orders: RingOrders  # as the victim uses them
    channel: EventChannel
    regions: list[Share | Mapping]
    check_discipline: bool
    ptr: Any = None  # a cffi pointer to the page, for atomic operations
    port_closed: bool = False
    muted: bool = False  # during a quiet phase: no events at all
    snapshot: list[tuple[int, int, bytes]] = attrs.Factory(list)  # (region, start, bytes)

    def __attrs_post_init__(self) -> None:
        self.ptr = ffi.from_buffer("uint8_t[]", self.page, require_writable=True)

    # -- who owns what -----------------------------------------------------------------------

    @property
    def server(self) -> bool:
        return self.role is Role.SERVER

    @property
    def our_ring(self) -> memoryview:
        """The ring we write (the victim reads it)."""
        return self.right if self.server else self.left

    @property
    def their_ring(self) -> memoryview:
        return self.left if self.server else self.right

    @property
    def _at(self) -> RoleOffsets:
        return OFFSETS[self.role]

    @property
    def our_prod(self) -> int:
        return self._at.write_prod

    @property
    def their_cons(self) -> int:
        """The victim's consumer index of the ring we write."""
        return self._at.write_cons

    @property
    def their_prod(self) -> int:
        return self._at.read_prod

    @property
    def our_cons(self) -> int:
        return self._at.read_cons

    @property
    def our_notify(self) -> int:
        """The byte in which the victim asks us for events (we check and clear it)."""
        return self._at.own_notify

    @property
    def our_live(self) -> int:
        return self._at.own_live

    @property
    def their_live(self) -> int:
        return self._at.peer_live

    def _victim_writable(self) -> list[tuple[int, int]]:
        """Byte ranges of the page that the protocol lets the victim write."""
        owned = [
            (self.their_prod, self.their_prod + 4),
            (self.their_cons, self.their_cons + 4),
            (self.their_live, self.their_live + 1),
            (CLI_NOTIFY, SRV_NOTIFY + 1),
        ]
        victim_writes = self.orders.left if self.server else self.orders.right
        if victim_writes < PAGE_SHIFT:
            start = IN_PAGE_RING_OFFSET[victim_writes]
            owned.append((start, start + (1 << victim_writes)))
        return sorted(owned)

    def _guarded(self) -> list[tuple[memoryview, int, int]]:
        """The (buffer, start, end) ranges the victim must never write."""
        ranges: list[tuple[memoryview, int, int]] = []
        position = 0
        for start, end in self._victim_writable():
            if start > position:
                ranges.append((self.page, position, start))
            position = max(position, end)
        if position < PAGE_SIZE:
            ranges.append((self.page, position, PAGE_SIZE))
        ring = self.our_ring
        if len(ring) >= PAGE_SIZE:  # an external ring; an in-page one is covered above
            ranges.append((ring, 0, len(ring)))
        return ranges

    def take_snapshot(self) -> None:
        if self.check_discipline:
            self.snapshot = [
                (index, start, bytes(buffer[start:end]))
                for index, (buffer, start, end) in enumerate(self._guarded())
            ]

    def violations(self) -> list[str]:
        """Describe guarded bytes that changed since :meth:`take_snapshot`."""
        if not self.check_discipline or not self.snapshot:
            return []
        found = []
        guarded = self._guarded()
        for index, start, before in self.snapshot:
            buffer, _, end = guarded[index]
            now = bytes(buffer[start:end])
            if now != before:
                where = next(i for i in range(len(now)) if now[i] != before[i])
                what = "page" if buffer is self.page else "the ring the victim reads"
                found.append(
                    f"the victim wrote {what} offset {start + where}: "
                    f"{before[where]:#x} -> {now[where]:#x}"
                )
        return found

    def dropped(self) -> bool:
        """Whether the victim closed its end of our event channel: it has ended this vchan,
        and what it writes to the pages afterwards (offering them afresh) is not this vchan's."""
        return not self.port_closed and self.channel.status() is ChannelStatus.PEER_CLOSED

    def notify(self) -> None:
        if not (self.port_closed or self.muted):
            self.channel.notify()

    def release(self) -> None:
        if self.ptr is not None:
            ffi.release(self.ptr)
            self.ptr = None
        self.page.release()
        self.left.release()
        self.right.release()
        for region in reversed(self.regions):
            region.close()
        self.channel.close()


def _interesting_u32(rng: random.Random, near: list[int], size: int) -> int:
    """A value for an index: arbitrary, or close to a boundary that matters."""
    base = rng.choice(near)
    choice = rng.randrange(8)
    if choice == 0:
        return rng.getrandbits(32)
    if choice == 1:
        return rng.choice([0, 1, 2**31, 2**31 - 1, U32, U32 - 1])
    if choice == 2:
        return (base + size + rng.choice([-1, 0, 1, 2])) & U32
    if choice == 3:
        return (base - size + rng.choice([-1, 0, 1])) & U32
    return (base + rng.randint(-3, 3)) & U32


class Hostile:
    """The hostile domain's state and the commands it answers."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.rng = random.Random(0)
        self.weights: dict[str, float] = dict(_WEIGHTS)
        self.vchan: _Vchan | None = None
        self.xs_paths: list[str] = []
        self.pinned: list[Share | Mapping | EventChannel] = []  # held on purpose (pin, stall)

    # -- setting up --------------------------------------------------------------------------

    async def serve(self, seed: int, victim: int, path: str, *, honest: bool = False) -> Json:
        """Grant and advertise a page for ``victim``, honest or not as the seed says."""
        self.rng = rng = random.Random(seed)
        self._choose_temper()
        memory, events = self.backend.memory, self.backend.events
        notes: list[str] = []
        if honest or rng.random() < 0.9:
            orders = choose_orders(self._ring_size(), self._ring_size())
            left, right = orders.left, orders.right
        elif rng.random() < 0.7:
            left, right = rng.choice([(10, 10), (11, 11), (9, 12), (21, 10), (12, 30), (0, 11)])
            notes.append(f"orders {left}/{right}")
        else:
            left, right = rng.getrandbits(16), rng.getrandbits(16)
            notes.append(f"orders {left}/{right}")
        channel = events.bind_unbound(victim)
        regions: list[Share | Mapping] = []
        try:
            page_share = memory.share(victim, 1)
            regions.append(page_share)
            page_share.set_unmap_notify(SRV_LIVE, channel.port)
            page = page_share.buffer
            rings: list[memoryview] = []
            refs: list[int] = []
            regular = True  # the victim's rings are where the orders say: check its writes
            for order in (left, right):
                if 10 <= order <= 11:
                    rings.append(in_page_ring(page, order))
                    continue
                count = ring_pages(order) if 12 <= order <= 20 else 0
                if count == 0:
                    rings.append(memoryview(bytearray(PAGE_SIZE)))  # never seen by the victim
                    continue
                grantee = THIRD_DOMAIN if not honest and rng.random() < 0.03 else victim
                share = memory.share(grantee, count)
                regions.append(share)
                rings.append(share.buffer[: 1 << order])
                refs.extend(share.refs)
                if grantee != victim:
                    notes.append(f"ring pages granted to domain {grantee}")
                    regular = False
            _set_orders(page, left, right)
            refs, grant_note = self._grant_refs(refs, page_share.refs[0], honest)
            if grant_note:
                notes.append(grant_note)
                regular = False
            write_grants(page, refs)
            page[CLI_LIVE] = Live.WAITING
            page[SRV_LIVE] = Live.CONNECTED
            page[CLI_NOTIFY] = NotifyBit.WRITE
            if not honest:
                notes.extend(self._scribble_before_connecting(page, Role.SERVER))
            try:
                valid = RingOrders(left, right)
            except Exception:
                valid = RingOrders(10, 11)  # the victim refuses the page anyway
                regular = False
            vchan = _Vchan(Role.SERVER, page, rings[0], rings[1], valid, channel, regions, regular)
        except BaseException:
            for region in reversed(regions):
                region.close()
            channel.close()
            raise
        self.vchan = vchan
        await self._advertise(victim, path, page_share.refs[0], channel.port)
        vchan.take_snapshot()
        return {"notes": notes}

    def _ring_size(self) -> int:
        rng = self.rng
        if rng.random() < 0.8:
            return rng.choice([1, 1024, 1025, 2048, 4096, 4097, 8192, 65536])
        return rng.randint(1, 1 << 20)

    def _grant_refs(self, refs: list[int], page_ref: int, honest: bool) -> tuple[list[int], str]:
        rng = self.rng
        if honest or not refs or rng.random() < 0.85:
            return refs, ""
        kind = rng.choice(["reversed", "page", "zero", "random", "duplicate", "shifted"])
        if kind == "reversed":
            return refs[::-1], "grant refs reversed"
        if kind == "page":
            return [page_ref] * len(refs), "grant refs all name the shared page"
        if kind == "zero":
            return [0] * len(refs), "grant refs zero"
        if kind == "random":
            return [rng.getrandbits(32) for _ in refs], "grant refs random"
        if kind == "duplicate":
            return [refs[0]] * len(refs), "grant refs all the first one"
        return [ref + 1 for ref in refs], "grant refs shifted by one"

    def _scribble_before_connecting(self, page: memoryview, role: Role) -> list[str]:
        """Bad initial indices, live or notify bytes, sometimes."""
        rng = self.rng
        notes = []
        for _ in range(rng.choice([0, 0, 0, 1, 2])):
            kind = rng.randrange(3)
            if kind == 0:
                name, offset = rng.choice(list(_INDEX_FIELDS.items()))
                value = _interesting_u32(rng, [_u32(page, offset)], 1024)
                _set_u32(page, offset, value)
                notes.append(f"initial {name} = {value}")
            elif kind == 1:
                offset = SRV_LIVE if role is Role.SERVER else CLI_LIVE
                page[offset] = value = rng.choice([0, 2, 3, 255])
                notes.append(f"initial own live byte {value}")
            else:
                offset = rng.choice([CLI_NOTIFY, SRV_NOTIFY])
                page[offset] = value = rng.getrandbits(8)
                notes.append(f"initial notify byte {offset} = {value:#x}")
        return notes

    async def _advertise(self, victim: int, path: str, ref: int, port: int) -> None:
        perms = [Permission(Access.NONE, self.backend.domid), Permission(Access.READ, victim)]
        async with XenStoreClient(await self.backend.connect_xenstore()) as xs:
            tx = await xs.transaction_start()
            for key, value in (("ring-ref", ref), ("event-channel", port)):
                await xs.write(f"{path}/{key}", str(value).encode(), tx=tx)
                await xs.set_perms(f"{path}/{key}", perms, tx=tx)
            await xs.transaction_end(tx, commit=True)  # nobody else writes here: no EAGAIN
        self.xs_paths.append(f"/local/domain/{self.backend.domid}/data/vchan")

    async def attach(
        self, seed: int, victim: int, path: str, *, honest: bool = False, unmap_notify: bool = True
    ) -> Json:
        while True:
            try:
                return await self._attach_once(seed, victim, path, honest, unmap_notify)
            except ProtocolError:
                continue  # that page was refused: the next advertisement

    async def _attach_once(
        self, seed: int, victim: int, path: str, honest: bool, unmap_notify: bool
    ) -> Json:
        """Connect to the victim's advertisement at ``path`` by hand (without an unmap-notify
        on ``cli_live`` if asked, as ocaml-vchan connects)."""
        self.rng = rng = random.Random(seed)
        self._choose_temper()
        async with XenStoreClient(await self.backend.connect_xenstore()) as xs:
            await xs.watch(f"{path}/event-channel", "hostile")
            while True:
                try:
                    ref = int(await xs.read(f"{path}/ring-ref"))
                    port = int(await xs.read(f"{path}/event-channel"))
                    # A port that cannot be bound is a withdrawn (or half-replaced)
                    # advertisement: its server moved on, so wait for the next one.
                    channel = self.backend.events.bind_interdomain(victim, port)
                    break
                except OSError:
                    await xs.next_watch_event()
        regions: list[Share | Mapping] = []
        views: list[memoryview] = []  # released before their regions close
        try:
            page_map = self.backend.memory.map(victim, [ref], writable=True)
            regions.append(page_map)
            if unmap_notify:
                page_map.set_unmap_notify(CLI_LIVE, channel.port)
            page = page_map.buffer
            views.append(page)
            # A server offers the pages of a broken handshake again, reset; but this domain
            # may still have been scribbling on them after the reset (the last episode's
            # mutations, before it saw the new offer), so its orders or grant refs may be
            # ours: refuse such a page as a client must.
            try:
                orders = RingOrders(*(int.from_bytes(page[o : o + 2], "little") for o in (16, 18)))
                refs = [_u32(page, GRANTS + 4 * i) for i in range(orders.left_pages)]
                more = [
                    _u32(page, GRANTS + 4 * (orders.left_pages + i))
                    for i in range(orders.right_pages)
                ]
                rings = []
                for order, ring_refs in ((orders.left, refs), (orders.right, more)):
                    if order < PAGE_SHIFT:
                        rings.append(in_page_ring(page, order))
                    else:
                        mapping = self.backend.memory.map(victim, ring_refs, writable=True)
                        regions.append(mapping)
                        rings.append(mapping.buffer[: 1 << order])
                    views.append(rings[-1])
            except (ProtocolError, OSError, ValueError) as exc:  # ValueError: grant ref 0
                page[CLI_LIVE] = 7  # neither 0, 1 nor 2: the server drops it, offers a fresh one
                channel.notify()
                raise ProtocolError(f"refused the page offered at {path}: {exc}") from exc
            vchan = _Vchan(Role.CLIENT, page, rings[0], rings[1], orders, channel, regions, True)
        except BaseException:
            for view in reversed(views):
                view.release()
            for region in reversed(regions):
                region.close()
            channel.close()
            raise
        self.vchan = vchan
        notes = [] if honest else self._scribble_before_connecting(page, Role.CLIENT)
        if not notes or rng.random() < 0.5:
            lib.vchan_fetch_or_u8(vchan.ptr, SRV_NOTIFY, NotifyBit.WRITE)
            page[CLI_LIVE] = Live.CONNECTED
        if honest or rng.random() < 0.97:
            vchan.notify()
        else:
            notes.append("no event after connecting")
        vchan.take_snapshot()
        return {"notes": notes, "orders": [orders.left, orders.right], "ref": ref}

    async def _next_advertisement(self, xs: XenStoreClient, path: str) -> tuple[int, int]:
        """The advertisement at ``path`` after the next change there (the first: now)."""
        while True:
            await xs.next_watch_event()
            try:
                return (
                    int(await xs.read(f"{path}/ring-ref")),
                    int(await xs.read(f"{path}/event-channel")),
                )
            except OSError:
                continue  # withdrawn, or half written: the next change completes it

    def _take(self, victim: int, ref: int, port: int) -> tuple[EventChannel, memoryview]:
        """Bind the port and map the page and rings (no unmap-notify), keeping them all."""
        channel = self.backend.events.bind_interdomain(victim, port)
        self.pinned.append(channel)
        page_map = self.backend.memory.map(victim, [ref], writable=True)
        self.pinned.append(page_map)
        page = page_map.buffer
        orders = RingOrders(*(int.from_bytes(page[o : o + 2], "little") for o in (16, 18)))
        first = 0
        for count in (orders.left_pages, orders.right_pages):
            refs = [_u32(page, GRANTS + 4 * (first + i)) for i in range(count)]
            if refs:  # every grant of the advertisement stays pinned
                self.pinned.append(self.backend.memory.map(victim, refs, writable=True))
            first += count
        return channel, page

    async def pin(self, victim: int, path: str, seconds: float) -> Json:
        """For ``seconds``: take each advertisement, write a bad ``cli_live``, notify, and
        keep every mapping, so that a server granting fresh pages each time runs out."""
        cycles = errors = 0
        deadline = time.monotonic() + seconds
        async with XenStoreClient(await self.backend.connect_xenstore()) as xs:
            await xs.watch(f"{path}/event-channel", "pin")
            while time.monotonic() < deadline:
                found = None
                with trio.move_on_after(deadline - time.monotonic()):
                    found = await self._next_advertisement(xs, path)
                if found is None:
                    break
                try:
                    channel, page = self._take(victim, *found)
                except OSError:
                    errors += 1  # another client took it first, or the server moved on
                    continue
                page[CLI_LIVE] = 7  # neither 0, 1 nor 2
                channel.notify()
                cycles += 1
        return {"cycles": cycles, "errors": errors, "pinned": len(self.pinned)}

    async def stall(self, victim: int, path: str) -> Json:
        """Take the advertisement (bind, map) and then do nothing at all."""
        async with XenStoreClient(await self.backend.connect_xenstore()) as xs:
            await xs.watch(f"{path}/event-channel", "stall")
            ref, port = await self._next_advertisement(xs, path)
        self._take(victim, ref, port)
        return {"ref": ref, "port": port}

    def unpin(self) -> Json:
        held, self.pinned = self.pinned, []
        for item in reversed(held):
            item.close()
        return {"released": len(held)}

    # -- mutating ----------------------------------------------------------------------------

    def _choose_temper(self) -> None:
        """How hostile this episode is: each kind of mutation weighted afresh (the honest
        writes and reads never vanish, so that some episodes run long)."""
        self.weights = {
            kind: weight * (1 if kind in ("write", "read") else self.rng.choice([0, 0.1, 1, 1, 3]))
            for kind, weight in _WEIGHTS.items()
        }

    def mutate(self, count: int, *, quiet: bool = False) -> list[str]:
        vchan = self._vchan()
        kinds = [k for k in self.weights if not (quiet and k in _LOUD)]
        weights = [self.weights[k] for k in kinds]
        done = []
        for _ in range(count):
            # The victim may reset the pages to offer them afresh: hands off. (Not while
            # quiet: asking the host costs the victim's host CPU, which a quiet phase measures.)
            if not quiet and vchan.dropped():
                done.append("stopped: the victim closed its port")
                break
            (kind,) = self.rng.choices(kinds, weights)
            function: Callable[[_Vchan], str] = getattr(self, f"_{kind}")
            done.append(function(vchan))
        return done

    def _vchan(self) -> _Vchan:
        if self.vchan is None:
            raise RuntimeError("no vchan: serve or attach first")
        return self.vchan

    def _write(self, v: _Vchan, *, notify: bool = True) -> str:
        """Write data as the protocol says: within the space the victim left us."""
        ring, size = v.our_ring, len(v.our_ring)
        prod, cons = lib.vchan_load_acquire_u32(v.ptr, v.our_prod), _u32(v.page, v.their_cons)
        used = (prod - cons) & U32
        if used > size:
            return "write: no (indices already broken)"
        count = min(self.rng.choice([1, 7, 100, 1000, size]), size - used)
        if count:
            data = self.rng.randbytes(count)
            start = prod & (size - 1)
            first = min(count, size - start)
            ring[start : start + first] = data[:first]
            ring[: count - first] = data[first:]
            lib.vchan_store_release_u32(v.ptr, v.our_prod, (prod + count) & U32)
        lib.vchan_full_barrier()
        asked = lib.vchan_fetch_and_u8(v.ptr, v.our_notify, ~NotifyBit.WRITE & 0xFF)
        if notify and asked & NotifyBit.WRITE:
            v.notify()
        return f"write {count}" + ("" if notify else " silently")

    def _silent_write(self, v: _Vchan) -> str:
        return self._write(v, notify=False)

    def _read(self, v: _Vchan) -> str:
        """Consume data as the protocol says."""
        size = len(v.their_ring)
        prod, cons = _u32(v.page, v.their_prod), _u32(v.page, v.our_cons)
        ready = (prod - cons) & U32
        if ready > size:
            return "read: no (indices already broken)"
        count = min(self.rng.choice([1, 100, size]), ready)
        lib.vchan_store_release_u32(v.ptr, v.our_cons, (cons + count) & U32)
        lib.vchan_full_barrier()
        asked = lib.vchan_fetch_and_u8(v.ptr, v.our_notify, ~NotifyBit.READ & 0xFF)
        silent = self.rng.random() < 0.2
        if asked & NotifyBit.READ and not silent:
            v.notify()
        return f"read {count}" + (" silently" if silent else "")

    def _index(self, v: _Vchan) -> str:
        name, offset = self.rng.choice(list(_INDEX_FIELDS.items()))
        near = [_u32(v.page, o) for o in _INDEX_FIELDS.values()]
        size = 1 << self.rng.choice([v.orders.left, v.orders.right])
        value = _interesting_u32(self.rng, near, size)
        _set_u32(v.page, offset, value)
        return f"{name} = {value}"

    def _orders(self, v: _Vchan) -> str:
        left, right = self.rng.getrandbits(16), self.rng.choice([10, 11, 12, 20, 21, 0xFFFF])
        _set_orders(v.page, left, right)
        return f"orders {left}/{right}"

    def _live(self, v: _Vchan) -> str:
        offset = v.our_live if self.rng.random() < 0.8 else v.their_live
        value = self.rng.choice([0, 1, 1, 2, 3, 0x80, 0xFF])
        v.page[offset] = value
        if self.rng.random() < 0.5:
            v.notify()
        return f"live byte {offset} = {value}"

    def _notify_byte(self, v: _Vchan) -> str:
        offset = self.rng.choice([CLI_NOTIFY, SRV_NOTIFY])
        bits = self.rng.getrandbits(8)
        how = self.rng.randrange(3)
        if how == 0:
            lib.vchan_fetch_or_u8(v.ptr, offset, bits)
        elif how == 1:
            lib.vchan_fetch_and_u8(v.ptr, offset, bits)
        else:
            v.page[offset] = bits  # a plain store: may wipe the victim's request
        return f"notify byte {offset} {'|&='[how]}= {bits:#x}"

    def _grant(self, v: _Vchan) -> str:
        index = self.rng.randrange(4)
        value = self.rng.getrandbits(32)
        _set_u32(v.page, GRANTS + 4 * index, value)
        return f"grants[{index}] = {value}"

    def _garbage(self, v: _Vchan) -> str:
        ring = v.our_ring if self.rng.random() < 0.7 else v.their_ring
        start = self.rng.randrange(len(ring))
        count = min(self.rng.choice([1, 16, 512]), len(ring) - start)
        ring[start : start + count] = self.rng.randbytes(count)
        return f"garbage {count} bytes at {start} of the {'left' if ring is v.left else 'right'}"

    def _events(self, v: _Vchan) -> str:
        count = self.rng.choice([1, 1, 2, 10, 1000, 10000])
        for _ in range(count):
            v.notify()
        return f"{count} events"

    def _close(self, v: _Vchan) -> str:
        if not v.port_closed:
            v.port_closed = True
            v.channel.close()
        return "close the event channel"

    def _exit(self, v: _Vchan) -> str:
        v.page[v.our_live] = Live.EXITED
        v.notify()
        return "live byte 0 (close)"

    def poke(self, live: int | None, data: bytes) -> Json:
        """Set our live byte and/or write ``data`` as the protocol says, then notify."""
        v = self._vchan()
        if live is not None:
            v.page[v.our_live] = live
        ring, size = v.our_ring, len(v.our_ring)
        prod = _u32(v.page, v.our_prod)
        for i, byte in enumerate(data):
            ring[(prod + i) & (size - 1)] = byte
        lib.vchan_store_release_u32(v.ptr, v.our_prod, (prod + len(data)) & U32)
        v.notify()
        v.take_snapshot()
        return {}

    def quiet(self, seconds: float) -> Json:
        """Mutate without events for ``seconds``."""
        vchan = self._vchan()
        count = 0
        start = time.monotonic()
        vchan.muted = True
        try:
            while time.monotonic() - start < seconds:
                self.mutate(10, quiet=True)
                count += 10
        finally:
            vchan.muted = False
        return {"count": count, "elapsed": time.monotonic() - start}

    # -- ending ------------------------------------------------------------------------------

    async def end(self) -> None:
        vchan, self.vchan = self.vchan, None
        if vchan is not None:
            vchan.release()
        if self.xs_paths:
            async with XenStoreClient(await self.backend.connect_xenstore()) as xs:
                for path in self.xs_paths:
                    await xs.rm(path)
            self.xs_paths.clear()

    # -- commands ----------------------------------------------------------------------------

    async def handle(self, command: Json) -> Json:
        op = command["op"]
        if op == "serve":
            return await self.serve(
                command["seed"],
                command["victim"],
                command["path"],
                honest=command.get("honest", False),
            )
        if op == "attach":
            return await self.attach(
                command["seed"],
                command["victim"],
                command["path"],
                honest=command.get("honest", False),
                unmap_notify=command.get("unmap_notify", True),
            )
        if op == "close_port":  # the port goes, the mappings stay
            self._vchan().channel.close()
            return {}
        if op in ("mutate", "quiet"):
            vchan = self._vchan()
            violations = vchan.violations()
            if violations:  # perhaps offered afresh: a scribble now could answer the new offer
                dropped = vchan.dropped()
                return {"done": [], "count": 0, "violations": violations, "dropped": dropped}
            if op == "mutate":
                reply: Json = {"done": self.mutate(command["count"])}
            else:
                reply = self.quiet(command["seconds"])
            vchan.take_snapshot()
            return {**reply, "violations": [], "dropped": False}
        if op == "pin":
            return await self.pin(command["victim"], command["path"], command["seconds"])
        if op == "stall":
            return await self.stall(command["victim"], command["path"])
        if op == "unpin":
            return self.unpin()
        if op == "end":
            self.unpin()
            await self.end()
            return {}
        if op == "ping":
            return {"domid": self.backend.domid}
        if op == "poke":
            return self.poke(command.get("live"), bytes.fromhex(command.get("data", "")))
        raise ValueError(f"unknown command {op!r}")


async def main() -> None:
    from ..sim import backend_from_environ

    hostile = Hostile(backend_from_environ())
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = await stdin.receive_some()
            if not chunk:
                await hostile.end()
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        reply = await hostile.handle(json.loads(line))
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    trio.run(main)

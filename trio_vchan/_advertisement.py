"""Where a server advertises a vchan and its client looks it up: the configuration directory.

:class:`Advertisements` is all the handshake asks of it (ocaml-vchan's ``CONFIGURATION``
signature is the model). :class:`XenStoreAdvertisements` is the one implementation that
speaks XenStore, laid out as libxenvchan does: ``<path>/ring-ref`` and
``<path>/event-channel``, owned by the server and readable by the client only.
:class:`MemoryAdvertisements` keeps them in a dict, for tests of the handshake alone.

Requests per connection, counted by ``tests/test_handshake.py``: the server publishes with 4
(each key written, then made readable by the client: the client sees ``event-channel`` only
once ``ring-ref`` is complete, so no transaction is needed), sent together in one round trip
(the store carries out a connection's requests in order), and withdraws with 1; a client that
finds the advertisement there reads both keys in a transaction (4: start, two reads and the
commit, in two round trips; see ``_XenStoreLookup._read`` for why), one that must wait also
watches the path (in dom0 also ``@releaseDomain``) and unwatches after. A listener clears a
stale advertisement once, before its first, and removes the empty parent directories in one
transaction when it closes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, Protocol, final

import attrs
import trio

from ._errors import ProtocolError, XenStoreError
from ._xs_wire import Access, Permission

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from ._xenstore import Changes, XenStoreClient

_KEYS: Final = ("ring-ref", "event-channel")
#: How often a client looks for an advertisement when XenStore refuses it another watch.
POLL_INTERVAL: Final = 0.2
_QUOTA_ERRNOS: Final = frozenset({errno.E2BIG, errno.ENOSPC, errno.EDQUOT})
#: XenStore's answers that a path is not this domain's to write or watch.
REFUSED_ERRNOS: Final = frozenset({errno.EACCES, errno.EPERM})
_log = logging.getLogger("trio_vchan")
# Transactions per XenStore connection at once: C xenstored allows 10.
_TRANSACTIONS_AT_ONCE: Final = 4


class PeerGoneError(trio.BrokenResourceError):
    """The peer's domain was destroyed: while a client waited for it to serve, or under a
    connected stream (whose calls then raise :class:`trio.BrokenResourceError` caused by it)."""


@attrs.frozen
class Advertised:
    """One advertisement: the grant ref of the shared page and the server's port."""

    ring_ref: int
    port: int


class Lookup(Protocol):
    """A client's view of one vchan path while it waits for an advertisement."""

    async def next(self) -> Advertised:
        """Return the advertisement there now; else wait for a change and look again.

        Each call after the first waits for a change first (the last advertisement was
        unusable: taken by another client of our domain, or stale).

        Raises:
            ProtocolError: the advertisement is malformed.
            PeerGoneError: the server's domain was destroyed while we waited.
        """
        ...

    async def current(self) -> Advertised | None:
        """The advertisement there now (None: none), without waiting; the next
        :meth:`next` still waits for the changes since its last answer."""
        ...


class Advertisements(Protocol):
    """Publishing and finding advertisements: everything the handshake needs of XenStore."""

    async def publish(self, path: str, client_domid: int, advertised: Advertised) -> None:
        """Advertise at ``path`` for ``client_domid`` only (replacing what is there)."""
        ...

    async def withdraw(self, path: str) -> None:
        """Remove the advertisement at ``path`` (fine if there is none)."""
        ...

    async def tidy(self, path: str) -> None:
        """Remove the now empty directories above ``path`` that advertising created."""
        ...

    def lookup(self, server_domid: int, path: str) -> AbstractAsyncContextManager[Lookup]:
        """Watch ``path`` (of ``server_domid``) for advertisements while the block runs."""
        ...


def parse_advertised(value: bytes, key: str, limit: int) -> int:
    """A decimal number 1..``limit`` as a server advertised it, else ProtocolError."""
    text = value.decode("ascii", "replace")
    # At most 10 digits before int(): a node value can hold 2048 of them (4096 for dom0).
    if not (text.isascii() and text.isdecimal() and len(text) <= 10) or not 0 < int(text) <= limit:
        shown = repr(text) if len(text) <= 40 else f"{text[:32]!r}... ({len(value)} bytes)"
        raise ProtocolError(f"the server advertised {key} = {shown}, not a number 1..{limit}")
    return int(text)


def own_directories(server_domid: int, path: str) -> list[str]:
    """The parents of ``path`` below ``/local/domain/<server>/data`` that advertising
    creates, deepest first (none for a path given as it is)."""
    base = f"/local/domain/{server_domid}/data/vchan"
    if not path.startswith(base + "/"):
        return []
    parts = path[len(base) + 1 :].split("/")
    return [base + "/" + "/".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)] + [base]


# -- XenStore -------------------------------------------------------------------------------------


@final
class XenStoreAdvertisements(Advertisements):
    """Advertisements in XenStore, through one shared client (``xenstore()`` returns it)."""

    def __init__(self, domid: int, xenstore: Callable[[], Awaitable[XenStoreClient]]) -> None:
        self._domid = domid
        self._xenstore = xenstore
        self._transactions = trio.Semaphore(_TRANSACTIONS_AT_ONCE)

    async def publish(self, path: str, client_domid: int, advertised: Advertised) -> None:
        xs = await self._xenstore()
        perms = [Permission(Access.NONE, self._domid), Permission(Access.READ, client_domid)]
        # ring-ref complete before event-channel exists: what a client watches is whole. (One
        # round trip: the store carries out a connection's requests in order.)
        values = (advertised.ring_ref, advertised.port)
        try:
            await xs.write_many(
                [
                    (f"{path}/{key}", str(v).encode(), perms)
                    for key, v in zip(_KEYS, values, strict=True)
                ]
            )
        except XenStoreError as exc:
            raise self._refused_to_serve(exc, path) from None

    async def withdraw(self, path: str) -> None:
        xs = await self._xenstore()
        try:
            await xs.rm(path)
        except XenStoreError as exc:
            if exc.errno != errno.ENOENT:  # gone, parents and all: fine
                raise self._refused_to_serve(exc, path) from None

    def _refused_to_serve(self, exc: XenStoreError, path: str) -> XenStoreError:
        if exc.errno not in REFUSED_ERRNOS:
            return exc
        own = f"/local/domain/{self._domid}/data"
        return exc.explained(
            f"cannot serve at {path}: XenStore does not let domain {self._domid} write the"
            " advertisement there",
            f"a domain may write below {own} (where a port name puts the vchan) and where the"
            " toolstack allows it: give a port name, or a path this domain may write",
        )

    async def tidy(self, path: str) -> None:
        directories = own_directories(self._domid, path)
        if not directories:
            return
        xs = await self._xenstore()
        # Siblings are the common case (a server's listeners share a directory), and a
        # transaction that lists a crowded directory conflicts with every sibling that
        # closes meanwhile: one plain look first. Every listener looks after withdrawing its
        # own node, so the last to withdraw sees the directory empty.
        try:
            if await xs.has_children(directories[0]):
                return
        except XenStoreError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES):  # gone already, or not ours
                return
            raise
        async with self._transactions:
            # A conflict means a neighbour changed them meanwhile: look again (the caller
            # bounds the time). Whichever listener of a directory tidies last removes it.
            while True:
                tx = await xs.transaction_start()
                try:
                    for directory in directories:
                        if await xs.has_children(directory, tx=tx):
                            break
                        await xs.rm(directory, tx=tx)
                except XenStoreError as exc:
                    await xs.transaction_end(tx, commit=False)
                    # EIO: C xenstored 4.17's answer when another connection removed the
                    # directory after this transaction read it: gone already, as ENOENT.
                    if exc.errno in (errno.ENOENT, errno.EACCES, errno.EIO):
                        return
                    raise
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await xs.transaction_end(tx, commit=False)
                    raise
                try:
                    await xs.transaction_end(tx, commit=True)
                except XenStoreError as exc:
                    if exc.errno != errno.EAGAIN:
                        raise
                    continue
                return

    @asynccontextmanager
    async def lookup(self, server_domid: int, path: str) -> AsyncIterator[Lookup]:
        xs = await self._xenstore()
        async with contextlib.AsyncExitStack() as stack:
            yield _XenStoreLookup(
                xs, stack, server_domid, path, self._transactions, privileged=self._domid == 0
            )


@final
class _XenStoreLookup(Lookup):
    """Reads first; only if nothing usable is there, watches (the advertisement's path, and in
    dom0 ``@releaseDomain``) and reads again after each change, when dom0 also looks whether
    the server's domain is still there. The watches are set before the second read (their
    registration events count as changes), so no change is missed."""

    def __init__(
        self,
        xs: XenStoreClient,
        stack: contextlib.AsyncExitStack,
        server_domid: int,
        path: str,
        transactions: trio.Semaphore,
        *,
        privileged: bool,
    ) -> None:
        self._xs = xs
        self._transactions = transactions
        self._stack = stack
        # Only dom0 hears @releaseDomain and may read other domains' homes (C xenstored's
        # defaults): for others the watch would cost quota and tell nothing.
        self._watched = [f"{path}/event-channel", *(["@releaseDomain"] if privileged else [])]
        self._server_domid = server_domid
        self._path = path
        self._changes: list[Changes] = []
        self._looked = False
        self._polling = False
        self._server_seen = False  # its home existed once while we waited

    async def next(self) -> Advertised:
        while True:
            if self._looked:
                if not self._changes and not self._polling:
                    await self._watch()
                if self._polling:
                    await trio.sleep(POLL_INTERVAL)
                else:
                    await self._xs.wait_for_changes(*self._changes)
            self._looked = True
            advertised = await self._read()
            if advertised is not None:
                return advertised
            if len(self._changes) > 1:  # we hear of destroyed domains
                await self._check_server_domain()

    async def current(self) -> Advertised | None:
        return await self._read()

    async def _watch(self) -> None:
        try:
            for path in self._watched:
                self._changes.append(await self._stack.enter_async_context(self._xs.watching(path)))
        except XenStoreError as exc:
            if exc.errno in REFUSED_ERRNOS:
                raise exc.explained(
                    f"cannot connect to the vchan at {self._path}: XenStore does not let this"
                    " domain watch its advertisement",
                    f"is this the path that domain {self._server_domid} serves?",
                ) from None
            if exc.errno not in _QUOTA_ERRNOS:
                raise
            # The domain's watches are used up (C xenstored allows 128): look now and then.
            _log.info("%s; looking at %s every %s s instead", exc, self._path, POLL_INTERVAL)
            self._polling = True

    async def _read(self) -> Advertised | None:
        # Both as of one moment: a listener withdraws and advertises afresh at the same path
        # within milliseconds, and a ring-ref of one advertisement with the port of the next
        # would bind one connection's port to another's page.
        async with self._transactions:
            ring_ref, port = await self._xs.read_together([f"{self._path}/{k}" for k in _KEYS])
        for value in (ring_ref, port):
            if isinstance(value, XenStoreError):
                if value.errno not in (errno.ENOENT, errno.EACCES):  # not there, or not ours
                    raise value
                return None
        assert isinstance(ring_ref, bytes)
        assert isinstance(port, bytes)
        return Advertised(
            parse_advertised(ring_ref, "ring-ref", 0xFFFF_FFFF),
            parse_advertised(port, "event-channel", 0x7FFF_FFFF),
        )

    async def _check_server_domain(self) -> None:
        """Raise PeerGoneError if the server's domain has gone since we saw it.

        Only a domain that may read the server's home (dom0, as C xenstored's permissions
        go) can tell: for others the answer is EACCES whether it exists or not, and they do
        not hear ``@releaseDomain`` either. A domain not seen yet may still be created (a
        simulated host creates domains when their first process joins), so only a
        disappearance counts.
        """
        home = f"/local/domain/{self._server_domid}"
        try:
            await self._xs.read(home)
        except XenStoreError as exc:
            if exc.errno == errno.ENOENT and self._server_seen:
                raise PeerGoneError(
                    f"domain {self._server_domid} was destroyed while we waited for it to"
                    f" serve {self._path}"
                ) from None
            if exc.errno not in (errno.ENOENT, errno.EACCES):
                raise
        else:
            self._server_seen = True


# -- in memory ------------------------------------------------------------------------------------


@final
class MemoryAdvertisements(Advertisements):
    """Advertisements in a dict, for tests of the handshake without XenStore.

    Counts its operations in :attr:`calls`; :meth:`destroy_domain` makes lookups of that
    server's paths fail as XenStore's do when the domain goes.
    """

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, Advertised]] = {}
        self.calls: list[str] = []
        self._gone: set[int] = set()
        self._changed = trio.Event()

    def _change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def publish(self, path: str, client_domid: int, advertised: Advertised) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append(f"publish {path}")
        self.entries[path] = (client_domid, advertised)
        self._change()

    async def withdraw(self, path: str) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append(f"withdraw {path}")
        if self.entries.pop(path, None) is not None:
            self._change()

    async def tidy(self, path: str) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append(f"tidy {path}")

    def destroy_domain(self, domid: int) -> None:
        self._gone.add(domid)
        self._change()

    @asynccontextmanager
    async def lookup(self, server_domid: int, path: str) -> AsyncIterator[Lookup]:
        self.calls.append(f"lookup {path}")
        yield _MemoryLookup(self, server_domid, path)


@final
class _MemoryLookup(Lookup):
    def __init__(self, store: MemoryAdvertisements, server_domid: int, path: str) -> None:
        self._store = store
        self._server_domid = server_domid
        self._path = path
        self._last: object = None

    async def next(self) -> Advertised:
        while True:
            if self._server_domid in self._store._gone:
                raise PeerGoneError(f"domain {self._server_domid} was destroyed")
            entry = self._store.entries.get(self._path)
            if entry is not None and entry is not self._last:
                self._last = entry
                await trio.lowlevel.checkpoint()
                return entry[1]
            await self._store._changed.wait()

    async def current(self) -> Advertised | None:
        await trio.lowlevel.checkpoint()
        entry = self._store.entries.get(self._path)
        return None if entry is None else entry[1]

"""One client connection of the simulated XenStore: its state, and the loops that serve it.

Each connection has a reader (:func:`serve`) that decodes requests and hands each to the
store, and a writer that drains a bounded outbox. Replies and watch events, including events
for *other* connections, go through the outboxes, so a request never waits on a slow peer; a
peer that lets its outbox fill up is disconnected (as C xenstored drops a connection whose
output quota is exhausted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, final

import trio

from .._errors import ProtocolError
from .._xs_wire import Message, MessageDecoder, domain_path
from ._xs_transactions import Transaction
from ._xs_watches import Watches

#: Replies and events queued for a connection before it is considered stuck and dropped.
OUTBOX_MAX: Final = 1024

_RECEIVE_SIZE: Final = 65536


@final
class Connection:
    """A client, as domain ``domid``: its outbox, watches and open transactions."""

    def __init__(self, domid: int) -> None:
        self.domid = domid
        self.privileged = domid == 0
        self.home = domain_path(domid)
        self.cancel_scope = trio.CancelScope()
        self.watches = Watches(domid)
        self.transactions: dict[int, Transaction] = {}
        self.next_tx_id = 1
        self._outbox, self._outbox_out = trio.open_memory_channel[bytes](OUTBOX_MAX)

    def send(self, data: bytes) -> None:
        """Queue ``data``; drop the connection if it does not read what it is sent."""
        try:
            self._outbox.send_nowait(data)
        except trio.WouldBlock:
            self.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # already going away

    def end(self) -> None:
        """Forget the watches and transactions: no event is queued for it from now on."""
        self.watches.clear()
        self.transactions.clear()

    async def serve(
        self, stream: trio.abc.Stream, handle: Callable[[Connection, Message], None]
    ) -> None:
        """Read requests and ``handle`` each, sending what is queued, until the client hangs
        up, breaks the protocol or is dropped; then close ``stream``."""
        try:
            with self.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop, stream)
                    await self._receive_loop(stream, handle)
                    nursery.cancel_scope.cancel()
        finally:
            self.end()
            self._outbox.close()
            self._outbox_out.close()
            await trio.aclose_forcefully(stream)

    async def _receive_loop(
        self, stream: trio.abc.Stream, handle: Callable[[Connection, Message], None]
    ) -> None:
        decoder = MessageDecoder()
        while True:
            try:
                data = await stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            decoder.feed(data)
            while True:
                try:
                    request = decoder.next_message()
                except ProtocolError:
                    return  # payload over the limit: C xenstored drops the connection
                if request is None:
                    break
                handle(self, request)

    async def _send_loop(self, stream: trio.abc.Stream) -> None:
        try:
            async for data in self._outbox_out:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.cancel_scope.cancel()

"""One client connection of the simulated XenStore: its state, and the loops that serve it.

A connection reads requests and hands each to the store. Replies and watch events, including
events for *other* connections, are sent at once if the socket takes them, and are otherwise
queued in a bounded outbox, so a request never waits on a slow peer; a peer that lets its
outbox fill up is disconnected (as C xenstored drops a connection whose output quota is
exhausted).

On a socket (the host's case) the connection works on the file descriptor itself, with trio
only to wait: one task, and one pass of the scheduler per request, where trio's stream methods
and a writer task took four. While the outbox holds anything, it waits for the socket to take
it before it reads further requests. Other streams (tests use memory streams) are served by a
reader and a writer task.
"""

from __future__ import annotations

import collections
import os
import socket
from collections.abc import Callable
from typing import Final, final

import trio

from .._errors import ProtocolError
from .._xs_wire import Message, MessageDecoder, domain_path
from ._xs_transactions import Transaction
from ._xs_watches import Watches, WatchIndex

#: Replies and events queued for a connection before it is considered stuck and dropped.
OUTBOX_MAX: Final = 1024

_RECEIVE_SIZE: Final = 65536


@final
class Connection:
    """A client, as domain ``domid``: its outbox, watches and open transactions."""

    def __init__(self, domid: int, index: WatchIndex[Connection]) -> None:
        self.domid = domid
        self.privileged = domid == 0
        self.home = domain_path(domid)
        self.cancel_scope = trio.CancelScope()
        self.watches = Watches(domid, index, self)
        self.transactions: dict[int, Transaction] = {}
        self.next_tx_id = 1
        self._outbox: trio.MemorySendChannel[bytes] | None = None  # for other streams
        self._fd = -1  # the socket's, when serving one
        self._pending: collections.deque[bytes] = collections.deque()  # what it did not take
        self._reading: trio.CancelScope | None = None  # while reading requests

    def send(self, data: bytes) -> None:
        """Send ``data`` or queue it; drop the connection if it does not read what it is sent."""
        if self._fd < 0:
            if self._outbox is None:
                return  # not served (any more)
            try:
                self._outbox.send_nowait(data)
            except trio.WouldBlock:
                self.cancel_scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # already going away
            return
        if not self._pending:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.cancel_scope.cancel()  # the client is gone
                return
            if sent == len(data):
                return
            data = data[sent:]
        if len(self._pending) >= OUTBOX_MAX:
            self.cancel_scope.cancel()
            return
        self._pending.append(data)
        if self._reading is not None:
            self._reading.cancel()  # stop waiting for requests: wait for the socket to take it

    def end(self) -> None:
        """Forget the watches and transactions: no event is queued for it from now on."""
        self.watches.clear()
        self.transactions.clear()

    async def serve(
        self, stream: trio.abc.Stream | socket.socket, handle: Callable[[Connection, Message], None]
    ) -> None:
        """Read requests and ``handle`` each, sending what is queued, until the client hangs
        up, breaks the protocol or is dropped; then close ``stream`` (see :func:`close_stream`)."""
        try:
            with self.cancel_scope:
                if isinstance(stream, (socket.socket, trio.SocketStream)):
                    sock = stream if isinstance(stream, socket.socket) else stream.socket
                    self._fd = sock.fileno()
                    await self._serve_socket(handle)
                else:
                    self._outbox, outbox = trio.open_memory_channel[bytes](OUTBOX_MAX)
                    with outbox:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._send_loop, stream, outbox)
                            await self._receive_loop(stream, handle)
                            nursery.cancel_scope.cancel()
        finally:
            self._fd = -1
            self._pending.clear()
            self.end()
            if self._outbox is not None:
                self._outbox.close()
                self._outbox = None
            await close_stream(stream)

    async def _serve_socket(self, handle: Callable[[Connection, Message], None]) -> None:
        decoder = MessageDecoder()
        while True:
            # One cancel scope per stall of the outbox, not per request: send() cancels it
            # when the socket does not take a reply, and only then does this task wait for
            # the socket to take the rest before it reads on.
            stalled = True  # unless it returns: send() cancelled the wait for a request
            with trio.CancelScope() as self._reading:
                stalled = await self._read_requests(decoder, handle)
            self._reading = None
            if not stalled and not self._pending:
                return
            while self._pending:
                await trio.lowlevel.wait_writable(self._fd)
                if not self._write_pending():
                    return

    async def _read_requests(
        self, decoder: MessageDecoder, handle: Callable[[Connection, Message], None]
    ) -> bool:
        """Handle requests until the outbox holds something (True), or the client hangs up or
        breaks the protocol (False); :meth:`send` cancels the wait for a request when it
        queues something meanwhile."""
        fd = self._fd
        waited = True
        while True:
            try:
                data = os.read(fd, _RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                waited = True
                continue
            except OSError:
                return False
            if not data:
                return False
            if not self._handle_all(decoder, data, handle):
                return False
            if self._pending:
                return True
            if not waited:  # a client whose requests are always there
                await trio.lowlevel.checkpoint()  # must not keep the others from being served
            waited = False

    def _handle_all(
        self,
        decoder: MessageDecoder,
        data: bytes | bytearray,
        handle: Callable[[Connection, Message], None],
    ) -> bool:
        """Handle every whole request ``data`` completes; False if the client must be dropped
        (a payload over the limit: C xenstored drops the connection)."""
        decoder.feed(data)
        while True:
            try:
                request = decoder.next_message()
            except ProtocolError:
                return False
            if request is None:
                return True
            handle(self, request)

    def _write_pending(self) -> bool:
        """Write what the socket takes of the outbox; False if the client is gone."""
        while self._pending:
            data = self._pending[0]
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if sent < len(data):
                self._pending[0] = data[sent:]
                return True
            self._pending.popleft()
        return True

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
            if not self._handle_all(decoder, data, handle):
                return

    async def _send_loop(
        self, stream: trio.abc.Stream, outbox: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        try:
            async for data in outbox:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.cancel_scope.cancel()


async def close_stream(stream: trio.abc.Stream | socket.socket) -> None:
    """Close a client's stream at once; a plain socket without a pass of the scheduler (no
    task waits on it any more: only its own serving task did)."""
    if isinstance(stream, socket.socket):
        stream.close()
    else:
        await trio.aclose_forcefully(stream)

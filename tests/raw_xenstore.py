"""A raw XenStore connection for tests (:class:`RawConnection`)."""

from __future__ import annotations

import trio

from trio_vchan._xs_wire import Message, MessageDecoder, MessageType


class RawConnection:
    """Speaks to the store message by message, to send what the client would refuse."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = MessageDecoder()

    async def send(self, type: int, payload: bytes, *, tx_id: int = 0, req_id: int = 7) -> None:
        await self.stream.send_all(Message(type, req_id, tx_id, payload).encode())

    async def receive(self) -> Message | None:
        """The next message, or None at EOF."""
        while (message := self.decoder.next_message()) is None:
            data = await self.stream.receive_some()
            if not data:
                return None
            self.decoder.feed(data)
        return message

    async def receive_reply(self) -> Message | None:
        """The next message that is not a watch event (from a watch registered before)."""
        reply = await self.receive()
        while reply is not None and reply.type == MessageType.WATCH_EVENT:
            reply = await self.receive()
        return reply

    async def request(self, type: int, payload: bytes, *, tx_id: int = 0) -> Message:
        await self.send(type, payload, tx_id=tx_id)
        reply = await self.receive_reply()
        assert reply is not None
        assert reply.req_id == 7
        return reply

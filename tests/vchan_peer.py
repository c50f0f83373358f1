"""A vchan peer in its own process, for cross-process tests on a simulated host.

    python vchan_peer.py serve CLIENT_DOMID PORT ACTION [ARG]
    python vchan_peer.py connect SERVER_DOMID PORT ACTION [ARG]

Its domain comes from TRIO_VCHAN_DOMID. It prints "connected" once the vchan is up, then:

- ``echo``: sends back everything it receives, until end of stream;
- ``exchange N``: sends N bytes of the test pattern while receiving N bytes, then prints the
  SHA-256 of what it sent and of what it received, and closes;
- ``send N``: sends N bytes of the test pattern, prints its SHA-256, then closes;
- ``flood``: sends the test pattern until it is killed.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import trio_vchan

BLOCK = bytes(range(256)) * 4096 + b"trio-vchan"  # 1 MiB and a bit: chunks never line up


def pattern(total: int) -> list[bytes]:
    """The test pattern, cut into pieces of varying sizes."""
    pieces, offset = [], 0
    while offset < total:
        size = min(total - offset, 65536 + (offset % 7919))
        start = offset % len(BLOCK)
        piece = (BLOCK[start:] + BLOCK)[:size]
        pieces.append(piece)
        offset += size
    return pieces


async def send_pattern(stream: trio_vchan.VchanStream, total: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern(total):
        digest.update(piece)
        await stream.send_all(piece)
    return digest.hexdigest()


async def receive_exactly(stream: trio_vchan.VchanStream, total: int) -> str:
    digest = hashlib.sha256()
    while total:
        data = await stream.receive_some(min(total, 1 << 20))
        if not data:
            raise EOFError(f"end of stream with {total} bytes still expected")
        digest.update(data)
        total -= len(data)
    return digest.hexdigest()


@asynccontextmanager
async def open_vchan(role: str, domid: int, port: str) -> AsyncIterator[trio_vchan.VchanStream]:
    if role == "serve":
        async with trio_vchan.serve(domid, port, read_size=65536, write_size=65536) as stream:
            yield stream
    else:
        async with trio_vchan.connect(domid, port) as stream:
            yield stream


async def main(role: str, domid: int, port: str, action: str, arg: int) -> None:
    async with open_vchan(role, domid, port) as stream:
        print("connected", flush=True)
        if action == "echo":
            while data := await stream.receive_some():
                await stream.send_all(data)
        elif action == "exchange":
            results: dict[str, str] = {}

            async def send() -> None:
                results["sent"] = await send_pattern(stream, arg)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                results["received"] = await receive_exactly(stream, arg)
            print(results["sent"], results["received"], flush=True)
        elif action == "send":
            print(await send_pattern(stream, arg), flush=True)
        elif action == "flood":
            while True:
                await stream.send_all(BLOCK)


if __name__ == "__main__":
    role, domid, port, action = sys.argv[1:5]
    arg = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    trio.run(main, role, int(domid), port, action, arg)

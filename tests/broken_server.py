"""A vchan echo server with a planted bug, for the hostile peer to find.

    python tests/broken_server.py PORT CLIENT_DOMID   (as a domain of a simulated host)

trio-vchan does the handshake, but the echo loop is hand-written over the shared page, and it
trusts the peer's consumer index: a ``cons`` ahead of our ``prod`` reads as more free space
than the ring has (the subtraction is not taken modulo 2**32 and not checked against the ring
size), and the wrapped part of the write then runs past the end of our ring (and of the
page: the server crashes). With ``--correct`` the loop checks the index, as it must.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable

import trio

import trio_vchan
from trio_vchan._backend import PAGE_SIZE
from trio_vchan._layout import CLI_LIVE, LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD

MASK = 0xFFFF_FFFF
#: The rings of choose_orders(65536, 1024): the one we read in pages of its own, the one we
#: write in the shared page, at its end.
LEFT_SIZE, RIGHT_AT, RIGHT_SIZE = 65536, 2048, 2048


def u32(page: memoryview, offset: int) -> int:
    return int.from_bytes(page[offset : offset + 4], "little")


def set_u32(page: memoryview, offset: int, value: int) -> None:
    page[offset : offset + 4] = (value & MASK).to_bytes(4, "little")


def make_echo(correct: bool) -> Callable[[trio_vchan.VchanStream], Awaitable[None]]:
    async def echo(stream: trio_vchan.VchanStream) -> None:
        # The one share holds the shared page and then the pages of the ring we read.
        pages = stream._endpoint.regions[0].buffer
        async with stream:
            with pages[:PAGE_SIZE] as page, pages[PAGE_SIZE : PAGE_SIZE + LEFT_SIZE] as left:
                await echo_loop(page, left)

    async def echo_loop(page: memoryview, left: memoryview) -> None:
        cons = prod = 0
        pending = bytearray()
        while page[CLI_LIVE] == 1:
            ready = (u32(page, LEFT_PROD) - cons) & MASK
            if ready > LEFT_SIZE:
                return  # that one it checks: the peer broke the protocol
            for i in range(ready):
                pending.append(left[(cons + i) & (LEFT_SIZE - 1)])
            cons = (cons + ready) & MASK
            set_u32(page, LEFT_CONS, cons)
            if correct:
                used = (prod - u32(page, RIGHT_CONS)) & MASK
                if used > RIGHT_SIZE:
                    return  # the peer broke the protocol
            else:  # the planted bug
                used = prod - u32(page, RIGHT_CONS)
            count = max(0, min(len(pending), RIGHT_SIZE - used))
            start = prod & (RIGHT_SIZE - 1)
            first = min(count, RIGHT_SIZE - start)
            page[RIGHT_AT + start : RIGHT_AT + start + first] = pending[:first]
            rest = count - first  # wraps to the start of the ring
            page[RIGHT_AT : RIGHT_AT + rest] = pending[first:count]
            del pending[:count]
            prod = (prod + count) & MASK
            set_u32(page, RIGHT_PROD, prod)
            await trio.sleep(0.001)  # polls: no events needed

    return echo


async def main(port: str, client: int, correct: bool) -> None:
    print("serving", flush=True)
    await trio_vchan.serve_vchan(
        make_echo(correct), [client], port, read_size=LEFT_SIZE, write_size=1024
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port")
    parser.add_argument("client", type=int)
    parser.add_argument("--correct", action="store_true")
    args = parser.parse_args()
    trio.run(main, args.port, args.client, args.correct)
    sys.exit(0)

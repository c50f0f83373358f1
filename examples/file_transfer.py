"""Send a file from one domain to another and check that it arrived intact.

    python examples/file_transfer.py receive SERVER_DOMID PORT OUTPUT   # in the client domain
    python examples/file_transfer.py send CLIENT_DOMID PORT INPUT       # in the server domain

The sender serves; the receiver connects, writes what it reads to OUTPUT and prints the SHA-256
of what it received, which the sender prints too.
"""

from __future__ import annotations

import hashlib
import sys

import trio

import trio_vchan

CHUNK = 1 << 20


async def send(client_domid: int, port: str, path: str) -> None:
    digest = hashlib.sha256()
    async with (
        trio_vchan.serve(client_domid, port, write_size=1 << 20) as stream,
        await trio.open_file(path, "rb") as source,
    ):
        while chunk := await source.read(CHUNK):
            digest.update(chunk)
            await stream.send_all(chunk)
    print(digest.hexdigest())


async def receive(server_domid: int, port: str, path: str) -> None:
    digest = hashlib.sha256()
    async with (
        trio_vchan.connect(server_domid, port) as stream,
        await trio.open_file(path, "wb") as sink,
    ):
        while chunk := await stream.receive_some(CHUNK):
            digest.update(chunk)
            await sink.write(chunk)
    print(digest.hexdigest())


if __name__ == "__main__":
    mode, domid, port, path = sys.argv[1:5]
    trio.run(send if mode == "send" else receive, int(domid), port, path)

"""Send a file from one domain to another and check that it arrived intact.

    python examples/file_transfer.py receive SERVER_DOMID PORT OUTPUT   # in the client domain
    python examples/file_transfer.py send CLIENT_DOMID PORT INPUT       # in the server domain

The sender serves; the receiver connects, writes what it reads to OUTPUT and prints the SHA-256
of what it received, which the sender prints too.
"""

from __future__ import annotations

import argparse
import hashlib

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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", metavar="send|receive", choices=["send", "receive"])
    parser.add_argument(
        "domid", metavar="DOMID", type=int, help="the other domain: SERVER_DOMID or CLIENT_DOMID"
    )
    parser.add_argument("port", metavar="PORT", help="the vchan's name")
    parser.add_argument("path", metavar="FILE", help="INPUT to send, or OUTPUT to write")
    args = parser.parse_args()  # a bad command line: usage, and status 2
    trio.run(send if args.mode == "send" else receive, args.domid, args.port, args.path)

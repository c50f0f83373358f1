"""Echo every byte back, to several client domains at once, until interrupted.

    python examples/echo_server.py PORT DOMID [DOMID ...]

Run it inside a domain (on Xen, or on a simulated host: ``trio-vchan sim -- python ...``).
Each listed domain may connect, disconnect and reconnect; every connection gets its own task.
Stop it with Ctrl-C (SIGINT), which withdraws its XenStore advertisements.
"""

from __future__ import annotations

import argparse
import signal
import sys

import trio

import trio_vchan


async def echo(stream: trio_vchan.VchanStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
        except trio.BrokenResourceError as exc:  # this client broke the vchan: serve the others
            print(f"dropped domain {stream.peer_domid}: {exc}", file=sys.stderr)


async def main(port: str, client_domids: list[int]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio_vchan.serve_vchan, echo, client_domids, port)
            print(f"echoing on {port!r} for domains {[lst.client_domid for lst in listeners]}")
            sys.stdout.flush()
            async for _ in signals:  # stopping cancels the listeners: they withdraw their
                nursery.cancel_scope.cancel()  # advertisements from XenStore on the way out
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("port", metavar="PORT", help="the vchan's name")
    parser.add_argument(
        "client_domids", metavar="DOMID", type=int, nargs="+", help="a client domain"
    )
    args = parser.parse_args()  # a bad command line: usage, and status 2
    trio.run(main, args.port, args.client_domids)

"""The ``trio-vchan sim`` subcommand: run a simulated host, optionally around one command."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING

import trio

from ._sim._host import SimulatedHost
from ._sim._platform import ENV_DIR, ENV_DOMID, parse_domid

if TYPE_CHECKING:
    from collections.abc import Sequence


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sim`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "sim",
        help="run a simulated Xen host",
        description=(
            "Run a simulated Xen host until interrupted, printing TRIO_VCHAN_SIM=<dir>; or run "
            "COMMAND inside it (with TRIO_VCHAN_SIM set, and TRIO_VCHAN_DOMID=0 unless it is "
            "already set) and exit with its status."
        ),
    )
    configure(parser)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the subcommand's options to ``parser``."""
    parser.add_argument(
        "--dir",
        metavar="DIR",
        help="the host's directory (created, must be empty; default: a private temporary one)",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="a command to run"
    )


async def run(args: argparse.Namespace) -> int:
    """Run the subcommand; return the exit status."""
    command: list[str] = list(args.command or [])
    if command[:1] == ["--"]:
        command = command[1:]
    domid = 0
    if command and os.environ.get(ENV_DOMID):
        try:
            domid = parse_domid(os.environ[ENV_DOMID])
        except ValueError as exc:
            print(f"trio-vchan sim: {exc}", file=sys.stderr)
            return 2
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with SimulatedHost(args.dir) as host:
            if not command:
                print(f"{ENV_DIR}={host.directory}", flush=True)
                async for _ in signals:
                    return 0
            env = {**os.environ, **host.environ(domid)}
            async with trio.open_nursery() as nursery:

                async def forward_signals() -> None:
                    async for signum in signals:
                        process.send_signal(signum)

                try:
                    process = await trio.lowlevel.open_process(command, env=env)
                except OSError as exc:
                    print(f"trio-vchan sim: cannot run {command[0]!r}: {exc}", file=sys.stderr)
                    return 127
                nursery.start_soon(forward_signals)
                try:
                    status = await process.wait()
                finally:
                    nursery.cancel_scope.cancel()
            return 128 - status if status < 0 else status
    return 0  # unreachable: the signal iterator never ends


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trio_vchan._sim_cli [--dir DIR] [-- COMMAND ...]``."""
    parser = argparse.ArgumentParser(prog="trio-vchan sim")
    configure(parser)
    return trio.run(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""The ``trio-vchan`` command: its parser, and running the chosen subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import trio

from .._version import __version__
from . import _cat, _proxy, _sim, _socket_proxy
from ._status import ExitStatus, report

PROG: Final = "trio-vchan"

DESCRIPTION = """\
Xen vchan from the command line: byte streams between Xen domains through shared memory,
or between processes of a simulated Xen host (`trio-vchan sim`).
"""

EPILOG = """\
examples:
  trio-vchan cat -l 1 foo > copy-of-foo     # on domain 2: receive a file from domain 1
  trio-vchan cat 2 foo < foo                # on domain 1: send it
  trio-vchan proxy -l 1 web --tcp 127.0.0.1:80
  vchan-socket-proxy -m server 0 /local/domain/1/data/qmp /run/qmp.sock   # as Xen's
  trio-vchan sim -- sh -c 'trio-vchan cat --domid 2 -l 1 foo > copy &
                           trio-vchan cat --domid 1 2 foo < foo; wait'

Run `trio-vchan COMMAND --help` for each command's options, examples and exit statuses.
"""

AddParser = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
Runner = Callable[[argparse.Namespace], Awaitable[int]]

#: Each subcommand's ``add_parser`` and ``run``, in the order of ``--help``.
_SUBCOMMANDS: Final[dict[str, tuple[AddParser, Runner]]] = {
    "cat": (_cat.add_parser, _cat.run),
    "proxy": (_proxy.add_parser, _proxy.run),
    "sim": (_sim.add_parser, _sim.run),
}


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser, which reports an argument it does not know with its own usage.

    argparse hands a subcommand's unknown arguments up to the top-level parser, whose error
    shows ``trio-vchan [-h] [--version] COMMAND ...``: no help to someone who mistyped an
    option of ``cat``.
    """

    def parse_known_args(  # type: ignore[override]  # one signature for typeshed's overloads
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        known, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return known, extras


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``trio-vchan`` and all its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="subcommand", metavar="COMMAND", required=True, parser_class=_SubcommandParser
    )
    for add_parser, _ in _SUBCOMMANDS.values():
        add_parser(subparsers)
    # Listed for --help only: main() hands its arguments to its own parser (see there).
    subparsers.add_parser(
        _SOCKET_PROXY,
        help="Xen's vchan-socket-proxy, same command line (also installed under that name)",
        add_help=False,
    )
    return parser


#: The drop-in for Xen's program: it has the C program's command line and its status 1 for a
#: bad one, so it is parsed apart from the other commands (which exit 2).
_SOCKET_PROXY: Final = "vchan-socket-proxy"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``trio-vchan`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    A bad command line exits with status 2 (argparse's ``SystemExit``).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == [_SOCKET_PROXY]:
        return _socket_proxy.main(arguments[1:], prog=f"{PROG} {_SOCKET_PROXY}")
    args = build_parser().parse_args(arguments)
    _, run = _SUBCOMMANDS[args.subcommand]
    return run_command(f"{PROG} {args.subcommand}", run, args)


def run_command(prog: str, run: Runner, args: argparse.Namespace) -> int:
    """Run a parsed command in Trio; report an expected error in one line and return the status."""
    try:
        return trio.run(run, args)
    except KeyboardInterrupt:  # before the command watched for SIGINT itself
        return ExitStatus.INTERRUPTED
    except Exception as exc:
        return report(prog, exc)


if __name__ == "__main__":
    sys.exit(main())

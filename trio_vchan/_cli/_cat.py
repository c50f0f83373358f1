"""``trio-vchan cat``: standard input and output over a vchan, compatible with xencat."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Final

import trio

from .. import _api
from .._backend import Backend
from .._stream import VchanStream
from ._bridge import Ending, Local, LocalError, Transfer, bridge
from ._options import (
    add_domain_options,
    add_output_options,
    add_wait_options,
    domain,
    handshake_timeout,
    port,
    subcommand_parser,
)
from ._platform import open_backend, resolve_domain
from ._progress import ProgressLine
from ._signals import run_interruptible
from ._status import CommandError, ExitStatus, describe
from ._stdio import (
    open_stdin,
    open_stdout,
    stderr_is_terminal,
    stdin_is_null,
    stdin_is_terminal,
    stdin_size,
)
from ._waiting import Wait, check_other_domain, waiting

DESCRIPTION = """\
Connect standard input and output to a vchan, as xencat does.

With -l, this domain is the vchan server: it waits for one connection from domain DOMID on
PORT. Without -l it is the client: it connects to the server in domain DOMID (waiting until
that server is there). DOMID is a domain id or a domain's name. Standard input goes to the
vchan, the vchan to standard output. As xencat, it says "Connected." on stderr once
connected and "Disconnected." once the vchan has closed (unless --quiet). A wait longer
than a second is mentioned once on stderr (unless --quiet); --timeout gives up.

vchan has no half-close, so cat ends when either direction ends:
  - the peer closes the vchan: whatever it sent is written out, then cat exits (with
    status 1 if standard input had supplied data but not ended: not all of it was sent;
    but a standard input that is a terminal is someone typing, for whom the peer's close
    is the end of the conversation: cat says "the peer closed the vchan" and exits 0);
  - standard input ends: once all of it is in the vchan, cat closes the vchan (the peer
    still receives every byte) and exits. With --keep-open it instead goes on receiving
    until the peer closes. A standard input that is /dev/null (as a script's background
    jobs get) or closed counts as nothing to send: cat only receives.
"""

EPILOG = """\
examples:
  trio-vchan cat -l 1 foo > copy-of-foo     # on domain 2: receive a file from domain 1
  trio-vchan cat 2 foo < foo                # on domain 1: send it
  trio-vchan cat 0 log | head               # read the first lines a server in dom0 sends
  echo status | trio-vchan cat --keep-open 0 control   # a request, then its whole answer
  # both ends on one simulated host:
  trio-vchan sim -- sh -c 'trio-vchan cat --domid 2 -l 1 foo > copy &
                           trio-vchan cat --domid 1 2 foo < foo; wait'

exit status:
  0    done: everything read was delivered, or the peer closed the vchan while
       standard input was a terminal
  1    the vchan, the peer or the platform failed, or the peer closed the vchan after
       standard input (not a terminal) had supplied data and before it ended
  2    bad command line, or DOMID is this domain
  124  --timeout ran out before the other domain was there
  130  interrupted (SIGINT, Ctrl-C); 143: SIGTERM. The vchan was closed cleanly.
  141  standard output was closed early (| head); nothing is printed
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``cat`` subcommand to ``subparsers``."""
    parser = subcommand_parser(
        subparsers,
        "cat",
        help="connect stdin and stdout to a vchan (xencat)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument(
        "-l",
        "--listen",
        action="store_true",
        help="be the server: wait for a connection from domain DOMID",
    )
    parser.add_argument(
        "peer",
        type=domain,
        metavar="DOMID",
        help="the other domain (the client with -l): its id, or its name (as xl list shows)",
    )
    parser.add_argument(
        "port", type=port, metavar="PORT", help="the vchan's name ([a-zA-Z0-9_-]+) or path"
    )
    parser.add_argument(
        "--keep-open",
        action="store_true",
        help="after standard input ends, keep receiving until the peer closes the vchan",
    )
    add_wait_options(
        parser,
        timeout_help="give up (status 124) if the other domain is not there within SECONDS",
    )
    add_domain_options(parser)
    add_output_options(
        parser,
        progress_help=(
            "show bytes moved and the rate on stderr (default: when stderr is a terminal and"
            " stdout is not)"
        ),
    )


async def run(args: argparse.Namespace) -> int:
    """Run ``trio-vchan cat``; return the exit status."""
    if args.handshake_timeout is not None and not args.listen:
        raise CommandError(
            "--handshake-timeout is for the server side: use it with -l", ExitStatus.USAGE
        )
    return await run_interruptible(partial(_cat, args))


def _wants_progress(requested: bool | None) -> bool:
    """``--progress``/``--quiet``, else on a terminal unless it is a conversation: shown when
    the output goes elsewhere (receiving a file) or the input comes from elsewhere (sending
    one), not when someone types and reads at the terminal."""
    if requested is not None:
        return requested
    if not stderr_is_terminal():
        return False
    sending = not stdin_is_terminal() and not stdin_is_null()
    return not os.isatty(1) or sending


def _open_vchan(
    args: argparse.Namespace, backend: Backend, peer: int
) -> AbstractAsyncContextManager[VchanStream]:
    if args.listen:
        size: int = args.buffer_size
        return _api.serve(
            peer,
            args.port,
            read_size=size,
            write_size=size,
            backend=backend,
            handshake_timeout=handshake_timeout(args.handshake_timeout),
        )
    return _api.connect(peer, args.port, backend=backend)


def _say(message: str, *, prefix: str = "trio-vchan cat: ") -> None:
    # As for progress: a message is not worth failing the transfer for.
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        print(f"{prefix}{message}", file=sys.stderr, flush=True)


#: xencat's own lines on stderr, word for word, for scripts that wait for them.
CONNECTED: Final = "Connected."
DISCONNECTED: Final = "Disconnected."


async def _cat(args: argparse.Namespace) -> int:
    progress = (
        ProgressLine(sys.stderr, total=stdin_size()) if _wants_progress(args.progress) else None
    )
    transfer = Transfer(observer=progress)
    nothing_to_send = stdin_is_null()
    ending: Ending | ExitStatus = ExitStatus.OK
    with open_backend(args.domid) as backend:
        peer = await resolve_domain(args.peer, backend)
        check_other_domain(backend.domid, peer)
        wait = Wait.between(backend.domid, peer, args.port, listening=args.listen)
        notify = None if args.progress is False else _say
        try:
            async with (
                waiting(
                    wait, give_up_after=args.timeout, notify=notify, backend=backend
                ) as connected,
                _open_vchan(args, backend, peer) as vchan,
            ):
                connected()
                if notify is not None:
                    _say(CONNECTED, prefix="")
                async with open_stdout() as stdout:
                    if progress is not None:
                        progress.start()
                    ending = await _copy(vchan, stdout, args, transfer, nothing_to_send)
        finally:
            if progress is not None:
                progress.finish(transfer)
    if isinstance(ending, ExitStatus):
        return ending
    if notify is not None:  # the vchan closed without an error (as xencat, whatever the input)
        _say(DISCONNECTED, prefix="")
    if ending is Ending.PEER_CLOSED_DURING_INPUT:
        # Unsent input matters in a pipe (a transfer cut short); at a terminal, the peer
        # hanging up is how a conversation ends (as ssh's "Connection to ... closed.").
        if not stdin_is_terminal():
            raise CommandError("the peer closed the vchan before the end of stdin")
        if notify is not None:
            notify(Ending.PEER_CLOSED.value)
    return ExitStatus.OK


async def _copy(
    vchan: VchanStream,
    stdout: trio.abc.SendStream,
    args: argparse.Namespace,
    transfer: Transfer,
    nothing_to_send: bool,
) -> Ending | ExitStatus:
    """Run the bridge; return how it ended, or OUTPUT_CLOSED (``| head`` had enough)."""
    stdin = None if nothing_to_send else open_stdin()
    try:
        ending = await bridge(
            vchan,
            Local(stdin, stdout, "stdin", "stdout"),
            chunk_size=args.buffer_size,
            transfer=transfer,
            input_ends_session=not args.keep_open,
        )
    except LocalError as exc:
        if exc.output_closed:
            return ExitStatus.OUTPUT_CLOSED
        raise CommandError(describe(exc)) from None
    finally:
        if stdin is not None:
            stdin.close()
    return ending

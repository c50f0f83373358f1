"""Exit statuses, and how the command line reports an error that ended a command."""

from __future__ import annotations

import enum
import signal
import sys
from collections.abc import Sequence
from typing import TextIO

import trio

from .._errors import BackendUnavailableError, ProtocolError


class ExitStatus(enum.IntEnum):
    """What ``trio-vchan`` exits with (the CLI page of the documentation lists them)."""

    #: Done: every byte that was read was delivered.
    OK = 0
    #: The vchan, the peer, the platform or a local file or socket failed.
    FAILURE = 1
    #: A bad command line (argparse's own status), or a vchan to our own domain.
    USAGE = 2
    #: ``--timeout`` ran out before the other domain was there (as ``timeout(1)``'s 124).
    TIMED_OUT = 124
    #: Interrupted by SIGINT (Ctrl-C); the vchan was closed cleanly.
    INTERRUPTED = 128 + signal.SIGINT
    #: Standard output was closed early (``| head``), as a process killed by SIGPIPE.
    OUTPUT_CLOSED = 128 + signal.SIGPIPE
    #: Stopped by SIGTERM; the vchan was closed cleanly.
    TERMINATED = 128 + signal.SIGTERM


class CommandError(Exception):
    """An error the command reports in one line (no traceback) and exits with ``status`` for.

    Args:
        message: what went wrong, for a human.
        status: the exit status.
    """

    def __init__(self, message: str, status: ExitStatus = ExitStatus.FAILURE) -> None:
        super().__init__(message)
        self.status = status


#: Errors that are the platform's, the peer's or the environment's fault rather than ours.
_EXPECTED: tuple[type[Exception], ...] = (
    CommandError,
    BackendUnavailableError,
    ProtocolError,
    trio.BrokenResourceError,
    OSError,
)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, with exception groups (trio nurseries') flattened."""
    # Duck-typed: BaseExceptionGroup is a builtin from Python 3.11 and a backport before.
    nested: Sequence[BaseException] | None = getattr(exc, "exceptions", None)
    if nested is None or isinstance(exc, OSError):
        return [exc]
    return [leaf for inner in nested for leaf in leaves(inner)]


def describe(exc: BaseException) -> str:
    """One line for an expected error: its message, then those of its causes that it does
    not already say (a message often quotes its cause)."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None:
        text = str(current) or type(current).__name__
        if not any(text in part for part in parts):
            parts.append(text)
        current = current.__cause__
    return ": ".join(parts)


def report(prog: str, exc: BaseException, stderr: TextIO | None = None) -> ExitStatus:
    """Print an expected error that ended ``prog`` and return the status to exit with.

    Raises:
        BaseException: ``exc`` itself, if any part of it is unexpected (a bug deserves its
            traceback).
    """
    found = leaves(exc)
    if not all(isinstance(leaf, _EXPECTED) for leaf in found):
        raise exc
    first = found[0]
    status = first.status if isinstance(first, CommandError) else ExitStatus.FAILURE
    print(f"{prog}: {describe(first)}", file=sys.stderr if stderr is None else stderr)
    return status

"""Run a command until it returns or SIGINT/SIGTERM asks it to stop."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import trio

from ._status import ExitStatus

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_interruptible(command: Callable[[], Awaitable[int]]) -> int:
    """Run ``command``; on SIGINT or SIGTERM cancel it, so its ``async with`` blocks close
    their vchans cleanly, and return 128 + the signal number.

    A signal that was ignored when the process started stays ignored, as Python itself does
    for SIGINT: non-interactive shells start background jobs so that Ctrl-C does not reach
    them. An exception from ``command`` is re-raised as it is (never in an exception group).
    """
    watched = [signum for signum in _STOP_SIGNALS if signal.getsignal(signum) != signal.SIG_IGN]
    if not watched:
        return await command()
    stopped_by: int | None = None
    failure: Exception | None = None
    status: int = ExitStatus.OK
    with trio.open_signal_receiver(*watched) as signals:
        async with trio.open_nursery() as nursery:
            work = trio.CancelScope()

            async def watch() -> None:
                nonlocal stopped_by
                async for signum in signals:
                    stopped_by = signum
                    work.cancel()
                    return

            nursery.start_soon(watch)
            with work:
                try:
                    status = await command()
                except Exception as exc:  # re-raised below, outside the nursery
                    failure = exc
            nursery.cancel_scope.cancel()
    if stopped_by is not None and (work.cancelled_caught or failure is not None):
        return 128 + stopped_by
    if failure is not None:
        raise failure
    return status

"""Progress and rate of a transfer, on one terminal line of standard error."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, TextIO

from ._bridge import Transfer

_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB")
_CLEAR_TO_END: Final = "\x1b[K"


def format_size(count: float) -> str:
    """``1536`` → ``"1.5 KiB"``: binary units, three significant digits."""
    unit = 0
    while count >= 1024 and unit < len(_UNITS) - 1:
        count /= 1024
        unit += 1
    if unit == 0:
        return f"{int(count)} B"
    decimals = 2 if count < 10 else 1 if count < 100 else 0
    return f"{count:.{decimals}f} {_UNITS[unit]}"


def format_rate(count: int, seconds: float) -> str:
    """Bytes per second, as ``"512 MiB/s"``."""
    return f"{format_size(count / seconds if seconds > 0 else 0)}/s"


def summary(transfer: Transfer, seconds: float) -> str:
    """``sent 1.00 GiB, received 0 B in 2.1 s (488 MiB/s)``."""
    return (
        f"sent {format_size(transfer.sent)}, received {format_size(transfer.received)}"
        f" in {seconds:.1f} s ({format_rate(transfer.sent + transfer.received, seconds)})"
    )


class ProgressLine:
    """Shows a :class:`Transfer` on one line that it rewrites, at most every ``interval``.

    Use it as the transfer's ``observer``: it renders while data moves (so a stalled transfer
    keeps its last line), and :meth:`finish` writes the final summary.

    Args:
        out: where to write (standard error).
        interval: the least time between two renderings, in seconds.
        clock: the time source, for tests.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._shown = self._started

    def start(self) -> None:
        """Start the clock: the rate counts from now (the connection, not the wait for it)."""
        self._started = self._shown = self._clock()

    def __call__(self, transfer: Transfer) -> None:
        now = self._clock()
        if now - self._shown >= self._interval:
            self._shown = now
            self._write(f"\r{summary(transfer, now - self._started)}{_CLEAR_TO_END}")

    def finish(self, transfer: Transfer) -> None:
        """Write the final summary and end the line."""
        self._write(f"\r{summary(transfer, self._clock() - self._started)}{_CLEAR_TO_END}\n")

    def _write(self, text: str) -> None:
        try:
            self._out.write(text)
            self._out.flush()
        except (BlockingIOError, BrokenPipeError):
            # stderr shares a terminal that stdout's FdStream made non-blocking, or nobody
            # reads it any more: progress is not worth failing the transfer for.
            pass

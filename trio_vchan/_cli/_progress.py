"""Progress and rate of a transfer, on one terminal line of standard error."""

from __future__ import annotations

import math
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


def format_duration(seconds: float) -> str:
    """``83`` → ``"1:23"``; ``3723`` → ``"1:02:03"`` (whole seconds, rounded up)."""
    whole = max(0, math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def running_line(transfer: Transfer, seconds: float, total: int | None) -> str:
    """The line while data moves: as :func:`summary`, and with the input's size known, how
    much of it was sent and the time left at the rate so far
    (``sent 1.00 GiB of 4.00 GiB (25%), received 0 B in 2.1 s (488 MiB/s), ETA 0:07``)."""
    if total is None or total <= 0:
        return summary(transfer, seconds)
    done = min(transfer.sent, total)
    percent = 100 * done // total
    sent = f"sent {format_size(transfer.sent)} of {format_size(total)} ({percent}%)"
    rate = format_rate(transfer.sent + transfer.received, seconds)
    line = f"{sent}, received {format_size(transfer.received)} in {seconds:.1f} s ({rate})"
    if 0 < done < total and seconds > 0:
        line += f", ETA {format_duration((total - done) * seconds / done)}"
    return line


def summary(transfer: Transfer, seconds: float) -> str:
    """``sent 1.00 GiB, received 0 B in 2.1 s (488 MiB/s)``."""
    return (
        f"sent {format_size(transfer.sent)}, received {format_size(transfer.received)}"
        f" in {seconds:.1f} s ({format_rate(transfer.sent + transfer.received, seconds)})"
    )


class ProgressLine:
    """Shows a :class:`Transfer` on one line that it rewrites, at most every ``interval``.

    Use it as the transfer's ``observer``: it renders at the first data and then while data
    moves (so a stalled transfer keeps its last line), and :meth:`finish` writes the final
    summary.

    Args:
        out: where to write (standard error).
        total: the size of the input, when known (a regular file): then the line shows the
            part sent and the time left.
        interval: the least time between two renderings, in seconds.
        clock: the time source, for tests.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        total: int | None = None,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        self._total = total
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._shown: float | None = None

    def start(self) -> None:
        """Start the clock: the rate counts from now (the connection, not the wait for it)."""
        self._started = self._clock()
        self._shown = None

    def __call__(self, transfer: Transfer) -> None:
        now = self._clock()
        if self._shown is None or now - self._shown >= self._interval:
            self._shown = now
            line = running_line(transfer, now - self._started, self._total)
            self._write(f"\r{line}{_CLEAR_TO_END}")

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

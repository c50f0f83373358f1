"""Standard input and output as trio streams, on duplicated descriptors.

:class:`trio.lowlevel.FdStream` puts its descriptor in non-blocking mode (and restores it on
close), so pipes and terminals are waited on without threads; regular files never block, so
they work too. Duplicating the descriptors leaves ``sys.stdin`` and ``sys.stdout`` alone.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import trio


def _open(fd: int) -> trio.lowlevel.FdStream:
    try:
        return trio.lowlevel.FdStream(os.dup(fd))
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        # The descriptor is not open (`<&-`): behave as if it were /dev/null.
        return trio.lowlevel.FdStream(os.open(os.devnull, os.O_RDWR))


def open_stdin() -> trio.lowlevel.FdStream:
    """Standard input as a receive stream (``/dev/null`` if descriptor 0 is closed)."""
    return _open(0)


def open_stdout() -> trio.lowlevel.FdStream:
    """Standard output as a send stream (``/dev/null`` if descriptor 1 is closed)."""
    return _open(1)


def stdin_is_null() -> bool:
    """Whether standard input is ``/dev/null`` or closed: there is nothing to send.

    Shells give background jobs of scripts ``/dev/null`` as their input, so this is how
    ``trio-vchan cat -l 1 PORT > file &`` knows it only receives.
    """
    try:
        here = os.fstat(0)
    except OSError:
        return True
    null = os.stat(os.devnull)
    return stat.S_ISCHR(here.st_mode) and here.st_rdev == null.st_rdev


def stdin_is_terminal() -> bool:
    """Whether standard input is a terminal: someone types, and a peer's close is the end."""
    try:
        return os.isatty(0)
    except OSError:
        return False


def stderr_is_terminal() -> bool:
    """Whether standard error is a terminal (progress is shown by default then)."""
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, ValueError, OSError):
        return False


def stdin_size() -> int | None:
    """How many bytes standard input has left to read, if it is a regular file (else None)."""
    try:
        here = os.fstat(0)
        if not stat.S_ISREG(here.st_mode):
            return None
        return max(0, here.st_size - os.lseek(0, 0, os.SEEK_CUR))
    except OSError:
        return None

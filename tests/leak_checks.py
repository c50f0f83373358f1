"""What a test process still holds: fds and grant mappings, for leak checks after each trial."""

from __future__ import annotations

import os

from conftest import open_fds


def live_fds() -> set[int]:
    """The fds open in this process (without the one that listing them used)."""
    fds = set()
    for fd in open_fds():
        try:
            os.fstat(fd)
        except OSError:
            continue
        fds.add(fd)
    return fds


def describe_fds(fds: set[int]) -> list[str]:
    described = []
    for fd in sorted(fds):
        try:
            described.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            described.append(str(fd))
    return described


def grant_mappings() -> int:
    """Shared-memory mappings of grant pages in this process."""
    with open("/proc/self/maps") as maps:
        return sum("trio-vchan-grant" in line for line in maps)

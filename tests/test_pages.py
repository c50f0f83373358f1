"""Pages: shared memory mapped with no fd kept, unmapped only when no view of it is left."""

from __future__ import annotations

import errno
import gc
import mmap
import os
import sys
from collections.abc import Iterator

import pytest
import trio
from subprocess_paths import SAFE_PATH

import trio_vchan
from trio_vchan._compiled import native
from trio_vchan._pages import Pages
from trio_vchan.sim import SimulatedHost

RW = mmap.PROT_READ | mmap.PROT_WRITE
PAGE = mmap.PAGESIZE


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("test-pages", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4 * PAGE)
    yield fd
    os.close(fd)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _address(view: memoryview) -> int:
    pointer = native.ffi.from_buffer(view)
    try:
        return int(native.ffi.cast("uintptr_t", pointer))
    finally:
        native.ffi.release(pointer)


def _is_mapped(address: int) -> bool:
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start <= address < end:
                return True
    return False


def test_a_mapping_keeps_no_fd_and_shares_the_memory() -> None:
    fd = os.memfd_create("test-pages", os.MFD_CLOEXEC)
    os.ftruncate(fd, 2 * PAGE)
    before = _open_fds()
    pages = Pages(fd, PAGE, RW, PAGE)  # the second page
    os.close(fd)
    assert _open_fds() == before - 1  # mmap's module would have kept a duplicate
    pages.view[:5] = b"hello"
    again = Pages(-1, PAGE, RW)  # anonymous memory is shared memory too
    again.view[:2] = b"ok"
    assert bytes(again.view[:2]) == b"ok"
    assert pages.release()
    assert again.release()


def test_writes_reach_the_file(memfd: int) -> None:
    pages = Pages(memfd, 2 * PAGE, RW)
    pages.view[PAGE : PAGE + 3] = b"abc"
    assert os.pread(memfd, 3, PAGE) == b"abc"
    os.pwrite(memfd, b"xyz", 7)
    assert bytes(pages.view[7:10]) == b"xyz"
    assert pages.release()


def test_release_waits_for_every_slice(memfd: int) -> None:
    unmapped: list[str] = []
    pages = Pages(memfd, PAGE, RW, unmapped=lambda: unmapped.append("unmapped"))
    address = _address(pages.view)
    piece = pages.view[100:200]
    assert pages.release() is False  # a slice is alive: nothing is unmapped
    assert unmapped == []
    assert _is_mapped(address)
    piece[0] = 7  # still valid memory
    pages.view[1] = 9  # and the view is still usable
    del piece
    assert pages.release() is True
    assert unmapped == ["unmapped"]
    assert not _is_mapped(address)
    with pytest.raises(ValueError, match="already unmapped"):
        _ = pages.view
    assert pages.release() is True  # idempotent
    assert unmapped == ["unmapped"]


def test_an_exported_view_holds_the_pages(memfd: int) -> None:
    unmapped: list[str] = []
    pages = Pages(memfd, PAGE, RW, unmapped=lambda: unmapped.append("unmapped"))
    pointer = native.ffi.from_buffer(pages.view)  # as the ring holds the shared page
    assert pages.release() is False
    assert unmapped == []
    native.ffi.release(pointer)
    assert pages.release() is True
    assert unmapped == ["unmapped"]


def test_the_last_view_unmaps_once_the_pages_are_dropped(memfd: int) -> None:
    unmapped: list[str] = []
    pages = Pages(memfd, PAGE, RW, unmapped=lambda: unmapped.append("unmapped"))
    address = _address(pages.view)
    piece = pages.view[:10]
    assert pages.release() is False
    del pages
    gc.collect()
    assert unmapped == []
    assert _is_mapped(address)
    piece[0] = 1
    del piece
    assert unmapped == ["unmapped"]
    assert not _is_mapped(address)


def test_read_only_pages_refuse_writes_without_a_fault(memfd: int) -> None:
    os.pwrite(memfd, b"data", 0)
    pages = Pages(memfd, PAGE, mmap.PROT_READ)
    assert pages.view.readonly
    assert bytes(pages.view[:4]) == b"data"
    with pytest.raises(TypeError):
        pages.view[0] = 1
    assert pages.release()


@pytest.mark.parametrize(
    ("fd", "offset", "code"),
    [(-5, 0, errno.EBADF), (None, 1, errno.EINVAL)],
    ids=["bad fd", "unaligned offset"],
)
def test_a_failed_mapping_says_why(memfd: int, fd: int | None, offset: int, code: int) -> None:
    with pytest.raises(OSError, match="mmap of 4096 bytes") as failure:
        Pages(memfd if fd is None else fd, PAGE, RW, offset)
    assert failure.value.errno == code


_CLIENT = """
import os, sys, trio, trio_vchan
def fds(): return len(os.listdir("/proc/self/fd"))
async def main():
    streams = [await trio_vchan.open_vchan_stream(1, "fds-warm-up")]  # XenStore, platform
    before = fds()
    for i in range(10):
        streams.append(await trio_vchan.open_vchan_stream(1, f"fds{i}"))
    print((fds() - before) / 10, flush=True)
    for stream in streams:
        await stream.aclose()
trio.run(main)
"""


async def test_a_vchan_holds_two_fds(sim: SimulatedHost) -> None:
    """A client's vchan holds its event channel's two eventfds and no more: its page and
    both external rings are mapped and closed."""
    server = sim.backend(1)
    ports = ["fds-warm-up", *(f"fds{i}" for i in range(10))]
    try:
        async with trio.open_nursery() as nursery:

            async def serve(port: str) -> None:
                listener = trio_vchan.VchanListener(
                    2, port, read_size=65536, write_size=65536, backend=server
                )
                async with listener, await listener.accept() as stream:
                    assert await stream.receive_some() == b""

            for port in ports:
                nursery.start_soon(serve, port)
            result = await trio.run_process(
                [sys.executable, *SAFE_PATH, "-c", _CLIENT],
                env=os.environ | sim.environ(2),
                capture_stdout=True,
            )
        assert float(result.stdout) == 2.0
    finally:
        server.close()

"""Xen's C libxenvchan wrapped with cffi and driven from Trio: the bench's second baseline.

What a careful Python user would write instead of using trio-vchan: the ring is libxenvchan's
(in C), the calls are non-blocking (``blocking = 0``), a wait is
``trio.lowlevel.wait_readable`` on ``libxenvchan_fd_for_select()`` followed by
``libxenvchan_wait()`` (which then does not block), and each call checkpoints as trio's
sockets do: a cancellation check first, a cancel-shielded checkpoint after a call that did not
have to wait. The calls that talk to XenStore (init, close) run in a thread. A client waits
for its server as vchan-socket-proxy does, with a XenStore watch on the vchan's path (here
``wait_readable`` on ``xs_fileno()``), trying ``libxenvchan_client_init()`` at each event; a
server withdraws its advertisement once its client is in, as trio-vchan and the C setup
benchmark (tests/interop/vchan_setup.c) do, so that a server offering the same path again is
not mistaken for the last one.

:func:`build` compiles the cffi module (API mode, against Debian's libxenvchan.h) into a
directory; the worker imports it from there (:func:`load`). The process must run on the
simulated host through tests/interop's shim (``interop.build.Tools.environ``).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import sysconfig
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import trio

MODULE = "_bench_cvchan"
CDEF = """
struct xentoollog_logger;
struct libxenvchan;
struct libxenvchan *libxenvchan_server_init(struct xentoollog_logger *logger, int domain,
    const char *xs_path, size_t read_min, size_t write_min);
struct libxenvchan *libxenvchan_client_init(struct xentoollog_logger *logger, int domain,
    const char *xs_path);
void libxenvchan_close(struct libxenvchan *ctrl);
int libxenvchan_read(struct libxenvchan *ctrl, void *data, size_t size);
int libxenvchan_write(struct libxenvchan *ctrl, const void *data, size_t size);
int libxenvchan_wait(struct libxenvchan *ctrl);
int libxenvchan_fd_for_select(struct libxenvchan *ctrl);
int libxenvchan_is_open(struct libxenvchan *ctrl);
int libxenvchan_buffer_space(struct libxenvchan *ctrl);
void set_nonblocking(struct libxenvchan *ctrl);
int withdraw(struct libxenvchan *ctrl);
struct xs_handle;
struct xs_handle *xs_open(unsigned long flags);
void xs_close(struct xs_handle *xsh);
bool xs_watch(struct xs_handle *h, const char *path, const char *token);
int xs_fileno(struct xs_handle *h);
char **xs_read_watch(struct xs_handle *h, unsigned int *num);
void free(void *ptr);
"""
# ``blocking`` is a bit-field of struct libxenvchan: set through a helper, not from Python.
# withdraw() is what libxenvchan_close() does last for a server (remove the vchan's XenStore
# directory), done early; libxenvchan_close() then skips it.
SOURCE = """
#include <stdlib.h>
#include <libxenvchan.h>
#include <xenstore.h>
static void set_nonblocking(struct libxenvchan *ctrl) { ctrl->blocking = 0; }
static int withdraw(struct libxenvchan *ctrl)
{
    struct xs_handle *xs = xs_open(0);
    if (!xs)
        return -1;
    int removed = xs_rm(xs, XBT_NULL, ctrl->xs_path);
    xs_close(xs);
    if (!removed)
        return -1;
    free(ctrl->xs_path);
    ctrl->xs_path = NULL;
    return 0;
}
"""
#: trio's default receive size (trio.SocketStream's).
DEFAULT_RECEIVE_SIZE = 65536


def build(directory: Path) -> Path:
    """Compile the module into ``directory`` (which :func:`load` then takes).

    cffi writes the C source; gcc compiles it as tests/interop/build.py compiles the C
    programs (no setuptools needed).

    Raises:
        interop.build.BuildError: gcc failed.
    """
    from cffi import FFI
    from interop.build import compile_c

    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(MODULE, SOURCE)
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"{MODULE}.c"
    with contextlib.redirect_stdout(io.StringIO()):  # "generating ..."
        ffi.emit_c_code(str(source))
    module = directory / f"{MODULE}{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_path("include")
    compile_c("-fPIC", "-shared", f"-I{include}", "-o", module, source, "-lxenvchan", "-lxenstore")
    return directory


def load(directory: str) -> ModuleType:
    """Import the module that :func:`build` compiled into ``directory``."""
    sys.path.insert(0, directory)
    return importlib.import_module(MODULE)


class CVchanStream(trio.abc.Stream):
    """One end of a libxenvchan vchan as a Trio stream."""

    def __init__(self, native: ModuleType, ctrl: Any) -> None:
        self._ffi, self._lib, self._ctrl = native.ffi, native.lib, ctrl
        self._lib.set_nonblocking(ctrl)
        self._fd: int = self._lib.libxenvchan_fd_for_select(ctrl)
        self._buffer = self._ffi.new("char[]", DEFAULT_RECEIVE_SIZE)
        self._closed = False

    async def _wait(self) -> None:
        """Wait for the peer's next event (the call that came up short asked for one)."""
        await trio.lowlevel.wait_readable(self._fd)
        if self._lib.libxenvchan_wait(self._ctrl) < 0:
            raise trio.BrokenResourceError("libxenvchan_wait failed: the event channel broke")

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this vchan end is closed")

    async def wait_until_connected(self) -> None:
        """(Server) until the client has connected."""
        while self._lib.libxenvchan_is_open(self._ctrl) == 2:
            await self._wait()

    @property
    def buffer_space(self) -> int:
        """Free bytes in the ring this end writes."""
        space: int = self._lib.libxenvchan_buffer_space(self._ctrl)
        return space

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        view = memoryview(data).cast("B")
        while view:
            sent = self._lib.libxenvchan_write(self._ctrl, self._ffi.from_buffer(view), len(view))
            if sent < 0:
                raise trio.BrokenResourceError("libxenvchan_write: the peer closed the vchan")
            view = view[sent:]
            if view:
                await self._wait()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        size = DEFAULT_RECEIVE_SIZE if max_bytes is None else max_bytes
        if size < 1:
            raise ValueError(f"max_bytes must be at least 1, not {size}")
        if size > len(self._buffer):
            self._buffer = self._ffi.new("char[]", size)
        while True:
            got = self._lib.libxenvchan_read(self._ctrl, self._buffer, size)
            if got:
                break
            await self._wait()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return b"" if got < 0 else self._ffi.buffer(self._buffer, got)[:]

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await trio.to_thread.run_sync(self._lib.libxenvchan_close, self._ctrl)
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def serve(
    native: ModuleType, peer: int, path: str, read_size: int, write_size: int
) -> AsyncIterator[CVchanStream]:
    """Offer a vchan to ``peer`` at XenStore ``path``; yield its stream once connected."""
    lib, ffi = native.lib, native.ffi
    ctrl = await trio.to_thread.run_sync(
        lib.libxenvchan_server_init, ffi.NULL, peer, path.encode(), read_size, write_size
    )
    if ctrl == ffi.NULL:
        raise OSError(ffi.errno, f"libxenvchan_server_init for domain {peer} at {path} failed")
    stream = CVchanStream(native, ctrl)
    async with stream:
        await stream.wait_until_connected()
        if await trio.to_thread.run_sync(lib.withdraw, ctrl) < 0:
            raise OSError(ffi.errno, f"removing the advertisement at {path} failed")
        yield stream


@asynccontextmanager
async def connect(native: ModuleType, peer: int, path: str) -> AsyncIterator[CVchanStream]:
    """Connect to the server of ``peer`` at XenStore ``path``, waiting until it is there."""
    lib, ffi = native.lib, native.ffi
    xs = await trio.to_thread.run_sync(lib.xs_open, 0)
    if xs == ffi.NULL:
        raise OSError(ffi.errno, "xs_open failed: cannot reach XenStore")
    try:
        if not lib.xs_watch(xs, path.encode(), b"path"):
            raise OSError(ffi.errno, f"xs_watch on {path} failed")
        count = ffi.new("unsigned int *")
        while True:  # the watch fires once when set, then at each change under path
            await trio.lowlevel.wait_readable(lib.xs_fileno(xs))
            event = lib.xs_read_watch(xs, count)  # one is queued: does not block
            if event == ffi.NULL:
                raise OSError(ffi.errno, f"xs_read_watch on {path} failed")
            lib.free(event)
            ctrl = await trio.to_thread.run_sync(
                lib.libxenvchan_client_init, ffi.NULL, peer, path.encode()
            )
            if ctrl != ffi.NULL:
                break
    finally:
        lib.xs_close(xs)
    async with CVchanStream(native, ctrl) as stream:
        yield stream

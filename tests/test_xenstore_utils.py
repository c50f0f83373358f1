"""Debian's real xenstore-utils (libxenstore) against the simulated XenStore, over Unix sockets.

Each test serves one store on two sockets: one whose connections are dom0, one domain 1. The
tools find a socket through ``XENSTORED_PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from conftest import missing_xen_tool

from trio_vchan._sim._xenstored import XenStoreServer
from trio_vchan._xenstore import WatchEvent, XenStoreClient


@pytest.fixture(autouse=True)
def _xenstore_utils() -> None:
    if shutil.which("xenstore-read") is None:
        missing_xen_tool("needs Debian's xenstore-utils (xenstore-read and friends) on PATH")


TIMEOUT = 30  # generous: each call starts a process


class Store:
    """A served store and the environments that point the tools at it."""

    def __init__(self, server: XenStoreServer, directory: str) -> None:
        self.server = server
        self.directory = directory

    def socket_path(self, domid: int) -> str:
        return os.path.join(self.directory, f"dom{domid}.sock")

    def env(self, domid: int) -> dict[str, str]:
        return {**os.environ, "XENSTORED_PATH": self.socket_path(domid)}

    async def run(self, domid: int, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run a tool as ``domid``; never raises for its exit status."""
        with trio.fail_after(TIMEOUT):
            return await trio.run_process(
                args, env=self.env(domid), capture_stdout=True, capture_stderr=True, check=False
            )

    async def ok(self, domid: int, *args: str) -> str:
        """Run a tool that must succeed; return its stdout."""
        result = await self.run(domid, *args)
        assert result.returncode == 0, result
        return result.stdout.decode()

    async def client(self, domid: int) -> XenStoreClient:
        """Our own client, over the same Unix socket as the tools."""
        return XenStoreClient(await trio.open_unix_socket(self.socket_path(domid)))


async def serve_socket(
    server: XenStoreServer,
    path: str,
    domid: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on a Unix socket at ``path`` and serve each as ``domid``."""
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    with listener:
        await listener.bind(path)
        listener.listen()
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                sock, _ = await listener.accept()
                nursery.start_soon(server.handle_connection, trio.SocketStream(sock), domid)


@pytest.fixture
def socket_dir() -> Iterator[str]:
    # Not tmp_path: a Unix socket path must fit in 108 bytes.
    directory = tempfile.mkdtemp(prefix="xs-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def store(socket_dir: str, nursery: trio.Nursery) -> Store:
    server = XenStoreServer()
    server.add_domain(1)
    store = Store(server, socket_dir)
    for domid in (0, 1):
        await nursery.start(serve_socket, server, store.socket_path(domid), domid)
    return store


async def test_write_read_list_rm(store: Store) -> None:
    before = store.server.paths()
    await store.ok(0, "xenstore-write", "/tool/a", "hello", "/tool/b/c", "world")
    assert await store.ok(0, "xenstore-read", "/tool/a", "/tool/b/c") == "hello\nworld\n"
    assert await store.ok(0, "xenstore-list", "/tool") == "a\nb\n"
    assert (await store.run(0, "xenstore-exists", "/tool/b")).returncode == 0
    assert (await store.run(0, "xenstore-exists", "/tool/nope")).returncode != 0
    listing = await store.ok(0, "xenstore-ls", "-f", "/tool")
    assert listing.splitlines() == ['/tool/a = "hello"', '/tool/b = ""', '/tool/b/c = "world"']
    await store.ok(0, "xenstore-rm", "/tool")
    assert (await store.run(0, "xenstore-exists", "/tool")).returncode != 0
    assert store.server.paths() == before


async def test_missing_node(store: Store) -> None:
    result = await store.run(0, "xenstore-read", "/nowhere")
    assert result.returncode != 0
    assert b"couldn't read path /nowhere" in result.stderr


async def test_permissions_with_chmod(store: Store) -> None:
    await store.ok(0, "xenstore-write", "/secret", "s")
    result = await store.run(1, "xenstore-read", "/secret")
    assert result.returncode != 0  # EACCES
    assert b"couldn't read path" in result.stderr

    await store.ok(0, "xenstore-chmod", "/secret", "n0", "r1")
    assert await store.ok(1, "xenstore-read", "/secret") == "s\n"
    assert "(n0,r1)" in await store.ok(0, "xenstore-ls", "-p", "/")
    assert (await store.run(1, "xenstore-write", "/secret", "x")).returncode != 0
    assert (await store.run(1, "xenstore-rm", "/secret")).returncode != 0
    async with await store.client(0) as xs:
        assert await xs.read("/secret") == b"s"


async def test_domain_relative_paths(store: Store) -> None:
    assert await store.ok(1, "xenstore-read", "domid") == "1\n"
    await store.ok(1, "xenstore-write", "data/x", "from-1")
    async with await store.client(0) as xs:
        assert await xs.read("/local/domain/1/data/x") == b"from-1"
    assert "data = " in await store.ok(1, "xenstore-ls", "/local/domain/1")
    assert (await store.run(1, "xenstore-write", "/top", "x")).returncode != 0


async def test_watch(store: Store) -> None:
    await store.ok(0, "xenstore-write", "/watched", "")
    with trio.fail_after(TIMEOUT):
        process = await trio.lowlevel.open_process(
            ["xenstore-watch", "/watched"], env=store.env(0), stdout=subprocess.PIPE
        )
        try:
            assert process.stdout is not None
            lines = LineReader(process.stdout)
            assert await lines.next() == "/watched"  # the event on registration
            async with await store.client(0) as xs:
                await xs.write("/watched/child", b"1")
            assert await lines.next() == "/watched/child"
        finally:
            process.kill()
            await process.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert len(store.server._connections) == 0  # the store noticed it die


async def test_our_watch_sees_their_writes(store: Store) -> None:
    async with await store.client(1) as xs:
        await xs.watch("data", "tok")
        assert await xs.next_watch_event() == WatchEvent("data", "tok")
        await store.ok(1, "xenstore-write", "data/y", "2")
        with trio.fail_after(TIMEOUT):
            assert await xs.next_watch_event() == WatchEvent("data/y", "tok")


async def test_large_directory(store: Store) -> None:
    names = [f"entry-{i:05}-with-a-longish-name" for i in range(300)]
    async with await store.client(0) as xs:
        for name in names:
            await xs.mkdir(f"/wide/{name}")
    # Over 4096 bytes of names: libxenstore falls back to DIRECTORY_PART.
    assert (await store.ok(0, "xenstore-list", "/wide")).splitlines() == names


class LineReader:
    """Lines from a subprocess's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some()
            assert data, f"EOF; got {self._buffer!r}"
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

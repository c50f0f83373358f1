"""Xen's own C libxenvchan and vchan-socket-proxy against trio-vchan, on the simulated host.

The C side is ``tests/interop/vchan_node.c`` linked with Debian's unmodified libxenvchan and
libxenstore, with the package's shim (``trio_vchan/_xenshim``) preloaded to give libxenvchan
its event channels and grants from the simulated host (``docs/interop.md``). libxenstore talks
to the simulated XenStore over its real wire protocol. Domain 1 serves, domain 2 connects,
whichever side is C.

Each C program prints ``connected LEFT RIGHT`` (the ring orders it sees), then ``sent N CRC``
and ``received N CRC`` (zlib's CRC-32 in hex). Both sides send the pattern of ``vchan_node.c``,
with seed 67 from C and 84 from trio, so each side's CRC of what it received is checked
against the pattern the other sent.

The tests skip (saying what to install) without gcc, Xen's headers or libxenvchan; the
``vchan-socket-proxy`` tests also skip if Debian's ``xen-utils-4.17`` cannot be unpacked.
Under CI (``$CI`` set) they fail instead (``conftest.missing_xen_tool``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
import trio
from conftest import missing_xen_tool
from interop.build import Tools, build, find_socket_proxy, missing

import trio_vchan
from trio_vchan import VchanStream
from trio_vchan._handshake import vchan_path
from trio_vchan._layout import choose_orders
from trio_vchan._xenstore import XenStoreClient
from trio_vchan.sim import SimulatedHost

SERVER: Final = 1
CLIENT: Final = 2
KIB: Final = 1024
MIB: Final = 1024 * KIB
C_SEED: Final = 67  # vchan_node.c's SEED
TRIO_SEED: Final = 84
STEP: Final = 120  # seconds for any one cross-process test; generous for loaded CI machines
PEER: Final = str(Path(__file__).with_name("vchan_peer.py"))
SERVER_DATA: Final = f"/local/domain/{SERVER}/data"

# -- the pattern (as vchan_node.c makes it) -------------------------------------------------------

_BLOCK: Final = 65521
_BASE: Final = bytes(i % 251 for i in range(_BLOCK))
_XOR: Final = [bytes(b ^ v for b in range(256)) for v in range(256)]


def pattern(total: int, seed: int) -> Iterator[bytes]:
    """Byte i is ``((i % 65521) % 251) ^ ((i // 65521 + seed) & 255)``, in 65521-byte pieces."""
    block = 0
    while total > 0:
        piece = _BASE.translate(_XOR[(block + seed) & 0xFF])[:total]
        yield piece
        total -= len(piece)
        block += 1


def pattern_crc(total: int, seed: int) -> int:
    crc = 0
    for piece in pattern(total, seed):
        crc = zlib.crc32(piece, crc)
    return crc


async def send_pattern(stream: VchanStream, total: int) -> None:
    for piece in pattern(total, TRIO_SEED):
        await stream.send_all(piece)


async def receive_crc(stream: VchanStream, total: int | None = None) -> tuple[int, int]:
    """Receive ``total`` bytes (None: until end of stream); return their count and CRC."""
    count = crc = 0
    while total is None or count < total:
        data = await stream.receive_some(MIB if total is None else min(MIB, total - count))
        if not data:
            if total is None:
                break
            raise EOFError(f"end of stream after {count} of {total} bytes")
        crc = zlib.crc32(data, crc)
        count += len(data)
    return count, crc


# -- the C side -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    reason = missing()
    if reason is not None:
        missing_xen_tool(reason)
    return build(tmp_path_factory.mktemp("interop"))


@pytest.fixture(scope="session")
def socket_proxy(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.getbasetemp().parent / "trio-vchan-xen-utils"
    found = find_socket_proxy(cache)
    if isinstance(found, str):
        missing_xen_tool(found)
    return found


class Program:
    """A running C program (or any process) whose stdout is read line by line."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.process = process
        self._stdout = process.stdout
        self._buffer = bytearray()
        self.orders: tuple[int, int] = (0, 0)
        self.xenstore_leftovers: list[str] = []

    async def line(self) -> list[str]:
        """The next line, split into words."""
        while b"\n" not in self._buffer:
            chunk = await self._stdout.receive_some()
            if not chunk:
                status = await self.process.wait()
                raise EOFError(f"the program exited ({status}) after {bytes(self._buffer)!r}")
            self._buffer += chunk
        line, _, rest = self._buffer.partition(b"\n")
        self._buffer = bytearray(rest)
        return line.decode().split()

    async def expect(self, word: str) -> list[str]:
        """The next line, which must start with ``word``; returns the words after it."""
        words = await self.line()
        assert words[:1] == [word], f"expected {word!r}, got {words!r}"
        return words[1:]

    async def results(self, *words: str) -> dict[str, tuple[int, int]]:
        """Read ``sent N CRC`` / ``received N CRC`` lines: {word: (N, CRC)}."""
        found = {}
        for word in words:
            count, crc = await self.expect(word)
            found[word] = (int(count), int(crc, 16))
        return found

    async def read(self, total: int) -> tuple[int, int]:
        """Read ``total`` bytes of raw output; return their count and CRC."""
        count, crc = len(self._buffer), zlib.crc32(self._buffer)
        self._buffer.clear()
        while count < total:
            chunk = await self._stdout.receive_some(MIB)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            count += len(chunk)
        return count, crc


@asynccontextmanager
async def program(
    argv: Sequence[str | int | Path], env: dict[str, str], *, stdin: bool = False
) -> AsyncIterator[Program]:
    """Run a program for the block; it is killed if still running at the end."""
    process = await trio.lowlevel.open_process(
        [str(arg) for arg in argv],
        env=env,
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,  # stderr: pytest's capture, shown if the test fails
    )
    try:
        yield Program(process)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    await pipe.aclose()


@asynccontextmanager
async def trio_end(
    sim: SimulatedHost, role: str, name: str, read_size: int, write_size: int
) -> AsyncIterator[VchanStream]:
    """Trio's end of vchan ``name`` as ``role`` (its domain: SERVER or CLIENT)."""
    backend = sim.backend(SERVER if role == "server" else CLIENT)
    try:
        if role == "server":
            async with trio_vchan.serve(
                CLIENT, name, read_size=read_size, write_size=write_size, backend=backend
            ) as stream:
                yield stream
        else:
            async with trio_vchan.connect(SERVER, name, backend=backend) as stream:
                yield stream
    finally:
        backend.close()


async def sweep_xenstore(sim: SimulatedHost) -> list[str]:
    """Remove what vchan servers left in the server domain's ``data``; return those paths."""
    await sim.wait_idle()
    found = sorted(
        leak.removeprefix("xenstore node ")
        for leak in sim.leaks()
        if leak.startswith(f"xenstore node {SERVER_DATA}/")
    )
    if found:
        dom0 = Path(sim.directory) / "domains" / "0" / "xenstore"
        async with XenStoreClient(await trio.open_unix_socket(os.fspath(dom0))) as xs:
            for top in sorted({"/".join(path.split("/")[:6]) for path in found}):
                await xs.rm(top)
    return found


def leftovers(port: str, c_role: str, *, crashed: bool = False) -> list[str]:
    """What the server (C if ``c_role`` is "server") leaves in XenStore after the vchan.

    libxenvchan removes only its own directory, not the parents that writing it created
    (up to ``data``), and after a crash also leaves its advertisement: it withdraws only in
    libxenvchan_close(). trio-vchan withdraws once the client is in, and removes the empty
    parents too when the path is below ``data/vchan``.
    """
    path = vchan_path(SERVER, CLIENT, port)
    if c_role == "client" and path.startswith(f"{SERVER_DATA}/vchan/"):
        return []
    parts = path.split("/")
    nodes = ["/".join(parts[:n]) for n in range(6, len(parts))]
    if crashed and c_role == "server":
        nodes += [path, f"{path}/event-channel", f"{path}/ring-ref"]
    return sorted(nodes)


@asynccontextmanager
async def c_and_trio(
    tools: Tools,
    sim: SimulatedHost,
    c_role: str,
    name: str,
    action: Sequence[str | int],
    read_size: int = 65536,
    write_size: int = 65536,
) -> AsyncIterator[tuple[Program, VchanStream]]:
    """vchan_node as ``c_role`` and trio as the other end, connected.

    ``read_size``/``write_size`` are the server's minimum ring sizes, whichever side serves.
    Afterwards, what the server left in XenStore is swept into ``Program.xenstore_leftovers``.
    """
    path = vchan_path(SERVER, CLIENT, name)
    argv: list[str | int | Path]
    if c_role == "server":
        argv = [tools.node, "server", CLIENT, path, read_size, write_size, *action]
        domid, trio_role = SERVER, "client"
    else:
        argv = [tools.node, "client", SERVER, path, *action]
        domid, trio_role = CLIENT, "server"
    async with (
        program(argv, tools.environ(sim.environ(domid))) as node,
        trio_end(sim, trio_role, name, read_size, write_size) as stream,
    ):
        left, right = map(int, await node.expect("connected"))
        node.orders = (left, right)
        yield node, stream
    node.xenstore_leftovers = await sweep_xenstore(sim)


C_ROLES: Final = ["server", "client"]

# Each ring size in each direction (the server's read ring is the left one). libxenvchan puts a
# ring of 1 KiB in the page only if the other fits the 2 KiB slot, so 1 KiB pairs with 2 KiB.
RING_SIZES: Final = [
    pytest.param(1 * KIB, 2 * KIB, id="left1K-right2K"),
    pytest.param(2 * KIB, 1 * KIB, id="left2K-right1K"),
    pytest.param(2 * KIB, 4 * KIB, id="left2K-right4K"),
    pytest.param(4 * KIB, 2 * KIB, id="left4K-right2K"),
    pytest.param(4 * KIB, 4 * KIB, id="left4K-right4K"),
    pytest.param(64 * KIB, 4 * KIB, id="left64K-right4K"),
    pytest.param(4 * KIB, 64 * KIB, id="left4K-right64K"),
    pytest.param(MIB, 4 * KIB, id="left1M-right4K"),
    pytest.param(4 * KIB, MIB, id="left4K-right1M"),
    pytest.param(MIB, MIB, id="left1M-right1M"),  # 512 grant refs in the shared page
]


@pytest.mark.parametrize("c_role", C_ROLES)
@pytest.mark.parametrize(("read_size", "write_size"), RING_SIZES)
async def test_ring_sizes_both_ways_at_once(
    tools: Tools, sim: SimulatedHost, c_role: str, read_size: int, write_size: int
) -> None:
    orders = choose_orders(read_size, write_size)
    total = 3 * max(read_size, write_size) + 12345  # round every ring several times, unaligned
    with trio.fail_after(STEP):
        async with c_and_trio(
            tools, sim, c_role, "sizes", ["exchange", total], read_size, write_size
        ) as (node, stream):
            # Both implementations chose (or read) the same orders, as libxenvchan chooses them.
            assert node.orders == (orders.left, orders.right)
            trio_writes = orders.left if c_role == "server" else orders.right
            assert stream.buffer_space == 1 << trio_writes
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_pattern, stream, total)
                received = await receive_crc(stream, total)
            results = await node.results("sent", "received")
            assert received == results["sent"] == (total, pattern_crc(total, C_SEED))
            assert results["received"] == (total, pattern_crc(total, TRIO_SEED))
            assert await stream.receive_some() == b""  # C closed after the exchange
            assert await node.process.wait() == 0
    assert node.xenstore_leftovers == leftovers("sizes", c_role)


@pytest.mark.parametrize("c_role", C_ROLES)
async def test_64_mib_both_ways_at_once(tools: Tools, sim: SimulatedHost, c_role: str) -> None:
    total = 64 * MIB
    expected_from_c = pattern_crc(total, C_SEED)
    expected_from_trio = pattern_crc(total, TRIO_SEED)
    with trio.fail_after(3 * STEP):
        async with c_and_trio(tools, sim, c_role, "bulk", ["exchange", total]) as (node, stream):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_pattern, stream, total)
                received = await receive_crc(stream, total)
            results = await node.results("sent", "received")
            assert received == results["sent"] == (total, expected_from_c)
            assert results["received"] == (total, expected_from_trio)
            assert await node.process.wait() == 0
    assert node.xenstore_leftovers == leftovers("bulk", c_role)


# A ring-full that fits (all of it is still unread at the close), and 5 MiB read meanwhile.
CLOSE_SIZES: Final = [
    pytest.param(60 * KIB, id="unread-at-close"),
    pytest.param(5 * MIB + 12345, id="5M-read-meanwhile"),
]


@pytest.mark.parametrize("c_role", C_ROLES)
@pytest.mark.parametrize("total", CLOSE_SIZES)
async def test_c_closing_delivers_everything_it_sent(
    tools: Tools, sim: SimulatedHost, c_role: str, total: int
) -> None:
    expected = (total, pattern_crc(total, C_SEED))
    with trio.fail_after(STEP):
        async with c_and_trio(tools, sim, c_role, "cclose", ["send", total]) as (node, stream):
            if total < 64 * KIB:  # it fits in the 64 KiB ring: read only after C has gone
                assert await node.results("sent") == {"sent": expected}
                assert await node.process.wait() == 0
                assert await receive_crc(stream) == expected
            else:
                assert await receive_crc(stream) == expected
                assert await node.results("sent") == {"sent": expected}
                assert await node.process.wait() == 0
            assert await stream.receive_some() == b""
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"anyone there?")
    assert node.xenstore_leftovers == leftovers("cclose", c_role)


@pytest.mark.parametrize("c_role", C_ROLES)
@pytest.mark.parametrize("total", CLOSE_SIZES)
async def test_trio_closing_delivers_everything_it_sent(
    tools: Tools, sim: SimulatedHost, c_role: str, total: int
) -> None:
    with trio.fail_after(STEP):
        async with c_and_trio(tools, sim, c_role, "tclose", ["recv"]) as (node, stream):
            await send_pattern(stream, total)
            await stream.aclose()  # what C has not read yet stays readable
            await node.expect("receiving")
            assert await node.results("received") == {
                "received": (total, pattern_crc(total, TRIO_SEED))
            }
            assert await node.process.wait() == 0
    assert node.xenstore_leftovers == leftovers("tclose", c_role)


@pytest.mark.parametrize("c_role", C_ROLES)
async def test_c_killed_is_seen_by_trio(tools: Tools, sim: SimulatedHost, c_role: str) -> None:
    with trio.fail_after(STEP):
        async with c_and_trio(tools, sim, c_role, "kill", ["flood"]) as (node, stream):
            received = 0
            while received < 3 * MIB:
                received += len(await stream.receive_some())
            node.process.send_signal(signal.SIGKILL)
            # The host performs the dead process's unmap-notify: its live byte drops to 0
            # and we are woken. What it wrote before dying is still delivered, then EOF.
            await receive_crc(stream)
            assert await stream.receive_some() == b""
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"anyone there?")
            assert await node.process.wait() == -signal.SIGKILL
    # libxenvchan withdraws its advertisement only in libxenvchan_close().
    assert node.xenstore_leftovers == leftovers("kill", c_role, crashed=True)


@pytest.mark.parametrize("c_role", C_ROLES)
async def test_trio_killed_is_seen_by_c(tools: Tools, sim: SimulatedHost, c_role: str) -> None:
    """The reverse: a trio-vchan process (tests/vchan_peer.py) dies; libxenvchan sees it."""
    path = vchan_path(SERVER, CLIENT, "tkill")
    c_argv: list[str | int | Path]
    if c_role == "server":
        c_argv = [tools.node, "server", CLIENT, path, 65536, 65536, "recv"]
        peer_argv = ["connect", SERVER, "tkill", "flood"]
        c_domid, peer_domid = SERVER, CLIENT
    else:
        c_argv = [tools.node, "client", SERVER, path, "recv"]
        peer_argv = ["serve", CLIENT, "tkill", "flood"]
        c_domid, peer_domid = CLIENT, SERVER
    with trio.fail_after(STEP):
        async with (
            program(c_argv, tools.environ(sim.environ(c_domid))) as node,
            program(
                [sys.executable, PEER, *map(str, peer_argv)],
                os.environ | sim.environ(peer_domid),
            ) as peer,
        ):
            assert await peer.expect("connected") == []
            await node.expect("connected")
            await node.expect("receiving")
            peer.process.send_signal(signal.SIGKILL)
            count, _ = (await node.results("received"))["received"]
            assert count > 0
            assert await node.process.wait() == 0
            assert await peer.process.wait() == -signal.SIGKILL
    assert await sweep_xenstore(sim) == leftovers("tkill", c_role)


@pytest.mark.parametrize("c_role", C_ROLES)
async def test_explicit_xenstore_path(tools: Tools, sim: SimulatedHost, c_role: str) -> None:
    """libxenvchan takes any XenStore path; trio-vchan takes an absolute path as the port."""
    path = f"{SERVER_DATA}/elsewhere/vchan-{c_role}"
    total = 100_000
    with trio.fail_after(STEP):
        async with c_and_trio(tools, sim, c_role, path, ["exchange", total]) as (node, stream):
            assert stream.path == path
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_pattern, stream, total)
                assert await receive_crc(stream, total) == (total, pattern_crc(total, C_SEED))
            assert await node.results("sent", "received") == {
                "sent": (total, pattern_crc(total, C_SEED)),
                "received": (total, pattern_crc(total, TRIO_SEED)),
            }
            assert await node.process.wait() == 0
    assert node.xenstore_leftovers == leftovers(path, c_role)


async def test_c_to_c_through_the_shim(tools: Tools, sim: SimulatedHost) -> None:
    """libxenvchan on both ends: checks the shim alone, without trio-vchan."""
    total = 8 * MIB + 7
    path = vchan_path(SERVER, CLIENT, "c2c")
    server_argv: list[str | int | Path] = [
        tools.node,
        "server",
        CLIENT,
        path,
        4096,
        65536,
        "exchange",
        total,
    ]
    client_argv: list[str | int | Path] = [tools.node, "client", SERVER, path, "exchange", total]
    with trio.fail_after(STEP):
        async with (
            program(server_argv, tools.environ(sim.environ(SERVER))) as server,
            program(client_argv, tools.environ(sim.environ(CLIENT))) as client,
        ):
            for node in (server, client):
                assert await node.expect("connected") == ["12", "16"]
                results = await node.results("sent", "received")
                assert results["sent"] == results["received"] == (total, pattern_crc(total, C_SEED))
                assert await node.process.wait() == 0
    assert await sweep_xenstore(sim) == leftovers("c2c", "server")


# -- Xen's vchan-socket-proxy ---------------------------------------------------------------------


@pytest.mark.parametrize("proxy_role", ["server", "client"])
async def test_vchan_socket_proxy(
    tools: Tools, socket_proxy: Path, sim: SimulatedHost, proxy_role: str
) -> None:
    """``vchan-socket-proxy -m ROLE DOMID PATH -`` relays between its stdin/stdout and a vchan.

    The proxy discards what arrives from the vchan once it sees the peer closed, so the test
    reads everything back before ending the proxy's input, which makes it close the vchan.
    """
    name = "proxy"
    path = vchan_path(SERVER, CLIENT, name)
    total = 3 * MIB + 17
    argv: list[str | int | Path]
    if proxy_role == "server":
        argv = [socket_proxy, "-m", "server", CLIENT, path, "-"]
        domid, trio_role = SERVER, "client"
    else:
        argv = [socket_proxy, "-m", "client", SERVER, path, "-"]
        domid, trio_role = CLIENT, "server"
    env = tools.environ(sim.environ(domid), xenctrl=proxy_role == "client")
    with trio.fail_after(STEP):
        async with program(argv, env, stdin=True) as proxy:
            stdin = proxy.process.stdin
            assert stdin is not None
            async with trio_end(sim, trio_role, name, 65536, 65536) as stream:
                got: dict[str, tuple[int, int]] = {}

                async def feed() -> None:
                    for piece in pattern(total, C_SEED):
                        await stdin.send_all(piece)

                async def from_proxy() -> None:
                    got["vchan"] = await receive_crc(stream, total)

                async def from_proxy_stdout() -> None:
                    got["stdout"] = await proxy.read(total)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(feed)
                    nursery.start_soon(from_proxy)
                    nursery.start_soon(from_proxy_stdout)
                    await send_pattern(stream, total)
                assert got == {
                    "vchan": (total, pattern_crc(total, C_SEED)),
                    "stdout": (total, pattern_crc(total, TRIO_SEED)),
                }
                await stdin.aclose()  # the proxy flushes, closes the vchan and exits
                assert await stream.receive_some() == b""
                assert await proxy.process.wait() == 0
    assert await sweep_xenstore(sim) == leftovers(
        name, "server" if proxy_role == "server" else "client"
    )

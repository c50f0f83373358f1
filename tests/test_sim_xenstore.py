"""XenStore on the simulated host, between processes: identities, permissions and watches."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from conftest import missing_xen_tool
from raw_xenstore import RawConnection
from sim_agent import AgentError, agent

from trio_vchan import XenStoreError
from trio_vchan._sim import _xenstored, _xs_connection, _xs_transactions
from trio_vchan._xenstore import EVENT_QUEUE_MAX, WatchEvent, XenStoreClient
from trio_vchan._xs_wire import Access, Message, MessageType, Permission
from trio_vchan.sim import SimulatedHost

TIMEOUT = 60
ROOT = [Permission(Access.NONE, 0)]
SECRET = "/local/domain/1/data/secret"


@pytest.fixture
def xenstore_utils() -> None:
    if shutil.which("xenstore-read") is None:
        missing_xen_tool("Xen's xenstore-utils absent")


@pytest.fixture
async def host() -> AsyncIterator[SimulatedHost]:
    async with SimulatedHost() as host:
        yield host
        with trio.fail_after(TIMEOUT):
            await host.wait_idle()
        assert host.leaks() == []


async def test_permissions_and_watches_across_processes(host: SimulatedHost) -> None:
    async with (
        agent(host.environ, 0) as dom0,
        agent(host.environ, 1) as dom1,
        agent(host.environ, 2) as dom2,
        agent(host.environ, 3) as dom3,
    ):
        await dom1.call("xs_write", path=SECRET, value="v1")
        await dom1.call("xs_set_perms", path=SECRET, perms=["n1", "r3"])

        with pytest.raises(AgentError) as refused:
            await dom2.call("xs_read", path=SECRET)
        assert refused.value.reply["errno"] == errno.EACCES
        assert (await dom3.call("xs_read", path=SECRET))["value"] == "v1"
        assert (await dom0.call("xs_read", path=SECRET))["value"] == "v1"

        # a watch fires once when set, then on every change, in another process
        await dom3.call("xs_watch", path=SECRET, token="tok")
        assert await dom3.call("xs_next_event") == {"path": SECRET, "token": "tok"}
        await dom1.call("xs_write", path=SECRET, value="v2")
        assert await dom3.call("xs_next_event") == {"path": SECRET, "token": "tok"}
        assert (await dom3.call("xs_read", path=SECRET))["value"] == "v2"

        # the domain is who its socket says: dom2 cannot write in dom1's home
        with pytest.raises(AgentError) as refused:
            await dom2.call("xs_write", path="/local/domain/1/data/other", value="x")
        assert refused.value.reply["errno"] == errno.EACCES

        await dom1.call("xs_rm", path=SECRET)
        for each in (dom0, dom1, dom2, dom3):
            await each.exit()


async def test_leaked_nodes_are_reported(host: SimulatedHost) -> None:
    async with agent(host.environ, 1) as dom1:
        await dom1.call("xs_write", path="/local/domain/1/data/left", value="x")
        await dom1.exit()
    with trio.fail_after(TIMEOUT):
        await host.wait_idle()
    assert host.leaks() == ["xenstore node /local/domain/1/data/left"]
    async with agent(host.environ, 1) as dom1:
        await dom1.call("xs_rm", path="/local/domain/1/data/left")
        await dom1.exit()


@pytest.mark.usefixtures("xenstore_utils")
async def test_xen_xenstore_utils_join_as_a_domain(host: SimulatedHost) -> None:
    host.add_domain(1)
    env = {
        **os.environ,
        "XENSTORED_PATH": os.path.join(host.directory, "domains", "1", "xenstore"),
    }
    with trio.fail_after(TIMEOUT):
        await trio.run_process(["xenstore-write", "data/x", "hello"], env=env)
        result = await trio.run_process(["xenstore-read", "data/x"], env=env, capture_stdout=True)
        assert result.stdout == b"hello\n"
        refused = await trio.run_process(
            ["xenstore-read", "/local/domain/0/domid"], env=env, check=False, capture_stderr=True
        )
        assert refused.returncode != 0
        await trio.run_process(["xenstore-rm", "data/x"], env=env)


@pytest.mark.usefixtures("xenstore_utils")
async def test_requests_of_xen_xenstore_utils_are_counted(host: SimulatedHost) -> None:
    host.add_domain(1)
    env = {
        **os.environ,
        "XENSTORED_PATH": os.path.join(host.directory, "domains", "1", "xenstore"),
    }
    with trio.fail_after(TIMEOUT):
        await trio.run_process(["xenstore-write", "data/x", "hello"], env=env)
        before = host.xenstore_requests
        await trio.run_process(["xenstore-read", "data/x"], env=env, capture_stdout=True)
        assert host.xenstore_requests - before == Counter({(1, "READ"): 1})
        await trio.run_process(["xenstore-rm", "data/x"], env=env)


async def test_requests_are_counted_by_domain_and_operation(host: SimulatedHost) -> None:
    backends = [host.backend(0), host.backend(1)]
    async with (
        XenStoreClient(await backends[0].connect_xenstore()) as xs0,
        XenStoreClient(await backends[1].connect_xenstore()) as xs1,
    ):
        host.reset_xenstore_requests()
        assert host.xenstore_requests == Counter()
        await xs1.write("data/x", b"1")
        before = host.xenstore_requests
        assert before == Counter({(1, "WRITE"): 1})
        tx = await xs1.transaction_start()
        assert await xs1.read("data/x", tx=tx) == b"1"
        await xs1.write("data/x", b"2", tx=tx)
        await xs1.transaction_end(tx, commit=True)
        with pytest.raises(XenStoreError, match="ENOENT"):  # failed requests count too
            await xs1.read("data/missing")
        assert await xs0.read("/local/domain/1/data/x") == b"2"
        assert host.xenstore_requests - before == Counter(
            {
                (1, "TRANSACTION_START"): 1,
                (1, "READ"): 2,
                (1, "WRITE"): 1,
                (1, "TRANSACTION_END"): 1,
                (0, "READ"): 1,
            }
        )

        # a snapshot: changing it changes nothing in the host
        snapshot = host.xenstore_requests
        snapshot[1, "READ"] += 100
        assert host.xenstore_requests[1, "READ"] == 2

        # an unknown type code is counted by its number (and refused)
        stream = await backends[1].connect_xenstore()
        async with stream:
            await stream.send_all(Message(99, 7, 0, b"").encode())
            reply = await stream.receive_some()
        assert Message(MessageType.ERROR, 7, 0, b"ENOSYS\0").encode() == reply
        assert host.xenstore_requests[1, "99"] == 1

        await xs1.rm("data/x")
        host.reset_xenstore_requests()
        assert host.xenstore_requests == Counter()
    for backend in backends:
        backend.close()


async def test_requests_from_another_process_are_counted(host: SimulatedHost) -> None:
    async with agent(host.environ, 3) as dom3:
        await dom3.call("xs_write", path="data/y", value="v")  # also connects
        before = host.xenstore_requests
        for _ in range(3):
            await dom3.call("xs_read", path="data/y")
        await dom3.call("xs_rm", path="data/y")
        assert host.xenstore_requests - before == Counter({(3, "READ"): 3, (3, "RM"): 1})
        await dom3.exit()


# -- limits, against attacking processes ----------------------------------------------------------

#: A hostile domain's process speaking raw XenStore: ``connect N`` opens N connections and
#: reads its home on each (printing how many answered), ``transactions N`` opens N connections
#: and the most transactions it may on each, touching one node in each. It then waits for
#: stdin to close.
ATTACKER = r"""
import socket, struct, sys
HEADER = struct.Struct("<4I")
def request(sock, kind, payload, tx=0):
    try:
        sock.sendall(HEADER.pack(kind, 0, tx, len(payload)) + payload)
    except OSError:
        return None
    head = b""
    while len(head) < 16:
        try:
            chunk = sock.recv(16 - len(head))
        except OSError:
            return None
        if not chunk:
            return None
        head += chunk
    kind, _, _, length = HEADER.unpack(head)
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return kind, body
mode, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
socks = []
for _ in range(count):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    socks.append(sock)
if mode == "connect":
    answered = sum(request(s, 2, b"data\0") is not None for s in socks)  # READ
    print(answered, flush=True)
else:
    print("connected", flush=True)
    sys.stdin.readline()
    for n, sock in enumerate(socks):
        for t in range(10):
            kind, body = request(sock, 6, b"\0")  # TRANSACTION_START
            assert kind == 6, body
            tx = int(body.rstrip(b"\0"))
            assert request(sock, 2, b"data\0", tx)[0] == 2  # READ
            assert request(sock, 11, f"data/t{n}-{t}\0v".encode(), tx)[0] == 11  # WRITE
    print("ready", flush=True)
sys.stdin.read()
"""


@asynccontextmanager
async def attacker(
    host: SimulatedHost, domid: int, mode: str, count: int
) -> AsyncIterator[tuple[trio.Process, Callable[[], Awaitable[str]]]]:
    host.add_domain(domid)
    path = os.path.join(host.directory, "domains", str(domid), "xenstore")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", ATTACKER, mode, path, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    lines = TextReceiveStream(process.stdout)

    try:
        yield process, lines.next_line
    finally:
        await process.stdin.aclose()
        with trio.fail_after(TIMEOUT):
            await process.wait()


class TextReceiveStream:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next_line(self) -> str:
        with trio.fail_after(TIMEOUT):
            while b"\n" not in self._buffer:
                chunk = await self._stream.receive_some()
                assert chunk, "the attacker exited"
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


async def test_a_domain_may_not_open_more_than_its_xenstore_connections(
    host: SimulatedHost,
) -> None:
    limit = _xenstored.CONNECTIONS_PER_DOMAIN
    async with attacker(host, 1, "connect", limit + 50) as (_, next_line):
        assert int(await next_line()) == limit  # the others were closed at once
        # other domains are served as before, and dom0 has no such limit
        async with agent(host.environ, 2) as dom2:
            await dom2.call("xs_write", path="data/ok", value="v")
            await dom2.call("xs_rm", path="data/ok")
            await dom2.exit()
    with trio.fail_after(TIMEOUT):
        await host.wait_idle()
    async with attacker(host, 1, "connect", 3) as (_, next_line):  # its connections are back
        assert int(await next_line()) == 3


async def test_open_transactions_cost_memory_for_what_they_touch_not_the_store(
    host: SimulatedHost,
) -> None:
    backend = host.backend(0)
    async with XenStoreClient(await backend.connect_xenstore()) as xs0:
        for start in range(0, 3000, 100):  # a store of some size
            batch = range(start, start + 100)
            await xs0.write_many([(f"/big/n{i}", b"x" * 20, ROOT) for i in batch])
        connections = 32
        transactions = connections * 10
        async with attacker(host, 1, "transactions", connections) as (process, next_line):
            assert await next_line() == "connected"
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                assert process.stdin is not None
                await process.stdin.send_all(b"go\n")
                assert await next_line() == "ready"
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            # a copy of the store's node dict alone would be ~90 KiB per transaction
            assert grown / transactions < 4096, f"{grown / transactions:.0f} bytes each"
        await xs0.rm("/big")
    backend.close()


async def test_a_transaction_may_touch_at_most_its_quota_of_nodes(host: SimulatedHost) -> None:
    limit = _xs_transactions.NODES_PER_TRANSACTION
    backend = host.backend(1)
    async with XenStoreClient(await backend.connect_xenstore()) as xs:
        tx = await xs.transaction_start()
        # each read of a missing node looks at it and at data (its existing parent) once
        for n in range(limit - 1):
            with pytest.raises(XenStoreError, match="ENOENT"):
                await xs.read(f"data/n{n}", tx=tx)
        with pytest.raises(XenStoreError, match="ENOSPC"):
            await xs.read("data/one-too-many", tx=tx)
        await xs.transaction_end(tx, commit=False)
        await xs.write("data/after", b"fine")  # the connection is unharmed
        await xs.rm("data/after")
    backend.close()


async def test_a_transaction_that_reads_a_node_changed_since_it_began_fails_to_commit(
    host: SimulatedHost,
) -> None:
    backends = [host.backend(1), host.backend(0)]
    async with (
        XenStoreClient(await backends[0].connect_xenstore()) as xs1,
        XenStoreClient(await backends[1].connect_xenstore()) as xs0,
    ):
        await xs1.write("data/a", b"1")
        await xs1.write("data/b", b"1")
        tx = await xs1.transaction_start()
        assert await xs1.read("data/a", tx=tx) == b"1"
        await xs0.write("/local/domain/1/data/b", b"2")  # after the start, before its first read
        await xs1.read("data/b", tx=tx)
        await xs1.write("data/a", b"from tx", tx=tx)
        with pytest.raises(XenStoreError, match="EAGAIN"):
            await xs1.transaction_end(tx, commit=True)
        assert await xs1.read("data/a") == b"1"  # nothing of it was committed
        await xs1.rm("data/a")
        await xs1.rm("data/b")
    for backend in backends:
        backend.close()


#: A hostile XenStore: answers the first request only after flooding its client with
#: ``count`` watch events for watches it never asked for.
FLOODING_STORE = r"""
import socket, struct, sys
HEADER = struct.Struct("<4I")
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen()
print("listening", flush=True)
sock, _ = listener.accept()
head = b""
while len(head) < 16:
    head += sock.recv(16 - len(head))
kind, req_id, tx, length = HEADER.unpack(head)
while length:
    length -= len(sock.recv(length))
for n in range(int(sys.argv[2])):
    payload = f"/flood/{n}\0unasked-{n}\0".encode()
    sock.sendall(HEADER.pack(15, 0, 0, len(payload)) + payload)  # WATCH_EVENT
sock.sendall(HEADER.pack(kind, req_id, tx, 1) + b"v")
sock.recv(1)
"""


async def test_a_flood_of_unsolicited_watch_events_keeps_the_clients_memory_bounded(
    tmp_path: Path,
) -> None:
    path = os.fspath(tmp_path / "xenstore")
    count = 20 * EVENT_QUEUE_MAX
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", FLOODING_STORE, path, str(count)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        assert await TextReceiveStream(process.stdout).next_line() == "listening"
        async with XenStoreClient(await trio.open_unix_socket(path)) as xs:
            with trio.fail_after(TIMEOUT):
                assert await xs.read("/x") == b"v"  # after every event was filed
                events = [await xs.next_watch_event() for _ in range(EVENT_QUEUE_MAX)]
            assert events[-1] == WatchEvent(f"/flood/{count - 1}", f"unasked-{count - 1}")
            assert events[0] == WatchEvent(f"/flood/{count - EVENT_QUEUE_MAX}", events[0].token)
            with trio.move_on_after(0.2):
                await xs.next_watch_event()
                pytest.fail("more events than the bound were kept")
    finally:
        process.kill()
        await process.wait()


async def test_transactions_creating_siblings_at_once_all_commit(host: SimulatedHost) -> None:
    """As servers advertising under one directory do; a listing still conflicts."""
    backends = [host.backend(1) for _ in range(3)]
    async with (
        XenStoreClient(await backends[0].connect_xenstore()) as a,
        XenStoreClient(await backends[1].connect_xenstore()) as b,
        XenStoreClient(await backends[2].connect_xenstore()) as lister,
    ):
        await a.write("data/dir/old", b"")
        ta, tb, tl = (
            await a.transaction_start(),
            await b.transaction_start(),
            await lister.transaction_start(),
        )
        assert await lister.directory("data/dir", tx=tl) == ["old"]
        await a.write("data/dir/x/ring-ref", b"1", tx=ta)
        await b.write("data/dir/y/ring-ref", b"2", tx=tb)
        await a.transaction_end(ta, commit=True)
        await b.transaction_end(tb, commit=True)
        assert sorted(await a.directory("data/dir")) == ["old", "x", "y"]
        await lister.write("data/dir/z", b"", tx=tl)
        with pytest.raises(XenStoreError, match="EAGAIN"):  # it listed what changed since
            await lister.transaction_end(tl, commit=True)
        # removing siblings at once, too
        ta, tb = await a.transaction_start(), await b.transaction_start()
        await a.rm("data/dir/x", tx=ta)
        await b.rm("data/dir/y", tx=tb)
        await a.transaction_end(ta, commit=True)
        await b.transaction_end(tb, commit=True)
        assert await a.directory("data/dir") == ["old"]
        await a.rm("data/dir")
    for backend in backends:
        backend.close()


async def test_watch_events_a_full_socket_did_not_take_arrive_once_the_client_reads(
    host: SimulatedHost,
) -> None:
    # The watcher waits for its events without sending a request: what its socket did not
    # take must still be written once it reads (not only when it sends its next request).
    host.add_domain(1)
    path = os.path.join(host.directory, "domains", "1", "xenstore")
    watcher = RawConnection(await trio.open_unix_socket(path))
    writer = RawConnection(await trio.open_unix_socket(path))
    async with watcher.stream, writer.stream:
        name = "n" * 1500  # ~1.5 KiB an event: a few hundred fill the host's socket buffer
        await watcher.send(MessageType.WATCH, b"data/spam\0tok\0")
        for expected in (MessageType.WATCH, MessageType.WATCH_EVENT):  # the first event at once
            reply = await watcher.receive()
            assert reply is not None
            assert reply.type == expected, reply
        count = 400
        for i in range(count):
            reply = await writer.request(MessageType.WRITE, f"data/spam/{name}\0{i}".encode())
            assert reply.type == MessageType.WRITE, reply
        assert (await writer.request(MessageType.RM, b"data/spam\0")).type == MessageType.RM
        with trio.fail_after(10):
            for _ in range(count + 1):  # and the RM's
                event = await watcher.receive()
                assert event is not None
                assert event.type == MessageType.WATCH_EVENT, event


async def test_a_client_that_reads_its_replies_late_gets_every_one_in_order(
    host: SimulatedHost,
) -> None:
    # More requests than the outbox holds, sent without reading a reply: the host must stop
    # reading requests while the socket does not take its replies (so its outbox stays
    # bounded), and go on once the client reads, rather than drop the client.
    host.add_domain(1)
    path = os.path.join(host.directory, "domains", "1", "xenstore")
    client = RawConnection(await trio.open_unix_socket(path))
    node = "data/" + "n" * 1000  # long requests: a 64 KiB read holds about 64
    count = _xs_connection.OUTBOX_MAX + 500
    async with client.stream:
        reply = await client.request(MessageType.WRITE, f"{node}\0".encode() + b"v" * 2000)
        assert reply.type == MessageType.WRITE, reply

        async def send_all() -> None:
            for i in range(count):
                await client.send(MessageType.READ, f"{node}\0".encode(), req_id=i)

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                await trio.sleep(0.5)  # let the host's socket buffer fill
                for i in range(count):
                    late = await client.receive()
                    assert late is not None, f"dropped after {i} replies"
                    assert (late.type, late.req_id, len(late.payload)) == (
                        MessageType.READ,
                        i,
                        2000,
                    )
        assert (await client.request(MessageType.RM, f"{node}\0".encode())).type == MessageType.RM

"""Tests for trio_vchan._xenstore (the client) against trio_vchan._sim._xenstored (the store)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_xenstore import RawConnection

from trio_vchan._errors import ProtocolError, XenStoreError
from trio_vchan._sim import _xs_connection, _xs_store
from trio_vchan._sim._xenstored import XenStoreServer
from trio_vchan._xenstore import EVENT_QUEUE_MAX, OUTSTANDING_MAX, WatchEvent, XenStoreClient
from trio_vchan._xs_wire import (
    PAYLOAD_MAX,
    Access,
    Header,
    Message,
    MessageType,
    Permission,
    decode_error,
)

Connect = Callable[[int], Awaitable[XenStoreClient]]

N0 = Permission(Access.NONE, 0)


@contextmanager
def raises_errno(value: int) -> Iterator[None]:
    with pytest.raises(XenStoreError) as info:
        yield
    assert info.value.errno == value, info.value


@pytest.fixture
def server() -> XenStoreServer:
    server = XenStoreServer()
    for domid in (1, 2, 3):
        server.add_domain(domid)
    return server


@pytest.fixture
async def connect(
    server: XenStoreServer, nursery: trio.Nursery
) -> AsyncIterator[Callable[[int], Awaitable[XenStoreClient]]]:
    """Returns ``connect(domid)``: a client connected to ``server`` as that domain."""
    clients: list[XenStoreClient] = []

    async def connect(domid: int) -> XenStoreClient:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle_connection, server_stream, domid)
        clients.append(XenStoreClient(client_stream))
        return clients[-1]

    yield connect
    for client in clients:
        await client.aclose()


@pytest.fixture
def connect_raw(server: XenStoreServer, nursery: trio.Nursery) -> Callable[[int], RawConnection]:
    def connect_raw(domid: int) -> RawConnection:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle_connection, server_stream, domid)
        return RawConnection(client_stream)

    return connect_raw


def error_of(reply: Message) -> int:
    assert reply.type == MessageType.ERROR, reply
    return decode_error(reply.payload)


# -- basic operations ------------------------------------------------------------------------------


async def test_write_read_directory(connect: Connect) -> None:
    xs = await connect(0)
    await xs.write("/a/b/c", b"\x00\xffbinary")
    assert await xs.read("/a/b/c") == b"\x00\xffbinary"
    assert await xs.read("/a/b") == b""  # parents were created, empty
    await xs.write("/a/b/d", b"")
    await xs.write("/a/b/0", b"x")
    assert await xs.directory("/a/b") == ["c", "d", "0"]  # creation order
    assert await xs.directory("/a/b/c") == []
    assert "a" in await xs.directory("/")
    await xs.write("/a/b/c", b"new")
    assert await xs.read("/a/b/c") == b"new"


async def test_missing_nodes(connect: Connect) -> None:
    xs = await connect(0)
    with raises_errno(errno.ENOENT):
        await xs.read("/nope")
    with raises_errno(errno.ENOENT):
        await xs.directory("/nope")
    with raises_errno(errno.ENOENT):
        await xs.get_perms("/nope")
    with pytest.raises(XenStoreError, match=r"READ /nope: ENOENT"):
        await xs.read("/nope")


async def test_mkdir(connect: Connect) -> None:
    xs = await connect(0)
    await xs.mkdir("/m/n")
    assert await xs.read("/m/n") == b""
    await xs.write("/m/n", b"keep")
    await xs.mkdir("/m/n")  # exists: fine, untouched
    assert await xs.read("/m/n") == b"keep"


async def test_rm(connect: Connect, server: XenStoreServer) -> None:
    xs = await connect(0)
    before = server.paths()
    await xs.write("/r/a/b/c", b"1")
    await xs.write("/r/a/d", b"2")
    await xs.write("/r/e", b"3")
    await xs.rm("/r/a")
    assert await xs.directory("/r") == ["e"]
    with raises_errno(errno.ENOENT):
        await xs.read("/r/a/b/c")
    await xs.rm("/r/a")  # gone, but its parent exists: fine
    with raises_errno(errno.ENOENT):
        await xs.rm("/r/a/b")  # the parent is missing too
    await xs.rm("/r")
    assert server.paths() == before


async def test_rm_root_is_refused(connect_raw: Callable[[int], RawConnection]) -> None:
    raw = connect_raw(0)
    assert error_of(await raw.request(MessageType.RM, b"/\0")) == errno.EINVAL


async def test_deep_tree_removal(connect: Connect, server: XenStoreServer) -> None:
    # Deeper than Python's recursion limit: the store must not recurse.
    xs = await connect(0)
    before = server.paths()
    deep = "/deep" + "/d" * 1500
    await xs.write(deep, b"bottom")
    assert await xs.read(deep) == b"bottom"
    await xs.rm("/deep")
    assert server.paths() == before


async def test_initial_layout(connect: Connect, server: XenStoreServer) -> None:
    xs = await connect(0)
    assert await xs.directory("/local/domain") == ["0", "1", "2", "3"]
    assert await xs.get_perms("/local/domain/2") == [N0, Permission(Access.READ, 2)]
    assert await xs.get_perms("/local/domain/2/domid") == [N0, Permission(Access.READ, 2)]
    assert await xs.get_perms("/local/domain/2/data") == [Permission(Access.NONE, 2)]
    assert await xs.read("/local/domain/2/domid") == b"2"
    assert "/local/domain/3/data" in server.paths()
    server.add_domain(2)  # already there: no change
    assert await xs.directory("/local/domain") == ["0", "1", "2", "3"]
    server.remove_domain(3)
    assert await xs.directory("/local/domain") == ["0", "1", "2"]
    assert not [p for p in server.paths() if p.startswith("/local/domain/3")]
    with pytest.raises(ValueError, match="not a removable domain"):
        server.remove_domain(0)


async def test_relative_paths(connect: Connect) -> None:
    xs = await connect(1)
    assert await xs.read("domid") == b"1"
    await xs.write("data/rel/x", b"v")
    assert await xs.directory("data/rel") == ["x"]
    xs0 = await connect(0)
    assert await xs0.read("/local/domain/1/data/rel/x") == b"v"
    assert await xs0.read("domid") == b"0"


async def test_get_domain_path(
    connect: Connect, connect_raw: Callable[[int], RawConnection]
) -> None:
    xs = await connect(2)
    assert await xs.get_domain_path(5) == "/local/domain/5"
    raw = connect_raw(2)
    assert error_of(await raw.request(MessageType.GET_DOMAIN_PATH, b"x\0")) == errno.EINVAL


async def test_client_refuses_bad_paths_before_sending(connect: Connect) -> None:
    xs = await connect(0)
    for bad in ("", "/a/", "/a b", "@introduceDomain"):
        with pytest.raises(ValueError, match="path"):
            await xs.read(bad)
    with pytest.raises(ValueError, match="owner"):
        await xs.set_perms("/a", [])


async def test_large_values_and_directories(connect: Connect, server: XenStoreServer) -> None:
    xs = await connect(0)
    await xs.write("/big", b"x" * 4000)  # dom0 is not limited to 2048 bytes
    assert await xs.read("/big") == b"x" * 4000
    with raises_errno(errno.E2BIG):  # a request that would exceed 4096 bytes
        await xs.write("/big", b"x" * PAYLOAD_MAX)
    names = [f"child-number-{i:04}" for i in range(400)]  # over 4096 bytes of names
    for name in names:
        await xs.mkdir(f"/wide/{name}")
    assert await xs.directory("/wide") == names  # falls back to DIRECTORY_PART
    await xs.rm("/wide")
    await xs.rm("/big")


# -- permissions -----------------------------------------------------------------------------------


async def test_permissions_between_domains(connect: Connect) -> None:
    dom0, dom1, dom2, dom3 = [await connect(d) for d in range(4)]
    node = "/local/domain/1/data/secret"
    await dom1.write(node, b"s")
    assert await dom1.get_perms(node) == [Permission(Access.NONE, 1)]  # inherited, own
    assert await dom0.read(node) == b"s"
    with raises_errno(errno.EACCES):
        await dom2.read(node)
    with raises_errno(errno.EACCES):
        await dom2.write(node, b"x")

    await dom1.set_perms(node, [Permission(Access.NONE, 1), Permission(Access.READ, 2)])
    assert await dom2.read(node) == b"s"
    with raises_errno(errno.EACCES):
        await dom2.write(node, b"x")
    with raises_errno(errno.EACCES):
        await dom3.read(node)
    with raises_errno(errno.EACCES):  # only the owner (and dom0) may set permissions
        await dom2.set_perms(node, [Permission(Access.BOTH, 1)])

    await dom1.set_perms(node, [Permission(Access.READ, 1), Permission(Access.WRITE, 2)])
    assert await dom3.read(node) == b"s"  # the first entry is the default for others
    await dom2.write(node, b"from 2")
    with raises_errno(errno.EACCES):
        await dom2.read(node)
    assert await dom1.read(node) == b"from 2"

    with raises_errno(errno.EPERM):  # unprivileged domains may not give nodes away
        await dom1.set_perms(node, [Permission(Access.NONE, 2)])
    await dom0.set_perms(node, [Permission(Access.NONE, 3)])
    assert await dom3.read(node) == b"from 2"
    with raises_errno(errno.EACCES):  # dom1 no longer owns it
        await dom1.read(node)


async def test_new_nodes_inherit_with_the_writer_as_owner(connect: Connect) -> None:
    dom0, dom1 = await connect(0), await connect(1)
    await dom0.write("/shared", b"")
    await dom0.set_perms("/shared", [N0, Permission(Access.BOTH, 1), Permission(Access.READ, 2)])
    await dom1.write("/shared/a/b", b"")
    for path in ("/shared/a", "/shared/a/b"):
        assert await dom1.get_perms(path) == [
            Permission(Access.NONE, 1),
            Permission(Access.BOTH, 1),
            Permission(Access.READ, 2),
        ]
    await dom0.write("/shared/z", b"")
    assert (await dom0.get_perms("/shared/z"))[0] == N0  # dom0 keeps the parent's owner


async def test_missing_nodes_are_hidden_by_permissions(connect: Connect) -> None:
    dom1, dom2 = await connect(1), await connect(2)
    with raises_errno(errno.ENOENT):
        await dom1.read("/local/domain/1/data/missing")
    with raises_errno(errno.EACCES):  # dom2 may not learn what dom1's data holds
        await dom2.read("/local/domain/1/data/missing")
    with raises_errno(errno.EACCES):
        await dom1.write("/toplevel", b"x")  # nobody but dom0 writes at the root
    with raises_errno(errno.EACCES):
        await dom1.mkdir("/local/domain/2/data/x")
    with raises_errno(errno.EACCES):
        await dom1.rm("/local/domain/2/data")
    with raises_errno(errno.EACCES):
        await dom1.write("domid", b"9")  # readable, not writable


async def test_permission_quota(connect: Connect) -> None:
    dom0, dom1 = await connect(0), await connect(1)
    node = "data/p"
    await dom1.write(node, b"")
    five = [Permission(Access.NONE, 1), *(Permission(Access.READ, d) for d in range(2, 6))]
    await dom1.set_perms(node, five)
    with raises_errno(errno.ENOSPC):
        await dom1.set_perms(node, [*five, Permission(Access.READ, 6)])
    await dom0.set_perms("/local/domain/1/" + node, [*five, Permission(Access.READ, 6)])
    assert len(await dom1.get_perms(node)) == 6


async def test_set_perms_malformed(connect_raw: Callable[[int], RawConnection]) -> None:
    raw = connect_raw(0)
    for payload in (b"/local\0", b"/local\0x0\0", b"/local\0r\0", b"/local"):
        assert error_of(await raw.request(MessageType.SET_PERMS, payload)) == errno.EINVAL


async def test_value_and_node_quotas(
    connect: Connect, server: XenStoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dom1 = await connect(1)
    await dom1.write("data/v", b"x" * 2048)
    with raises_errno(errno.ENOSPC):
        await dom1.write("data/v", b"x" * 2049)
    monkeypatch.setattr(_xs_store, "NODES_PER_DOMAIN", 4)  # data, data/v, +2
    await dom1.write("data/n1", b"")
    with raises_errno(errno.ENOSPC):
        await dom1.write("data/n2/n3", b"")
    await dom1.write("data/n2", b"")
    with raises_errno(errno.ENOSPC):
        await dom1.mkdir("data/n3")
    assert "/local/domain/1/data/n3" not in server.paths()


# -- transactions ----------------------------------------------------------------------------------


async def test_transaction_commit_and_isolation(connect: Connect) -> None:
    a, b = await connect(0), await connect(0)
    await a.write("/t/x", b"0")
    tx = await a.transaction_start()
    assert tx != 0
    assert await a.read("/t/x", tx=tx) == b"0"
    await a.write("/t/x", b"1", tx=tx)
    await a.write("/t/new/y", b"2", tx=tx)
    assert await a.read("/t/x", tx=tx) == b"1"
    assert await a.read("/t/x") == b"0"  # not visible outside before the commit
    assert await b.directory("/t") == ["x"]
    await a.transaction_end(tx, commit=True)
    assert await b.read("/t/x") == b"1"
    assert await b.read("/t/new/y") == b"2"


async def test_transaction_abort(connect: Connect, server: XenStoreServer) -> None:
    xs = await connect(1)
    before = server.paths()
    tx = await xs.transaction_start()
    await xs.write("data/gone", b"1", tx=tx)
    await xs.transaction_end(tx, commit=False)
    assert server.paths() == before
    with raises_errno(errno.ENOENT):  # the transaction is over
        await xs.read("data", tx=tx)


async def test_transaction_conflict(connect: Connect) -> None:
    a, b = await connect(0), await connect(0)
    await a.write("/c/x", b"0")
    tx = await a.transaction_start()
    value = await a.read("/c/x", tx=tx)
    await a.write("/c/y", value + b"!", tx=tx)
    await b.write("/c/x", b"changed")  # someone else changes what the transaction read
    with raises_errno(errno.EAGAIN):
        await a.transaction_end(tx, commit=True)
    with raises_errno(errno.ENOENT):
        await a.read("/c/y")
    # Retrying the whole transaction works.
    tx = await a.transaction_start()
    await a.write("/c/y", await a.read("/c/x", tx=tx) + b"!", tx=tx)
    await a.transaction_end(tx, commit=True)
    assert await b.read("/c/y") == b"changed!"


async def test_transaction_conflict_on_deletion(connect: Connect) -> None:
    a, b = await connect(0), await connect(0)
    await a.write("/d/x", b"0")
    tx = await a.transaction_start()
    await a.write("/d/x", b"1", tx=tx)
    await b.rm("/d/x")
    with raises_errno(errno.EAGAIN):
        await a.transaction_end(tx, commit=True)


async def test_independent_transactions_both_commit(connect: Connect) -> None:
    a, b = await connect(0), await connect(0)
    await a.write("/i/x", b"")
    await a.write("/i/y", b"")
    ta, tb = await a.transaction_start(), await b.transaction_start()
    await a.write("/i/x", b"a", tx=ta)
    await b.write("/i/y", b"b", tx=tb)
    await a.transaction_end(ta, commit=True)
    await b.transaction_end(tb, commit=True)
    assert (await a.read("/i/x"), await a.read("/i/y")) == (b"a", b"b")


async def test_transaction_errors(
    connect: Connect, connect_raw: Callable[[int], RawConnection]
) -> None:
    xs = await connect(1)
    with raises_errno(errno.ENOENT):
        await xs.read("domid", tx=12345)
    with raises_errno(errno.ENOENT):
        await xs.transaction_end(12345, commit=True)
    for _ in range(10):
        await xs.transaction_start()
    with raises_errno(errno.ENOSPC):
        await xs.transaction_start()
    raw = connect_raw(0)
    reply = await raw.request(MessageType.TRANSACTION_START, b"\0")
    tx = int(reply.payload.rstrip(b"\0"))
    reply = await raw.request(MessageType.TRANSACTION_START, b"\0", tx_id=tx)
    assert error_of(reply) == errno.EBUSY  # no nesting
    reply = await raw.request(MessageType.TRANSACTION_END, b"X\0", tx_id=tx)
    assert error_of(reply) == errno.EINVAL


async def test_closing_aborts_transactions(connect: Connect, server: XenStoreServer) -> None:
    before = server.paths()
    xs = await connect(0)
    tx = await xs.transaction_start()
    await xs.write("/pending", b"", tx=tx)
    await xs.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.paths() == before


# -- watches ---------------------------------------------------------------------------------------


async def test_watch_fires_on_registration_and_changes(connect: Connect) -> None:
    watcher, writer = await connect(0), await connect(0)
    await watcher.watch("/w", "tok")
    assert await watcher.next_watch_event() == WatchEvent("/w", "tok")  # at once
    await writer.write("/w/a/b", b"1")  # below the watch, from another connection
    assert await watcher.next_watch_event() == WatchEvent("/w/a/b", "tok")
    await writer.write("/w", b"")
    assert await watcher.next_watch_event() == WatchEvent("/w", "tok")
    await writer.write("/elsewhere", b"")  # not below: no event
    await writer.set_perms("/w/a", [N0])
    assert await watcher.next_watch_event() == WatchEvent("/w/a", "tok")
    await watcher.unwatch("/w", "tok")
    await writer.write("/w", b"after")
    await watcher.watch("/w", "again")
    assert await watcher.next_watch_event() == WatchEvent("/w", "again")


async def test_watch_on_rm(connect: Connect) -> None:
    watcher, writer = await connect(0), await connect(0)
    await writer.write("/x/y/z", b"")
    await watcher.watch("/x/y/z", "deep")
    await watcher.watch("/", "root")
    assert {await watcher.next_watch_event() for _ in range(2)} == {
        WatchEvent("/x/y/z", "deep"),
        WatchEvent("/", "root"),
    }
    await writer.rm("/x/y")
    events = {await watcher.next_watch_event() for _ in range(2)}
    # The watch on the removed descendant fires; ancestors' watches fire for the root only.
    assert events == {WatchEvent("/x/y/z", "deep"), WatchEvent("/x/y", "root")}
    await writer.write("/marker", b"")
    assert await watcher.next_watch_event() == WatchEvent("/marker", "root")


async def test_relative_watch(connect: Connect) -> None:
    dom1 = await connect(1)
    await dom1.watch("data", "rel")
    assert await dom1.next_watch_event() == WatchEvent("data", "rel")
    await dom1.write("/local/domain/1/data/k", b"")
    assert await dom1.next_watch_event() == WatchEvent("data/k", "rel")
    await dom1.unwatch("data", "rel")


async def test_watch_events_respect_read_permission(connect: Connect) -> None:
    dom1, dom2 = await connect(1), await connect(2)
    await dom2.watch("/local/domain/1/data", "peek")
    assert await dom2.next_watch_event() == WatchEvent("/local/domain/1/data", "peek")
    await dom1.write("data/private", b"")  # dom2 may read neither it nor its parent
    await dom1.write("data/shared", b"")
    await dom1.set_perms("data/shared", [Permission(Access.NONE, 1), Permission(Access.READ, 2)])
    assert await dom2.next_watch_event() == WatchEvent("/local/domain/1/data/shared", "peek")
    await dom1.write("data/shared/child", b"")  # the parent is readable: seen
    assert await dom2.next_watch_event() == WatchEvent("/local/domain/1/data/shared/child", "peek")
    await dom1.set_perms("data/shared", [Permission(Access.NONE, 1)])  # lost access: still told
    assert await dom2.next_watch_event() == WatchEvent("/local/domain/1/data/shared", "peek")
    await dom1.write("data/shared", b"quiet")
    await dom1.write("data", b"")
    await dom2.unwatch("/local/domain/1/data", "peek")
    await dom2.watch("/local/domain/2", "mine")
    assert await dom2.next_watch_event() == WatchEvent("/local/domain/2", "mine")


async def test_watch_events_wait_for_the_commit(connect: Connect) -> None:
    watcher, writer = await connect(0), await connect(0)
    await watcher.watch("/tw", "t")
    assert await watcher.next_watch_event() == WatchEvent("/tw", "t")
    tx = await writer.transaction_start()
    await writer.write("/tw/aborted", b"", tx=tx)
    await writer.transaction_end(tx, commit=False)
    tx = await writer.transaction_start()
    await writer.write("/tw/committed", b"", tx=tx)
    await writer.mkdir("/tw", tx=tx)  # exists inside the transaction: no event
    await writer.transaction_end(tx, commit=True)
    assert await watcher.next_watch_event() == WatchEvent("/tw/committed", "t")


async def test_watch_errors_and_quota(connect: Connect) -> None:
    dom1 = await connect(1)
    await dom1.watch("data", "t")
    with raises_errno(errno.EEXIST):
        await dom1.watch("/local/domain/1/data", "t")  # the same watch, spelled absolute
    with raises_errno(errno.ENOENT):
        await dom1.unwatch("data", "other")
    for i in range(127):
        await dom1.watch("data", str(i))
    with raises_errno(errno.E2BIG):
        await dom1.watch("data", "one too many")
    dom0 = await connect(0)
    for i in range(200):  # dom0 has no watch quota
        await dom0.watch("/", str(i))


async def test_introduce_domain_watch(connect: Connect, server: XenStoreServer) -> None:
    dom0, dom1 = await connect(0), await connect(1)
    await dom0.watch("@introduceDomain", "intro")
    await dom0.watch("@releaseDomain", "release")
    await dom1.watch("@introduceDomain", "intro1")
    assert await dom1.next_watch_event() == WatchEvent("@introduceDomain", "intro1")
    assert {await dom0.next_watch_event() for _ in range(2)} == {
        WatchEvent("@introduceDomain", "intro"),
        WatchEvent("@releaseDomain", "release"),
    }
    server.add_domain(9)
    assert await dom0.next_watch_event() == WatchEvent("@introduceDomain", "intro")
    server.remove_domain(9)
    assert await dom0.next_watch_event() == WatchEvent("@releaseDomain", "release")
    await dom1.write("data/marker", b"")  # dom1 saw neither special event
    await dom1.watch("data/marker", "m")
    assert await dom1.next_watch_event() == WatchEvent("data/marker", "m")


async def test_waiting_for_events_while_requesting(connect: Connect) -> None:
    watcher, writer = await connect(0), await connect(0)
    await watcher.watch("/busy", "b")
    assert await watcher.next_watch_event() == WatchEvent("/busy", "b")
    got: list[WatchEvent] = []

    async def wait_event() -> None:
        got.append(await watcher.next_watch_event())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_event)
        await trio.testing.wait_all_tasks_blocked()
        # The waiting task is reading the stream; the reply must still reach us.
        assert await watcher.read("/local/domain/0/domid") == b"0"
        await writer.write("/busy/x", b"")
    assert got == [WatchEvent("/busy/x", "b")]


async def test_closing_removes_watches(connect: Connect) -> None:
    a, writer = await connect(0), await connect(0)
    await a.watch("/gone", "g")
    await a.aclose()
    await trio.testing.wait_all_tasks_blocked()
    await writer.write("/gone/x", b"")  # no one to deliver to: must not fail
    with pytest.raises(trio.ClosedResourceError):
        await a.read("/")
    with pytest.raises(trio.ClosedResourceError):
        await a.next_watch_event()


# -- hostile clients -------------------------------------------------------------------------------


async def test_unknown_and_privileged_operations(
    connect_raw: Callable[[int], RawConnection],
) -> None:
    dom0, dom1 = connect_raw(0), connect_raw(1)
    for op in (20, 27, 0xFFFF, 123456, MessageType.WATCH_EVENT, MessageType.ERROR):
        assert error_of(await dom1.request(op, b"")) == errno.ENOSYS
    for op in (MessageType.CONTROL, MessageType.INTRODUCE, MessageType.SET_QUOTA):
        assert error_of(await dom1.request(op, b"x\0")) == errno.EACCES
        assert error_of(await dom0.request(op, b"x\0")) == errno.ENOSYS
    reply = await dom0.request(MessageType.IS_DOMAIN_INTRODUCED, b"2\0")
    assert reply.payload == b"T\0"
    reply = await dom0.request(MessageType.IS_DOMAIN_INTRODUCED, b"42\0")
    assert reply.payload == b"F\0"


async def test_malformed_requests(connect_raw: Callable[[int], RawConnection]) -> None:
    raw = connect_raw(0)
    for op, payload in [
        (MessageType.READ, b"/local"),  # no NUL
        (MessageType.READ, b"/local\0extra\0"),
        (MessageType.READ, b"/bad path\0"),
        (MessageType.READ, b"/\xff\0"),
        (MessageType.READ, b"@introduceDomain\0"),
        (MessageType.WRITE, b"/no-nul-at-all"),
        (MessageType.WATCH, b"/only-path\0"),
        (MessageType.WATCH, b"/w\0t\0depth\0"),
        (MessageType.UNWATCH, b""),
        (MessageType.DIRECTORY_PART, b"/\0"),
    ]:
        assert error_of(await raw.request(op, payload)) == errno.EINVAL, (op, payload)
    # Replies echo req_id and tx_id, errors included.
    await raw.send(MessageType.READ, b"/nope\0", req_id=99, tx_id=0)
    reply = await raw.receive()
    assert reply is not None
    assert (reply.type, reply.req_id, reply.tx_id) == (MessageType.ERROR, 99, 0)


async def test_oversized_request_drops_only_that_connection(
    connect: Connect, connect_raw: Callable[[int], RawConnection]
) -> None:
    good = await connect(1)
    bad = connect_raw(1)
    await bad.stream.send_all(Header(MessageType.WRITE, 1, 0, PAYLOAD_MAX + 1).pack())
    with trio.fail_after(5):
        assert await bad.receive() is None  # dropped
    assert await good.read("domid") == b"1"


async def test_stuck_reader_is_dropped(
    connect: Connect, server: XenStoreServer, nursery: trio.Nursery
) -> None:
    # A client that never reads cannot make the store queue without bound or block others.
    client_stream, server_stream = trio.testing.lockstep_stream_pair()  # no buffering at all
    nursery.start_soon(server.handle_connection, server_stream, 0)
    stuck = RawConnection(client_stream)
    await stuck.send(MessageType.WATCH, b"/spam\0t\0")
    writer = await connect(0)
    for i in range(_xs_connection.OUTBOX_MAX + 10):
        await writer.write("/spam", str(i).encode())
    await trio.testing.wait_all_tasks_blocked()
    assert len(server._connections) == 1  # only the writer is left
    await writer.rm("/spam")


words = st.sampled_from(
    (
        *(b"/", b"/a", b"a", b"/a/b", b"@introduceDomain", b"domid", b"data/x", b"T", b"F"),
        *(b"b0", b"r1", b"n2", b"1", b"", b"tok", b"/local/domain/1/data", b"a//b", b"\xff"),
    )
)
payloads = st.one_of(
    st.binary(max_size=40),
    st.lists(words, max_size=4).map(lambda parts: b"".join(p + b"\0" for p in parts)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3), payloads), max_size=25))
def test_garbage_requests_get_replies(requests: list[tuple[int, int, bytes]]) -> None:
    async def main() -> None:
        server = XenStoreServer()
        server.add_domain(1)
        async with trio.open_nursery() as nursery:
            client_stream, server_stream = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle_connection, server_stream, 1)
            raw = RawConnection(client_stream)
            for type, tx_id, payload in requests:
                await raw.send(type, payload, tx_id=tx_id, req_id=5)
                reply = await raw.receive_reply()
                assert reply is not None
                assert (reply.req_id, reply.tx_id) == (5, tx_id)
            assert (await raw.request(MessageType.READ, b"domid\0")).payload == b"1"
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- a misbehaving store ---------------------------------------------------------------------------


class FakeStore:
    """The store's end of a stream, driven by the test."""

    def __init__(self) -> None:
        client_stream, self.stream = trio.testing.memory_stream_pair()
        self.client = XenStoreClient(client_stream)
        self.raw = RawConnection(self.stream)

    async def next_request(self) -> Message:
        message = await self.raw.receive()
        assert message is not None
        return message

    async def reply(self, request: Message, payload: bytes, *, req_id: int | None = None) -> None:
        req = request.req_id if req_id is None else req_id
        await self.stream.send_all(Message(request.type, req, request.tx_id, payload).encode())


async def test_mismatched_reply_is_a_protocol_error(nursery: trio.Nursery) -> None:
    store = FakeStore()

    async def serve() -> None:
        request = await store.next_request()
        await store.reply(request, b"x", req_id=request.req_id + 1)

    nursery.start_soon(serve)
    with pytest.raises(ProtocolError, match="not outstanding"):
        await store.client.read("/x")
    with pytest.raises(ProtocolError):  # broken for good
        await store.client.read("/x")


async def test_oversized_reply_is_a_protocol_error(nursery: trio.Nursery) -> None:
    store = FakeStore()

    async def serve() -> None:
        request = await store.next_request()
        header = Header(request.type, request.req_id, 0, PAYLOAD_MAX + 1)
        await store.stream.send_all(header.pack())

    nursery.start_soon(serve)
    with pytest.raises(ProtocolError, match="4097-byte"):
        await store.client.read("/x")


async def test_wrong_reply_type_is_a_protocol_error(nursery: trio.Nursery) -> None:
    store = FakeStore()

    async def serve() -> None:
        request = await store.next_request()
        await store.stream.send_all(Message(MessageType.WRITE, request.req_id, 0, b"").encode())

    nursery.start_soon(serve)
    with pytest.raises(ProtocolError, match="type 11"):
        await store.client.read("/x")


async def test_bad_watch_event_is_a_protocol_error(nursery: trio.Nursery) -> None:
    store = FakeStore()
    await store.stream.send_all(Message(MessageType.WATCH_EVENT, 0, 0, b"path-only\0").encode())
    with pytest.raises(ProtocolError, match="bad watch event"):
        await store.client.next_watch_event()


async def test_store_hanging_up_breaks_the_client(nursery: trio.Nursery) -> None:
    store = FakeStore()

    async def serve() -> None:
        await store.next_request()
        await store.stream.aclose()

    nursery.start_soon(serve)
    with pytest.raises(trio.BrokenResourceError, match="closed the connection"):
        await store.client.read("/x")
    with pytest.raises(trio.BrokenResourceError):
        await store.client.read("/x")


async def test_cancelled_request_does_not_desynchronise(nursery: trio.Nursery) -> None:
    store = FakeStore()
    with trio.CancelScope() as scope:
        nursery.start_soon(store.next_request)  # let the store swallow the first request
        async with trio.open_nursery() as inner:
            inner.start_soon(store.client.read, "/first")
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught

    async def serve() -> None:
        await store.reply(Message(MessageType.READ, 1, 0, b""), b"late reply to /first")
        request = await store.next_request()
        await store.stream.send_all(Message(MessageType.WATCH_EVENT, 0, 0, b"/ev\0tok\0").encode())
        await store.reply(request, b"second")

    nursery.start_soon(serve)
    assert await store.client.read("/second") == b"second"
    assert await store.client.next_watch_event() == WatchEvent("/ev", "tok")


async def test_error_reply_names(nursery: trio.Nursery) -> None:
    store = FakeStore()

    async def serve() -> None:
        for name in (b"EAGAIN\0", b"ENOTANERROR\0"):
            request = await store.next_request()
            await store.stream.send_all(
                Message(MessageType.ERROR, request.req_id, request.tx_id, name).encode()
            )

    nursery.start_soon(serve)
    with raises_errno(errno.EAGAIN):
        await store.client.transaction_end(3, commit=True)
    with raises_errno(errno.EINVAL):  # unknown names become EINVAL, as in libxenstore
        await store.client.rm("/x")


async def test_async_context_manager(connect: Connect) -> None:
    async with await connect(0) as xs:
        assert await xs.read("domid") == b"0"
    with pytest.raises(trio.ClosedResourceError):
        await xs.read("domid")
    await xs.aclose()  # idempotent


async def test_watching_contexts_share_one_watch_per_path(
    connect: Connect, server: XenStoreServer
) -> None:
    """Each task gets its own changes; the store sees one WATCH per path, and one UNWATCH
    once the last task has left."""
    watcher, writer = await connect(0), await connect(0)
    server.requests.clear()
    async with watcher.watching("/shared") as first:
        await first.wait()  # its registration event
        async with watcher.watching("/shared") as second:
            await second.wait()  # counts for a late subscriber too
            assert not first.take()
            await writer.write("/shared/x", b"1")
            await first.wait()
            await second.wait()
            async with watcher.watching("/other") as other:
                await other.wait()
                await writer.write("/shared/y", b"2")
                await second.wait()
                assert not other.take()
        await writer.write("/shared/z", b"3")
        await first.wait()
        assert server.requests[(0, "UNWATCH")] == 1  # /other's only
    assert server.requests[(0, "WATCH")] == 2
    assert server.requests[(0, "UNWATCH")] == 2


async def test_unclaimed_watch_events_are_bounded(connect: Connect) -> None:
    """A flood of events for a watch nobody drains keeps the newest EVENT_QUEUE_MAX."""
    watcher, writer = await connect(0), await connect(0)
    await watcher.watch("/flood", "tok")
    for n in range(EVENT_QUEUE_MAX + 100):
        await writer.write(f"/flood/{n}", b"")
    await watcher.read("/flood")  # reads and files every event that came before its reply
    events = [await watcher.next_watch_event() for _ in range(EVENT_QUEUE_MAX)]
    assert events[-1] == WatchEvent(f"/flood/{EVENT_QUEUE_MAX + 99}", "tok")
    assert WatchEvent("/flood", "tok") not in events  # the oldest went first
    with trio.move_on_after(0.2):
        await watcher.next_watch_event()
        pytest.fail("more events than the bound were kept")


async def test_batches_keep_their_order_and_report_each_error(
    connect: Connect, server: XenStoreServer
) -> None:
    client, other = await connect(1), await connect(2)
    perms = [Permission(Access.NONE, 1), Permission(Access.READ, 2)]
    home = "/local/domain/1/data"
    await client.write_many([(f"{home}/a", b"1", perms), (f"{home}/b", b"2", perms)])
    assert await other.read_together([f"{home}/a", f"{home}/b"]) == [b"1", b"2"]
    missing, present = await client.read_together([f"{home}/none", f"{home}/a"])
    assert isinstance(missing, XenStoreError)
    assert missing.errno == errno.ENOENT
    assert present == b"1"
    with raises_errno(errno.EACCES):  # the first error, after every reply arrived
        await other.write_many([(f"{home}/c", b"3", perms)])
    assert await client.read(f"{home}/b") == b"2"  # still in step


async def next_request(store: RawConnection) -> Message:
    request = await store.receive()
    assert request is not None, "the client hung up"
    return request


async def nothing_sent(store: RawConnection, when: str) -> None:
    """Fail if the client sends anything within 0.1 s."""
    with trio.move_on_after(0.1):
        early = await store.receive()
        pytest.fail(f"{early} went out {when}")


async def test_watch_waits_until_no_reply_is_outstanding() -> None:
    """Linux's xenbus device hangs on a WATCH sent while a reply is outstanding: the client
    sends WATCH (and UNWATCH) only once every earlier request has its reply."""
    client_stream, store_stream = trio.testing.memory_stream_pair()
    client, store = XenStoreClient(client_stream), RawConnection(store_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.read, "/slow")
        read = await next_request(store)
        assert read.type == MessageType.READ
        nursery.start_soon(client.watch, "/w", "tok")
        await trio.testing.wait_all_tasks_blocked()
        await nothing_sent(store, "before the READ's reply")
        await store.send(MessageType.READ, b"v", req_id=read.req_id)
        watch = await next_request(store)
        assert watch.type == MessageType.WATCH
        await store.send(MessageType.WATCH, b"OK\0", req_id=watch.req_id)
    await client.aclose()


async def test_read_together_reads_again_when_the_commit_conflicts() -> None:
    """The store refuses the commit of a transaction whose reads changed meanwhile (a pair
    of one advertisement's ring-ref and the next one's port): the client reads again."""
    client_stream, store_stream = trio.testing.memory_stream_pair()
    client, store = XenStoreClient(client_stream), RawConnection(store_stream)

    async def reply(to: Message, type: MessageType, payload: bytes) -> None:
        await store.send(type, payload, tx_id=to.tx_id, req_id=to.req_id)

    results: list[list[bytes | XenStoreError]] = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            results.append(await client.read_together(["/p/a", "/p/b"]))

        nursery.start_soon(read)
        for attempt, (a, b) in enumerate([(b"old", b"new"), (b"new", b"new")]):
            start = await next_request(store)
            assert start.type == MessageType.TRANSACTION_START
            await reply(start, MessageType.TRANSACTION_START, b"%d\0" % (attempt + 5))
            reads = [await next_request(store), await next_request(store)]
            assert [r.type for r in reads] == [MessageType.READ] * 2
            assert {r.tx_id for r in reads} == {attempt + 5}
            end = await next_request(store)
            assert (end.type, end.tx_id, end.payload) == (
                MessageType.TRANSACTION_END,
                attempt + 5,
                b"T\0",
            )
            await reply(reads[0], MessageType.READ, a)
            await reply(reads[1], MessageType.READ, b)
            if attempt == 0:
                await reply(end, MessageType.ERROR, b"EAGAIN\0")
            else:
                await reply(end, MessageType.TRANSACTION_END, b"OK\0")
    assert results == [[b"new", b"new"]]
    await client.aclose()


async def test_a_client_keeps_few_requests_out_at_once() -> None:
    """Many tasks sharing a client: at most OUTSTANDING_MAX requests await replies at once,
    so a store never holds a pile of unread replies for it (one that would drop it)."""
    client_stream, store_stream = trio.testing.memory_stream_pair()
    client, store = XenStoreClient(client_stream), RawConnection(store_stream)
    async with trio.open_nursery() as nursery:
        for n in range(3 * OUTSTANDING_MAX):
            nursery.start_soon(client.read, f"/k{n}")
        await trio.testing.wait_all_tasks_blocked()
        pending = [await next_request(store) for _ in range(OUTSTANDING_MAX)]
        await nothing_sent(store, f"with {OUTSTANDING_MAX} already out")
        answered = 0
        while answered < 3 * OUTSTANDING_MAX:
            request = pending.pop(0)
            await store.send(MessageType.READ, b"v", req_id=request.req_id)
            answered += 1
            if answered <= 2 * OUTSTANDING_MAX:
                pending.append(await next_request(store))  # one in, one out
    await client.aclose()


async def test_over_a_file_descriptor_one_request_at_a_time() -> None:
    """Over a file descriptor (Linux's /dev/xen/xenbus, whose driver sends from the buffer the
    next write reuses), the next request goes out only once the last one has its reply."""
    ours, theirs = socket.socketpair()
    client = XenStoreClient(trio.lowlevel.FdStream(os.dup(ours.fileno())))
    ours.close()
    store = RawConnection(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.write_many, [("/a", b"1", [Permission(Access.NONE, 0)])])
        write = await next_request(store)
        assert write.type == MessageType.WRITE
        await nothing_sent(store, "before the WRITE's reply")
        await store.send(MessageType.WRITE, b"OK\0", req_id=write.req_id)
        perms = await next_request(store)
        assert perms.type == MessageType.SET_PERMS
        await store.send(MessageType.SET_PERMS, b"OK\0", req_id=perms.req_id)
    await client.aclose()
    await store.stream.aclose()

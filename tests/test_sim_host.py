"""The simulated host: event channels and grants between real processes, and in-process."""

from __future__ import annotations

import errno
import mmap
import os
import select
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from sim_agent import AgentError, agent

from trio_vchan import BackendUnavailableError, XenStoreError
from trio_vchan._backend import PAGE_SIZE, ChannelStatus
from trio_vchan._sim import _host
from trio_vchan._sim._fds import ANCILLARY_SPACE, received_fds
from trio_vchan._sim._proto import NO_NOTIFY, Op
from trio_vchan._xenstore import WatchEvent, XenStoreClient
from trio_vchan.sim import ENV_DIR, ENV_DOMID, SimEventChannel, SimulatedHost, backend_from_environ

TIMEOUT = 60  # generous: these machines are small and shared


@pytest.fixture
async def host() -> AsyncIterator[SimulatedHost]:
    async with SimulatedHost() as host:
        directory = host.directory
        yield host
        with trio.fail_after(TIMEOUT):
            await host.wait_idle()
        assert host.leaks() == []
    assert not await trio.Path(directory).exists()


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


# -- between processes ----------------------------------------------------------------------------


async def test_three_domains_share_notify_and_refuse(host: SimulatedHost) -> None:
    async with (
        agent(host.environ, 0) as dom0,
        agent(host.environ, 1) as dom1,
        agent(host.environ, 2) as dom2,
    ):
        channel = await dom0.call("bind_unbound", remote=1)
        share = await dom0.call("share", remote=1, count=2)
        peer = await dom1.call("bind_interdomain", remote=0, port=channel["port"])
        mapping = await dom1.call("map", remote=0, refs=share["refs"], writable=True)

        # pages written in one process are seen in the other, both ways, on both pages
        await dom1.call("write", id=mapping["id"], offset=PAGE_SIZE + 7, hex=b"hi".hex())
        got = await dom0.call("read", id=share["id"], offset=PAGE_SIZE + 7, end=PAGE_SIZE + 9)
        assert got["hex"] == b"hi".hex()
        await dom0.call("write", id=share["id"], offset=0, hex=b"yo".hex())
        assert (await dom1.call("read", id=mapping["id"], offset=0, end=2))["hex"] == "796f"

        # a third domain is refused
        with pytest.raises(AgentError) as refused:
            await dom2.call("map", remote=0, refs=share["refs"], writable=False)
        assert refused.value.reply["errno"] == errno.EACCES
        assert "third domain" in refused.value.reply["message"]
        await dom2.exit()

        # notify wakes the other process; two notifies coalesce into one consume
        assert not (await dom1.call("readable", id=peer["id"]))["readable"]
        await dom0.call("notify", id=channel["id"])
        await dom0.call("notify", id=channel["id"])
        await dom1.call("wait", id=peer["id"])
        await dom1.call("consume", id=peer["id"])
        assert not (await dom1.call("readable", id=peer["id"]))["readable"]
        await dom1.call("notify", id=peer["id"])
        await dom0.call("wait", id=channel["id"])
        await dom0.call("consume", id=channel["id"])

        # closing a port is seen by the other end
        assert not (await dom0.call("peer_closed", id=channel["id"]))["peer_closed"]
        await dom1.call("close", id=peer["id"])
        await dom0.call("wait", id=channel["id"])
        assert (await dom0.call("peer_closed", id=channel["id"]))["peer_closed"]
        await dom0.call("notify", id=channel["id"])  # a no-op now
        await dom1.call("close", id=mapping["id"])
        await dom0.call("close", id=share["id"])
        await dom0.call("close", id=channel["id"])
        await dom1.exit()
        await dom0.exit()


async def test_sigkill_performs_unmap_notify(host: SimulatedHost) -> None:
    """The client dies holding a mapping with an unmap-notify (as libxenvchan's cli_live)."""
    async with agent(host.environ, 0) as server, agent(host.environ, 1) as client:
        channel = await server.call("bind_unbound", remote=1)
        share = await server.call("share", remote=1, count=1)
        await server.call("write", id=share["id"], offset=20, hex="01")
        peer = await client.call("bind_interdomain", remote=0, port=channel["port"])
        mapping = await client.call("map", remote=0, refs=share["refs"], writable=True)
        await client.call("unmap_notify", id=mapping["id"], offset=20, port=peer["port"])
        await client.kill()
        await server.call("wait", id=channel["id"])
        assert (await server.call("read", id=share["id"], offset=20, end=21))["hex"] == "00"
        assert (await server.call("peer_closed", id=channel["id"]))["peer_closed"]
        await server.exit()


async def test_sigkill_of_the_granting_process(host: SimulatedHost) -> None:
    """The server dies: its share's unmap-notify clears srv_live in the client's mapping."""
    local = host.backend(1)
    async with agent(host.environ, 0) as server:
        channel = await server.call("bind_unbound", remote=1)
        share = await server.call("share", remote=1, count=1)
        await server.call("write", id=share["id"], offset=21, hex="01")
        await server.call("unmap_notify", id=share["id"], offset=21, port=channel["port"])
        peer = local.events.bind_interdomain(0, channel["port"])
        mapping = local.memory.map(0, share["refs"], writable=False)
        assert mapping.buffer[21] == 1
        await server.kill()
        with trio.fail_after(TIMEOUT):
            await trio.lowlevel.wait_readable(peer.fileno())
        assert mapping.buffer[21] == 0
        assert isinstance(peer, SimEventChannel)
        assert peer.peer_closed
        mapping.close()
        peer.close()
    local.close()


async def test_destroy_domain_across_processes(host: SimulatedHost) -> None:
    """Domain 2 holds a mapping and a share with unmap-notifies and a channel with domain 1."""
    async with (
        agent(host.environ, 0) as dom0,
        agent(host.environ, 1) as dom1,
        agent(host.environ, 2) as dom2,
    ):
        channel = await dom1.call("bind_unbound", remote=2)
        share1 = await dom1.call("share", remote=2, count=1)
        await dom1.call("write", id=share1["id"], offset=30, hex="01")
        peer = await dom2.call("bind_interdomain", remote=1, port=channel["port"])
        mapping2 = await dom2.call("map", remote=1, refs=share1["refs"], writable=True)
        await dom2.call("unmap_notify", id=mapping2["id"], offset=30, port=peer["port"])
        share2 = await dom2.call("share", remote=1, count=1)
        await dom2.call("write", id=share2["id"], offset=40, hex="01")
        await dom2.call("unmap_notify", id=share2["id"], offset=40, port=peer["port"])
        mapping1 = await dom1.call("map", remote=2, refs=share2["refs"], writable=False)
        await dom2.call("xs_write", path="data/x", value="v")
        for path, token in (("@releaseDomain", "released"), ("/local/domain/2", "home")):
            await dom0.call("xs_watch", path=path, token=token)
            assert await dom0.call("xs_next_event") == {"path": path, "token": token}
        assert not (await dom1.call("readable", id=channel["id"]))["readable"]
        assert not (await dom1.call("peer_closed", id=channel["id"]))["peer_closed"]

        host.destroy_domain(2)

        await dom1.call("wait", id=channel["id"])
        assert (await dom1.call("read", id=share1["id"], offset=30, end=31))["hex"] == "00"
        # domain 2's page stays mapped, its unmap-notify byte cleared
        assert (await dom1.call("read", id=mapping1["id"], offset=40, end=41))["hex"] == "00"
        assert (await dom1.call("peer_closed", id=channel["id"]))["peer_closed"]
        with pytest.raises(AgentError) as gone:  # its reply follows the events: they are in
            await dom0.call("xs_read", path="/local/domain/2/data/x")
        assert gone.value.reply["errno"] == errno.ENOENT
        assert await dom0.call("xs_next_event") == {"path": "/local/domain/2", "token": "home"}
        assert await dom0.call("xs_next_event") == {"path": "@releaseDomain", "token": "released"}
        # the domain's process is cut off, not killed
        reply = await dom2.try_call("bind_unbound", remote=1)
        assert reply["errno"] == errno.EPIPE, reply
        assert not await (trio.Path(host.directory) / "domains" / "2").exists()
        assert [leak for leak in host.leaks() if "destroyed" in leak] == [
            f"destroyed domain 2 grant ref {share2['refs'][0]} (revoked but mapped, "
            "to domain 1, mapped 1 times)"
        ]
        await dom2.exit()

        # the same domid joins again as a fresh domain with its own grant table
        async with agent(host.environ, 2) as again:
            fresh = await again.call("share", remote=1, count=1)
            assert fresh["refs"] == share2["refs"]
            with pytest.raises(AgentError) as gone:
                await again.call("xs_read", path="data/x")
            assert gone.value.reply["errno"] == errno.ENOENT
            mapped = await dom1.call("map", remote=2, refs=fresh["refs"], writable=False)
            assert (await dom1.call("read", id=mapped["id"], offset=40, end=41))["hex"] == "00"
            await again.call("write", id=fresh["id"], offset=40, hex="07")
            assert (await dom1.call("read", id=mapped["id"], offset=40, end=41))["hex"] == "07"
            # the old page is still the old page
            assert (await dom1.call("read", id=mapping1["id"], offset=40, end=41))["hex"] == "00"
            await dom1.call("close", id=mapped["id"])
            await again.exit()
        for held in (mapping1, share1, channel):
            await dom1.call("close", id=held["id"])
        await dom1.exit()
        await dom0.exit()


# -- in one process -------------------------------------------------------------------------------


async def test_destroy_domain_in_process(host: SimulatedHost) -> None:
    b0, b1, b2 = host.backend(0), host.backend(1), host.backend(2)
    async with (
        XenStoreClient(await b0.connect_xenstore()) as xs0,
        XenStoreClient(await b2.connect_xenstore()) as xs2,
    ):
        await xs0.watch("@releaseDomain", "released")
        assert await xs0.next_watch_event() == WatchEvent("@releaseDomain", "released")
        await xs2.write("data/x", b"v")
        await xs2.watch("data", "mine")
        assert await xs2.next_watch_event() == WatchEvent("data", "mine")
        server = b1.events.bind_unbound(2)
        client = b2.events.bind_interdomain(1, server.port)
        share = b1.memory.share(2, 1)
        mapping = b2.memory.map(1, share.refs, writable=True)
        share.buffer[5] = 1
        mapping.set_unmap_notify(5, client.port)

        host.destroy_domain(2)

        assert share.buffer[5] == 0
        # one event for the unmap-notify, then one for the closed port
        assert os.eventfd_read(server.fileno()) == 2
        assert isinstance(server, SimEventChannel)
        assert server.peer_closed
        for call in (lambda: b2.events.bind_unbound(1), lambda: b2.memory.share(1, 1)):
            with pytest.raises(OSError, match="closed") as exc_info:
                call()
            assert exc_info.value.errno == errno.EPIPE
        with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError):
            await xs2.read("data/x")
        # the events were queued before this reply, so they have arrived with it
        assert await xs0.read("domid") == b"0"
        with trio.fail_after(1):
            assert await xs0.next_watch_event() == WatchEvent("@releaseDomain", "released")
    assert not [leak for leak in host.leaks() if "/local/domain/2" in leak]  # data/x is gone
    with pytest.raises(FileNotFoundError):
        await b2.connect_xenstore()
    # its process's objects still close quietly, and release nothing more
    mapping.close()
    client.close()
    b2.close()
    assert host.leaks() == [
        f"domain 1 port {server.port} (peer_closed, for domain 2)",
        f"domain 1 grant ref {share.refs[0]} (granted, to domain 2, mapped 0 times)",
    ]
    share.close()
    server.close()
    b1.close()
    b0.close()

    with pytest.raises(ProcessLookupError, match="no domain 2") as lookup:
        host.destroy_domain(2)
    assert lookup.value.errno == errno.ESRCH
    with pytest.raises(ValueError, match="domain 0 cannot"):
        host.destroy_domain(0)
    with pytest.raises(ValueError, match=r"0\.\.32751"):
        host.destroy_domain(40000)
    with pytest.raises(TypeError):
        host.destroy_domain("3")  # type: ignore[arg-type]

    # introduced again: fresh sockets and XenStore home
    b2 = host.backend(2)
    async with XenStoreClient(await b2.connect_xenstore()) as xs2:
        assert await xs2.read("domid") == b"2"
        with pytest.raises(XenStoreError, match="ENOENT"):
            await xs2.read("data/x")
    b2.events.bind_unbound(0).close()
    b2.close()


async def test_destroy_while_another_domain_maps_and_the_host_stops() -> None:
    """A destroyed domain's page stays readable while mapped, also after the host stopped."""
    async with SimulatedHost() as host:
        b1, b2 = host.backend(1), host.backend(2)
        share = b2.memory.share(1, 1)
        share.buffer[0] = 9
        mapping = b1.memory.map(2, share.refs, writable=False)
        host.destroy_domain(2)
        assert mapping.buffer[0] == 9
        assert len(host.leaks()) == 2  # the zombie grant and domain 1's mapping of it
    assert mapping.buffer[0] == 9  # our own mmap outlives the host
    mapping.close()
    share.close()
    b1.close()
    b2.close()


async def test_event_channel_semantics(host: SimulatedHost) -> None:
    b0, b1 = host.backend(0), host.backend(1)
    server = b0.events.bind_unbound(1)
    server.notify()  # nobody is bound yet: dropped
    client = b1.events.bind_interdomain(0, server.port)
    assert not readable(client.fileno())
    server.notify()
    server.notify()
    assert readable(client.fileno())
    client.consume()
    assert not readable(client.fileno())
    client.consume()  # nothing pending: never blocks

    with pytest.raises(OSError, match="not unbound for domain 1") as exc_info:
        b1.events.bind_interdomain(0, server.port)  # already connected
    assert exc_info.value.errno == errno.EINVAL
    with pytest.raises(OSError, match="has no port") as exc_info:
        b1.events.bind_interdomain(0, 999)
    assert exc_info.value.errno == errno.EINVAL
    other = b0.events.bind_unbound(2)
    with pytest.raises(OSError, match="not unbound for domain 1"):
        b1.events.bind_interdomain(0, other.port)
    other.close()

    client.close()
    client.close()  # idempotent
    assert client.fileno() == -1
    with pytest.raises(OSError, match="was closed"):
        client.notify()
    assert readable(server.fileno())
    assert isinstance(server, SimEventChannel)
    assert server.peer_closed
    server.notify()  # a no-op
    server.close()
    b0.close()
    b1.close()


async def test_the_host_keeps_one_fd_per_eventfd(host: SimulatedHost) -> None:
    """A connected pair of ports is two eventfds, and the host holds each once (the bound port
    takes over the one the unbound port kept for it): here, where the domains' processes are
    the host's, 2 fds per pair for the host and 2 per port for the domains. Either end closing
    first leaves nothing open, and events still cross both ways."""
    b0, b1 = host.backend(0), host.backend(1)
    count = 10
    before = len(os.listdir("/proc/self/fd"))
    pairs = []
    for _ in range(count):
        server = b0.events.bind_unbound(1)
        pairs.append((server, b1.events.bind_interdomain(0, server.port)))
    assert len(os.listdir("/proc/self/fd")) - before == count * (2 + 2 * 2)
    for index, (server, client) in enumerate(pairs):
        server.notify()
        client.notify()
        assert readable(client.fileno())
        assert readable(server.fileno())
        client.consume()
        server.consume()
        first, second = (server, client) if index % 2 else (client, server)
        first.close()
        assert readable(second.fileno())  # the host fired the survivor's own eventfd
        second.close()
    assert len(os.listdir("/proc/self/fd")) == before
    b0.close()
    b1.close()


async def test_a_domain_has_at_most_its_event_channels_lowest_numbers_first() -> None:
    with pytest.raises(ValueError, match="1 to 131072"):
        SimulatedHost(max_event_channels=(1 << 17) + 1)
    async with SimulatedHost(max_event_channels=5) as host:
        b0, b1 = host.backend(0), host.backend(1)
        ports = [b0.events.bind_unbound(1) for _ in range(5)]
        assert [p.port for p in ports] == [1, 2, 3, 4, 5]
        with pytest.raises(OSError, match="all its 5 event channels open") as exc_info:
            b0.events.bind_unbound(1)
        assert exc_info.value.errno == errno.ENOSPC
        client = b1.events.bind_interdomain(0, ports[3].port)  # the limit is per domain
        ports[3].close()
        ports[1].close()
        # Xen hands out the lowest free number: 2, then 4, then the next new one is refused.
        again = [b0.events.bind_unbound(1) for _ in range(2)]
        assert [p.port for p in again] == [2, 4]
        with pytest.raises(OSError, match="event channels open"):
            b0.events.bind_unbound(1)
        for channel in [*ports, *again, client]:
            channel.close()
        b0.close()
        b1.close()
        assert host.leaks() == []


async def test_grant_errors_and_ref_reuse(host: SimulatedHost) -> None:
    b0, b1 = host.backend(0), host.backend(1)
    first = b0.memory.share(1, 1)
    second = b0.memory.share(1, 2)
    assert all(ref >= 8 for ref in (*first.refs, *second.refs))
    assert len({*first.refs, *second.refs}) == 3

    with pytest.raises(OSError, match="no grant ref") as exc_info:
        b1.memory.map(0, [12345], writable=True)
    assert exc_info.value.errno == errno.ENOENT
    with pytest.raises(OSError, match="no domain 77") as exc_info:
        b1.memory.map(77, [8], writable=True)
    assert exc_info.value.errno == errno.ESRCH
    with pytest.raises(OSError, match="not consecutive pages") as exc_info:
        b1.memory.map(0, [first.refs[0], second.refs[0]], writable=True)
    assert exc_info.value.errno == errno.EINVAL
    with pytest.raises(OSError, match="not consecutive pages"):
        b1.memory.map(0, [second.refs[1], second.refs[0]], writable=True)
    with pytest.raises(ValueError, match="count must be"):
        b0.memory.share(1, 0)

    # one page of a two-page share maps at the right offset
    second.buffer[PAGE_SIZE] = 42
    tail = b1.memory.map(0, [second.refs[1]], writable=False)
    assert tail.buffer[0] == 42
    assert len(tail.buffer) == PAGE_SIZE
    with pytest.raises(TypeError):
        tail.buffer[0] = 1  # read-only
    ch = b1.events.bind_unbound(0)
    with pytest.raises(OSError, match="needs a writable mapping"):
        tail.set_unmap_notify(0, ch.port)
    with pytest.raises(OSError, match="is not bound in domain 0"):
        first.set_unmap_notify(0, 4000)

    # an unshared ref stays in use while mapped, then is free again
    second.close()
    with pytest.raises(OSError, match="no grant ref"):
        b1.memory.map(0, [second.refs[0]], writable=True)
    assert any("revoked but mapped" in leak for leak in host.leaks())
    tail.close()
    assert not any("revoked" in leak for leak in host.leaks())
    again = b0.memory.share(1, 1)
    assert again.refs[0] == second.refs[0]  # lowest free ref
    again.close()
    first.close()
    ch.close()
    b0.close()
    b1.close()


async def test_release_refuses_while_views_are_alive(host: SimulatedHost) -> None:
    b0 = host.backend(0)
    share = b0.memory.share(1, 1)
    view = share.buffer[10:20]
    with pytest.raises(BufferError, match="still alive"):
        share.close()
    assert host.leaks()  # nothing was released
    share.buffer[10] = 5  # still usable
    assert view[0] == 5
    view.release()
    share.close()
    share.close()
    with pytest.raises(ValueError, match="already released"):
        _ = share.buffer
    b0.close()


async def test_unmap_notify_on_close(host: SimulatedHost) -> None:
    b0, b1 = host.backend(0), host.backend(1)
    server = b0.events.bind_unbound(1)
    client = b1.events.bind_interdomain(0, server.port)
    share = b0.memory.share(1, 1)
    mapping = b1.memory.map(0, share.refs, writable=True)
    share.buffer[20] = share.buffer[21] = 1
    mapping.set_unmap_notify(20, client.port)
    share.set_unmap_notify(21, server.port)
    mapping.close()
    assert share.buffer[20] == 0
    assert readable(server.fileno())
    server.consume()
    # closing the backend (the device) releases the share: its notify fires the client
    b0.close()
    assert share.buffer[21] == 0  # our own mmap is still there
    assert readable(client.fileno())
    share.close()
    server.close()
    client.close()
    b1.close()


async def test_backend_close_releases_everything(host: SimulatedHost) -> None:
    b0 = host.backend(0)
    b0.events.bind_unbound(1)
    share = b0.memory.share(1, 3)
    assert len(host.leaks()) == 4
    b0.close()
    assert host.leaks() == []
    share.close()  # the local mmap only


async def test_hostile_clients_do_not_break_the_host(host: SimulatedHost) -> None:
    path = os.path.join(host.directory, "domains", "0", "platform")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sock:
        await sock.connect(path)
        for message in (
            b"x",
            b"\xff" * 16,
            struct.pack("<4I", 2, 99999, 0, 0),  # bad domid
            struct.pack("<4I", 6, 1, 0, 0),  # share 0 pages
            struct.pack("<4I", 6, 1, 2000, 0),  # too many pages
            struct.pack("<4I", 9, 5, 0, 0),  # release a handle we do not have
            struct.pack("<4I", 4, 1, 0, 0) + b"junk",
            struct.pack("<4I", 7, 0, 0, 0),  # map no refs
            struct.pack("<4I", 7, 0, 0xFF, 0) + b"\x08\0\0\0",  # unknown flags
            struct.pack("<4I", 10, 5, 0, 0),  # introduce on a platform socket
            struct.pack("<4I", 11, 5, 0, 0),  # destroy on a platform socket
        ):
            await sock.sendmsg(
                [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", 0))]
            )
            reply, _, _, _ = await sock.recvmsg(65536, 64)
            assert struct.unpack_from("<I", reply)[0] != 0, message
        await sock.send(b"y" * 100000)  # oversized
        reply = await sock.recv(65536)
        assert struct.unpack_from("<I", reply)[0] == errno.EMSGSIZE
        # a share whose reply we never read: released when we hang up
        await sock.send(struct.pack("<4I", 6, 1, 1, 0))
    with trio.fail_after(TIMEOUT):
        await host.wait_idle()
    assert host.leaks() == []
    # the host still serves
    b0 = host.backend(0)
    b0.memory.share(1, 1).close()
    b0.close()


async def test_backend_from_environ_in_process_and_errors(host: SimulatedHost) -> None:
    backend = backend_from_environ(host.environ(5))  # in the host's process: no deadlock
    assert backend.domid == 5
    channel = backend.events.bind_unbound(0)
    channel.close()
    backend.close()
    with pytest.raises(BackendUnavailableError, match="TRIO_VCHAN_SIM is not set"):
        backend_from_environ({})
    with pytest.raises(BackendUnavailableError, match="TRIO_VCHAN_DOMID is not"):
        backend_from_environ({ENV_DIR: host.directory})
    with pytest.raises(ValueError, match="decimal domain id"):
        backend_from_environ({ENV_DIR: host.directory, ENV_DOMID: "x1"})
    with pytest.raises(ValueError, match=r"0\.\.32751"):
        backend_from_environ({ENV_DIR: host.directory, ENV_DOMID: "40000"})
    with pytest.raises(BackendUnavailableError, match="not a running simulated host"):
        backend_from_environ({ENV_DIR: "/nonexistent", ENV_DOMID: "1"})


async def test_child_process_creates_its_domain(host: SimulatedHost) -> None:
    environ = {ENV_DIR: host.directory, ENV_DOMID: "9"}  # not created by the test
    async with agent(lambda _: environ, 9) as dom9:
        channel = await dom9.call("bind_unbound", remote=0)
        b0 = host.backend(0)
        mine = b0.events.bind_interdomain(9, channel["port"])
        mine.notify()
        await dom9.call("wait", id=channel["id"])
        mine.close()
        b0.close()
        await dom9.exit()


async def test_host_directory_lifecycle(tmp_path: Path) -> None:
    where = tmp_path / "host"
    async with SimulatedHost(where) as host:
        assert host.directory == str(where)
        assert os.stat(where).st_mode & 0o777 == 0o700
        assert (where / "host").is_socket()
        assert (where / "domains" / "0" / "platform").is_socket()
        host.backend(3).close()
        assert (where / "domains" / "3" / "xenstore").is_socket()
    assert not where.exists()
    with pytest.raises(RuntimeError, match="not running"):
        _ = host.directory
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    with pytest.raises(ValueError, match="must be empty"):
        async with SimulatedHost(tmp_path / "full"):
            pass  # pragma: no cover


async def test_the_blocks_own_exception_comes_out_as_raised() -> None:
    """Not wrapped in an ExceptionGroup by the host's nursery: a failing test reads as itself."""
    error = ValueError("the block's own")
    with pytest.raises(ValueError, match="the block's own") as caught:
        async with SimulatedHost():
            raise error
    assert caught.value is error
    with trio.move_on_after(0.05) as scope:
        async with SimulatedHost():
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_stopping_the_host_breaks_clients() -> None:
    host = SimulatedHost()
    await host.__aenter__()
    directory = host.directory
    backend = host.backend(1)
    share = backend.memory.share(0, 1)
    async with agent(host.environ, 2) as dom2:
        await dom2.call("bind_unbound", remote=0)
        await host.__aexit__(None, None, None)
        assert not await trio.Path(directory).exists()
        reply = await dom2.try_call("bind_unbound", remote=0)
        assert reply["errno"] == errno.EPIPE, reply
        await dom2.exit()
    with pytest.raises(OSError, match="closed") as exc_info:
        backend.events.bind_unbound(0)
    assert exc_info.value.errno == errno.EPIPE
    share.close()
    backend.close()


def test_sim_exports_only_documented_names() -> None:
    from test_exports import documented_names

    import trio_vchan.sim

    assert sorted(trio_vchan.sim.__all__) == sorted(documented_names("trio_vchan.sim"))


# -- unmap-notify details, over a raw platform connection -----------------------------------------


class RawPlatform:
    """A platform connection spoken by hand (as a program in another language would)."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    async def call(self, op: int, *args: int) -> tuple[tuple[int, ...], list[int]]:
        await self.sock.send(struct.pack("<4I", op, *(*args, 0, 0, 0)[:3]))
        reply, ancdata, _, _ = await self.sock.recvmsg(65536, ANCILLARY_SPACE)
        status, *values = struct.unpack_from("<4I", reply)
        assert status == 0, reply[16:].decode()
        return tuple(values), received_fds(ancdata)


@asynccontextmanager
async def raw_platform(host: SimulatedHost, domid: int) -> AsyncIterator[RawPlatform]:
    host.add_domain(domid)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sock:
        await sock.connect(os.path.join(host.directory, "domains", str(domid), "platform"))
        yield RawPlatform(sock)


async def test_an_unmap_notify_may_only_clear_the_byte_or_only_send_the_event(
    host: SimulatedHost,
) -> None:
    backend = host.backend(2)
    async with raw_platform(host, 1) as raw:
        (port, _, _), fds = await raw.call(Op.EVTCHN_BIND_UNBOUND, 2)
        channel = backend.events.bind_interdomain(1, port)
        for notify_offset, notify_port, cleared, fired in (
            (NO_NOTIFY, port, False, True),
            (10, NO_NOTIFY, True, False),
            (NO_NOTIFY, NO_NOTIFY, False, False),  # none: as if never set
        ):
            (handle, _, _), (memfd,) = await raw.call(Op.GNT_SHARE, 2, 1)
            page = mmap.mmap(memfd, PAGE_SIZE)
            os.close(memfd)
            page[:] = b"\xaa" * PAGE_SIZE
            await raw.call(Op.GNT_SET_UNMAP_NOTIFY, handle, 10, port)  # replaced by:
            await raw.call(Op.GNT_SET_UNMAP_NOTIFY, handle, notify_offset, notify_port)
            channel.consume()
            await raw.call(Op.GNT_RELEASE, handle)
            expected = bytearray(b"\xaa" * PAGE_SIZE)
            if cleared:
                expected[10] = 0
            assert page[:] == expected
            assert readable(channel.fileno()) is fired
            page.close()
        await raw.call(Op.EVTCHN_CLOSE, port)
        for fd in fds:
            os.close(fd)
    channel.close()
    backend.close()


async def test_a_port_an_unmap_notify_needs_stays_until_the_notify_has_run(
    host: SimulatedHost,
) -> None:
    """As on Linux, where gntalloc holds the port: the peer sees the notify, then the close."""
    granting, peer = host.backend(1), host.backend(2)
    async with raw_platform(host, 1) as raw:  # the port on one connection of domain 1...
        (port, _, _), fds = await raw.call(Op.EVTCHN_BIND_UNBOUND, 2)
        channel = peer.events.bind_interdomain(1, port)
        share = granting.memory.share(2, 1)  # ...the share and its notify on another
        share.set_unmap_notify(0, port)
        mapping = peer.memory.map(1, share.refs, writable=True)
        mapping.buffer[0] = 1
        await raw.call(Op.EVTCHN_CLOSE, port)  # the port's connection lets go of it first
        for fd in fds:
            os.close(fd)
        assert not readable(channel.fileno())
        assert channel.status() is ChannelStatus.CONNECTED
        share.close()
        assert mapping.buffer[0] == 0
        assert readable(channel.fileno())  # the notify's event...
        assert channel.status() is ChannelStatus.PEER_CLOSED  # ...and then the close
        mapping.close()
    channel.close()
    granting.close()
    peer.close()


async def test_domains_have_names_in_xenstore_as_on_xen() -> None:
    async with SimulatedHost(names={1: "web"}) as host:
        dom0, dom1, dom2 = host.backend(0), host.backend(1), host.backend(2)
        async with (
            XenStoreClient(await dom0.connect_xenstore()) as xs0,
            XenStoreClient(await dom1.connect_xenstore()) as xs1,
            XenStoreClient(await dom2.connect_xenstore()) as xs2,
        ):
            assert await xs0.read("/local/domain/0/name") == b"Domain-0"
            assert await xs1.read("name") == b"web"  # the domain reads its own...
            with pytest.raises(XenStoreError, match="EACCES"):
                await xs2.read("/local/domain/1/name")  # ...others may not, as on Xen
            with pytest.raises(XenStoreError, match="ENOENT"):
                await xs2.read("name")  # unnamed
            async with xs0.watching("/local/domain/2/name") as changes:
                host.name_domain(2, "db")
                with trio.fail_after(TIMEOUT):
                    await changes.wait()
            assert await xs2.read("name") == b"db"
            for domid, name, problem in (
                (3, "db", "is domain 2's already"),
                (3, "Domain-0", "is domain 0's already"),
                (3, "007", "all digits"),
                (3, "a b", "printable ASCII"),
                (3, "", "1 to 64"),
                (3, "x" * 65, "1 to 64"),
            ):
                with pytest.raises(ValueError, match=problem):
                    host.name_domain(domid, name)
            host.name_domain(2, "db")  # its own name again: fine
        host.destroy_domain(1)
        dom1.close()
        again = host.backend(1)  # a new domain 1 has the name again
        async with XenStoreClient(await again.connect_xenstore()) as xs1:
            assert await xs1.read("name") == b"web"
        for backend in (dom0, dom2, again):
            backend.close()
        with trio.fail_after(TIMEOUT):
            await host.wait_idle()
        assert host.leaks() == []
    with pytest.raises(ValueError, match="is domain 1's already"):
        SimulatedHost(names={1: "web", 2: "web"})


_CONNECTOR = """
import select, socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(count):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(path)
    socks.append(sock)
# the host closes the connections it refuses at once: those read the end of the stream
time.sleep(1)
readable, _, _ = select.select(socks, [], [], 0)
print(count - sum(not s.recv(1) for s in readable), flush=True)
sys.stdin.read()
"""


async def test_a_domain_may_not_open_more_than_its_platform_connections(
    host: SimulatedHost,
) -> None:
    limit = _host.PLATFORM_CONNECTIONS_PER_DOMAIN
    host.add_domain(1)
    path = os.path.join(host.directory, "domains", "1", "platform")
    attack = await trio.lowlevel.open_process(
        [sys.executable, "-c", _CONNECTOR, path, str(limit + 20)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert attack.stdin is not None
    assert attack.stdout is not None
    try:
        with trio.fail_after(TIMEOUT):
            line = b""
            while not line.endswith(b"\n"):
                line += await attack.stdout.receive_some()
        assert int(line) == limit  # the 20 beyond were closed at once
        # another domain is served as before, and so is this one's next process once it ends
        async with agent(host.environ, 2) as dom2:
            await dom2.exit()
    finally:
        await attack.stdin.aclose()
        with trio.fail_after(TIMEOUT):
            await attack.wait()
    async with agent(host.environ, 1) as dom1:
        await dom1.exit()

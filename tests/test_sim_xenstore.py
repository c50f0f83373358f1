"""XenStore on the simulated host, between processes: identities, permissions and watches."""

from __future__ import annotations

import errno
import os
import shutil
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import trio
from conftest import missing_xen_tool
from sim_agent import AgentError, agent

from trio_vchan import XenStoreError
from trio_vchan._xenstore import XenStoreClient
from trio_vchan._xs_wire import Message, MessageType
from trio_vchan.sim import SimulatedHost

TIMEOUT = 60
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

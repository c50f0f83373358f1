"""XenStore on the simulated host, between processes: identities, permissions and watches."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import AsyncIterator

import pytest
import trio
from sim_agent import AgentError, agent

from trio_vchan.sim import SimulatedHost

TIMEOUT = 60
SECRET = "/local/domain/1/data/secret"


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


@pytest.mark.skipif(shutil.which("xenstore-read") is None, reason="Xen's xenstore-utils absent")
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

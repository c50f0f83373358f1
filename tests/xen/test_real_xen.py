"""trio-vchan between real Xen domains: dom0 (these tests) and a PV domU (its agent).

Runs only inside dom0 of the QEMU-booted Xen that ``nox -s xen`` starts (see
``tests/xen/dom0-tests.sh``), which sets ``XEN_TEST_DOMU`` to the domU's id; elsewhere the
module is skipped. The domU side runs ``xen_peer.py`` (trio-vchan), ``vchan-peer`` (Xen's C
libxenvchan) or Xen's ``vchan-socket-proxy``, started through the agent (``xen_agent.py``).

Every vchan step has a deadline (``trio.fail_after``), and every job in the domU a timeout.
Transfers are checked by sha256 of reproducible pseudo-random data. Sizes are modest: under
TCG emulation a vchan moves about 1-3 MB/s.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest
import trio
from xen_peer import digest, exchange, pattern, receive_until

import trio_vchan
from trio_vchan._api import default_backend
from trio_vchan._errors import XenStoreError
from trio_vchan._handshake import vchan_path
from trio_vchan._xenstore import XenStoreClient
from trio_vchan._xs_wire import Access, Permission

DOMU: Final = int(os.environ.get("XEN_TEST_DOMU", "-1"))
DOMU_NAME: Final = "trio-vchan-domu"  # dom0-tests.sh's domu.cfg
HERE: Final = os.path.dirname(os.path.abspath(__file__))
DOM0_VCHAN_PEER: Final = os.environ.get("XEN_TEST_VCHAN_PEER", "vchan-peer")
DOMU_VCHAN_PEER: Final = "/usr/local/bin/vchan-peer"
DOMU_PEER: Final = ["python3", "/opt/repo/tests/xen/xen_peer.py"]
JOB_TIMEOUT: Final = 180  # seconds a domU job may run before the agent kills it
STEP: Final = 120  # seconds any single vchan step may take here

if DOMU < 0 or not os.path.exists("/dev/xen/evtchn"):
    pytest.skip(
        "needs dom0 of a real Xen with a test domU (nox -s xen sets XEN_TEST_DOMU)",
        allow_module_level=True,
    )

KIB: Final = 1024
MIB: Final = 1024 * KIB
# (server read_size, server write_size, bytes each way): every ring class: both in-page
# layouts (1 KiB + 2 KiB), one page, 16 pages and the 1 MiB maximum (256 pages per ring).
RINGS: Final = [
    pytest.param(1 * KIB, 2 * KIB, 48 * KIB, id="in-page-1K-2K"),
    pytest.param(2 * KIB, 1 * KIB, 48 * KIB, id="in-page-2K-1K"),
    pytest.param(4 * KIB, 4 * KIB, 96 * KIB, id="4K"),
    pytest.param(64 * KIB, 64 * KIB, 256 * KIB, id="64K"),
    pytest.param(MIB, MIB, MIB + 64 * KIB, id="1M"),
]
_ports = itertools.count(1)
_jobs = itertools.count(1)


def fresh_port() -> str:
    """A vchan port name not used before in this run."""
    return f"t{os.getpid()}-{next(_ports)}"


def peer(*args: object) -> dict[str, Any]:
    """A job: a trio-vchan peer (xen_peer.run) as a task of the domU's agent."""
    return {"peer": [str(a) for a in args], "timeout": JOB_TIMEOUT}


def peer_process(*args: object) -> dict[str, Any]:
    """A job: a trio-vchan peer in a process of its own (which a test can kill)."""
    argv = [*DOMU_PEER, "--timeout", str(JOB_TIMEOUT - 30), *map(str, args)]
    return {"argv": argv, "timeout": JOB_TIMEOUT}


def program(*argv: object) -> dict[str, Any]:
    """A job: a program in the domU."""
    return {"argv": [str(a) for a in argv], "timeout": JOB_TIMEOUT}


def libxenvchan_path(server: int, client: int, port: str) -> str:
    """Where trio-vchan looks for ``port``; the C library takes any path, so give it this one."""
    return vchan_path(server, client, port)


def last_json(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, f"no JSON report in the output: {text!r}"
    report: dict[str, Any] = json.loads(lines[-1])
    return report


class Agent:
    """Posts jobs to the domU's agent and collects their results, through XenStore."""

    def __init__(self, xs: XenStoreClient, domid: int) -> None:
        self._xs = xs
        self._base = f"/local/domain/{domid}/data/agent"

    async def start(self, spec: dict[str, Any]) -> str:
        """Post a job (from :func:`peer`, :func:`peer_process` or :func:`program`)."""
        job = f"{os.getpid()}-{next(_jobs)}"
        await self._xs.write(f"{self._base}/cmd/{job}", json.dumps(spec).encode())
        return job

    async def kill(self, job: str, number: int = signal.SIGKILL) -> None:
        await self._xs.write(f"{self._base}/kill/{job}", str(number).encode())

    async def result(self, job: str) -> dict[str, Any]:
        """Wait for the job to end; returns the agent's record (rc, stdout, stderr)."""
        record: dict[str, Any] = json.loads(
            await wait_for_node(self._xs, f"{self._base}/result/{job}")
        )
        print(f"domU job {job}: {record}")  # pytest shows it if the test fails
        return record

    async def report(self, job: str) -> dict[str, Any]:
        """Wait for a trio-vchan peer job and return its JSON report (it must have succeeded)."""
        record = await self.result(job)
        assert record["rc"] == 0, f"domU job failed: {record}"
        return last_json(record["stdout"])


async def wait_for_node(xs: XenStoreClient, path: str) -> bytes:
    """Return the value of ``path`` once it exists (watching, not polling)."""
    await xs.watch(path, "wait")
    try:
        while True:
            try:
                return await xs.read(path)
            except XenStoreError:
                while (await xs.next_watch_event()).token != "wait":
                    pass
    finally:
        await xs.unwatch(path, "wait")


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    backend = default_backend()
    try:
        async with XenStoreClient(await backend.connect_xenstore()) as xs:
            with trio.fail_after(STEP):  # the first test waits for the domU to boot
                await wait_for_node(xs, f"/local/domain/{DOMU}/data/agent/ready")
            yield Agent(xs, DOMU)
    finally:
        backend.close()


def test_backend_is_the_linux_one_and_knows_dom0() -> None:
    backend = default_backend()
    try:
        assert type(backend.memory).__module__ == "trio_vchan._linux._memory"
        assert backend.domid == 0
    finally:
        backend.close()


# -- trio-vchan on both sides ----------------------------------------------------------------------


@pytest.mark.parametrize(("read_size", "write_size", "nbytes"), RINGS)
async def test_dom0_serves_domu_connects(
    agent: Agent, read_size: int, write_size: int, nbytes: int
) -> None:
    port = fresh_port()
    job = await agent.start(peer("connect", 0, port, "exchange", nbytes, 2))
    with trio.fail_after(STEP):
        async with trio_vchan.serve(
            DOMU, port, read_size=read_size, write_size=write_size
        ) as stream:
            mine = await exchange(stream, nbytes, 1)
    with trio.fail_after(STEP):
        theirs = await agent.report(job)
    assert mine["sha"] == digest(pattern(nbytes, 2))
    assert theirs["sha"] == digest(pattern(nbytes, 1))
    assert mine["received"] == theirs["received"] == nbytes


@pytest.mark.parametrize(("read_size", "write_size", "nbytes"), RINGS)
async def test_domu_serves_dom0_connects(
    agent: Agent, read_size: int, write_size: int, nbytes: int
) -> None:
    port = fresh_port()
    job = await agent.start(peer("serve", 0, port, read_size, write_size, "exchange", nbytes, 4))
    with trio.fail_after(STEP):
        async with trio_vchan.connect(DOMU, port) as stream:
            mine = await exchange(stream, nbytes, 3)
    with trio.fail_after(STEP):
        theirs = await agent.report(job)
    assert mine["sha"] == digest(pattern(nbytes, 4))
    assert theirs["sha"] == digest(pattern(nbytes, 3))


# -- close and crash detection ---------------------------------------------------------------------


async def test_domu_closes_dom0_reads_everything_then_eof(agent: Agent) -> None:
    port, nbytes = fresh_port(), 40 * KIB  # more than the ring: the close waits for the reader
    job = await agent.start(peer("serve", 0, port, 4096, 4096, "send-close", nbytes, 5))
    with trio.fail_after(STEP):
        async with trio_vchan.connect(DOMU, port) as stream:
            received = await receive_until(stream)
            assert received == pattern(nbytes, 5)
            assert await stream.receive_some() == b""
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"too late")
        assert (await agent.report(job))["sent"] == nbytes


async def test_dom0_closes_domu_reads_everything_then_eof(agent: Agent) -> None:
    port, nbytes = fresh_port(), 40 * KIB
    job = await agent.start(peer("connect", 0, port, "drain"))
    with trio.fail_after(STEP):
        async with trio_vchan.serve(DOMU, port, read_size=4096, write_size=4096) as stream:
            await stream.send_all(pattern(nbytes, 6))
    with trio.fail_after(STEP):
        report = await agent.report(job)
    assert report == {
        "received": nbytes,
        "sha": digest(pattern(nbytes, 6)),
        "ending": "eof",
        "send_error": "BrokenResourceError",
    }


async def _survives_a_killed_domu_peer(
    agent: Agent, job: str, stream: trio_vchan.VchanStream
) -> None:
    assert await receive_until(stream, 6) == b"ready\n"
    await agent.kill(job, signal.SIGKILL)
    # The kernel's unmap-notify clears the dead peer's live byte and fires the event channel.
    assert await receive_until(stream) == b""
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"anyone there?")
    record = await agent.result(job)
    assert record["rc"] == -signal.SIGKILL, record


async def test_sigkill_of_the_domu_client_is_seen_by_the_dom0_server(agent: Agent) -> None:
    port = fresh_port()
    job = await agent.start(peer_process("connect", 0, port, "hold"))
    with trio.fail_after(STEP):
        async with trio_vchan.serve(DOMU, port, read_size=65536, write_size=65536) as stream:
            await _survives_a_killed_domu_peer(agent, job, stream)


async def test_sigkill_of_the_domu_server_is_seen_by_the_dom0_client(agent: Agent) -> None:
    port = fresh_port()
    job = await agent.start(peer_process("serve", 0, port, 1024, 2048, "hold"))
    with trio.fail_after(STEP):
        async with trio_vchan.connect(DOMU, port) as stream:
            await _survives_a_killed_domu_peer(agent, job, stream)


@pytest.mark.parametrize("dom0_role", ["client", "server"])
async def test_sigkill_of_a_dom0_peer_is_seen_in_the_domu(agent: Agent, dom0_role: str) -> None:
    port = fresh_port()
    if dom0_role == "client":
        job = await agent.start(peer("serve", 0, port, 65536, 65536, "survive"))
        argv = ["connect", str(DOMU), port, "hold"]
    else:
        job = await agent.start(peer("connect", 0, port, "survive"))
        argv = ["serve", str(DOMU), port, "65536", "65536", "hold"]
    process = await trio.lowlevel.open_process(
        [sys.executable, os.path.join(HERE, "xen_peer.py"), "--timeout", str(STEP), *argv],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(STEP):
            assert (await receive_until(process.stdout, 6)).startswith(b"ready")
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()
    with trio.fail_after(STEP):
        report = await agent.report(job)
    assert report["received"] == len(b"ready\n")
    assert report["send_error"] == "BrokenResourceError"


# -- a listener serving a client that reconnects ---------------------------------------------------


async def test_listener_serves_a_reconnecting_client(agent: Agent) -> None:
    port, count, nbytes = fresh_port(), 3, 8 * KIB
    served: list[int] = []
    all_served = trio.Event()

    async def echo(stream: trio_vchan.VchanStream) -> None:
        async with stream:
            total = 0
            while chunk := await stream.receive_some():
                await stream.send_all(chunk)
                total += len(chunk)
        served.append(total)
        if len(served) == count:
            all_served.set()

    listener = trio_vchan.VchanListener(DOMU, port, read_size=4096, write_size=4096)
    with trio.fail_after(STEP):
        async with listener, trio.open_nursery() as nursery:
            job = await agent.start(peer("reconnect", 0, port, count, nbytes, 7))
            nursery.start_soon(trio.serve_listeners, echo, [listener])
            report = await agent.report(job)
            await all_served.wait()  # the last handler may still be closing
            nursery.cancel_scope.cancel()
    assert report == {"connections": count, "all_echoed": True}
    assert served == [nbytes] * count


async def test_many_vchans_at_once_between_two_processes(agent: Agent) -> None:
    # 16 concurrent vchans in each process, and no fd for any of them in this one: the
    # process's one evtchn file binds every port, and mapped pages keep no fd.
    port, count, nbytes = fresh_port(), 16, 16 * KIB
    received: dict[int, str] = {}
    before = len(os.listdir("/proc/self/fd"))
    at_peak: list[int] = []
    all_up = trio.Event()

    async def serve_one(i: int) -> None:
        async with trio_vchan.serve(DOMU, f"{port}-{i}", read_size=4096, write_size=4096) as s:
            if len(at_peak) == count - 1:
                all_up.set()
            at_peak.append(len(os.listdir("/proc/self/fd")))
            await all_up.wait()
            received[i] = (await exchange(s, nbytes, 100 + i))["sha"]

    with trio.fail_after(STEP):
        job = await agent.start(peer("many", 0, port, count, nbytes, 200))
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(serve_one, i)
        report = await agent.report(job)
    assert report["connections"] == count
    assert report["hashes"] == [digest(pattern(nbytes, 100 + i)) for i in range(count)]
    assert [received[i] for i in range(count)] == [
        digest(pattern(nbytes, 200 + i)) for i in range(count)
    ]
    # Each of these vchans took 4 fds before (its evtchn file, and a duplicate of the device's
    # fd for its page and for each ring): 64 here. What is left is the process's own (the
    # session's device files and XenStore connection, the agent's; 18 in one run).
    assert max(at_peak) - before < 2 * count, (before, at_peak)


# -- Xen's C libxenvchan and vchan-socket-proxy ----------------------------------------------------

C_RINGS: Final = [
    pytest.param(1 * KIB, 2 * KIB, 32 * KIB, id="in-page"),
    pytest.param(64 * KIB, 64 * KIB, 192 * KIB, id="64K"),
    pytest.param(MIB, MIB, MIB + 64 * KIB, id="1M"),
]


@pytest.mark.parametrize(("read_size", "write_size", "nbytes"), C_RINGS)
async def test_libxenvchan_server_in_domu_trio_client_in_dom0(
    agent: Agent, read_size: int, write_size: int, nbytes: int
) -> None:
    port = fresh_port()
    path = libxenvchan_path(DOMU, 0, port)
    job = await agent.start(program(DOMU_VCHAN_PEER, "server", 0, path, read_size, write_size))
    with trio.fail_after(STEP):
        async with trio_vchan.connect(DOMU, port) as stream:
            report = await exchange(stream, nbytes, 8)
    assert report["sha"] == digest(pattern(nbytes, 8))  # echoed by libxenvchan
    with trio.fail_after(STEP):
        record = await agent.result(job)
    assert record["rc"] == 0, record
    assert record["stdout"].strip() == f"echoed {nbytes}"


@pytest.mark.parametrize(("read_size", "write_size", "nbytes"), C_RINGS)
async def test_trio_server_in_dom0_libxenvchan_client_in_domu(
    agent: Agent, read_size: int, write_size: int, nbytes: int
) -> None:
    port = fresh_port()
    job = await agent.start(program(DOMU_VCHAN_PEER, "client", 0, libxenvchan_path(0, DOMU, port)))
    with trio.fail_after(STEP):
        async with trio_vchan.serve(
            DOMU, port, read_size=read_size, write_size=write_size
        ) as stream:
            report = await exchange(stream, nbytes, 9)
    assert report["sha"] == digest(pattern(nbytes, 9))
    with trio.fail_after(STEP):
        record = await agent.result(job)
    assert record["rc"] == 0, record
    assert record["stdout"].strip() == f"echoed {nbytes}"


@asynccontextmanager
async def local_vchan_peer(*args: str) -> AsyncIterator[trio.Process]:
    """Run the C peer in dom0 for the duration of the block (killed if still running)."""
    # stderr goes to pytest's capture of fd 2: shown if the test fails.
    process = await trio.lowlevel.open_process(
        [DOM0_VCHAN_PEER, *args], stdout=subprocess.PIPE, env={**os.environ, "TIMEOUT": str(STEP)}
    )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()


async def test_libxenvchan_server_in_dom0_trio_client_in_domu(agent: Agent) -> None:
    port, nbytes = fresh_port(), 64 * KIB
    path = libxenvchan_path(0, DOMU, port)
    async with local_vchan_peer("server", str(DOMU), path, "4096", "65536") as server:
        job = await agent.start(peer("connect", 0, port, "exchange", nbytes, 10))
        with trio.fail_after(STEP):
            report = await agent.report(job)
        assert report["sha"] == digest(pattern(nbytes, 10))
        assert server.stdout is not None
        with trio.fail_after(STEP):
            assert await receive_until(server.stdout) == f"echoed {nbytes}\n".encode()


async def test_trio_server_in_domu_libxenvchan_client_in_dom0(agent: Agent) -> None:
    port, nbytes = fresh_port(), 64 * KIB
    job = await agent.start(peer("serve", 0, port, 65536, 4096, "exchange", nbytes, 11))
    async with local_vchan_peer("client", str(DOMU), libxenvchan_path(DOMU, 0, port)):
        with trio.fail_after(STEP):
            report = await agent.report(job)
    assert report["sha"] == digest(pattern(nbytes, 11))


#: The vchan-socket-proxy programs the domU runs: Xen's, and trio-vchan's drop-in.
PROXIES: Final = ["c", "trio"]


@pytest.mark.parametrize("which", PROXIES)
async def test_vchan_socket_proxy_server_in_domu(agent: Agent, which: str) -> None:
    port, nbytes = fresh_port(), 64 * KIB
    job = await agent.start(peer("proxy-server", 0, libxenvchan_path(DOMU, 0, port), which))
    with trio.fail_after(STEP):
        async with trio_vchan.connect(DOMU, port) as stream:
            report = await exchange(stream, nbytes, 12)
    assert report["sha"] == digest(pattern(nbytes, 12))
    with trio.fail_after(STEP):
        assert await agent.report(job) == {"echoed": nbytes, "proxy_rc": 0}


@pytest.mark.parametrize("which", PROXIES)
async def test_vchan_socket_proxy_client_in_domu(agent: Agent, which: str) -> None:
    port, nbytes = fresh_port(), 64 * KIB
    path = libxenvchan_path(0, DOMU, port)
    job = await agent.start(peer("proxy-client", 0, path, nbytes, 13, which))
    with trio.fail_after(STEP):
        async with trio_vchan.serve(DOMU, port) as stream:
            echoed = 0
            while chunk := await stream.receive_some():
                await stream.send_all(chunk)
                echoed += len(chunk)
    assert echoed == nbytes
    with trio.fail_after(STEP):
        report = await agent.report(job)
    assert report == {"received": nbytes, "sha": digest(pattern(nbytes, 13)), "proxy_rc": 0}


async def test_vchan_socket_proxy_drop_in_as_libxl_runs_it(agent: Agent, tmp_path: Path) -> None:
    """trio-vchan's vchan-socket-proxy in dom0 with libxl's arguments for a stub domain's QMP
    (the domU plays the stub domain): dom0 makes the domU's ``device-model/<guest>`` directory
    as libxl does, the domU serves the vchan there, the proxy writes "running" to the state
    path once its socket listens, and a socket client's bytes go to the domU and back."""
    guest, nbytes = 900 + next(_ports), 64 * KIB
    device_model = f"/local/domain/{DOMU}/device-model/{guest}"
    vchan = f"{device_model}/qmp-vchan"
    state = f"/local/domain/0/device-model/{DOMU}/qmp-proxy-state"
    qmp = str(tmp_path / f"qmp-libxl-{guest}")
    backend = default_backend()
    try:
        async with XenStoreClient(await backend.connect_xenstore()) as xs:
            await rm_if_there(xs, state)
            await xs.mkdir(device_model)
            await xs.set_perms(device_model, [Permission(Access.NONE, DOMU)])
            job = await agent.start(peer("serve", 0, vchan, 65536, 65536, "echo"))
            argv = [sys.executable, "-m", "trio_vchan", "vchan-socket-proxy"]
            argv += [f"--state-path={state}", str(DOMU), vchan, qmp]
            process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
            )
            try:
                with trio.fail_after(STEP):
                    assert await wait_for_node(xs, state) == b"running"
                    async with await trio.open_unix_socket(qmp) as sock:
                        sent = pattern(nbytes, 14)
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(sock.send_all, sent)
                            echoed = await receive_until(sock, nbytes)
                    assert digest(echoed) == digest(sent)
                    assert await agent.report(job) == {"echoed": nbytes}
                process.terminate()
                with trio.fail_after(STEP):
                    assert await process.wait() == 128 + signal.SIGTERM
            finally:
                with trio.CancelScope(shield=True):
                    process.kill()
                    await process.wait()
                    await rm_if_there(xs, f"/local/domain/{DOMU}/device-model")
                    await rm_if_there(xs, state)
    finally:
        backend.close()


async def rm_if_there(xs: XenStoreClient, path: str) -> None:
    """Remove ``path``; C xenstored answers ENOENT when its parent does not exist."""
    try:
        await xs.rm(path)
    except XenStoreError as exc:
        if exc.errno != errno.ENOENT:
            raise


async def test_domain_names_as_xl_gives_them(agent: Agent) -> None:
    """dom0 finds the domU by the name ``xl create`` gave it, and connects by name; the domU
    may not list /local/domain, and is told so."""
    assert await trio_vchan.lookup_domain(DOMU_NAME) == DOMU
    port, nbytes = fresh_port(), 16 * KIB
    job = await agent.start(peer("serve", 0, port, 65536, 65536, "echo"))
    with trio.fail_after(STEP):
        async with trio_vchan.connect(DOMU_NAME, port) as stream:
            report = await exchange(stream, nbytes, 15)
        assert report["sha"] == digest(pattern(nbytes, 15))
        await agent.report(job)
        looked_up = await agent.report(await agent.start(peer("lookup", DOMU_NAME)))
    assert "may not list /local/domain" in looked_up["error"], looked_up


# -- last, since nothing can follow it: the domU destroyed under an open stream -------------------


async def test_destroying_the_domu_breaks_the_stream_in_dom0(agent: Agent) -> None:
    """``xl destroy``: a dead domain runs no unmap-notify and its port closes without an
    event, so only XenStore tells: dom0 hears @releaseDomain, finds the domU's home gone, and
    its stream's calls raise BrokenResourceError caused by PeerGoneError."""
    port = fresh_port()
    await agent.start(peer("connect", 0, port, "hold"))
    with trio.fail_after(STEP):
        async with trio_vchan.serve(DOMU, port) as stream:
            assert await receive_until(stream, 6) == b"ready\n"
            await trio.run_process(["xl", "destroy", DOMU_NAME])
            with pytest.raises(trio.BrokenResourceError) as info:
                await stream.receive_some()
            assert isinstance(info.value.__cause__, trio_vchan.PeerGoneError), info.value
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"anyone?")

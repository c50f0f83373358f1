"""Domain names: looked up in XenStore (``/local/domain/<domid>/name``) wherever an id is taken.

The names are written here as dom0 (as ``xl create`` writes them), through the simulated
host's XenStore; the API and the commands are then given names instead of ids.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Final

import pytest
import trio
import trio.testing
from subprocess_paths import SAFE_PATH

import trio_vchan
from trio_vchan import Backend, DomainNameError, VchanStream
from trio_vchan._xenstore import XenStoreClient
from trio_vchan.sim import ENV_DIR, ENV_DOMID, SimulatedHost

TIMEOUT: Final = 60
CLI: Final = (sys.executable, *SAFE_PATH, "-m", "trio_vchan")


@asynccontextmanager
async def dom0_store(sim: SimulatedHost) -> AsyncIterator[XenStoreClient]:
    path = os.fspath(Path(sim.directory) / "domains" / "0" / "xenstore")
    async with XenStoreClient(await trio.open_unix_socket(path)) as xs:
        yield xs


@pytest.fixture
async def named(sim: SimulatedHost) -> AsyncIterator[SimulatedHost]:
    """Domains 1, 2 and 3 named "front", "back" and "twin", 4 also "twin"; 0 is "Domain-0"."""
    names = {0: "Domain-0", 1: "front", 2: "back", 3: "twin", 4: "twin"}
    for domid in names:
        sim.add_domain(domid)
    async with dom0_store(sim) as xs:
        for domid, name in names.items():
            await xs.write(f"/local/domain/{domid}/name", name.encode())
    yield sim
    async with dom0_store(sim) as xs:
        for domid in names:
            await xs.rm(f"/local/domain/{domid}/name")


@asynccontextmanager
async def backend_of(sim: SimulatedHost, domid: int) -> AsyncIterator[Backend]:
    backend = sim.backend(domid)
    try:
        yield backend
    finally:
        backend.close()


# -- the lookup ----------------------------------------------------------------------------------


async def test_a_name_is_the_domain_that_has_it(named: SimulatedHost) -> None:
    async with backend_of(named, 0) as dom0:
        with trio.fail_after(TIMEOUT):
            assert await trio_vchan.lookup_domain("front", backend=dom0) == 1
            assert await trio_vchan.lookup_domain("Domain-0", backend=dom0) == 0
            assert await trio_vchan.lookup_domain(7, backend=dom0) == 7  # an id as it is


async def test_an_unknown_name_says_so(named: SimulatedHost) -> None:
    async with backend_of(named, 0) as dom0:
        with trio.fail_after(TIMEOUT), pytest.raises(DomainNameError) as info:
            await trio_vchan.lookup_domain("nobody", backend=dom0)
    assert str(info.value) == (
        "no domain is named 'nobody' (no /local/domain/<domid>/name in XenStore has that value):"
        " check the name (`xl list` shows them) or give the domain id"
    )


async def test_a_name_of_two_domains_is_ambiguous(named: SimulatedHost) -> None:
    async with backend_of(named, 0) as dom0:
        with trio.fail_after(TIMEOUT), pytest.raises(DomainNameError) as info:
            await trio_vchan.lookup_domain("twin", backend=dom0)
    assert str(info.value) == "2 domains are named 'twin' (domains 3, 4): give the domain id"


async def test_a_domu_may_not_list_the_domains(named: SimulatedHost) -> None:
    async with backend_of(named, 2) as domu:
        with trio.fail_after(TIMEOUT), pytest.raises(DomainNameError) as info:
            await trio_vchan.lookup_domain("front", backend=domu)
    assert "this domain may not list /local/domain in XenStore" in str(info.value)
    assert "give its domain id instead" in str(info.value)


@pytest.mark.parametrize(
    ("domain", "error"),
    [
        ("", ValueError),
        ("a/b", ValueError),
        ("nul\0", ValueError),
        (1.0, TypeError),
        (-1, ValueError),
    ],
)
async def test_impossible_domains_are_refused_before_any_lookup(
    domain: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await trio_vchan.lookup_domain(domain)  # type: ignore[arg-type]  # the point


async def test_a_lookup_is_cancellable() -> None:
    """A XenStore that never answers: the lookup ends at once when cancelled."""
    ours, theirs = trio.testing.memory_stream_pair()

    async def connect_xenstore() -> trio.abc.Stream:
        return ours

    backend = Backend(domid=0, events=None, memory=None, connect_xenstore=connect_xenstore)  # type: ignore[arg-type]  # only XenStore is used
    with trio.fail_after(TIMEOUT):
        with trio.move_on_after(0.1) as scope:
            await trio_vchan.lookup_domain("front", backend=backend)
    assert scope.cancelled_caught
    await theirs.aclose()


# -- the API takes names --------------------------------------------------------------------------


async def test_dom0_serves_a_domain_by_name(named: SimulatedHost) -> None:
    async with backend_of(named, 0) as dom0, backend_of(named, 1) as front:

        async def server() -> None:
            async with trio_vchan.serve("front", "named", backend=dom0) as stream:
                assert stream.peer_domid == 1
                await stream.send_all(b"by name")

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server)
                async with trio_vchan.connect(0, "named", backend=front) as stream:
                    assert await stream.receive_some() == b"by name"


async def test_dom0_connects_to_a_domain_by_name(named: SimulatedHost) -> None:
    async with backend_of(named, 0) as dom0, backend_of(named, 2) as back:

        async def server() -> None:
            async with trio_vchan.serve(0, "named", backend=back) as stream:
                await stream.send_all(b"to dom0")

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server)
                async with trio_vchan.connect("back", "named", backend=dom0) as stream:
                    assert stream.peer_domid == 2
                    assert await stream.receive_some() == b"to dom0"


async def test_serve_vchan_takes_names(named: SimulatedHost) -> None:
    async with backend_of(named, 0) as dom0, backend_of(named, 1) as front:

        async def echo(stream: VchanStream) -> None:
            async with stream:
                await stream.send_all(await stream.receive_some())

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(trio_vchan.serve_vchan, echo, ["front"], "echo", backend=dom0)
                )
                assert [listener.client_domid for listener in listeners] == [1]
                async with trio_vchan.connect(0, "echo", backend=front) as stream:
                    await stream.send_all(b"ping")
                    assert await stream.receive_some() == b"ping"
                nursery.cancel_scope.cancel()


# -- the commands take names ----------------------------------------------------------------------


def domain_environ(sim: SimulatedHost, domid: int) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in (ENV_DIR, ENV_DOMID)}
    return {**base, **sim.environ(domid)}


async def run_cli(
    environ: Mapping[str, str], *args: str, stdin: bytes | int = subprocess.DEVNULL
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [*CLI, *args],
            env=dict(environ),
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_cat_by_name(named: SimulatedHost) -> None:
    """dom0 receives from the domain named "front"; "front" sends to dom0 by id (a domU may
    not look names up)."""
    async with trio.open_nursery() as nursery:
        results: dict[str, subprocess.CompletedProcess[bytes]] = {}

        async def run(name: str, domid: int, *args: str, stdin: bytes | int) -> None:
            results[name] = await run_cli(domain_environ(named, domid), *args, stdin=stdin)

        nursery.start_soon(
            partial(run, "receiver", 0, "cat", "-l", "front", "f", stdin=subprocess.DEVNULL)
        )
        nursery.start_soon(partial(run, "sender", 1, "cat", "0", "f", stdin=b"named file\n"))
    assert results["receiver"].returncode == 0, results["receiver"].stderr
    assert results["receiver"].stdout == b"named file\n"


@pytest.mark.parametrize(
    ("domid", "args", "status", "message"),
    [
        (0, ("cat", "nobody", "f"), 2, b"trio-vchan cat: no domain is named 'nobody'"),
        (0, ("cat", "twin", "f"), 2, b"trio-vchan cat: 2 domains are named 'twin'"),
        (1, ("cat", "back", "f"), 2, b"this domain may not list /local/domain"),
        (0, ("proxy", "-l", "front,1", "f", "--unix", "s"), 2, b"a domain is named twice"),
        (
            0,
            ("vchan-socket-proxy", "nobody", "/local/domain/0/data/p", "-"),
            1,  # as every failure of Xen's program
            b"trio-vchan vchan-socket-proxy: no domain is named 'nobody'",
        ),
    ],
)
async def test_a_name_that_names_no_one_domain_is_a_usage_error(
    named: SimulatedHost, domid: int, args: tuple[str, ...], status: int, message: bytes
) -> None:
    result = await run_cli(domain_environ(named, domid), *args)
    assert result.returncode == status, result.stderr
    assert message in result.stderr
    assert result.stderr.count(b"\n") == 1  # one line, no traceback

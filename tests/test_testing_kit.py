"""trio_vchan.testing: the in-process pair, the simulated host for tests, the pytest fixture
and the hostile peer pointed at servers."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

import trio_vchan
from trio_vchan import Live, Role, VchanStream
from trio_vchan._handshake import vchan_path
from trio_vchan._layout import CLI_LIVE
from trio_vchan._xenstore import XenStoreClient
from trio_vchan.testing import (
    ServerMisbehaved,
    attack_server,
    hostile_peer,
    simulated_host,
    vchan_stream_pair,
)

REPO = Path(__file__).resolve().parent.parent
BROKEN_SERVER = str(Path(__file__).with_name("broken_server.py"))
ECHO_SERVER = str(REPO / "examples" / "echo_server.py")

SIZES = [(1024, 2048), (2048, 1024), (1, 8192), (65536, 1 << 20)]


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.mark.parametrize("first", list(Role))
@pytest.mark.parametrize(("read_size", "write_size"), SIZES)
async def test_the_pair_passes_trios_stream_checks(
    first: Role, read_size: int, write_size: int
) -> None:
    fds_before = open_fds()

    async def make() -> tuple[VchanStream, VchanStream]:
        return vchan_stream_pair(first=first, read_size=read_size, write_size=write_size)

    async def make_clogged() -> tuple[VchanStream, VchanStream]:
        streams = await make()
        for stream in streams:
            while space := stream.buffer_space:
                await stream.send_all(b"x" * space)
        return streams

    await trio.testing.check_two_way_stream(make, make_clogged)
    assert open_fds() <= fds_before | {max(fds_before) + 1}  # every pair released everything


async def test_the_pair_has_the_rings_roles_and_names_asked_for() -> None:
    client, server = vchan_stream_pair(
        first=Role.CLIENT, read_size=8192, write_size=1024, server_domid=4, client_domid=9
    )
    async with client, server:
        assert (client.role, server.role) == (Role.CLIENT, Role.SERVER)
        assert (server.buffer_space, client.buffer_space) == (2048, 8192)  # as serve rounds
        assert (server.peer_domid, client.peer_domid) == (9, 4)
        assert server.path == client.path == "/local/domain/4/data/vchan/9/pair"
        await client.send_all(b"x" * 8192)  # a two-page ring, full
        assert server.data_ready == 8192


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"read_size": 0}, ValueError, "read_size must be 1..1048576"),
        ({"write_size": (1 << 20) + 1}, ValueError, "write_size must be 1..1048576"),
        ({"read_size": 1.5}, TypeError, "read_size must be an int"),
        ({"server_domid": 3, "client_domid": 3}, ValueError, "two different domains"),
        ({"first": "server"}, TypeError, "first must be Role"),
    ],
)
def test_a_bad_pair_is_a_clear_error(
    arguments: dict[str, object], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        vchan_stream_pair(**arguments)  # type: ignore[arg-type]


async def fail_if_it_exits(process: trio.Process) -> None:
    """Fail at once if the server exits (connect would wait for it until the timeout)."""
    code = await process.wait()
    raise AssertionError(f"the server exited with status {code}")


async def test_the_simulated_host_runs_a_server_process_as_a_domain() -> None:
    async with simulated_host() as host:
        server = await host.start_process(1, [sys.executable, ECHO_SERVER, "echo", "2"])
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fail_if_it_exits, server)
                async with trio_vchan.connect(1, "echo", backend=host.backend(2)) as stream:
                    await stream.send_all(b"ping")
                    assert await stream.receive_exactly(4) == b"ping"
                nursery.cancel_scope.cancel()
        assert server.returncode is None  # still serving: the end of the block stops it
    assert server.returncode is not None


async def test_the_simulated_host_reports_what_a_domain_left_behind() -> None:
    with pytest.raises(AssertionError, match=r"left this behind.*node /local/domain/1/data/x"):  # noqa: PT012
        async with simulated_host() as host:
            xs = XenStoreClient(await host.backend(1).connect_xenstore())
            async with xs:
                await xs.write("/local/domain/1/data/x", b"left behind")


async def test_a_failing_block_raises_its_own_exception_and_skips_the_leak_check() -> None:
    error = ValueError("the test's own failure")
    with pytest.raises(ValueError, match="own failure") as caught:  # noqa: PT012
        async with simulated_host() as host:
            xs = XenStoreClient(await host.backend(1).connect_xenstore())
            async with xs:
                await xs.write("/local/domain/1/data/x", b"left behind")
            raise error
    assert caught.value is error


def test_the_pytest_fixture_comes_from_the_installed_entry_point(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        """
        import sys, trio_vchan

        async def test_a_domain_process(vchan_host):
            await vchan_host.start_process(1, [sys.executable, ECHO_SERVER, "echo", "2"])
            async with trio_vchan.connect(1, "echo", backend=vchan_host.backend(2)) as stream:
                await stream.send_all(b"hi")
                assert await stream.receive_exactly(2) == b"hi"
        """.replace("ECHO_SERVER", repr(ECHO_SERVER))
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_plugin_imports_nothing_of_trio_vchan_until_used(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_nothing_imported():
            assert "trio_vchan" not in sys.modules and "trio" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:trio")
    result.assert_outcomes(passed=1)


async def test_the_hostile_peer_passes_a_correct_server() -> None:
    async with simulated_host() as host:
        await host.start_process(1, [sys.executable, ECHO_SERVER, "attacked", "7"])
        report = await attack_server(host, 1, "attacked", domid=7, episodes=20, seed=1)
    assert report.episodes == 20
    assert report.mutations > 500


@pytest.mark.parametrize("correct", [True, False])
async def test_the_hostile_peer_finds_a_server_that_trusts_the_peers_index(correct: bool) -> None:
    command = [sys.executable, BROKEN_SERVER, "attacked", "7", *(["--correct"] if correct else [])]
    async with simulated_host() as host:
        await host.start_process(1, command, stderr=-3)  # DEVNULL: the planted crash's traceback
        if correct:  # the default offer_within: a loaded machine may take its time
            await attack_server(host, 1, "attacked", domid=7, episodes=60, seed=3)
        else:  # the crash is seen as a port not offered again: soon, not 30 s
            with pytest.raises(ServerMisbehaved, match="crashed"):
                await attack_server(
                    host, 1, "attacked", domid=7, episodes=60, seed=3, offer_within=10
                )


@pytest.mark.parametrize(("seed", "fault"), [(14, "grant refs zero"), (78, "grant refs random")])
async def test_the_hostile_client_refuses_a_page_whose_rings_do_not_map(
    seed: int, fault: str
) -> None:
    """A server offers a broken handshake's page again, and the hostile client may have
    scribbled on it after the reset: it refuses such a page as a client must, and waits for
    the next one (instead of exiting, which attack_server took for a crashed server)."""
    path = vchan_path(5, 7, "refused")
    async with (
        simulated_host() as host,
        hostile_peer(host, 5) as server,
        hostile_peer(host, 7) as client,
    ):
        assert await server.serve(7, path, seed=seed) == [fault]
        observer = host.backend(7)
        async with XenStoreClient(await observer.connect_xenstore()) as xs:
            ref = int(await xs.read(f"{path}/ring-ref"))
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(client.attach, 5, path, seed=0))
                page = observer.memory.map(5, [ref], writable=False)
                try:  # it takes the page and gives it back (a bad cli_live, or unmapped)
                    while page.buffer[CLI_LIVE] == Live.WAITING:  # noqa: ASYNC110
                        await trio.sleep(0.01)  # another process's write: nothing to wait on
                finally:
                    page.close()
                await server.end()
                assert await server.serve(7, path, seed=0, honest=True) == []
            # and the client took the good page


async def test_the_hostile_client_stops_scribbling_on_a_page_offered_afresh() -> None:
    """A server drops a broken handshake and offers the same page again, reset under the
    hostile client's mapping. The client reports the reset as violations and that the server
    closed our port, and mutates nothing more: setting cli_live on the fresh page would answer
    the new offer, and the server would serve a client that had given it up (seen once in CI
    as "the server wrote outside its fields")."""
    command = [sys.executable, BROKEN_SERVER, "attacked", "7", "--correct"]
    path = vchan_path(1, 7, "attacked")
    async with simulated_host() as host, hostile_peer(host, 7) as client:
        await host.start_process(1, command)
        reply = await client.call("attach", seed=36, victim=1, path=path)
        assert reply["notes"] == ["initial own live byte 3"]  # the server drops this one
        with trio.fail_after(30):
            while not (result := await client.quiet(0)).violations:  # noqa: ASYNC110
                await trio.sleep(0.01)  # the server's writes: nothing to wait on
        assert result.dropped
        after = await client.mutate(5)
        assert (after.done, after.dropped) == ([], True)
        assert after.violations
        observer = host.backend(7)
        async with XenStoreClient(await observer.connect_xenstore()) as xs:
            await trio.sleep(0.2)  # a scribble would have connected by now
            assert int(await xs.read(f"{path}/ring-ref")) == reply["ref"]  # still offered

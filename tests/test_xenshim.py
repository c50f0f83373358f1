"""The packaged Xen-library shim (``trio_vchan/_xenshim``), and unmodified Xen programs run with it
through ``trio-vchan sim --join --xen-libs``.

- Its declarations (xen_abi.h) against Xen 4.17's own headers, and its exports against the
  real libxenevtchn.so.1 and libxengnttab.so.1.
- The mapping calls and the ENOSYS ones, from ``tests/interop/gnt_map.c`` (linked with Xen's
  libxengnttab and libxenevtchn, run under the shim).
- Xen's C libxenvchan (``vchan-node``), Xen's ``vchan-socket-proxy`` and xenstore-utils as one
  domain, ``trio-vchan cat`` as the other, in both directions.

Every Xen program is started by the CLI (``trio-vchan sim --join --dir DIR --domid N --xen-libs
-- PROGRAM``) on the test's host, from an environment without ``TRIO_VCHAN_*``,
``XENSTORED_PATH`` or ``LD_PRELOAD``: the CLI alone sets them. The tests skip (saying what to
install) without gcc or Xen's headers and libraries, and fail instead under CI (``$CI``).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
import trio
from conftest import missing_xen_tool
from interop.build import CFLAGS, HERE, BuildError, Tools, compile_c
from subprocess_paths import SAFE_PATH
from test_interop_c import (  # noqa: F401  (fixtures)
    C_SEED,
    SERVER_DATA,
    TRIO_SEED,
    pattern,
    pattern_crc,
    socket_proxy,
    sweep_xenstore,
    tools,
)

from trio_vchan import _xenshim
from trio_vchan._handshake import vchan_path
from trio_vchan.sim import SimulatedHost

TIMEOUT: Final = 60
SIM: Final = [sys.executable, *SAFE_PATH, "-m", "trio_vchan", "sim"]
CAT: Final = [sys.executable, *SAFE_PATH, "-m", "trio_vchan", "cat", "--quiet"]
XEN_LIBS: Final = Path("/usr/lib/x86_64-linux-gnu")
PAGE: Final = 4096
SOURCE: Final = Path(_xenshim.__file__).parent


def clean_environ() -> dict[str, str]:
    """Ours, without what the CLI is to set."""
    ours = ("TRIO_VCHAN_", "XENSTORED_PATH", "LD_PRELOAD")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)}


def joined(sim: SimulatedHost, domid: int, *argv: str | int | Path) -> list[str]:
    """``trio-vchan sim --join ... --xen-libs -- ARGV`` on ``sim``, as domain ``domid``."""
    return [
        *SIM,
        "--join",
        "--dir",
        sim.directory,
        "--domid",
        str(domid),
        "--xen-libs",
        "--",
        *map(str, argv),
    ]


async def run(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``argv`` to its end; its status, stdout and stderr."""
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            list(argv),
            env=clean_environ() if env is None else env,
            stdin=subprocess.DEVNULL,
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def test_the_install_built_the_shim() -> None:
    """``pip install`` (setup.py) compiled both libraries into the package."""
    assert _xenshim.missing() is None


# -- the declarations and the exports --------------------------------------------------------------


@pytest.fixture(scope="session")
def gcc() -> str:
    found = shutil.which("gcc")
    if found is None:
        missing_xen_tool("needs gcc (apt-get install gcc libxen-dev)")
    for header in ("xenevtchn.h", "xengnttab.h", "xenctrl.h"):
        probe = subprocess.run(
            [found, "-E", "-x", "c", "-o", os.devnull, "-"],
            input=f"#include <{header}>\n".encode(),
            capture_output=True,
            check=False,
        )
        if probe.returncode:
            missing_xen_tool(f"needs Xen's headers ({header}): apt-get install libxen-dev")
    return found


@pytest.mark.parametrize(
    ("source", "headers"),
    [
        ("xenshim.c", ["#define _GNU_SOURCE", "#include <xenevtchn.h>", "#include <xengnttab.h>"]),
        ("xcstub.c", ["#include <xenctrl.h>"]),
    ],
)
def test_declarations_match_xens_headers(
    gcc: str, tmp_path: Path, source: str, headers: list[str]
) -> None:
    """The shim, compiled after Xen's own headers: any type, prototype or macro of xen_abi.h
    that differs from Xen 4.17's is a conflicting redeclaration, which gcc refuses."""
    unit = tmp_path / f"checked-{source}"
    unit.write_text("\n".join([*headers, f'#include "{SOURCE / source}"', ""]))
    result = subprocess.run(
        [gcc, *CFLAGS, "-fPIC", "-shared", "-o", os.devnull, unit],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def exported(library: Path) -> set[str]:
    """The functions a shared library defines (``nm -D``), without symbol versions."""
    nm = shutil.which("nm")
    if nm is None:
        missing_xen_tool("needs nm (binutils, which gcc brings)")
    listing = subprocess.run(
        [nm, "-D", "--defined-only", library], capture_output=True, text=True, check=True
    ).stdout
    return {
        words[2].split("@")[0]
        for words in map(str.split, listing.splitlines())
        if len(words) == 3 and words[1] == "T"
    }


def test_every_export_of_xens_libraries_is_defined() -> None:
    """Nothing a program calls reaches the real libraries, which fail without /dev/xen."""
    libraries = [XEN_LIBS / "libxenevtchn.so.1", XEN_LIBS / "libxengnttab.so.1"]
    for library in libraries:
        if not library.exists():
            missing_xen_tool(f"needs {library} (apt-get install libxen-dev)")
    xen = set().union(*map(exported, libraries))
    assert len(xen) > 30  # what nm found, in case its output changes shape
    assert xen - exported(_xenshim.SHIM) == set()


# -- the mapping calls -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gnt_map(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    program = tmp_path_factory.mktemp("gnt-map") / "gnt-map"
    try:
        compile_c("-o", program, HERE / "gnt_map.c", "-lxengnttab", "-lxenevtchn")
    except BuildError as exc:
        pytest.fail(str(exc))
    return program


def filled(count: int, seed: int) -> list[bytes]:
    return [
        bytes((seed * 31 + page * 7 + i * 13) % 256 for i in range(PAGE)) for page in range(count)
    ]


@pytest.mark.parametrize(
    ("mode", "order"),
    [
        ("refs", [(1, 0), (2, 0), (1, 1)]),  # several domains: page by page
        ("refs", [(1, 0), (1, 1)]),  # consecutive pages of one share: one GNT_MAP
        ("domain", [(1, 1), (1, 0)]),  # one domain, not consecutive: page by page
        ("one", [(2, 0), (1, 1)]),
    ],
)
async def test_map_grant_refs(
    gnt_map: Path, sim: SimulatedHost, mode: str, order: list[tuple[int, int]]
) -> None:
    """Domains 1 and 2 share pages with domain 3; the C program maps them in ``order``
    ((domain, page of its share)) and must see each page's content at its place; what it
    writes into each page must reach the sharer."""
    contents = {1: filled(2, 1), 2: filled(1, 2)}
    shares = {d: sim.backend(d).memory.share(3, len(pages)) for d, pages in contents.items()}
    try:
        for domid, share in shares.items():
            for index, page in enumerate(contents[domid]):
                share.buffer[index * PAGE : (index + 1) * PAGE] = page
        args = [f"{d}:{shares[d].refs[p]}" for d, p in order]
        status, out, err = await run(joined(sim, 3, gnt_map, mode, *args))
        assert (status, err) == (0, "")
        expected = [f"page {i} {zlib.crc32(contents[d][p]):08x}" for i, (d, p) in enumerate(order)]
        assert out.splitlines() == [*expected, "unmapped"]
        for i, (domid, index) in enumerate(order):
            assert shares[domid].buffer[(index + 1) * PAGE - 1] == i + 1
    finally:
        for share in shares.values():
            share.close()


async def test_map_grant_refs_says_why_it_failed(gnt_map: Path, sim: SimulatedHost) -> None:
    """A ref granted to another domain: the host's reason on stderr, the call fails."""
    share = sim.backend(1).memory.share(4, 1)
    try:
        status, out, err = await run(joined(sim, 3, gnt_map, "refs", f"1:{share.refs[0]}"))
    finally:
        share.close()
    assert (status, out) == (1, "")
    assert "trio-vchan xenshim: map grant refs: " in err
    assert "gnt-map: xengnttab_map_grant_refs: Permission denied" in err


async def test_unmaps_are_done_at_the_host_when_the_last_close_returns(
    gnt_map: Path, sim: SimulatedHost
) -> None:
    """The shim sends releases without waiting for their replies, but reads them all by the
    time the process's last handle closes: from then on the host holds none of its mappings,
    while the process lives on (a peer may already rely on the unmap-notify having run).

    Releases the shim left unanswered could still reach the host before this test looks, so
    it looks after each of several runs."""
    share = sim.backend(1).memory.share(3, 2)
    try:
        for _ in range(6):
            with trio.fail_after(TIMEOUT):
                process = await trio.lowlevel.open_process(
                    joined(sim, 3, gnt_map, "one", *(f"1:{ref}" for ref in share.refs)),
                    env=clean_environ() | {"GNT_MAP_HOLD": "1"},
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                assert process.stdin is not None
                try:
                    lines = await output_until(process, "closed")
                    assert lines[-2:] == ["unmapped", "closed"]
                    assert [line for line in sim.leaks() if "mapping" in line] == []
                finally:
                    await process.stdin.aclose()
                    assert await process.wait() == 0
    finally:
        share.close()


async def test_other_calls_fail_with_enosys_and_say_so(gnt_map: Path, sim: SimulatedHost) -> None:
    status, out, err = await run(joined(sim, 3, gnt_map, "others"))
    assert status == 0, err
    results: dict[str, list[tuple[int, int]]] = {}
    for line in out.splitlines():
        name, result, number = line.split()
        results.setdefault(name, []).append((int(result), int(number)))
    unsupported = [
        "xenevtchn_bind_virq",
        "xenevtchn_fdopen",
        "xengnttab_fd",
        "xengntshr_fd",
        "xengnttab_grant_copy",
        "xengnttab_dmabuf_exp_from_refs",
        "xengnttab_dmabuf_exp_wait_released",
        "xengnttab_dmabuf_imp_to_refs",
        "xengnttab_dmabuf_imp_release",
    ]
    for name in unsupported:
        assert results[name][0][1] == errno.ENOSYS, name
        assert f"trio-vchan xenshim: {name}" in err, name
        assert "is not implemented on the simulated host" in err
    assert results["xengnttab_set_max_grants"] == [(1, 0)]
    # Restricted to domain 5: no unbound ports, no other domain's ports, no second restrict.
    assert results["xenevtchn_restrict"] == [(1, 0), (-1, errno.EACCES)]
    assert results["xenevtchn_bind_unbound_port"] == [(-1, errno.EACCES)]
    assert results["xenevtchn_bind_interdomain"] == [(-1, errno.EACCES)]


@pytest.fixture(scope="session")
def fork_probe(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    program = tmp_path_factory.mktemp("fork-probe") / "fork-probe"
    try:
        compile_c("-o", program, HERE / "fork_probe.c", "-lxenevtchn")
    except BuildError as exc:
        pytest.fail(str(exc))
    return program


async def test_a_forked_child_holds_its_own_connection(
    fork_probe: Path, sim: SimulatedHost
) -> None:
    """The shim keeps its idle platform connection after the last handle closes; a child of
    fork() must not share it: what the child binds is released when the child dies."""
    with trio.fail_after(TIMEOUT):
        process = await trio.lowlevel.open_process(
            joined(sim, 3, fork_probe, 0),
            env=clean_environ(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdin is not None
        try:
            lines = await output_until(process, "child gone")
            assert lines[0].startswith("child bound ")
            with trio.move_on_after(5):  # the host sees the child's connection close
                while sim.leaks():  # noqa: ASYNC110  (the host has no event for it)
                    await trio.sleep(0.05)
            assert sim.leaks() == []  # a shared connection would keep the port bound
        finally:
            await process.stdin.aclose()
            assert await process.wait() == 0


async def test_an_idle_connection_the_host_dropped_is_made_again(
    fork_probe: Path, sim: SimulatedHost
) -> None:
    """The kept idle connection is checked before it is used again: destroying the domain
    drops it, and the next open joins afresh instead of failing on the dead socket."""
    with trio.fail_after(TIMEOUT):
        process = await trio.lowlevel.open_process(
            joined(sim, 3, fork_probe, 0, "again"),
            env=clean_environ(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdin is not None
        try:
            await output_until(process, "idle")
            sim.destroy_domain(3)  # the host hangs up the domain's connections,
            await sim.wait_idle()  # once their tasks have run
            await process.stdin.send_all(b"go\n")
            lines = await output_until(process, "bound")
            assert lines[-1].startswith("bound ")
        finally:
            await process.stdin.aclose()
            assert await process.wait() == 0


async def output_until(process: trio.Process, start: str) -> list[str]:
    """The lines ``process`` prints, up to the first whole one that begins with ``start``."""
    assert process.stdout is not None
    text = b""
    while True:
        lines = text.decode().split("\n")[:-1]  # whole lines only
        if any(line.startswith(start) for line in lines):
            return lines
        chunk = await process.stdout.receive_some()
        if not chunk:
            raise AssertionError(f"ended before printing {start!r}: {text!r}")
        text += chunk


# -- Xen's programs against trio-vchan cat -----------------------------------------------------


SERVER: Final = 1
CLIENT: Final = 2


def cat_environ(sim: SimulatedHost, domid: int) -> dict[str, str]:
    return {**clean_environ(), **sim.environ(domid)}


@asynccontextmanager
async def started(
    argv: Sequence[str], env: dict[str, str], stdin: Path = Path(os.devnull)
) -> AsyncIterator[trio.Process]:
    """``argv`` running for the block, reading ``stdin`` (stdout piped); killed if still
    running after it."""
    with stdin.open("rb") as source:
        process = await trio.lowlevel.open_process(
            list(argv), env=env, stdin=source.fileno(), stdout=subprocess.PIPE
        )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            assert process.stdout is not None
            await process.stdout.aclose()


@asynccontextmanager
async def exiting_zero(*watched: tuple[trio.Process, str]) -> AsyncIterator[None]:
    """The block, and then each watched process's end, which must be status 0; a watched
    process that fails ends the block at once (a C program that cannot start fails the test
    then, rather than leaving its peer waiting until the timeout)."""

    async def watch(process: trio.Process, what: str) -> None:
        status = await process.wait()
        assert status == 0, f"{what} exited with status {status}"

    async with trio.open_nursery() as nursery:
        for process, what in watched:
            nursery.start_soon(watch, process, what)
        yield


async def output(process: trio.Process) -> list[str]:
    """``process``'s stdout to its end, as lines."""
    assert process.stdout is not None
    text = b""
    while chunk := await process.stdout.receive_some():
        text += chunk
    return text.decode().splitlines()


async def crc_of_output(process: trio.Process) -> tuple[int, int]:
    """Read ``process``'s stdout to its end: byte count and CRC-32."""
    assert process.stdout is not None
    count = crc = 0
    while chunk := await process.stdout.receive_some(1 << 20):
        count += len(chunk)
        crc = zlib.crc32(chunk, crc)
    return count, crc


def pattern_file(directory: Path, total: int, seed: int) -> Path:
    path = directory / f"pattern-{total}-{seed}"
    with path.open("wb") as out:
        for piece in pattern(total, seed):
            out.write(piece)
    return path


async def test_libxenvchan_server_to_trio_vchan_cat(tools: Tools, sim: SimulatedHost) -> None:  # noqa: F811
    total = 3 * 1024 * 1024 + 5
    path = vchan_path(SERVER, CLIENT, "demo")
    node = joined(sim, SERVER, tools.node, "server", CLIENT, path, 4096, 65536, "send", total)
    with trio.fail_after(TIMEOUT):
        async with (
            started(node, clean_environ()) as c_server,
            started([*CAT, str(SERVER), "demo"], cat_environ(sim, CLIENT)) as cat,
            exiting_zero((c_server, "the C server"), (cat, "trio-vchan cat")),
        ):
            assert await crc_of_output(cat) == (total, pattern_crc(total, C_SEED))
            report = await output(c_server)
    assert report[0].startswith("connected ")
    assert report[1:] == [f"sent {total} {pattern_crc(total, C_SEED):08x}"]
    await sweep_xenstore(sim)


async def test_a_new_host_runs_a_c_program_with_xen_libs(
    tools: Tools,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``trio-vchan sim --domid 1 --xen-libs -- sh -c ...``: the C server as domain 1 of a new
    host, trio-vchan cat (in the same shell, --domid 2) receiving what it sends."""
    total = 1024 * 1024 + 1
    received, report = tmp_path / "received", tmp_path / "node.out"
    path = vchan_path(SERVER, CLIENT, "demo")
    # The C server's failure ends cat at once (no peer would come); exit 100+N for it.
    script = (
        f'"$0" server {CLIENT} {path} 4096 65536 send {total} > {report} & node=$!; '
        f'"$@" --domid {CLIENT} {SERVER} demo < /dev/null > {received} & cat=$!; '
        "wait $node; n=$?; [ $n = 0 ] || kill $cat; wait $cat; c=$?; "
        "[ $n = 0 ] && exit $c; exit $((100 + n))"
    )
    argv = [
        *SIM,
        "--domid",
        str(SERVER),
        "--xen-libs",
        "--",
        "sh",
        "-c",
        script,
        str(tools.node),
        *CAT,
    ]
    assert await run(argv) == (0, "", "")
    data = received.read_bytes()
    assert (len(data), zlib.crc32(data)) == (total, pattern_crc(total, C_SEED))
    assert report.read_text().splitlines()[1:] == [f"sent {total} {pattern_crc(total, C_SEED):08x}"]


async def test_trio_vchan_cat_server_to_libxenvchan_client(
    tools: Tools,  # noqa: F811
    sim: SimulatedHost,
    tmp_path: Path,
) -> None:
    total = 2 * 1024 * 1024 + 3
    source = pattern_file(tmp_path, total, TRIO_SEED)
    path = vchan_path(SERVER, CLIENT, "demo")
    node = joined(sim, CLIENT, tools.node, "client", SERVER, path, "recv")
    cat = [*CAT, "-l", str(CLIENT), "demo"]
    with trio.fail_after(TIMEOUT):
        async with (
            started(cat, cat_environ(sim, SERVER), stdin=source) as server,
            # A client whose libxenvchan_client_init() fails tries again at every XenStore
            # change, for ever: its own SIGALRM (vchan_node.c) ends it sooner than ours.
            started(node, {**clean_environ(), "TIMEOUT": "15"}) as c_client,
            exiting_zero((c_client, "the C client"), (server, "trio-vchan cat -l")),
        ):
            report = await output(c_client)
    assert report[0].startswith("connected ")
    assert report[-1] == f"received {total} {pattern_crc(total, TRIO_SEED):08x}"


@pytest.mark.parametrize("proxy_role", ["server", "client"])
async def test_vchan_socket_proxy_and_trio_vchan_cat(
    socket_proxy: Path,  # noqa: F811
    sim: SimulatedHost,
    proxy_role: str,
) -> None:
    """Xen's proxy relays its stdin into the vchan; trio-vchan cat receives all of it, and
    sees the vchan close when the proxy's stdin ends.

    The proxy's stdin ends only once cat has everything: at the end of its input the proxy
    closes the vchan only if nothing is left to write into it (otherwise it waits for a vchan
    event that does not come), and it drops what arrives from the vchan once the peer has
    closed, so neither a file as its stdin nor the other direction is a transfer it completes.
    """
    total = 1024 * 1024 + 11
    path = vchan_path(SERVER, CLIENT, "proxied")
    if proxy_role == "server":
        proxy = joined(sim, SERVER, socket_proxy, "-m", "server", CLIENT, path, "-")
        cat, cat_domid = [*CAT, str(SERVER), "proxied"], CLIENT
    else:
        proxy = joined(sim, CLIENT, socket_proxy, "-m", "client", SERVER, path, "-")
        cat, cat_domid = [*CAT, "-l", str(CLIENT), "proxied"], SERVER
    with trio.fail_after(TIMEOUT):
        async with started(cat, cat_environ(sim, cat_domid)) as trio_end:
            c_proxy = await trio.lowlevel.open_process(
                proxy, env=clean_environ(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
            )
            try:
                stdin, stdout = c_proxy.stdin, trio_end.stdout
                assert stdin is not None
                assert stdout is not None

                async def feed() -> None:
                    for piece in pattern(total, C_SEED):
                        await stdin.send_all(piece)

                async with exiting_zero((c_proxy, "the C proxy"), (trio_end, "trio-vchan cat")):
                    async with stdin:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(feed)
                            count = crc = 0
                            while count < total:
                                chunk = await stdout.receive_some(total - count)
                                assert chunk, f"cat's output ended after {count} of {total}"
                                count += len(chunk)
                                crc = zlib.crc32(chunk, crc)
                        assert crc == pattern_crc(total, C_SEED)
                    assert await stdout.receive_some() == b""
            finally:
                with trio.CancelScope(shield=True):
                    if c_proxy.returncode is None:
                        c_proxy.kill()
                    await c_proxy.wait()
    await sweep_xenstore(sim)


async def test_xenstore_tools_through_xen_libs(sim: SimulatedHost) -> None:
    """xenstore-write/read/rm as a domain that --join creates; XENSTORED_PATH from the CLI."""
    for tool in ("xenstore-read", "xenstore-write", "xenstore-rm"):
        if shutil.which(tool) is None:
            missing_xen_tool(f"needs Debian's xenstore-utils ({tool})")
    assert await run(joined(sim, 6, "xenstore-write", "data/greeting", "hello")) == (0, "", "")
    assert await run(joined(sim, 6, "xenstore-read", "domid", "data/greeting")) == (
        0,
        "6\nhello\n",
        "",
    )
    assert await run(joined(sim, 6, "xenstore-rm", "data/greeting")) == (0, "", "")

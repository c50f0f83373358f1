"""Tests of echo_server.py with trio_vchan.testing: its handler, the whole server, an attack.

python -m pytest examples/test_echo_server.py   (needs pytest and pytest-trio)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from echo_server import echo

import trio_vchan
from trio_vchan.testing import HostHarness, attack_server, vchan_stream_pair

ECHO_SERVER = str(Path(__file__).with_name("echo_server.py"))

pytestmark = pytest.mark.trio  # not needed where pytest-trio's trio_mode is on


async def test_the_handler_echoes() -> None:
    # Both ends of a real vchan in this process: no host, no other process.
    server, client = vchan_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, server)  # it closes the server's end once the client's closes
        async with client:
            await client.send_all(b"hello")
            assert await client.receive_exactly(5) == b"hello"


async def test_the_server_echoes_to_a_domain(vchan_host: HostHarness) -> None:
    # The server runs as domain 1 of a simulated host; this test is domain 2.
    await vchan_host.start_process(1, [sys.executable, ECHO_SERVER, "echo", "2"])
    with trio.fail_after(30):
        async with trio_vchan.connect(1, "echo", backend=vchan_host.backend(2)) as stream:
            await stream.send_all(b"ping")
            assert await stream.receive_exactly(4) == b"ping"
    # At the end the fixture stops the server, and fails if a domain left anything behind.


async def test_the_server_withstands_a_hostile_client(vchan_host: HostHarness) -> None:
    # Domain 7 connects 20 times and breaks the protocol in every way it can.
    await vchan_host.start_process(1, [sys.executable, ECHO_SERVER, "echo", "7"])
    report = await attack_server(vchan_host, 1, "echo", domid=7, seed=1)
    assert report.episodes == 20

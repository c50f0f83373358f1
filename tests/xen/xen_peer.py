"""One end of a trio-vchan connection for the real-Xen tests, run in dom0 or the domU.

    xen_peer.py [--timeout S] serve CLIENT_DOMID PORT READ_SIZE WRITE_SIZE ACTION [ARG...]
    xen_peer.py [--timeout S] connect SERVER_DOMID PORT ACTION [ARG...]
    xen_peer.py [--timeout S] reconnect SERVER_DOMID PORT COUNT NBYTES SEED
    xen_peer.py [--timeout S] many SERVER_DOMID PORT COUNT NBYTES SEED
    xen_peer.py [--timeout S] proxy-server CLIENT_DOMID PATH [c|trio]
    xen_peer.py [--timeout S] proxy-client SERVER_DOMID PATH NBYTES SEED [c|trio]
    xen_peer.py [--timeout S] lookup NAME

Actions, once connected:
    exchange NBYTES SEED   send NBYTES of pattern(SEED) while receiving NBYTES, then close
    echo                   send back everything received, until end of stream
    send-close NBYTES SEED send NBYTES, then close at once
    drain                  receive until end of stream, then try to send (must fail)
    hold                   send b"ready\\n", print "ready", then wait to be killed
    survive                receive until end of stream or a broken stream (the peer crashed),
                           then try to send (must fail)

The last line on stdout is a JSON object with what happened (sizes, sha256 of what was
received); the exit code is 0 on success, 1 on a failed check, 3 on timeout. Every run is
bounded by --timeout (default 120 s).

``reconnect`` connects COUNT times in a row, ``many`` COUNT times at once (to PORT-0 ...
PORT-<COUNT-1>); each connection exchanges NBYTES with an echo or a peer running ``exchange``.

The proxy roles drive a vchan-socket-proxy over pipes, Xen's C program (``c``, the default) or
trio-vchan's drop-in (``trio``) with the same arguments: as server it echoes what the proxy
delivers; as client it sends NBYTES through the proxy and reads the echo back.

``lookup`` reports the domain id that NAME has (``trio_vchan.lookup_domain``), or the error.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from typing import Any, Final

import trio

import trio_vchan

#: The proxy programs: Xen's, and trio-vchan's drop-in run from the package it imports.
PROXIES: Final = {
    "c": ["vchan-socket-proxy"],
    "trio": [sys.executable, "-m", "trio_vchan", "vchan-socket-proxy"],
}
CHUNK: Final = 65536


def pattern(nbytes: int, seed: int) -> bytes:
    """``nbytes`` reproducible pseudo-random bytes: both ends can compute the expected data."""
    return random.Random(seed).randbytes(nbytes)


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


async def receive_until(stream: trio.abc.ReceiveStream, limit: int | None = None) -> bytearray:
    """Receive until end of stream, or until ``limit`` bytes arrived."""
    received = bytearray()
    while limit is None or len(received) < limit:
        chunk = await stream.receive_some(CHUNK)
        if not chunk:
            break
        received += chunk
    return received


async def exchange(stream: trio.abc.Stream, nbytes: int, seed: int) -> dict[str, Any]:
    """Send and receive ``nbytes`` at the same time (so neither side can block the other)."""
    received = bytearray()

    async def receive() -> None:
        received.extend(await receive_until(stream, nbytes))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await stream.send_all(pattern(nbytes, seed))
    seconds = trio.current_time() - start
    return {"received": len(received), "sha": digest(received), "seconds": round(seconds, 2)}


async def send_fails(stream: trio.abc.Stream) -> str:
    """Try to send to a peer that is gone; return the exception's type name ("" if it worked)."""
    try:
        await stream.send_all(b"x")
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        return type(exc).__name__
    return ""


async def act(stream: trio_vchan.VchanStream, action: str, args: list[str]) -> dict[str, Any]:
    """Run ``action`` on a connected stream and return its report."""
    if action == "exchange":
        return await exchange(stream, int(args[0]), int(args[1]))
    if action == "echo":
        echoed = 0
        while chunk := await stream.receive_some(CHUNK):
            await stream.send_all(chunk)
            echoed += len(chunk)
        return {"echoed": echoed}
    if action == "send-close":
        await stream.send_all(pattern(int(args[0]), int(args[1])))
        await stream.aclose()
        return {"sent": int(args[0])}
    if action in ("drain", "survive"):
        try:
            received = await receive_until(stream)
            ending = "eof"
        except trio.BrokenResourceError:
            received, ending = bytearray(), "broken"
        report = {"received": len(received), "sha": digest(received), "ending": ending}
        return report | {"send_error": await send_fails(stream)}
    if action == "hold":
        await stream.send_all(b"ready\n")
        print("ready", flush=True)
        await trio.sleep_forever()
    raise SystemExit(f"unknown action {action!r}")


async def reconnect(server: int, port: str, count: int, nbytes: int, seed: int) -> dict[str, Any]:
    """Connect ``count`` times in a row; each time send ``nbytes`` and read the echo back."""
    hashes = []
    for i in range(count):
        async with trio_vchan.connect(server, port) as stream:
            report = await exchange(stream, nbytes, seed + i)
            hashes.append(report["sha"] == digest(pattern(nbytes, seed + i)))
    return {"connections": count, "all_echoed": all(hashes)}


async def many(server: int, port: str, count: int, nbytes: int, seed: int) -> dict[str, Any]:
    """Connect to ``count`` ports at once and exchange ``nbytes`` on each, concurrently."""
    hashes: dict[int, str] = {}

    async def one(i: int) -> None:
        async with trio_vchan.connect(server, f"{port}-{i}") as stream:
            hashes[i] = (await exchange(stream, nbytes, seed + i))["sha"]

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return {"connections": len(hashes), "hashes": [hashes[i] for i in range(count)]}


async def proxy_server(client: int, path: str, which: str) -> dict[str, Any]:
    """Run ``vchan-socket-proxy -m server`` and echo whatever it delivers, until it exits."""
    echoed = 0
    argv = [*PROXIES[which], "-m", "server", str(client), path, "-"]
    proxy = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proxy.stdin is not None
        assert proxy.stdout is not None
        # The proxy exits when our vchan client closes; its stdout then ends.
        while chunk := await proxy.stdout.receive_some(CHUNK):
            await proxy.stdin.send_all(chunk)
            echoed += len(chunk)
        await proxy.stdin.aclose()
        await proxy.wait()
    finally:
        with trio.CancelScope(shield=True):
            proxy.kill()
            await proxy.wait()
    return {"echoed": echoed, "proxy_rc": proxy.returncode}


async def proxy_client(
    server: int, path: str, nbytes: int, seed: int, which: str
) -> dict[str, Any]:
    """Send ``nbytes`` through ``vchan-socket-proxy -m client`` and read the echo back."""
    argv = [*PROXIES[which], "-m", "client", str(server), path, "-"]
    proxy = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    received = bytearray()
    try:
        stdin, stdout = proxy.stdin, proxy.stdout
        assert stdin is not None
        assert stdout is not None

        async def receive() -> None:
            received.extend(await receive_until(stdout, nbytes))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await stdin.send_all(pattern(nbytes, seed))
        # All the echo is in: end of input makes the proxy close the vchan and exit.
        await stdin.aclose()
        await proxy.wait()
    finally:
        with trio.CancelScope(shield=True):
            proxy.kill()
            await proxy.wait()
    return {"received": len(received), "sha": digest(received), "proxy_rc": proxy.returncode}


async def run(argv: list[str]) -> dict[str, Any]:
    role, rest = argv[0], argv[1:]
    if role == "serve":
        client, port, read_size, write_size, action = rest[:5]
        async with trio_vchan.serve(
            int(client), port, read_size=int(read_size), write_size=int(write_size)
        ) as stream:
            return await act(stream, action, rest[5:])
    if role == "connect":
        server, port, action = rest[:3]
        async with trio_vchan.connect(int(server), port) as stream:
            return await act(stream, action, rest[3:])
    if role == "reconnect":
        return await reconnect(int(rest[0]), rest[1], *map(int, rest[2:5]))
    if role == "many":
        return await many(int(rest[0]), rest[1], *map(int, rest[2:5]))
    if role == "proxy-server":
        return await proxy_server(int(rest[0]), rest[1], rest[2] if rest[2:] else "c")
    if role == "proxy-client":
        which = rest[4] if rest[4:] else "c"
        return await proxy_client(int(rest[0]), rest[1], int(rest[2]), int(rest[3]), which)
    if role == "lookup":
        try:
            return {"domid": await trio_vchan.lookup_domain(rest[0])}
        except trio_vchan.DomainNameError as exc:
            return {"error": str(exc)}
    raise SystemExit(f"unknown role {role!r}")


def main(argv: list[str]) -> int:
    timeout = 120.0
    if argv[:1] == ["--timeout"]:
        timeout, argv = float(argv[1]), argv[2:]

    async def bounded() -> dict[str, Any]:
        with trio.fail_after(timeout):
            return await run(argv)

    try:
        report = trio.run(bounded)
    except trio.TooSlowError:
        print(json.dumps({"error": f"timed out after {timeout}s"}), flush=True)
        return 3
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The public entry points: serve, connect, listeners, and the choice of backend."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final, final

import trio

from ._backend import Backend, check_domid
from ._errors import BackendUnavailableError, ProtocolError
from ._handshake import advertise, attach, vchan_path, withdraw
from ._layout import RingOrders, choose_orders
from ._stream import VchanStream

DEFAULT_RING_SIZE: Final = 65536
XEN_EVTCHN_DEVICE: Final = "/dev/xen/evtchn"
_SIM_ENV: Final = "TRIO_VCHAN_SIM"


def default_backend() -> Backend:
    """The platform this process runs on: a simulated host named by the environment, else Xen.

    Raises:
        BackendUnavailableError: neither is available; the message says how to get either.
    """
    if os.environ.get(_SIM_ENV):
        from .sim import backend_from_environ

        return backend_from_environ()
    if os.path.exists(XEN_EVTCHN_DEVICE):
        try:
            from ._linux import open_backend  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise BackendUnavailableError(
                f"{XEN_EVTCHN_DEVICE} exists, but this trio-vchan has no Xen device backend yet;"
                " use a simulated host (trio-vchan sim)"
            ) from None
        backend: Backend = open_backend()
        return backend
    raise BackendUnavailableError(
        "no vchan platform found: to use a simulated Xen host, run inside `trio-vchan sim --"
        " COMMAND` (or set TRIO_VCHAN_SIM to a running host's directory and TRIO_VCHAN_DOMID to"
        f" this process's domain id); on Xen, {XEN_EVTCHN_DEVICE} must exist (modprobe"
        " xen-evtchn xen-gntdev xen-gntalloc; mount -t xenfs xenfs /proc/xen)"
    )


@final
class _BackendLease:
    """Closes a backend we opened once its last user (listener or stream) lets go."""

    def __init__(self, backend: Backend | None) -> None:
        self.owned = backend is None
        self.backend = default_backend() if backend is None else backend
        self._users = 1

    def acquire(self) -> Callable[[], None]:
        self._users += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.release()

        return release

    def release(self) -> None:
        self._users -= 1
        if self._users == 0 and self.owned:
            self.backend.close()


async def _serve_one(
    backend: Backend,
    client_domid: int,
    path: str,
    orders: RingOrders,
    on_close: Callable[[], None],
) -> VchanStream:
    """Advertise a fresh endpoint and return it once a client has connected."""
    endpoint = await advertise(backend, client_domid, path, orders)
    stream = VchanStream(endpoint, on_close)
    try:
        await stream.wait_for_client()
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
    finally:
        await withdraw(backend, path)
    return stream


@asynccontextmanager
async def serve(
    client_domid: int,
    port: str | int,
    *,
    read_size: int = DEFAULT_RING_SIZE,
    write_size: int = DEFAULT_RING_SIZE,
    backend: Backend | None = None,
) -> AsyncIterator[VchanStream]:
    """Wait for one connection from ``client_domid`` on ``port``; yield it, close it after.

    Args:
        client_domid: the only domain allowed to connect.
        port: a name matching ``[a-zA-Z0-9_-]+``, an int, or an absolute XenStore path.
        read_size: minimum size of the ring we read, 1 byte to 1 MiB (rounded up as
            libxenvchan does).
        write_size: minimum size of the ring we write, likewise.
        backend: the platform; by default a simulated host named by ``TRIO_VCHAN_SIM``, else Xen.

    Raises:
        ValueError, TypeError: a bad domid, port or size.
        BackendUnavailableError: no platform.
        XenStoreError: the advertisement could not be written.
    """
    stream = await _accept_once(client_domid, port, read_size, write_size, backend)
    async with stream:
        yield stream


async def _accept_once(
    client_domid: int,
    port: str | int,
    read_size: int,
    write_size: int,
    backend: Backend | None,
) -> VchanStream:
    check_domid(client_domid, "client_domid")
    orders = choose_orders(read_size, write_size)
    vchan_path(0, client_domid, port)  # validate before acquiring anything
    lease = _BackendLease(backend)
    try:
        path = vchan_path(lease.backend.domid, client_domid, port)
        while True:
            try:
                return await _serve_one(lease.backend, client_domid, path, orders, lease.acquire())
            except ProtocolError:
                continue  # a client that broke the handshake: advertise afresh
    finally:
        lease.release()


async def open_vchan_stream(
    server_domid: int, port: str | int, *, backend: Backend | None = None
) -> VchanStream:
    """Connect to the vchan that ``server_domid`` serves for us on ``port``.

    Waits (watching XenStore) until the server has advertised it.

    Raises:
        ValueError, TypeError: a bad domid or port.
        BackendUnavailableError: no platform.
        ProtocolError: the server's advertisement or shared page is invalid.
        XenStoreError, OSError: XenStore or the platform refused.
    """
    check_domid(server_domid, "server_domid")
    vchan_path(server_domid, 0, port)
    lease = _BackendLease(backend)
    try:
        path = vchan_path(server_domid, lease.backend.domid, port)
        endpoint = await attach(lease.backend, server_domid, path)
        return VchanStream(endpoint, lease.acquire())
    finally:
        lease.release()


@asynccontextmanager
async def connect(
    server_domid: int, port: str | int, *, backend: Backend | None = None
) -> AsyncIterator[VchanStream]:
    """As :func:`open_vchan_stream`, closing the stream on exit."""
    stream = await open_vchan_stream(server_domid, port, backend=backend)
    async with stream:
        yield stream


@final
class VchanListener(trio.abc.Listener[VchanStream]):
    """Serves one client domain on one port, one connection per :meth:`accept`.

    Each ``accept()`` advertises a fresh endpoint and returns it once the client has connected,
    so ``trio.serve_listeners(handler, [VchanListener(d, port) for d in domids])`` serves many
    domains and clients that reconnect.
    """

    __module__ = "trio_vchan"

    def __init__(
        self,
        client_domid: int,
        port: str | int,
        *,
        read_size: int = DEFAULT_RING_SIZE,
        write_size: int = DEFAULT_RING_SIZE,
        backend: Backend | None = None,
    ) -> None:
        self.client_domid = check_domid(client_domid, "client_domid")
        self._orders = choose_orders(read_size, write_size)
        vchan_path(0, client_domid, port)
        self._lease = _BackendLease(backend)
        self.path = vchan_path(self._lease.backend.domid, client_domid, port)
        self._accepting: trio.CancelScope | None = None
        self._closed = False

    async def accept(self) -> VchanStream:
        """Advertise, wait for the client, return the connected stream.

        Raises:
            trio.BusyResourceError: another task is accepting on this listener.
            trio.ClosedResourceError: the listener was closed, before or during the call.
        """
        if self._accepting is not None:
            raise trio.BusyResourceError("another task is already accepting on this listener")
        if self._closed:
            raise trio.ClosedResourceError("this listener was already closed")
        with trio.CancelScope() as self._accepting:
            try:
                while True:
                    try:
                        return await _serve_one(
                            self._lease.backend,
                            self.client_domid,
                            self.path,
                            self._orders,
                            self._lease.acquire(),
                        )
                    except ProtocolError:
                        continue  # a client that broke the handshake: advertise afresh
            finally:
                self._accepting = None
        raise trio.ClosedResourceError("this listener was closed while accepting")

    async def aclose(self) -> None:
        """Stop listening; an accept in progress raises ClosedResourceError."""
        if not self._closed:
            self._closed = True
            if self._accepting is not None:
                self._accepting.cancel()
            self._lease.release()
        await trio.lowlevel.checkpoint()


async def serve_vchan(
    handler: Callable[[VchanStream], Awaitable[Any]],
    client_domids: Iterable[int],
    port: str | int,
    *,
    read_size: int = DEFAULT_RING_SIZE,
    write_size: int = DEFAULT_RING_SIZE,
    backend: Backend | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[VchanListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``port`` to every domain in ``client_domids`` forever, one task per connection.

    Usable with ``nursery.start``, which returns the listeners.
    """
    listeners = [
        VchanListener(d, port, read_size=read_size, write_size=write_size, backend=backend)
        for d in client_domids
    ]
    await trio.serve_listeners(
        handler, listeners, handler_nursery=handler_nursery, task_status=task_status
    )

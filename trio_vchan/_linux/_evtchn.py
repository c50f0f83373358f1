"""Event channels over ``/dev/xen/evtchn``: one open file, hence one pollable fd, per channel.

Linux's evtchn driver queues a port number in the file's ring when the port fires, then masks
the port until userspace writes the number back. So ``consume()`` reads the pending ports (as
native ``uint32``) and writes them straight back to unmask them; the file is readable while
anything is queued, which is what :class:`trio_vchan._notify.Notifier` waits for.

Why a file per channel: the stream waits on ``EventChannel.fileno()`` for *its* events only,
and a file per channel gives exactly that without a demultiplexing task (libxenvchan also opens
one evtchn handle per vchan). The cost is one fd per vchan.
"""

from __future__ import annotations

import errno
import os
from typing import Final, final

from .._backend import ChannelStatus, EventChannel, EventChannels, check_domid
from .._xen_devices import ffi, lib
from ._syscalls import SYSCALLS, Syscalls

EVTCHN_PATH: Final = "/dev/xen/evtchn"
# The driver reads and writes ports as evtchn_port_t: a native uint32, like the structs' ports.
_PORT_TYPE: Final = "unsigned int"
# The driver queues at most one entry per port until it is unmasked, so with one port per file
# a few entries are plenty; reading more is harmless.
_READ_SIZE: Final = 64 * ffi.sizeof(_PORT_TYPE)


def _port_bytes(port: int) -> bytes:
    return bytes(ffi.buffer(ffi.new(f"{_PORT_TYPE} *", port)))


def _request(cdecl: str, **fields: int) -> memoryview:
    """A zeroed request struct with ``fields`` set, as a writable view for ``ioctl``."""
    struct = ffi.new(cdecl)
    for name, value in fields.items():
        setattr(struct, name, value)
    return memoryview(ffi.buffer(struct))


@final
class LinuxEventChannel(EventChannel):
    """One bound port on its own open ``/dev/xen/evtchn``."""

    def __init__(self, syscalls: Syscalls, fd: int, port: int) -> None:
        self._sys = syscalls
        self._fd = fd
        self._port = port

    def __repr__(self) -> str:
        return f"<LinuxEventChannel port {self._port}, fd {self._fd}>"

    @property
    def port(self) -> int:
        """The local port number."""
        return self._port

    def fileno(self) -> int:
        """The evtchn file, readable while this port has fired; -1 once closed."""
        return self._fd

    def notify(self) -> None:
        """Send an event to the remote end (Xen drops it while nobody is bound there).

        Raises:
            OSError: ``EBADF`` once this channel is closed.
        """
        if self._fd < 0:
            raise OSError(errno.EBADF, f"event channel port {self._port} was closed")
        arg = _request("struct ioctl_evtchn_notify *", port=self._port)
        self._sys.ioctl(self._fd, lib.IOCTL_EVTCHN_NOTIFY, arg)

    def consume(self) -> None:
        """Read the pending ports and write them back to unmask them; never blocks."""
        if self._fd < 0:
            return
        try:
            pending = self._sys.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return  # nothing pending: a spurious wake-up
        except OSError as exc:
            if exc.errno != errno.EFBIG:
                raise
            # The driver's ring overflowed and stays stuck until reset. Our port's event is
            # among the lost ones, and the port is still masked: reset, then unmask it.
            self._sys.ioctl(self._fd, lib.IOCTL_EVTCHN_RESET, memoryview(bytearray()))
            pending = _port_bytes(self._port)
        if pending:
            self._sys.write(self._fd, pending)

    def status(self) -> ChannelStatus:
        """UNKNOWN while open: the device offers no EVTCHNOP_status (that needs privcmd)."""
        return ChannelStatus.PEER_CLOSED if self._fd < 0 else ChannelStatus.UNKNOWN

    def close(self) -> None:
        """Unbind the port and close its file; idempotent."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            arg = _request("struct ioctl_evtchn_unbind *", port=self._port)
            self._sys.ioctl(fd, lib.IOCTL_EVTCHN_UNBIND, arg)
        except OSError:
            pass  # closing the file unbinds every port bound through it anyway
        finally:
            self._sys.close(fd)


@final
class EvtchnDevice(EventChannels):
    """Binds ports, each on a fresh non-blocking open of ``/dev/xen/evtchn``."""

    def __init__(self, syscalls: Syscalls = SYSCALLS, path: str = EVTCHN_PATH) -> None:
        self._sys = syscalls
        self._path = path

    def bind_unbound(self, remote_domid: int) -> LinuxEventChannel:
        """Allocate a port that ``remote_domid`` may bind to.

        Raises:
            OSError: the driver or Xen refused (``ENOSPC`` with no free port, ``EMFILE``).
        """
        check_domid(remote_domid, "remote_domid")
        return self._bind(
            lib.IOCTL_EVTCHN_BIND_UNBOUND_PORT,
            _request("struct ioctl_evtchn_bind_unbound_port *", remote_domain=remote_domid),
        )

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> LinuxEventChannel:
        """Bind to ``remote_port``, an unbound port of ``remote_domid`` offered to us.

        Raises:
            OSError: ``EINVAL`` if that port is not waiting for this domain.
        """
        check_domid(remote_domid, "remote_domid")
        if isinstance(remote_port, bool) or not isinstance(remote_port, int):
            raise TypeError(f"remote_port must be an int, not {type(remote_port).__name__}")
        if not 0 < remote_port <= 0xFFFF_FFFF:
            raise ValueError(f"remote_port must be a positive port number, not {remote_port!r}")
        return self._bind(
            lib.IOCTL_EVTCHN_BIND_INTERDOMAIN,
            _request(
                "struct ioctl_evtchn_bind_interdomain *",
                remote_domain=remote_domid,
                remote_port=remote_port,
            ),
        )

    def _bind(self, request: int, arg: memoryview) -> LinuxEventChannel:
        fd = self._sys.open(self._path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            port = self._sys.ioctl(fd, request, arg)  # the new local port is the return value
            channel = LinuxEventChannel(self._sys, fd, port)
        except BaseException:
            self._sys.close(fd)
            raise
        try:
            # As libxenvchan: unmask right after binding (harmless if the driver already did).
            self._sys.write(fd, _port_bytes(port))
        except BaseException:
            channel.close()
            raise
        return channel

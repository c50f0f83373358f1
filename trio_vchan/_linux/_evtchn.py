"""Event channels over ``/dev/xen/evtchn``: one open file for all of a backend's ports.

Linux's evtchn driver queues a port number in the file's ring when the port fires, then masks
the port until userspace writes the number back. So ``consume()`` reads the pending ports (as
native ``uint32``) and writes them straight back to unmask them; the file is readable while
anything is queued. Every port is bound through the one file, as libxenevtchn binds through
one handle, so a process holds one fd for all its event channels however many vchans it has;
:class:`trio_vchan._notify.Notifier` hands each port's events to the tasks that wait for it.
"""

from __future__ import annotations

import array
import errno
from typing import TYPE_CHECKING, Any, Final, final

from .._backend import ChannelStatus, EventChannel, EventChannels, check_domid
from .._xen_devices import ffi, lib

if TYPE_CHECKING:
    from ._device import DeviceFile

EVTCHN_PATH: Final = "/dev/xen/evtchn"
# The driver reads and writes ports as evtchn_port_t: a native uint32, like the structs' ports.
_PORT_TYPE: Final = "unsigned int"
_PORT_SIZE: Final = ffi.sizeof(_PORT_TYPE)
_PORT_CODE: Final = "I"  # array's code for it
assert array.array(_PORT_CODE).itemsize == _PORT_SIZE
# Ports read per call: more stay queued, and the file readable, for the next one.
_READ_SIZE: Final = 1024 * _PORT_SIZE


def _port_bytes(ports: list[int]) -> bytes:
    return array.array(_PORT_CODE, ports).tobytes()


def _request(cdecl: str, **fields: int) -> Any:
    """A zeroed request struct with ``fields`` set."""
    struct = ffi.new(cdecl)
    for name, value in fields.items():
        setattr(struct, name, value)
    return struct


@final
class _Ports:
    """The evtchn file and the ports bound through it (what an overflow must unmask)."""

    def __init__(self, file: DeviceFile) -> None:
        self.file = file
        self.bound: set[int] = set()

    def take_pending(self) -> list[int]:
        """Read the fired ports and write them back (unmask); never blocks."""
        sys, fd = self.file.syscalls, self.file.fd
        try:
            data = sys.read(fd, _READ_SIZE)
        except BlockingIOError:
            return []  # nothing pending: a spurious wake-up, or another port's reader was first
        except OSError as exc:
            if exc.errno != errno.EFBIG:
                raise
            # The driver's ring overflowed and stays stuck until reset. Any port's event may
            # be among the lost ones, still masked: reset, then unmask and report them all.
            self.file.ioctl(lib.IOCTL_EVTCHN_RESET, None)
            ports = sorted(self.bound)
        else:
            ports = array.array(_PORT_CODE, data[: len(data) // _PORT_SIZE * _PORT_SIZE]).tolist()
        if ports:
            sys.write(fd, _port_bytes(ports))
        return ports


@final
class LinuxEventChannel(EventChannel):
    """One bound port, on its backend's shared ``/dev/xen/evtchn`` file."""

    def __init__(self, ports: _Ports, port: int) -> None:
        self._ports: _Ports | None = ports
        self._port = port

    def __repr__(self) -> str:
        state = "closed" if self._ports is None else f"fd {self._ports.file.fd}"
        return f"<LinuxEventChannel port {self._port}, {state}>"

    @property
    def port(self) -> int:
        """The local port number."""
        return self._port

    def fileno(self) -> int:
        """The evtchn file (shared with the backend's other ports), readable while a port has
        fired; -1 once closed."""
        return -1 if self._ports is None else self._ports.file.fd

    def notify(self) -> None:
        """Send an event to the remote end (Xen drops it while nobody is bound there).

        Raises:
            OSError: ``EBADF`` once this channel is closed.
        """
        if self._ports is None:
            raise OSError(errno.EBADF, f"event channel port {self._port} was closed")
        request = _request("struct ioctl_evtchn_notify *", port=self._port)
        self._ports.file.ioctl(lib.IOCTL_EVTCHN_NOTIFY, request)

    def consume(self) -> list[int]:
        """Read the ports pending on the file (any of the backend's) and unmask them; never
        blocks. Returns them."""
        return [] if self._ports is None else self._ports.take_pending()

    def status(self) -> ChannelStatus:
        """UNKNOWN while open: the device offers no EVTCHNOP_status (that needs privcmd)."""
        return ChannelStatus.PEER_CLOSED if self._ports is None else ChannelStatus.UNKNOWN

    def close(self) -> None:
        """Unbind the port; the file closes with its last port and the backend. Idempotent."""
        ports, self._ports = self._ports, None
        if ports is None:
            return
        ports.bound.discard(self._port)
        try:
            request = _request("struct ioctl_evtchn_unbind *", port=self._port)
            ports.file.ioctl(lib.IOCTL_EVTCHN_UNBIND, request)
        except OSError:
            pass  # closing the file unbinds every port bound through it anyway
        finally:
            ports.file.release()


@final
class EvtchnDevice(EventChannels):
    """Binds ports through one open ``/dev/xen/evtchn`` (non-blocking), ``file``."""

    def __init__(self, file: DeviceFile) -> None:
        self._ports = _Ports(file)
        self._closed = False

    def bind_unbound(self, remote_domid: int) -> LinuxEventChannel:
        """Allocate a port that ``remote_domid`` may bind to.

        Raises:
            OSError: the driver or Xen refused (``ENOSPC`` with no free port).
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

    def close(self) -> None:
        """Let go of the file (it closes once the last channel bound through it is closed)."""
        if not self._closed:
            self._closed = True
            self._ports.file.release()

    def _bind(self, request: int, struct: Any) -> LinuxEventChannel:
        file = self._ports.file
        file.acquire()  # ValueError once closed
        try:
            port = file.ioctl(request, struct)  # the new local port is the return value
        except BaseException:
            file.release()
            raise
        self._ports.bound.add(port)
        channel = LinuxEventChannel(self._ports, port)
        try:
            # As libxenvchan: unmask right after binding (harmless if the driver already did).
            file.syscalls.write(file.fd, _port_bytes([port]))
        except BaseException:
            channel.close()
            raise
        return channel

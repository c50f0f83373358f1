"""A fake Linux kernel for the Linux device layer (trio_vchan._linux), in two forms.

:class:`FakeKernel` records every system call the device layer makes through its injected
:class:`~trio_vchan._linux._syscalls.Syscalls` and decodes each ioctl's request struct with the
same cffi module, so tests can assert the exact calls and the field values the kernel would see.

:class:`ModelKernel` is a recording kernel that also behaves: domains on one
:class:`FakeHypervisor` bind event channels to each other (each evtchn file is a real eventfd,
readable while a port is pending), grant pages (real memory, a memfd per share) that the other
domain maps, and run unmap-notifies when a region is released or its file closed. What it does
not model is said where it matters: one process stands for every domain, so "the process dies"
is :meth:`ModelKernel.exit_process` (the kernel releasing the files), and a mapping must name
consecutive pages of one share.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
from collections import deque
from typing import Any, Final

import attrs

from trio_vchan._linux._syscalls import Syscalls
from trio_vchan._pages import Pages
from trio_vchan._xen_devices import ffi, lib

EVTCHN: Final = "/dev/xen/evtchn"
GNTALLOC: Final = "/dev/xen/gntalloc"
GNTDEV: Final = "/dev/xen/gntdev"
PAGE: Final = 4096
RW: Final = mmap.PROT_READ | mmap.PROT_WRITE
NOTIFY_BOTH: Final = 3  # UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT, per the uapi header

# request name -> the struct it carries (None: no argument)
REQUESTS: Final[dict[str, str | None]] = {
    "IOCTL_EVTCHN_BIND_INTERDOMAIN": "struct ioctl_evtchn_bind_interdomain",
    "IOCTL_EVTCHN_BIND_UNBOUND_PORT": "struct ioctl_evtchn_bind_unbound_port",
    "IOCTL_EVTCHN_UNBIND": "struct ioctl_evtchn_unbind",
    "IOCTL_EVTCHN_NOTIFY": "struct ioctl_evtchn_notify",
    "IOCTL_EVTCHN_RESET": None,
    "IOCTL_GNTALLOC_ALLOC_GREF": "struct ioctl_gntalloc_alloc_gref",
    "IOCTL_GNTALLOC_DEALLOC_GREF": "struct ioctl_gntalloc_dealloc_gref",
    "IOCTL_GNTALLOC_SET_UNMAP_NOTIFY": "struct ioctl_gntalloc_unmap_notify",
    "IOCTL_GNTDEV_MAP_GRANT_REF": "struct ioctl_gntdev_map_grant_ref",
    "IOCTL_GNTDEV_UNMAP_GRANT_REF": "struct ioctl_gntdev_unmap_grant_ref",
    "IOCTL_GNTDEV_SET_UNMAP_NOTIFY": "struct ioctl_gntdev_unmap_notify",
}
# gntalloc and gntdev share the number of SET_UNMAP_NOTIFY; the device disambiguates.
_NAMES: Final = {
    (path, getattr(lib, name)): name
    for name in REQUESTS
    for path in (EVTCHN, GNTALLOC, GNTDEV)
    if name.split("_")[1].lower() == os.path.basename(path)
}

Call = tuple[Any, ...]


def _fields(cdecl: str, arg: memoryview) -> dict[str, Any]:
    """Decode a request struct into {field: value}; variable tails become lists."""
    view = ffi.from_buffer(f"{cdecl} *", arg)
    fields: dict[str, Any] = {"size": len(arg)}
    if cdecl == "struct ioctl_gntalloc_alloc_gref":
        fields |= {"domid": view.domid, "flags": view.flags, "count": view.count}
        fields["gref_ids"] = [view.gref_ids[i] for i in range(view.count)]
    elif cdecl == "struct ioctl_gntdev_map_grant_ref":
        fields["count"] = view.count
        fields["refs"] = [(view.refs[i].domid, view.refs[i].ref) for i in range(view.count)]
    else:
        for name in ("remote_domain", "remote_port", "port", "index", "count", "action"):
            if hasattr(view, name):
                fields[name] = getattr(view, name)
        if hasattr(view, "event_channel_port"):
            fields["event_channel_port"] = view.event_channel_port
    return fields


class FakeKernel:
    """Answers the device layer's system calls as Linux's Xen drivers would, recording each.

    Records are tuples: ``("open", path, flags)``, ``("close", path)``, ``("read", path, n)``,
    ``("write", path, [ports])``, ``("ioctl", path, name, {field: value})``,
    ``("mmap", path, length, prot, offset)`` and ``("munmap", path, offset)``.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.paths: dict[int, str] = {}
        self.pending: dict[int, deque[bytes | OSError]] = {}
        self.fail: dict[str, OSError] = {}  # ioctl name or "open:<path>" -> error to raise
        self.maps: list[Pages] = []  # until released, as a process's mappings
        self._next_fd = 100
        self._next_port = 7
        self._next_index = 0
        self.syscalls = Syscalls(
            open=self.open,
            close=self.close,
            read=self.read,
            write=self.write,
            ioctl=self.ioctl,
            mmap=self.mmap,
        )

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls

    def open(self, path: str, flags: int) -> int:
        self.calls.append(("open", path, flags))
        if f"open:{path}" in self.fail:
            raise self.fail[f"open:{path}"]
        fd = self._next_fd
        self._next_fd += 1
        self.paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        self.calls.append(("close", self.paths.pop(fd)))

    def read(self, fd: int, size: int) -> bytes:
        self.calls.append(("read", self.paths[fd], size))
        queue = self.pending.get(fd)
        if not queue:
            raise BlockingIOError(errno.EAGAIN, "nothing pending")
        item = queue.popleft()
        if isinstance(item, OSError):
            raise item
        return item

    def write(self, fd: int, data: bytes) -> int:
        ports = list(struct.unpack(f"={len(data) // 4}I", data))
        self.calls.append(("write", self.paths[fd], ports))
        return len(data)

    def ioctl(self, fd: int, request: int, arg: memoryview) -> int:
        path = self.paths[fd]
        name = _NAMES[path, request]
        cdecl = REQUESTS[name]
        self.calls.append(("ioctl", path, name, _fields(cdecl, arg) if cdecl else {}))
        if name in self.fail:
            raise self.fail[name]
        if name.startswith("IOCTL_EVTCHN_BIND"):
            self._next_port += 1
            return self._next_port - 1
        if name == "IOCTL_GNTALLOC_ALLOC_GREF":
            view = ffi.from_buffer(f"{cdecl} *", arg)
            view.index = self._allocate_index(view.count)
            for i in range(view.count):
                view.gref_ids[i] = 200 + i
        if name == "IOCTL_GNTDEV_MAP_GRANT_REF":
            view = ffi.from_buffer(f"{cdecl} *", arg)
            view.index = self._allocate_index(view.count)
        return 0

    def _allocate_index(self, count: int) -> int:
        self._next_index += 0x10000
        return self._next_index

    def mmap(self, fd: int, length: int, prot: int, offset: int) -> Pages:
        path = self.paths[fd]
        self.calls.append(("mmap", path, length, prot, offset))
        if "mmap" in self.fail:
            raise self.fail["mmap"]
        unmapped = lambda: self.calls.append(("munmap", path, offset))  # noqa: E731
        pages = Pages(-1, length, prot, unmapped=unmapped)
        self.maps.append(pages)
        return pages

    def queue_pending(self, fd: int, *items: bytes | OSError) -> None:
        self.pending.setdefault(fd, deque()).extend(items)


def port_bytes(*ports: int) -> bytes:
    return struct.pack(f"={len(ports)}I", *ports)


# -- the behaving model ----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Port:
    kernel: ModelKernel
    fd: int
    port: int
    remote_domid: int
    peer: _Port | None = None
    holds: int = 0  # unmap-notifies naming this port: it stays bound for them
    unbound: bool = False  # closed while held

    def fire(self) -> None:
        self.kernel.fire(self.fd, self.port)


@attrs.define(eq=False)
class _Grant:
    owner: int
    grantee: int
    memfd: int
    page: int


@attrs.define(eq=False)
class _Region:
    """A gntalloc allocation or a gntdev mapping, at its file offset ``index``."""

    path: str
    fd: int
    count: int
    refs: list[tuple[int, int]]  # (domid, ref)
    memfd: int = -1  # the memory, once known (a share: at once; a mapping: at mmap)
    first_page: int = 0
    notify: tuple[int, int] | None = None  # (offset, port)


class FakeHypervisor:
    """What the domains' model kernels share: ports and grants, by domain."""

    def __init__(self) -> None:
        self.ports: dict[tuple[int, int], _Port] = {}
        self.grants: dict[int, _Grant] = {}
        self._next_port: dict[int, int] = {}
        self._next_ref = 8

    def allocate_port(self, domid: int) -> int:
        port = self._next_port.get(domid, 1)
        self._next_port[domid] = port + 1
        return port

    def allocate_ref(self) -> int:
        self._next_ref += 1
        return self._next_ref


class ModelKernel(FakeKernel):
    """Domain ``domid``'s kernel on ``hypervisor``: records every call and behaves as Linux."""

    def __init__(self, hypervisor: FakeHypervisor, domid: int) -> None:
        super().__init__()
        self.hypervisor = hypervisor
        self.domid = domid
        self._pending: dict[int, set[int]] = {}  # by fd: fired, not yet read
        self._masked: dict[int, set[int]] = {}  # by fd: read (or queued), not yet written back
        self._held: dict[int, set[int]] = {}  # by fd: fired while masked
        self._regions: dict[int, _Region] = {}  # by index

    # Every file is a real eventfd, so fds never collide with the process's own and an evtchn
    # file can be polled.
    def open(self, path: str, flags: int) -> int:
        self.calls.append(("open", path, flags))
        if f"open:{path}" in self.fail:
            raise self.fail[f"open:{path}"]
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        """Release the file as Linux does: unbind its ports, release its regions."""
        path = self.paths.pop(fd)
        self.calls.append(("close", path))
        for key, port in list(self.hypervisor.ports.items()):
            if port.kernel is self and port.fd == fd:
                self._unbind(key)
        for index, region in list(self._regions.items()):
            if region.fd == fd:
                self._release(index)
        for state in (self._pending, self._masked, self._held):
            state.pop(fd, None)
        os.close(fd)

    def exit_process(self) -> None:
        """What the kernel does when the process dies: release every file it has open, and
        forget its mappings (the caller drops its last references to them)."""
        for fd in list(self.paths):
            self.close(fd)
        self.maps.clear()

    def read(self, fd: int, size: int) -> bytes:
        self.calls.append(("read", self.paths[fd], size))
        if self.pending.get(fd):
            item = self.pending[fd].popleft()
            if isinstance(item, OSError):
                raise item
            return item
        ports = sorted(self._pending.pop(fd, set()))
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(fd)
        if not ports:
            raise BlockingIOError(errno.EAGAIN, "nothing pending")
        return port_bytes(*ports)[:size]

    def fire(self, fd: int, port: int) -> None:
        # As Linux's evtchn driver: a port that fired is masked until its number is written
        # back; an event meanwhile stays pending in Xen and is delivered at the unmask.
        if fd not in self.paths:
            return
        if port in self._masked.setdefault(fd, set()):
            self._held.setdefault(fd, set()).add(port)
            return
        self._masked[fd].add(port)
        self._pending.setdefault(fd, set()).add(port)
        os.eventfd_write(fd, 1)

    def write(self, fd: int, data: bytes) -> int:
        written = super().write(fd, data)
        for (port,) in struct.iter_unpack("=I", data):
            self._masked.get(fd, set()).discard(port)
            if port in self._held.get(fd, set()):
                self._held[fd].discard(port)
                self.fire(fd, port)
        return written

    def ioctl(self, fd: int, request: int, arg: memoryview) -> int:
        result = super().ioctl(fd, request, arg)  # records, and raises what self.fail says
        path = self.paths[fd]
        name = _NAMES[path, request]
        cdecl = REQUESTS[name]
        view: Any = ffi.from_buffer(f"{cdecl} *", arg) if cdecl else None
        if name == "IOCTL_EVTCHN_BIND_UNBOUND_PORT":
            return self._bind(fd, view.remote_domain, None)
        if name == "IOCTL_EVTCHN_BIND_INTERDOMAIN":
            return self._bind(fd, view.remote_domain, view.remote_port)
        if name == "IOCTL_EVTCHN_NOTIFY":
            port = self._own_port(view.port)
            if port.peer is not None:
                port.peer.fire()
        elif name == "IOCTL_EVTCHN_UNBIND":
            self._own_port(view.port)
            self._unbind((self.domid, view.port))
        elif name == "IOCTL_GNTALLOC_ALLOC_GREF":
            self._alloc(fd, view)
        elif name == "IOCTL_GNTDEV_MAP_GRANT_REF":
            refs = [(view.refs[i].domid, view.refs[i].ref) for i in range(view.count)]
            self._regions[view.index] = _Region(path, fd, view.count, refs)
        elif name in ("IOCTL_GNTALLOC_DEALLOC_GREF", "IOCTL_GNTDEV_UNMAP_GRANT_REF"):
            if view.index not in self._regions:
                raise OSError(errno.EINVAL, f"no region at index {view.index:#x}")
            self._release(view.index)
        elif name.endswith("SET_UNMAP_NOTIFY"):
            for index, region in self._regions.items():
                if index <= view.index < index + region.count * PAGE:
                    # As Linux, hold the port (evtchn_get) so that it outlives its close.
                    port = self._own_port(view.event_channel_port)
                    port.holds += 1
                    if region.notify is not None:
                        self._drop_hold(region.notify[1])
                    region.notify = (view.index - index, view.event_channel_port)
                    break
            else:
                raise OSError(errno.EINVAL, f"no region holds index {view.index:#x}")
        return result

    def _own_port(self, number: int) -> _Port:
        port = self.hypervisor.ports.get((self.domid, number))
        if port is None or port.kernel is not self:
            raise OSError(errno.EINVAL, f"port {number} is not bound here")
        return port

    def _bind(self, fd: int, remote_domid: int, remote_port: int | None) -> int:
        ports = self.hypervisor.ports
        remote = None
        if remote_port is not None:
            remote = ports.get((remote_domid, remote_port))
            if remote is None or remote.peer is not None or remote.remote_domid != self.domid:
                raise OSError(errno.EINVAL, "Invalid argument")
        number = self.hypervisor.allocate_port(self.domid)
        port = ports[self.domid, number] = _Port(self, fd, number, remote_domid, remote)
        if remote is not None:
            remote.peer = port
            port.fire()  # Xen's EVTCHNOP_bind_interdomain leaves the new port pending
        return number

    def _drop_hold(self, number: int) -> None:
        port = self.hypervisor.ports[self.domid, number]
        port.holds -= 1
        if port.unbound:
            self._unbind((self.domid, number))

    def _unbind(self, key: tuple[int, int]) -> None:
        port = self.hypervisor.ports[key]
        if port.holds:
            port.unbound = True  # unbound when the last unmap-notify naming it has run
            return
        # As Xen's EVTCHNOP_close: the remote end goes back to unbound, and is not fired.
        del self.hypervisor.ports[key]
        if port.peer is not None:
            port.peer.peer = None

    def _alloc(self, fd: int, view: Any) -> None:
        memfd = os.memfd_create("fake-gntalloc", os.MFD_CLOEXEC)
        os.ftruncate(memfd, view.count * PAGE)
        refs = []
        for page in range(view.count):
            ref = self.hypervisor.allocate_ref()
            self.hypervisor.grants[ref] = _Grant(self.domid, view.domid, memfd, page)
            view.gref_ids[page] = ref
            refs.append((self.domid, ref))
        self._regions[view.index] = _Region(GNTALLOC, fd, view.count, refs, memfd)

    def mmap(self, fd: int, length: int, prot: int, offset: int) -> Pages:
        path = self.paths[fd]
        self.calls.append(("mmap", path, length, prot, offset))
        if "mmap" in self.fail:
            raise self.fail["mmap"]
        region = self._regions.get(offset)
        if region is None or region.count * PAGE != length:
            raise OSError(errno.EINVAL, "Invalid argument")
        if path == GNTDEV:
            self._map_grants(region)
        pages = Pages(
            region.memfd,
            length,
            prot,
            region.first_page * PAGE,
            unmapped=lambda: self.calls.append(("munmap", path, offset)),
        )
        self.maps.append(pages)
        return pages

    def _map_grants(self, region: _Region) -> None:
        """Find the memory of the grants (gntdev maps them in mmap, so bad refs fail here)."""
        grants = []
        for domid, ref in region.refs:
            grant = self.hypervisor.grants.get(ref)
            if grant is None or grant.owner != domid or grant.grantee != self.domid:
                raise OSError(errno.EINVAL, "Invalid argument")
            grants.append(grant)
        first = grants[0]
        if any(g.memfd != first.memfd or g.page != first.page + i for i, g in enumerate(grants)):
            raise OSError(errno.EINVAL, "the fake kernel maps only consecutive pages of one share")
        region.memfd, region.first_page = os.dup(first.memfd), first.page

    def _release(self, index: int) -> None:
        region = self._regions.pop(index)
        if region.notify is not None and region.memfd >= 0:
            offset, number = region.notify
            os.pwrite(region.memfd, b"\0", region.first_page * PAGE + offset)
            port = self.hypervisor.ports[self.domid, number]
            if port.peer is not None:
                port.peer.fire()
            self._drop_hold(number)
        if region.path == GNTALLOC:
            for _, ref in region.refs:
                del self.hypervisor.grants[ref]
        if region.memfd >= 0:
            os.close(region.memfd)

    def open_regions(self) -> int:
        return len(self._regions)

    def bound_ports(self) -> int:
        return sum(port.kernel is self for port in self.hypervisor.ports.values())

"""The platform services a vchan needs, as protocols every backend implements.

A backend is a domain's view of its platform: event channels, grant sharing and mapping, and a
way to reach XenStore. The simulated host (:mod:`trio_vchan._sim`) and real Xen
(:mod:`trio_vchan._linux`) implement these; the handshake and the stream use nothing else.

Event-channel and grant calls are short system calls (or short requests to the simulated host),
so they are synchronous; XenStore is reached through an async byte stream that
:class:`trio_vchan._xenstore.XenStoreClient` speaks the wire protocol over.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import attrs

if TYPE_CHECKING:
    import trio

PAGE_SIZE: Final = 4096
DOMID_MAX: Final = 32751  # DOMID_FIRST_RESERVED - 1


class ChannelStatus(enum.Enum):
    """What a port knows of its remote end (EVTCHNOP_status), where the backend can tell."""

    UNBOUND = "unbound"  # waiting for the remote domain to bind
    CONNECTED = "connected"  # both ends bound
    PEER_CLOSED = "peer closed"  # the remote end closed, or its domain or process died
    UNKNOWN = "unknown"  # this backend cannot tell (Linux's /dev/xen/evtchn has no status)


class EventChannel(Protocol):
    """One bound event-channel port of this domain.

    ``fileno()`` becomes readable when the port has fired (events coalesce: several notifies
    before a ``consume()`` may be seen as one). Wait on it with ``trio.lowlevel.wait_readable``.
    """

    @property
    def port(self) -> int:
        """The local port number (what an unmap-notify request names)."""
        ...

    def fileno(self) -> int: ...

    def notify(self) -> None:
        """Send an event to the remote end (a no-op while nobody is bound there)."""
        ...

    def consume(self) -> None:
        """Acknowledge pending events and unmask the port; never blocks."""
        ...

    def status(self) -> ChannelStatus:
        """The state of the remote end now (may ask the platform: not for the data path)."""
        ...

    def close(self) -> None: ...


class EventChannels(Protocol):
    """The domain's event-channel device (Linux: an open ``/dev/xen/evtchn``)."""

    def bind_unbound(self, remote_domid: int) -> EventChannel:
        """Allocate a port that ``remote_domid`` may bind to (the server side)."""
        ...

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> EventChannel:
        """Bind to ``remote_port``, an unbound port of ``remote_domid`` (the client side)."""
        ...


class Share(Protocol):
    """Pages this domain granted to one other domain (Linux: ``/dev/xen/gntalloc``)."""

    @property
    def refs(self) -> Sequence[int]:
        """The grant references, one per page, in page order."""
        ...

    @property
    def buffer(self) -> memoryview:
        """The pages, writable, contiguous, ``PAGE_SIZE * len(refs)`` bytes."""
        ...

    def set_unmap_notify(self, offset: int, port: int) -> None:
        """When this share is released, even by the process dying, clear the byte at ``offset``
        and send an event on local ``port``."""
        ...

    def close(self) -> None:
        """Release the pages; views of ``buffer`` must have been released first."""
        ...


class Mapping(Protocol):
    """Pages another domain granted to us, mapped here (Linux: ``/dev/xen/gntdev``)."""

    @property
    def buffer(self) -> memoryview:
        """The mapped pages, contiguous; read-only unless mapped writable."""
        ...

    def set_unmap_notify(self, offset: int, port: int) -> None:
        """As :meth:`Share.set_unmap_notify`; needs a writable mapping."""
        ...

    def close(self) -> None: ...


class GrantMemory(Protocol):
    """Grant sharing and mapping for one domain."""

    def share(self, remote_domid: int, count: int) -> Share:
        """Grant ``count`` fresh zeroed pages to ``remote_domid`` (it may map them writable)."""
        ...

    def map(self, remote_domid: int, refs: Sequence[int], *, writable: bool) -> Mapping:
        """Map pages that ``remote_domid`` granted to us, in the order of ``refs``, contiguously.

        Raises:
            OSError: a ref that does not exist or was not granted to this domain.
        """
        ...


@attrs.frozen
class Backend:
    """A domain's platform: who it is, its event channels, grants and XenStore.

    Get one from a simulated host (:meth:`trio_vchan.sim.SimulatedHost.backend`) or let
    trio-vchan choose (``backend=None``).
    """

    domid: int
    events: EventChannels
    memory: GrantMemory
    #: Opens a fresh connection to XenStore, as this domain.
    connect_xenstore: Callable[[], Awaitable[trio.abc.Stream]]
    #: Releases what the backend holds (devices, connections); idempotent.
    close: Callable[[], None] = attrs.field(default=lambda: None)
    #: Names the platform instance (a simulated host's domain socket; "xen"): two backends
    #: with the same instance and domid are the same domain. Used to claim ports.
    instance: str = ""


def check_domid(domid: object, what: str = "domid") -> int:
    """Return ``domid`` if it is a valid domain id, else raise TypeError/ValueError."""
    if not isinstance(domid, int) or isinstance(domid, bool):
        raise TypeError(f"{what} must be an int, not {type(domid).__name__}")
    if not 0 <= domid <= DOMID_MAX:
        raise ValueError(f"{what} must be 0..{DOMID_MAX}, not {domid!r}")
    return domid

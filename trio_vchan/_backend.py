"""The platform services a vchan needs, as protocols every backend implements.

A backend is a domain's view of its platform: event channels, grant sharing and mapping, and a
way to reach XenStore. The simulated host (:mod:`trio_vchan._sim`) and real Xen
(:mod:`trio_vchan._linux`) implement these; the handshake and the stream use nothing else.

Event-channel and grant calls are short system calls (or short requests to the simulated host),
so they are synchronous; XenStore is reached through an async byte stream that
:class:`trio_vchan._xenstore.XenStoreClient` speaks the wire protocol over.

What every backend promises (the contract the handshake and the stream rely on;
tests/backend_contract.py checks it on the simulated host, on the Linux backend over a model
kernel, and on real Xen in ``nox -s xen``):

- **Event channels.** A port bound with ``bind_unbound`` waits for one domain to bind it with
  ``bind_interdomain``; events sent before that are dropped. ``fileno()`` is readable while an
  event is pending; events coalesce until ``consume()``, which never blocks, says which ports
  fired and leaves them ready to fire again (an event after it makes ``fileno()`` readable
  again). Ports may share one fd: on Linux every port of one ``EventChannels`` reports on its
  one ``/dev/xen/evtchn`` file, and any of them may consume the others' events (each port its
  own eventfd on the simulated host).
  ``notify()`` never blocks and is a no-op once the peer closed; ``status()`` then says
  ``PEER_CLOSED`` where the backend can tell (``UNKNOWN`` on Linux). A waiter must treat an
  event as a hint to look, since the backends differ in when they give spurious ones: on Xen
  a port fresh from ``bind_interdomain`` has an event pending, and an event that arrives while
  a fired port waits for ``consume()`` is delivered once more after it; the simulated host
  has neither. When one end closes, or its process dies, the simulated host fires the other
  end; Xen does not (a peer learns of it from the unmap-notify below).
- **Shares.** ``share`` gives fresh zeroed pages, one ref per page in page order, that the
  grantee may map writable. ``Share.buffer`` is one writable view of all of them.
- **Mappings.** ``map`` maps the refs in their order as one contiguous buffer, writable only
  if asked; a ref that does not exist, or was granted to another domain, is an
  :class:`OSError` and maps nothing.
- **Unmap-notify.** ``set_unmap_notify(offset, port)`` (on a share, or a writable mapping)
  makes the release of the pages, by ``close()`` or by the process dying, clear the byte at
  ``offset`` and then send an event on the local ``port``; the port stays usable for that
  event even if it is closed first. A later call replaces the earlier one.
- **XenStore.** ``connect_xenstore()`` opens a new connection that acts as this domain.
- **Closing.** ``close()`` of a channel, share or mapping is idempotent; afterwards a share's
  or mapping's ``buffer`` raises :class:`ValueError`. A caller releases its views of a buffer
  before closing it. Where this is not held to, the backends differ today: with views still
  alive, the simulated host raises :class:`BufferError` and releases nothing, Linux gives the
  grants up and leaves the memory mapped until the last view goes; and ``Backend.close()``
  ends every share, mapping and port on the simulated host (its platform connection is the
  process's devices), while on Linux those already handed out keep their device files open
  until they are closed themselves.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from ._layout import PAGE_SIZE as PAGE_SIZE  # backends map and grant whole pages of it

if TYPE_CHECKING:
    import trio

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
    before a ``consume()`` may be seen as one), or another port that reports on the same fd
    (on Linux, every port of one :class:`EventChannels`); :class:`trio_vchan._notify.Notifier`
    waits on it for all of them.
    """

    @property
    def port(self) -> int:
        """The local port number (what an unmap-notify request names)."""
        ...

    def fileno(self) -> int: ...

    def notify(self) -> None:
        """Send an event to the remote end (a no-op while nobody is bound there)."""
        ...

    def consume(self) -> Collection[int]:
        """Take the events pending on ``fileno()`` and unmask their ports; never blocks.

        Returns:
            The ports that fired: this one, others that share the fd, or none.
        """
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

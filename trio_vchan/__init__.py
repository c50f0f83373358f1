"""trio-vchan: Xen's vchan for Trio, a byte stream between two Xen domains in shared memory.

A vchan joins two domains through shared memory pages and event channels, wire-compatible with
Xen's C ``libxenvchan`` and MirageOS's ``ocaml-vchan``. One domain serves, the other connects,
and each gets a :class:`VchanStream`, a :class:`trio.abc.Stream`::

    async with trio_vchan.serve(2, "greeting") as stream:    # in domain 1
        await stream.send_all(b"hello from domain 1\\n")

    async with trio_vchan.connect(1, "greeting") as stream:  # in domain 2
        print(await stream.receive_some())

:class:`VchanListener` is a :class:`trio.abc.Listener`, and :func:`serve_vchan` serves many
domains. Without Xen, :mod:`trio_vchan.sim` runs a simulated Xen host (real shared memory and
event channels between ordinary processes, a XenStore speaking the real wire protocol), so the
same code runs on a laptop; ``trio-vchan sim -- COMMAND`` starts one from the shell, and
``trio-vchan cat`` does what Xen's ``xencat`` does.

The documentation (tutorial, API reference, command line, design) is in the ``docs/``
directory of the source tree; build it with ``nox -s docs``.
"""

from __future__ import annotations

from ._advertisement import PeerGoneError as PeerGoneError
from ._api import VchanListener as VchanListener
from ._api import connect as connect
from ._api import lookup_domain as lookup_domain
from ._api import open_vchan_stream as open_vchan_stream
from ._api import serve as serve
from ._api import serve_vchan as serve_vchan
from ._backend import Backend as Backend
from ._domains import DomainNameError as DomainNameError
from ._errors import BackendUnavailableError as BackendUnavailableError
from ._errors import IncompleteReceiveError as IncompleteReceiveError
from ._errors import ProtocolError as ProtocolError
from ._errors import XenStoreError as XenStoreError
from ._layout import Live as Live
from ._layout import Role as Role
from ._stream import VchanStream as VchanStream
from ._version import __version__ as __version__

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "DomainNameError",
    "IncompleteReceiveError",
    "Live",
    "PeerGoneError",
    "ProtocolError",
    "Role",
    "VchanListener",
    "VchanStream",
    "XenStoreError",
    "connect",
    "lookup_domain",
    "open_vchan_stream",
    "serve",
    "serve_vchan",
]


def _place_public_names() -> None:
    # Public names say where users find them (in reprs, tracebacks, pickles and the docs),
    # not which private module defines them. The one place that sets it (test_exports checks).
    for name in __all__:
        globals()[name].__module__ = __name__


_place_public_names()
del _place_public_names

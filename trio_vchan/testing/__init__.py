"""Helpers for testing code that uses trio-vchan, as :mod:`trio.testing` is for streams.

- :func:`vchan_stream_pair`: both ends of a real vchan in one process, for unit tests of
  code that takes a stream.
- :func:`simulated_host`: a simulated Xen host for a test, in which the code under test runs
  as domains (in this process or as real subprocesses); with pytest and pytest-trio, the
  ``vchan_host`` fixture gives one.
- :func:`hostile_peer` and :func:`attack_server`: a domain that breaks the vchan protocol
  on purpose, to point at a server.
"""

from __future__ import annotations

from ._host import HostHarness as HostHarness
from ._host import simulated_host as simulated_host
from ._hostile import AttackReport as AttackReport
from ._hostile import HostilePeer as HostilePeer
from ._hostile import Mutations as Mutations
from ._hostile import ServerMisbehaved as ServerMisbehaved
from ._hostile import attack_server as attack_server
from ._hostile import hostile_peer as hostile_peer
from ._pair import vchan_stream_pair as vchan_stream_pair

__all__ = [
    "AttackReport",
    "HostHarness",
    "HostilePeer",
    "Mutations",
    "ServerMisbehaved",
    "attack_server",
    "hostile_peer",
    "simulated_host",
    "vchan_stream_pair",
]


def _place_public_names() -> None:
    # As in trio_vchan: public names say where users find them (test_exports checks).
    for name in __all__:
        globals()[name].__module__ = __name__


_place_public_names()
del _place_public_names

"""A simulated Xen host: vchan between ordinary processes on any Linux machine.

A :class:`SimulatedHost` serves event channels, grant references and XenStore to processes
that join it as domains::

    async with SimulatedHost() as host:
        await trio.run_process([...], env=os.environ | host.environ(1))

and a process inside the host gets its platform with :func:`backend_from_environ`. The
socket protocol is described in ``docs/sim-protocol.md``.
"""

from __future__ import annotations

from ._sim._client import SimEventChannel as SimEventChannel
from ._sim._host import SimulatedHost as SimulatedHost
from ._sim._host import backend_from_environ as backend_from_environ
from ._sim._proto import ENV_DIR as ENV_DIR
from ._sim._proto import ENV_DOMID as ENV_DOMID

# The public names are those docs/reference.rst documents. The variable names and the event
# channel type are also here, for the command line and the tests.
__all__ = ["SimulatedHost", "backend_from_environ"]

for _name in ("SimulatedHost", "SimEventChannel", "backend_from_environ"):
    globals()[_name].__module__ = __name__
del _name

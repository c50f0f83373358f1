"""simulated_host: a simulated Xen host for one test, whose domains are the code under test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, final

import trio

from .._backend import Backend
from .._sim._host import raised_only
from ..sim import SimulatedHost

#: How long a process stopped at the end of the block has between SIGTERM and SIGKILL.
TERMINATE_GRACE: Final = 5.0
#: How long the host may take, at the end, to see every connection of the domains close.
IDLE_TIMEOUT: Final = 30.0

Command = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


async def _terminate(process: trio.Process) -> None:
    """Stop ``process`` as a toolstack stops a domain: SIGTERM, then SIGKILL after a grace."""
    process.terminate()
    with trio.move_on_after(TERMINATE_GRACE):
        await process.wait()
    if process.returncode is None:
        process.kill()


@final
class HostHarness:
    """A running simulated host and the domains a test runs in it.

    Get one from :func:`simulated_host` (or pytest's ``vchan_host`` fixture). Each method
    that takes a domid creates that domain if the host does not have it yet.
    """

    def __init__(self, host: SimulatedHost) -> None:
        self._host = host
        self._nursery: trio.Nursery | None = None
        self._backends: list[Backend] = []
        self._started: list[tuple[int, trio.Process]] = []

    @property
    def host(self) -> SimulatedHost:
        """The :class:`~trio_vchan.sim.SimulatedHost` itself (domains, names, leaks, counts)."""
        return self._host

    def environ(self, domid: int) -> dict[str, str]:
        """The whole environment for a subprocess that runs as domain ``domid``: this
        process's, plus the variables that make :func:`trio_vchan.serve`,
        :func:`trio_vchan.connect` and ``trio-vchan`` commands join this host as ``domid``."""
        return {**os.environ, **self._host.environ(domid)}

    def backend(self, domid: int) -> Backend:
        """A backend for code in this process that acts as domain ``domid``: pass it as
        ``backend=`` to :func:`trio_vchan.serve`, :func:`trio_vchan.connect` and the rest.
        It is closed when the host's block ends."""
        backend = self._host.backend(domid)
        self._backends.append(backend)
        return backend

    async def run_process(
        self, domid: int, command: Command, *, env: Mapping[str, str] | None = None, **options: Any
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` as domain ``domid`` to completion: :func:`trio.run_process` with
        :meth:`environ`, plus ``env`` on top; ``options`` are ``trio.run_process``'s
        (``check`` is True unless given, as there).

        Raises:
            subprocess.CalledProcessError: it failed (with ``check``).
        """
        environ = {**self.environ(domid), **(env or {})}
        return await trio.run_process(command, env=environ, **options)

    async def start_process(
        self, domid: int, command: Command, *, env: Mapping[str, str] | None = None, **options: Any
    ) -> trio.Process:
        """Start ``command`` as domain ``domid`` in the background and return it at once.

        ``env`` and ``options`` are as for :meth:`run_process`, except that ``check`` is False
        unless given (with ``check=True`` a failure ends the host's block with an
        :class:`ExceptionGroup` holding :class:`subprocess.CalledProcessError`, as trio's
        nurseries raise). A process still running when the block ends gets SIGTERM (then
        SIGKILL, if it outlives a grace of a few seconds), and its domain is destroyed, as a
        toolstack stops a domain: what it held then is not a leak.
        """
        environ = {**self.environ(domid), **(env or {})}
        options.setdefault("check", False)

        async def run(task_status: trio.TaskStatus[trio.Process]) -> None:
            await trio.run_process(
                command, env=environ, deliver_cancel=_terminate, task_status=task_status, **options
            )

        if self._nursery is None:
            raise RuntimeError("the host's block has ended: start processes inside it")
        process: trio.Process = await self._nursery.start(run)
        self._started.append((domid, process))
        return process

    def _release(self) -> None:
        """Close the backends handed out; destroy the domains whose processes were stopped
        (by us, or by anyone else's signal), as the toolstack does once a domain dies."""
        self._nursery = None
        for backend in self._backends:
            backend.close()
        stopped = {
            domid for domid, p in self._started if p.returncode is not None and p.returncode < 0
        }
        for domid in sorted(stopped):
            self._host.destroy_domain(domid)


@asynccontextmanager
async def simulated_host(
    *, names: Mapping[int, str] | None = None, check_leaks: bool = True
) -> AsyncIterator[HostHarness]:
    """Run a simulated Xen host for the block, in which a test runs its domains.

    ::

        async with trio_vchan.testing.simulated_host() as host:
            server = await host.start_process(1, [sys.executable, "agent.py"])
            async with trio_vchan.connect(1, "agent", backend=host.backend(2)) as stream:
                ...

    When the block ends, processes still running are stopped and their domains destroyed,
    in-process backends are closed, and then (with ``check_leaks``, if the block raised
    nothing) the host must hold nothing more: no port, grant, mapping or XenStore node that
    a domain created and left behind.

    Args:
        names: domain names by domid, as for :class:`~trio_vchan.sim.SimulatedHost`.
        check_leaks: whether to fail when something is left behind.

    Raises:
        AssertionError: something was left behind (the message lists it).
    """
    leaks: list[str] = []
    async with SimulatedHost(names=names) as host:
        harness = HostHarness(host)
        block: BaseException | None = None
        unwrapped: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                harness._nursery = nursery
                try:
                    yield harness
                except BaseException as exc:
                    block = exc
                    raise
                nursery.cancel_scope.cancel()  # stops the processes still running
        except BaseException as error:
            if block is None or not raised_only(error, block):
                raise
            unwrapped = block  # the test's own failure, raised as it was, not as a group
        finally:
            harness._release()
        if unwrapped is not None:
            raise unwrapped
        if check_leaks:
            with trio.fail_after(IDLE_TIMEOUT):
                await host.wait_idle()
            leaks = host.leaks()
    if leaks:
        raise AssertionError(
            "the domains left this behind on the simulated host: " + "; ".join(leaks)
        )

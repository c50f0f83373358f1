"""The backend contract (tests/backend_contract.py) on every backend there is here.

- ``sim``: two domains of a simulated host, in this process; the dying mapper is a real
  process joined to the host, SIGKILLed.
- ``linux-fake``: the Linux backend (``open_backend``) over tests/fake_kernel.py's model
  kernel, one per domain on one fake hypervisor; its XenStore is the simulated host's (so
  ``open_backend`` learns its domid as on Xen). The model runs every domain in this process,
  so the mapper "dies" by its kernel releasing its files, as Linux does at a process's exit.
- ``xen``: the real devices, dom0 talking to itself (``nox -s xen`` runs it in dom0); the
  dying mapper is a real process there.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Final

import pytest
import trio
from backend_contract import *  # noqa: F403 (the checks, collected here)
from backend_contract import Domains, MapperPlan, spawn_mapper
from fake_kernel import EVTCHN, FakeHypervisor, ModelKernel

from trio_vchan._backend import Backend
from trio_vchan._linux import open_backend
from trio_vchan._sim._proto import domain_dir
from trio_vchan.sim import SimulatedHost

A, B = 1, 2
ON_XEN: Final = os.path.exists(EVTCHN)
# Real Xen only where its devices are (nox -s xen, in dom0): elsewhere there is nothing to run.
BACKENDS: Final = ["sim", "linux-fake", *(["xen"] if ON_XEN else [])]
# dom0 of `nox -s xen` (dom0-tests.sh sets XEN_TEST_DOMU): its payload carries no
# tests/conftest.py (nor the hypothesis it imports), so there the contract runs on Xen alone.
IN_XEN_HARNESS: Final = "XEN_TEST_DOMU" in os.environ


async def _sim_domains(host: SimulatedHost) -> AsyncIterator[Domains]:
    a, b = host.backend(A), host.backend(B)

    async def mapper_dies(plan: MapperPlan) -> None:
        await spawn_mapper(plan, "sim", host.environ(B))

    try:
        yield Domains("sim", a, b, True, True, False, "BufferError", mapper_dies)
    finally:
        a.close()
        b.close()


async def _linux_backend(host: SimulatedHost, kernel: ModelKernel) -> Backend:
    host.add_domain(kernel.domid)
    xenstore = domain_dir(host.directory, kernel.domid) / "xenstore"
    environ = {"XENSTORED_PATH": os.fspath(xenstore)}
    # open_backend reads the domid synchronously, and the host serves it from this thread.
    return await trio.to_thread.run_sync(
        lambda: open_backend(syscalls=kernel.syscalls, environ=environ)
    )


async def _fake_domains(host: SimulatedHost) -> AsyncIterator[Domains]:
    hypervisor = FakeHypervisor()
    kernels = [ModelKernel(hypervisor, A), ModelKernel(hypervisor, B)]
    a, b = [await _linux_backend(host, kernel) for kernel in kernels]

    async def mapper_dies(plan: MapperPlan) -> None:
        kernel = ModelKernel(hypervisor, B)  # the mapper's process
        mapper = await _linux_backend(host, kernel)
        channel = mapper.events.bind_interdomain(plan.remote, plan.port)
        mapping = mapper.memory.map(plan.remote, plan.refs, writable=True)
        mapping.set_unmap_notify(plan.offset, channel.port)
        if plan.close_port:
            channel.close()
        del channel, mapping, mapper
        kernel.exit_process()
        assert kernel.paths == {}
        assert kernel.bound_ports() == kernel.open_regions() == 0

    try:
        yield Domains("linux-fake", a, b, False, False, True, "deferred", mapper_dies)
    finally:
        a.close()
        b.close()
    for kernel in kernels:  # every test closes what it opened: no file or region is left
        for pages in kernel.maps:
            assert pages.release()  # what Linux defers while views live: by now they are gone
        assert kernel.paths == {}, kernel.paths
        assert kernel.open_regions() == kernel.bound_ports() == 0


async def _xen_domains() -> AsyncIterator[Domains]:
    a = open_backend()
    b = open_backend()

    async def mapper_dies(plan: MapperPlan) -> None:
        await spawn_mapper(plan, "xen", {})

    try:
        yield Domains("xen", a, b, False, False, True, "deferred", mapper_dies)
    finally:
        a.close()
        b.close()


if IN_XEN_HARNESS:

    @pytest.fixture(name="domains")
    async def _dom0_domains() -> AsyncIterator[Domains]:
        async for pair in _xen_domains():
            yield pair

else:

    @pytest.fixture(name="domains", params=BACKENDS)
    async def _all_domains(
        request: pytest.FixtureRequest, sim: SimulatedHost
    ) -> AsyncIterator[Domains]:
        if request.param == "sim":
            source = _sim_domains(sim)
        elif request.param == "linux-fake":
            source = _fake_domains(sim)
        else:
            source = _xen_domains()
        async for pair in source:
            yield pair

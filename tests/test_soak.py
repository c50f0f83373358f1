"""A small soak (``tests/soak.py``) in the normal test run; ``nox -s soak`` runs 10 GiB."""

from __future__ import annotations

import trio
from soak import MIB, run_soak

from trio_vchan.sim import SimulatedHost


async def test_small_soak_with_checksums_in_flat_memory(sim: SimulatedHost) -> None:
    with trio.fail_after(300):
        result = await run_soak(sim, 64 * MIB, report_every=8 * MIB, max_growth=16 * MIB)
    print(result.report())

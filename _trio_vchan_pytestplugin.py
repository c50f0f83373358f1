"""trio-vchan's pytest plugin: the ``vchan_host`` fixture (see trio_vchan.testing).

A module of its own at the top level, so that pytest runs that do not use the fixture import
nothing of trio-vchan (nor trio); pytest-trio is needed only by tests that use it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from trio_vchan.testing import HostHarness


@pytest.fixture
async def vchan_host() -> AsyncIterator[HostHarness]:
    """A simulated Xen host for the test (:func:`trio_vchan.testing.simulated_host`): its
    processes are stopped at the end, and nothing may be left behind. Needs pytest-trio."""
    from trio_vchan.testing import simulated_host

    async with simulated_host() as host:
        yield host

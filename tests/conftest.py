"""Shared fixtures: a simulated Xen host that must end every test with nothing leaked; and
:func:`missing_xen_tool`, the one way a test says Xen's own programs are not installed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import NoReturn

import pytest
from hypothesis import settings

from trio_vchan.sim import SimulatedHost
from trio_vchan.testing import simulated_host

pytest_plugins = ["pytester"]  # test_testing_kit runs pytest on files of its own

# Every property test runs at least 200 examples; no per-example deadline on shared machines.
settings.register_profile("project", max_examples=200, deadline=None)
settings.load_profile("project")


def missing_xen_tool(reason: str) -> NoReturn:
    """Skip the test because what it drives is not installed; under CI, fail it instead.

    For Debian's xenstore-utils and Xen's C libxenvchan (tests/interop), which ``.ci/run``
    installs: CI systems set ``$CI`` (GitHub Actions, GitLab CI and others), and there a missing
    tool means a broken CI setup, not a test that cannot apply.
    """
    if os.environ.get("CI"):
        pytest.fail(f"{reason} ($CI is set, and .ci/run installs it)", pytrace=False)
    pytest.skip(reason)


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedHost]:
    """A running simulated host; afterwards no grant, port, XenStore node or fd is left."""
    fds_before = open_fds()
    async with simulated_host() as harness:  # it checks that nothing is left on the host
        yield harness.host
    # listdir itself opens an fd, which is gone again by the time we compare
    assert open_fds() <= fds_before | {max(fds_before, default=0) + 1}

"""The ``trio-vchan`` command line (``python -m trio_vchan``); see docs/cli.rst."""

from __future__ import annotations

from ._main import main as main

__all__ = ["main"]

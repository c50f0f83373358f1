"""The simulated Xen host backend: see :mod:`trio_vchan.sim` for the public interface."""

from __future__ import annotations

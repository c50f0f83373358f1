"""The package version; the native module carries the same string and is checked against it."""

from __future__ import annotations

from typing import Final

__version__: Final = "0.1.0"

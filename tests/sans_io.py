"""Checks that the sans-IO modules stay free of trio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio_vchan


def assert_imports_without_trio(*modules: str) -> None:
    """Import ``modules`` in a fresh interpreter and fail if that imported trio.

    The package's ``__init__`` imports trio, so the modules are loaded under a bare stand-in
    package with the same path.
    """
    imports = "\n".join(f"import {module}" for module in modules)
    code = f"""
import sys, types
package = types.ModuleType("trio_vchan")
package.__path__ = [{str(Path(trio_vchan.__file__).parent)!r}]
sys.modules["trio_vchan"] = package
{imports}
assert "trio" not in sys.modules, "trio was imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True)

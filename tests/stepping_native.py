"""The shipped C steps of ``trio_vchan._native``, compiled with a hook before every shared access.

build_native.py's source marks each access to the shared page with ``STEP(VCHAN_STEP_ACCESS)``
and each published index or live byte with ``STEP(VCHAN_STEP_PUBLISHED)`` (then
``VCHAN_STEP_QUIET`` if no event is due); the shipped module compiles them to nothing. Here the
same source is compiled with ``STEP`` calling :data:`hook`, and :func:`use` makes new
RingEndpoints run over this build, so a test sees (and can schedule, or corrupt the page at)
every step of the real code.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.machinery
import importlib.util
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import trio_vchan._ring

ACCESS, PUBLISHED, QUIET = 0, 1, 2


def hook(kind: int) -> None:
    """Called with the step's kind from inside the C steps (in whichever thread runs them);
    :func:`use` replaces it."""


_ROOT = Path(__file__).resolve().parents[1]


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_native", _ROOT / "build_native.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def build() -> ModuleType:
    """Compile (once per source, cached in the temporary directory) and import the build."""
    from cffi import FFI

    native = _builder()
    source = (
        "static void vchan_step(int kind);\n#define STEP(kind) vchan_step(kind)\n" + native.SOURCE
    )
    digest = hashlib.sha256((native.CDEF + source).encode()).hexdigest()[:16]
    name = f"_vchan_stepping_{digest}"
    directory = Path(tempfile.gettempdir()) / "trio-vchan-stepping"
    builder = FFI()
    builder.cdef(native.CDEF + '\nextern "Python" void vchan_step(int kind);')
    builder.set_source(name, source, extra_compile_args=["-O1"])
    built = directory / (name + importlib.machinery.EXTENSION_SUFFIXES[0])  # this Python's
    library = built if built.exists() else Path(builder.compile(tmpdir=str(directory)))
    loader = importlib.machinery.ExtensionFileLoader(name, str(library))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[name] = module

    @module.ffi.def_extern()  # type: ignore[untyped-decorator]
    def vchan_step(kind: int) -> None:
        hook(kind)

    return module


@contextlib.contextmanager
def use(monkeypatch: pytest.MonkeyPatch, step: Callable[[int], None]) -> Iterator[Any]:
    """RingEndpoints made inside run over the stepping build, calling ``step`` at each step."""
    module = build()
    monkeypatch.setattr(trio_vchan._ring, "ffi", module.ffi)
    monkeypatch.setattr(trio_vchan._ring, "lib", module.lib)
    monkeypatch.setattr(sys.modules[__name__], "hook", step)
    yield module

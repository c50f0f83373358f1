"""The compiled part, ``trio_vchan._native`` (built by build_native.py): imported and checked
once, here, for the ring's steps (:mod:`._ring`) and the page mappings (:mod:`._pages`)."""

from __future__ import annotations

try:
    from . import _native as native
except ImportError:
    # Python found a trio_vchan without its compiled part: a source tree first on sys.path (a
    # script run from the clone's root), which says "partially initialized module ... circular
    # import". Say what it is; an .so that exists but fails to load keeps its own error.
    import importlib.util
    import os

    if importlib.util.find_spec(f"{__package__}._native") is not None:
        raise
    raise ImportError(
        f"trio_vchan's native part (trio_vchan._native) is not built in"
        f" {os.path.dirname(os.path.abspath(__file__))}: Python imported that source tree"
        " rather than an installed trio-vchan, because it comes first on sys.path (a script"
        " run from the clone's root, say). Install the package (`pip install .` in the clone)"
        " and run from outside the source tree, or build the native part into the source"
        " tree with `pip install -e .`."
    ) from None  # the original says "most likely due to a circular import": it is not
from ._version import __version__

if native.ffi.string(native.lib.trio_vchan_native_version()).decode() != __version__:
    raise ImportError(
        f"trio_vchan's native part ({native.__file__}) was built for version"
        f" {native.ffi.string(native.lib.trio_vchan_native_version()).decode()}, but this is"
        f" trio_vchan {__version__}: reinstall the package (`pip install .`, or `pip install -e .`"
        " in a clone) so that it is rebuilt"
    )


__all__ = ["native"]

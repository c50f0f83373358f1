"""Xen's tool libraries for unmodified C programs on the simulated host: where the shim is, and
the environment a program of a domain gets.

The libraries are built with the package (setup.py) from this directory's C sources:

- ``libtrio-vchan-xenshim.so`` (xenshim.c): libxenevtchn and libxengnttab/libxengntshr over
  the simulated host's platform protocol, plus an interposed ``munmap`` (docs/interop.md);
- ``libtrio-vchan-xcstub.so`` (xcstub.c): the three libxenctrl calls that
  ``vchan-socket-proxy -m client`` makes.

Both are loaded with ``LD_PRELOAD``, never imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from .._sim._proto import ENV_DIR, ENV_DOMID, domain_dir

_HERE: Final = Path(__file__).resolve().parent
#: The libxenevtchn/libxengnttab shim.
SHIM: Final = _HERE / "libtrio-vchan-xenshim.so"
#: The libxenctrl stub.
XCSTUB: Final = _HERE / "libtrio-vchan-xcstub.so"


def missing() -> str | None:
    """Why the libraries cannot be preloaded (one line, saying what to do), or None."""
    absent = [path.name for path in (SHIM, XCSTUB) if not path.is_file()]
    if not absent:
        return None
    one = len(absent) == 1
    return (
        f"{' and '.join(absent)} {'is' if one else 'are'} not in {_HERE}: the install did "
        f"not build {'it' if one else 'them'} (that needs a C compiler; pip install -v says "
        "why it failed); install gcc and reinstall trio-vchan (pip install --force-reinstall "
        "--no-deps trio-vchan, or pip install . in a checkout)"
    )


def xen_environ(directory: str | os.PathLike[str], domid: int) -> dict[str, str]:
    """What a process of domain ``domid`` of the host at ``directory`` gets: ours
    (``TRIO_VCHAN_SIM``, ``TRIO_VCHAN_DOMID``), and Xen's tools' ``XENSTORED_PATH``."""
    return {
        ENV_DIR: os.fspath(directory),
        ENV_DOMID: str(domid),
        "XENSTORED_PATH": os.fspath(domain_dir(directory, domid) / "xenstore"),
    }


def preload(inherited: str | None, *, xenctrl: bool = True) -> str:
    """``LD_PRELOAD`` with the shim (and the libxenctrl stub) first, then ``inherited``'s."""
    ours = [os.fspath(SHIM), *([os.fspath(XCSTUB)] if xenctrl else [])]
    return ":".join([*ours, *([inherited] if inherited else [])])


def program_environ(
    base: Mapping[str, str],
    directory: str | os.PathLike[str],
    domid: int,
    *,
    xen_libs: bool,
    xenctrl: bool = True,
) -> dict[str, str]:
    """``base`` with :func:`xen_environ`, and with ``xen_libs`` the preloaded libraries.

    The explicit ``XENSTORED_PATH`` replaces an inherited one (the shim sets it only when it is
    unset), so that the program reaches its own domain's XenStore.
    """
    env = {**base, **xen_environ(directory, domid)}
    if xen_libs:
        env["LD_PRELOAD"] = preload(base.get("LD_PRELOAD"), xenctrl=xenctrl)
    return env

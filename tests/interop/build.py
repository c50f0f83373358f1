"""Build the C side of the interoperability tests, and find Xen's vchan-socket-proxy.

The programs run on the simulated host with the package's shim preloaded
(``trio_vchan/_xenshim``: libxenevtchn, libxengnttab/libxengntshr and three libxenctrl calls,
built when trio-vchan is installed; :attr:`Tools.shim`, :meth:`Tools.environ`). Built here:

- ``vchan-node`` (vchan_node.c): a libxenvchan peer, linked with Debian's libxenvchan and
  libxenstore (used unmodified: libxenstore speaks the real XenStore wire protocol to the
  simulated XenStore's socket, found through ``XENSTORED_PATH``).
- ``vchan-setup`` (vchan_setup.c): libxenvchan servers and clients that connect, exchange one
  byte and close, for the connection-setup benchmark (bench/run.py).
- ``vchan-bench`` (vchan_bench.c): libxenvchan's data path driven by a C program (one-way
  streams, round trips, file copies), the reference of the throughput benchmarks.

Everything is compiled with ``-Wall -Wextra -Werror``. :func:`missing` says what is not
installed (or that the installed package lacks its shim), so that the tests skip with that
reason; a failing compilation is an error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import attrs

from trio_vchan import _xenshim

HERE: Final = Path(__file__).resolve().parent
CFLAGS: Final = ("-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror")
PACKAGES: Final = "apt-get install gcc libxen-dev libxenmisc4.17 libxenstore4"
HEADERS: Final = ("libxenvchan.h", "xenevtchn.h", "xengnttab.h", "xenstore.h", "xenctrl.h")
LIBRARIES: Final = ("libxenvchan.so", "libxenstore.so")
#: Debian's Xen 4.17 tools package, and where it puts the proxy.
XEN_UTILS: Final = "xen-utils-4.17"
PROXY_IN_PACKAGE: Final = Path("usr/lib/xen-4.17/bin/vchan-socket-proxy")
_COMPILE_TIMEOUT: Final = 120
_APT_TIMEOUT: Final = 300


class BuildError(Exception):
    """gcc failed although everything it needs is installed."""


@attrs.frozen
class Tools:
    """The built files, and the package's shim."""

    node: Path
    setup: Path
    bench: Path
    shim: Path = _xenshim.SHIM
    xcstub: Path = _xenshim.XCSTUB

    def environ(self, sim_environ: Mapping[str, str], *, xenctrl: bool = False) -> dict[str, str]:
        """The environment of a C program joining the simulated host.

        Args:
            sim_environ: ``SimulatedHost.environ(domid)`` (``TRIO_VCHAN_SIM``,
                ``TRIO_VCHAN_DOMID``).
            xenctrl: also preload the libxenctrl stub (for ``vchan-socket-proxy -m client``).
        """
        return _xenshim.program_environ(
            os.environ,
            sim_environ["TRIO_VCHAN_SIM"],
            int(sim_environ["TRIO_VCHAN_DOMID"]),
            xen_libs=True,
            xenctrl=xenctrl,
        )


def missing() -> str | None:
    """Say what the C side needs and does not have (None if everything is there)."""
    shim = _xenshim.missing()
    if shim is not None:
        return shim
    gcc = shutil.which("gcc")
    if gcc is None:
        return f"needs gcc to build the C libxenvchan peer ({PACKAGES})"
    for header in HEADERS:
        probe = subprocess.run(
            [gcc, "-E", "-x", "c", "-o", os.devnull, "-"],
            input=f"#include <{header}>\n".encode(),
            capture_output=True,
            timeout=_COMPILE_TIMEOUT,
            check=False,
        )
        if probe.returncode:
            return f"needs Xen's C headers ({header} is missing): {PACKAGES}"
    for library in LIBRARIES:
        found = subprocess.run(
            [gcc, f"-print-file-name={library}"],
            capture_output=True,
            text=True,
            timeout=_COMPILE_TIMEOUT,
            check=False,
        ).stdout.strip()
        if not os.path.isabs(found) or not os.path.exists(found):
            return f"needs Xen's C libraries ({library} is missing): {PACKAGES}"
    return None


def compile_c(*args: str | os.PathLike[str]) -> None:
    """Run gcc with this project's flags and ``args``.

    Raises:
        BuildError: gcc failed (with its output).
    """
    command = ["gcc", *CFLAGS, *map(str, args)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT, check=False
    )
    if result.returncode:
        raise BuildError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def build(destination: Path) -> Tools:
    """Compile the C programs into ``destination``.

    Raises:
        BuildError: gcc failed (with its output).
    """
    destination.mkdir(parents=True, exist_ok=True)
    tools = Tools(
        node=destination / "vchan-node",
        setup=destination / "vchan-setup",
        bench=destination / "vchan-bench",
    )
    compile_c("-o", tools.node, HERE / "vchan_node.c", "-lxenvchan", "-lxenstore")
    compile_c("-pthread", "-o", tools.setup, HERE / "vchan_setup.c", "-lxenvchan", "-lxenstore")
    compile_c("-o", tools.bench, HERE / "vchan_bench.c", "-lxenvchan", "-lxenstore")
    return tools


def find_socket_proxy(cache: Path) -> Path | str:
    """Find Xen's vchan-socket-proxy, or unpack it from Debian's package; else say why not.

    Installing ``xen-utils-4.17`` would pull in systemd and udev and put Xen's boot
    scripts in place, so the package is only downloaded (``apt-get download``) and unpacked
    (``dpkg-deb -x``) into ``cache``. Looked for first: ``$TRIO_VCHAN_SOCKET_PROXY``, an
    installed ``xen-utils-4.17``, and what ``nox -s xen`` unpacked into
    ``$TRIO_VCHAN_XENVM`` (default ``/tmp/trio-vchan-xen``).

    Returns:
        The program's path, or the reason it is not available.
    """
    xenvm = Path(os.environ.get("TRIO_VCHAN_XENVM", "/tmp/trio-vchan-xen"))
    candidates: list[str | Path] = [
        os.environ.get("TRIO_VCHAN_SOCKET_PROXY", ""),
        "/" / PROXY_IN_PACKAGE,
        xenvm / "x" / PROXY_IN_PACKAGE,
        cache / "root" / PROXY_IN_PACKAGE,
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return f"vchan-socket-proxy needs apt-get and dpkg-deb to unpack {XEN_UTILS}"
    downloads = cache / "debs"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir(parents=True)
    fetched = subprocess.run(
        ["apt-get", "download", "-q", XEN_UTILS],
        cwd=downloads,
        capture_output=True,
        text=True,
        timeout=_APT_TIMEOUT,
        check=False,
    )
    debs = sorted(downloads.glob(f"{XEN_UTILS}_*.deb"))
    if fetched.returncode or not debs:
        return (
            f"vchan-socket-proxy: `apt-get download {XEN_UTILS}` failed (run apt-get update?): "
            f"{fetched.stderr.strip()[-300:]}"
        )
    root = cache / "root"
    shutil.rmtree(root, ignore_errors=True)
    unpacked = subprocess.run(
        ["dpkg-deb", "-x", str(debs[-1]), str(root)],
        capture_output=True,
        text=True,
        timeout=_APT_TIMEOUT,
        check=False,
    )
    proxy = root / PROXY_IN_PACKAGE
    if unpacked.returncode or not os.access(proxy, os.X_OK):
        return f"vchan-socket-proxy: cannot unpack {debs[-1].name}: {unpacked.stderr.strip()}"
    return proxy

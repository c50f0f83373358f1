"""Development sessions: ``nox`` runs tests, lint, typecheck and docs; ``nox -s bench`` measures."""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True
# A session whose Python is missing fails, everywhere (nox's default skips it outside CI, so
# that `nox` could pass having run nothing).
nox.options.error_on_missing_interpreters = True

# Python 3.11 (Debian 12's, as in CI and the Xen guests) where it is installed; elsewhere the
# Python that runs nox (None), rather than no session at all.
PYTHON = "3.11" if shutil.which("python3.11") else None
LINT_TOOLS = ["ruff==0.17.6"]
TYPE_TOOLS = ["mypy==2.4.1", "nox", "types-cffi"]
DOC_TOOLS = ["sphinx>=7", "myst-parser>=3"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Build the package (and its native module) and run the test suite."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the code; pyright: the installed package's public API fully typed."""
    session.install(".[test]", *TYPE_TOOLS, "pyright==1.1.414")
    session.run("mypy", "--strict")
    # Fails below 100%. It reads the copy installed here: not an editable install, whose import
    # hook pyright cannot follow ("No py.typed file found").
    session.run("pyright", "--verifytypes", "trio_vchan", "--ignoreexternal")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation; any warning fails the build."""
    session.install(".", *DOC_TOOLS)
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Measure vchan against its baselines; writes bench/results.json and docs/performance.*.

    The C baselines are built here from the project's files (tests/interop, bench/cvchan.py)
    with gcc, Xen's headers and libraries and Python's headers (.ci/run's apt-get line); cffi
    comes with the package. ``nox -s bench -- --smoke --output DIR`` checks it in seconds.
    """
    session.install(".", "matplotlib")
    session.run("python", "bench/run.py", "--docs", "docs", *session.posargs)


@nox.session(python=PYTHON)
def xen(session: nox.Session) -> None:
    """Boot Xen 4.17 under QEMU and test trio-vchan between dom0 and a PV domU (as root).

    Installs qemu-system-x86 and friends with apt-get if missing, unpacks (never installs)
    Debian's Xen and kernel packages into $TRIO_VCHAN_XENVM (default /tmp/trio-vchan-xen),
    builds the guest images and runs tests/xen/dom0-tests.sh in dom0. Arguments after ``--``
    go to pytest in dom0 (``nox -s xen -- -k proxy``). See docs/xen.md.
    """
    import os
    import shlex
    import shutil
    import time
    import xml.etree.ElementTree as ElementTree

    xenvm = os.environ.get("TRIO_VCHAN_XENVM", "/tmp/trio-vchan-xen")
    env = {"XENVM": xenvm}
    phases: list[str] = []
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        phases.append(f"{name} {time.monotonic() - mark:.0f}s")
        mark = time.monotonic()

    session.run("tests/xen/prepare.sh", env=env, external=True)
    phase("prepare")
    # Not editable: the guests get copies of the installed package (guest_site.py).
    session.install(".", "pytest", "pytest-trio")
    site = f"{xenvm}/site"
    shutil.rmtree(site, ignore_errors=True)
    session.run("python", "tests/xen/guest_site.py", site, "trio-vchan", "pytest", "pytest-trio")
    guest_python = "/usr/bin/python3.11"  # Debian's: small, and the same minor as PYTHON
    if not os.path.exists(guest_python):
        found = session.run("python", "-c", "import sys; print(sys.executable)", silent=True)
        guest_python = str(found).strip()
    session.run(
        "tests/xen/mk-images.sh",
        env={**env, "SITE": site, "DOMU_PYTHON": guest_python},
        external=True,
    )
    phase("images")
    with open(f"{xenvm}/config", "w") as config:
        config.write(f"PYTEST_ARGS={shlex.quote(shlex.join(session.posargs))}\n")
    try:
        session.run("tests/xen/run-xen.sh", "tests/xen/dom0-tests.sh", env=env, external=True)
    finally:
        phase("boot and tests")
        junit = f"{xenvm}/out/junit.xml"
        if os.path.exists(junit):
            root = ElementTree.parse(junit).getroot()
            suite = root.find("testsuite") if root.tag == "testsuites" else root
            assert suite is not None, f"{junit} has no testsuite"
            counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
            passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
            between = sum(
                1 for case in suite.iter("testcase") if "test_real_xen" in case.get("classname", "")
            )
            session.log(
                f"on real Xen (dom0 + PV domU, Xen 4.17 under QEMU): {counts['tests']} tests run"
                f" ({between} between the two domains, the rest of the device layer in dom0),"
                f" {passed} passed, {counts['failures']} failed, {counts['errors']} errors,"
                f" {counts['skipped']} skipped"
            )
        else:
            session.log(f"no test results: see {xenvm}/serial.log")
        session.log("timings: " + ", ".join(phases))


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """The hostile-peer harness at full size: 100000 mutations of the shared page and rings.

    Prints the seed; ``TRIO_VCHAN_HOSTILE_SEED=S nox -s fuzz`` replays a run, and a failure
    names the episode to replay alone (``TRIO_VCHAN_HOSTILE_EPISODE``).
    """
    session.install(".[test]")
    session.run(
        "pytest",
        "tests/test_hostile_peer.py",
        "-k",
        "fuzz",
        "-s",
        *session.posargs,
        env={"TRIO_VCHAN_HOSTILE_MUTATIONS": "100000"},
    )


@nox.session(python=PYTHON)
def crash(session: nox.Session) -> None:
    """SIGKILL either side at random points of a transfer, 1000 times; nothing may leak.

    ``TRIO_VCHAN_CRASH_SEED=S nox -s crash`` replays the plans of a run.
    """
    session.install(".[test]")
    session.run(
        "pytest",
        "tests/test_crash.py",
        "-s",
        *session.posargs,
        env={"TRIO_VCHAN_CRASH_TRIALS": "1000"},
    )


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """10 GiB each way between two processes, with checksums; RSS must stay flat."""
    session.install(".")
    session.run("python", "tests/soak.py", "--gib", "10", *session.posargs)

"""Development sessions: ``nox`` runs tests, lint, typecheck and docs; ``nox -s bench`` measures."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
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
    session.install(".[test]", *TYPE_TOOLS)
    session.run("mypy", "--strict")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation; any warning fails the build."""
    session.install(".", *DOC_TOOLS)
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Measure vchan against its baselines; writes bench/results.json and docs/performance.*."""
    session.install(".", "matplotlib")
    session.run("python", "bench/run.py", "--docs", "docs", *session.posargs)

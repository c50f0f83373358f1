"""The public names of ``trio_vchan`` and its public modules: listed, placed and documented
(as trio's test_exports)."""

from __future__ import annotations
import __future__

import re
import types
from pathlib import Path

import pytest

import trio_vchan
import trio_vchan.sim
import trio_vchan.testing as testing

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.rst"


def public_names(module: types.ModuleType) -> set[str]:
    """What ``module`` offers without an underscore: not its submodules, nor ``annotations``."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, (types.ModuleType, __future__._Feature))
    }


def documented_names(module_name: str) -> set[str]:
    """The names that reference.rst documents under ``.. module:: MODULE_NAME``."""
    sections = re.split(r"^\.\. module:: (\S+)\n", REFERENCE.read_text(), flags=re.MULTILINE)
    # [before, name, body, name, body, ...]
    bodies = [
        body
        for name, body in zip(sections[1::2], sections[2::2], strict=True)
        if name == module_name
    ]
    assert bodies, f"reference.rst has no '.. module:: {module_name}'"
    return {
        match
        for body in bodies
        for match in re.findall(
            r"^\.\. auto(?:function|class|exception|data)::\s+(\w+)", body, flags=re.MULTILINE
        )
    }


#: The public modules, by name. trio_vchan.sim also offers, beyond its __all__, names for the
#: command line and the tests (the environment variables, the event channel type).
MODULES = {
    "trio_vchan": trio_vchan,
    "trio_vchan.sim": trio_vchan.sim,
    "trio_vchan.testing": testing,
}
COMPLETE = ["trio_vchan", "trio_vchan.testing"]
LISTED = [(module, name) for module in MODULES for name in MODULES[module].__all__]


@pytest.mark.parametrize("module_name", COMPLETE)
def test_all_lists_every_public_name_and_no_other(module_name: str) -> None:
    module = MODULES[module_name]
    assert sorted(module.__all__) == sorted(public_names(module))
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize(("module_name", "name"), LISTED)
def test_public_name_exists_and_lives_in_its_module(module_name: str, name: str) -> None:
    value = getattr(MODULES[module_name], name)
    assert value.__module__ == module_name


@pytest.mark.parametrize(("module_name", "name"), LISTED)
def test_public_name_is_documented_in_the_reference(module_name: str, name: str) -> None:
    assert name in documented_names(module_name)


@pytest.mark.parametrize("module_name", MODULES)
def test_reference_documents_only_public_names(module_name: str) -> None:
    assert documented_names(module_name) <= set(MODULES[module_name].__all__)


@pytest.mark.parametrize("module_name", COMPLETE)
def test_star_import_gives_exactly_all(module_name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module_name} import *", namespace)
    del namespace["__builtins__"]
    assert set(namespace) == set(MODULES[module_name].__all__)


def test_package_docstring_introduces_the_package() -> None:
    doc = trio_vchan.__doc__ or ""
    assert len(doc.strip().splitlines()) > 5
    for topic in ("serve", "connect", "trio_vchan.sim", "docs"):
        assert topic in doc


def test_the_test_kits_docstring_introduces_its_tools() -> None:
    doc = testing.__doc__ or ""
    for topic in ("vchan_stream_pair", "simulated_host", "vchan_host", "attack_server"):
        assert topic in doc

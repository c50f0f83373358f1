"""The public names of ``trio_vchan``: listed, placed and documented (as trio's test_exports)."""

from __future__ import annotations
import __future__

import re
import types
from pathlib import Path

import pytest

import trio_vchan

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


def test_all_lists_every_public_name_and_no_other() -> None:
    assert sorted(trio_vchan.__all__) == sorted(public_names(trio_vchan))
    assert len(set(trio_vchan.__all__)) == len(trio_vchan.__all__)


@pytest.mark.parametrize("name", trio_vchan.__all__)
def test_public_name_exists_and_lives_in_the_package(name: str) -> None:
    value = getattr(trio_vchan, name)
    assert value.__module__ == "trio_vchan"


@pytest.mark.parametrize("name", trio_vchan.__all__)
def test_public_name_is_documented_in_the_reference(name: str) -> None:
    assert name in documented_names("trio_vchan")


def test_reference_documents_only_public_names() -> None:
    assert documented_names("trio_vchan") <= set(trio_vchan.__all__)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from trio_vchan import *", namespace)
    del namespace["__builtins__"]
    assert set(namespace) == set(trio_vchan.__all__)


def test_package_docstring_introduces_the_package() -> None:
    doc = trio_vchan.__doc__ or ""
    assert len(doc.strip().splitlines()) > 5
    for topic in ("serve", "connect", "trio_vchan.sim", "docs"):
        assert topic in doc

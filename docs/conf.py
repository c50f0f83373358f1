"""Sphinx configuration for trio-vchan."""

from __future__ import annotations

project = "trio-vchan"
author = "trio-vchan developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
nitpicky = True
# The network is not assumed at build time, so no intersphinx: names from the standard library
# and trio are left unresolved rather than failing the -W build.
nitpick_ignore_regex = [
    (r"py:.*", r"(trio|typing|collections|os|errno|subprocess)\..*"),
    (r"py:.*", r"\w+"),
]
autodoc_typehints = "description"
html_theme = "alabaster"

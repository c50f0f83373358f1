"""Copy installed distributions and their runtime dependencies into one directory.

    python guest_site.py DEST DIST...

Run with the interpreter whose environment has them installed (trio-vchan not editable). The
guests run Debian's python3 with ``PYTHONPATH=DEST``: only the runtime closure of the named
distributions is copied (no pip, setuptools or hypothesis), with the compiled bytecode, so the
images stay small and nothing is compiled under emulation. The ``.dist-info`` directories come
along: pytest finds its plugins (pytest-trio) through their entry points.
"""

from __future__ import annotations

import re
import shutil
import sys
from importlib import metadata
from pathlib import Path


def runtime_closure(name: str) -> list[metadata.Distribution]:
    """``name`` and every installed distribution it requires, recursively.

    A requirement that is not installed is skipped: its environment marker excluded it here
    (``exceptiongroup`` on Python >= 3.11, for example), and the domU runs the same version.
    """
    seen: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        key = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue
        seen[key] = dist
        for requirement in dist.requires or []:
            match = re.match(r"[A-Za-z0-9_.-]+", requirement)
            if match and "extra ==" not in requirement:
                todo.append(match.group(0))
    return list(seen.values())


def main(dest: Path, names: list[str]) -> None:
    closure = {dist.metadata["Name"]: dist for name in names for dist in runtime_closure(name)}
    for dist in closure.values():
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if file.parts[0] == ".." or not source.is_file():  # scripts in bin/ and the like
                continue
            target = dest / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        print(f"{dist.metadata['Name']} {dist.version}")
    if not (dest / "trio_vchan" / "__init__.py").is_file():
        raise SystemExit(
            "trio-vchan is installed editable here: install it normally (pip install .)"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])

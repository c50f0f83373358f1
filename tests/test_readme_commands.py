"""The README's and the tutorial's shell commands, run as printed; and the README's test command.

Each ```` ```sh ```` block of README.md and each ``.. code-block:: sh`` of docs/tutorial.rst runs
as one ``bash -e`` script (so every command in it must succeed) in a fresh directory. That
directory holds what the text tells the reader to save: a Python block whose introducing
paragraph starts with a file name and ends with a colon ("`server.py`, in domain 1, serves
...:") is that file's content.
It also holds the clone's ``scripts/``, since the README's commands run in a clone. A ``text``
block right after a shell block (one paragraph between them) is what the commands print.
``trio-vchan`` and ``python3`` are the installed ones: this interpreter's ``bin`` comes first
on PATH.

Only :data:`ADJUSTED` lines differ from the text, each with its reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs
import pytest
import trio

if TYPE_CHECKING:
    import subprocess

REPO: Final = Path(__file__).resolve().parent.parent
DOCUMENTS: Final = (REPO / "README.md", REPO / "docs" / "tutorial.rst")
TIMEOUT: Final = 120

# A line of a shell block -> (what runs instead, why).
ADJUSTED: Final = {
    "bash scripts/demo-transfer.sh": (
        "bash scripts/demo-transfer.sh --size 8 --no-install",
        "8 MiB instead of 256; and the trio-vchan under test, not a fresh install into the"
        " clone's .venv (the script's two options)",
    ),
    "python3 -m venv .venv && .venv/bin/pip install -q nox && .venv/bin/nox": (
        ":",
        "the whole test command, which runs this test: see the noxfile tests below instead",
    ),
}


@attrs.frozen
class Block:
    language: str
    text: str
    before: str  # the prose between the previous block and this one
    where: str  # file:line


@attrs.frozen
class ShellExample:
    where: str
    script: str
    files: dict[str, str]  # saved by the reader: name -> content
    output: str | None  # what it prints, if the text says


def markdown_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    blocks, end = [], 0
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        line = text.count("\n", 0, match.start()) + 1
        before = text[end : match.start()]
        blocks.append(Block(match[1], match[2], before, f"{path.name}:{line}"))
        end = match.end()
    return blocks


def rst_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    blocks, end = [], 0
    pattern = r"^\.\. code-block:: (\w+)\n\n((?:(?: {4}.*)?\n)+)"
    for match in re.finditer(pattern, text, re.MULTILINE):
        line = text.count("\n", 0, match.start()) + 1
        body = re.sub(r"^ {4}", "", match[2], flags=re.MULTILINE).strip("\n") + "\n"
        blocks.append(Block(match[1], body, text[end : match.start()], f"{path.name}:{line}"))
        end = match.end()
    return blocks


def saved_file(block: Block) -> str | None:
    """The file name that the paragraph before a Python block starts with, if any."""
    paragraph = block.before.strip().split("\n\n")[-1]
    found = re.match(r"``?([\w.-]+\.py)``?", paragraph)
    return found[1] if found and paragraph.endswith(":") else None


def shell_examples(path: Path) -> list[ShellExample]:
    blocks = markdown_blocks(path) if path.suffix == ".md" else rst_blocks(path)
    files: dict[str, str] = {}
    examples: list[ShellExample] = []
    for index, block in enumerate(blocks):
        if block.language == "python" and (name := saved_file(block)):
            files[name] = block.text
        if block.language != "sh":
            continue
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        output = None
        if following and following.language == "text" and "\n\n" not in following.before.strip():
            output = following.text
        examples.append(ShellExample(block.where, block.text, dict(files), output))
    return examples


EXAMPLES: Final = [example for document in DOCUMENTS for example in shell_examples(document)]


def adjusted(script: str) -> str:
    return "".join(
        ADJUSTED[line.rstrip("\n")][0] + "\n" if line.rstrip("\n") in ADJUSTED else line
        for line in script.splitlines(keepends=True)
    )


def test_the_documents_have_the_examples_this_module_expects() -> None:
    """Guards the extraction: a changed marker must not quietly run nothing."""
    where = {example.where.split(":")[0] for example in EXAMPLES}
    assert where == {"README.md", "tutorial.rst"}
    for example in EXAMPLES:
        for name in re.findall(r"\b\w+\.py\b", example.script):
            assert name in example.files, f"{example.where} runs {name}, which the text never shows"
    assert sum(example.output is not None for example in EXAMPLES) >= 2
    scripts = "".join(example.script for example in EXAMPLES)
    for line in ADJUSTED:
        assert f"\n{line}\n" in f"\n{scripts}", f"ADJUSTED names a line no longer there: {line}"
    for document in DOCUMENTS:  # commands behind prompts are not run, so none may be shown
        assert not re.search(r"^\s*\$ ", document.read_text(), re.MULTILINE), document


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        try:
            stat = Path("/proc", entry, "stat").read_text() if entry.isdigit() else ""
        except OSError:  # exited meanwhile
            continue
        if stat:
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, pending = [], [root]
    while pending:
        found.append(pid := pending.pop())
        pending.extend(children.get(pid, []))
    return found


async def kill_tree(process: trio.Process) -> None:
    """On a timeout: the script's hosts and domains run in process groups of their own."""
    for pid in process_tree(process.pid):  # all found before any dies and is reparented
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.where for example in EXAMPLES])
async def test_shell_example(
    example: ShellExample, tmp_path: Path, stack: contextlib.ExitStack
) -> None:
    bindir = Path(sys.executable).parent
    assert (bindir / "trio-vchan").exists(), f"trio-vchan is not installed in {bindir}"
    work = tmp_path / "work"
    shutil.copytree(REPO / "scripts", work / "scripts")
    for name, content in example.files.items():
        (work / name).write_text(content)
    # Not under tmp_path: the simulated host's sockets live in $TMPDIR, within 108 bytes.
    temporary = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="trio-vchan-doc-")))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_VCHAN_")}
    environ |= {
        "PATH": f"{bindir}{os.pathsep}{environ.get('PATH', os.defpath)}",
        "TMPDIR": str(temporary),
        # As on a terminal, each print reaches stdout at once; piped, each process's buffer
        # would arrive when it exits, in whichever order they exit.
        "PYTHONUNBUFFERED": "1",
    }
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            ["bash", "-e", "-c", adjusted(example.script)],
            cwd=work,
            env=environ,
            stdin=b"",
            deliver_cancel=kill_tree,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    report = f"{example.where} exited {result.returncode}\n{result.stderr.decode()}"
    assert result.returncode == 0, report
    if example.output is not None:
        assert result.stdout.decode() == example.output, report
    assert list(await trio.Path(temporary).iterdir()) == []  # nothing left behind in $TMPDIR


# -- the README's test command: it must not pass having run nothing -------------------------------


def nox_command() -> list[str]:
    """How to run nox here: this interpreter's, else the README's .venv's, else PATH's."""
    if importlib.util.find_spec("nox") is not None:
        return [sys.executable, "-m", "nox"]
    for nox in (REPO / ".venv" / "bin" / "nox", shutil.which("nox")):
        if nox and os.access(nox, os.X_OK):
            return [str(nox)]
    if os.environ.get("CI"):
        pytest.fail("nox is not installed, but the README's test command installs it")
    pytest.skip("nox is not installed (the README's test command installs it into .venv)")


async def run_nox(tmp_path: Path, *args: str, path: str) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if k != "CI"} | {"PATH": path}
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [*nox_command(), "-f", str(REPO / "noxfile.py"), "--envdir", str(tmp_path), *args],
            env=environ,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_a_missing_interpreter_fails_the_test_command(tmp_path: Path) -> None:
    """Not skipped, as nox does by default outside CI ($CI unset here)."""
    result = await run_nox(
        tmp_path, "-s", "lint", "--force-python", "3.1", "--download-python", "never",
        path=os.environ.get("PATH", os.defpath),
    )  # fmt: skip
    assert result.returncode != 0, result.stderr.decode()
    assert b"Python interpreter 3.1 not found" in result.stderr


async def test_without_python3_11_the_sessions_use_the_running_interpreter(
    tmp_path: Path,
) -> None:
    """Where python3.11 is not on PATH, the sessions run on the Python that runs nox."""
    result = await run_nox(tmp_path, "--list", "--json", path=str(tmp_path))  # an empty PATH
    assert result.returncode == 0, result.stderr.decode()
    sessions = json.loads(result.stdout)
    assert {session["name"] for session in sessions} >= {"tests", "lint", "typecheck", "docs"}
    assert [session["python"] for session in sessions] == [None] * len(sessions)

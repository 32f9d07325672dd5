"""Every code block of the README runs, or is checked as far as it can be without a download, a GPU or user data.

Each ``bash`` or ``python`` block is preceded by a marker line:

* ``<!-- readme-test: run -->``: run as written, from a folder where ``dpseg quickstart --fast`` ran (its outputs
  in ``runs/quickstart``, its cache in ``.dpseg_cache/quickstart``): Python blocks with ``exec``, ``dpseg``
  commands through :func:`dpseg.commands.main` (``dpseg demo``, a server, only has its arguments checked:
  tests/test_first_hour.py drives it in Chromium), other commands with bash;
* ``<!-- readme-test: parse (why) -->``: the block needs something the tests cannot have (a download, a GPU, your
  data): Python is compiled, shell is checked by ``bash -n`` and every ``dpseg`` command's arguments by dpseg's
  own parser.

A block without a marker fails, as does one that does not pass its check; the failure names the block by its line
in README.md. Other blocks (file layouts) are tagged ``text``.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_check import command_problems, dpseg_argv, parse_problem, shell_commands

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->")
CODE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    language: str  # bash, python, or the tag as written for other blocks
    mode: str  # run, parse, or "" without a marker
    text: str

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language} block, {self.mode or 'no readme-test marker'})"


def readme_blocks(text: str) -> list[Block]:
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, tag = opening.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.search(before)
        body = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
        blocks.append(Block(i + 1, CODE.get(tag, tag), marker.group(1) if marker else "", body))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def test_the_readme_has_runnable_blocks_and_each_block_is_marked():
    assert sum(b.mode == "run" for b in BLOCKS) >= 5, "the README lost its runnable blocks"
    problems = []
    for block in BLOCKS:
        if block.language in ("bash", "python") and block.mode not in ("run", "parse"):
            problems.append(f"{block}: mark it <!-- readme-test: run --> or <!-- readme-test: parse (why) -->")
        elif block.language not in ("bash", "python", "text"):
            problems.append(f"{block}: tag it bash, python or text")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in ("bash", "python")], ids=str)
def test_every_code_block_parses(block):
    """Syntax and dpseg arguments of every block (the runnable ones too: a cheap first check)."""
    if block.language == "python":
        try:
            compile(block.text, str(block), "exec")
        except SyntaxError as e:
            pytest.fail(f"{block}: {e}")
    else:
        problems = command_problems(block.text)
        assert not problems, f"{block}: " + "; ".join(problems)


@pytest.fixture
def quickstart_folder(quickstart_fast, tmp_path, monkeypatch):
    """A folder as the user has it after `dpseg quickstart` (default --out and cache), as the working directory."""
    root, rc = quickstart_fast
    assert rc == 0
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "quickstart").symlink_to(root / "out")
    (tmp_path / ".dpseg_cache").mkdir()
    (tmp_path / ".dpseg_cache" / "quickstart").symlink_to(root / "cache")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DPSEG_CACHE", raising=False)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.mode == "run"], ids=str)
def test_runnable_blocks_run_as_written(block, quickstart_folder, capsys):
    from dpseg.commands import main

    if block.language == "python":
        try:
            exec(compile(block.text, str(block), "exec"), {"__name__": "__readme__"})
        except Exception as e:  # noqa: BLE001 - reported with the block's line
            pytest.fail(f"{block}: {type(e).__name__}: {e}")
        return
    for command in shell_commands(block.text):
        argv = dpseg_argv(command)
        if argv is not None and argv[:1] == ["demo"]:  # a server: its arguments only (module doc)
            assert parse_problem(argv) is None, f"{block}: {command}"
        elif argv is not None:
            with contextlib.suppress(SystemExit):
                rc = main(argv)
            assert rc == 0, f"{block}: {' '.join(command)} exited with {rc}: {capsys.readouterr().err[-2000:]}"
        else:
            done = subprocess.run(["bash", "-c", " ".join(command)], capture_output=True, text=True)
            assert done.returncode == 0, f"{block}: {' '.join(command)}: {done.stderr[-2000:]}"
    assert sys.modules["dpseg.commands"]  # ran through this checkout's CLI

"""Every command that an error message or a printed hint of dpseg suggests is one that dpseg's parser accepts as
written (placeholders such as BANK or CLASS_LIST filled in with sample values; no "..."). The suggestions a new user
meets first run for real in tests/test_first_hour.py (photos with the toy model, convert's re-save command) and
tests/test_readme.py (the README's commands)."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
from cli_check import parse_problem

from dpseg.commands import COMMANDS

PACKAGE = Path(__file__).resolve().parents[1] / "dpseg"
FIELD = "X"  # what an f-string field ({path}, {root}, ...) stands for when the suggestion is parsed
NESTED = ("prompts",)  # commands whose first argument is an action: "dpseg prompts build" is not a mere mention
QUOTED = re.compile(r"[`'](dpseg [a-z][^`']*)[`']")
BARE = re.compile(r"(?:^|[:(] )(dpseg (?:" + "|".join(COMMANDS) + r")(?= )[^:;`'()]*)")


def _text(node: ast.AST) -> str:
    """A string constant or f-string, its fields replaced by FIELD."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) if isinstance(v, ast.Constant) else FIELD for v in node.values)
    return ""


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (module, class, function): documentation, not messages."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def suggestions() -> list[tuple[str, str]]:
    """(where, command) for every dpseg command named in a string of the package that is not a docstring: error
    messages, printed hints, help texts (f-string fields stand for FIELD)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                skip |= {id(v) for v in node.values}  # its pieces: read as part of the whole
        for node in ast.walk(tree):
            if id(node) in skip or not isinstance(node, (ast.Constant, ast.JoinedStr)):
                continue
            text = _text(node)
            commands = QUOTED.findall(text) or BARE.findall(text)
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            for command in (c.strip().rstrip(".") for c in commands):
                if len(command.split()) > 2 or command.split()[1] in NESTED:  # "`dpseg segment` does": a mention
                    found.append((where, command))
    return sorted(set(found))


SUGGESTIONS = suggestions()


def test_the_scan_finds_the_suggestions():
    commands = [c for _, c in SUGGESTIONS]
    assert len(commands) >= 10, commands
    assert any(c.startswith("dpseg convert sed") for c in commands) and any(
        c.startswith("dpseg prepare") for c in commands
    )


@pytest.mark.parametrize("where, command", SUGGESTIONS, ids=[f"{w} {c}" for w, c in SUGGESTIONS])
def test_every_suggested_command_parses(where, command):
    assert "..." not in command and "[" not in command, f"{where}: `{command}` cannot be pasted as written"
    argv = shlex.split(command)[1:]
    problem = parse_problem(argv)
    assert problem is None, f"{where}: `{command}`: {problem}"

"""Checks shared by the README test and the error-message test: split a shell text into simple commands, find the
dpseg invocations among them, and check their arguments with dpseg's own parsers (without running anything)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import subprocess
from pathlib import Path
from typing import Optional

from dpseg.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
SEPARATORS = {"&&", "||", ";", "|", "&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell text: backslash continuations joined, comments dropped, split at && || ; |,
    leading VAR=value assignments removed."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token in SEPARATORS:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    out = []
    for command in commands:
        while command and ASSIGNMENT.match(command[0]):
            command = command[1:]
        if command:
            out.append(command)
    return out


def dpseg_argv(command: list[str]) -> Optional[list[str]]:
    """The arguments after ``dpseg`` when ``command`` runs dpseg (``dpseg``, ``.venv/bin/dpseg``, ``python -m
    dpseg``, ``torchrun ... -m dpseg``), else None."""
    if command[0] == "dpseg" or command[0].endswith("/bin/dpseg"):
        return command[1:]
    if "-m" in command and command.index("-m") + 1 < len(command) and command[command.index("-m") + 1] == "dpseg":
        is_runner = Path(command[0]).name.startswith(("python", "torchrun"))
        return command[command.index("-m") + 2 :] if is_runner else None
    return None


def parse_problem(argv: list[str]) -> Optional[str]:
    """Why dpseg's parser refuses ``argv`` (its own message), or None when it accepts it. Nothing runs."""
    if not argv or argv[0] in ("-h", "--help", "--version"):
        return None
    if argv[0] not in COMMANDS:
        return f"unknown command {argv[0]!r}"
    module = importlib.import_module(COMMANDS[argv[0]][0])
    parser = argparse.ArgumentParser(prog=f"dpseg {argv[0]}", exit_on_error=False)
    module.add_arguments(parser)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv[1:])
    except SystemExit as e:
        return None if e.code == 0 else (err.getvalue().strip().splitlines() or [str(e)])[-1]
    except argparse.ArgumentError as e:
        return str(e)
    return None


def shell_syntax_problem(text: str) -> Optional[str]:
    """bash -n's complaint about ``text``, or None."""
    done = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    return done.stderr.strip() or None if done.returncode else None


def command_problems(text: str) -> list[str]:
    """Shell syntax, then every dpseg command's arguments; scripts named as ``python path.py`` must exist."""
    problem = shell_syntax_problem(text)
    if problem:
        return [f"shell syntax: {problem}"]
    problems = []
    for command in shell_commands(text):
        argv = dpseg_argv(command)
        if argv is not None:
            why = parse_problem(argv)
            if why:
                problems.append(f"{shlex.join(command)}: {why}")
        elif Path(command[0]).name.startswith("python") and len(command) > 1 and command[1].endswith(".py"):
            if not (ROOT / command[1]).is_file():
                problems.append(f"{shlex.join(command)}: no script {command[1]} in the repository")
    return problems

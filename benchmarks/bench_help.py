"""How long ``dpseg COMMAND --help`` takes, for every subcommand, and which heavy packages it imports.

    python benchmarks/bench_help.py                      # this checkout, 7 runs per command
    python benchmarks/bench_help.py --repeat 15 --json help.json
    python benchmarks/bench_help.py --source /path/to/other/checkout     # e.g. before a change

Each run is a fresh ``python -m dpseg COMMAND --help`` process (``PYTHONPATH`` = the checkout), timed from before the
interpreter starts to its exit (wall seconds); the table gives the median and min over ``--repeat`` runs after one
warm-up, and the heavy packages (torch, open_clip, gradio, numpy, ...) in ``sys.modules`` when the parser has been
built (from a separate run that prints them). The target of issue 24 is < 0.3 s for every command.
Not a test: the numbers depend on the machine and its load; ``tests/test_cli_help.py`` checks the imports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "gradio", "numpy", "PIL", "diffusers", "matplotlib", "scipy", "safetensors", "yaml")
# prints the heavy packages imported once the command's parser exists (argparse exits on --help before that)
PROBE = """
import sys, argparse, importlib
from dpseg.commands import COMMANDS
module = importlib.import_module(COMMANDS[sys.argv[1]][0])
module.add_arguments(argparse.ArgumentParser())
print(" ".join(m for m in {heavy!r} if m in sys.modules))
"""


def commands(source: Path) -> list[str]:
    code = "from dpseg.commands import COMMANDS; print(' '.join(COMMANDS))"
    out = subprocess.run([sys.executable, "-c", code], env=_env(source), capture_output=True, text=True, check=True)
    return out.stdout.split()


def _env(source: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1"}


def time_help(source: Path, argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dpseg", *argv, "--help"], env=_env(source), cwd=source, capture_output=True, check=True
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout to time (default: this one)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per command (after one warm-up)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    source = args.source.resolve()
    rows = []
    for name in [None, *commands(source)]:
        argv = [] if name is None else [name]
        time_help(source, argv)  # warm-up: the page cache
        runs = [time_help(source, argv) for _ in range(args.repeat)]
        heavy = ""
        if name is not None:
            probe = subprocess.run(
                [sys.executable, "-c", PROBE.format(heavy=HEAVY), name],
                env=_env(source),
                capture_output=True,
                text=True,
                check=True,
            )
            heavy = probe.stdout.strip()
        rows.append(
            {
                "command": "dpseg " + (name or "") + " --help",
                "median_s": round(statistics.median(runs), 3),
                "min_s": round(min(runs), 3),
                "heavy_imports": heavy,
            }
        )
        print(
            f"{rows[-1]['command']:<28} median {rows[-1]['median_s']:6.3f} s  min {rows[-1]['min_s']:6.3f} s  {heavy}"
        )
    print(f"source {source}, {args.repeat} runs per command, python {sys.version.split()[0]}")
    if args.json:
        args.json.write_text(json.dumps({"source": str(source), "repeat": args.repeat, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

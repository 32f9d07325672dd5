"""Keep a quickstart run's numbers under docs/study (the README's quickstart table traces to this file):

    python benchmarks/archive_quickstart.py runs/quickstart/results.json --json docs/study/quickstart-default-v3.json

Writes the run's ``results.json`` as the study's world files hold theirs (:func:`method_study.compact`: every seed,
split, pass and metric, the settings, references and stage times; no per-class tables or paths) plus the example
check, and the Markdown beside it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_study import compact, write_world  # noqa: E402

WHAT = (
    "the default `dpseg quickstart` with an empty cache "
    "({} key variants x {} seeds, {} steps, {} test scenes per vocabulary)"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="the quickstart's results.json")
    ap.add_argument("--json", type=Path, required=True, help="where to write the compact copy (.md beside it)")
    args = ap.parse_args()
    if not args.results.is_file():
        raise SystemExit(f"{args.results} does not exist: give the results.json a `dpseg quickstart` run wrote")
    results = json.loads(args.results.read_text())
    b = results["budget"]
    what = WHAT.format(len(b["variants"]), b["seeds"], b["iterations"], b["num_val"])
    kept = compact(results, "quickstart-default", what) | {"example_check": results.get("example_check")}
    write_world(args.json, kept, results["markdown"])


if __name__ == "__main__":
    main()

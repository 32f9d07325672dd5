"""Latency and peak memory against the vocabulary size K, from the JSON files of ``bench_inference.py`` runs.

    python benchmarks/plot_inference.py benchmarks/results/inference*.json --out docs/bench_inference.png

Rows of the same (mode, K) from several files (rounds) are averaged; latency is the CPU time of the call when the
files have it (on a machine shared with other jobs it does not count waiting for a core), else the wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

LABELS = {
    "sed_code": "SED-B, SED's own released code",
    "sed": "SED (sed-b)",
    "sed:ref": "SED (sed-b), speed-ups off",
    "sed_fast": "SED-fast (early rejection)",
    "sed_fast_cost": "SED-fast, stage 0 ranked by the cost volume",
    "pass1": "DPSeg pass 1",
    "pass1:ref": "DPSeg pass 1, speed-ups off",
    "pass1_fast": "DPSeg + early rejection",
    "pass1_fast_from1": "DPSeg + early rejection from stage 1",
    "pass1_fast_from2": "DPSeg + early rejection from stage 2",
    "pass1_fast_cost": "DPSeg + early rejection, stage 0 ranked by the cost volume",
    "two_pass": "DPSeg two passes (paper)",
    "two_pass:ref": "DPSeg two passes, speed-ups off",
    "two_pass_present": "DPSeg two passes, present classes",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--out", default="docs/bench_inference.png")
    p.add_argument("--title", default="dpseg-b / sed-b, 768², one CPU thread")
    args = p.parse_args()
    rows: dict = defaultdict(list)
    for f in args.files:
        for r in json.loads(Path(f).read_text())["results"]:
            rows[r["mode"], r["classes"]].append(r)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    unknown = sorted({m for m, _ in rows} - LABELS.keys())
    if unknown:
        raise SystemExit(f"no label for mode(s) {', '.join(unknown)}: add them to LABELS in {Path(__file__).name}")
    modes = [m for m in LABELS if any(k[0] == m for k in rows)]
    for mode in modes:
        ks = sorted(k for m, k in rows if m == mode)
        lat = [statistics.mean(r.get("cpu_s", r["latency_s"]) for r in rows[mode, k]) for k in ks]
        mem = [statistics.mean(r["peak_mem_gib"] for r in rows[mode, k]) for k in ks]
        style = "--" if mode.endswith(":ref") else "-"
        axes[0].plot(ks, lat, style, marker="o", label=LABELS[mode])
        axes[1].plot(ks, mem, style, marker="o", label=LABELS[mode])
    axes[0].set(xlabel="classes K", ylabel="CPU seconds per image", title="latency")
    axes[1].set(xlabel="classes K", ylabel="peak RSS (GiB, weights included)", title="peak memory")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

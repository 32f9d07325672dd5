"""The method study's report (docs/method-study.md, section 8) from the world files that
``benchmarks/method_study.py`` wrote:

    python benchmarks/study_report.py                         # every docs/study/WORLD.json present -> stdout
    python benchmarks/study_report.py --out docs/study/report.md

It computes nothing the world files do not hold: the table of the main world (mean ± std over seeds, pass 1 and
pass 2 on every split), each single-factor claim with its paired statistics (the same claims, pairing and Holm
family as the quickstart's report, :func:`dpseg.quickstart.report.paired_claims`), the seed spread of every variant,
and for each control world the key contrasts next to the main world's on the same seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_study import STUDY_DIR, WORLDS  # noqa: E402

from dpseg.atomic import atomic_write_text  # noqa: E402
from dpseg.quickstart.experiment import VARIANTS  # noqa: E402
from dpseg.quickstart.paired import Paired, judge  # noqa: E402
from dpseg.quickstart.report import cell, paired_claims, summarize  # noqa: E402

SPLITS = ("unseen", "unseen-all", "seen")  # the claim first, then the generalised test, then seen/test
# the contrasts the four key variants allow (A, B, what A - B measures), judged in every world
KEY_CONTRASTS = (
    ("dual", "visual", "dual - visual prompts (F_v)"),
    ("dual-upsampled", "text", "dual - text prompts (upsampled F_c)"),
    ("dual", "dual-upsampled", "F_v - upsampled F_c (dual prompts)"),
    ("visual", "text", "visual prompts + F_v - text prompts + F_c (both factors)"),
)
SWITCHED_OFF = {  # the property each control world switches off (method_study.WORLDS says how)
    "no-text-gap": "(a) the CLIP's text deficit",
    "no-generator-failures": "(b) the generator's failures",
    "clip-sees-generator-images": "(c) the style gap, via the CLIP's pool",
    "no-style-gap": "(c') the style gap, via the generator",
}


ARCHIVED_MAIN = "main-iterations"  # main-iterations260.json: the main world at an earlier training length


def load(study_dir: Path) -> dict:
    """{world: its compact results} for every world of WORLDS whose file exists, in WORLDS' order, then the archived
    main worlds (``main-iterations<N>.json``: the controls run at N training steps are set beside it)."""
    worlds = {
        w: json.loads((study_dir / f"{w}.json").read_text()) for w in WORLDS if (study_dir / f"{w}.json").is_file()
    }
    for path in sorted(study_dir.glob(f"{ARCHIVED_MAIN}*.json")):
        worlds[path.stem] = json.loads(path.read_text())
    return worlds


def steps(world: dict) -> int | None:
    return world.get("budget", {}).get("iterations")


def is_main(name: str) -> bool:
    return name == "main" or name.startswith(ARCHIVED_MAIN)


def reference_main(worlds: dict, control: dict) -> tuple[str, dict] | None:
    """The main world a control is set beside: the one trained as long as the control (the current main first)."""
    mains = [(n, w) for n, w in worlds.items() if is_main(n)]
    same = [(n, w) for n, w in mains if steps(w) == steps(control)]
    return (same or mains or [None])[0]


def main_table(world: dict) -> list[str]:
    summary = summarize(world["runs"])
    seeds = max(len(by_seed) for by_seed in world["runs"].values())
    head = "| variant | " + " | ".join(f"{s} pass 1 | {s} pass 2" for s in SPLITS) + " |"
    trained = f", {steps(world)} training steps" if steps(world) else ""
    lines = [
        f"mIoU %, mean ± std over {seeds} seeds, {world['budget']['num_val']} test scenes per vocabulary{trained}.",
        "",
    ]
    lines += [head, "|---|" + "---|" * (2 * len(SPLITS))]
    for variant in VARIANTS:
        if variant in summary:
            cells = [cell(summary[variant].get(s, {}).get(p)) for s in SPLITS for p in ("pass1", "pass2")]
            lines.append(f"| {VARIANTS[variant].title} | " + " | ".join(cells) + " |")
    refs = [("CLIP dense cost volume alone", world["clip_dense"]), ("chance", world["chance"])]
    for name, values in refs:
        lines.append(f"| {name} | " + " | ".join(f"{values[s]:.1f} | -" for s in SPLITS) + " |")
    return lines


def claim_rows(claims: list[Paired]) -> list[str]:
    lines = [
        "| claim (A >= B) | A | B | A - B per seed | A higher | p | Holm p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        p = "-" if c.p is None else f"{c.p:.2g}"
        ph = "-" if c.p_holm is None else f"{c.p_holm:.2g}"
        lines.append(
            f"| {c.claim} | {np.mean(c.a):.1f} | {np.mean(c.b):.1f} | {c.mean:+.1f} ± {c.std:.1f} | "
            f"{c.higher}/{c.n} | {p} | {ph} | {c.verdict} |"
        )
    return lines


def spread_rows(world: dict) -> list[str]:
    """Per variant: seen/test and unseen pass-1 values per seed (the seed stability)."""
    lines = ["| variant | split | per seed (pass 1) | std |", "|---|---|---|---|"]
    for variant, by_seed in world["runs"].items():
        for split in ("seen", "unseen"):
            values = [by_seed[s][split]["pass1"]["mIoU"] for s in sorted(by_seed, key=int)]
            lines.append(
                f"| {variant} | {split} | {' / '.join(f'{v:.1f}' for v in values)} | {np.std(values, ddof=1):.1f} |"
            )
    return lines


def contrasts(world: dict, seeds: list[str], split: str = "unseen") -> list[Paired]:
    """KEY_CONTRASTS on ``seeds`` (pass 1), judged as one Holm family."""
    runs = world["runs"]
    out = []
    for a, b, what in KEY_CONTRASTS:
        if a in runs and b in runs and all(s in runs[a] and s in runs[b] for s in seeds):
            out.append(
                Paired(
                    what,
                    [runs[a][s][split]["pass1"]["mIoU"] for s in seeds],
                    [runs[b][s][split]["pass1"]["mIoU"] for s in seeds],
                )
            )
    return judge(out)


def dpseg_cells(world: dict, seeds: list[str], split: str = "unseen") -> list[str]:
    """DPSeg's (dual + F_v) refinement gain per seed and its pass-1 mIoU on ``seeds``: '-' where it did not run."""
    runs = world["runs"].get("dual", {})
    if not all(s in runs and "pass2" in runs[s][split] for s in seeds):
        return ["-", "-"]
    one = [runs[s][split]["pass1"]["mIoU"] for s in seeds]
    gain = [runs[s][split]["pass2"]["mIoU"] - p for s, p in zip(seeds, one)]
    spread = lambda v: f"{np.mean(v):+.1f} ± {np.std(v, ddof=1):.1f}" if len(v) > 1 else f"{v[0]:+.1f}"  # noqa: E731
    higher = sum(g > 0 for g in gain)
    return [f"{spread(gain)} ({higher}/{len(gain)})", cell(summary_of(one))]


def summary_of(values: list[float]) -> dict:
    """The shape :func:`cell` reads: mean, std and the number of seeds."""
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "seeds": len(values)}


def control_rows(worlds: dict) -> list[str]:
    """Each control world's key contrasts (unseen, pass 1) beside the main world's on the same seeds."""
    lines = [
        "| world | what is switched off | seeds | "
        + " | ".join(w for _, _, w in KEY_CONTRASTS)
        + " | DPSeg pass 2 - pass 1 (not in the Holm family) | DPSeg |",
        "|---|---|---|" + "---|" * (len(KEY_CONTRASTS) + 2),
    ]
    for name, world in worlds.items():
        if is_main(name):
            continue
        seeds = sorted(next(iter(world["runs"].values())), key=int)
        reference = reference_main(worlds, world)
        rows = [(name, world)]
        if reference:
            ref_name, ref = reference
            same = "" if steps(ref) == steps(world) else f"; {steps(ref)} steps, the control {steps(world)}"
            label = "main (same seeds" if ref_name == "main" else f"main at {steps(ref)} steps (same seeds"
            rows.append((f"{label}{same})", ref))
        for label, w in rows:
            by_what = {c.claim: c for c in contrasts(w, seeds)}
            cells = []
            for _, _, what in KEY_CONTRASTS:
                c = by_what.get(what)
                cells.append("-" if c is None else f"{c.mean:+.1f} ± {c.std:.1f} ({c.higher}/{c.n}, {c.verdict})")
            cells += dpseg_cells(w, seeds)
            off = SWITCHED_OFF.get(name, name) if label == name else "nothing"
            lines.append(f"| {label} | {off} | {len(seeds)} | " + " | ".join(cells) + " |")
    return lines


def control_tables(worlds: dict) -> list[str]:
    lines = []
    for name, world in worlds.items():
        if is_main(name):
            continue
        summary = summarize(world["runs"])
        trained = f" ({steps(world)} training steps)" if steps(world) else ""
        lines += [
            f"**{name}** — {world['what']}{trained}",
            "",
            "| variant | unseen pass 1 | unseen-all pass 1 | seen pass 1 |",
        ]
        lines.append("|---|---|---|---|")
        for variant in VARIANTS:
            if variant in summary:
                lines.append(
                    f"| {VARIANTS[variant].title} | "
                    + " | ".join(cell(summary[variant].get(s, {}).get("pass1")) for s in SPLITS)
                    + " |"
                )
        lines.append("")
    return lines


def report(worlds: dict) -> str:
    lines = ["# The method study (generated by benchmarks/study_report.py from docs/study/WORLD.json)", ""]
    main = worlds.get("main")
    if main:
        lines += ["## Main world (every property on)", "", *main_table(main), ""]
        lines += ["### Paired single-factor claims (one Holm family over all rows)", ""]
        lines += [*claim_rows(paired_claims(main["runs"], SPLITS)), ""]
        lines += ["### Seed spread", "", *spread_rows(main), ""]
    if any(not is_main(n) for n in worlds):
        lines += ["## Control worlds: one property off, the four key variants", ""]
        lines += [
            "Unseen pass 1, A - B per seed (mean ± std, A higher on n of N seeds, verdict within the row's "
            "four contrasts, Holm).",
            "",
            *control_rows(worlds),
            "",
            *control_tables(worlds),
        ]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study-dir", type=Path, default=STUDY_DIR)
    ap.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    args = ap.parse_args()
    worlds = load(args.study_dir)
    if not worlds:
        raise SystemExit(f"no world files in {args.study_dir}: run benchmarks/method_study.py first")
    text = report(worlds)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()

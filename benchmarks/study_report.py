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


def load(study_dir: Path) -> dict:
    """{world: its compact results} for every world of WORLDS whose file exists, in WORLDS' order, each followed by
    its archived copies (``WORLD-<what changed>.json``, e.g. main-iterations260.json, no-style-gap-keep1.json: the
    world under earlier defaults; controls are set beside the main world run under their defaults)."""
    worlds = {}
    for w in WORLDS:
        paths = [study_dir / f"{w}.json", *sorted(study_dir.glob(f"{w}-*.json"))]
        for path in paths:
            if path.is_file() and not path.stem.endswith("-per-class") and base_world(path.stem) == w:
                worlds[path.stem] = json.loads(path.read_text())
    return worlds


def base_world(name: str) -> str:
    """The world of WORLDS that ``name`` is, or is an archived copy of (``no-style-gap-keep1`` -> ``no-style-gap``)."""
    bases = [w for w in WORLDS if name == w or name.startswith(w + "-")]
    return max(bases, key=len) if bases else name


def steps(world: dict) -> int | None:
    return world.get("budget", {}).get("iterations")


def prompt_keep(world: dict) -> float:
    """model.visual_prompt_keep of the world's runs (files written before the option existed ran with 1: every
    generated image)."""
    return float(world.get("settings", {}).get("model", {}).get("visual_prompt_keep", 1.0))


def is_main(name: str) -> bool:
    return base_world(name) == "main"


def differences(reference: dict, world: dict, other: str = "the control") -> list[str]:
    """How ``reference``'s defaults differ from ``world``'s (called ``other``), in words; empty when they do not."""
    out = []
    if steps(reference) != steps(world):
        out.append(f"{steps(reference)} steps, {other} {steps(world)}")
    if prompt_keep(reference) != prompt_keep(world):
        out.append(f"visual_prompt_keep {prompt_keep(reference):g}, {other} {prompt_keep(world):g}")
    return out


def reference_main(worlds: dict, control: dict) -> tuple[str, dict] | None:
    """The main world a control is set beside: the one run under the control's defaults (training length and prompt
    filter; the current main first), else the one trained as long, else the current main."""
    mains = [(n, w) for n, w in worlds.items() if is_main(n)]
    same = [(n, w) for n, w in mains if not differences(w, control)]
    as_long = [(n, w) for n, w in mains if steps(w) == steps(control)]
    return (same or as_long or mains or [None])[0]


def defaults_label(world: dict, current: dict | None) -> str:
    """'main' or 'main at 260 steps' / 'main with visual_prompt_keep 1': what sets an archived main world apart."""
    if current is None or world is current:
        return "main"
    parts = []
    if steps(world) != steps(current):
        parts.append(f"at {steps(world)} steps")
    if prompt_keep(world) != prompt_keep(current):
        parts.append(f"with visual_prompt_keep {prompt_keep(world):g}")
    return " ".join(["main", *parts]) if parts else "main (archived)"


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
            _, ref = reference
            differ = "".join(f"; {d}" for d in differences(ref, world))
            rows.append((f"{defaults_label(ref, worlds.get('main'))} (same seeds{differ})", ref))
        for label, w in rows:
            by_what = {c.claim: c for c in contrasts(w, seeds)}
            cells = []
            for _, _, what in KEY_CONTRASTS:
                c = by_what.get(what)
                cells.append("-" if c is None else f"{c.mean:+.1f} ± {c.std:.1f} ({c.higher}/{c.n}, {c.verdict})")
            cells += dpseg_cells(w, seeds)
            off = SWITCHED_OFF.get(base_world(name), name) if label == name else "nothing"
            lines.append(f"| {label} | {off} | {len(seeds)} | " + " | ".join(cells) + " |")
    return lines


def control_tables(worlds: dict) -> list[str]:
    lines = []
    for name, world in worlds.items():
        if is_main(name):
            continue
        summary = summarize(world["runs"])
        trained = f" ({steps(world)} training steps)" if steps(world) else ""
        if prompt_keep(world) != 1:
            trained += f" (visual_prompt_keep {prompt_keep(world):g})"
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


def default_change_rows(current: dict, archived: dict) -> list[str]:
    """A world now minus an archived copy that differs from it in one default, per variant, split and pass, paired by
    seed (one Holm family per archived world; variants identical in both give zero differences)."""
    claims = []
    for variant, by_seed in current["runs"].items():
        old = archived["runs"].get(variant, {})
        seeds = sorted((s for s in by_seed if s in old), key=int)
        for split in SPLITS:
            for p in ("pass1", "pass2"):
                if seeds and all(p in by_seed[s][split] and p in old[s][split] for s in seeds):
                    claims.append(
                        Paired(
                            f"{VARIANTS[variant].title}: {split} {p.replace('pass', 'pass ')}",
                            [by_seed[s][split][p]["mIoU"] for s in seeds],
                            [old[s][split][p]["mIoU"] for s in seeds],
                        )
                    )
    return claim_rows(judge(claims)) if claims else []


def default_changes(worlds: dict, base: str = "main") -> list[str]:
    """A section per archived copy of world ``base`` that differs from the current one in exactly one default."""
    current = worlds.get(base)
    lines: list[str] = []
    for name, world in worlds.items():
        archived = current is not None and name != base and base_world(name) == base
        changed = differences(current, world, other="before:") if archived else []
        rows = default_change_rows(current, world) if len(changed) == 1 else []
        if rows:
            lines += [f"### What a default change did: {base} now ({changed[0]}) - {name}", "", *rows, ""]
    return lines


def report(worlds: dict) -> str:
    lines = ["# The method study (generated by benchmarks/study_report.py from docs/study/WORLD.json)", ""]
    main = worlds.get("main")
    if main:
        lines += ["## Main world (every property on)", "", *main_table(main), ""]
        lines += ["### Paired single-factor claims (one Holm family over all rows)", ""]
        lines += [*claim_rows(paired_claims(main["runs"], SPLITS)), ""]
        lines += ["### Seed spread", "", *spread_rows(main), ""]
        lines += default_changes(worlds)
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
        for base in WORLDS:
            if base != "main":
                lines += default_changes(worlds, base)
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

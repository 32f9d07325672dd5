"""The quickstart's outputs: mean ± spread over seeds, a Markdown table, verdicts on the method's claims, a figure.

Spread = the sample standard deviation over seeds. Every claim compares two variants that differ in one factor
(:data:`~dpseg.quickstart.experiment.CLAIMS`), or pass 2 with pass 1 of the same models, paired by seed
(:mod:`dpseg.quickstart.paired`: per-seed differences, sign count, paired t-test, Holm's correction over the
claims reported together).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dpseg.data.synthetic.world import unseen_classes
from dpseg.quickstart.experiment import CLAIMS, VARIANTS
from dpseg.quickstart.paired import Paired, judge
from dpseg.quickstart.zeroshot import format_report
from dpseg.visualize import class_palette, colorize

PASSES = ("pass1", "pass2")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(runs: dict) -> dict:
    """runs[variant][seed][split][pass]["mIoU"] -> summary[variant][split][pass] = {"mean", "std", "seeds"}."""
    out: dict = {}
    for variant, by_seed in runs.items():
        for seed_result in by_seed.values():
            for split, passes in seed_result.items():
                for p, metrics in passes.items():
                    out.setdefault(variant, {}).setdefault(split, {}).setdefault(p, []).append(metrics["mIoU"])
    return {
        v: {
            s: {p: dict(zip(("mean", "std"), mean_std(x)), seeds=len(x)) for p, x in ps.items()}
            for s, ps in splits.items()
        }
        for v, splits in out.items()
    }


def cell(entry: Optional[dict]) -> str:
    """A table cell: mean ± std over seeds (the mean alone from one seed), "-" where nothing was measured."""
    if not entry or entry.get("mean") is None or np.isnan(entry["mean"]):
        return "-"
    return f"{entry['mean']:.1f} ± {entry['std']:.1f}" if entry["seeds"] > 1 else f"{entry['mean']:.1f}"


def markdown_table(summary: dict, titles: dict, chance: dict, clip_dense: dict) -> str:
    """Rows = variants (+ CLIP-only and chance references), columns = split x pass, mIoU %."""
    splits = list(chance)
    head = "| model | " + " | ".join(f"{s} pass 1 | {s} pass 2" for s in splits) + " |"
    lines = [head, "|---|" + "---|" * (2 * len(splits))]
    for variant, by_split in summary.items():
        cells = [cell(by_split.get(s, {}).get(p)) for s in splits for p in PASSES]
        lines.append(f"| {titles.get(variant, variant)} | " + " | ".join(cells) + " |")
    lines.append(
        "| CLIP dense cost volume only, no decoder (argmax of cos(E, T)) | "
        + " | ".join(f"{clip_dense[s]:.1f} | -" for s in splits)
        + " |"
    )
    lines.append(
        "| chance (uniformly random class per pixel) | " + " | ".join(f"{chance[s]:.1f} | -" for s in splits) + " |"
    )
    return "\n".join(lines)


def paired_claims(runs: dict, splits: Sequence[str]) -> list[Paired]:
    """Every claim of :data:`CLAIMS` (pass 1) and pass 2 >= pass 1 of DPSeg, on each split, for the variants that
    ran, paired by seed and judged together (Holm's correction over all of them)."""
    claims = []

    def miou(variant: str, seed, split: str, key: str) -> float:
        return runs[variant][seed][split][key]["mIoU"]

    for split in splits:
        for what, a, b in CLAIMS:
            seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})), key=str)
            seeds = [s for s in seeds if split in runs[a][s] and split in runs[b][s]]
            if seeds:
                claims.append(
                    Paired(
                        f"{split}: {what}",
                        [miou(a, s, split, "pass1") for s in seeds],
                        [miou(b, s, split, "pass1") for s in seeds],
                    )
                )
        seeds = sorted((s for s, r in runs.get("dual", {}).items() if "pass2" in r.get(split, {})), key=str)
        if seeds:
            claims.append(
                Paired(
                    f"{split}: pass 2 >= pass 1 (DPSeg)",
                    [miou("dual", s, split, "pass2") for s in seeds],
                    [miou("dual", s, split, "pass1") for s in seeds],
                )
            )
    return judge(claims)


def verdicts(runs: dict, chance: dict) -> list[str]:
    """The method's claims on each split of ``chance``, from the per-seed results ``runs`` (see :func:`summarize`),
    one line each, and DPSeg against chance."""
    splits = [s for s in ("unseen", "unseen-all", "seen") if s in chance]
    lines = [c.line() for c in paired_claims(runs, splits)]
    summary = summarize(runs)
    for split in splits:
        best = summary.get("dual", {}).get(split, {}).get("pass1")
        if best:
            lines.append(
                f"- {split}: DPSeg (dual, pass 1) {best['mean']:.1f} vs chance {chance[split]:.1f} -> "
                + (
                    "clearly above chance"
                    if best["mean"] - best["std"] > 2 * chance[split]
                    else "NOT clearly above chance"
                )
            )
    return lines


# What each prediction column of the figure is (keys: "<variant> pass N", as the quickstart names them)
COLUMN_TITLES = {
    "dual pass 1": "DPSeg: dual prompts,\npass 1",
    "dual pass 2": "DPSeg: dual prompts,\npass 2 (refined)",
    "visual pass 1": "visual prompts only,\npass 1",
    "visual pass 2": "visual prompts only,\npass 2 (refined)",
    "text pass 1": "text prompts only\n(SED-like baseline)",
}


def column_title(key: str) -> str:
    return COLUMN_TITLES.get(key, key)


def _drawn(labels: np.ndarray, truth: np.ndarray, num_classes: int) -> list[int]:
    """The classes a panel's legend lists: those on its scored pixels (not background in the ground truth)."""
    return [k for k in np.unique(labels[truth >= 0]).tolist() if 0 <= k < num_classes]


def figure(
    path: Path,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    predictions: dict,
    class_names: Sequence[str],
    title: str,
) -> Path:
    """Rows = test images; columns = image, ground truth, then one column per entry of ``predictions`` (titled by
    :data:`COLUMN_TITLES`). Every panel but the image has its own legend: each class drawn in it, in the colours of
    :func:`dpseg.visualize.class_palette` (a class's colour word, shades within one colour). Pixels that are
    background in the ground truth (not scored) are dimmed in the prediction columns, and a class painted only there
    is left out of the panel's legend (the figure's note says so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = class_palette(class_names)
    cols = ["image", "ground truth"] + [column_title(k) for k in predictions]
    grid = []  # per row: [(panel, classes in its legend or None)]
    for r, (img, lab) in enumerate(zip(images, labels)):
        panels = [(img, None), (colorize(lab, colours), _drawn(lab, lab, len(class_names)))]
        for preds in predictions.values():
            shown = colorize(preds[r], colours).astype(float)
            shown[lab < 0] *= 0.3
            panels.append((shown.astype(np.uint8), _drawn(preds[r], lab, len(class_names))))
        grid.append(panels)
    legend_rows = max([len(drawn or ()) for panels in grid for _, drawn in panels] or [1])
    fig, axes = plt.subplots(
        max(len(grid), 1), len(cols), figsize=(2.4 * len(cols), (2.45 + 0.13 * legend_rows) * len(grid) + 0.9)
    )
    axes = np.asarray(axes).reshape(max(len(grid), 1), len(cols))
    for r, panels in enumerate(grid):
        for c, (panel, drawn) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
            if drawn is not None:
                handles = [Patch(facecolor=colours[k] / 255, edgecolor="black", label=class_names[k]) for k in drawn]
                ax.legend(
                    handles=handles,
                    loc="upper center",
                    bbox_to_anchor=(0.5, 0.0),
                    fontsize=5.5,
                    frameon=False,
                    handlelength=1.0,
                    borderaxespad=0.2,
                )
    fig.suptitle(title, fontsize=9)
    fig.text(
        0.5,
        0.005,
        "Colours follow each class's colour word; classes of one colour differ in shade (see each panel's legend).\n"
        "Prediction columns: every pixel gets its most probable class (no threshold); the background (not scored) "
        "is dimmed, and the classes painted only there are left out of the legends.",
        ha="center",
        va="bottom",
        fontsize=6.5,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))  # room for the two-line note
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------ results files


def results(budget, runs, chance, clip_dense, zero_shot, timings, clip, bank, datasets, figure) -> dict:
    """results.json's content, its Markdown rendering included."""
    summary = summarize(runs)
    titles = {k: v.title for k, v in VARIANTS.items()}
    table = markdown_table(summary, titles, chance, clip_dense)
    lines = verdicts(runs, chance)
    markdown = results_markdown(budget, table, lines, zero_shot, chance, timings, [k.name for k in unseen_classes()])
    return {
        "budget": asdict(budget),
        "runs": {v: {str(s_): r for s_, r in by.items()} for v, by in runs.items()},
        "summary": summary,
        "chance": chance,
        "clip_dense": clip_dense,
        "tiny_clip_zero_shot": zero_shot,
        "verdicts": lines,
        "timings_s": timings,
        "clip_weights": str(clip),
        "prompt_bank": str(bank),
        "datasets": str(datasets),
        "figure": str(figure),
        "markdown": markdown,
    }


def add_example_check(results: dict, check: Optional[dict]) -> None:
    """The example scenes' check (:func:`dpseg.quickstart.example.check_example`) into results.json's content and
    its one line at the end of the Markdown."""
    results["example_check"] = check
    if check:
        results["markdown"] += f"\n## The example scenes\n\n{check['summary']}\n"


def results_markdown(budget, table, lines, zero_shot, chance, timings, unseen) -> str:
    return "\n".join(
        [
            "# dpseg quickstart: DPSeg on the synthetic open-vocabulary world",
            "",
            f"Trained on the {75 - len(unseen)} seen classes; evaluated on held-out seen-class test scenes "
            f"and on test scenes of the {len(unseen)} **unseen** "
            f"classes ({', '.join(unseen)}), each with its own vocabulary. "
            "mIoU in %, mean ± sample standard deviation over "
            f"{budget.seeds} training seed(s); {budget.iterations} training steps per run, "
            f"{budget.num_val} test images per "
            "vocabulary. Background pixels are not a class (ignore label) and are not scored.",
            "",
            table,
            "",
            "Chance = expected mIoU of a uniformly random class per pixel "
            "(from the test labels' class frequencies). Every claim compares two variants that differ in one factor "
            "(or pass 2 with pass 1 of the same models), paired by seed: the per-seed differences, how many seeds "
            "favour A, a paired t-test and Holm's correction over the claims listed (no test below 3 seeds). "
            "Columns are not comparable with each other: the "
            f"seen vocabulary has {75 - len(unseen)} names, the unseen one {len(unseen)}.",
            "",
            "## The method's claims in this world",
            "",
            *lines,
            "",
            "## Tiny CLIP: zero-shot checks at the scene resolution (128-px scenes, the dense embedding E)",
            "",
            format_report(zero_shot),
            "",
            "## Time (seconds)",
            "",
            " | ".join(f"{k} {v}" for k, v in timings.items()),
            "",
        ]
    )

"""The quickstart's outputs: mean ± spread over seeds, a Markdown table, verdicts on the method's claims, a figure.

Spread = the sample standard deviation over seeds. A comparison "A vs B" of two variants is called a difference only
when the gap between the means exceeds the larger of the two spreads; otherwise it is reported as no difference.
Pass 2 against pass 1 compares each model with itself, so it is paired: the per-seed differences (pass 2 − pass 1)
are a difference only when their mean exceeds their own spread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

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


def _cell(entry: Optional[dict]) -> str:
    if not entry or np.isnan(entry["mean"]):
        return "-"
    return f"{entry['mean']:.1f} ± {entry['std']:.1f}" if entry["seeds"] > 1 else f"{entry['mean']:.1f}"


def markdown_table(summary: dict, titles: dict, chance: dict, clip_dense: dict) -> str:
    """Rows = variants (+ CLIP-only and chance references), columns = split x pass, mIoU %."""
    splits = list(chance)
    head = "| model | " + " | ".join(f"{s} pass 1 | {s} pass 2" for s in splits) + " |"
    lines = [head, "|---|" + "---|" * (2 * len(splits))]
    for variant, by_split in summary.items():
        cells = [_cell(by_split.get(s, {}).get(p)) for s in splits for p in PASSES]
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


def compare(summary: dict, a: tuple[str, str, str], b: tuple[str, str, str], what: str) -> Optional[str]:
    """One verdict line for ``a`` (variant, split, pass) against ``b``; None if either is missing."""
    try:
        ea, eb = summary[a[0]][a[1]][a[2]], summary[b[0]][b[1]][b[2]]
    except KeyError:
        return None
    gap, spread = ea["mean"] - eb["mean"], max(ea["std"], eb["std"])
    verdict = _verdict(gap, spread, min(ea["seeds"], eb["seeds"]))
    return f"- {what}: {ea['mean']:.1f} vs {eb['mean']:.1f} (gap {gap:+.1f}, spread {spread:.1f}) -> {verdict}"


def _verdict(gap: float, spread: float, seeds: int) -> str:
    """The module doc's rule: a gap counts only outside the spread, and needs two seeds to have one."""
    if seeds < 2:
        return "single seed: no spread, no verdict"
    if abs(gap) <= spread:
        return "no difference (inside the spread)"
    return "holds" if gap > 0 else "does NOT hold (reversed)"


def compare_passes(runs: dict, variant: str, split: str, what: str) -> Optional[str]:
    """Pass 2 against pass 1 of the same models, paired by seed: one verdict line; None without two passes."""
    pairs = [
        (r[split]["pass1"]["mIoU"], r[split]["pass2"]["mIoU"])
        for r in runs.get(variant, {}).values()
        if split in r and "pass2" in r[split]
    ]
    if not pairs:
        return None
    p1, p2 = (mean_std(x)[0] for x in zip(*pairs))
    gap, spread = mean_std([b - a for a, b in pairs])
    higher = sum(b > a for a, b in pairs)
    return (
        f"- {what}: {p2:.1f} vs {p1:.1f} (pass 2 - pass 1 per seed {gap:+.1f} ± {spread:.1f}, higher for "
        f"{higher}/{len(pairs)} seeds) -> {_verdict(gap, spread, len(pairs))}"
    )


def verdicts(runs: dict, chance: dict) -> list[str]:
    """The method's claims on each split of ``chance``, from the per-seed results ``runs`` (see :func:`summarize`);
    pass 2 vs pass 1 is judged paired, model by model (:func:`compare_passes`)."""
    summary = summarize(runs)
    lines = []
    for split in [s for s in ("unseen", "unseen-all", "seen") if s in chance]:
        for what, a, b in (
            ("dual prompts >= text prompts", ("dual", split, "pass1"), ("text", split, "pass1")),
            ("dual prompts >= visual prompts", ("dual", split, "pass1"), ("visual", split, "pass1")),
            ("visual prompts >= text prompts", ("visual", split, "pass1"), ("text", split, "pass1")),
            (
                "F_v in place of the upsampled F_c helps (dual)",
                ("dual", split, "pass1"),
                ("dual-upsampled", split, "pass1"),
            ),
            (
                "F_v beside the upsampled F_c >= the upsampled F_c alone (dual)",
                ("dual-both", split, "pass1"),
                ("dual-upsampled", split, "pass1"),
            ),
            (
                "F_v beside the upsampled F_c >= F_v alone (dual)",
                ("dual-both", split, "pass1"),
                ("dual", split, "pass1"),
            ),
        ):
            line = compare(summary, a, b, f"{split}: {what}")
            if line:
                lines.append(line)
        line = compare_passes(runs, "dual", split, f"{split}: pass 2 >= pass 1 (dual)")
        if line:
            lines.append(line)
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
    background in the ground truth (not scored) are dimmed in the prediction columns.
    """
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
        "Colours follow each class's colour word; classes of one colour differ in shade (see each panel's legend). "
        "Prediction columns: every pixel gets its most probable class (no threshold); background is dimmed.",
        ha="center",
        va="bottom",
        fontsize=6.5,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path

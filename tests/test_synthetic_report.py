"""Quickstart bookkeeping: the chance baseline, mean ± spread, verdicts, the table and the figure."""

import numpy as np
import pytest
import torch

from dpseg.data.synthetic.folders import build_datasets
from dpseg.evaluation.metrics import ConfusionMatrix, metrics_from_confusion
from dpseg.quickstart.experiment import VARIANTS, chance_miou
from dpseg.quickstart.report import compare, compare_passes, figure, markdown_table, summarize, verdicts


def test_chance_matches_random_predictions_through_the_metrics(tmp_path):
    world = build_datasets(tmp_path, seed=3, size=64, num_train=1, num_val=6)
    expected = chance_miou(world.unseen, split="test")
    from dpseg.data.catalog import build_dataset

    ds = build_dataset(str(world.unseen), split="test")
    g = torch.Generator().manual_seed(0)
    trials = []
    for _ in range(20):  # Monte-Carlo: uniformly random labels scored by the evaluator's own metrics
        conf = ConfusionMatrix(16)
        for i in range(len(ds)):
            label = ds[i]["label"]
            conf.update(torch.randint(0, 16, label.shape, generator=g), label)
        trials.append(metrics_from_confusion(conf.mat)["mIoU"])
    assert np.mean(trials) == pytest.approx(expected, rel=0.05)
    assert 2.5 < expected < 4.0  # about 1 / (2K - 1) for K = 16 balanced classes


def _runs(text, dual):
    one = lambda x: {"unseen": {"pass1": {"mIoU": x}}, "seen": {"pass1": {"mIoU": x / 4}}}  # noqa: E731
    return {"text": {s: one(v) for s, v in enumerate(text)}, "dual": {s: one(v) for s, v in enumerate(dual)}}


def test_summary_and_verdicts_respect_the_spread():
    s = summarize(_runs([30, 32, 34], [40, 41, 42]))
    assert s["text"]["unseen"]["pass1"] == {"mean": 32.0, "std": 2.0, "seeds": 3}
    assert "-> holds" in compare(s, ("dual", "unseen", "pass1"), ("text", "unseen", "pass1"), "x")
    s = summarize(_runs([30, 35, 40], [33, 36, 39]))  # gap 1 < spread 5
    assert "no difference (inside the spread)" in compare(
        s, ("dual", "unseen", "pass1"), ("text", "unseen", "pass1"), "x"
    )
    s = summarize(_runs([40, 41, 42], [30, 31, 32]))
    assert "does NOT hold (reversed)" in compare(s, ("dual", "unseen", "pass1"), ("text", "unseen", "pass1"), "x")
    s = summarize(_runs([30], [40]))
    assert "single seed" in compare(s, ("dual", "unseen", "pass1"), ("text", "unseen", "pass1"), "x")
    assert compare(s, ("visual", "unseen", "pass1"), ("text", "unseen", "pass1"), "x") is None  # variant not run
    lines = verdicts(_runs([30, 31, 32], [40, 41, 42]), {"unseen": 3.3, "seen": 0.8})
    assert any("clearly above chance" in line for line in lines)


def test_pass_two_is_judged_against_pass_one_of_the_same_models():
    def runs(pairs):
        return {"dual": {s: {"unseen": {"pass1": {"mIoU": a}, "pass2": {"mIoU": b}}} for s, (a, b) in enumerate(pairs)}}

    # the seeds differ by far more than the passes, but every model loses about a point in pass 2
    r = runs([(30, 29), (60, 58.8), (45, 44.2)])
    line = compare_passes(r, "dual", "unseen", "x")
    assert "pass 2 - pass 1 per seed -1.0 ± 0.2, higher for 0/3 seeds" in line and "does NOT hold (reversed)" in line
    s = summarize(r)  # unpaired, the same numbers are inside the seeds' spread
    assert "no difference" in compare(s, ("dual", "unseen", "pass2"), ("dual", "unseen", "pass1"), "x")
    assert "-> holds" in compare_passes(runs([(30, 31), (60, 60.8), (45, 46.2)]), "dual", "unseen", "x")
    assert "no difference" in compare_passes(runs([(30, 31), (60, 59), (45, 45.5)]), "dual", "unseen", "x")
    assert "single seed" in compare_passes(runs([(30, 31)]), "dual", "unseen", "x")
    assert compare_passes(runs([(30, 31)]), "dual", "seen", "x") is None  # that split was not evaluated
    lines = verdicts(r, {"unseen": 3.3})
    assert any("pass 2 >= pass 1 (dual)" in line and "does NOT hold" in line for line in lines)


def test_table_and_figure(tmp_path):
    s = summarize(_runs([30, 31, 32], [40, 41, 42]))
    table = markdown_table(
        s, {k: v.title for k, v in VARIANTS.items()}, {"seen": 0.8, "unseen": 3.3}, {"seen": 2.0, "unseen": 9.0}
    )
    assert "| text prompts, no visual cost volumes (SED-like baseline) | 7.8 ± 0.2 | - | 31.0 ± 1.0 | - |" in table
    assert "chance" in table and "CLIP dense" in table
    img = np.zeros((32, 32, 3), np.uint8)
    lab = np.full((32, 32), -1)
    lab[8:20, 8:20] = 2
    path = figure(tmp_path / "f.png", [img], [lab], {"dual pass 1": [lab.clip(0)]}, ["a", "b", "c"], "t")
    assert path.stat().st_size > 1000

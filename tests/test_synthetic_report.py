"""Quickstart bookkeeping: the chance baseline, mean ± spread, verdicts, the table and the figure."""

import numpy as np
import pytest
import torch

from dpseg.data.synthetic.folders import build_datasets
from dpseg.evaluation.metrics import ConfusionMatrix, metrics_from_confusion
from dpseg.quickstart.experiment import CLAIMS, VARIANTS, chance_miou
from dpseg.quickstart.paired import holm, paired_t_p
from dpseg.quickstart.report import figure, markdown_table, paired_claims, summarize, verdicts


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


def _runs(text, dual, a="text-fv", b="dual"):
    one = lambda x: {"unseen": {"pass1": {"mIoU": x}}, "seen": {"pass1": {"mIoU": x / 4}}}  # noqa: E731
    return {a: {s: one(v) for s, v in enumerate(text)}, b: {s: one(v) for s, v in enumerate(dual)}}


def test_holm_and_the_paired_t_test_by_hand():
    # Holm: sorted p (0.01, 0.02, 0.04) of m = 3 -> 0.03, 0.04, 0.04 (monotone), None stays None
    assert holm([0.04, None, 0.01, 0.02]) == [pytest.approx(0.04), None, pytest.approx(0.03), pytest.approx(0.04)]
    assert holm([0.5, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1
    # d = (1, 2, 3): mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.464 with 2 degrees of freedom: two-sided p = 0.0742
    assert paired_t_p([1, 2, 3]) == pytest.approx(0.0742, abs=5e-4)
    assert paired_t_p([1, 2]) is None  # fewer than 3 seeds: no test
    assert paired_t_p([0, 0, 0]) == 1.0 and paired_t_p([2, 2, 2]) == 0.0  # no spread


def test_claims_are_paired_single_factor_comparisons_with_holm():
    # the seeds differ by far more than the variants, but dual is 2 points above text-fv on every seed
    runs = _runs([30, 50, 70, 40], [32.1, 51.9, 72, 42.2])
    (unseen, seen) = paired_claims(runs, ["unseen", "seen"])
    assert unseen.claim == "unseen: dual prompts >= text prompts (guidance F_v)" and unseen.higher == 4
    assert unseen.mean == pytest.approx(2.05) and unseen.p < 0.01 and unseen.verdict == "holds"
    small, large = sorted((unseen.p, seen.p))  # Holm over the family of two
    expected = {small: min(1, 2 * small), large: max(min(1, 2 * small), large)}
    assert unseen.p_holm == pytest.approx(expected[unseen.p]) and seen.p_holm == pytest.approx(expected[seen.p])
    assert "A higher for 4/4 seeds" in unseen.line() and "Holm-adjusted" in unseen.line()
    reversed_ = paired_claims(_runs([32, 52, 72, 42], [30, 50, 70.1, 40]), ["unseen"])[0]
    assert reversed_.verdict == "does NOT hold (reversed)"
    noisy = paired_claims(_runs([30, 50, 70, 40], [33, 48, 71, 39]), ["unseen"])[0]
    assert noisy.verdict == "no difference detected"
    assert "fewer than 3 seeds" in paired_claims(_runs([30, 50], [32, 52]), ["unseen"])[0].verdict
    # only claims whose two variants both ran; a two-factor pair (dual vs text, which also changes the guidance) is none
    assert paired_claims(_runs([30, 50, 70], [32, 52, 72], a="text"), ["unseen"]) == []
    lines = verdicts(_runs([30, 31, 32], [40, 41, 42]), {"unseen": 3.3, "seen": 0.8})
    assert any("clearly above chance" in line for line in lines)
    assert all(a != "text" or b != "dual" for _, a, b in CLAIMS)  # every claim changes one factor


def test_table_and_figure(tmp_path):
    s = summarize(_runs([30, 31, 32], [40, 41, 42]))
    table = markdown_table(
        s, {k: v.title for k, v in VARIANTS.items()}, {"seen": 0.8, "unseen": 3.3}, {"seen": 2.0, "unseen": 9.0}
    )
    assert "| text prompts, visual cost volumes F_v | 7.8 ± 0.2 | - | 31.0 ± 1.0 | - |" in table
    assert "chance" in table and "CLIP dense" in table
    img = np.zeros((32, 32, 3), np.uint8)
    lab = np.full((32, 32), -1)
    lab[8:20, 8:20] = 2
    path = figure(tmp_path / "f.png", [img], [lab], {"dual pass 1": [lab.clip(0)]}, ["a", "b", "c"], "t")
    assert path.stat().st_size > 1000

"""The analysis scripts in benchmarks/ (early rejection, the study's diagnoses) parse the options their docs quote
(their runs take minutes of trained models; what they compute is tested through the model and evaluator tests, and
unseen_by_failure.py on a hand-made results file below)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import BENCHMARKS

QUOTED = {
    "early_rejection_accuracy.py": ["--topk", "--from", "--rank", "--seeds", "--num-val", "--json"],
    "early_rejection_diagnosis.py": ["--models", "--data", "--split", "--topk", "--max-images", "--json"],
    "aux_head_fit.py": ["--model", "--data", "--steps", "--lr", "--json"],
    "method_study.py": ["--variants", "--per-class", "--seeds", "--num-val", "--out"],
    "unseen_by_failure.py": ["--split", "--pass", "--json"],
    "prompt_filter_probe.py": ["--bank", "--splits"],
    "archive_quickstart.py": ["--json"],
    "profile_training.py": ["--variant", "--steps", "--threads", "--cache"],
}


@pytest.mark.parametrize("script", sorted(QUOTED))
def test_the_options_the_docs_quote_exist(script):
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for option in QUOTED[script]:
        assert option in out.stdout, (script, option)


def test_a_rejection_k_below_one_is_refused():
    out = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "early_rejection_diagnosis.py"),
            "--models",
            "m",
            "--data",
            "d",
            "--topk",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "--topk must be at least 1, got 0" in out.stderr


def test_unseen_by_failure_splits_by_the_designed_hard_classes_and_pairs_by_seed(tmp_path):
    """Two hard unseen classes (failure_profile: green dotted circle, blue solid square) and one other; hand-made IoUs.
    DPSeg - visual: seed 0 hard (30+10)/2 - (10+0)/2 = 15, other 60 - 50 = 10; seed 1 hard 20 - 10 = 10, other 0."""
    import json

    def run(hard_a, hard_b, other):
        iou = {"green dotted circle": hard_a, "blue solid square": hard_b, "yellow dotted square": other}
        return {"unseen": {"pass1": {"per_class_IoU": {**iou, "red striped star": None}}}}

    results = {
        "runs": {
            "dual": {"0": run(30.0, 10.0, 60.0), "1": run(20.0, 20.0, 50.0)},
            "visual": {"0": run(10.0, 0.0, 50.0), "1": run(10.0, 10.0, 50.0)},
        }
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "unseen_by_failure.py"),
            str(tmp_path / "results.json"),
            "--json",
            str(tmp_path / "split.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["hard_classes"] == ["blue solid square", "green dotted circle"]
    assert split["paired"]["visual"] == {"seeds": ["0", "1"], "hard": [15.0, 10.0], "other": [10.0, 0.0]}
    assert "| visual | +12.5 ± 3.5 | 2/2 | +5.0 ± 7.1 | 1/2 |" in out.stdout


def test_archive_quickstart_keeps_the_numbers_and_the_example_check_not_the_paths(tmp_path):
    import json

    metrics = {"mIoU": 40.0, "fwIoU": 41.0, "mAcc": 42.0, "pAcc": 43.0, "per_class_IoU": {"red solid circle": 40.0}}
    results = {
        "budget": {"variants": ["dual"], "seeds": 1, "iterations": 400, "num_val": 30},
        "settings": {"model": {"visual_prompt_keep": 0.5}},
        "runs": {"dual": {"0": {"unseen": {"pass1": metrics}}}},
        **{k: {} for k in ("summary", "chance", "clip_dense", "tiny_clip_zero_shot", "timings_s")},
        "verdicts": [],
        "example_check": {"summary": "5 of 25 objects right"},
        "prompt_bank": "/somewhere/bank-0123",
        "markdown": "# dpseg quickstart",
    }
    src, dst = tmp_path / "results.json", tmp_path / "kept" / "quickstart.json"
    src.write_text(json.dumps(results))
    cmd = [sys.executable, str(BENCHMARKS / "archive_quickstart.py")]
    out = subprocess.run([*cmd, str(src), "--json", str(dst)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kept = json.loads(dst.read_text())
    assert kept["runs"]["dual"]["0"]["unseen"]["pass1"] == {"mIoU": 40.0, "fwIoU": 41.0, "mAcc": 42.0, "pAcc": 43.0}
    assert kept["settings"] == results["settings"] and kept["example_check"] == results["example_check"]
    assert "prompt_bank" not in kept and "1 key variants x 1 seeds, 400 steps" in kept["what"]
    assert dst.with_suffix(".md").read_text().endswith("# dpseg quickstart")
    out = subprocess.run([*cmd, str(tmp_path / "none.json"), "--json", str(dst)], capture_output=True, text=True)
    assert out.returncode != 0 and "none.json does not exist: give the results.json" in out.stderr


def test_profile_training_splits_a_real_run_into_its_parts(tmp_path):
    """Two steps of the quickstart's DPSeg run through the engine (datasets and bank made in an empty cache): every
    part of a step is found in the profile, and the shares are of the profiled time."""
    out = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "profile_training.py"),
            "--steps",
            "2",
            "--budget",
            "fast",
            "--cache",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = (
        re.match(r"  (forward|loss|backward|optimizer|data|other) +([\d.]+) s +([\d.]+) %", line)
        for line in out.stdout.splitlines()
    )
    shares = {m.group(1): float(m.group(3)) for m in rows if m}
    assert set(shares) == {"forward", "loss", "backward", "optimizer", "data", "other"}, out.stdout
    assert all(v > 0 for k, v in shares.items() if k != "other") and abs(sum(shares.values()) - 100) < 0.5

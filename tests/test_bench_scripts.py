"""The early-rejection analysis scripts in benchmarks/ parse the options their docs quote (their runs take minutes
of trained models; what they compute is tested through the model and evaluator tests)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import BENCHMARKS

QUOTED = {
    "early_rejection_accuracy.py": ["--topk", "--from", "--rank", "--seeds", "--num-val", "--json"],
    "early_rejection_diagnosis.py": ["--models", "--data", "--split", "--topk", "--max-images", "--json"],
    "aux_head_fit.py": ["--model", "--data", "--steps", "--lr", "--json"],
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

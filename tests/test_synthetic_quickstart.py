"""dpseg quickstart --fast: every stage runs through the real code, writes its outputs, and a rerun reuses the cache."""

import json
import math

import pytest

from pathlib import Path

from dpseg.cli import main
from dpseg.quickstart import default_artifacts


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quickstart")
    rc = main(["quickstart", "--fast", "--out", str(root / "out"), "--cache", str(root / "cache")])
    return root, rc


@pytest.mark.slow
def test_fast_quickstart_finishes_and_beats_chance_on_seen_classes(fast_run):
    root, rc = fast_run
    assert rc == 0
    out = root / "out"
    results = json.loads((out / "results.json").read_text())
    assert (out / "figure.png").stat().st_size > 10_000 and (out / "results.md").read_text().startswith("# dpseg quickstart")
    assert set(results["runs"]) == {"text", "dual"}
    dual = results["runs"]["dual"]["0"]
    assert set(dual) == {"seen", "unseen"} and set(dual["unseen"]) == {"pass1", "pass2"}  # refinement ran
    assert set(results["runs"]["text"]["0"]["unseen"]) == {"pass1"}  # a text-only model has no visual prompts to refine
    for by_seed in results["runs"].values():
        for split in by_seed["0"].values():
            for metrics in split.values():
                assert 0 <= metrics["mIoU"] <= 100 and not math.isnan(metrics["mIoU"])
    chance = results["chance"]
    assert 0 < chance["seen"] < chance["unseen"] < 10  # 59 vs 16 classes
    best_seen = max(r["0"]["seen"]["pass1"]["mIoU"] for r in results["runs"].values())
    assert best_seen > chance["seen"], (best_seen, chance)
    zero_shot = results["tiny_clip_zero_shot"]["seen/scene-objects"]  # checked at the scene resolution
    assert zero_shot["accuracy"] > 2 * zero_shot["chance"], zero_shot
    model, bank = default_artifacts(root / "cache")  # what `dpseg demo` shows: the dual model, seed 0, with its bank
    assert model.name == "final" and model.parent.name.startswith("dual-seed0-") and bank == Path(results["prompt_bank"]).resolve()


@pytest.mark.slow
def test_rerun_reuses_every_stage(fast_run, capsys):
    root, _ = fast_run
    stamp = (root / "out" / "results.json").stat().st_mtime_ns
    assert main(["quickstart", "--fast", "--out", str(root / "out"), "--cache", str(root / "cache")]) == 0
    log = capsys.readouterr().out
    assert "reusing synthetic datasets" in log and "reusing tiny CLIP" in log and "0 classes built, 75 reused" in log
    assert log.count("reusing the trained run") == 2  # both DPSeg runs
    assert (root / "out" / "results.json").stat().st_mtime_ns != stamp


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["quickstart", "--fast", "--seeds", "0", "--cache", str(tmp_path)]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert main(["quickstart", "--fast", "--preset", "dpseg-b", "--cache", str(tmp_path)]) == 2
    assert "quickstart runs the 'synthetic' preset" in capsys.readouterr().err
    assert main(["quickstart", "--fast", "--cache", str(tmp_path), "--set", "prompts.generator=/some/sd15"]) == 2
    assert "synthetic world's generator" in capsys.readouterr().err

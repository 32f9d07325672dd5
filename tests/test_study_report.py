"""benchmarks/study_report.py: the study's tables and paired contrasts from hand-made world files."""

from __future__ import annotations

import json
import sys

from helpers import load_benchmark

study_report = load_benchmark("study_report")

SPLITS = ("seen", "unseen", "unseen-all")


def _world(name: str, values: dict[str, list[float]]) -> dict:
    """A world whose every split and pass of variant v, seed s has mIoU values[v][s] (pass 2: one more)."""
    runs = {
        v: {
            str(s): {split: {"pass1": {"mIoU": x}, "pass2": {"mIoU": x + 1}} for split in SPLITS}
            for s, x in enumerate(xs)
        }
        for v, xs in values.items()
    }
    refs = {split: 5.0 for split in SPLITS}
    return {
        "world": name,
        "what": f"{name}: a test world",
        "runs": runs,
        "budget": {"num_val": 100},
        "clip_dense": refs,
        "chance": refs,
    }


def test_report_pairs_by_seed_and_sets_controls_beside_the_main_world(tmp_path):
    main = {
        "text": [10, 20, 30, 40],
        "visual": [12, 22, 31, 45],
        "dual": [15, 25, 35, 45],
        "dual-upsampled": [11, 21, 31, 41],
    }
    control = {"text": [10, 20, 30], "visual": [10, 20, 30], "dual": [10, 20, 30], "dual-upsampled": [10, 20, 30]}
    (tmp_path / "main.json").write_text(json.dumps(_world("main", main)))
    (tmp_path / "no-generator-failures.json").write_text(json.dumps(_world("no-generator-failures", control)))
    text = study_report.report(study_report.load(tmp_path))

    # the main table: mean ± sample std over the 4 seeds of text, pass 1 and pass 2
    assert "| text prompts, upsampled F_c (SED-like baseline) | 25.0 ± 12.9 | 26.0 ± 12.9 |" in text
    # a claim: dual - visual per seed = 3, 3, 4, 0 -> mean 2.5, A higher on 3 of 4
    assert "| unseen: dual prompts >= visual prompts (guidance F_v) | 30.0 | 27.5 | +2.5 ± 1.7 | 3/4 |" in text
    # pass 2 against pass 1 of the same models: +1 on every seed (no spread: p = 0)
    assert "| unseen: pass 2 >= pass 1 (DPSeg) | 31.0 | 30.0 | +1.0 ± 0.0 | 4/4 | 0 |" in text
    # the control world: identical variants give zero differences; the main world beside it uses seeds 0-2 only
    assert (
        "| no-generator-failures | (b) the generator's failures | 3 | +0.0 ± 0.0 (0/3, no difference detected)" in text
    )
    assert "| main (same seeds) | nothing | 3 | +3.3 ± 0.6 (3/3, holds)" in text
    # each row ends with DPSeg's refinement gain (pass 2 = pass 1 + 1 here) and its pass-1 mIoU on those seeds
    control_row = next(line for line in text.splitlines() if line.startswith("| no-generator-failures |"))
    assert control_row.endswith("| +1.0 ± 0.0 (3/3) | 20.0 ± 10.0 |")
    main_row = next(line for line in text.splitlines() if line.startswith("| main (same seeds) |"))
    assert main_row.endswith("| +1.0 ± 0.0 (3/3) | 25.0 ± 10.0 |")


def test_controls_sit_beside_the_main_world_trained_as_long_as_they_were(tmp_path):
    """After the training length changes, controls still run at the old length are set beside the archived main world
    of that length (main-iterations<N>.json), never beside a main world trained longer; without one the row says
    that the lengths differ."""
    four = ("text", "visual", "dual", "dual-upsampled")
    long_main = _world("main", {v: [50, 60, 70] for v in four}) | {"budget": {"num_val": 100, "iterations": 400}}
    old_main = _world("main-iterations260", {"text": [10, 20, 30], "visual": [10, 20, 30], "dual": [12, 23, 34]})
    old_main["runs"]["dual-upsampled"] = old_main["runs"]["text"]
    old_main["budget"]["iterations"] = 260
    control = _world("no-text-gap", {v: [10, 20, 30] for v in four}) | {"budget": {"num_val": 100, "iterations": 260}}
    (tmp_path / "main.json").write_text(json.dumps(long_main))
    (tmp_path / "no-text-gap.json").write_text(json.dumps(control))
    text = study_report.report(study_report.load(tmp_path))
    assert "| main (same seeds; 400 steps, the control 260) | nothing | 3 | +0.0 ± 0.0" in text
    (tmp_path / "main-iterations260.json").write_text(json.dumps(old_main))
    text = study_report.report(study_report.load(tmp_path))
    # dual - visual on seeds 0-2 of the 260-step main world: 2, 3, 4
    assert "| main at 260 steps (same seeds) | nothing | 3 | +3.0 ± 1.0 (3/3" in text
    assert "400 steps" not in text.split("## Control worlds")[1]
    assert "mIoU %, mean ± std over 3 seeds, 100 test scenes per vocabulary, 400 training steps." in text
    assert "**no-text-gap** — no-text-gap: a test world (260 training steps)" in text
    assert text.count("## Main world") == 1  # the archived main world is a reference, not a second study


def test_report_without_world_files_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["study_report.py", "--study-dir", str(tmp_path)])
    try:
        study_report.main()
    except SystemExit as e:
        assert "run benchmarks/method_study.py first" in str(e)
    else:
        raise AssertionError("no error without world files")


def test_a_changed_default_is_reported_paired_and_controls_keep_their_defaults(tmp_path):
    """After model.visual_prompt_keep changes, the current main world is set against the archived one (main-keep1)
    variant by variant, paired by seed; controls run with the old filter sit beside main-keep1, not the new main."""
    four = ("text", "visual", "dual", "dual-upsampled")
    settings = {"settings": {"model": {"visual_prompt_keep": 0.5}}}
    new = _world(
        "main", {"text": [10, 20, 30], "visual": [13, 22, 35], "dual": [15, 26, 33], "dual-upsampled": [1, 2, 3]}
    )
    old = _world(
        "main-keep1", {"text": [10, 20, 30], "visual": [10, 20, 30], "dual": [12, 23, 34], "dual-upsampled": [1, 2, 3]}
    )
    control = _world("no-text-gap", {v: [10, 20, 30] for v in four})
    (tmp_path / "main.json").write_text(json.dumps(new | settings))
    (tmp_path / "main-keep1.json").write_text(json.dumps(old))  # written before the option: keep 1
    (tmp_path / "main-keep1-per-class.json").write_text("{}")  # per-class tables are not worlds
    (tmp_path / "no-text-gap.json").write_text(json.dumps(control))
    text = study_report.report(study_report.load(tmp_path))
    section = text.split("### What a default change did: main now (visual_prompt_keep 0.5, before: 1) - main-keep1")[1]
    # dual: 15 - 12, 26 - 23, 33 - 34 -> +1.7 +- 2.3, higher on 2 of 3; text is untouched by the filter: zero
    assert (
        "| dual prompts, visual cost volumes F_v (DPSeg): unseen pass 1 | 24.7 | 23.0 | +1.7 ± 2.3 | 2/3 |" in section
    )
    assert (
        "| text prompts, upsampled F_c (SED-like baseline): seen pass 2 | 21.0 | 21.0 | +0.0 ± 0.0 | 0/3 |" in section
    )
    # the control sits beside the main world with its own filter: dual - visual there is 2, 3, 4
    assert "| main with visual_prompt_keep 1 (same seeds) | nothing | 3 | +3.0 ± 1.0 (3/3" in text
    assert "| main (same seeds" not in text


def test_a_control_rerun_under_new_defaults_keeps_its_archived_copy_beside_the_old_main(tmp_path):
    """A control run again after a default changed (no-style-gap.json) and its archived copy (no-style-gap-keep1.json)
    each sit beside the main world of their own defaults, and the control gets its own default-change section."""
    four = ("text", "visual", "dual", "dual-upsampled")
    keep = {"settings": {"model": {"visual_prompt_keep": 0.5}}}
    new_main = _world(
        "main", {"text": [10, 20, 30], "visual": [13, 22, 35], "dual": [15, 26, 33], "dual-upsampled": [1, 2, 3]}
    )
    old_main = _world(
        "main-keep1", {"text": [10, 20, 30], "visual": [10, 20, 30], "dual": [12, 23, 34], "dual-upsampled": [1, 2, 3]}
    )
    new_control = _world(
        "no-style-gap",
        {"text": [10, 20, 30], "visual": [11, 21, 31], "dual": [14, 24, 34], "dual-upsampled": [1, 2, 3]},
    )
    old_control = _world("no-style-gap", {v: [10, 20, 30] for v in four})
    (tmp_path / "main.json").write_text(json.dumps(new_main | keep))
    (tmp_path / "main-keep1.json").write_text(json.dumps(old_main))
    (tmp_path / "no-style-gap.json").write_text(json.dumps(new_control | keep))
    (tmp_path / "no-style-gap-keep1.json").write_text(json.dumps(old_control))
    (tmp_path / "no-style-gap-keep1-per-class.json").write_text("{}")
    worlds = study_report.load(tmp_path)
    assert list(worlds) == ["main", "main-keep1", "no-style-gap", "no-style-gap-keep1"]
    text = study_report.report(worlds)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| no-style-gap | (c') the style gap, via the generator | 3 |") for r in rows)
    assert any(r.startswith("| no-style-gap-keep1 | (c') the style gap, via the generator | 3 |") for r in rows)
    # dual - visual in the main world of each control's defaults: 2, 4, -2 (keep 0.5) and 2, 3, 4 (keep 1)
    assert "| main (same seeds) | nothing | 3 | +1.3 ± 3.1 (2/3" in text
    assert "| main with visual_prompt_keep 1 (same seeds) | nothing | 3 | +3.0 ± 1.0 (3/3" in text
    assert "**no-style-gap** — no-style-gap: a test world (visual_prompt_keep 0.5)" in text
    section = text.split(
        "### What a default change did: no-style-gap now (visual_prompt_keep 0.5, before: 1) - no-style-gap-keep1"
    )[1]
    assert (
        "| dual prompts, visual cost volumes F_v (DPSeg): unseen pass 1 | 24.0 | 20.0 | +4.0 ± 0.0 | 3/3 |" in section
    )

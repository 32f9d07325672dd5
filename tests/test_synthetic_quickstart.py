"""dpseg quickstart --fast: every stage runs through the real code, writes its outputs, and a rerun reuses the cache."""

import contextlib
import json
import math
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpseg.checkpoint import load_model
from dpseg.commands import main
from dpseg.evaluation.calibrate import read_calibration
from dpseg.quickstart import default_artifacts


@pytest.fixture(scope="module")
def fast_run(quickstart_fast):
    return quickstart_fast  # one --fast run per test session (conftest.py)


@pytest.mark.slow
def test_fast_quickstart_finishes_and_beats_chance_on_seen_classes(fast_run):
    root, rc = fast_run
    assert rc == 0
    out = root / "out"
    results = json.loads((out / "results.json").read_text())
    assert (out / "figure.png").stat().st_size > 10_000 and (out / "results.md").read_text().startswith(
        "# dpseg quickstart"
    )
    assert set(results["runs"]) == {"text", "dual"}
    # the settings every run shared, so a results file says which defaults made it (the preset's prompt filter)
    assert (
        results["settings"]["model"]["visual_prompt_keep"] == 0.5
        and "clip_pretrained" not in results["settings"]["model"]
    )
    dual = results["runs"]["dual"]["0"]
    assert set(dual) == {"seen", "unseen", "unseen-all"}  # unseen-all: unseen scenes scored against all 75 names
    assert all(set(dual[split]) == {"pass1", "pass2"} for split in dual)  # refinement ran
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
    assert (
        model.name == "final"
        and model.parent.name.startswith("dual-seed0-")
        and bank == Path(results["prompt_bank"]).resolve()
    )
    # its score threshold (segment's and the demo's default) was chosen on the seen-class validation scenes
    calibration = read_calibration(model)
    assert calibration["dataset"] == str(Path(results["datasets"]) / "seen")
    assert calibration["background_class"] is False
    assert load_model(model)[1].eval.min_score == calibration["min_score"]
    example = out / "example"  # the scenes the README's next commands use
    for sub in ("images", "labels"):
        assert len(list((example / sub / "val").glob("*.png"))) == 8


@pytest.mark.slow
def test_the_example_check_at_threshold_zero_leaves_nothing_unlabelled_and_the_demo_pointer_alone(fast_run):
    from dpseg.quickstart.example import EXAMPLE_POINTER, check_example

    root, _ = fast_run
    model, bank = default_artifacts(root / "cache")
    pointer = (model / EXAMPLE_POINTER).read_bytes()
    check = check_example(root / "out" / "example", model, bank, log=lambda _: None, min_score=0.0, point_demo=False)
    assert check["min_score"] == 0.0 and check["counts"]["unlabelled"] == 0  # every pixel has a class at 0
    assert check["counts"]["objects"] == check["counts"]["right"] + check["counts"]["wrong"] > 0
    assert (model / EXAMPLE_POINTER).read_bytes() == pointer  # the demo still shows the quickstart's own example


@pytest.mark.slow
def test_rerun_reuses_every_stage(fast_run, capsys):
    root, _ = fast_run
    stamp = (root / "out" / "results.json").stat().st_mtime_ns
    assert main(["quickstart", "--fast", "--out", str(root / "out"), "--cache", str(root / "cache")]) == 0
    log = capsys.readouterr().out
    assert "reusing synthetic datasets" in log and "reusing tiny CLIP" in log and "0 classes built, 75 reused" in log
    assert log.count("reusing the trained run") == 2  # both DPSeg runs
    assert (root / "out" / "results.json").stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_a_moved_cache_is_reused_but_a_run_that_other_code_trained_is_trained_again(fast_run, tmp_path, capsys):
    """Runs are keyed by what identifies their inputs' content (the CLIP's SHA-256, the keyed dataset and bank folder
    names), not by absolute paths: a cache copied elsewhere (another checkout, another disk) is reused. And they are
    checked against the code: a run whose model (and checkpoints) other code made is emptied and trained again, then
    evaluated again; the same code trains it bit for bit."""
    from dpseg.engine import training_code
    from dpseg.quickstart.experiment import CODE_STAMP, EVAL_CACHE

    root, _ = fast_run
    moved = tmp_path / "moved"
    shutil.copytree(root / "cache", moved, symlinks=True)
    evaluated = {p: p.stat().st_mtime_ns for p in (moved / "runs").glob(f"*/{EVAL_CACHE}")}
    assert len(evaluated) == 2
    (run,) = (moved / "runs").glob("dual-seed0-*")
    weights = load_file(run / "final" / "model.safetensors")
    config = json.loads((run / "final" / "config.json").read_text())
    config["dpseg"]["training_code"] = "0123456789abcdef"  # as if an older dpseg had trained it
    (run / "final" / "config.json").write_text(json.dumps(config))
    (run / CODE_STAMP).write_text("0123456789abcdef\n")
    (run / "checkpoints" / "left-by-the-old-code").write_text("")
    assert main(["quickstart", "--fast", "--out", str(tmp_path / "out"), "--cache", str(moved)]) == 0
    assert capsys.readouterr().out.count("reusing the trained run") == 1  # the text run; dual seed 0 trained again
    (text_eval,) = (p for p in evaluated if run not in p.parents)
    assert text_eval.stat().st_mtime_ns == evaluated[text_eval]  # the reused run's evaluation reused too
    assert (run / EVAL_CACHE).stat().st_mtime_ns != evaluated[run / EVAL_CACHE]
    assert "discarding what" in (run / "quickstart.log").read_text()
    assert not (run / "checkpoints" / "left-by-the-old-code").exists()
    assert (run / CODE_STAMP).read_text().strip() == training_code()
    assert json.loads((run / "final" / "config.json").read_text())["dpseg"]["training_code"] == training_code()
    again = load_file(run / "final" / "model.safetensors")  # deterministic: the same model again
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)


def test_a_run_folder_is_resumed_only_with_this_codes_checkpoints(tmp_path, monkeypatch):
    """What trained_model_dir keeps before it trains: checkpoints this code began (to resume), never a final model
    is_trained refused nor anything other code (or code before the stamp) left."""
    from dpseg.config import build_config
    from dpseg.engine import training_code
    from dpseg.quickstart import experiment as ex

    trained = []
    monkeypatch.setattr(ex, "train", lambda cfg, **_: trained.append(cfg) or {"final": str(tmp_path / "made")})

    def folder(name, stamp, final=False):
        run = tmp_path / name
        (run / "checkpoints" / "step-00000002").mkdir(parents=True)
        if stamp:
            (run / ex.CODE_STAMP).write_text(stamp + "\n")
        if final:
            (run / "final").mkdir()
            (run / "final" / "config.json").write_text("{}")
        cfg = build_config("synthetic")
        cfg.train.output_dir = str(run)
        return run, cfg

    cases = {
        "this code, interrupted": (training_code(), False, True),
        "other code, interrupted": ("0123456789abcdef", False, False),
        "before the stamp existed": ("", False, False),
        "this code, a refused final model": (training_code(), True, False),
    }
    for name, (stamp, final, kept) in cases.items():
        run, cfg = folder(name.replace(" ", "-").replace(",", ""), stamp, final)
        log: list[str] = []
        assert ex.trained_model_dir(cfg, log=log.append) == tmp_path / "made"
        assert (run / "checkpoints").exists() == kept, name
        assert not (run / "final").exists(), name
        assert bool(log) != kept and (run / ex.CODE_STAMP).read_text() == training_code() + "\n", name
    assert len(trained) == len(cases)


def test_a_runs_identity_follows_the_clips_content_not_its_path(tmp_path):
    from dpseg.quickstart.experiment import run_identity

    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    a.write_bytes(b"same weights")
    b.write_bytes(b"same weights")
    c.write_bytes(b"other weights")

    def config(clip, data="/x/synthetic-abc/seen", bank="/x/bank-123"):
        return {
            "model": {"clip_pretrained": str(clip)},
            "data": {"train_dataset": data},
            "prompts": {"bank": bank},
            "train": {"output_dir": "anywhere", "seed": 0},
            "eval": {"min_score": 0.5},
        }

    assert run_identity(config(a)) == run_identity(config(b))
    assert run_identity(config(a)) != run_identity(config(c))
    assert run_identity(config(a)) == run_identity(config(a, "/elsewhere/synthetic-abc/seen", "/y/bank-123"))
    assert run_identity(config(a)) != run_identity(config(a, "/x/synthetic-def/seen"))
    assert run_identity(config(a)) != run_identity(config(a, bank="/x/bank-456"))
    assert run_identity({"model": "not a section"}) == {"model": "not a section"}  # a damaged config: no crash


@pytest.mark.slow
def test_changed_inference_settings_reevaluate_the_reused_runs(fast_run, tmp_path, capsys):
    """A trained run is reused when only ``eval`` settings change, but it is evaluated again, with the experiment's
    settings rather than those saved in its checkpoint (the demo run's checkpoint also holds a calibrated
    threshold)."""
    root, _ = fast_run
    out = tmp_path / "out"
    never = ["--set", "eval.refine_min_score=0.99", "--set", "eval.refine_min_area=0.999"]  # nothing is refined
    assert main(["quickstart", "--fast", "--out", str(out), "--cache", str(root / "cache"), *never]) == 0
    assert capsys.readouterr().out.count("reusing the trained run") == 2
    dual = json.loads((out / "results.json").read_text())["runs"]["dual"]["0"]
    for split in dual.values():
        assert split["pass2"]["mIoU"] == split["pass1"]["mIoU"]
    (cached,) = (root / "cache" / "runs").glob("dual-seed0-*/quickstart_eval.json")
    assert json.loads(cached.read_text())["key"]["eval"]["refine_min_score"] == 0.99
    # the model `dpseg segment` and the demo use adopts them too, and its threshold is chosen again with them
    model, _ = default_artifacts(root / "cache")
    saved = json.loads((model / "config.json").read_text())["eval"]
    assert (saved["refine_min_score"], saved["refine_min_area"]) == (0.99, 0.999)
    assert read_calibration(model) is not None


def test_a_model_folder_adopts_the_experiments_refinement_settings(tmp_path):
    from dpseg.config import build_config
    from dpseg.quickstart.experiment import adopt_inference_settings

    inference = build_config("synthetic").eval
    folder = tmp_path / "final"
    folder.mkdir()
    old = {"eval": {"two_pass": True, "refine_min_score": 0.3, "min_score": 0.2}, "model": {"x": 1}}
    (folder / "config.json").write_text(json.dumps(old))  # written before refine_crop_weight existed
    assert adopt_inference_settings(folder, inference)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["eval"]["refine_crop_weight"] == inference.refine_crop_weight == 0.25
    assert saved["eval"]["min_score"] == 0.2 and saved["model"] == {"x": 1}  # everything else kept
    assert not adopt_inference_settings(folder, inference)  # already holds them


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["quickstart", "--fast", "--seeds", "0", "--cache", str(tmp_path)]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert main(["quickstart", "--fast", "--clip-steps", "0", "--cache", str(tmp_path)]) == 2
    assert "--clip-steps must be >= 1" in capsys.readouterr().err
    assert main(["quickstart", "--fast", "--preset", "dpseg-b", "--cache", str(tmp_path)]) == 2
    assert "quickstart runs the 'synthetic' preset" in capsys.readouterr().err
    assert main(["quickstart", "--fast", "--cache", str(tmp_path), "--set", "prompts.generator=/some/sd15"]) == 2
    assert "synthetic world's generator" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, generator, text_gap, generator_images",
    [
        ([], None, True, False),
        (["--no-style-gap"], "synthetic:style=scene", True, False),
        (["--no-generator-failures"], "synthetic:failures=off", True, False),
        (
            ["--no-style-gap", "--no-generator-failures", "--no-text-gap"],
            "synthetic:style=scene,failures=off",
            False,
            False,
        ),
        (["--clip-sees-generator-images"], None, True, True),
    ],
)
def test_every_world_switch_reaches_the_experiment(flags, generator, text_gap, generator_images, tmp_path, monkeypatch):
    """The world's switches (its README): the generator's style and failures through prompts.generator, the CLIP's
    text gap and pretraining pool through the experiment's arguments."""
    import dpseg.commands.quickstart as command
    from dpseg.config import build_config
    from dpseg.prompts.generate import get_generator
    from dpseg.quickstart.run import BUDGETS, clip_settings

    seen = {}

    def fake(budget, cache, out, config_file, overrides, workers, **kw):
        seen.update(overrides=overrides, **kw)
        return {"markdown": ""}

    import dpseg.quickstart.run as experiment_run

    monkeypatch.setattr(experiment_run, "quickstart", fake)  # the command imports it when it runs
    monkeypatch.setattr(command, "next_commands", lambda out, cache: "")  # no trained model to point at
    monkeypatch.setattr(command, "brief", lambda results, out: "")  # no results to show
    assert main(["quickstart", "--cache", str(tmp_path), *flags]) == 0
    specs = [o.split("=", 1)[1] for o in seen["overrides"] if o.startswith("prompts.generator=")]
    assert specs == ([generator] if generator else [])
    assert seen["text_gap"] is text_gap and seen["clip_generator_images"] is generator_images
    cfg = build_config("synthetic", overrides=seen["overrides"])
    gen = get_generator(cfg.prompts.generator, cfg.prompts)
    assert gen.style == ("scene" if "--no-style-gap" in flags else "prompt")
    assert gen.failures == (0.0 if "--no-generator-failures" in flags else 1.0)
    settings = clip_settings(BUDGETS["default"], cfg, seen["text_gap"], gen.style, seen["clip_generator_images"])
    assert settings.generator_images is generator_images and settings.text_gap is text_gap


def readme_next_commands() -> list[str]:
    """The pasteable block that ends the README's quickstart section."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = section.split("**Next: three commands to paste**", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_quickstart_section_ends_with_the_next_commands():
    commands = [shlex.split(c, comments=True) for c in readme_next_commands()]
    assert [c[:2] for c in commands] == [["dpseg", "segment"], ["dpseg", "demo"], ["dpseg", "eval"]]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert section.index("**Next: three commands to paste**") > section.index("quickstart_figure.png")


@pytest.mark.slow
def test_the_readme_next_commands_run_as_pasted(fast_run, tmp_path, monkeypatch, capsys):
    import os
    import socket
    import urllib.request

    from PIL import Image

    root, rc = fast_run
    assert rc == 0
    # the folder where the user ran `dpseg quickstart`: its default --out and cache
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "quickstart").symlink_to(root / "out")
    (tmp_path / ".dpseg_cache").mkdir()
    (tmp_path / ".dpseg_cache" / "quickstart").symlink_to(root / "cache")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DPSEG_CACHE", raising=False)
    segment, demo, evaluate = (shlex.split(c, comments=True) for c in readme_next_commands())

    assert main(segment[1:]) == 0
    err = capsys.readouterr().err
    assert "no --checkpoint: using the quickstart model" in err and "toy model of `dpseg quickstart`" in err
    labels = sorted((tmp_path / "runs" / "segment").glob("0*[0-9].png"))
    assert len(labels) == 8 and Image.open(labels[0]).mode == "P"

    assert main(evaluate[1:]) == 0
    assert "evaluating the quickstart model" in capsys.readouterr().err
    assert "mIoU" in (tmp_path / "runs" / "eval" / "results.md").read_text()

    with socket.socket() as s:  # the demo as pasted, on a free port; stopped once it serves its page
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpseg", *demo[1:], "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # PYTHONPATH: run from tmp_path, `python -m dpseg` is still this checkout's, not the venv's installed one
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    lines: list = []  # the demo's output, read as it comes: its "open http://..." line follows the server's start
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    page = ""
    try:
        deadline = time.time() + 300
        while not page and time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    page = response.read().decode()
            except OSError:
                time.sleep(1)
        while page and time.time() < deadline and not any("open http" in line for line in lines):
            time.sleep(0.2)  # served before launch() returned: wait for the line rather than kill the demo first
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=60)
    output = "".join(lines)
    assert "dpseg demo" in page, output[-3000:]
    assert f"open http://127.0.0.1:{port}" in output and "no public link is made" in output
    assert "share=True" not in output


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids |= {int(k) for k in (task / "children").read_text().split()}
    return kids


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux's /proc")
def test_sigterm_stops_the_training_processes_too(fast_run, tmp_path):
    """SIGTERM (a scheduler's time limit, kill) ends the quickstart like Ctrl-C: its training processes stop with it
    instead of running on as orphans, and the command says it was interrupted (exit 128 + 15)."""
    root, _ = fast_run
    cache = shutil.copytree(root / "cache", tmp_path / "cache", ignore=shutil.ignore_patterns("runs"))
    cmd = [sys.executable, "-m", "dpseg", "quickstart", "--fast", "--jobs", "2", "--seeds", "2"]
    proc = subprocess.Popen(
        [*cmd, "--cache", str(cache), "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + 300
    workers: set[int] = set()
    while time.time() < deadline and proc.poll() is None and len(workers) < 2:
        time.sleep(0.5)
        if any("4/6 training" in line for line in lines):  # the runs' pool is up: its processes are children
            workers = {pid for pid in _children(proc.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()}
    assert len(workers) >= 2, "".join(lines)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, "".join(lines)
    reader.join(timeout=10)
    deadline = time.time() + 20
    while time.time() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(_running(pid) for pid in workers), "training processes outlived the quickstart"
    assert "interrupted; finished work is kept" in "".join(lines)


@pytest.mark.slow
def test_choosing_on_seen_classes_reuses_the_quickstart_runs_and_scores_them_alike(fast_run, tmp_path):
    """benchmarks/choose_on_seen.py (method study sections 2-3) trains and scores exactly as the quickstart does: on
    the quickstart's cache it reuses the DPSeg run and scores it on the seen classes' validation scenes as the
    quickstart's evaluator does; an inference option that refines nothing gives pass 2 = pass 1 from the same run."""
    root, _ = fast_run
    script = Path(__file__).parents[1] / "benchmarks" / "choose_on_seen.py"
    never = "eval.refine_min_score=0.99 eval.refine_min_area=0.999"
    cmd = [sys.executable, str(script), "--budget", "fast", "--variant", "dual", "--seeds", "1", "--num-val", "8"]
    out = subprocess.run(
        [*cmd, "--cache", str(root / "cache"), "--eval", "", "--eval", never, "--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert out.stdout.count("(trained run reused)") == 2 and "| (preset) | (preset) | " in out.stdout
    # the reused DPSeg run scored on the seen classes' validation scenes (choices never see the test scenes) with
    # the quickstart's evaluator and the run's inference settings, independently of the script
    from dpseg.config import build_config
    from dpseg.data.synthetic.folders import CHOICE_SPLIT
    from dpseg.quickstart import experiment as ex

    records = {p.parent: json.loads(p.read_text()) for p in (root / "cache").glob("runs/*/quickstart_eval.json")}
    ((run_dir, record),) = [(d, r) for d, r in records.items() if r["key"]["variant"] == "dual"]  # seed 0
    folder, split = record["key"]["splits"]["seen"].rsplit(":", 1)
    assert split == CHOICE_SPLIT

    def seen_val(eval_overrides: str) -> dict:
        eval_cfg = build_config("synthetic", overrides=eval_overrides.split()).eval
        seen = root / "cache" / folder  # the key names the keyed folder, not its path
        scored = ex.evaluate_model(run_dir / "final", {"seen": seen}, ex.VARIANTS["dual"], 8, eval_cfg, split)
        return {p: m["mIoU"] for p, m in scored["seen"].items()}

    assert results["(preset) | (preset)"] == [seen_val("")]
    (never_refined,) = results[f"(preset) | {never}"]
    assert never_refined == seen_val(never) and never_refined["pass2"] == never_refined["pass1"]
    assert never_refined["pass1"] == results["(preset) | (preset)"][0]["pass1"]

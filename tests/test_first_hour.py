"""A new user's first hour (issue 24): the quickstart's own check of its example scenes, the demo's example end to end
in Chromium against the Python API, no dead ends for photos with the toy model (the suggested commands run), one
clear line per mistake, colours from colour words, and nothing left behind."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from segment_helpers import artifacts, scene

from dpseg.commands import demo, main
from dpseg.quickstart import demo_example
from dpseg.quickstart.example import describe, ground_truth_objects, score_objects
from dpseg.visualize import COLOUR_WORDS, class_palette, palette

SED_FIXTURE = Path(__file__).parent / "fixtures" / "sed"


def toy_checkpoint(folder: Path) -> Path:
    """The tiny test checkpoint dressed as the quickstart's toy (preset synthetic, as `dpseg quickstart` exports)."""
    toy = shutil.copytree(artifacts().ckpt, folder)
    config = json.loads((toy / "config.json").read_text())
    (toy / "config.json").write_text(json.dumps({**config, "preset": "synthetic"}))
    return toy


def as_quickstart(tmp_path: Path, monkeypatch, model: Path, bank: Path) -> Path:
    """Make ``model`` and ``bank`` the last quickstart's (``$DPSEG_CACHE/quickstart/latest.json``)."""
    cache = tmp_path / "cache" / "quickstart"
    cache.mkdir(parents=True)
    (cache / "latest.json").write_text(json.dumps({"model": str(model), "variant": "dual", "bank": str(bank)}))
    monkeypatch.setenv("DPSEG_CACHE", str(tmp_path / "cache"))
    return cache


# ------------------------------------------------------------------------------------------ the example check
def test_objects_are_scored_right_wrong_or_unlabelled_by_majority():
    label = np.full((40, 40), 255, np.uint8)
    label[0:10, 0:10] = 0  # an object of class 0
    label[20:30, 20:30] = 1  # class 1 ...
    label[0:3, 30:33] = 1  # ... and a 9-pixel piece of it: too small to score
    label[30:40, 0:10] = 2
    predicted = np.full((40, 40), 255, np.uint8)  # 255: unlabelled
    predicted[0:10, 0:7] = 0  # 70 % right
    predicted[20:30, 20:30] = 2  # all wrong
    assert [k for k, _ in ground_truth_objects(label)] == [0, 1, 2]
    rows = score_objects(label, predicted, ["a", "b", "c"], 255)
    assert [(r["class"], r["verdict"], r["predicted"]) for r in rows] == [
        ("a", "right", "a"),
        ("b", "wrong", "c"),
        ("c", "unlabelled", None),
    ]
    assert rows[0]["majority"] == 0.7 and rows[0]["pixels"] == 100
    assert describe(rows) == "a right, b wrong (c), c unlabelled"


@pytest.mark.slow
def test_the_quickstart_checks_its_example_scenes_and_names_the_demos(quickstart_fast, capsys):
    """The check in results.json / results.md is what Segmenter gives on those scenes (the path `dpseg segment` and
    the demo take), and the demo's example is its first scene; the console shows a short summary."""
    from dpseg.quickstart import default_artifacts
    from dpseg.segmenter import Segmenter
    from dpseg.vocab import read_class_list

    root, rc = quickstart_fast
    assert rc == 0
    out, cache = root / "out", root / "cache"
    results = json.loads((out / "results.json").read_text())
    check = results["example_check"]
    assert check["counts"]["objects"] == sum(check["counts"][v] for v in ("right", "wrong", "unlabelled")) > 0
    assert check["summary"] in (out / "results.md").read_text()
    assert [s["image"] for s in check["scenes"]] == sorted(p.name for p in (out / "example/images/val").glob("*.png"))
    model, bank = default_artifacts(cache)
    example = demo_example(model)  # named in the demo model's folder: found with or without --checkpoint
    assert example is not None and Path(example["image"]) == (out / "example/images/val/00000.png").resolve()
    assert example["objects"] == check["scenes"][0]["objects"]
    assert demo_example(root / "cache") is None  # a folder that is no quickstart model
    names = read_class_list(out / "example" / "classes.txt")
    assert example["classes"] == "; ".join(names)
    seg = Segmenter.from_pretrained(model, device="cpu", bank=str(bank)).set_vocabulary(example["classes"])
    result = seg.segment(example["image"])
    label = np.asarray(Image.open(out / "example/labels/val/00000.png"))
    assert score_objects(label, result.labels, names, result.unlabelled_value) == example["objects"]
    mode = (out / "example").stat().st_mode & 0o777
    assert mode == 0o777 & ~_umask(), oct(mode)  # an ordinary folder, not mkdtemp's 0700
    # a rerun reuses everything; the console ends with a short summary, not the whole results.md
    assert main(["quickstart", "--fast", "--out", str(out), "--cache", str(cache)]) == 0
    printed = capsys.readouterr().out
    tail = printed[printed.index("6/6 report") :]
    assert check["summary"].split(":")[0] in tail and "results.md" in tail and "## Tiny CLIP" not in tail
    assert len(tail.splitlines()) < 30, tail
    # the training stage counts its runs; with every run reused there is no time left to estimate
    assert re.search(r"run 1/2: .* \(reusing the trained run\)", printed), printed
    assert "min left" not in printed, printed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------- the demo, in Chromium
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium():
    from test_demo import CHROME_FLAGS, CHROMEDRIVER, CHROMIUM

    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"Chromium not installed ({CHROMIUM}, {CHROMEDRIVER}): apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='dpseg-test-chromium-')}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


CHECKOUT = Path(__file__).resolve().parents[1]


def _start_demo(cwd: Path, env: dict, *args: str):
    """`dpseg demo ARGS` on a free port in a subprocess, in ``cwd``, without $DPSEG_CACHE; (process, url, its output
    lines so far)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpseg", "demo", "--port", str(port), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if k != "DPSEG_CACHE"},
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONPATH": str(CHECKOUT),  # run from another folder, `python -m dpseg` is still this checkout's
            **env,
        },
    )
    lines: list = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any("open http" in line for line in lines):
        time.sleep(0.5)
    assert any("open http" in line for line in lines), "".join(lines)[-3000:]
    return proc, f"http://127.0.0.1:{port}/", lines


def test_the_training_stages_eta_goes_down_as_runs_finish():
    """The default run's own run times (2 cores, 2 at a time): the time left falls with every finished run, where a
    rate since the stage began rose between the two runs of a batch (27.0, 24.1, then 26.9 min left)."""
    from dpseg.quickstart.run import eta_seconds

    times = [334, 335, 332, 331, 314, 310, 287, 287, 337]
    left = [eta_seconds(times[:done], 10 - done, 2) for done in range(1, 10)]
    assert all(a > b for a, b in zip(left, left[1:])), left
    assert round(left[0] / 60, 1) == 25.1 and round(left[-1] / 60, 1) == 2.7
    assert eta_seconds([], 4, 2) is None  # every run so far reused: no guess


@pytest.mark.slow
def test_the_demos_example_shows_on_the_page_what_the_python_api_gives(quickstart_fast, tmp_path):
    """`dpseg demo` as the README says (from the folder where the quickstart ran): press "Use the example", then
    "Segment"; the legend, the unlabelled share and the downloaded summary equal Segmenter's result for the same
    image, classes and defaults, and the example's caption shows the quickstart's verdicts. Class names outside the
    toy's world get the route for photos on the page. When the demo stops, its temporary folders are gone."""
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dpseg.quickstart import default_artifacts
    from dpseg.segmenter import Segmenter

    root, rc = quickstart_fast
    assert rc == 0
    (tmp_path / ".dpseg_cache").mkdir()
    (tmp_path / ".dpseg_cache" / "quickstart").symlink_to(root / "cache")
    temp = tmp_path / "tmp"
    temp.mkdir()
    model, bank = default_artifacts(root / "cache")
    example = demo_example(model)
    seg = Segmenter.from_pretrained(model, device="cpu", bank=str(bank)).set_vocabulary(example["classes"])
    expected = seg.segment(example["image"])  # the Python API, the demo's defaults: threshold, refinement
    proc, url, _ = _start_demo(tmp_path, {"TMPDIR": str(temp)})  # no --checkpoint: ./.dpseg_cache/quickstart
    driver = _chromium()
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#dpseg-example-use"))
        box = driver.find_element(By.CSS_SELECTOR, "#dpseg-classes textarea, #dpseg-classes input")
        assert box.get_property("value") == ""  # no classes of some other image before the user chooses
        caption = " ".join(driver.find_element(By.CSS_SELECTOR, "#dpseg-example-caption").text.split())
        assert all(f"{o['class']} {o['verdict']}" in caption for o in example["objects"]), caption
        assert driver.find_element(By.CSS_SELECTOR, "#dpseg-example-image img").get_property("naturalWidth") > 0
        driver.save_screenshot(str(tmp_path / "demo-before.png"))
        driver.find_element(By.CSS_SELECTOR, "#dpseg-example-use").click()
        wait.until(lambda d: "00000" in d.find_element(By.CSS_SELECTOR, "#dpseg-image").text)
        assert box.get_property("value") == example["classes"]
        driver.find_element(By.CSS_SELECTOR, "#dpseg-run").click()
        wait.until(lambda d: "Unlabelled:" in d.find_element(By.CSS_SELECTOR, "#dpseg-info").text)
        driver.save_screenshot(str(tmp_path / "demo-after.png"))
        info = driver.find_element(By.CSS_SELECTOR, "#dpseg-info").text
        unlabelled = 100 * expected.unlabelled_pixels / expected.labels.size
        assert f"Unlabelled: {unlabelled:.1f}%" in info, info
        legend = [
            " ".join(e.text.split()) for e in driver.find_elements(By.CSS_SELECTOR, "#dpseg-legend .dpseg-legend-item")
        ]
        assert legend == [f"{c.name} {100 * c.area:.1f}%" for c in expected.present], (legend, expected.present)
        link = next(
            a.get_attribute("href")
            for a in driver.find_elements(By.CSS_SELECTOR, "#dpseg-downloads a")
            if (a.get_attribute("href") or "").endswith(".json")
        )
        with urllib.request.urlopen(link, timeout=30) as response:
            summary = json.loads(response.read())
        assert [c["pixels"] for c in summary["classes"]] == expected.pixels.tolist()
        assert summary["min_score"] == expected.min_score and summary["refined"] == expected.refined
        # a photo's classes: the answer stays on the page, with the commands for photos
        box.clear()
        box.send_keys("person, sky, cat")
        driver.find_element(By.CSS_SELECTOR, "#dpseg-run").click()
        wait.until(lambda d: "not in the toy model's world" in d.find_element(By.CSS_SELECTOR, "#dpseg-info").text)
        text = " ".join(driver.find_element(By.CSS_SELECTOR, "#dpseg-info").text.split())
        assert "dpseg convert sed sed_b.pth checkpoints/sed-b" in text and "--text-only" not in text
        driver.save_screenshot(str(tmp_path / "demo-photo-classes.png"))
    finally:
        driver.quit()
        shots = os.environ.get("DPSEG_TEST_SCREENSHOTS")  # keep them for a look: a folder to copy them to
        if shots:
            for shot in tmp_path.glob("demo-*.png"):
                shutil.copy(shot, Path(shots) / shot.name)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert not list(temp.glob("dpseg-demo-*")), "the demo left its temporary folders behind"
    assert not (temp / "gradio").exists(), "gradio's copies of the example and uploads were left behind"


@pytest.mark.slow
def test_a_demo_that_cannot_start_leaves_no_temporary_folder(tmp_path):
    a = artifacts()
    temp = tmp_path / "tmp"
    temp.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "dpseg", "demo", "--checkpoint", str(a.ckpt), "--bank", str(a.bank)]
            + ["--port", str(port), "--device", "cpu"],
            capture_output=True,
            text=True,
            env={**os.environ, "TMPDIR": str(temp), "GRADIO_ANALYTICS_ENABLED": "False"},
            timeout=600,
        )
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{port} (the port is in use)" in done.stderr, (
        done.stderr[-2000:]
    )
    assert "launch()" not in done.stderr  # gradio's advice to its API's callers is not for the user
    assert not list(temp.glob("dpseg-demo-*")) and not (temp / "gradio").exists(), sorted(temp.iterdir())


# ------------------------------------------------------------------------------------ photos and the toy model
def test_photo_classes_with_the_toy_get_one_message_whose_commands_run(tmp_path, monkeypatch, capsys):
    """`dpseg segment photos/ --classes "person, sky, cat" --out out` with the quickstart's toy: one line saying what
    the toy knows and the two commands for photos. Both run as printed once SED's file is there (here the tiny SED
    of tests/fixtures/sed, which needs its config: it is not SED-B-sized)."""
    toy = toy_checkpoint(tmp_path / "toy")
    as_quickstart(tmp_path, monkeypatch, toy, artifacts().bank)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    Image.fromarray(scene(seed=4)).save(tmp_path / "photos" / "beach.png")
    rc = main(["segment", "photos/", "--classes", "person, sky, cat", "--out", "out"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and lines[-1].startswith("error: 'person', 'sky', 'cat' are not in the toy model's world"), lines
    assert not any(line.startswith(("warning", "error")) for line in lines[:-1]), lines  # one message
    message = lines[-1]
    assert "--text-only" not in message and "prompts build" not in message and "red striped star" in message
    convert, again = re.findall(r"`(dpseg [^`]+)`", message)[-2:]
    assert convert == "dpseg convert sed sed_b.pth checkpoints/sed-b"
    assert again == 'dpseg segment photos/ --classes "person, sky, cat" --out out --checkpoint checkpoints/sed-b'
    import torch

    torch.save({"model": load_file(SED_FIXTURE / "sed_tiny_state.safetensors")}, tmp_path / "sed_b.pth")
    assert main([*shlex.split(convert)[1:], "--config", str(SED_FIXTURE / "dpseg_config.yaml")]) == 0
    assert main(shlex.split(again)[1:]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["checkpoint"] == "checkpoints/sed-b" and len(summary["images"]) == 1


def test_the_resave_command_of_a_checkpoint_with_pickled_objects_runs(tmp_path):
    """`dpseg convert sed` refuses a file with pickled objects and prints the python command that keeps its weights
    alone; that command runs, and its output converts."""
    import torch

    from dpseg.convert import convert_sed
    from dpseg.errors import CheckpointError

    state = load_file(SED_FIXTURE / "sed_tiny_state.safetensors")
    torch.save({"model": state, "trainer": {"hook": Path("x")}}, tmp_path / "sed_b.pth")
    with pytest.raises(CheckpointError) as err:
        convert_sed(tmp_path / "sed_b.pth", tmp_path / "out")
    message = str(err.value)
    assert "never runs pickled code" in message and "\n" not in message
    command = shlex.split(message.split("If you trust the file, keep its weights alone and convert those: ")[1])
    assert command[:2] == ["python", "-c"]
    subprocess.run([sys.executable, *command[1:]], check=True, cwd=tmp_path)
    done = convert_sed(tmp_path / "sed_b-weights.pth", tmp_path / "out", config_file=SED_FIXTURE / "dpseg_config.yaml")
    assert done.tensors > 0


def test_a_photo_is_not_an_sed_checkpoint(tmp_path, capsys):
    Image.fromarray(scene()).save(tmp_path / "photo.jpg")
    assert main(["convert", "sed", str(tmp_path / "photo.jpg"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {tmp_path / 'photo.jpg'} is not a PyTorch checkpoint (a JPEG image); pass SED's trained model file, "
        'e.g. sed_b.pth (README, section "SED\'s released checkpoints")'
    )


def test_a_truncated_checkpoint_is_one_line_without_pytorchs_plea(tmp_path, capsys):
    import zipfile

    with zipfile.ZipFile(tmp_path / "sed_b.pth", "w") as z:  # a zip that torch.save did not finish
        z.writestr("archive/data.pkl", b"x")
    assert main(["convert", "sed", str(tmp_path / "sed_b.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot read SED checkpoint {tmp_path / 'sed_b.pth'}: not a complete PyTorch file (")
    assert err.endswith("); download it again") and "\n" not in err
    assert "Could this error message be improved" not in err and "report an enhancement" not in err


# --------------------------------------------------------------------------------- one clear line per mistake
def test_segment_names_everything_missing_at_once(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        'error: give the classes to find (--classes "cat, sofa" or --classes-file FILE) and an output folder '
        "(--out DIR)"
    )
    assert main(["segment", str(tmp_path / "x.png"), "--classes", "cat"]) == 2
    assert capsys.readouterr().err.strip() == "error: give an output folder (--out DIR)"


def test_a_missing_image_is_one_line(tmp_path, capsys):
    rc = main(["segment", str(tmp_path / "nothere.jpg"), "--classes", "cat", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'nothere.jpg'}: no such file or folder"
    ]


def test_a_local_path_that_does_not_exist_is_not_looked_up_on_the_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(scene()).save(tmp_path / "x.png")
    args = ["segment", "x.png", "--classes", "cat", "--out", "o", "--checkpoint", "checkpoints/sed-b"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: checkpoint checkpoints/sed-b is no folder here (no checkpoints/ in") and "\n" not in err
    )
    (tmp_path / "checkpoints").mkdir()  # the folder exists: certainly a local path
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint checkpoints/sed-b does not exist (checkpoints holds no folder sed-b")


def test_the_degraded_text_only_mode_is_said_once(tmp_path, capsys):
    Image.fromarray(scene()).save(tmp_path / "x.png")
    a = artifacts()
    argv = ["segment", str(tmp_path / "x.png"), "--classes", "cat; lamp", "--text-only", "--out", str(tmp_path / "o")]
    assert main([*argv, "--checkpoint", str(a.ckpt), "--quiet", "--no-refine"]) == 0
    assert capsys.readouterr().err.count("DEGRADED") == 1


# -------------------------------------------------------------------------------------------------- colours
def test_colour_words_colour_their_classes_in_distinguishable_shades():
    import colorsys

    from dpseg.data.synthetic.world import COLOURS, unseen_classes

    assert {k: COLOUR_WORDS[k] for k in COLOURS} == COLOURS  # the world's object colours
    names = [c.name for c in unseen_classes()]
    colours = class_palette(names).astype(int)

    def hue(rgb) -> float:
        return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0]

    for k, name in enumerate(names):  # each class's hue is nearest to its own colour word's among the five
        nearest = min(
            COLOURS,
            key=lambda w: min(
                abs(hue(COLOURS[w]) - hue(colours[k])) % 1, 1 - abs(hue(COLOURS[w]) - hue(colours[k])) % 1
            ),
        )
        assert nearest == name.split()[0], (name, colours[k])
    pairs = [(i, j) for i in range(len(names)) for j in range(i)]
    assert min(np.abs(colours[i] - colours[j]).sum() for i, j in pairs) >= 30  # no two classes look alike
    assert class_palette(["blue solid square"]).tolist() == [list(COLOURS["blue"])]
    mixed = ["cat", "red striped star"]  # not every class has a colour word: the fixed palette, by index
    assert np.array_equal(class_palette(mixed), palette(2))
    assert np.array_equal(class_palette(["sky", "tree", "person"]), palette(3))


def test_the_figures_legends_name_the_classes_on_the_objects_and_its_note_says_so(tmp_path, monkeypatch):
    """A prediction panel's legend lists the classes on the scored pixels; one painted only on the (dimmed)
    background is left out, and the figure says that in its note, so no colour in a legend goes unexplained."""
    import matplotlib.figure

    from dpseg.quickstart import report

    truth = np.full((8, 8), -1)
    truth[:4] = 0  # one object of class 0; the rest is background (not scored)
    pred = np.zeros((8, 8), int)
    pred[:2] = 1
    pred[6:] = 2  # class 2 only on the background
    assert report._drawn(pred, truth, 3) == [0, 1]
    notes: list = []
    text = matplotlib.figure.Figure.text
    monkeypatch.setattr(
        matplotlib.figure.Figure, "text", lambda self, x, y, s, *a, **k: notes.append(s) or text(self, x, y, s, *a, **k)
    )
    image = np.zeros((8, 8, 3), np.uint8)
    report.figure(tmp_path / "f.png", [image], [truth], {"dual pass 1": [pred]}, ["a", "b", "c"], "t")
    assert (tmp_path / "f.png").is_file()
    assert any("left out of the legends" in n for n in notes), notes


def test_the_label_maps_palette_is_the_class_colours(tmp_path, capsys):
    toy = toy_checkpoint(tmp_path / "toy")
    Image.fromarray(scene()).save(tmp_path / "x.png")
    classes = "red striped star; blue solid square"
    argv = ["segment", str(tmp_path / "x.png"), "--classes", classes, "--out", str(tmp_path / "o"), "--min-score", "0"]
    assert main([*argv, "--checkpoint", str(toy), "--text-only", "--quiet"]) == 0, capsys.readouterr().err
    table = np.array(Image.open(tmp_path / "o" / "x.png").getpalette()[:6]).reshape(2, 3)
    assert np.array_equal(table, class_palette(classes.split("; ")))


def test_the_demo_parser_and_its_help_need_no_model():
    parser = __import__("argparse").ArgumentParser()
    demo.add_arguments(parser)
    assert parser.parse_args([]).max_upload_mb == 20


def test_label_with_the_toy_refuses_photo_classes_as_segment_does(tmp_path, monkeypatch, capsys):
    """`dpseg label` on the quickstart's toy: the same one message before any work, its retry a label command."""
    toy = toy_checkpoint(tmp_path / "toy")
    as_quickstart(tmp_path, monkeypatch, toy, artifacts().bank)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    Image.fromarray(scene(seed=4)).save(tmp_path / "photos" / "beach.png")
    rc = main(["label", "photos/", "--classes", "person, sky", "--out", "labels", "--device", "cpu", "--workers", "0"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and lines[-1].startswith("error: 'person', 'sky' are not in the toy model's world"), lines
    again = re.findall(r"`(dpseg [^`]+)`", lines[-1])[-1]
    assert again == 'dpseg label photos/ --classes "person, sky" --out labels --checkpoint checkpoints/sed-b'
    assert not (tmp_path / "labels").exists()  # refused before any output

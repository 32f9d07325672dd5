"""``dpseg eval`` end to end on tiny checkpoints: results files, resume, bank + two passes, error messages."""

import json

import numpy as np
import pytest
from PIL import Image

from dpseg.checkpoint import save_model
from dpseg.commands import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from helpers import random_prompts, tiny_model

    from dpseg.prompts.bank import PromptBank
    from dpseg.prompts.manifest import make_key
    from dpseg.prompts.templates import model_templates

    base = tmp_path_factory.mktemp("eval")
    text_model, cfg = tiny_model(
        "model.prompt_type=text", "model.guidance=none", "model.visual_scales=[]", "eval.num_workers=0"
    )
    save_model(text_model, cfg, base / "text_ckpt")
    dual, dcfg = tiny_model("eval.num_workers=0", seed=1)
    save_model(dual, dcfg, base / "dual_ckpt")
    ds = base / "ds"
    (ds / "images/val").mkdir(parents=True)
    (ds / "labels/val").mkdir(parents=True)
    (ds / "classes.txt").write_text("red thing\nblue thing\n")
    lab = np.zeros((40, 56), np.uint8)
    lab[:, 28:] = 1
    lab[:4] = 255
    Image.fromarray(lab).save(ds / "labels/val/a.png")
    Image.fromarray(np.where(lab[..., None] == 1, [20, 20, 220], [220, 20, 20]).astype(np.uint8)).save(
        ds / "images/val/a.png"
    )
    # a bank for the dual model: prompts of the two classes (random 'generated' images)
    tmpl = model_templates(dcfg)
    ps = random_prompts(dual, 2, names=["red thing", "blue thing"], templates=tmpl)
    bank = PromptBank.create(
        base / "bank", make_key(dual.prompt_encoder, dual.text_encoder, tmpl, dual.prompt_image_size)
    )
    for k, name in enumerate(ps.class_names):
        bank.write_class(name, ps.text[k], ps.visual[k], [v[k] for v in ps.visual_stages], "test", [0])
    return base


def run_eval(*argv):
    return main(["eval", *map(str, argv), "--no-progress"])


def test_text_only_eval_writes_tables_and_resumes(setup, capsys):
    ckpt, out = setup / "text_ckpt", setup / "out_text"
    assert run_eval(ckpt, "--datasets", setup / "ds", "--text-only", "--output", out) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    entry = results["datasets"][str(setup / "ds")]
    assert "pass2" not in entry and entry["settings"]["two_pass"] is False  # text-only: refinement switched off
    assert 0 <= entry["pass1"]["mIoU"] <= 100 and entry["num_images"] == 1
    assert entry["pass1"]["pixels"] == 36 * 56 and set(entry["pass1"]["per_class_IoU"]) == {"red thing", "blue thing"}
    md = (out / "results.md").read_text()
    assert "| mIoU (%) |" in md and "| pass 1 |" in md and "| mIoU (%) |" in printed
    assert run_eval(ckpt, "--datasets", setup / "ds", "--text-only", "--output", out) == 0
    assert "already in" in capsys.readouterr().out  # resumed: the dataset is skipped
    assert run_eval(ckpt, "--datasets", setup / "ds", "--text-only", "--output", out, "--protocol", "slide") == 2
    err = capsys.readouterr().err
    assert "already holds" in err and "protocol: 'whole' -> 'slide'" in err and "--force" in err
    assert (
        run_eval(ckpt, "--datasets", setup / "ds", "--text-only", "--output", out, "--protocol", "slide", "--force")
        == 0
    )
    assert json.loads((out / "results.json").read_text())["datasets"][str(setup / "ds")]["protocol"]["name"] == "slide"


def test_bank_eval_reports_both_passes(setup, capsys):
    out = setup / "out_dual"
    assert (
        run_eval(
            setup / "dual_ckpt",
            "--datasets",
            setup / "ds",
            "--bank",
            setup / "bank",
            "--output",
            out,
            "--set",
            "eval.class_chunk=1",
        )
        == 0
    )
    entry = json.loads((out / "results.json").read_text())["datasets"][str(setup / "ds")]
    assert {"pass1", "pass2"} <= set(entry) and entry["settings"]["prompt_source"].startswith("bank ")
    assert "| pass 2 (refined prompts) |" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    "argv, msg",
    [
        (
            ["--datasets", "a150", "--text-only", "--root", "{base}/nodata"],
            "dataset 'a150' (ADE20K-150 validation): images folder",
        ),
        (["--datasets", "a150,pc459", "--text-only", "--root", "{base}/nodata"], "(also unavailable: pc459)"),
        (
            ["--datasets", "{base}/ds", "--text-only", "--two-pass"],
            "refinement (the second pass) replaces visual prompts",
        ),
        (
            ["--datasets", "{base}/ds", "--text-only", "--set", "model.cost_embed_dim=8"],
            "only eval.* settings can change",
        ),
        (
            ["--datasets", "{base}/ds", "--text-only", "--set", "eval.protocol=tiles"],
            "config key 'eval.protocol' expects",
        ),
        (["--datasets", "{base}/ds", "--text-only", "--max-images", "-1"], "--max-images must be >= 0"),
        (
            ["--datasets", "{base}/ds", "--text-only", "--device", "nonsense"],
            "--device must be auto, cpu, cuda or cuda:N",
        ),
    ],
)
def test_eval_errors(setup, capsys, argv, msg):
    argv = [a.replace("{base}", str(setup)) for a in argv]
    assert run_eval(setup / "text_ckpt", *argv, "--output", setup / "out_err") == 2
    assert msg in capsys.readouterr().err


def test_text_only_is_refused_for_a_dual_prompt_model(setup, capsys):
    assert run_eval(setup / "dual_ckpt", "--datasets", setup / "ds", "--text-only", "--output", setup / "o") == 2
    assert "this model needs visual prompts (prompt_type=dual" in capsys.readouterr().err
    # no bank at all: the one resolver's policy, the same words as training and Segmenter
    assert run_eval(setup / "dual_ckpt", "--datasets", setup / "ds", "--bank", "", "--output", setup / "o") == 2
    assert "this model needs visual prompts" in capsys.readouterr().err

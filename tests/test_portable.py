"""Portable checkpoints: a checkpoint folder keeps working when moved or used from another directory; a file it
needs that is gone is named in the error with the fix; `dpseg segment` without --checkpoint uses the quickstart
model and says so."""

import json
import logging
import os
import shutil

import pytest
from PIL import Image
from segment_helpers import artifacts, scene

from dpseg.checkpoint import load_model, save_model
from dpseg.commands import main
from dpseg.errors import BankError, CheckpointError
from dpseg.prompts.templates import get_templates
from dpseg.segmenter import Segmenter


@pytest.fixture(scope="module")
def trained():
    return load_model(artifacts().ckpt)


def export(trained, run, bank=None, templates=None):
    """A run folder holding ``final`` (and ``bank`` copied next to it when asked)."""
    model, cfg = trained
    cfg = json.loads(json.dumps(cfg.to_dict()))  # a copy
    from dpseg.config import config_from_dict

    cfg = config_from_dict(cfg)
    if bank == "next":
        shutil.copytree(artifacts().bank, run / "bank")
        cfg.prompts.bank = str(run / "bank")
    elif bank:
        cfg.prompts.bank = str(bank)
    if templates:
        cfg.prompts.templates = str(templates)
    return save_model(model, cfg, run / "final")


def test_a_run_folder_with_its_bank_can_move_and_be_used_from_anywhere(trained, tmp_path, monkeypatch):
    final = export(trained, tmp_path / "run", bank="next")
    stored = json.loads((final / "config.json").read_text())
    assert stored["prompts"]["bank"] == os.path.join("..", "bank")
    assert stored["dpseg"]["paths"] == "relative to this folder"
    shutil.move(tmp_path / "run", tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model, cfg = load_model(tmp_path / "moved" / "final")
    assert cfg.prompts.bank == str(tmp_path / "moved" / "bank")
    seg = Segmenter.from_pretrained(tmp_path / "moved" / "final", device="cpu").set_vocabulary(["cat", "lamp"])
    assert "bank" in seg.prompt_source and seg.segment(scene(), refine=False).labels.shape == (72, 96)
    Image.fromarray(scene()).save(elsewhere / "x.png")
    rc = main(["segment", "x.png", "--classes", "cat, lamp", "--checkpoint", "../moved/final", "--out", "o", "--quiet"])
    assert rc == 0 and (elsewhere / "o" / "x.png").is_file()


def test_a_bank_elsewhere_is_stored_absolute_and_a_missing_one_is_named(trained, tmp_path, caplog):
    far = tmp_path / "banks" / "home"
    shutil.copytree(artifacts().bank, far)
    final = export(trained, tmp_path / "runs" / "a", bank=far)
    assert json.loads((final / "config.json").read_text())["prompts"]["bank"] == str(far)
    with caplog.at_level(logging.WARNING, logger="dpseg"):
        gone = export(trained, tmp_path / "runs" / "b", bank=tmp_path / "nowhere")
    assert "does not exist at export" in caplog.text
    seg = Segmenter.from_pretrained(gone, device="cpu")
    with pytest.raises(BankError) as err:
        seg.set_vocabulary(["cat"])
    text = str(err.value)
    assert str(tmp_path / "nowhere") in text and "prompts.bank" in text and "--bank" in text and "\n" not in text
    assert seg.set_vocabulary(["cat"], bank=str(far)).prompt_source.startswith("bank")  # the fix the message gives
    assert seg.set_vocabulary(["cat"], text_only=True).degraded  # or knowingly without visual prompts


def test_segment_names_the_missing_bank_in_one_line(trained, tmp_path, capsys):
    final = export(trained, tmp_path / "run", bank="next")
    shutil.rmtree(tmp_path / "run" / "bank")
    Image.fromarray(scene()).save(tmp_path / "x.png")
    rc = main(
        [
            "segment",
            str(tmp_path / "x.png"),
            "--classes",
            "cat",
            "--checkpoint",
            str(final),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(tmp_path / "run" / "bank") in err and "--bank BANK" in err


def test_a_template_file_travels_inside_the_checkpoint(trained, tmp_path, monkeypatch):
    model, cfg = trained
    templates = get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
    (tmp_path / "my_templates.txt").write_text("\n".join(templates))
    monkeypatch.chdir(tmp_path)
    final = export(trained, tmp_path / "run", templates="my_templates.txt")  # relative to the working directory
    assert json.loads((final / "config.json").read_text())["prompts"]["templates"] == "templates.txt"
    assert (final / "templates.txt").read_text() == (tmp_path / "my_templates.txt").read_text()
    (tmp_path / "my_templates.txt").unlink()
    monkeypatch.chdir("/")
    assert load_model(final)[1].prompts.templates == str(final / "templates.txt")
    (final / "templates.txt").unlink()
    with pytest.raises(CheckpointError, match=r"needs its template file .*templates.txt.* copy the file to"):
        load_model(final)
    with pytest.raises(CheckpointError, match="the template file gone.txt .* does not exist"):
        export(trained, tmp_path / "other", templates="gone.txt")


def test_checkpoints_from_before_keep_working_dir_paths_and_try_the_folder(trained, tmp_path, monkeypatch):
    final = export(trained, tmp_path / "run", bank="next")
    data = json.loads((final / "config.json").read_text())
    del data["dpseg"]["paths"]  # as written before portable checkpoints: paths relative to the working directory
    data["prompts"]["bank"] = "run/bank"
    (final / "config.json").write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)
    assert load_model(final)[1].prompts.bank == "run/bank"  # found from here: kept as it was
    data["prompts"]["bank"] = "../bank"
    (final / "config.json").write_text(json.dumps(data))
    assert load_model(final)[1].prompts.bank == str(tmp_path / "run" / "bank")  # not from here, but from the folder


def test_segment_without_a_checkpoint_uses_the_quickstart_model(tmp_path, monkeypatch, capsys):
    a = artifacts()
    monkeypatch.setenv("DPSEG_CACHE", str(tmp_path / "cache"))
    Image.fromarray(scene()).save(tmp_path / "x.png")
    args = ["segment", str(tmp_path / "x.png"), "--classes", "cat, lamp", "--out", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 2
    assert "run `dpseg quickstart` first" in capsys.readouterr().err
    (tmp_path / "cache" / "quickstart").mkdir(parents=True)
    pointer = {"model": str(a.ckpt), "bank": str(a.bank)}
    (tmp_path / "cache" / "quickstart" / "latest.json").write_text(json.dumps(pointer))
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"no --checkpoint: using the quickstart model {a.ckpt}" in err and "prompts: bank" in err
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["checkpoint"] == str(a.ckpt)

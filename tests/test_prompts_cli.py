"""`dpseg prompts build | add-exemplars | info` end to end, in process, with a tiny CLIP file and a tiny pipeline."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from dpseg.clip_loading import build_towers, create_clip
from dpseg.commands import main
from dpseg.config import build_config
from dpseg.prompts.bank import PromptBank
from dpseg.prompts.tiny_pipeline import make_tiny_pipeline
from dpseg.vocab import read_class_list as load_vocabulary
from dpseg.weights import save_safetensors


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny = build_config("dpseg-tiny").model
    weights = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        weights.append(save_safetensors(create_clip(tiny).state_dict(), root / f"clip{seed}.safetensors"))
    (root / "vocab.txt").write_text("cat\nsofa, couch\ntraffic light\n\n")
    return {
        "root": root,
        "clip": weights[0],
        "clip_other": weights[1],
        "pipe": make_tiny_pipeline(root / "sd"),
        "vocab": root / "vocab.txt",
    }


def _build_args(files, out, vocab=None, clip=None, *extra):
    return [
        "prompts",
        "build",
        "--vocab",
        str(vocab or files["vocab"]),
        "--generator",
        str(files["pipe"]),
        "--out",
        str(out),
        "--preset",
        "dpseg-tiny",
        "--set",
        f"model.clip_pretrained={clip or files['clip']}",
        "--set",
        "prompts.resolution=16",
        "--set",
        "prompts.steps=2",
        "--set",
        "prompts.num_templates=2",
        "--quiet",
        "--device",
        "cpu",
        *extra,
    ]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_build_resume_info_and_use_from_python(files, tmp_path, capsys):
    out = tmp_path / "bank"
    assert main(_build_args(files, out, None, None, "--keep-images")) == 0
    stdout = capsys.readouterr().out
    assert "built 3 classes (6 images)" in stdout and "is complete" in stdout
    assert len(list((out / "images").rglob("*.png"))) == 6
    assert main(_build_args(files, out)) == 0
    assert "built 0 classes (0 images)" in capsys.readouterr().out
    (tmp_path / "more.json").write_text(json.dumps(["cat", "zebra"]))
    assert main(["prompts", "info", str(out), "--vocab", str(tmp_path / "more.json")]) == 0
    text = capsys.readouterr().out
    assert "3 (3 generated)" in text and "missing of" in text and ": zebra" in text and "kept images" in text
    assert main(["prompts", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["num_classes"] == 3
        and info["num_templates"] == 2
        and info["generator"].startswith("diffusers:StableDiffusionPipeline@")
    )
    cfg = build_config("dpseg-tiny", overrides=[f"model.clip_pretrained={files['clip']}"])
    _, prompt, text_tower = build_towers(cfg.model)  # the same weights, loaded again: the fingerprints agree
    ps = PromptBank.open(out).prompt_set(["traffic light", "cat"], prompt_encoder=prompt, text_tower=text_tower)
    assert ps.visual.shape == (2, 2, 32)


def test_ranks_from_torchrun_environment(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "bank"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(_build_args(files, out)) == 0
    assert "rank 0/2: built 2 classes" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")
    assert main(_build_args(files, out)) == 0
    text = capsys.readouterr().out
    assert "rank 1/2: built 1 classes" in text and "is complete" in text


def test_add_exemplars(files, tmp_path, capsys):
    folder = tmp_path / "ex" / "cat"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            folder / f"{i}.jpg"
        )
    bank = tmp_path / "bank"
    args = [
        "--preset",
        "dpseg-tiny",
        "--set",
        f"model.clip_pretrained={files['clip']}",
        "--set",
        "prompts.num_templates=2",
        "--quiet",
    ]
    assert main(["prompts", "add-exemplars", "--bank", str(bank), "--folder", str(tmp_path / "ex"), *args]) == 0
    assert "set visual prompts of 1 classes from 2 exemplar images" in capsys.readouterr().out
    assert main(_build_args(files, bank)) == 0  # the exemplar-only bank takes generated prompts for the rest
    assert "built 2 classes" in capsys.readouterr().out
    assert PromptBank.open(bank).info()["sources"] == {"exemplar": 1, "generated": 2}


def test_build_from_a_checkpoint_fits_the_checkpoint_and_the_clip_it_came_from(files, tmp_path, capsys):
    from dpseg.build import build_model
    from dpseg.checkpoint import load_model, save_model

    prompts = [
        f"prompts.generator={files['pipe']}",
        "prompts.num_templates=2",
        "prompts.resolution=16",
        "prompts.steps=2",
    ]
    cfg = build_config("dpseg-tiny", overrides=[f"model.clip_pretrained={files['clip']}", *prompts])
    save_model(build_model(cfg), cfg, tmp_path / "ckpt")
    argv = [
        "prompts",
        "build",
        "--vocab",
        str(files["vocab"]),
        "--out",
        str(tmp_path / "bank"),
        "--quiet",
        "--checkpoint",
        str(tmp_path / "ckpt"),
    ]  # generator, templates and sampler from the checkpoint's config
    assert main(argv) == 0 and "built 3 classes" in capsys.readouterr().out
    model, _ = load_model(tmp_path / "ckpt")
    assert PromptBank.open(tmp_path / "bank").prompt_set(["cat"], model=model).visual.shape == (1, 2, 32)
    assert main(_build_args(files, tmp_path / "bank")) == 0  # the preset + the same CLIP file: same frozen encoders
    assert "built 0 classes" in capsys.readouterr().out


def test_vocabulary_names_and_files(tmp_path):
    assert len(load_vocabulary("voc20")) == 20 and "aeroplane" in load_vocabulary("voc20")
    (tmp_path / "v.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    assert load_vocabulary(str(tmp_path / "v.json")) == ["a", "b"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty_vocab", "holds no class names"),
        ("comment_vocab", "line 1 starts with '#'"),
        ("blank_line_vocab", "line 2 is blank"),
        ("duplicate_vocab", r"names 'cat' more than once"),
        ("bad_json_vocab", "must hold a JSON list of non-empty strings"),
        ("unknown_vocab", "class list nosuchvocab not found"),
        ("missing_generator", r"generator directory .*nowhere does not exist"),
        (
            "offline_hub_id",
            r"not in the local Hugging Face cache and the hub is unreachable.*--generator /path/to/pipeline",
        ),
        ("random_encoders", "'model.clip_pretrained' is empty"),
        ("negative_images", "--images-per-class must be >= 0"),
        ("other_encoder", "was built for another visual-prompt encoder"),
        ("missing_folder", r"exemplar folder .*nope does not exist"),
        ("unreadable_exemplar", r"cannot read image .*broken\.jpg"),
        ("not_a_bank", "is not a prompt bank"),
    ],
)
def test_bad_inputs_give_one_line_errors(files, tmp_path, capsys, monkeypatch, case, message):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    out, vocab = tmp_path / "bank", tmp_path / "v.txt"
    build = lambda *extra, **kw: _build_args(files, out, kw.get("vocab", vocab), kw.get("clip"), *extra)  # noqa: E731
    vocab.write_text("cat\ndog\n")
    if case == "empty_vocab":
        vocab.write_text("\n\n")
        argv = build()
    elif case == "comment_vocab":  # no comment syntax: a '#' line is refused, not read as a class called "# ..."
        vocab.write_text("# my classes\ncat\n")
        argv = build()
    elif case == "blank_line_vocab":
        vocab.write_text("cat\n\ndog\n")
        argv = build()
    elif case == "duplicate_vocab":
        vocab.write_text("cat\ndog\ncat \n")
        argv = build()
    elif case == "bad_json_vocab":
        (tmp_path / "v.json").write_text('{"cat": 1}')
        argv = build(vocab=tmp_path / "v.json")
    elif case == "unknown_vocab":
        argv = build(vocab="nosuchvocab")
    elif case == "missing_generator":
        argv = build("--generator", str(tmp_path / "nowhere"))
    elif case == "offline_hub_id":  # also: the generator is checked before the (here missing) CLIP weights are read
        argv = build("--generator", "runwayml/stable-diffusion-v1-5", clip=tmp_path / "absent.safetensors")
    elif case == "random_encoders":
        argv = build("--set", "model.clip_pretrained=")
    elif case == "negative_images":
        argv = build("--images-per-class", "-1")
    elif case == "other_encoder":
        assert main(build()) == 0
        argv = build(clip=files["clip_other"])
    elif case == "missing_folder":
        argv = [
            "prompts",
            "add-exemplars",
            "--bank",
            str(out),
            "--folder",
            str(tmp_path / "nope"),
            "--preset",
            "dpseg-tiny",
        ]
    elif case == "unreadable_exemplar":
        (tmp_path / "ex" / "cat").mkdir(parents=True)
        (tmp_path / "ex" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
        argv = [
            "prompts",
            "add-exemplars",
            "--bank",
            str(out),
            "--folder",
            str(tmp_path / "ex"),
            "--preset",
            "dpseg-tiny",
            "--set",
            f"model.clip_pretrained={files['clip']}",
            "--quiet",
        ]
    else:
        argv = ["prompts", "info", str(tmp_path)]
    capsys.readouterr()
    err = _error(capsys, argv)
    assert re.search(message, err), err


@pytest.mark.slow
def test_torchrun_two_processes_build_the_same_bank_as_one(files, tmp_path, capsys):
    import os
    import subprocess
    import sys

    assert main(_build_args(files, tmp_path / "single")) == 0
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "0",
        "-m",
        "dpseg",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        torchrun + _build_args(files, tmp_path / "multi"), env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rank 0/2: built 2 classes" in proc.stdout and "rank 1/2: built 1 classes" in proc.stdout
    single, multi = PromptBank.open(tmp_path / "single"), PromptBank.open(tmp_path / "multi")
    assert multi.missing(load_vocabulary(str(files["vocab"]))) == []
    for name in load_vocabulary(str(files["vocab"])):
        a, b = single.load_class(name), multi.load_class(name)
        assert torch.equal(a["visual"], b["visual"]) and torch.equal(a["text"], b["text"]) and a["meta"] == b["meta"]

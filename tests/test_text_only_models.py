"""A model that uses no visual prompts (text prompts, no visual cost volumes: SED, DPSeg's text ablations) holds no
visual-prompt encoder; every path that would use one skips it or says why it cannot."""

import json

import numpy as np
import pytest
import torch
from helpers import tiny_model
from PIL import Image
from safetensors.torch import load_file, save_file

from dpseg.build import build_model, component_counts
from dpseg.checkpoint import load_model, save_model
from dpseg.commands import main
from dpseg.config import build_config
from dpseg.errors import InputError
from dpseg.prompts.bank import PromptBank
from dpseg.prompts.manifest import make_key
from dpseg.prompts.resolve import resolve_prompts
from dpseg.prompts.templates import model_templates

TEXT_ONLY = ("model.prompt_type=text", "model.guidance=upsampled")


@pytest.fixture(scope="module")
def text_model():
    return tiny_model(*TEXT_ONLY, seed=2)


def test_only_models_that_read_visual_prompts_hold_an_encoder_for_them():
    for overrides, has in (
        (TEXT_ONLY, False),
        (("model.prompt_type=text", "model.guidance=none"), False),
        (("model.prompt_type=text",), True),
        (("model.guidance=upsampled",), True),
    ):
        model, _ = tiny_model(*overrides)
        assert (model.prompt_encoder is not None) == has == model.needs_visual_prompts, overrides
    with torch.device("meta"):
        sed = build_model(build_config("sed-b"), load_clip_weights=False)
        dpseg = build_model(build_config("dpseg-b"), load_clip_weights=False)
    sizes = [sum(p.numel() for p in m.parameters()) for m in (sed, dpseg)]
    assert sizes[1] - sizes[0] > sum(p.numel() for p in dpseg.image_encoder.parameters())  # the copy is gone


def test_visual_prompt_paths_skip_or_refuse(text_model, tmp_path):
    model, cfg = text_model
    templates = model_templates(cfg)
    with pytest.raises(InputError, match="holds no visual-prompt encoder"):
        model.encode_visual_prompts(torch.rand(1, 3, 32, 32))
    (tmp_path / "ex" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ex" / "cat" / "1.png")
    resolved = resolve_prompts(model, templates, ["cat", "dog"], exemplars=str(tmp_path / "ex"))
    assert resolved.source == "text (this model uses text prompts only; exemplar images not used)"
    assert resolved.prompts.visual is None and not resolved.degraded
    dual, _ = tiny_model(seed=2)  # the same CLIP weights: a bank of it fits the text-only model's text tower
    bank = PromptBank.create(tmp_path / "bank", make_key(dual.prompt_encoder, dual.text_encoder, templates, 32))
    text = dual.encode_text_prompts(["cat"], templates)[0]
    stages = [torch.zeros(len(templates), d) for d in dual.prompt_encoder.stage_dims[:3]]
    bank.write_class("cat", text, text, stages, "test", [0])
    from_bank = resolve_prompts(model, templates, ["cat"], bank=str(tmp_path / "bank"))
    assert torch.equal(from_bank.prompts.text[0], text) and "only their text prompts" in from_bank.source


def test_checkpoints_counts_and_banks_of_a_text_only_model(text_model, tmp_path, capsys):
    model, cfg = text_model
    rows = [name for name, _, _ in component_counts(model)]
    assert not any("visual-prompt encoder" in r for r in rows)
    ckpt = save_model(model, cfg, tmp_path / "ckpt")
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        assert f.metadata()["prompt_encoder"] == "none"
    assert (
        main(["prompts", "build", "--checkpoint", str(ckpt), "--vocab", "voc20", "--out", str(tmp_path / "bank")]) == 2
    )
    assert "uses text prompts only" in capsys.readouterr().err
    assert main(["summary", "--preset", "dpseg-tiny", *sum((["--set", o] for o in TEXT_ONLY), [])]) == 0
    assert "visual-prompt encoder" not in capsys.readouterr().out


def test_text_only_checkpoints_of_earlier_versions_still_load(text_model, tmp_path):
    """They stored a (never used) visual-prompt encoder; loading drops it and keeps everything else exact."""
    model, cfg = text_model
    ckpt = save_model(model, cfg, tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    state.update({f"prompt_encoder.{k}": v for k, v in model.image_encoder.state_dict().items()})
    save_file(state, ckpt / "model.safetensors", metadata={"prompt_encoder": "old"})
    loaded, _ = load_model(ckpt)
    assert loaded.prompt_encoder is None
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert json.loads((ckpt / "config.json").read_text())["model"]["prompt_type"] == "text"

import json

import pytest
import torch
from helpers import random_prompts, tiny_model

from dpseg.build import component_counts
from dpseg.checkpoint import load_model, save_model
from dpseg.errors import CheckpointError


def test_save_load_round_trip_is_exact(tmp_path):
    model, cfg = tiny_model("model.guidance=upsampled", seed=3)
    save_model(model, cfg, tmp_path / "ckpt")
    loaded, cfg2 = load_model(tmp_path / "ckpt")
    assert cfg2 == cfg and not loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    prompts = random_prompts(model, 3)
    x = torch.rand(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, prompts)["logits"], loaded(x, prompts)["logits"])


def test_checkpoint_errors(tmp_path):
    model, cfg = tiny_model()
    ckpt = save_model(model, cfg, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="is a file"):
        load_model(ckpt / "model.safetensors")
    data = json.loads((ckpt / "config.json").read_text())
    data["model"]["decoder_dims"] = [8, 8, 6]  # a config that does not match the weights
    (ckpt / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="shape mismatch: decoder.stages.2"):
        load_model(ckpt)
    data["model"]["no_such_key"] = 1
    (ckpt / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="no_such_key"):
        load_model(ckpt)
    (ckpt / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(ckpt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="must hold config.json and model.safetensors"):
        load_model(tmp_path / "empty")


def test_component_counts_cover_the_model():
    model, _ = tiny_model()
    rows = component_counts(model)
    total = rows[-1]
    assert total[1] == sum(p.numel() for p in model.parameters())
    frozen = dict((r[0], r) for r in rows)
    assert frozen["visual-prompt encoder (frozen copy)"][2] == 0
    assert frozen["text encoder (frozen CLIP text tower)"][2] == 0

"""The tiny CLIP of the synthetic world: OpenCLIP save/load round trip and a short pretraining that learns."""

import numpy as np
import pytest
import torch

from dpseg.config import build_config
from dpseg.data.synthetic.world import seen_classes
from dpseg.errors import InputError
from dpseg.model.towers import create_clip
from dpseg.quickstart.clip_pretrain import (
    PretrainSettings,
    caption_universe,
    multi_positive_loss,
    phrase_of,
    pretrained_clip,
)
from dpseg.quickstart.zeroshot import evaluate_zero_shot


def test_caption_universe_names_only_seen_combinations():
    u = caption_universe()
    seen = {k.indices for k in seen_classes()}
    full = {tuple(r) for r in u if (r >= 0).all()}
    assert full == seen  # no unseen triple is ever a caption
    assert len(u) == 128 and phrase_of(np.array([0, -1, 3])) == "red star" and phrase_of(np.array([-1, 1, -1])) == "striped shape"


def test_multi_positive_loss_prefers_true_pairs():
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    pos = torch.eye(4, dtype=torch.bool)
    good = multi_positive_loss(img, img, pos, torch.tensor(10.0))
    bad = multi_positive_loss(img, img.roll(1, 0), pos, torch.tensor(10.0))
    assert good < bad


def test_save_load_round_trip_is_bit_identical(tmp_path):
    cfg = build_config("synthetic")
    settings = PretrainSettings(steps=2, batch_size=8, pool_size=16, warmup=1)
    path = pretrained_clip(cfg, tmp_path, settings, log=lambda m: None)
    assert path.suffix == ".safetensors"
    loaded = create_clip(build_config("synthetic", overrides=[f"model.clip_pretrained={path}"]).model)
    from safetensors.torch import load_file

    saved = load_file(str(path))
    state = loaded.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    fresh = create_clip(cfg.model, load_weights=False)
    assert not torch.equal(fresh.visual.head.proj.weight, state["visual.head.proj.weight"])  # loading did something
    stamp = path.stat().st_mtime_ns
    assert pretrained_clip(cfg, tmp_path, settings, log=lambda m: None) == path and path.stat().st_mtime_ns == stamp
    path.write_bytes(b"broken")  # a damaged cache file is retrained, not trusted
    assert pretrained_clip(cfg, tmp_path, settings, log=lambda m: None) == path and path.stat().st_size > 1000
    with pytest.raises(InputError, match="steps >= 1"):
        pretrained_clip(cfg, tmp_path, PretrainSettings(steps=0))


def test_short_pretraining_beats_chance_on_seen_classes(tmp_path):
    torch.manual_seed(0)
    cfg = build_config("synthetic")
    settings = PretrainSettings(steps=80, batch_size=64, pool_size=640, warmup=10)
    path = pretrained_clip(cfg, tmp_path, settings, log=lambda m: None)
    cfg = build_config("synthetic", overrides=[f"model.clip_pretrained={path}"])
    report = evaluate_zero_shot(cfg, per_class=4, vocabs=("seen",), kinds=("crops",))
    entry = report["seen/crops"]
    assert entry["images"] == 240 and entry["chance"] == pytest.approx(1 / 60)
    assert entry["accuracy"] > 2.5 * entry["chance"], entry  # 7-9% for seeds 0-2 (60 classes after 80 steps)
    assert entry["colour_accuracy"] > 0.5, entry  # chance 0.2: the easiest attribute is learnt first

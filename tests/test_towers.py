import os
import time

import pytest
import torch
import torch.nn.functional as F

from dpseg.clip_loading import build_towers, create_clip, make_tokenizer, resolve_pretrained
from dpseg.config import build_config
from dpseg.errors import CheckpointError, ConfigError, InputError, WeightsUnavailableError
from dpseg.model.towers import ImageTower
from dpseg.weights import read_state_dict, save_safetensors


def _tower_from(clip):
    import open_clip

    return ImageTower(clip.visual, open_clip.constants.OPENAI_DATASET_MEAN, open_clip.constants.OPENAI_DATASET_STD)


@pytest.mark.parametrize("hw", [(64, 96), (96, 32), (160, 128)])
def test_stage_shapes_non_square(tiny_cfg, hw):
    image, prompt, text = build_towers(tiny_cfg.model)
    H, W = hw
    feats = image(torch.rand(2, 3, H, W))
    for j, (stride, e) in enumerate(zip((4, 8, 16, 32), feats.stages)):
        assert e.shape == (2, image.stage_dims[j], H // stride, W // stride)
    assert feats.dense.shape == (2, image.embed_dim, H // 32, W // 32)
    assert image.stage_dims == [16, 32, 64, 128] and image.embed_dim == 32


def test_pooling_then_head_equals_open_clip_encode_image(tiny_cfg):
    """head(LN(GAP(E_5))) == open_clip encode_image, and at a 1x1 stride-32 grid the dense embedding is it too."""
    torch.manual_seed(0)
    clip = create_clip(tiny_cfg.model).eval()
    for p in clip.visual.parameters():  # move weights away from the near-identity init so the check has teeth
        p.data.add_(0.05 * torch.randn_like(p))
    tower = _tower_from(clip)
    x = torch.rand(3, 3, 64, 96)
    normed = (x - tower.mean) / tower.std
    with torch.no_grad():
        ref = clip.encode_image(normed)
        feats = tower(x)
        pooled = tower.pooled(feats)
        # the dense map averaged is NOT the CLIP embedding (LayerNorm is not linear): show the identity is specific
        dense_mean = feats.dense.mean(dim=(2, 3))
        assert torch.allclose(pooled, ref, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(dense_mean, ref, atol=1e-4)
        small = torch.rand(2, 3, 32, 32)
        one = tower(small).dense.flatten(1)  # (B, d, 1, 1) -> (B, d)
        assert torch.allclose(one, clip.encode_image((small - tower.mean) / tower.std), atol=1e-5, rtol=1e-4)


def test_prompt_encoder_is_frozen_copy(tiny_cfg):
    image, prompt, _ = build_towers(tiny_cfg.model)
    assert all(p.requires_grad for p in image.parameters())
    assert not any(p.requires_grad for p in prompt.parameters())
    assert prompt.trunk is not image.trunk
    for (n, a), (_, b) in zip(image.state_dict().items(), prompt.state_dict().items()):
        assert torch.equal(a, b), n
    v, stages = prompt.encode_prompts(torch.rand(5, 3, 32, 32))
    assert v.shape == (5, 32) and torch.allclose(v.norm(dim=-1), torch.ones(5))
    assert [s.shape for s in stages] == [(5, 16), (5, 32), (5, 64)]


def test_clip_weight_round_trip_is_bit_identical(tiny_cfg, tmp_path):
    torch.manual_seed(1)
    a = create_clip(tiny_cfg.model)
    path = save_safetensors(a.state_dict(), tmp_path / "clip.safetensors")
    torch.manual_seed(2)
    cfg = build_config("dpseg-tiny", overrides=[f"model.clip_pretrained={path}"])
    b = create_clip(cfg.model)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # .pt with a {"state_dict": ...} wrapper and DDP prefixes loads too
    torch.save({"state_dict": {f"module.{k}": v for k, v in sa.items()}}, tmp_path / "clip.pt")
    c = create_clip(build_config("dpseg-tiny", overrides=[f"model.clip_pretrained={tmp_path / 'clip.pt'}"]).model)
    assert all(torch.equal(sa[k], c.state_dict()[k]) for k in sa)


def test_corrupt_and_mismatched_checkpoints(tiny_cfg, tmp_path):
    good = create_clip(tiny_cfg.model).state_dict()
    path = save_safetensors(good, tmp_path / "clip.safetensors")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")

    def load(p):
        return create_clip(build_config("dpseg-tiny", overrides=[f"model.clip_pretrained={p}"]).model)

    with pytest.raises(CheckpointError, match="truncated or not a valid .safetensors"):
        load(truncated)
    with pytest.raises(CheckpointError, match="truncated or not a valid .pt"):
        load(garbage)
    with pytest.raises(CheckpointError, match="empty"):
        load(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nope.safetensors")
    missing = dict(good)
    del missing["visual.head.proj.weight"]
    missing["visual.extra.weight"] = torch.zeros(1)
    save_safetensors(missing, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "missing.safetensors")
    assert "missing keys: visual.head.proj.weight" in str(err.value)
    assert "unexpected keys: visual.extra.weight" in str(err.value)
    wrong = dict(good)
    wrong["visual.head.proj.weight"] = torch.zeros(7, 128)
    save_safetensors(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(
        CheckpointError, match=r"shape mismatch: visual.head.proj.weight \(file \(7, 128\), model \(32, 128\)\)"
    ):
        load(tmp_path / "wrong.safetensors")
    bad_sfx = tmp_path / "clip.ckpt"
    bad_sfx.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="suffix"):
        read_state_dict(bad_sfx)


def test_pretrained_tag_offline_fails_fast():
    t = time.time()
    with pytest.raises(WeightsUnavailableError, match="clip_pretrained=/path/to/"):
        resolve_pretrained("convnext_base_w_320", "laion_aesthetic_s13b_b82k")
    assert time.time() - t < 10
    with pytest.raises(ConfigError, match="neither a file nor an OpenCLIP tag"):
        resolve_pretrained("convnext_base_w_320", "no_such_tag")


def test_non_convnext_model_is_refused():
    with pytest.raises(ConfigError, match="ConvNeXt"):
        create_clip(build_config(overrides=["model.clip_model=ViT-B-16", "model.clip_pretrained="]).model)
    with pytest.raises(ConfigError, match="not an OpenCLIP model name"):
        create_clip(build_config(overrides=["model.clip_model=nonsense", "model.clip_pretrained="]).model)


def test_tokenizer_works_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    cfg = build_config()
    tok = make_tokenizer(cfg.model)
    ids = tok(["a photo of a cat.", "a sofa"])
    assert ids.shape == (2, 77) and ids[0, 0] == tok.sot_token_id
    assert make_tokenizer(build_config("dpseg-tiny").model)(["x"]).shape == (1, 16)


def test_text_templates_and_synonym_average(tiny_cfg):
    torch.manual_seed(0)
    _, _, text = build_towers(tiny_cfg.model)
    templates = ["a photo of a {}.", "a drawing of the {}."]
    T = text.encode(["cat", "sofa, couch", "lamp"], templates)
    assert T.shape == (3, 2, 32)
    assert torch.allclose(T.norm(dim=-1), torch.ones(3, 2), atol=1e-6)
    single = text.encode_sentences([t.format(s) for t in templates for s in ("sofa", "couch")]).view(2, 2, -1)
    expected = F.normalize(single.mean(dim=1), dim=-1)  # (M, synonyms, d) -> (M, d)
    assert torch.allclose(T[1], expected, atol=1e-6)
    assert not torch.allclose(T[1], single[:, 0], atol=1e-3)  # not just the first synonym
    # the embedding of a class does not depend on which other classes are encoded with it
    assert torch.allclose(text.encode(["lamp"], templates)[0], T[2], atol=1e-6)
    with pytest.raises(InputError, match="empty"):
        text.encode([], templates)
    with pytest.raises(InputError, match="empty"):
        text.encode([" , "], templates)
    with pytest.raises(InputError, match="'{}'"):
        text.encode(["cat"], ["no slot"])


def test_bad_image_shape(tiny_cfg):
    image, _, _ = build_towers(tiny_cfg.model)
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        image(torch.rand(3, 64, 64))

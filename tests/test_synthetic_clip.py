"""The tiny CLIP of the synthetic world: scene-resolution mosaics, the text gap in its captions, OpenCLIP save/load,
a short pretraining that learns, and zero-shot checks made at the scene resolution."""

import re

import numpy as np
import pytest
import torch

from dpseg.clip_loading import create_clip
from dpseg.config import build_config
from dpseg.data.synthetic.world import CAPTION_PATTERN_WORDS, PATTERNS, seen_classes
from dpseg.errors import InputError
from dpseg.model.towers import ImageTower
from dpseg.prompts.templates import get_templates
from dpseg.quickstart import clip_pretrain, zeroshot, zeroshot_probes
from dpseg.quickstart.clip_data import caption_universe, mosaics, phrase_of, tile_embeddings
from dpseg.quickstart.clip_pretrain import PretrainSettings, batch_captions, multi_positive_loss, pretrained_clip
from dpseg.quickstart.zeroshot import evaluate_zero_shot, format_report
from dpseg.quickstart.zeroshot_probes import object_embeddings

VOCABULARY_PATTERN = re.compile(r"\b(" + "|".join(PATTERNS) + r")\b")
CAPTION_PATTERN = re.compile(r"\b(" + "|".join(CAPTION_PATTERN_WORDS) + r")\b")


def test_caption_universe_names_only_seen_combinations():
    u = caption_universe()
    seen = {k.indices for k in seen_classes()}
    full = {tuple(r) for r in u if (r >= 0).all()}
    assert full == seen  # no unseen triple is ever a caption
    assert phrase_of(np.array([0, -1, 3])) == "red star" and phrase_of(np.array([-1, 1, -1])) == "striped shape"
    assert phrase_of(np.array([-1, 1, -1]), text_gap=True) == "stripy shape"
    assert phrase_of(np.array([2, 0, 0]), text_gap=True) == "blue plain circle"


@pytest.mark.parametrize("text_gap", [True, False])
def test_captions_never_use_the_vocabulary_pattern_words_with_the_text_gap(text_gap):
    templates = get_templates("imagenet80")
    settings = PretrainSettings(text_gap=text_gap)
    rng = np.random.default_rng(0)
    attrs = np.array([k.indices for k in seen_classes()] * 4)  # (B, 3)
    words = set()
    for _ in range(5):
        _, captions = batch_captions(
            attrs, list(rng.integers(80, size=len(attrs))), caption_universe(), templates, settings, rng
        )
        text = " ".join(captions)
        words |= set(VOCABULARY_PATTERN.findall(text)) | set(CAPTION_PATTERN.findall(text))
    if text_gap:
        assert words == set(CAPTION_PATTERN_WORDS)  # patterns are named, only ever by their caption synonyms
    else:
        assert words == set(PATTERNS)


def test_mosaics_and_tile_embeddings_keep_the_tile_order():
    tiles = torch.arange(8).float().view(8, 1, 1, 1).expand(8, 1, 4, 4)  # tile i is filled with the value i
    m = mosaics(tiles)  # (2, 1, 8, 8)
    assert m.shape == (2, 1, 8, 8)
    assert m[1, 0, 0, 0] == 4 and m[1, 0, 0, 7] == 5 and m[1, 0, 7, 0] == 6 and m[1, 0, 7, 7] == 7
    dense = torch.nn.functional.avg_pool2d(m, 2)  # (2, 1, 4, 4): a stride-2 "dense embedding" of the mosaics
    assert tile_embeddings(dense).flatten().tolist() == list(range(8))


def test_pretraining_sees_scene_resolution_mosaics_and_gap_captions(tmp_path, monkeypatch):
    """A tiny-budget run end to end: the image tower gets 128-px mosaics, the text tower gap captions only."""
    shapes, captions = [], []
    forward, tokenizer = ImageTower.forward, clip_pretrain.make_tokenizer

    def spy_forward(self, images):
        shapes.append(tuple(images.shape))
        return forward(self, images)

    def spy_tokenizer(cfg):
        tok = tokenizer(cfg)
        return lambda texts: captions.extend(texts) or tok(texts)

    monkeypatch.setattr(ImageTower, "forward", spy_forward)
    monkeypatch.setattr(clip_pretrain, "make_tokenizer", spy_tokenizer)
    path = pretrained_clip(
        build_config("synthetic"),
        tmp_path,
        PretrainSettings(steps=2, batch_size=8, pool_size=16, warmup=1),
        log=lambda m: None,
    )
    assert path.is_file() and shapes == [(2, 3, 128, 128)] * 2  # 8 tiles = two 2x2 mosaics at the scene resolution
    assert captions and not any(VOCABULARY_PATTERN.search(c) for c in captions)


def test_the_pool_holds_no_generator_images_unless_asked(monkeypatch):
    """World v3: the pretraining pool is scenes and crops of their objects (scene style) only; generator_images puts
    world v2's generator images back (drawn faithfully, in the prompt style with the style gap on)."""
    from dpseg.data.synthetic.generator import SyntheticGenerator
    from dpseg.quickstart.clip_data import render_pool

    made = []
    original = SyntheticGenerator.generate_with_masks

    def spy(self, texts, seeds):
        made.append((self.style, self.failures, len(texts)))
        return original(self, texts, seeds)

    monkeypatch.setattr(SyntheticGenerator, "generate_with_masks", spy)
    templates = get_templates("imagenet80")
    pool = render_pool(3, 20, 0.3, templates, 0, True, True, stride=16)
    assert made == [] and len(pool.tiles) == 20 and len(pool.scenes) == 3
    assert PretrainSettings().generator_images is False
    v2 = render_pool(3, 20, 0.3, templates, 0, True, True, stride=16, generator_images=True)
    assert len(v2.tiles) == 20 and len(made) == 20 - int(20 * 0.3)
    assert {(style, failures) for style, failures, _ in made} == {("prompt", 0.0)}
    # crops are the same scene crops either way: the first tiles of both pools are identical
    assert torch.equal(pool.tiles[:6], v2.tiles[:6])


def test_multi_positive_loss_prefers_true_pairs():
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    pos = torch.eye(4, dtype=torch.bool)
    good = multi_positive_loss(img, img, pos, torch.tensor(10.0))
    bad = multi_positive_loss(img, img.roll(1, 0), pos, torch.tensor(10.0))
    assert good < bad


def test_save_load_round_trip_is_bit_identical_and_keyed(tmp_path):
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
    switches = ({"text_gap": False}, {"generator_images": True}, {"attribute_weight": 1.0})
    for switch in switches:  # part of the cache key
        other = PretrainSettings(steps=2, batch_size=8, pool_size=16, warmup=1, **switch)
        assert clip_pretrain.settings_key(cfg, other) != clip_pretrain.settings_key(cfg, settings)
    # the style gap and the crop share only shape a pool with generator images: one CLIP for both styles without them
    for switch in ({"style_gap": False}, {"crop_fraction": 0.5}):
        other = PretrainSettings(steps=2, batch_size=8, pool_size=16, warmup=1, **switch)
        assert clip_pretrain.settings_key(cfg, other) == clip_pretrain.settings_key(cfg, settings)
        with_generator = [PretrainSettings(steps=2, generator_images=True, **s) for s in ({}, switch)]
        assert len({clip_pretrain.settings_key(cfg, s) for s in with_generator}) == 2
    path.write_bytes(b"broken")  # a damaged cache file is retrained, not trusted
    assert pretrained_clip(cfg, tmp_path, settings, log=lambda m: None) == path and path.stat().st_size > 1000
    with pytest.raises(InputError, match="steps >= 1"):
        pretrained_clip(cfg, tmp_path, PretrainSettings(steps=0))
    with pytest.raises(InputError, match="multiple of 4"):
        pretrained_clip(cfg, tmp_path, PretrainSettings(batch_size=6))


def test_object_embedding_is_the_coverage_weighted_mean_of_its_cells():
    dense = torch.zeros(1, 2, 4, 4)  # (N, d, h, w) for a 128-px scene: 32-px cells
    dense[0, 0, 1, 1] = 1.0
    dense[0, 1, 1, 2] = 1.0
    labels = torch.full((1, 128, 128), -1)
    labels[0, 32:64, 32:64] = 3  # fills cell (1, 1)
    labels[0, 32:64, 64:72] = 3  # a quarter of cell (1, 2)
    emb = object_embeddings(dense, labels, torch.tensor([[0, 3]]))
    expected = torch.nn.functional.normalize(torch.tensor([[1.0, 0.25]]), dim=-1)
    assert torch.allclose(emb, expected)


def test_zero_shot_runs_at_the_scene_resolution(tmp_path, monkeypatch):
    path = pretrained_clip(
        build_config("synthetic"),
        tmp_path,
        PretrainSettings(steps=1, batch_size=8, pool_size=16, warmup=1),
        log=lambda m: None,
    )
    cfg = build_config("synthetic", overrides=[f"model.clip_pretrained={path}"])
    shapes = []
    forward = ImageTower.forward
    monkeypatch.setattr(ImageTower, "forward", lambda self, x: shapes.append(tuple(x.shape[-2:])) or forward(self, x))
    report = evaluate_zero_shot(
        cfg, per_class=1, vocabs=("unseen", "all"), kinds=("scene-objects", "dense"), words="caption"
    )
    assert set(shapes) == {(128, 128)}  # the segmenter's resolution, not the 64-px prompt size
    entry = report["unseen-among-all/scene-objects"]
    assert entry["classes"] == 75 and entry["images"] == 16 and entry["chance"] == pytest.approx(1 / 75)
    assert report["unseen/scene-objects"]["classes"] == 16
    assert 0 < report["unseen/dense"]["chance"] < 100 and 0 <= report["unseen/dense"]["mIoU"] <= 100
    assert "| unseen/scene-objects | 16 |" in format_report(report) and "caption words" in format_report(report)
    with pytest.raises(InputError, match="words must be one of"):
        evaluate_zero_shot(cfg, words="synonyms")
    assert zeroshot.KINDS[0] == "scene-objects"


def test_zero_shot_prompt_and_crop_kinds(tmp_path, monkeypatch):
    """The visual kinds: prompt images (with the generator's failures, encoded as the bank encodes them), ground-truth
    crops framed as pass 2 frames a region, dual prototypes; the hard/other split of the generator's classes."""
    from dpseg.data.synthetic.generator import SyntheticGenerator

    path = pretrained_clip(
        build_config("synthetic"),
        tmp_path,
        PretrainSettings(steps=1, batch_size=8, pool_size=16, warmup=1),
        log=lambda m: None,
    )
    cfg = build_config("synthetic", overrides=[f"model.clip_pretrained={path}"])
    made, sizes = [], []
    generate, encode = SyntheticGenerator.generate_with_masks, zeroshot_probes.encode_prompt_images
    monkeypatch.setattr(
        SyntheticGenerator,
        "generate_with_masks",
        lambda self, texts, seeds: made.append((self.failures, *texts)) or generate(self, texts, seeds),
    )
    monkeypatch.setattr(
        zeroshot_probes,
        "encode_prompt_images",
        lambda tower, images, size, **kw: sizes.append(size) or encode(tower, images, size, **kw),
    )
    kinds = (
        "prompt-images",
        "scene-objects-by-prompts",
        "scene-objects-by-crops",
        "crops-by-prompts",
        "scene-objects-by-dual",
    )
    report = evaluate_zero_shot(cfg, per_class=2, vocabs=("unseen",), kinds=kinds, failures=0.5)
    templates = get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
    assert {m[0] for m in made} == {0.5} and set(sizes) == {cfg.model.prompt_image_size}
    assert {t for m in made for t in m[1:]} >= {
        templates[0].format("red striped circle"),
        templates[1].format("red striped circle"),
    }
    for kind in kinds:
        entry = report[f"unseen/{kind}"]
        assert entry["classes"] == 16 and 0 <= entry["accuracy"] <= 1
        assert 0 <= entry["hard_classes_accuracy"] <= 1 and 0 <= entry["other_classes_accuracy"] <= 1
    assert report["unseen/crops-by-prompts"]["images"] == report["unseen/scene-objects-by-dual"]["images"] == 32
    assert "| unseen/scene-objects-by-crops | 16 |" in format_report(report) and "failures x0.5" in format_report(
        report
    )


def test_short_pretraining_beats_chance_at_the_scene_resolution(tmp_path):
    torch.manual_seed(0)
    cfg = build_config("synthetic")
    settings = PretrainSettings(steps=80, batch_size=64, pool_size=320, scenes=200, warmup=10, text_gap=False)
    path = pretrained_clip(cfg, tmp_path, settings, log=lambda m: None)
    cfg = build_config("synthetic", overrides=[f"model.clip_pretrained={path}"])
    report = evaluate_zero_shot(cfg, per_class=4, vocabs=("seen",), kinds=("scene-objects",))
    entry = report["seen/scene-objects"]
    assert entry["images"] == 236 and entry["chance"] == pytest.approx(1 / 59)
    assert entry["accuracy"] > 2.5 * entry["chance"], entry  # 7-9% for seeds 0-2 (59 classes after 80 steps)
    assert entry["colour_accuracy"] > 0.5, entry  # chance 0.2: the easiest attribute is learnt first (0.86-0.90)


def test_cell_oracle_loses_objects_that_never_dominate_a_cell():
    from dpseg.quickstart.zeroshot_probes import cell_oracle_accuracy

    labels = torch.full((1, 64, 64), -1)
    labels[0, :32, :32] = 0  # class 0 fills cell (0, 0)
    labels[0, 24:32, 24:32] = 1  # class 1: a small object inside the same cell, never its majority
    labels[0, 32:, 32:] = 2  # class 2 fills cell (1, 1)
    assert cell_oracle_accuracy(labels, torch.tensor([[0, 0], [0, 1], [0, 2]])) == pytest.approx(2 / 3)


def test_attribute_heads_add_a_loss_only_when_weighted(tmp_path):
    """The optional image-side attribute heads (method study 1d): weight 0 draws no extra random numbers and leaves
    the recipe and its cache key as they were; a weight trains the tower through them (different weights)."""
    cfg = build_config("synthetic")
    small = dict(steps=2, batch_size=8, pool_size=16, scenes=8, warmup=1)
    plain, _ = clip_pretrain.pretrain(cfg, PretrainSettings(**small), log=lambda m: None)
    weighted, _ = clip_pretrain.pretrain(cfg, PretrainSettings(**small, attribute_weight=1.0), log=lambda m: None)
    again, _ = clip_pretrain.pretrain(cfg, PretrainSettings(**small, attribute_weight=0.0), log=lambda m: None)
    a, b, c = plain.state_dict(), weighted.state_dict(), again.state_dict()
    assert a.keys() == b.keys()  # the heads are not part of the CLIP
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert not torch.equal(a["visual.head.proj.weight"], b["visual.head.proj.weight"])


def test_a_shipped_clip_is_used_only_for_its_own_settings_and_can_be_bypassed(tmp_path, monkeypatch):
    cfg = build_config("synthetic")
    settings = PretrainSettings(steps=2, batch_size=8, pool_size=16, warmup=1)
    trained = pretrained_clip(cfg, tmp_path / "maker", settings, log=lambda m: None)
    shipped_dir = tmp_path / "shipped"
    monkeypatch.setattr(clip_pretrain, "SHIPPED_DIR", shipped_dir)
    shipped = clip_pretrain.ship(trained, report={"seen": 1.0})
    assert shipped == shipped_dir / trained.name and shipped.stat().st_size < 0.6 * trained.stat().st_size
    from safetensors import safe_open

    with safe_open(str(shipped), framework="pt") as f:
        assert f.get_tensor("visual.head.proj.weight").dtype == torch.float16
        assert f.metadata()["key"] == clip_pretrain.settings_key(cfg, settings) and "zero_shot" in f.metadata()
    logs: list[str] = []
    assert pretrained_clip(cfg, tmp_path / "user", settings, log=logs.append) == shipped
    assert "shipped" in logs[-1] and not (tmp_path / "user").exists()  # nothing trained, nothing cached
    loaded = create_clip(build_config("synthetic", overrides=[f"model.clip_pretrained={shipped}"]).model)
    assert loaded.visual.head.proj.weight.dtype == torch.float32  # cast back on load, like OpenCLIP's fp16 files
    own = pretrained_clip(cfg, tmp_path / "user", settings, log=lambda m: None, use_shipped=False)
    assert own == tmp_path / "user" / trained.name  # --retrain-clip trains its own
    other = PretrainSettings(steps=3, batch_size=8, pool_size=16, warmup=1)  # other settings: never the shipped file
    assert pretrained_clip(cfg, tmp_path / "user", other, log=lambda m: None).parent == tmp_path / "user"
    (tmp_path / "user" / trained.name).unlink()
    shipped.write_bytes(b"broken")  # a damaged installation trains its own and says so
    logs.clear()
    assert pretrained_clip(cfg, tmp_path / "user", settings, log=logs.append).parent == tmp_path / "user"
    assert any("unreadable" in m for m in logs)


def test_the_default_quickstart_clip_is_shipped_and_loads_strictly():
    from dpseg.prompts.generate import get_generator
    from dpseg.quickstart.run import BUDGETS, clip_settings

    cfg = build_config("synthetic")
    style = get_generator("synthetic", cfg.prompts).style
    key = clip_pretrain.settings_key(cfg, clip_settings(BUDGETS["default"], cfg, True, style))
    path = clip_pretrain.SHIPPED_DIR / f"tiny-clip-{key}.safetensors"
    assert path.is_file(), f"no shipped tiny CLIP for the default budget's settings (key {key}): re-ship it"
    model = create_clip(build_config("synthetic", overrides=[f"model.clip_pretrained={path}"]).model)
    assert torch.isfinite(model.visual.head.proj.weight).all()

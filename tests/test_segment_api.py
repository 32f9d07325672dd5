"""The Segmenter Python API on the tiny model: results, shared inference path, prompts and their cache, refinement,
tiling, bounded-memory large images, min_score, errors."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from segment_helpers import artifacts, scene

from dpseg.errors import BankError, CheckpointError, DataError, InputError
from dpseg.evaluation.inference import Inference
from dpseg.segmenter import SegmentationResult, Segmenter
from dpseg.vocab import parse_class_list


@pytest.fixture(scope="module")
def seg():
    a = artifacts()
    s = Segmenter.from_pretrained(a.ckpt, device="cpu", bank=str(a.bank))
    s.set_vocabulary(a.classes)
    return s


def test_result_has_labels_scores_and_class_stats(seg):
    img = scene()
    r = seg.segment(img)
    assert isinstance(r, SegmentationResult) and r.size == (72, 96) and r.labels.dtype == np.uint8
    assert len(np.unique(r.labels)) > 1, (
        "test image must give a non-constant map for the comparisons below to mean anything"
    )
    assert r.class_names == artifacts().classes and r.refined and r.labels_pass1 is not None
    for c in r.classes:  # stats recomputed independently from the maps
        mask = r.labels == c.index
        assert c.pixels == mask.sum() and c.area == pytest.approx(mask.mean())
        assert c.mean_score == (pytest.approx(r.scores[mask].mean(), rel=1e-5) if mask.any() else None)
    assert sum(c.area for c in r.classes) == pytest.approx(1.0)
    assert [c.pixels for c in r.present] == sorted((c.pixels for c in r.classes if c.pixels), reverse=True)
    assert r.mask(r.present[0].name).sum() == r.present[0].pixels
    json.dumps(r.to_dict())  # JSON-ready


def test_same_maps_as_the_evaluation_inference_path(seg):
    img = scene(seed=3)
    r = seg.segment(img, refine=True)
    inference = Inference(seg.model, seg.prompts, seg.cfg.eval, two_pass=True)  # as evaluate() is given it
    ref = inference.predict([torch.from_numpy(img).permute(2, 0, 1).contiguous()])[0]
    assert np.array_equal(r.labels, ref["pass2"].labels.numpy()) and np.array_equal(
        r.labels_pass1, ref["pass1"].labels.numpy()
    )
    assert np.allclose(r.scores, ref["pass2"].scores.numpy())


def test_refine_off_gives_pass1_and_list_input_gives_list(seg):
    a, b = scene(seed=1), scene(50, 40, seed=2)
    refined = seg.segment(a, refine=True)
    single = seg.segment(a, refine=False)
    assert not single.refined and single.labels_pass1 is None
    assert np.array_equal(single.labels, refined.labels_pass1)
    both = seg.segment([a, b], refine=False, batch_size=2)
    assert [r.size for r in both] == [(72, 96), (50, 40)]
    assert np.array_equal(both[0].labels, single.labels)
    assert np.array_equal(both[1].labels, seg.segment(b, refine=False).labels)


def test_vocabulary_cache_switching_back_encodes_nothing(seg, monkeypatch):
    from dpseg.prompts.bank import PromptBank

    calls = {"text": 0, "bank": 0, "image": 0}
    encode, load = seg.model.text_encoder.encode, PromptBank.load_class
    encode_prompts = seg.model.prompt_encoder.encode_prompts
    monkeypatch.setattr(
        seg.model.text_encoder,
        "encode",
        lambda *a, **k: calls.__setitem__("text", calls["text"] + 1) or encode(*a, **k),
    )
    monkeypatch.setattr(
        seg.model.prompt_encoder,
        "encode_prompts",
        lambda *a, **k: calls.__setitem__("image", calls["image"] + 1) or encode_prompts(*a, **k),
    )
    monkeypatch.setattr(
        PromptBank, "load_class", lambda self, n: calls.__setitem__("bank", calls["bank"] + 1) or load(self, n)
    )
    seg.set_vocabulary(["lamp", "cat"])
    first = dict(calls)
    assert first["bank"] == 2
    seg.set_vocabulary(["cat", "lamp", "floor"])
    second = dict(calls)
    assert second["bank"] > first["bank"]
    seg.set_vocabulary(["lamp", "cat"])  # back to the first vocabulary
    assert calls == second and seg.class_names == ["lamp", "cat"] and seg.prompts.class_names == ["lamp", "cat"]
    assert calls["text"] == 0 and calls["image"] == 0  # every prompt came from the bank: nothing was encoded
    seg.set_vocabulary(artifacts().classes)


def test_cache_notices_a_changed_bank_entry(seg, tmp_path):
    import shutil

    bank = shutil.copytree(artifacts().bank, tmp_path / "bank")
    seg.set_vocabulary(["cat", "lamp"], bank=str(bank))
    before = seg.prompts.visual.clone()
    from dpseg.prompts.bank import PromptBank

    b = PromptBank.open(bank)
    e = b.load_class("cat")
    b.write_class("cat", e["text"], -e["visual"], [-s for s in e["visual_stages"]], "exemplar", [0])
    seg.set_vocabulary(["cat", "lamp"], bank=str(bank))
    assert torch.allclose(seg.prompts.visual[0], -before[0]) and torch.allclose(seg.prompts.visual[1], before[1])
    seg.set_vocabulary(artifacts().classes)


def test_visual_model_without_visual_prompts_needs_explicit_text_only(caplog):
    a = artifacts()
    s = Segmenter.from_pretrained(a.ckpt, device="cpu")  # no bank anywhere
    with pytest.raises(BankError, match="text_only=True") as e:
        s.set_vocabulary(["cat", "lamp"])
    assert "\n" not in str(e.value)
    with caplog.at_level(logging.INFO, logger="dpseg.segmenter"):
        s.set_vocabulary(["cat", "lamp"], text_only=True)
    assert s.degraded and "DEGRADED" in s.prompt_source
    assert any(r.levelno == logging.WARNING and "DEGRADED" in r.getMessage() for r in caplog.records)
    r = s.segment(scene())
    assert r.refined and r.meta["degraded"] and r.to_dict()["degraded"]
    with pytest.raises(InputError, match="cannot be combined"):
        s.set_vocabulary(["cat"], bank=str(a.bank), text_only=True)


def test_text_model_runs_text_only_without_degradation_and_refuses_refinement():
    s = Segmenter.from_pretrained(artifacts().ckpt_text, device="cpu")
    s.set_vocabulary("cat, lamp")
    assert not s.degraded and s.prompt_source.startswith("text") and s.prompts.visual is None
    r = s.segment(scene())
    assert not r.refined and r.size == (72, 96)
    with pytest.raises(InputError, match="refine=False"):
        s.segment(scene(), refine=True)


def test_exemplar_folders_alone_or_with_a_bank(seg, tmp_path):
    rng = np.random.default_rng(5)
    for name in ("cat", "lamp", "not in vocabulary"):
        (tmp_path / name).mkdir()
        Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(tmp_path / name / "1.png")
    no_bank = Segmenter(seg.model, seg.cfg, "cpu")
    assert no_bank.default_bank is None
    with pytest.raises(InputError, match="no images for 1 classes.*floor"):
        no_bank.set_vocabulary(["cat", "lamp", "floor"], exemplars=str(tmp_path))
    no_bank.set_vocabulary(["cat", "lamp"], exemplars=str(tmp_path))
    assert no_bank.prompt_source == f"exemplars {tmp_path} (2 classes)" and not no_bank.degraded
    bank_only = seg.set_vocabulary(["cat", "lamp", "floor"]).prompts
    seg.set_vocabulary(["cat", "lamp", "floor"], exemplars=str(tmp_path))
    assert seg.prompt_source == f"exemplars {tmp_path} (2 classes) + bank {artifacts().bank} (1 class)"
    assert not torch.allclose(seg.prompts.visual[0], bank_only.visual[0])
    assert torch.allclose(seg.prompts.visual[2], bank_only.visual[2]) and torch.allclose(
        seg.prompts.text, bank_only.text
    )
    with pytest.raises(InputError, match="no sub-folder named like any class"):
        seg.set_vocabulary(["floor"], exemplars=str(tmp_path))
    seg.set_vocabulary(artifacts().classes)


def test_class_string_rules():
    assert parse_class_list("cat, sofa, lamp") == ["cat", "sofa", "lamp"]
    assert parse_class_list(" sofa ,couch; cat ;") == ["sofa, couch", "cat"]
    assert parse_class_list("sofa, couch\nfloor lamp\n") == ["sofa, couch", "floor lamp"]
    for bad, msg in [
        ("", "empty"),
        (" ; ,", "empty"),
        ("cat, lamp, cat", "'cat' more than once"),
        ("sofa, couch; couch ,sofa ; sofa,couch", "'sofa, couch' more than once"),
        ("red solid square, red  solid square", "'red solid square' .*differ only in case or spacing"),
        ("Cat; dog; cat", r"'Cat' \(written 'Cat', 'cat'"),
    ]:
        with pytest.raises(InputError, match=msg):
            parse_class_list(bad)


def test_one_class_in_two_spellings_is_refused_by_set_vocabulary(seg):
    with pytest.raises(InputError, match=r"names 'lamp' \(written 'lamp', 'LAMP'.* more than once"):
        seg.set_vocabulary(["lamp", "floor", "LAMP"])
    with pytest.raises(InputError, match="'floor lamp' .*differ only in case or spacing"):
        seg.set_vocabulary("floor lamp; floor  lamp")


def test_tiles_cover_the_image_and_each_core_matches_its_tile(seg):
    img = scene(100, 150, seed=4)
    whole = seg.segment(img, refine=False, tile=256)  # one tile holding everything = no tiling
    assert np.array_equal(whole.labels, seg.segment(img, refine=False).labels)
    tiled = seg.segment(img, refine=False, tile=64)  # starts 0, 36 in y (100) and 0, 48, 86 in x (150)
    assert tiled.size == (100, 150)
    first = seg.segment(img[:64, :64], refine=False)
    assert np.array_equal(tiled.labels[:50, :56], first.labels[:50, :56])  # seams mid-overlap: (36+64)//2, (48+64)//2
    last = seg.segment(img[36:, 86:], refine=False)
    assert np.array_equal(tiled.labels[50:, 107:], last.labels[14:, 21:])
    with pytest.raises(InputError, match="multiple of 32"):
        seg.segment(img, tile=50)


def test_large_images_are_predicted_downscaled_then_enlarged(seg, monkeypatch):
    img = scene(120, 160, seed=6)
    seg.max_full_pixels = 60 * 80
    seen = []
    import dpseg.evaluation.inference as module

    real = module.predict
    monkeypatch.setattr(
        module, "predict", lambda f, ims, *a: seen.extend(tuple(i.shape) for i in ims) or real(f, ims, *a)
    )
    try:
        r = seg.segment(img, refine=False)
    finally:
        seg.max_full_pixels = 4096 * 4096
    assert seen == [(3, 60, 80)] and r.size == (120, 160)
    small = seg.segment(
        np.asarray(Image.fromarray(img).resize((80, 60), Image.BILINEAR, reducing_gap=3.0)), refine=False
    )
    assert np.array_equal(r.labels[::2, ::2], small.labels)  # nearest enlargement of the downscaled prediction


def test_min_score_leaves_pixels_unlabelled(seg):
    img = scene(seed=7)
    base = seg.segment(img, refine=False)
    t = float(np.median(base.scores))
    r = seg.segment(img, refine=False, min_score=t)
    low = base.scores < t
    assert low.any() and (r.labels[low] == 255).all() and np.array_equal(r.labels[~low], base.labels[~low])
    assert r.unlabelled_value == 255 and r.unlabelled_pixels == low.sum() == r.to_dict()["unlabelled_pixels"]
    assert sum(c.pixels for c in r.classes) == (~low).sum()
    with pytest.raises(InputError, match="min_score"):
        seg.segment(img, min_score=1.5)


def test_bad_inputs_raise_one_line_errors(seg, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cases = [
        (tmp_path / "missing.png", DataError, "does not exist"),
        (tmp_path / "bad.jpg", DataError, "cannot read"),
        (np.zeros((4, 4, 5), np.uint8), InputError, "shape"),
        (np.full((4, 4), 2.0), InputError, r"\[0, 1\]"),
        (np.zeros((0, 4, 3), np.uint8), InputError, "empty"),
        (3, InputError, "cannot segment a int"),
    ]
    for image, kind, msg in cases:
        with pytest.raises(kind, match=msg) as e:
            seg.segment(image)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="no images"):
        seg.segment([])
    with pytest.raises(InputError, match="set_vocabulary"):
        Segmenter(seg.model, seg.cfg, "cpu").segment(scene())


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Segmenter.from_pretrained(tmp_path / "nothing", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            Segmenter.from_pretrained(artifacts().ckpt, device="cuda")
    with pytest.raises(CheckpointError, match="hub|unreachable") as e:
        Segmenter.from_pretrained("someone/dpseg-b-not-cached", device="cpu")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_gpu_matches_cpu(seg):
    a = artifacts()
    gpu = Segmenter.from_pretrained(a.ckpt, device="cuda", bank=str(a.bank)).set_vocabulary(a.classes)
    img = scene(seed=8)
    r_gpu, r_cpu = gpu.segment(img), seg.segment(img)
    assert r_gpu.size == r_cpu.size and (r_gpu.labels == r_cpu.labels).mean() > 0.98

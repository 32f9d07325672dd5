"""Inference protocols (whole / slide), chunked argmax, and end-to-end evaluation with a fake and the tiny model."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dpseg.config import EvalConfig
from dpseg.data.catalog import build_dataset
from dpseg.errors import ConfigError, InputError
from dpseg.evaluation import inference
from dpseg.evaluation.evaluator import evaluate
from dpseg.evaluation.inference import Protocol, chunked_argmax, model_forward, predict, window_starts
from dpseg.model.dual_prompt import PromptSet

COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.1, 0.9], [0.1, 0.8, 0.1], [0.9, 0.9, 0.2]])


class ColourMatcher(torch.nn.Module):
    """Same call signature as DPSeg: logits_k = -50 * ||avgpool4(image) - colour_k||^2 at stride 4."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, images, prompts, class_chunk=0):
        assert images.shape[-1] % 32 == 0 and images.shape[-2] % 32 == 0 and images.is_floating_point()
        self.calls.append(tuple(images.shape))
        x = F.avg_pool2d(images, 4)  # (B, 3, H/4, W/4)
        c = prompts.text[:, 0, :]  # (K, 3)
        d = ((x[:, None] - c[None, :, :, None, None]) ** 2).sum(2)  # (B, 1, 3, h, w) - (1, K, 3, 1, 1) -> (B, K, h, w)
        return {"logits": -50 * d}


def colour_prompts(k=4):
    return PromptSet([f"c{i}" for i in range(k)], COLOURS[:k, None, :].clone())  # text (K, M=1, 3)


def scene(h, w, seed=0):
    """Four colour blocks with random boundaries -> (uint8 image (3, H, W), label (H, W))."""
    g = np.random.default_rng(seed)
    y, x = int(g.integers(h // 4, 3 * h // 4)), int(g.integers(w // 4, 3 * w // 4))
    label = np.zeros((h, w), np.int64)
    label[:y, x:] = 1
    label[y:, :x] = 2
    label[y:, x:] = 3
    image = (COLOURS.numpy()[label] * 255).round().astype(np.uint8)  # (H, W, 3)
    return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label)


def small(name, **kw):
    return Protocol(
        name, short_side=64, input_size=64, window=32, overlap=0.333, class_chunk=kw.pop("class_chunk", 2), **kw
    )


@pytest.mark.parametrize("name", ["whole", "slide"])
@pytest.mark.parametrize("size", [(75, 101), (64, 64), (130, 47)])
def test_protocols_segment_any_size(name, size):
    model, prompts = ColourMatcher(), colour_prompts()
    image, label = scene(*size)
    (out,) = predict(model_forward(model, prompts), [image], small(name))
    pred = out["pass1"]
    assert pred.labels.shape == size and pred.labels.dtype == torch.int64 and pred.scores.shape == size
    assert (pred.labels == label).float().mean() > 0.9
    assert all(s[-1] == 64 for s in model.calls)  # every view went through the model at input_size


def test_whole_batches_images_of_different_sizes():
    model = ColourMatcher()
    (a, _), (b, _) = scene(50, 90, 1), scene(120, 40, 2)
    outs = predict(model_forward(model, colour_prompts()), [a, b], small("whole"))
    assert model.calls == [(2, 3, 64, 64)]
    assert outs[0]["pass1"].labels.shape == (50, 90) and outs[1]["pass1"].labels.shape == (120, 40)


def test_slide_views_and_window_geometry():
    assert window_starts(640, 384, int(384 * (1 - 0.333))) == [0, 256]  # CAT-Seg: 2 x 2 windows on 640
    assert window_starts(700, 384, 256) == [0, 256, 316]  # last window flush with the border
    assert window_starts(300, 384, 256) == [0]
    model = ColourMatcher()
    predict(model_forward(model, colour_prompts()), [scene(80, 100)[0]], Protocol("slide", class_chunk=4))
    assert model.calls == [(5, 3, 768, 768)]  # 4 windows + 1 global view, each at input_size


def test_slide_fuses_window_average_with_global_view():
    """Windows say p = sigmoid(2) for class 0, the global view p = sigmoid(-1): fused = their mean everywhere,
    including where windows overlap (so the overlap count must divide exactly)."""

    def forward(views):
        n = views.shape[0]
        logits = torch.zeros(n, 2, 16, 16)
        logits[:, 0] = 2.0
        logits[-1, 0] = -1.0
        logits[:, 1] = -20.0
        return {"pass1": logits}

    (out,) = predict(forward, [torch.zeros(3, 70, 90, dtype=torch.uint8)], small("slide"))
    expected = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    assert torch.allclose(out["pass1"].scores, expected.expand(70, 90), atol=1e-5)
    assert (out["pass1"].labels == 0).all()


def test_chunked_argmax_equals_global_argmax_with_ties():
    g = torch.Generator().manual_seed(0)
    full = torch.randint(0, 4, (23, 9, 11), generator=g).float()  # many ties
    for chunk in (1, 3, 5, 23):
        pred = chunked_argmax(lambda a, b: full[a:b], 23, (9, 11), chunk, "cpu")
        val, idx = full.max(0)
        assert torch.equal(pred.scores, val)
        first = (full == val).float().argmax(0)  # lowest index among the maxima
        assert torch.equal(pred.labels, first)


def test_full_resolution_maps_are_built_in_bounded_chunks(monkeypatch):
    spans = []
    monkeypatch.setattr(inference, "MAX_CHUNK_ELEMS", 3 * 40 * 50)
    real = inference.chunked_argmax

    def spy(scores_for, k, hw, chunk, device):
        def wrapped(a, b):
            s = scores_for(a, b)
            spans.append(s.shape)
            return s

        return real(wrapped, k, hw, chunk, device)

    monkeypatch.setattr(inference, "chunked_argmax", spy)
    k = 40
    prompts = PromptSet([f"c{i}" for i in range(k)], torch.rand(k, 1, 3))
    for name in ("whole", "slide"):
        spans.clear()
        predict(model_forward(ColourMatcher(), prompts), [scene(40, 50)[0]], small(name, class_chunk=16))
        assert sum(s[0] for s in spans) == k and max(s[0] for s in spans) == 3 and all(s[1:] == (40, 50) for s in spans)


def test_two_pass_keys_and_chunk_are_forwarded():
    seen = {}

    def fake_refine(model, images, prompts, policy, class_chunk=None):
        seen["chunk"] = class_chunk
        first = model(images, prompts)["logits"]
        return {"logits_pass1": first, "logits": -first}

    fwd = model_forward(ColourMatcher(), colour_prompts(), two_pass=True, class_chunk=7, refine_fn=fake_refine)
    image, label = scene(64, 64)
    (out,) = predict(fwd, [image], small("whole"))
    assert seen["chunk"] == 7 and set(out) == {"pass1", "pass2"}
    assert (out["pass1"].labels == label).float().mean() > 0.9 > (out["pass2"].labels == label).float().mean()


def test_protocol_and_input_errors():
    with pytest.raises(ConfigError, match="multiple of 32"):
        Protocol("whole", input_size=100)
    with pytest.raises(ConfigError, match="'whole' or 'slide'"):
        Protocol("tiles")
    with pytest.raises(ConfigError, match="slide_overlap"):
        Protocol("slide", overlap=1.0)
    fwd = model_forward(ColourMatcher(), colour_prompts())
    with pytest.raises(InputError, match="uint8 tensors"):
        predict(fwd, [torch.rand(3, 10, 10)], small("whole"))
    with pytest.raises(InputError, match=r"expected \(1, K=7"):
        predict(fwd, [scene(32, 32)[0]], small("whole"), num_classes=7)


def write_scenes(root, n, classes=("red", "blue", "green", "yellow")):
    (root / "images/val").mkdir(parents=True)
    (root / "labels/val").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes))
    for i in range(n):
        image, label = scene(48 + 8 * i, 80 - 4 * i, seed=i)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / f"images/val/s{i}.png")
        lab = label.numpy().astype(np.uint8)
        lab[:3] = 255
        Image.fromarray(lab).save(root / f"labels/val/s{i}.png")


@pytest.mark.parametrize("protocol", ["whole", "slide"])
def test_evaluate_on_custom_folder(tmp_path, protocol):
    write_scenes(tmp_path / "ds", 4)
    ds = build_dataset(tmp_path / "ds")
    cfg = dataclasses.replace(
        EvalConfig(),
        protocol=protocol,
        short_side=64,
        input_size=64,
        slide_window=32,
        two_pass=False,
        num_workers=0,
        batch_size=2,
    )
    res = evaluate(ColourMatcher(), colour_prompts(), ds, cfg, progress=False)
    assert res["num_images"] == 4 and set(res) >= {"pass1", "seconds", "protocol"} and "pass2" not in res
    assert res["pass1"]["mIoU"] > 90 and res["pass1"]["classes_present"] == 4
    wrong = PromptSet(["c0", "c1", "c2", "c3"], COLOURS[[1, 0, 3, 2], None, :].clone())  # classes swapped
    assert evaluate(ColourMatcher(), wrong, ds, cfg, progress=False)["pass1"]["mIoU"] < 10
    assert evaluate(ColourMatcher(), colour_prompts(), ds, cfg, progress=False, max_images=1)["num_images"] == 1
    with pytest.raises(InputError, match="prompts hold 3 classes but dataset 'ds:val' is prompted with 4"):
        evaluate(ColourMatcher(), colour_prompts(3), ds, cfg, progress=False)


def test_evaluate_tiny_dpseg_both_passes(tmp_path, tiny_cfg):
    from helpers import random_prompts, tiny_model

    model, cfg = tiny_model()
    model.eval()
    write_scenes(tmp_path / "ds", 1)  # one image: the tiny model costs ~1.5 s per decoder pass on 2 CPU cores
    ds = build_dataset(tmp_path / "ds")
    prompts = random_prompts(model, 4, names=ds.vocabulary)
    ecfg = dataclasses.replace(cfg.eval, num_workers=0, two_pass=True)
    res = evaluate(model, prompts, ds, ecfg, progress=False)
    assert set(res) >= {"pass1", "pass2"}
    for key in ("pass1", "pass2"):
        assert res[key]["pixels"] == int((ds[0]["label"] >= 0).sum())
        assert 0 <= res[key]["mIoU"] <= 100

"""The one inference path: protocols (whole / slide), chunked argmax, the two-pass rule, and end-to-end evaluation
with a fake and the tiny model."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dpseg.config import EarlyRejection, EvalConfig
from dpseg.data.catalog import build_dataset
from dpseg.errors import ConfigError, InputError
from dpseg.evaluation import inference, protocols
from dpseg.evaluation.evaluator import evaluate
from dpseg.evaluation.inference import Inference
from dpseg.evaluation.protocols import chunked_argmax, predict, window_starts
from dpseg.model.dual_prompt import PromptSet

COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.1, 0.9], [0.1, 0.8, 0.1], [0.9, 0.9, 0.2]])


class ColourMatcher(torch.nn.Module):
    """Same call signature as DPSeg: logits_k = -50 * ||avgpool4(image) - colour_k||^2 at stride 4."""

    needs_visual_prompts = False

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
    settings = {"short_side": 64, "input_size": 64, "slide_window": 32, "slide_overlap": 0.333, "class_chunk": 2}
    return EvalConfig(protocol=name, **{**settings, "two_pass": False, **kw})


@pytest.mark.parametrize("name", ["whole", "slide"])
@pytest.mark.parametrize("size", [(75, 101), (64, 64), (130, 47)])
def test_protocols_segment_any_size(name, size):
    model, prompts = ColourMatcher(), colour_prompts()
    image, label = scene(*size)
    (out,) = Inference(model, prompts, small(name)).predict([image])
    pred = out["pass1"]
    assert pred.labels.shape == size and pred.labels.dtype == torch.uint8 and pred.scores.shape == size
    assert (pred.labels == label).float().mean() > 0.9
    assert all(s[-1] == 64 for s in model.calls)  # every view went through the model at input_size


def test_whole_batches_images_of_different_sizes():
    model = ColourMatcher()
    (a, _), (b, _) = scene(50, 90, 1), scene(120, 40, 2)
    outs = Inference(model, colour_prompts(), small("whole")).predict([a, b])
    assert model.calls == [(2, 3, 64, 64)]
    assert outs[0]["pass1"].labels.shape == (50, 90) and outs[1]["pass1"].labels.shape == (120, 40)


def test_slide_views_and_window_geometry():
    assert window_starts(640, 384, int(384 * (1 - 0.333))) == [0, 256]  # CAT-Seg: 2 x 2 windows on 640
    assert window_starts(700, 384, 256) == [0, 256, 316]  # last window flush with the border
    assert window_starts(300, 384, 256) == [0]
    model = ColourMatcher()
    Inference(model, colour_prompts(), EvalConfig(protocol="slide", class_chunk=4)).predict([scene(80, 100)[0]])
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

    (out,) = predict(forward, [torch.zeros(3, 70, 90, dtype=torch.uint8)], small("slide"), 2)
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
        assert torch.equal(pred.labels.long(), first)


def test_full_resolution_maps_are_built_in_bounded_chunks(monkeypatch):
    spans = []
    monkeypatch.setattr(protocols, "MAX_CHUNK_ELEMS", 3 * 40 * 50)
    real = protocols.chunked_argmax

    def spy(scores_for, k, hw, chunk, device):
        def wrapped(a, b):
            s = scores_for(a, b)
            spans.append(s.shape)
            return s

        return real(wrapped, k, hw, chunk, device)

    monkeypatch.setattr(protocols, "chunked_argmax", spy)
    k = 40
    prompts = PromptSet([f"c{i}" for i in range(k)], torch.rand(k, 1, 3))
    for name in ("whole", "slide"):
        spans.clear()
        Inference(ColourMatcher(), prompts, small(name, class_chunk=16)).predict([scene(40, 50)[0]])
        assert sum(s[0] for s in spans) == k and max(s[0] for s in spans) == 3 and all(s[1:] == (40, 50) for s in spans)


class VisualColourMatcher(ColourMatcher):
    needs_visual_prompts = True


def visual_colour_prompts(k=4):
    colours = COLOURS[:k, None, :].clone()  # (K, M=1, 3)
    return PromptSet([f"c{i}" for i in range(k)], colours, colours.clone(), [colours.clone() for _ in range(3)])


@pytest.mark.parametrize("rejection", [{"early_rejection_from": 2}, {"early_rejection_rank": "cost"}])
def test_two_pass_policy_chunk_and_early_rejection_are_forwarded(monkeypatch, rejection):
    seen = {}

    def fake_refine(model, images, prompts, policy, class_chunk=None, rejection=EarlyRejection()):
        seen.update(chunk=class_chunk, policy=policy, rejection=rejection)
        first = model(images, prompts)["logits"]
        return {"logits_pass1": first, "logits": -first}

    monkeypatch.setattr(inference, "two_pass", fake_refine)
    settings = small("whole", class_chunk=7, two_pass=True, refine_min_area=0.25, early_rejection_topk=3, **rejection)
    run = Inference(VisualColourMatcher(), visual_colour_prompts(), settings)
    assert run.passes == ("pass1", "pass2") and run.final == "pass2"
    image, label = scene(64, 64)
    (out,) = run.predict([image])
    assert seen["chunk"] == 7 and seen["policy"].min_area == 0.25
    first, rank = rejection.get("early_rejection_from", 0), rejection.get("early_rejection_rank", "heads")
    assert seen["rejection"] == EarlyRejection(3, first, rank)
    assert set(out) == {"pass1", "pass2"}
    assert (out["pass1"].labels == label).float().mean() > 0.9 > (out["pass2"].labels == label).float().mean()


def test_the_two_pass_rule():
    """Refinement runs where the model reads visual prompts and the prompts have them: eval.two_pass decides there,
    it is off elsewhere, and asking for it elsewhere is an error."""
    on, off = small("whole", two_pass=True), small("whole", two_pass=False)
    assert Inference(VisualColourMatcher(), visual_colour_prompts(), on).two_pass
    assert not Inference(VisualColourMatcher(), visual_colour_prompts(), off).two_pass
    assert Inference(VisualColourMatcher(), visual_colour_prompts(), off, two_pass=True).two_pass
    assert not Inference(VisualColourMatcher(), colour_prompts(), on).two_pass  # text-only prompts
    assert not Inference(ColourMatcher(), visual_colour_prompts(), on).two_pass  # a text-only model
    with pytest.raises(InputError, match="these prompts do not have"):
        Inference(VisualColourMatcher(), colour_prompts(), off, two_pass=True)
    with pytest.raises(InputError, match="this model does not use.*--no-refine"):
        Inference(ColourMatcher(), visual_colour_prompts(), off, two_pass=True)


def test_describe_keys_what_shapes_the_predictions():
    one = Inference(ColourMatcher(), colour_prompts(), small("whole")).describe()
    assert one["two_pass"] is False and one["protocol"] == "whole" and one["precision"] == "fp32"
    assert not any(k.startswith(("refine_", "slide_")) for k in one)
    assert not set(one) & set(inference.NOT_PREDICTION_KEYS)
    two = Inference(VisualColourMatcher(), visual_colour_prompts(), small("slide", two_pass=True)).describe()
    assert two["refine_crop_weight"] == EvalConfig().refine_crop_weight and two["slide_window"] == 32


def test_settings_and_input_errors():
    with pytest.raises(ConfigError, match="multiple of 32"):
        Inference(ColourMatcher(), colour_prompts(), EvalConfig(input_size=100))
    with pytest.raises(ConfigError, match="eval.protocol"):
        Inference(ColourMatcher(), colour_prompts(), EvalConfig(protocol="tiles"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="slide_overlap"):
        Inference(ColourMatcher(), colour_prompts(), EvalConfig(protocol="slide", slide_overlap=1.0))
    with pytest.raises(ConfigError, match="eval.refine_scope"):
        Inference(ColourMatcher(), colour_prompts(), EvalConfig(refine_scope="some"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="refine_crop_weight"):
        Inference(ColourMatcher(), colour_prompts(), EvalConfig(refine_crop_weight=0))
    run = Inference(ColourMatcher(), colour_prompts(), small("whole"))
    with pytest.raises(InputError, match="uint8 tensors"):
        run.predict([torch.rand(3, 10, 10)])
    with pytest.raises(InputError, match="tile must be a multiple of 32"):
        run.predict([scene(32, 32)[0]], tile=40)
    with pytest.raises(InputError, match=r"expected \(1, K=7"):
        predict(run.forward, [scene(32, 32)[0]], small("whole"), 7)


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
    res = evaluate(Inference(ColourMatcher(), colour_prompts(), cfg), ds, progress=False)
    assert res["num_images"] == 4 and set(res) >= {"pass1", "seconds", "protocol"} and "pass2" not in res
    assert res["pass1"]["mIoU"] > 90 and res["pass1"]["classes_present"] == 4
    wrong = PromptSet(["c0", "c1", "c2", "c3"], COLOURS[[1, 0, 3, 2], None, :].clone())  # classes swapped
    assert evaluate(Inference(ColourMatcher(), wrong, cfg), ds, progress=False)["pass1"]["mIoU"] < 10
    assert (
        evaluate(Inference(ColourMatcher(), colour_prompts(), cfg), ds, progress=False, max_images=1)["num_images"] == 1
    )
    with pytest.raises(InputError, match="prompts hold 3 classes but dataset 'ds:val' is prompted with 4"):
        evaluate(Inference(ColourMatcher(), colour_prompts(3), cfg), ds, progress=False)


def test_evaluate_tiny_dpseg_both_passes(tmp_path, tiny_cfg):
    from helpers import random_prompts, tiny_model

    model, cfg = tiny_model()
    model.eval()
    write_scenes(tmp_path / "ds", 1)  # one image: the tiny model costs ~1.5 s per decoder pass on 2 CPU cores
    ds = build_dataset(tmp_path / "ds")
    prompts = random_prompts(model, 4, names=ds.vocabulary)
    ecfg = dataclasses.replace(cfg.eval, num_workers=0, two_pass=True)
    res = evaluate(Inference(model, prompts, ecfg), ds, progress=False)
    assert set(res) >= {"pass1", "pass2"}
    for key in ("pass1", "pass2"):
        assert res[key]["pixels"] == int((ds[0]["label"] >= 0).sum())
        assert 0 <= res[key]["mIoU"] <= 100

import pytest
import torch
from helpers import policy, random_prompts, tiny_model

from dpseg.errors import ConfigError, InputError
from dpseg.image_io import CLIP_MEAN
from dpseg.model.prompt_image import prepare_prompt_image
from dpseg.model.refine import detected_classes, refine_prompts, two_pass


def test_detected_classes_threshold():
    logits = torch.full((1, 3, 4, 5), -5.0)
    logits[0, 0, :, :4] = 5  # 16 px
    logits[0, 1, :, 4] = 5  # 4 px
    # class 2 never wins
    assert detected_classes(logits, 0.0).tolist() == [[True, True, False]]
    assert detected_classes(logits, 0.5).tolist() == [[True, False, False]]
    assert detected_classes(logits, 0.0, max_classes=1).tolist() == [[True, False, False]]  # the largest only
    logits[0, 2, 0, 0] = 9  # class 2 takes one pixel from class 0
    assert detected_classes(logits, 0.0, max_classes=2).tolist() == [[True, True, False]]


def test_refinement_changes_only_detected_classes():
    model, _ = tiny_model()
    model.eval()
    prompts = random_prompts(model, 5)
    x = torch.rand(2, 3, 64, 64)
    logits = torch.full((2, 5, 16, 16), -4.0)
    logits[0, 1, :, :8] = 4  # image 0: classes 1 and 3 present
    logits[0, 3, :, 8:] = 4
    logits[1, 2] = 4  # image 1: only class 2
    refined, detected = refine_prompts(model, x, logits, prompts, policy(min_area=0.01))
    assert detected.tolist() == [[False, True, False, True, False], [False, False, True, False, False]]
    assert refined.visual.shape == (2, 5, model.num_templates, prompts.visual.shape[-1])
    for b in range(2):
        for k in range(5):
            same = torch.equal(refined.visual[b, k], prompts.visual[k])
            stages_same = all(torch.equal(r[b, k], p[k]) for r, p in zip(refined.visual_stages, prompts.visual_stages))
            assert same == stages_same == (not detected[b, k].item()), (b, k)
            if detected[b, k]:  # one crop embedding shared by all templates
                assert torch.allclose(refined.visual[b, k], refined.visual[b, k, :1].expand_as(refined.visual[b, k]))
    assert torch.equal(refined.text, prompts.text)
    # the crop embedding is the encoder's embedding of the masked crop of *that* image
    crop = prepare_prompt_image(x[1], model.prompt_image_size, mask=torch.ones(64, 64, dtype=torch.bool))
    v, _ = model.encode_visual_prompts(crop[None])
    assert torch.allclose(refined.visual[1, 2, 0], v[0], atol=1e-5)


def test_two_pass_reuses_features_and_is_identity_without_detections(monkeypatch):
    model, _ = tiny_model()
    model.eval()
    prompts = random_prompts(model, 4)
    x = torch.rand(1, 3, 64, 64)
    calls = []
    original = model.image_encoder.forward
    monkeypatch.setattr(model.image_encoder, "forward", lambda im: calls.append(1) or original(im))
    with torch.no_grad():
        out = two_pass(model, x, prompts, policy())
    assert len(calls) == 1  # pass 2 re-uses the image features
    assert out["logits"].shape == out["logits_pass1"].shape == (1, 4, 16, 16)
    assert out["detected"].any()
    assert not torch.allclose(out["logits"], out["logits_pass1"])
    import dpseg.model.refine as refine

    monkeypatch.setattr(
        refine,
        "detected_classes",
        lambda logits, area, cap=0, score=0.0: torch.zeros(logits.shape[:2], dtype=torch.bool),
    )
    with torch.no_grad():
        none = two_pass(model, x, prompts, policy())  # nothing detected: every prompt is kept, pass 2 == pass 1
    assert torch.allclose(none["logits"], none["logits_pass1"], atol=1e-6)


def test_refinement_needs_visual_prompts():
    model, _ = tiny_model()
    prompts = random_prompts(model, 2).text_only()
    with pytest.raises(InputError, match="text-only"):
        refine_prompts(model, torch.rand(1, 3, 64, 64), torch.zeros(1, 2, 16, 16), prompts, policy())


def test_present_scope_redecodes_only_present_classes():
    model, _ = tiny_model()
    model.eval()
    prompts = random_prompts(model, 6)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        fast = two_pass(model, x, prompts, policy(scope="present"))
    first = fast["logits_pass1"]
    present = torch.zeros(6, dtype=torch.bool)
    present[first.argmax(dim=1).unique()] = True
    assert torch.equal(fast["logits"][:, ~present], first[:, ~present])  # absent classes keep pass-1 logits
    with torch.no_grad():
        expected = model.decode(model.encode_image(x), fast["prompts"].select(present.nonzero().flatten().tolist()))[
            "logits"
        ]
    assert torch.allclose(fast["logits"][:, present], expected, atol=1e-6)
    with pytest.raises(ConfigError, match="eval.refine_scope"):
        policy(scope="some")


def test_present_scope_equals_all_when_every_class_is_present(monkeypatch):
    model, _ = tiny_model()
    model.eval()
    prompts = random_prompts(model, 3)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        full = two_pass(model, x, prompts, policy(scope="all"))
        first = full["logits_pass1"]
    # make every class win somewhere in pass 1 by patching decode's first call to return a striped map
    stripes = torch.full_like(first, -5.0)
    for k in range(3):
        stripes[:, k, :, k::3] = 5.0
    calls = []
    original = model.decode

    def decode(feats, p, chunk=0):
        calls.append(1)
        return {"logits": stripes} if len(calls) == 1 else original(feats, p, chunk)

    monkeypatch.setattr(model, "decode", decode)
    with torch.no_grad():
        fast = two_pass(model, x, prompts, policy(scope="present"))
        calls.clear()
        full = two_pass(model, x, prompts, policy(scope="all"))
    assert torch.allclose(fast["logits"], full["logits"], atol=1e-6)


def test_a_crop_weight_below_one_blends_the_crop_into_each_templates_prompt():
    model, _ = tiny_model()
    model.eval()
    prompts = random_prompts(model, 3)
    x = torch.rand(1, 3, 64, 64)
    logits = torch.full((1, 3, 16, 16), -4.0)
    logits[0, 1] = 4  # only class 1 is detected
    replaced, _ = refine_prompts(model, x, logits, prompts, policy(min_area=0.01))
    blended, _ = refine_prompts(model, x, logits, prompts, policy(min_area=0.01, crop_weight=0.25))
    crop = replaced.visual[0, 1, 0]
    assert torch.allclose(blended.visual[0, 1], 0.25 * crop + 0.75 * prompts.visual[1], atol=1e-6)
    for r, b, p in zip(replaced.visual_stages, blended.visual_stages, prompts.visual_stages):
        assert torch.allclose(b[0, 1], 0.25 * r[0, 1] + 0.75 * p[1], atol=1e-6)
    assert torch.equal(blended.visual[0, 0], prompts.visual[0])  # undetected classes are untouched
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="refine_crop_weight' must be a finite number in"):
            policy(crop_weight=bad)


def test_crop_framing_and_which_prompts_a_crop_replaces():
    """eval.refine_framing decides what the prompt encoder sees of a detected class; eval.refine_replace which of its
    visual prompts (V, v_j) the crop's embedding replaces."""
    model, _ = tiny_model()
    model.eval()
    prompts = random_prompts(model, 3)
    x = torch.rand(1, 3, 64, 64)
    logits = torch.full((1, 3, 16, 16), -4.0)
    logits[0, 1, 4:8, 4:12] = 4  # class 1 holds a 16 x 32 block of the input; the rest votes for nothing
    seen = []
    original = model.encode_visual_prompts
    model.encode_visual_prompts = lambda crops: seen.append(crops) or original(crops)
    for framing in ("context", "tight", "masked"):
        refine_prompts(model, x, logits, prompts, policy(min_area=0.01, framing=framing))
    context, tight, masked = (c[0] for c in seen)
    size = model.prompt_image_size
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    assert torch.allclose(masked[:, : size // 4], mean.expand(3, size // 4, size))  # above the block: masked out
    assert not torch.allclose(context[:, : size // 4], mean.expand(3, size // 4, size))  # context keeps it
    block = torch.nn.functional.interpolate(x[:, :, 16:32, 16:48], size=(size // 2, size))[0]  # the block, framed
    assert torch.allclose(tight[:, size // 4 : 3 * size // 4], block, atol=0.15)  # tight: the block spans the frame
    both, _ = refine_prompts(model, x, logits, prompts, policy(min_area=0.01))
    only_v, _ = refine_prompts(model, x, logits, prompts, policy(min_area=0.01, replace="global"))
    only_stages, _ = refine_prompts(model, x, logits, prompts, policy(min_area=0.01, replace="stages"))
    assert torch.equal(only_v.visual, both.visual) and torch.equal(only_stages.visual[0], prompts.visual)
    for b, v, s, p in zip(both.visual_stages, only_v.visual_stages, only_stages.visual_stages, prompts.visual_stages):
        assert torch.equal(v[0], p) and torch.equal(s, b) and not torch.equal(b[0, 1], p[1])
    with pytest.raises(ConfigError, match="eval.refine_framing"):
        policy(framing="loose")
    with pytest.raises(ConfigError, match="eval.refine_replace"):
        policy(replace="text")


def test_pooled_refinement_pools_pass_one_features_over_each_class_and_runs_no_encoder(monkeypatch):
    """eval.refine_source=pooled: a detected class's V is the CLIP head on its region's mean E_5 (the global
    embedding when the region is the whole image), its v_j the region's mean E_j; the prompt encoder never runs."""
    model, _ = tiny_model()
    model.eval()
    prompts = random_prompts(model, 3)
    x = torch.rand(2, 3, 64, 96)  # non-square
    logits = torch.full((2, 3, 16, 24), -4.0)
    logits[0, 0] = 4  # image 0: class 0 everywhere
    logits[1, 1, :, :12] = 4  # image 1: class 1 on the left half, class 2 on the right
    logits[1, 2, :, 12:] = 4
    monkeypatch.setattr(model, "encode_visual_prompts", lambda crops: pytest.fail("the prompt encoder ran"))
    with torch.no_grad():
        feats = model.encode_image(x)
        refined, detected = refine_prompts(model, x, logits, prompts, policy(source="pooled"), feats=feats)
    assert detected.tolist() == [[True, False, False], [False, True, True]]
    whole = torch.nn.functional.normalize(model.image_encoder.pooled(feats)[0], dim=-1)
    assert torch.allclose(refined.visual[0, 0], whole.expand_as(refined.visual[0, 0]), atol=1e-5)
    for r, e in zip(refined.visual_stages, feats.stages[:3]):  # E_2..E_4, (B, D_j, h_j, w_j)
        assert torch.allclose(r[0, 0, 0], e[0].mean(dim=(1, 2)), atol=1e-5)
        w = e.shape[-1]
        assert torch.allclose(r[1, 1, 0], e[1, :, :, : w // 2].mean(dim=(1, 2)), atol=1e-5)  # left half only
        assert torch.allclose(r[1, 2, 0], e[1, :, :, w // 2 :].mean(dim=(1, 2)), atol=1e-5)
    assert torch.equal(refined.visual[0, 1], prompts.visual[1])  # undetected: unchanged
    # without pass 1's features it encodes the image itself, to the same result
    with torch.no_grad():
        again, _ = refine_prompts(model, x, logits, prompts, policy(source="pooled"))
    assert torch.allclose(again.visual, refined.visual, atol=1e-6)
    with torch.no_grad():  # two_pass hands pass 1's features over: one encoder run in all
        calls = []
        original = model.image_encoder.forward
        monkeypatch.setattr(model.image_encoder, "forward", lambda im: calls.append(1) or original(im))
        two_pass(model, x, prompts, policy(source="pooled"))
    assert len(calls) == 1
    with pytest.raises(ConfigError, match="eval.refine_source"):
        policy(source="boxes")

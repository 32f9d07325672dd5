"""The decoder's exact speed-ups give the reference computation's outputs (and gradients), up to float rounding.

``DPSeg.set_fast_paths(False)`` switches all of them off: channels-last class maps, the class attention by pixel
blocks, the fusion's E_j share computed once per image. The speed they buy is measured in benchmarks/, not here.
"""

import pytest
import torch
from helpers import random_prompts, tiny_model

import dpseg.model.aggregation as aggregation
from dpseg.config import EvalConfig
from dpseg.errors import InputError
from dpseg.evaluation.inference import refine_policy
from dpseg.model.aggregation import ClassAggregation, SEDClassAggregation, class_maps, elu_plus_one
from dpseg.model.cost_volume import cosine_cost_volume
from dpseg.model.decode_state import DecodeState
from dpseg.model.dual_prompt import dual_prompt
from dpseg.model.early_rejection import REJECTED_LOGIT, EarlyRejection, kept_classes
from dpseg.model.refine import refine_prompts, two_pass, unique_images

SED_SWITCHES = [
    "model.prompt_type=text",
    "model.guidance=upsampled",
    "model.spatial_aggregation=convnext",
    "model.class_aggregation=sed",
    "model.aux_heads=true",
]
VARIANTS = [
    [],
    ["model.guidance=both"],
    ["model.visual_cost_norm=none", "model.prompt_type=visual"],
    ["model.guidance=none"],
    ["model.aux_heads=true"],  # DPSeg with early rejection
    SED_SWITCHES,
]


def outputs(model, x, prompts, **kwargs):
    with torch.no_grad():
        out = model(x, prompts, **kwargs)
    return [out["logits"]] + list(out.get("aux", []))


@pytest.mark.parametrize("overrides", VARIANTS)
def test_fast_paths_equal_the_reference(overrides, monkeypatch):
    monkeypatch.setitem(aggregation.PIXEL_BLOCK, "cpu", 1000)  # several pixel blocks per stage
    model, _ = tiny_model(*overrides)
    model.eval()
    prompts = random_prompts(model, 11)
    x = torch.rand(2, 3, 64, 96)
    reject = {"early_rejection_topk": 3} if "model.aux_heads=true" in overrides else {}
    reference = outputs(model.set_fast_paths(False), x, prompts, class_chunk=4, **reject)
    model.set_fast_paths(True)
    for chunk in (0, 4):
        fast = outputs(model, x, prompts, class_chunk=chunk, **reject)
        for a, b in zip(fast, reference):
            assert torch.allclose(a, b, atol=1e-5), (chunk, (a - b).abs().max())


def test_fast_paths_give_the_reference_gradients():
    """Training (pooled class attention, gradients) runs the shared E_j term and channels-last maps too."""
    model, _ = tiny_model()
    model.train()
    prompts = random_prompts(model, 5)
    x = torch.rand(2, 3, 64, 64)
    grads = []
    for fast in (False, True):
        model.set_fast_paths(fast).zero_grad()
        model(x, prompts, class_chunk=2)["logits"].square().mean().backward()
        grads.append([p.grad.clone() for p in model.decoder.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("layer", [ClassAggregation, SEDClassAggregation])
def test_pixel_blocks_equal_the_class_chunked_sweeps(layer, monkeypatch):
    torch.manual_seed(0)
    attention = layer(16, 4, 4, 2, 1).eval()
    x = torch.randn(2, 9, 16, 5, 7)
    with torch.no_grad():
        attention.pixel_blocks = False
        reference = attention(x, 4)
        attention.pixel_blocks = True
        for block in (16 * 9, 16 * 9 * 6, 2**19):  # one position, 6 positions, all at once
            monkeypatch.setitem(aggregation.PIXEL_BLOCK, "cpu", block)
            assert torch.allclose(attention(x), reference, atol=1e-5)
            maps = class_maps(2, 9, 16, 5, 7, x).copy_(x)  # channels-last class maps, overwritten in place
            out = attention(maps, out=maps)
            assert out.data_ptr() == maps.data_ptr() and torch.allclose(out, reference, atol=1e-5)
            plain = x.clone()  # a plain layout given as ``out`` gets the result too
            assert torch.allclose(attention(plain, out=plain), reference, atol=1e-5)
            assert torch.allclose(plain, reference, atol=1e-5)


def test_class_maps_stay_channels_last_through_the_decoder_on_a_cpu():
    model, _ = tiny_model()
    model.eval()
    seen = []
    for stage in model.decoder.stages:
        stage.classes.register_forward_pre_hook(lambda m, args: seen.append(args[0].permute(0, 1, 3, 4, 2)))
    outputs(model, torch.rand(1, 3, 64, 64), random_prompts(model, 3))
    assert len(seen) == 3 and all(t.is_contiguous() for t in seen)
    seen.clear()
    model.channels_last = False
    outputs(model, torch.rand(1, 3, 64, 64), random_prompts(model, 3))
    assert not any(t.is_contiguous() for t in seen)


def test_elu_plus_one():
    t = torch.linspace(-30, 30, 10001)
    assert torch.allclose(elu_plus_one(t), torch.nn.functional.elu(t) + 1, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "overrides, replace", [([], "both"), (["model.aux_heads=true"], "both"), ([], "global"), ([], "stages")]
)
def test_two_pass_reuse_equals_decoding_pass_two_from_scratch(overrides, replace):
    """Pass 2 of scope 'all' reuses pass 1's stage-0 maps of the unchanged (image, class) pairs and the projected
    encoder stages; its logits equal a decode of the refined prompts from scratch."""
    model, _ = tiny_model(*overrides)
    model.eval()
    prompts = random_prompts(model, 9)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        policy = refine_policy(EvalConfig(refine_min_score=0.0, refine_max_classes=3, refine_replace=replace))
        out = two_pass(model, x, prompts, policy)
        assert out["detected"].any() and not out["detected"].all()
        scratch = model.decode(model.encode_image(x), out["prompts"])
    assert torch.allclose(out["logits"], scratch["logits"], atol=1e-5)


def test_decode_state_fills_and_is_reused_only_for_the_same_features():
    model, _ = tiny_model()
    model.eval()
    prompts = random_prompts(model, 5)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.encode_image(x)
        state = DecodeState()
        first = model.decode(feats, prompts, state=state)["logits"]
        assert state.stage0 is not None and state.stage0.shape[:2] == (1, 5) and state.matches(feats, 1, 5) is False
        state.changed = torch.zeros(1, 5, dtype=torch.bool)  # nothing changed: pass 2 == pass 1
        assert state.matches(feats, 1, 5) and not state.matches(model.encode_image(x), 1, 5)
        assert torch.allclose(model.decode(feats, prompts, state=state)["logits"], first, atol=1e-6)
        assert state.stage0 is None  # handed over to pass 2, not kept


def test_identical_crops_are_encoded_once(monkeypatch):
    images = torch.rand(3, 3, 8, 8)
    crops = torch.stack([images[0], images[1], images[0], images[2], images[1]])
    unique, inverse = unique_images(crops)
    assert len(unique) == 3 and torch.equal(unique[inverse], crops)
    model, _ = tiny_model()
    model.eval()
    prompts = random_prompts(model, 4)
    x = torch.rand(1, 3, 64, 64)
    logits = torch.full((1, 4, 16, 16), -5.0)
    logits[0, 0, :8] = 5  # classes 0 and 1 span the width: the same full-width frame, one crop
    logits[0, 1, 8:] = 5
    encoded = []
    original = model.encode_visual_prompts
    monkeypatch.setattr(model, "encode_visual_prompts", lambda im: encoded.append(len(im)) or original(im))
    context = refine_policy(EvalConfig(refine_framing="context"))  # the crop depends on the region's box only
    refined, detected = refine_prompts(model, x, logits, prompts, context)
    assert detected[0].tolist() == [True, True, False, False] and encoded == [1]
    assert torch.equal(refined.visual[0, 0], refined.visual[0, 1])
    refine_prompts(model, x, logits, prompts, refine_policy(EvalConfig(refine_framing="masked")))
    assert encoded == [1, 2]  # masked crops show each class's own pixels: two different crops


def test_dpseg_early_rejection_keeps_the_survivors_and_equals_the_full_decode_when_none_is_rejected():
    """DPSeg with auxiliary heads: early rejection standardises F_v over the classes still decoded; with k >= K
    nothing is rejected and the logits are those of the plain decode."""
    model, _ = tiny_model("model.aux_heads=true", "model.visual_cost_norm=class")
    model.eval()
    prompts = random_prompts(model, 9)
    x = torch.rand(1, 3, 64, 64)
    full = outputs(model, x, prompts)[0]
    assert torch.allclose(outputs(model, x, prompts, early_rejection_topk=9)[0], full, atol=1e-5)
    fast = outputs(model, x, prompts, early_rejection_topk=1)[0]
    rejected = (fast == REJECTED_LOGIT).flatten(2).all(-1)[0]  # (K,)
    assert rejected.any() and not rejected.all()


@pytest.mark.parametrize("first", [1, 2])
def test_early_rejection_from_a_later_stage_leaves_the_stages_before_it_whole(first):
    """eval.early_rejection_from = s: the auxiliary heads before stage s see every class (their logits are the plain
    decode's) and rejection starts at stage s; with k >= K nothing is rejected from any stage."""
    model, _ = tiny_model("model.aux_heads=true", "model.visual_cost_norm=class")
    model.eval()
    prompts = random_prompts(model, 17)  # more classes than stage 2 has pixels at 32²: its top 1 must reject some
    x = torch.rand(1, 3, 32, 32)
    full = outputs(model, x, prompts)
    late = outputs(model, x, prompts, early_rejection_topk=1, early_rejection_from=first)
    for s in range(first + 1):  # aux[s] is the head of stage s, ranked before stage s rejects
        assert torch.allclose(late[1 + s], full[1 + s], atol=1e-5), s
    rejected = (late[0] == REJECTED_LOGIT).flatten(2).all(-1)[0]  # (K,)
    assert rejected.any() and not rejected.all()
    # which classes a rule keeps is decided by the first rejecting head alone: stage `first`'s top 1 on all classes
    kept_first = kept_classes(full[1 + first], 1)
    assert not (~rejected & ~kept_first).any()  # nothing survives that stage `first` rejected
    nothing_rejected = outputs(model, x, prompts, early_rejection_topk=17, early_rejection_from=first)[0]
    assert torch.allclose(nothing_rejected, full[0], atol=1e-5)


def test_early_rejection_from_a_stage_the_decoder_lacks_is_refused():
    model, _ = tiny_model("model.aux_heads=true")
    model.eval()
    with pytest.raises(InputError, match="stages 0-2, not 3; set eval.early_rejection_from"):
        outputs(
            model, torch.rand(1, 3, 64, 64), random_prompts(model, 3), early_rejection_topk=1, early_rejection_from=3
        )


@pytest.mark.parametrize("rank", ["heads", "cost"])
def test_stage_0_ranks_by_its_head_or_by_the_cost_volume(rank):
    """eval.early_rejection_rank: at 32² stage 0 has one position, so top 1 keeps exactly one class there - the
    argmax of stage 0's auxiliary logits after stage 0 ("heads", SED) or of F_c's mean over the templates before it
    ("cost") - and only that class comes out of the decoder, with stage 0's auxiliary logit of the plain decode."""
    model, _ = tiny_model("model.aux_heads=true", "model.visual_cost_norm=class")
    model.eval()
    prompts = random_prompts(model, 17)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        feats = model.encode_image(x)
        full = model.decode(feats, prompts)
        out = model.decode(feats, prompts, early_rejection_topk=1, early_rejection_rank=rank)
        R = dual_prompt(prompts.text, prompts.visual, model.prompt_type)  # (K, M, d)
        similarity = cosine_cost_volume(feats.dense, R).mean(2)  # (1, K, 1, 1)
    ranking = full["aux"][0] if rank == "heads" else similarity
    assert ranking.shape[-2:] == (1, 1)
    survivors = (out["logits"] > REJECTED_LOGIT / 2).flatten(2).any(-1)[0]  # (K,)
    assert survivors.nonzero().flatten().tolist() == [int(ranking.flatten().argmax())]
    kept = survivors if rank == "cost" else torch.ones_like(survivors)  # "cost": stage 0 decodes the survivor only
    assert torch.allclose(out["aux"][0][:, kept], full["aux"][0][:, kept], atol=1e-5)
    assert (out["aux"][0][:, ~kept] == REJECTED_LOGIT).all()


def test_an_unknown_stage_0_ranking_is_refused():
    model, _ = tiny_model("model.aux_heads=true")
    model.eval()
    with pytest.raises(InputError, match="one of heads, cost, not 'votes'; set eval.early_rejection_rank"):
        outputs(
            model,
            torch.rand(1, 3, 32, 32),
            random_prompts(model, 3),
            early_rejection_topk=1,
            early_rejection_rank="votes",
        )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"early_rejection_from": 1}, "it is off"),
        ({"early_rejection_rank": "cost"}, "it is off"),
        ({"early_rejection_topk": 2, "early_rejection_rank": "cost", "early_rejection_from": 1}, "use one of the two"),
    ],
)
def test_early_rejection_options_that_would_do_nothing_are_refused(options, message):
    model, _ = tiny_model("model.aux_heads=true")
    model.eval()
    with pytest.raises(InputError, match=message):
        outputs(model, torch.rand(1, 3, 32, 32), random_prompts(model, 3), **options)


@pytest.mark.parametrize(
    "topk, first, rank",
    [(0, 1, "heads"), (0, 0, "cost"), (0, 2, "cost"), (2, 1, "cost"), (2, 3, "heads"), (2, 0, "votes")],
)
def test_the_config_and_decode_refuse_the_same_early_rejection_settings_with_the_same_reason(topk, first, rank):
    """One rule (EarlyRejection.problem) for both doors: `--set eval.early_rejection_*` and DPSeg.decode's arguments."""
    from dpseg.config import build_config
    from dpseg.errors import ConfigError

    reason = EarlyRejection(topk, first, rank).problem()
    assert reason and "eval.early_rejection_" in reason and "\n" not in reason
    model, _ = tiny_model("model.aux_heads=true")
    model.eval()
    options = {"early_rejection_topk": topk, "early_rejection_from": first, "early_rejection_rank": rank}
    with pytest.raises(InputError) as decode_error:
        outputs(model, torch.rand(1, 3, 32, 32), random_prompts(model, 3), **options)
    assert str(decode_error.value) == reason
    overrides = [f"eval.early_rejection_topk={topk}", f"eval.early_rejection_from={first}"]
    with pytest.raises(ConfigError) as config_error:
        build_config("sed-b", overrides=[*overrides, f"eval.early_rejection_rank={rank}"])
    if first <= 2 and rank in ("heads", "cost"):  # else the schema's own range / choice check speaks first
        assert str(config_error.value) == f"config: {reason}"


def test_early_rejection_settings_that_run():
    assert EarlyRejection().problem() is None and EarlyRejection().decode_options() == {}
    cost = EarlyRejection(8, 0, "cost")
    assert cost.problem() is None and cost.ranks_by_cost and not cost.rejects_after(0) and cost.rejects_after(1)
    later = EarlyRejection(8, 2)
    assert later.decode_options() == {"early_rejection_topk": 8, "early_rejection_from": 2}
    assert [later.rejects_after(s) for s in range(3)] == [False, False, True] and not later.ranks_by_cost

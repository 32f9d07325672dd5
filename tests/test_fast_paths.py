"""The decoder's exact speed-ups give the reference computation's outputs (and gradients), up to float rounding.

``DPSeg.set_fast_paths(False)`` switches all of them off: channels-last class maps, the class attention by pixel
blocks, the fusion's E_j share computed once per image. The speed they buy is measured in benchmarks/, not here.
"""

import pytest
import torch
from helpers import random_prompts, tiny_model

import dpseg.model.aggregation as aggregation
from dpseg.model.aggregation import ClassAggregation, SEDClassAggregation, class_maps, elu_plus_one

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

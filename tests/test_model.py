import pytest
import torch
from helpers import random_prompts, tiny_model

from dpseg.errors import InputError
from dpseg.model.cost_volume import (
    VisualCostEmbedding,
    cosine_cost_volume,
    template_mean_similarity,
    visual_cost_volume,
)
from dpseg.model.dual_prompt import PromptSet, dual_prompt
from dpseg.model.loss import SegmentationLoss


@pytest.fixture(scope="module")
def model():
    m, _ = tiny_model()
    return m.eval()


@pytest.mark.parametrize("K", [1, 3, 17])
@pytest.mark.parametrize("hw", [(64, 96), (96, 32)])
def test_logit_shapes(model, K, hw):
    prompts = random_prompts(model, K)
    with torch.no_grad():
        out = model(torch.rand(2, 3, *hw), prompts)
    assert set(out) == {"logits"}
    assert out["logits"].shape == (2, K, hw[0] // 4, hw[1] // 4)
    assert torch.isfinite(out["logits"]).all()


@pytest.mark.parametrize("train_mode", [False, True])
def test_class_permutation_equivariance(train_mode):
    model, _ = tiny_model()
    model.train(train_mode)
    prompts = random_prompts(model, 7)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a = model(x, prompts)["logits"]
        b = model(x, prompts.select(perm.tolist()))["logits"]
    assert torch.allclose(a[:, perm], b, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.prompt_type=text"],
        ["model.prompt_type=visual"],
        ["model.prompt_type=dual"],
        ["model.guidance=none"],
        ["model.guidance=upsampled"],
        ["model.visual_scales=[2]"],
        ["model.visual_scales=[3,4]"],
        ["prompts.num_templates=1"],
    ],
)
def test_ablation_switches_run(overrides):
    model, _ = tiny_model(*overrides)
    prompts = random_prompts(model, 3)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96), prompts)["logits"]
    assert out.shape == (1, 3, 16, 24) and torch.isfinite(out).all()


def test_prompt_types_differ_and_text_only_model_needs_no_bank():
    text_model, _ = tiny_model("model.prompt_type=text", "model.guidance=none")
    assert not text_model.needs_visual_prompts
    prompts = random_prompts(text_model, 3)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        text_model(x, prompts.text_only())
    T, V = prompts.text, prompts.visual
    assert torch.allclose(dual_prompt(T, V, "text"), T)
    assert torch.allclose(dual_prompt(T, V, "visual"), V)
    R = dual_prompt(T, V, "dual")
    assert torch.allclose(R, torch.nn.functional.normalize(T + V, dim=-1), atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # the default (class standardisation)
        ["model.visual_cost_norm=none"],
        ["model.visual_cost_norm=class"],
        ["model.visual_cost_norm=batch"],
        ["model.guidance=both", "model.visual_cost_norm=class"],
    ],
)
def test_chunked_equals_unchunked(overrides):
    model, _ = tiny_model(*overrides)
    prompts = random_prompts(model, 17)
    x = torch.rand(2, 3, 64, 96)
    for mode in (False, True):  # eval (no pooling) and train (2×2 pooled class attention)
        model.train(mode)
        if mode and "model.visual_cost_norm=batch" in overrides:
            continue  # BatchNorm's training statistics are over the batch's classes: chunking is an inference tool
        with torch.no_grad():
            full = model(x, prompts, class_chunk=0)["logits"]
            for chunk in (1, 4, 16):
                assert torch.allclose(model(x, prompts, class_chunk=chunk)["logits"], full, atol=1e-5), chunk


def test_chunked_gradients_equal_unchunked():
    model, _ = tiny_model()
    prompts = random_prompts(model, 5)
    x = torch.rand(1, 3, 64, 64)
    grads = []
    for chunk in (0, 2):
        model.zero_grad()
        model(x, prompts, class_chunk=chunk)["logits"].square().mean().backward()
        grads.append([p.grad.clone() for p in model.decoder.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("M_prompt", [5, 1])
def test_folded_visual_cost_equals_materialised(batched, M_prompt):
    torch.manual_seed(0)
    emb = VisualCostEmbedding(num_templates=5, dim=3)
    feats = torch.randn(2, 8, 6, 7)
    shape = (2, 4, M_prompt, 8) if batched else (4, M_prompt, 8)
    prompts = torch.randn(*shape)
    assert torch.allclose(emb(feats, prompts), emb.reference(feats, prompts), atol=1e-5)
    assert emb(feats, prompts).shape == (2, 4, 3, 6, 7)


def test_class_standardisation_turns_a_nearly_constant_visual_cost_into_a_usable_one():
    """Raw stage-feature cosines vary across classes by ~0.1 % of their value (a common direction dominates the
    features); standardised across classes, each pixel's channels have mean 0 and std 1 over the vocabulary."""
    torch.manual_seed(0)
    common = torch.randn(16)
    feats = common.view(1, 16, 1, 1) * 10 + 0.3 * torch.randn(1, 16, 5, 6)
    prompts = common * 10 + 0.3 * torch.randn(7, 3, 16)  # 7 classes, 3 templates, all near the common direction
    raw = VisualCostEmbedding(3, 4)
    cos = visual_cost_volume(feats, prompts, 3)
    assert cos.std(dim=1).max() < 0.01 * cos.mean()  # nearly constant across classes
    std = VisualCostEmbedding(3, 4, norm="class")
    std.load_state_dict(raw.state_dict())
    out = std(feats, prompts) - std.proj.bias.view(1, 1, -1, 1, 1)  # (B, K, c, h, w)
    assert torch.allclose(out.mean(dim=1), torch.zeros(1, 4, 5, 6), atol=1e-3)
    assert torch.allclose(out.std(dim=1, unbiased=False), torch.ones(1, 4, 5, 6), atol=1e-2)
    # the class ranking of every pixel survives standardisation, only the scale changes
    assert torch.equal(out.argmax(dim=1), raw(feats, prompts).argmax(dim=1))
    with pytest.raises(ValueError, match="norm"):
        VisualCostEmbedding(3, 4, norm="layer")


def test_cost_volume_is_cosine():
    feats, prompts = torch.randn(1, 4, 2, 3), torch.randn(2, 3, 4)
    vol = cosine_cost_volume(feats, prompts)
    ref = torch.nn.functional.cosine_similarity(feats[0, :, 1, 2], prompts[1, 0], dim=0)
    assert vol.shape == (1, 2, 3, 2, 3) and torch.isclose(vol[0, 1, 0, 1, 2], ref, atol=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
def test_the_template_mean_similarity_is_the_cost_volumes_mean_over_templates(per_image):
    """eval.early_rejection_rank=cost ranks classes by it; it must be the mean of F_c over M, computed without F_c."""
    feats = torch.randn(2, 16, 5, 7)
    prompts = torch.randn(2, 17, 6, 16) if per_image else torch.randn(17, 6, 16)  # ([B,] K, M, D), unnormalised
    similarity = template_mean_similarity(feats, prompts)
    assert similarity.shape == (2, 17, 5, 7)
    assert torch.allclose(similarity, cosine_cost_volume(feats, prompts).mean(2), atol=1e-6)


def test_exactly_the_right_parameters_train():
    model, _ = tiny_model()
    model.train()
    prompts = random_prompts(model, 3)
    labels = torch.randint(0, 3, (2, 64, 64))
    loss = SegmentationLoss()(model(torch.rand(2, 3, 64, 64), prompts)["logits"], labels)
    loss.backward()
    frozen = {n for n, _ in model.named_parameters() if n.startswith(("prompt_encoder.", "text_encoder."))}
    for name, p in model.named_parameters():
        if name in frozen:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    groups = model.parameter_groups()
    assert {id(p) for p in groups["image_encoder"]} == {id(p) for p in model.image_encoder.parameters()}
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups.values() for p in g) == n_trainable
    assert not model.prompt_encoder.training and not model.text_encoder.training


def test_few_steps_on_fixed_batch_drive_loss_down():
    model, _ = tiny_model()
    model.train()
    prompts = random_prompts(model, 3)
    x = torch.rand(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, :, 32:] = 1
    labels[:, 40:, :] = 2
    labels[0, :4] = -1
    loss_fn = SegmentationLoss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    # the best prediction that ignores the image: a constant per-class logit at each class's pixel frequency
    target = torch.stack([(labels == k).float() for k in range(3)], dim=1)  # (B, K, H, W)
    freq = target.mean(dim=(0, 2, 3))
    constant_best = torch.nn.functional.binary_cross_entropy(freq.view(1, 3, 1, 1).expand_as(target), target).item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(model(x, prompts)["logits"], labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0] and losses[-1] < 0.8 * constant_best, (constant_best, losses)


def test_loss_ignore_modes_by_hand():
    logits = torch.tensor([[[[2.0, -1.0, 0.5]], [[0.0, 1.0, -3.0]]]])  # (B=1, K=2, h=1, w=3)
    labels = torch.tensor([[[0, 1, -1]]])
    bce = lambda x, t: torch.nn.functional.softplus(x) - x * t  # noqa: E731
    per = torch.stack(
        [bce(logits[0, 0, 0], torch.tensor([1.0, 0, 0])), bce(logits[0, 1, 0], torch.tensor([0.0, 1, 0]))]
    )
    neg = SegmentationLoss("negative")(logits, labels)
    mask = SegmentationLoss("mask")(logits, labels)
    assert torch.isclose(neg, per.mean(), atol=1e-6)
    assert torch.isclose(mask, per[:, :2].mean(), atol=1e-6)
    with pytest.raises(InputError, match="outside"):
        SegmentationLoss()(logits, torch.tensor([[[0, 2, -1]]]))
    with pytest.raises(InputError, match="ignore mode"):
        SegmentationLoss("drop")


def test_bad_inputs(model):
    prompts = random_prompts(model, 3)
    with pytest.raises(InputError, match="multiples of 32"):
        model(torch.rand(1, 3, 60, 64), prompts)
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(3, 64, 64), prompts)
    with pytest.raises(InputError, match="float"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), prompts)
    with pytest.raises(InputError, match="M=2 templates"):
        model(torch.rand(1, 3, 64, 64), PromptSet(prompts.class_names, prompts.text[:, :2]))
    with pytest.raises(InputError, match="needs visual prompts"):
        model(torch.rand(1, 3, 64, 64), prompts.text_only())
    with pytest.raises(InputError, match="duplicate class names: 'a'"):
        PromptSet(["a", "b", "a"], prompts.text)
    with pytest.raises(InputError, match=r"duplicate class names: 'a b' \(written 'a b', 'A  b'"):
        PromptSet(["a b", "c", "A  b"], prompts.text)  # one class in another case and spacing (issue 17)
    with pytest.raises(InputError, match="at least one class"):
        PromptSet([], prompts.text[:0])
    with pytest.raises(InputError, match="shape"):
        PromptSet(["a", "b"], prompts.text)


@pytest.mark.parametrize("guidance", ["visual", "upsampled", "both"])
def test_a_dense_embedding_at_stride_16_decodes_to_stride_4(guidance):
    """A dilated tower (E_5 and E at stride 16, as E_4): stage 0 and SED's first guidance step project instead of
    upsampling, and the logits and auxiliary maps keep their strides (4; 16, 16, 8)."""
    from dpseg.build import build_model
    from dpseg.config import build_config

    torch.manual_seed(0)
    cfg = build_config("dpseg-tiny", overrides=[f"model.guidance={guidance}", "model.aux_heads=true"])
    cfg.model.clip_model_cfg["vision_cfg"]["timm_model_name"] = "dpseg_convnext_nano_os16"
    model = build_model(cfg)
    assert model.image_encoder.stage_strides == [4, 8, 16, 16]
    x = torch.rand(2, 3, 64, 96)
    for K in (1, 17):
        out = model(x, random_prompts(model, K))
        assert out["logits"].shape == (2, K, 16, 24)
        assert [a.shape[-2:] for a in out["aux"]] == [(4, 6), (4, 6), (8, 12)]
    out["logits"].mean().backward()
    assert model.decoder.stages[0].up.weight.grad is not None


def test_the_default_tower_still_upsamples_in_every_stage(model):
    assert model.image_encoder.stage_strides == [4, 8, 16, 32]
    assert all(isinstance(s.up, torch.nn.ConvTranspose2d) for s in model.decoder.stages)

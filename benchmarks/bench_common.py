"""What the speed benchmarks share: random-weight models of a preset, random prompts as from a cached bank, and the
inference modes (SED, SED-fast, DPSeg pass 1, the two-pass variants) as one call each.

Speed does not depend on weight values. Random weights, though, make almost every class win a few pixels of the
pass-1 map, unlike a trained model (an ADE20K image holds about 8-10 classes), so the two-pass modes give the pass-1
logits a realistic layout: ``detected`` classes each win one rectangle of a grid (a large bias added to their logits
there, after the real pass-1 work is done; :func:`realistic_layout`). Refinement then crops and encodes those
classes; their frames all differ, so no two crops coincide.
"""

from __future__ import annotations

import torch

SED_PRESETS = {"dpseg-b": "sed-b", "dpseg-l": "sed-l", "dpseg-tiny": "dpseg-tiny"}
SED_SWITCHES = [  # SED's architecture on any preset (dpseg-tiny: tiny SED for dry runs)
    "model.prompt_type=text",
    "model.guidance=upsampled",
    "model.spatial_aggregation=convnext",
    "model.class_aggregation=sed",
    "model.aux_heads=true",
]
MODES = (
    "encoder",
    "sed",
    "sed_fast",
    "sed_fast_cost",
    "text_upsampled",
    "pass1",
    "pass1_fast",
    "pass1_fast_from1",
    "pass1_fast_from2",
    "pass1_fast_cost",
    "two_pass",
    "two_pass_present",
    "two_pass_pooled",
    "two_pass_present_pooled",
    "sed_code",
)
SED_MODES = ("sed", "sed_fast", "sed_fast_cost", "sed_code")
SED_CODE_NEEDS_REPO = "mode sed_code needs --sed-repo PATH (a local checkout of github.com/xb534/SED)"
TEXT_ONLY_MODES = (
    "sed",
    "sed_fast",
    "sed_fast_cost",
    "sed_code",
    "text_upsampled",
)  # their prompts have no visual part
# the two passes: the paper's (every class re-decoded), present classes only; "_pooled": eval.refine_source=pooled
# SED's category early rejection: (eval.early_rejection_from, eval.early_rejection_rank) - from decoder stage 0
# (SED's rule), 1 or 2; the first rejection ranked by stage 0's head (SED) or by the cost volume before stage 0
FAST_MODES = {
    "sed_fast": (0, "heads"),
    "sed_fast_cost": (0, "cost"),
    "pass1_fast": (0, "heads"),
    "pass1_fast_from1": (1, "heads"),
    "pass1_fast_from2": (2, "heads"),
    "pass1_fast_cost": (0, "cost"),
}
TWO_PASS_MODES = ("two_pass", "two_pass_present", "two_pass_pooled", "two_pass_present_pooled")


def preset_and_overrides(preset: str, mode: str) -> tuple[str, list[str]]:
    """The preset and overrides a mode's model is built from (``sed*`` modes: SED's architecture)."""
    if mode in SED_MODES:
        if preset in SED_PRESETS and SED_PRESETS[preset] != preset:
            return SED_PRESETS[preset], []
        return preset, list(SED_SWITCHES)
    if mode == "text_upsampled":
        return preset, ["model.prompt_type=text", "model.guidance=upsampled"]
    if mode in FAST_MODES:  # DPSeg with SED's category early rejection needs auxiliary heads
        return preset, ["model.aux_heads=true"]
    return preset, []


def build(preset: str, mode: str, extra: list[str] = (), device="cpu"):
    """A random-weight model for ``mode`` (eval, on ``device``) and its config."""
    from dpseg.build import build_model
    from dpseg.config import build_config

    preset, overrides = preset_and_overrides(preset, mode)
    cfg = build_config(preset, overrides=["model.clip_pretrained="] + overrides + list(extra))
    return build_model(cfg, load_clip_weights=False).eval().to(device), cfg


def random_prompts(model, K: int, device="cpu", text_only: bool = False, seed: int = 0):
    """K classes of random prompts (T, V, v_j) with the model's M templates, as a prompt bank would give."""
    from dpseg.model.dual_prompt import PromptSet

    g = torch.Generator().manual_seed(seed)
    M, d, D = model.num_templates, model.text_encoder.embed_dim, model.image_encoder.stage_dims
    prompts = PromptSet(
        [f"c{i}" for i in range(K)],
        torch.randn(K, M, d, generator=g),
        torch.randn(K, M, d, generator=g),
        [torch.randn(K, M, D[j], generator=g) for j in range(3)],
    ).to(device)
    return prompts.text_only() if text_only else prompts


def realistic_layout(logits, detected: int):
    """Pass-1 logits (B, K, h, w) in which ``detected`` classes each win one rectangle of a grid covering the map
    (rows of 4; the last row's rectangles share its width), every other class nowhere: a large bias is added."""
    import math

    logits = logits.clone()
    n, (h, w) = min(detected, logits.shape[1]), logits.shape[-2:]
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    for i in range(n):
        r, c = divmod(i, cols)
        in_row = cols if r < rows - 1 else n - cols * (rows - 1)
        logits[:, i, r * h // rows : (r + 1) * h // rows, c * w // in_row : (c + 1) * w // in_row] += 1e4
    return logits


def use_realistic_layout(detected: int) -> None:
    """Make two-pass refinement see :func:`realistic_layout` pass-1 logits (module doc); the pass-1 work is real."""
    import dpseg.model.refine as refine

    original = getattr(refine.refine_prompts, "original", refine.refine_prompts)

    def refine_prompts(model, images, logits, prompts, policy, **kwargs):
        return original(model, images, realistic_layout(logits, detected), prompts, policy, **kwargs)

    refine_prompts.original = original
    refine.refine_prompts = refine_prompts


SWITCHES = ("pixel_blocks", "channels_last", "encoder_term", "cpu_chunks", "reuse")


def set_switches(model, off: set) -> None:
    """All the decoder's exact speed-ups on except those named in ``off`` (of :data:`SWITCHES`; "reuse" is pass 2's
    reuse of pass-1 work, switched off by hiding the decode's ``state`` argument from two_pass)."""
    from dpseg.model.aggregation import ClassAggregation
    from dpseg.model.class_maps import CPU_CHUNK_ELEMENTS
    from dpseg.model.decoder import DecoderStage

    unknown = set(off) - set(SWITCHES)
    if unknown:
        raise SystemExit(f"unknown switch {sorted(unknown)}: one of {SWITCHES}")
    model.set_fast_paths(True)
    model.channels_last = False if "channels_last" in off else None
    model.cpu_chunk_elements = 0 if "cpu_chunks" in off else CPU_CHUNK_ELEMENTS
    for m in model.modules():
        if isinstance(m, ClassAggregation):
            m.pixel_blocks = "pixel_blocks" not in off
        if isinstance(m, DecoderStage):
            m.shared_encoder_term = "encoder_term" not in off
    decode = type(model).decode.__get__(model)
    if "reuse" in off:
        model.decode = lambda feats, prompts, class_chunk=0, early_rejection_topk=0: decode(
            feats, prompts, class_chunk, early_rejection_topk
        )
    elif "decode" in vars(model):
        del model.decode


def limit_survivors(survivors: int) -> None:
    """Make SED's early rejection keep at most ``survivors`` classes (the first ones alive) at every stage.

    With random weights almost every class is among the top k somewhere, so the real rule alone keeps nearly all of
    them; a trained model keeps a few dozen of an ADE20K image's 150 classes. The real rule still runs (its cost is
    timed); its result is then cut to the first ``survivors`` of the kept classes, the same for SED and DPSeg.
    """
    import dpseg.model.early_rejection as dpseg_module

    rule = dpseg_module.kept_classes

    def kept(scores, k):
        keep = rule(scores, k)
        return keep & (keep.cumsum(0) <= survivors)

    dpseg_module.kept_classes = kept


# SED-B's decoder as SED's configs/convnextB_768.yaml builds it (text guidance off, 80 templates)
SED_B_AGGREGATOR = dict(
    text_guidance_dim=0,
    text_guidance_proj_dim=0,
    appearance_guidance_dim=1024,
    appearance_guidance_proj_dim=128,
    decoder_dims=[64, 32, 16],
    decoder_guidance_dims=[512, 256, 128],
    decoder_guidance_proj_dims=[32, 16, 8],
    num_layers=2,
    nheads=4,
    hidden_dim=128,
    pooling_size=[2, 2],
    feature_resolution=[24, 24],
    window_size=12,
    attention_type="linear",
    prompt_channel=80,
    cnext_type="V1",
    kernel_size=[9, 9, 9],
    fast_inference=False,
    topK=1,
)


def sed_aggregator(sed_repo: str):
    """SED-B's own decoder (``Aggregator`` of ``sed/modeling/transformer/model.py``), imported from a local checkout
    of https://github.com/xb534/SED given by the user (never shipped with dpseg); random weights, eval mode."""
    import importlib.util
    import sys
    import types
    from pathlib import Path

    folder = Path(sed_repo).expanduser() / "sed" / "modeling" / "transformer"
    if not (folder / "model.py").is_file():
        raise SystemExit(f"--sed-repo {sed_repo}: no sed/modeling/transformer/model.py there; give a checkout of SED")
    try:
        import einops  # noqa: F401  (SED's code needs it; dpseg does not)
    except ImportError:
        raise SystemExit("SED's own code needs einops: pip install einops") from None
    package = types.ModuleType("sed_own")
    package.__path__ = [str(folder)]
    sys.modules["sed_own"] = package
    for name in ("convnext", "model"):  # model.py imports .convnext
        spec = importlib.util.spec_from_file_location(f"sed_own.{name}", folder / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"sed_own.{name}"] = module
        spec.loader.exec_module(module)
    return sys.modules["sed_own.model"].Aggregator(**SED_B_AGGREGATOR).eval()


def make_call(
    model, mode: str, images, prompts, chunk: int = 128, detected: int = 10, topk: int = 8, sed_repo: str = "", **policy
):
    """A no-argument function running one inference of ``mode`` (returns the logits, or E for ``encoder``);
    ``sed_code`` needs ``sed_repo``, a local checkout of SED (:func:`make_sed_code_call`)."""
    from dpseg.config import EvalConfig
    from dpseg.evaluation.inference import refine_policy
    from dpseg.model.early_rejection import EarlyRejection
    from dpseg.model.refine import two_pass

    if mode == "sed_code":
        if not sed_repo:
            raise SystemExit(SED_CODE_NEEDS_REPO)
        aggregator = sed_aggregator(sed_repo).to(next(model.parameters()).device)
        return make_sed_code_call(model, aggregator, images, prompts)

    rejection = EarlyRejection(topk, *FAST_MODES[mode]) if mode in FAST_MODES else EarlyRejection()
    if mode in TWO_PASS_MODES:
        use_realistic_layout(detected)
        scope = "present" if mode.startswith("two_pass_present") else "all"
        source = "pooled" if mode.endswith("_pooled") else "crops"
        settings = {"refine_scope": scope, "refine_source": source, **{f"refine_{k}": v for k, v in policy.items()}}
        refine = refine_policy(EvalConfig(**settings))

    def call():
        if mode == "encoder":
            return model.encode_image(images).dense
        if mode in TWO_PASS_MODES:
            out = two_pass(model, images, prompts, refine, class_chunk=chunk)
            call.refined = int(out["detected"].sum())
            return out["logits"]
        return model(images, prompts, class_chunk=chunk, **rejection.decode_options())["logits"]

    call.refined = 0
    return call


def make_sed_code_call(model, aggregator, images, prompts):
    """One inference of SED-B as SED's code runs it: the same ConvNeXt-B image encoder (``model``'s), then SED's own
    ``Aggregator`` on the dense embedding, the text prompts (B, K, M, d) and the stages in SED's order (E_5 first);
    SED's inference takes the sigmoid and resizes to the image."""
    import torch.nn.functional as F

    text = prompts.text.unsqueeze(0).expand(images.shape[0], -1, -1, -1)  # (K, M, d) -> (B, K, M, d)
    logit_scale = torch.tensor(4.6052)

    def call():
        feats = model.encode_image(images)
        logits = aggregator(feats.dense, text, list(feats.stages)[::-1], logit_scale)[0]  # (B, K, H/4, W/4)
        return F.interpolate(logits.sigmoid(), size=images.shape[-2:], mode="bilinear", align_corners=False)

    call.refined = 0
    return call

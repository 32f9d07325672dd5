"""The one factory: config → DPSeg; and our checkpoint format (a directory with ``config.json`` and
``model.safetensors``, Hugging Face style) with strict loading.

A saved model is self-contained: it holds the trained image encoder, the decoder, *and* the frozen text tower and
visual-prompt encoder (a model that uses no visual prompts has none), so loading it never needs the original CLIP
weights (``model.clip_pretrained`` is kept in the config as provenance only). :func:`init_from_checkpoint` starts a
new model from another checkpoint's matching weights (``train.init_from``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from dpseg import __version__
from dpseg.checkpoint_paths import PATHS_RULE, export_paths, load_paths
from dpseg.config import Config, ModelConfig, atomic_write_text, config_from_dict
from dpseg.errors import CheckpointError, ConfigError, WeightsUnavailableError
from dpseg.model.aggregation import ClassAggregation, ConvNeXtAggregation, SEDClassAggregation, SpatialAggregation
from dpseg.model.cost_volume import CostEmbedding, UpsampledCostGuidance, VisualCostEmbedding
from dpseg.model.decoder import ClassHead, CostVolumeGuidedDecoder, DecoderStage
from dpseg.model.dpseg import DPSeg
from dpseg.model.towers import build_towers
from dpseg.prompts.templates import model_templates
from dpseg.weights import (
    INIT_PATCH_LOCK,
    hub_reachable,
    load_strict,
    read_state_dict,
    remember_fingerprint,
    safetensors_integrity,
    safetensors_metadata,
    save_safetensors,
    skip_random_init,
    state_fingerprint,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_FIX = (
    "restore it from a backup or export the model again (training writes OUTPUT/final and OUTPUT/best); "
    "for a hub checkpoint, delete it from the Hugging Face cache and download it again"
)


def build_model(cfg: Config, load_clip_weights: bool = True) -> DPSeg:
    """DPSeg from a resolved config: every part is built here and handed to the network (which reads no config).
    CLIP weights come from ``model.clip_pretrained`` unless told not to."""
    m = cfg.model
    with INIT_PATCH_LOCK:  # random initialisation while no other thread has torch.nn.init patched
        image, prompt, text = build_towers(m, load_weights=load_clip_weights, prompt_encoder=uses_visual_prompts(m))
        M = len(model_templates(cfg))
        upsample_first = image.dense_stride > image.stage_strides[2]  # F_c below E_4's resolution (stride 32 vs 16)
        try:
            return DPSeg(
                image,
                prompt,
                text,
                CostEmbedding(M, m.cost_embed_dim, m.cost_embed_kernel),
                build_decoder(m, image.stage_dims, upsample_first),
                upsampled_cost=_upsampled_cost(m, M, upsample_first),
                visual_cost=_visual_costs(m, M),
                prompt_type=m.prompt_type,
                detach_guidance=m.detach_guidance,
                prompt_image_size=m.prompt_image_size,
            )
        except ValueError as e:
            raise ConfigError(f"the model section of the config is inconsistent: {e}") from None


def _visual_scales(m: ModelConfig) -> list[int]:
    return sorted(m.visual_scales) if m.guidance in ("visual", "both") else []


def uses_visual_prompts(m: ModelConfig) -> bool:
    """Whether the model reads visual prompts (and so holds a visual-prompt encoder)."""
    return m.prompt_type != "text" or bool(_visual_scales(m))


def _upsampled_cost(m: ModelConfig, num_templates: int, upsample_first: bool) -> Optional[UpsampledCostGuidance]:
    if m.guidance not in ("upsampled", "both"):
        return None
    return UpsampledCostGuidance(num_templates, m.cost_guidance_dims, upsample_first)


def _visual_costs(m: ModelConfig, num_templates: int) -> dict[int, VisualCostEmbedding]:
    """Encoder stage j -> the embedding of F_v^j (decoder stage 4 - j takes its guidance width)."""
    return {
        j: VisualCostEmbedding(num_templates, m.cost_guidance_dims[4 - j], m.visual_cost_norm)
        for j in _visual_scales(m)
    }


def build_decoder(m: ModelConfig, stage_dims: list[int], upsample_first: bool = True) -> CostVolumeGuidedDecoder:
    """The three decoder stages (widths cost_embed_dim -> decoder_dims) fusing E_4, E_3, E_2 and their guidance;
    without ``upsample_first`` (a dense embedding at E_4's stride) stage 0 projects instead of upsampling."""
    widths = [m.cost_embed_dim] + list(m.decoder_dims)
    encoder_dims = [stage_dims[2], stage_dims[1], stage_dims[0]]  # D_4, D_3, D_2 for decoder stages 0, 1, 2
    scales = _visual_scales(m)
    stages = []
    for s in range(3):
        guidance = (m.cost_guidance_dims[s] if m.guidance in ("upsampled", "both") else 0) + (
            m.cost_guidance_dims[s] if 4 - s in scales else 0
        )
        spatial = (
            SpatialAggregation(widths[s])
            if m.spatial_aggregation == "hdconv"
            else ConvNeXtAggregation(widths[s], m.spatial_kernel, m.mlp_ratio)
        )
        classes = ClassAggregation if m.class_aggregation == "dpseg" else SEDClassAggregation
        stages.append(
            DecoderStage(
                spatial,
                classes(widths[s], m.attention_heads, m.mlp_ratio, m.class_pool_train, m.class_pool_test),
                widths[s],
                widths[s + 1],
                encoder_dims[s],
                m.encoder_guidance_dims[s],
                guidance,
                upsample=s > 0 or upsample_first,
            )
        )
    head = ClassHead(widths[-1])
    aux_heads = [ClassHead(w) for w in widths[:3]] if m.aux_heads else None  # on the maps entering stages 0, 1, 2
    return CostVolumeGuidedDecoder(stages, head, aux_heads)


def save_model(model: DPSeg, cfg: Config, directory: Union[str, os.PathLike], metadata: Optional[dict] = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically into ``directory`` (``metadata``: extra provenance;
    paths the checkpoint needs are stored portably: :mod:`dpseg.checkpoint_paths`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prompt_encoder = "none" if model.prompt_encoder is None else state_fingerprint(model.prompt_encoder)
    meta = {
        "dpseg_version": __version__,
        "prompt_encoder": prompt_encoder,
        "text_encoder": state_fingerprint(model.text_encoder),
        **(metadata or {}),
    }
    data = export_paths(cfg.to_dict(), directory)
    save_safetensors(model.state_dict(), directory / WEIGHTS_NAME, metadata=meta)
    atomic_write_text(directory / CONFIG_NAME, json.dumps({"dpseg": {**meta, "paths": PATHS_RULE}, **data}, indent=2))
    return directory


def _resolve_checkpoint(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise CheckpointError(
            f"{path} is a file; a dpseg checkpoint is a directory holding {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise CheckpointError(
            f"checkpoint {source} does not exist (expected a directory or a Hugging Face hub id org/name)"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached
        pass
    if not hub_reachable():
        raise WeightsUnavailableError(
            f"checkpoint {source} is neither a local directory nor in the Hugging Face cache, and the hub is "
            "unreachable; download it on a connected machine and pass the directory"
        )
    return Path(snapshot_download(source, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))


def load_model(
    source: Union[str, os.PathLike], device: Optional[Union[str, torch.device]] = None
) -> tuple[DPSeg, Config]:
    """Load our checkpoint directory (or hub id) strictly; returns (model in eval mode, its config)."""
    cfg_path, weights = checkpoint_files(source)
    directory = cfg_path.parent
    try:
        data = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e})") from None
    meta = data.pop("dpseg", None)
    data = load_paths(data, directory, isinstance(meta, dict) and meta.get("paths") == PATHS_RULE)
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path} is not a dpseg config this version can read: {e}") from None
    with ThreadPoolExecutor(1) as pool:  # hash the weights while the model is built (hashlib releases the GIL)
        integrity = pool.submit(safetensors_integrity, weights)
        with skip_random_init():  # every parameter is loaded strictly below
            model = build_model(cfg, load_clip_weights=False)
    state = read_state_dict(weights, "dpseg checkpoint", fix=WEIGHTS_FIX)  # content hash verified (cached above)
    if model.prompt_encoder is None:  # text-only models saved before they dropped the (unused) visual-prompt encoder
        state = {k: v for k, v in state.items() if not k.startswith("prompt_encoder.")}
    load_strict(model, state, "DPSeg model of this config", str(weights), assign=True)  # no second copy
    if integrity.result()[0] == "ok":  # the frozen encoders' fingerprints saved with verified weights: banks are
        meta = safetensors_metadata(weights)  # checked against them without hashing the encoders again
        for name in ("prompt_encoder", "text_encoder"):
            if meta.get(name) and meta[name] != "none" and getattr(model, name) is not None:
                remember_fingerprint(getattr(model, name), meta[name])
    model.eval()
    return (model.to(device) if device is not None else model), cfg


# ------------------------------------------------------------------------------------------ parameter counts


def component_counts(model) -> list[tuple[str, int, int]]:
    """(component, total, trainable) rows for a DPSeg model, plus a total row."""
    parts: list[tuple[str, nn.Module]] = [
        ("image encoder (CLIP image tower, lr × encoder_lr_mult)", model.image_encoder),
        *([("visual-prompt encoder (frozen copy)", model.prompt_encoder)] if model.prompt_encoder is not None else []),
        ("text encoder (frozen CLIP text tower)", model.text_encoder),
        ("cost embedding", model.cost_embedding),
        ("visual cost embeddings", model.visual_cost),
        ("decoder (aggregation, upsampling, fusion, head)", model.decoder),
    ]
    if model.upsampled_cost is not None:
        parts.append(("upsampled-cost guidance (SED mode)", model.upsampled_cost))
    rows = [
        (name, sum(p.numel() for p in m.parameters()), sum(p.numel() for p in m.parameters() if p.requires_grad))
        for name, m in parts
    ]
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(r[1] for r in rows), "a component is missing from the summary"
    rows.append(("total", total, sum(p.numel() for p in model.parameters() if p.requires_grad)))
    return rows


def _human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n / 1e3:.2f}K" if n else "0"


def format_counts(rows: list[tuple[str, int, int]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'component':<{width}}  {'total':>10}  {'trainable':>10}"]
    lines += [f"{name:<{width}}  {_human(t):>10}  {_human(tr):>10}" for name, t, tr in rows]
    return "\n".join(lines)


def check_model_dir(directory: Union[str, os.PathLike]) -> list[tuple[str, str, str]]:
    """Integrity of a checkpoint directory without building the model: [(file, ok|unverified|damaged, detail)]."""
    directory = Path(directory)
    rows = []
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    try:
        config_from_dict({k: v for k, v in json.loads(cfg_path.read_text()).items() if k != "dpseg"})
        rows.append((str(cfg_path), "ok", "a config this version reads"))
    except (OSError, ValueError, ConfigError) as e:
        rows.append((str(cfg_path), "damaged", f"unreadable ({str(e).splitlines()[0][:160]})"))
    if not weights.is_file():
        rows.append((str(weights), "damaged", "missing"))
    else:
        status, detail = safetensors_integrity(weights)
        rows.append((str(weights), status, detail if status != "damaged" else f"{detail}; {WEIGHTS_FIX}"))
    return rows


# -------------------------------------------------------------------------------- starting from another model

FROZEN_TOWERS = ("prompt_encoder.", "text_encoder.")


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` did, tensor by tensor (state-dict names)."""

    source: str
    preset: str
    loaded: list[str]  # trainable tensors taken from the checkpoint (name and shape match)
    fresh: list[str]  # trainable tensors the checkpoint lacks: they keep their fresh initialisation
    mismatched: list[str]  # "name (checkpoint shape, model shape)": same name, other shape; kept fresh
    unused: list[str]  # in the checkpoint but not in this model
    frozen: list[str]  # the frozen towers: never taken from the checkpoint (they come from model.clip_pretrained)

    def lines(self, model: nn.Module) -> list[str]:
        """One line per category: how many tensors and values, and the modules they belong to."""
        state = model.state_dict()
        values = lambda names: sum(state[n.split(" (")[0]].numel() for n in names if n.split(" (")[0] in state)  # noqa: E731
        rows = [
            ("loaded", self.loaded),
            ("fresh (not in the checkpoint)", self.fresh),
            ("fresh (shape mismatch)", self.mismatched),
            ("frozen, from model.clip_pretrained", self.frozen),
            ("in the checkpoint, unused", self.unused),
        ]
        out = [f"init from {self.source} (preset {self.preset}):"]
        for title, names in rows:
            if names:
                size = f", {_human(values(names))} values" if title != "in the checkpoint, unused" else ""
                out.append(f"  {title}: {len(names)} tensors{size}: {module_groups(names)}")
        out += [f"    {m}" for m in self.mismatched]
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _module_of(name: str) -> str:
    parts = name.split(" (")[0].split(".")
    if parts[0] in ("image_encoder", "text_encoder", "prompt_encoder"):
        return parts[0]
    if parts[:2] == ["decoder", "stages"]:
        return ".".join(parts[:4])  # decoder.stages.s.<part>
    return ".".join(parts[:2])


def module_groups(names: list[str]) -> str:
    """'image_encoder (344), decoder.stages.0.classes (10), ...': tensor names counted by the module they belong to."""
    counts: dict[str, int] = {}
    for n in names:
        counts[_module_of(n)] = counts.get(_module_of(n), 0) + 1
    return ", ".join(f"{m} ({c})" for m, c in counts.items())


def checkpoint_files(source: Union[str, os.PathLike]) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of a checkpoint directory or hub id; CheckpointError if incomplete."""
    directory = _resolve_checkpoint(str(source))
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(f"checkpoint directory {directory} must hold {CONFIG_NAME} and {WEIGHTS_NAME}")
    return cfg_path, weights


def plan_init(own: dict, state: dict, source: str = "", preset: str = "?") -> InitReport:
    """Which tensors of a model's state dict ``own`` would come from ``state`` (names and shapes only)."""
    trainable = [k for k in own if not k.startswith(FROZEN_TOWERS)]
    return InitReport(
        source=source,
        preset=preset,
        loaded=[k for k in trainable if k in state and tuple(state[k].shape) == tuple(own[k].shape)],
        fresh=[k for k in trainable if k not in state],
        mismatched=[
            f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
            for k in trainable
            if k in state and tuple(state[k].shape) != tuple(own[k].shape)
        ],
        unused=[k for k in state if k not in own],
        frozen=[k for k in own if k.startswith(FROZEN_TOWERS)],
    )


def init_from_checkpoint(model: DPSeg, source: Union[str, os.PathLike]) -> InitReport:
    """Copy every trainable tensor of ``model`` whose name and shape match into it from the checkpoint ``source``
    (e.g. SED converted by ``dpseg convert sed``); the others keep their values. The frozen towers are left alone:
    they define the prompts (and the keys of prompt banks) and come from ``model.clip_pretrained``."""
    cfg_path, weights = checkpoint_files(source)
    try:
        preset = str(json.loads(cfg_path.read_text()).get("preset", "?"))
    except ValueError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e})") from None
    state = read_state_dict(weights, "dpseg checkpoint")
    report = plan_init(model.state_dict(), state, str(source), preset)
    result = model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    assert not result.unexpected_keys
    return report

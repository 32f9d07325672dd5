"""Loading a CLIP for DPSeg: an OpenCLIP model from a name or an inline config (``model.clip_model``,
``model.clip_model_cfg``), its weights from an OpenCLIP pretrained tag (hub / local cache), a local weight file in
OpenCLIP layout, or nothing (``model.clip_pretrained``), split into the towers of :mod:`dpseg.model.towers`.

This is where the ``model`` config section meets the CLIP towers; the model package itself reads no config.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional

import open_clip

from dpseg.config import ModelConfig
from dpseg.errors import CheckpointError, ConfigError, WeightsUnavailableError
from dpseg.hub import hub_reachable
from dpseg.init_patch import INIT_PATCH_LOCK
from dpseg.model.towers import ImageTower, LazyTokenizer, TextTower, make_frozen_copy
from dpseg.weights import load_strict, read_state_dict


def clip_model_config(cfg: ModelConfig) -> dict:
    """The OpenCLIP model config (embed_dim, vision_cfg, text_cfg) for ``cfg``."""
    if cfg.clip_model_cfg:
        mc = copy.deepcopy(cfg.clip_model_cfg)
    else:
        mc = open_clip.get_model_config(cfg.clip_model)
        if mc is None:
            raise ConfigError(
                f"config key 'model.clip_model': '{cfg.clip_model}' is not an OpenCLIP model name "
                "(try convnext_base_w_320 or convnext_large_d_320, or give model.clip_model_cfg)"
            )
        mc = copy.deepcopy(mc)
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in mc:
            raise ConfigError(f"config key 'model.clip_model_cfg' lacks '{key}'")
    if not mc["vision_cfg"].get("timm_model_name", "").startswith(("convnext", "dpseg_convnext")):
        raise ConfigError(
            f"model '{cfg.clip_model}' has no ConvNeXt image tower; DPSeg needs the stage pyramid of an OpenCLIP "
            "ConvNeXt (convnext_base_w_320, convnext_large_d_320)"
        )
    mc["vision_cfg"]["timm_model_pretrained"] = False
    return mc


def resolve_pretrained(model_name: str, source: str) -> Path:
    """Turn ``model.clip_pretrained`` into a local weight file, downloading only if the hub is reachable."""
    path = Path(source).expanduser()
    if path.suffix in (".safetensors", ".pt", ".pth", ".bin") or os.sep in source:
        if not path.is_file():
            raise CheckpointError(f"CLIP weight file {path} does not exist (config key 'model.clip_pretrained')")
        return path
    cfg = open_clip.get_pretrained_cfg(model_name, source)
    if not cfg or not cfg.get("hf_hub"):
        tags = [t for m, t in open_clip.list_pretrained() if m == model_name]
        raise ConfigError(
            f"config key 'model.clip_pretrained': '{source}' is neither a file nor an OpenCLIP tag of {model_name} "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    from huggingface_hub import hf_hub_download

    repo, filename = os.path.split(cfg["hf_hub"])
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:  # the local cache first: works offline, never touches the network
        try:
            return Path(hf_hub_download(repo, name, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached
            pass
    if not hub_reachable():
        raise WeightsUnavailableError(
            f"OpenCLIP weights {model_name}/{source} are not in the local Hugging Face cache and the hub is "
            f"unreachable; download {names[-1]} from https://huggingface.co/{repo} on a connected machine and "
            f"pass it with --set model.clip_pretrained=/path/to/{names[-1]}"
        )
    last = None
    for name in names:
        try:
            return Path(hf_hub_download(repo, name))
        except Exception as e:  # noqa: BLE001
            last = e
    raise WeightsUnavailableError(f"could not download OpenCLIP weights {model_name}/{source} from {repo}: {last}")


def create_clip(cfg: ModelConfig, load_weights: bool = True) -> open_clip.model.CLIP:
    """Build the OpenCLIP model of ``cfg``; load ``cfg.clip_pretrained`` strictly when asked and set."""
    mc = clip_model_config(cfg)
    with INIT_PATCH_LOCK:  # its random initialisation must not meet another thread's patched torch.nn.init
        model = open_clip.model.CLIP(
            mc["embed_dim"], mc["vision_cfg"], mc["text_cfg"], quick_gelu=mc.get("quick_gelu", False)
        )
    if load_weights and cfg.clip_pretrained:
        path = resolve_pretrained(cfg.clip_model, cfg.clip_pretrained)
        state = read_state_dict(path, "CLIP weight")
        state.pop("attn_mask", None)  # a non-persistent buffer in current open_clip, stored by some old files
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        load_strict(model, state, f"OpenCLIP model '{cfg.clip_model}'", str(path))
    return model


def make_tokenizer(cfg: ModelConfig) -> LazyTokenizer:
    """The OpenCLIP BPE tokenizer (bundled vocabulary: no network) at the model's context length."""
    mc = clip_model_config(cfg)
    return LazyTokenizer(mc["text_cfg"].get("context_length", 77))


def build_towers(
    cfg: ModelConfig, load_weights: bool = True, prompt_encoder: bool = True
) -> tuple[ImageTower, Optional[ImageTower], TextTower]:
    """(trainable image encoder, frozen visual-prompt encoder or None when not asked for, frozen text tower) from
    one CLIP."""
    clip = create_clip(cfg, load_weights=load_weights)
    mean = open_clip.constants.OPENAI_DATASET_MEAN
    std = open_clip.constants.OPENAI_DATASET_STD
    image = ImageTower(clip.visual, mean, std, grad_checkpointing=cfg.grad_checkpointing)
    prompt = make_frozen_copy(image) if prompt_encoder else None
    text = TextTower(clip, make_tokenizer(cfg))
    text.requires_grad_(False)
    text.eval()
    return image, prompt, text

"""Import the released checkpoints of SED (Xie et al., CVPR 2024; github.com/xb534/SED) as dpseg checkpoints.

SED's ``model_final.pth`` is a detectron2 checkpoint: ``{"model": state_dict, ...}`` where the state dict holds the
whole OpenCLIP model SED fine-tuned (prefix ``sem_seg_head.predictor.clip_model.``: its image tower trained, its
text tower frozen) and the decoder (``sem_seg_head.predictor.transformer.``). dpseg's presets ``sed-b`` / ``sed-l``
build the same network from dpseg's components, so converting is renaming: :func:`sed_key` gives, for every tensor
of the dpseg model, the name SED stores it under, and the file must hold exactly those tensors with the same shapes
(anything missing, unexpected or mis-shaped is named). The OpenCLIP names are those of open_clip 3.x / timm 1.x
(identical to SED's open_clip 2.10 / timm 0.8 names). CLIP's ``logit_scale`` is dropped: SED never reads it.

The file is read with ``torch.load(weights_only=True)``: no pickled code is ever run.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from dpseg.build import build_model
from dpseg.checkpoint import WEIGHTS_NAME, save_model
from dpseg.config import Config, build_config
from dpseg.errors import CheckpointError
from dpseg.model.dpseg import DPSeg

CLIP, DECODER = "sem_seg_head.predictor.clip_model.", "sem_seg_head.predictor.transformer."
IGNORED = {CLIP + "logit_scale": "CLIP's logit scale, which SED never reads"}
STEM = CLIP + "visual.trunk.stem.0.weight"  # (D_2, 3, 4, 4): tells SED-B (128) from SED-L (192)
PRESET_BY_STEM_WIDTH = {128: "sed-b", 192: "sed-l"}

# dpseg tensor name -> SED tensor name; "{n}" is the decoder stage + 1 (SED numbers its Up blocks 1, 2, 3)
RULES: list[tuple[str, str]] = [
    (r"image_encoder\.(.+)", CLIP + r"visual.\1"),
    (r"text_encoder\.(.+)", CLIP + r"\1"),
    (r"cost_embedding\.conv\.(.+)", DECODER + r"conv1.\1"),
    (r"upsampled_cost\.steps\.(\d)\.0\.(.+)", DECODER + r"decoder_corr_guidance_projection.\1.0.\2"),
    (r"decoder\.stages\.(\d)\.encoder_proj\.0\.(.+)", DECODER + r"decoder_guidance_projection.\1.0.\2"),
    (r"decoder\.stages\.(\d)\.up\.(.+)", DECODER + r"decoder{n}.up.\2"),
    (r"decoder\.stages\.(\d)\.fuse\.(.+)", DECODER + r"decoder{n}.conv.double_conv.\2"),
    (r"decoder\.stages\.(\d)\.spatial\.(.+)", DECODER + r"decoder{n}.cnext.\2"),
    (r"decoder\.stages\.(\d)\.classes\.([qkv]\..+)", DECODER + r"decoder{n}.attention.attention.\2"),
    (r"decoder\.stages\.(\d)\.classes\.mlp\.(.+)", DECODER + r"decoder{n}.attention.MLP.\2"),
    (r"decoder\.stages\.(\d)\.classes\.(norm[12]\..+)", DECODER + r"decoder{n}.attention.\2"),
    (r"decoder\.aux_heads\.(\d)\.(.+)", DECODER + r"head\1.\2"),
    (r"decoder\.head\.(.+)", DECODER + r"head.\1"),
]


def sed_key(name: str) -> Optional[str]:
    """The name SED stores dpseg's tensor ``name`` under, or None if SED has no such tensor."""
    for pattern, template in RULES:
        match = re.fullmatch(pattern, name)
        if match:
            if "{n}" in template:
                template = template.replace("{n}", str(int(match.group(1)) + 1))
            return match.expand(template)
    return None


def read_sed_checkpoint(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """SED's state dict from a ``.pth`` file (its ``["model"]`` entry when present), read without running code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"SED checkpoint {path} {'is a directory' if path.is_dir() else 'does not exist'}; "
            "pass the .pth file (e.g. model_final.pth)"
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"SED checkpoint {path} is empty (0 bytes); download it again")
    kind = _file_kind(path)
    if kind is not None:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({kind}); pass SED's trained model file, e.g. sed_b.pth (README, "
            'section "SED\'s released checkpoints")'
        )
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # files in the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated, or holding objects weights_only refuses
        text = str(e)
        if "weights_only" in text or "Weights only load failed" in text:  # a real checkpoint with pickled objects
            kept = path.with_name(f"{path.stem}-weights.pth")
            resave = f"torch.save({{'model': torch.load({str(path)!r}, weights_only=False)['model']}}, {str(kept)!r})"
            raise CheckpointError(
                f"SED checkpoint {path} holds pickled Python objects besides its tensors, and torch.load("
                "weights_only=True) refuses them: dpseg never runs pickled code. If you trust the file, keep its "
                f'weights alone and convert those: python -c "import torch; {resave}"'
            ) from None
        reason = _first_sentence(text) or type(e).__name__
        raise CheckpointError(
            f"cannot read SED checkpoint {path}: not a complete PyTorch file ({reason}); download it again"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"SED checkpoint {path} holds no state dict of tensors (expected {{'model': state_dict}})"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


# the first bytes of files people pass by mistake, and what they are
_MAGIC = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"GIF8": "a GIF image",
    b"RIFF": "a RIFF file (WebP image, WAV audio, ...)",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "a gzip archive (unpack it first)",
    b"{": "a JSON or text file",
}


def _file_kind(path: Path) -> Optional[str]:
    """What a file that is not a PyTorch checkpoint is (None when it may be one: zip or pickle, or unknown)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith((b"PK", b"\x80")):  # torch.save's zip format; the legacy format is a pickle
        return None
    if head.startswith(b"\x93NUMPY"):
        return "a numpy array file"
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return "its first bytes are neither a zip archive nor a pickle, the two formats torch.save writes"


_TORCH_PLEA = re.compile(r"\s*\(Could this error message be improved\?.*?\)")


def _first_sentence(text: str, limit: int = 200) -> str:
    """The first line of an error message, cut at a sentence end when it is long (never mid-word)."""
    line = (text.strip().splitlines() or [""])[0]
    line = _TORCH_PLEA.sub("", line).strip()  # PyTorch asks its own users to report its message: not ours to say
    if len(line) <= limit:
        return line
    cut = max(line.rfind(". ", 0, limit), line.rfind("; ", 0, limit))
    return line[: cut + 1] if cut > 0 else line[: line.rfind(" ", 0, limit)] + " ..."


def sed_preset(state: dict[str, torch.Tensor], source: str = "the checkpoint") -> str:
    """sed-b or sed-l, from the width of the image tower's stem."""
    if STEM not in state:
        raise CheckpointError(
            f"{source} is not an SED checkpoint: it has no tensor {STEM} (SED's keys start with {CLIP} and {DECODER})"
        )
    width = state[STEM].shape[0]
    if width not in PRESET_BY_STEM_WIDTH:
        raise CheckpointError(
            f"{source}: {STEM} has shape {tuple(state[STEM].shape)}, neither SED-B (128 channels) "
            "nor SED-L (192); pass --preset or --config for another SED"
        )
    return PRESET_BY_STEM_WIDTH[width]


def _short(names: Sequence[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def sed_state_for(cfg: Config, state: dict[str, torch.Tensor], source: str) -> tuple[DPSeg, dict]:
    """(the dpseg model of ``cfg`` on the meta device, its state dict taken from SED's ``state``); a one-line
    CheckpointError naming every missing, unexpected or mis-shaped SED tensor."""
    with torch.device("meta"):  # names and shapes only: nothing is allocated or initialised
        model = build_model(cfg, load_clip_weights=False)
    expected = model.state_dict()
    names = {k: sed_key(k) for k in expected}
    foreign = [k for k, v in names.items() if v is None]
    if foreign:
        raise CheckpointError(
            f"the config (preset {cfg.preset}) is not SED's architecture: SED has no tensor for "
            f"{_short(foreign)}; convert with preset sed-b or sed-l"
        )
    sed_names = {k: v for k, v in names.items() if v is not None}  # all of them (no foreign key above)
    wanted = set(sed_names.values())
    missing = [v for v in sed_names.values() if v not in state]
    unexpected = [k for k in state if k not in wanted and k not in IGNORED]
    mismatched = [
        f"{v} (file {tuple(state[v].shape)}, {cfg.preset} {tuple(expected[k].shape)})"
        for k, v in sed_names.items()
        if v in state and state[v].shape != expected[k].shape
    ]
    found = (("missing keys", missing, 6), ("unexpected keys", unexpected, 6), ("shape mismatch", mismatched, 3))
    problems = [f"{what}: {_short(keys, n)}" for what, keys, n in found if keys]
    if problems:
        raise CheckpointError(f"{source} does not fit SED of preset {cfg.preset}: " + "; ".join(problems))
    return model, {k: state[v].to(expected[k].dtype) for k, v in sed_names.items()}


@dataclass
class Converted:
    directory: Path
    preset: str
    tensors: int
    parameters: int
    ignored: list[str]
    seconds: float


def convert_sed(
    source: Union[str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    preset: Optional[str] = None,
    config_file: Optional[str] = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> Converted:
    """SED checkpoint -> dpseg checkpoint folder (``config.json`` + ``model.safetensors``). The architecture is
    ``preset`` / ``config_file`` / ``overrides`` (dpseg's usual config sources) or, by default, sed-b or sed-l as the
    tensor shapes say."""
    start = time.perf_counter()
    out = Path(out_dir).expanduser()
    if (out / WEIGHTS_NAME).exists() and not overwrite:
        raise CheckpointError(
            f"{out} already holds a checkpoint ({WEIGHTS_NAME}); choose another folder or pass --force"
        )
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output {out} is a file; pass a folder for the converted checkpoint")
    state = read_sed_checkpoint(source)
    if preset is None and config_file is None:
        preset = sed_preset(state, str(source))
    cfg = build_config(preset=preset, file=config_file, overrides=list(overrides))
    model, converted = sed_state_for(cfg, state, str(source))
    model.load_state_dict(converted, assign=True)  # the file's tensors become the (meta) model's parameters
    save_model(model, cfg, out, metadata={"converted_from": f"SED checkpoint {Path(source).name}"})
    return Converted(
        out,
        cfg.preset,
        len(converted),
        sum(t.numel() for t in converted.values()),
        [k for k in IGNORED if k in state],
        time.perf_counter() - start,
    )

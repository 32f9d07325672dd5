"""Shared test helpers: tiny models, random prompts, a minimal training state, benchmark scripts as modules."""

import importlib.util
import sys
from pathlib import Path

import torch

from dpseg.build import build_model
from dpseg.config import build_config
from dpseg.engine.rng import capture_rng
from dpseg.model.dual_prompt import PromptSet


def tiny_model(*overrides, seed=0):
    torch.manual_seed(seed)
    cfg = build_config("dpseg-tiny", overrides=list(overrides))
    return build_model(cfg), cfg


def policy(**refine):
    """The refinement policy of the eval config with these ``refine_*`` settings (checked as the config checks them):
    ``policy(min_area=0.01)`` is eval.refine_min_area=0.01 with every other setting at its default."""
    from dpseg.config import EvalConfig, validate_eval
    from dpseg.evaluation.inference import refine_policy

    settings = EvalConfig(**{f"refine_{k}": v for k, v in refine.items()})
    validate_eval(settings)
    return refine_policy(settings)


class LogitsStub(torch.nn.Module):
    """A stand-in for DPSeg whose logits are ``fn(images)``: for tests of what is done with them."""

    needs_visual_prompts = False

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, images, prompts, class_chunk=0):
        return {"logits": self.fn(images)}


def stub_inference(fn, settings, num_classes):
    """The one inference path (:class:`~dpseg.evaluation.inference.Inference`) over :class:`LogitsStub` ``(fn)``."""
    from dpseg.evaluation.inference import Inference

    prompts = PromptSet([f"c{k}" for k in range(num_classes)], torch.zeros(num_classes, 1, 4))
    return Inference(LogitsStub(fn), prompts, settings)


def random_prompts(model, num_classes, seed=0, templates=None, names=None):
    """Text prompts from the model's tower and visual prompts from random 'generated' images."""
    g = torch.Generator().manual_seed(seed)
    names = names or [f"class {i}" for i in range(num_classes)]
    M = model.num_templates
    templates = templates or [f"template {m} of a {{}}." for m in range(M)]
    T = model.encode_text_prompts(names, templates)
    if model.prompt_encoder is None:  # a text-only model holds no visual-prompt encoder (and ignores V, v_j)
        V = torch.nn.functional.normalize(torch.randn(num_classes * M, T.shape[-1], generator=g), dim=-1)
        stages = [torch.randn(num_classes * M, d, generator=g) for d in model.image_encoder.stage_dims[:3]]
    else:
        images = torch.rand(num_classes * M, 3, model.prompt_image_size, model.prompt_image_size, generator=g)
        V, stages = model.encode_visual_prompts(images)
    return PromptSet(names, T, V.view(num_classes, M, -1), [s.view(num_classes, M, -1) for s in stages])


def flip_tensor_bit(path, name=None):
    """Flip one bit in the middle of a tensor's data: the file keeps its size and stays a valid safetensors file."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path)
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = name or max(
        (k for k in header if k != "__metadata__"),
        key=lambda k: header[k]["data_offsets"][1] - header[k]["data_offsets"][0],
    )
    start, end = header[name]["data_offsets"]
    data[8 + n + (start + end) // 2] ^= 0x20
    path.write_bytes(data)
    assert len(load_file(path)) == len(header) - ("__metadata__" in header)  # still a readable safetensors file
    return name


def strip_content_hash(path):
    """Re-write a safetensors file as dpseg wrote it before content hashes (same tensors, no dpseg_sha256)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = {k: v for k, v in (f.metadata() or {}).items() if k != "dpseg_sha256"}
    save_file({k: v.clone() for k, v in load_file(str(path)).items()}, str(path), metadata=meta)


def train_state(step):
    """The smallest training state save_checkpoint accepts at ``step`` (empty optimizer, this process's RNG)."""
    return {
        "step": step,
        "consumed_samples": 2 * step,
        "rng": [capture_rng()],
        "best": {"mIoU": None, "step": None},
        "frozen": {},
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": {},
    }


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ on sys.path first: the scripts import their siblings)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

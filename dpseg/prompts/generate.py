"""Text-to-image generators for visual prompts (docs/paper-choices.md #1, #2, #4).

A generator is any object with ``identity: str`` (a stable string naming its weights and sampler settings; it is
part of a prompt bank's key) and ``generate(texts, seeds) -> list[PIL.Image]`` (RGB, one image per text, image i
depending only on ``texts[i]`` and ``seeds[i]``). :func:`get_generator` returns either the synthetic world's
renderer (spec ``synthetic``) or a :class:`DiffusersGenerator` for a diffusers text-to-image pipeline directory or
hub id (Stable Diffusion 1.5 by default; DPM-Solver++ 25 steps, CFG 7.5, 512², from ``PromptsConfig``).
The generator's prompt is the templated sentence with the class's first synonym (docs/paper-choices.md #4).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import re
import threading
import warnings
from pathlib import Path
from typing import Callable, Optional, Protocol, runtime_checkable

import torch
from PIL import Image

from dpseg.config import PromptsConfig
from dpseg.errors import BankError, ConfigError, DPSegError, WeightsUnavailableError
from dpseg.hub import hub_reachable
from dpseg.init_patch import INIT_PATCH_LOCK
from dpseg.safe_load import read_json
from dpseg.vocab import split_synonyms


@runtime_checkable
class Generator(Protocol):
    identity: str
    source: str  # the --generator spec it was made from (set by get_generator)

    def generate(self, texts: list[str], seeds: list[int]) -> list[Image.Image]: ...


def generator_prompt(template: str, class_name: str) -> str:
    """The sentence a generator draws: the template filled with the first synonym ("sofa, couch" -> "sofa")."""
    return template.format(split_synonyms(class_name)[0])


def image_seed(base_seed: int, class_name: str, index: int) -> int:
    """Seed of image ``index`` of a class: independent of class order, sharding and resumption."""
    digest = hashlib.sha256(f"{base_seed}\x00{class_name}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# The original SD-1.5 repository was withdrawn from the hub; its files live on under this id.
HUB_ALIASES = {"runwayml/stable-diffusion-v1-5": ["stable-diffusion-v1-5/stable-diffusion-v1-5"]}
SCHEDULERS = {  # PromptsConfig.scheduler -> (diffusers class, extra config)
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
}


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~")) and "\\" not in spec


def resolve_pipeline_dir(spec: str) -> Path:
    """A local diffusers pipeline directory for a directory or hub id; never waits on an unreachable network."""
    path = Path(spec).expanduser()
    if path.exists() or not _looks_like_hub_id(spec):
        if not path.exists():
            raise BankError(
                f"generator directory {path} does not exist; pass a diffusers pipeline folder, a hub id or 'synthetic'"
            )
        if not (path / "model_index.json").is_file():
            raise BankError(f"generator {path} is not a diffusers pipeline directory (no model_index.json in it)")
        return path
    from huggingface_hub import snapshot_download

    repos = [spec] + HUB_ALIASES.get(spec, [])
    for repo in repos:  # the local cache first: works offline, never touches the network
        try:
            cached = Path(snapshot_download(repo, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached
            continue
        if (cached / "model_index.json").is_file():
            return cached
    if not hub_reachable():
        raise WeightsUnavailableError(
            f"generator weights '{spec}' are not in the local Hugging Face cache and the hub is unreachable; "
            f"download the pipeline on a connected machine (huggingface-cli download {repos[-1]}) and pass its "
            "folder with --generator /path/to/pipeline (the folder holding model_index.json), "
            "or use --generator synthetic"
        )
    from diffusers import DiffusionPipeline

    last = None
    for repo in repos:
        try:
            return Path(DiffusionPipeline.download(repo))
        except Exception as e:  # noqa: BLE001
            last = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise WeightsUnavailableError(
        f"could not download generator '{spec}' ({last}); pass a local pipeline folder with --generator"
    )


def pipeline_files(path: Path) -> list[Path]:
    """The files a plain ``from_pretrained`` of this folder reads: model_index.json and its components' folders,
    without precision variants (``*.fp16.*``), non-PyTorch formats or stray root files (e.g. an original .ckpt),
    so that downloading more variants into the same folder does not change the generator's identity."""
    index = _read_json(path / "model_index.json")
    parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None]
    hidden = lambda p: any(s.startswith(".") for s in p.relative_to(path).parts)  # noqa: E731
    roots = [path / c for c in parts if (path / c).is_dir()] if parts else [path]
    files = [p for r in roots for p in r.rglob("*") if p.is_file() and not hidden(p)]
    skip = re.compile(r"\.(fp16|fp32|bf16|ema|non_ema)\.|\.(ckpt|msgpack|onnx|onnx_data|h5|pb)$")
    return sorted({path / "model_index.json", *(p for p in files if not skip.search(p.name))})


def directory_fingerprint(path: Path, sample: int = 1 << 20) -> str:
    """Content hash of a pipeline folder's used files: small ones in full, large ones by size, first and last MiB."""
    h = hashlib.sha256()
    for p in pipeline_files(path):
        size = p.stat().st_size
        h.update(f"{p.relative_to(path).as_posix()}\x00{size}\x00".encode())
        with open(p, "rb") as f:
            if size <= 2 * sample:
                h.update(f.read())
            else:  # a safetensors header (names, shapes, offsets) sits at the start
                h.update(f.read(sample))
                f.seek(size - sample)
                h.update(f.read(sample))
    return h.hexdigest()[:16]


def _read_json(path: Path) -> dict:
    try:
        return read_json(path, "pipeline config", dict)
    except DPSegError:
        return {}


@contextlib.contextmanager
def _quiet_diffusers():
    """Silence diffusers/transformers loading chatter (progress bars, advisory warnings) while loading."""
    from diffusers.utils import logging as d_logging  # what diffusers.logging / transformers.logging re-export
    from transformers.utils import logging as t_logging

    d_level, t_level = d_logging.get_verbosity(), t_logging.get_verbosity()
    d_bar, t_bar = d_logging.is_progress_bar_enabled(), t_logging.is_progress_bar_enabled()
    d_logging.set_verbosity_error()
    t_logging.set_verbosity_error()
    d_logging.disable_progress_bar()
    t_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # e.g. torch_dtype renamed dtype in new diffusers
            yield
    finally:
        d_logging.set_verbosity(d_level)
        t_logging.set_verbosity(t_level)
        if d_bar:
            d_logging.enable_progress_bar()
        if t_bar:
            t_logging.enable_progress_bar()


class DiffusersGenerator:
    """A diffusers text-to-image pipeline as a visual-prompt generator; the pipeline loads on first use."""

    def __init__(self, path: Path, cfg: PromptsConfig, device: Optional[str] = None, source: str = ""):
        self.path, self.cfg, self.source = Path(path), cfg, source or str(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        self.dtype = dtypes.get(cfg.dtype) or (torch.float16 if self.device.type == "cuda" else torch.float32)
        index = _read_json(self.path / "model_index.json")
        self.pipeline_class = index.get("_class_name", "?")
        self._has_safety_checker = "safety_checker" in index
        self._check_settings(index)
        self.identity = (
            f"diffusers:{self.pipeline_class}@{directory_fingerprint(self.path)}|{cfg.scheduler}|steps={cfg.steps}"
            f"|cfg={cfg.guidance_scale:g}|res={cfg.resolution}|{str(self.dtype).replace('torch.', '')}"
            + (f"|neg={hashlib.sha256(cfg.negative_prompt.encode()).hexdigest()[:8]}" if cfg.negative_prompt else "")
        )
        self._pipe = None
        self._lock = threading.Lock()  # a pipeline's scheduler holds per-call state: one call at a time

    def _check_settings(self, index: dict) -> None:
        cfg = self.cfg
        if cfg.steps < 1 or cfg.resolution < 8:
            raise ConfigError("config keys 'prompts.steps' must be >= 1 and 'prompts.resolution' >= 8")
        vae = _read_json(self.path / "vae" / "config.json")
        factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
        if cfg.resolution % factor:
            raise ConfigError(
                f"config key 'prompts.resolution' ({cfg.resolution}) must be a multiple of {factor} for this pipeline"
            )
        if cfg.scheduler != "default" and "scheduler" in index:
            import diffusers

            current = _read_json(self.path / "scheduler" / "scheduler_config.json").get("_class_name", "")
            allowed = [current] + list(getattr(getattr(diffusers, current, None), "_compatibles", []))
            wanted = SCHEDULERS[cfg.scheduler][0]
            if wanted not in allowed:
                raise ConfigError(
                    f"config key 'prompts.scheduler': {cfg.scheduler} ({wanted}) "
                    f"does not fit this pipeline's {current}; "
                    "use --set prompts.scheduler=default"
                )

    @property
    def pipeline(self):
        if self._pipe is None:
            self._pipe = self._load()
        return self._pipe

    def _load(self):
        from diffusers import DiffusionPipeline

        extra = (
            {}
            if self.cfg.safety_checker or not self._has_safety_checker
            else {"safety_checker": None, "requires_safety_checker": False}
        )
        try:
            with INIT_PATCH_LOCK, _quiet_diffusers():  # from_pretrained patches torch.nn.init process-wide
                pipe = DiffusionPipeline.from_pretrained(
                    str(self.path), torch_dtype=self.dtype, local_files_only=True, **extra
                )
        except Exception as e:  # noqa: BLE001 - any failure here means an incomplete or foreign folder
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BankError(f"cannot load the diffusers pipeline in {self.path}: {reason[:200]}") from None
        params = inspect.signature(pipe.__call__).parameters
        required_image = "image" in params and params["image"].default is inspect.Parameter.empty
        if "prompt" not in params or required_image:
            raise BankError(f"{self.path} holds a {type(pipe).__name__}, not a text-to-image pipeline")
        if self.cfg.scheduler != "default":
            import diffusers

            name, extra_cfg = SCHEDULERS[self.cfg.scheduler]
            pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **extra_cfg)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    @torch.no_grad()
    def generate(self, texts: list[str], seeds: list[int]) -> list[Image.Image]:
        if len(texts) != len(seeds):
            raise ValueError(f"{len(texts)} texts but {len(seeds)} seeds")
        if not texts:
            return []
        kwargs = dict(
            prompt=list(texts),
            num_inference_steps=self.cfg.steps,
            guidance_scale=self.cfg.guidance_scale,
            height=self.cfg.resolution,
            width=self.cfg.resolution,
            # CPU generators: the initial latents are the same on every device and for every batch split
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            output_type="pil",
        )
        if self.cfg.negative_prompt:
            kwargs["negative_prompt"] = [self.cfg.negative_prompt] * len(texts)
        try:
            with self._lock, warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # numpy-2 notices from inside schedulers
                images = self.pipeline(**kwargs).images
        except torch.cuda.OutOfMemoryError:
            raise BankError(
                f"out of GPU memory generating {len(texts)} images at {self.cfg.resolution}px; lower "
                "--batch-size (finished classes are kept)"
            ) from None
        if len(images) != len(texts):
            raise BankError(f"the pipeline in {self.path} returned {len(images)} images for {len(texts)} prompts")
        return [im.convert("RGB") for im in images]


# Generators named by a word rather than a diffusers folder or hub id: name -> factory(spec options, cfg, device).
# Filled by the packages that own them (the synthetic world registers "synthetic" when it is imported), so this
# module never imports what is above it.
GeneratorFactory = Callable[[str, PromptsConfig, Optional[str]], Generator]
NAMED_GENERATORS: dict[str, GeneratorFactory] = {}


def register_generator(name: str, factory: GeneratorFactory) -> None:
    """Make ``--generator NAME`` or ``NAME:options`` build a generator with ``factory(options, cfg, device)``."""
    NAMED_GENERATORS[name] = factory


def get_generator(spec: str, cfg: PromptsConfig, device: Optional[str] = None) -> Generator:
    """A registered name (``synthetic[:options]``) -> its generator; anything else -> a diffusers pipeline."""
    if not spec:
        raise BankError(
            "no generator given; pass --generator with a diffusers pipeline folder, a hub id or 'synthetic'"
        )
    name, _, options = spec.partition(":")
    if name in NAMED_GENERATORS:
        gen = NAMED_GENERATORS[name](options, cfg, device)
        gen.source = spec
        return gen
    return DiffusersGenerator(resolve_pipeline_dir(spec), cfg, device=device, source=spec)


__all__ = [
    "Generator",
    "DiffusersGenerator",
    "get_generator",
    "register_generator",
    "generator_prompt",
    "image_seed",
    "resolve_pipeline_dir",
]

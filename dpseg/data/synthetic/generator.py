"""The synthetic world's text-to-image generator: it plays Stable Diffusion's role for visual prompts.

``SyntheticGenerator().generate(["a bad photo of a red striped star."], seeds=[0])`` finds the one class phrase
in each sentence and renders that object (random pose, size and textured background, chosen by the seed) as
SD renders a prompt. Like SD, it also reacts to a few words of the CLIP ImageNet templates, so prompt images vary
with the template as real generated prompts do: "many" draws several copies; "small" / "large" / "close-up" /
"cropped" change the framing; "dark", "bright", "hard to see", "blurry", "low resolution", "pixelated",
"black and white" and "jpeg corrupted" degrade the picture. A pattern may be named by its vocabulary word or its
caption synonym ("striped" / "stripy"). Output depends only on (text, seed, size, style).

``style="prompt"`` (the default: the world's *style gap*) draws in the prompt style of
:mod:`~dpseg.data.synthetic.render` - plain light background, outlined objects, lighter palette, finer patterns -
so visual prompts carry the class's attributes without looking like the scenes; ``style="scene"`` switches the
gap off and draws as the scenes are drawn.
"""

from __future__ import annotations

import io
import zlib
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageFilter

from dpseg.config import PromptsConfig
from dpseg.data.synthetic.render import (
    MAX_TILT,
    PROMPT_NOISE,
    STYLES,
    Placement,
    background,
    draw_object,
    finish,
    prompt_background,
)
from dpseg.data.synthetic.world import WORLD_VERSION, ObjectClass, find_class_in_text
from dpseg.errors import BankError, InputError
from dpseg.prompts.generate import register_generator

# Template words the generator reacts to (checked as whole-word substrings of the lower-cased sentence).
FRAMING = ("many", "small", "large", "close-up", "cropped")
DEGRADATIONS = (
    "dark",
    "bright",
    "hard to see",
    "blurry",
    "low resolution",
    "pixelated",
    "black and white",
    "jpeg corrupted",
)


def _has(text: str, phrase: str) -> bool:
    return f" {phrase} " in f" {text.lower().replace('.', ' ').replace(',', ' ')} "


def render_object_image(
    cls: ObjectClass, rng: np.random.Generator, size: int = 64, modifiers: Sequence[str] = (), style: str = "prompt"
) -> tuple[np.ndarray, np.ndarray]:
    """One prompt image of ``cls``: ((size, size, 3) uint8 image, (size, size) bool mask of the object pixels)."""
    canvas = prompt_background(rng, size, size) if style == "prompt" else background(rng, size, size)
    copies, radius, margin = 1, (0.28, 0.40), 1.15  # margin 1.15 r: the whole object is in view
    if "many" in modifiers:
        copies, radius = int(rng.integers(2, 4)), (0.15, 0.22)
    elif "small" in modifiers:
        radius = (0.16, 0.24)
    elif "large" in modifiers or "close-up" in modifiers:
        radius = (0.40, 0.48)
    elif "cropped" in modifiers:
        radius, margin = (0.40, 0.55), 0.3  # the object may run off the edges
    union = np.zeros((size, size), bool)
    for _ in range(copies):
        r = size * rng.uniform(*radius)
        lo, hi = margin * r, size - margin * r
        cx, cy = rng.uniform(min(lo, size / 2), max(hi, size / 2), 2)
        p = Placement(cls, float(cx), float(cy), float(r), float(rng.uniform(-MAX_TILT, MAX_TILT)))
        union |= draw_object(canvas, p, rng, style)
    image = _degrade(finish(canvas, rng, PROMPT_NOISE if style == "prompt" else 3.0), modifiers, rng)
    return image, union


def _degrade(image: np.ndarray, modifiers: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    x = image.astype(np.float32)
    if "dark" in modifiers:
        x *= rng.uniform(0.4, 0.6)
    if "bright" in modifiers:
        x = x + (255 - x) * rng.uniform(0.3, 0.45)
    if "hard to see" in modifiers:
        x = x.mean() + (x - x.mean()) * rng.uniform(0.35, 0.5)
    img = Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    size = img.size[0]
    if "blurry" in modifiers:
        img = img.filter(ImageFilter.GaussianBlur(size / 40))
    if "low resolution" in modifiers or "pixelated" in modifiers:
        small = max(8, size // 4)
        img = img.resize((small, small), Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.NEAREST)
    if "black and white" in modifiers:
        img = img.convert("L").convert("RGB")
    if "jpeg corrupted" in modifiers:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=6)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(img)


def modifiers_of(text: str) -> tuple[str, ...]:
    """The template words in ``text`` that change the rendering."""
    return tuple(m for m in FRAMING + DEGRADATIONS if _has(text, m))


def text_seed(text: str, seed: int) -> np.random.Generator:
    """The random generator of one (sentence, seed) pair: independent of batch composition and order."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(text.encode()), WORLD_VERSION])


class SyntheticGenerator:
    """Text-to-image generator of the synthetic world, with the interface the prompt banks use for SD.

    ``identity`` names everything that changes its output (world version, image size, style), so prompt banks
    built with it are keyed correctly.
    """

    source = "synthetic"  # the --generator spec; get_generator sets the full one

    def __init__(self, size: int = 64, device: Optional[str] = None, style: str = "prompt", **_ignored):
        if not isinstance(size, int) or size < 16:
            raise InputError(f"SyntheticGenerator size must be an integer >= 16, got {size!r}")
        if style not in STYLES:
            raise InputError(f"SyntheticGenerator style must be one of {', '.join(STYLES)}, got {style!r}")
        self.size = size
        self.style = style
        self.identity = f"synthetic-world-v{WORLD_VERSION}-{size}px-{style}-style"

    def generate(self, texts: list[str], seeds: list[int]) -> list[Image.Image]:
        """One RGB image per sentence; ``seeds[i]`` chooses the pose, size and background of image i."""
        return [Image.fromarray(img) for img, _ in self.generate_with_masks(texts, seeds)]

    def generate_with_masks(self, texts: Sequence[str], seeds: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """As :meth:`generate`, as ((S, S, 3) uint8 image, (S, S) bool object mask) pairs (tests, CLIP training)."""
        if isinstance(texts, str):
            raise InputError("texts must be a list of sentences, not one string")
        if len(texts) != len(seeds):
            raise InputError(f"got {len(texts)} texts but {len(seeds)} seeds; give one seed per text")
        out = []
        for text, seed in zip(texts, seeds):
            cls = find_class_in_text(text)
            out.append(render_object_image(cls, text_seed(text, seed), self.size, modifiers_of(text), self.style))
        return out

    def __repr__(self) -> str:
        return f"SyntheticGenerator(size={self.size}, style={self.style!r})"


def _from_spec(spec_options: str, cfg: PromptsConfig, device: Optional[str] = None) -> SyntheticGenerator:
    """``synthetic`` (size = prompts.resolution, prompt style), ``synthetic:96``, ``synthetic:size=96``,
    ``synthetic:style=scene`` or ``synthetic:size=96,style=scene`` (``style=scene`` turns the style gap off)."""
    options = {"size": str(cfg.resolution), "style": "prompt"}
    spec = f"synthetic:{spec_options}"
    for part in spec_options.split(",") if spec_options else []:
        name, _, value = part.strip().rpartition("=")
        name = name or "size"
        if name not in options or (name == "size" and not value.isdigit()) or not value:
            raise BankError(
                f"generator spec '{spec}' must look like synthetic, synthetic:size=N, "
                "synthetic:style=prompt|scene or synthetic:size=N,style=scene"
            )
        options[name] = value
    if options["style"] not in STYLES:
        raise BankError(f"generator spec '{spec}': style must be prompt or scene, got '{options['style']}'")
    return SyntheticGenerator(size=int(options["size"]), device=device, style=options["style"])


register_generator("synthetic", _from_spec)

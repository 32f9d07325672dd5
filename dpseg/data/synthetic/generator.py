"""The synthetic world's text-to-image generator: it plays Stable Diffusion's role for visual prompts.

``SyntheticGenerator().generate(["a bad photo of a red striped star."], seeds=[0])`` finds the one class phrase
in each sentence and renders that object (random pose, size and textured background, chosen by the seed) as
SD renders a prompt. Like SD, it also reacts to a few words of the CLIP ImageNet templates, so prompt images vary
with the template as real generated prompts do: "many" draws several copies; "small" / "large" / "close-up" /
"cropped" change the framing; "dark", "bright", "hard to see", "blurry", "low resolution", "pixelated",
"black and white" and "jpeg corrupted" degrade the picture. A pattern may be named by its vocabulary word or its
caption synonym ("striped" / "stripy"). Output depends only on (text, seed, size, style, failures).

``style="prompt"`` (the default: the world's *style gap*) draws in the prompt style of
:mod:`~dpseg.data.synthetic.render` - plain light background, outlined objects, lighter palette, finer patterns -
so visual prompts carry the class's attributes without looking like the scenes; ``style="scene"`` switches the
gap off and draws as the scenes are drawn.

**Failures (world v3).** Like Stable Diffusion, the generator gets some prompts wrong, systematically per class
(:func:`failure_profile`): every class has a failure mode - ``colour`` or ``shape``, the attributes the tiny CLIP's
text tower reads - a wrong value it draws instead, and a rate; one class in three is *hard* (rate 0.5-0.9), the
others fail rarely (0-0.1). A failing image draws the object with the wrong shape, or in the wrong colour with the
class's colour bound to something else (a second, solid object behind it, or the background). The pattern is never
misdrawn. Whether an image fails is drawn from its own random stream, so images that do not fail are exactly the
images drawn with ``failures=0`` (off). ``failures=x`` scales every class's rate by x (capped at 1).
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import binary_dilation

from dpseg.config import PromptsConfig
from dpseg.data.synthetic.render import (
    MAX_TILT,
    PROMPT_NOISE,
    PROMPT_OUTLINE,
    STYLES,
    Placement,
    background,
    draw_object,
    finish,
    object_colours,
    prompt_background,
    shape_mask,
)
from dpseg.data.synthetic.world import (
    COLOURS,
    SHAPES,
    UNSEEN_CUBES,
    WORLD_VERSION,
    ObjectClass,
    all_classes,
    find_class_in_text,
    is_unseen,
)
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


# Generator failures (module doc, world README): the share of hard classes, and the rate ranges of hard and other
# classes; a colour failure binds the class's colour to a distractor object in this share of its images (else to
# the background, washed with it by a share drawn from BACKGROUND_WASH).
FAILURE_MODES = ("colour", "shape")
HARD_SHARE = 1 / 3
HARD_RATE = (0.5, 0.9)
EASY_RATE = (0.0, 0.1)
DISTRACTOR_SHARE = 0.5
BACKGROUND_WASH = (0.35, 0.55)
DISTRACTOR_SCALE = (0.55, 0.75)  # the distractor's radius relative to the object's
DISTRACTOR_TRIES = 12  # positions tried for the distractor: the one overlapping the object least is kept


@dataclass(frozen=True)
class Failure:
    """How the generator fails on one class: the attribute it gets wrong, the value it draws instead, how often."""

    mode: str  # "colour" or "shape"
    wrong: str  # the colour or shape drawn instead of the class's own
    rate: float  # share of the class's images that fail (before the generator's ``failures`` scale)
    hard: bool


@cache
def failure_profile() -> Mapping[ObjectClass, Failure]:
    """Every class's :class:`Failure`, fixed by the world version (a random generator seeded by it alone).

    The classes are split into groups - the seen classes and each unseen cube - and each group, in a random order,
    gets round(HARD_SHARE x its size) hard classes (rates in HARD_RATE, the rest in EASY_RATE) and alternating
    modes; the wrong value is uniform among the attribute's other values.
    """
    rng = np.random.default_rng([WORLD_VERSION, 0xFA11])
    groups: list[list[ObjectClass]] = [[k for k in all_classes() if not is_unseen(*k.indices)]]
    for colours, patterns, shapes in UNSEEN_CUBES:
        groups.append([k for k in all_classes() if k.colour in colours and k.pattern in patterns and k.shape in shapes])
    profile = {}
    for group in groups:
        order = [group[i] for i in rng.permutation(len(group))]
        n_hard = int(math.floor(HARD_SHARE * len(group) + 0.5))
        first_mode = int(rng.integers(len(FAILURE_MODES)))
        for i, k in enumerate(order):
            hard = i < n_hard
            mode = FAILURE_MODES[(first_mode + i) % len(FAILURE_MODES)]
            values, own = (list(COLOURS), k.colour) if mode == "colour" else (list(SHAPES), k.shape)
            others = [v for v in values if v != own]
            wrong = others[int(rng.integers(len(others)))]
            rate = float(rng.uniform(*(HARD_RATE if hard else EASY_RATE)))
            profile[k] = Failure(mode, wrong, rate, hard)
    return MappingProxyType(profile)


def _has(text: str, phrase: str) -> bool:
    return f" {phrase} " in f" {text.lower().replace('.', ' ').replace(',', ' ')} "


def render_object_image(
    cls: ObjectClass,
    rng: np.random.Generator,
    size: int = 64,
    modifiers: Sequence[str] = (),
    style: str = "prompt",
    failure: Optional[Failure] = None,
    failure_rng: Optional[np.random.Generator] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One prompt image of ``cls``: ((size, size, 3) uint8 image, (size, size) bool mask of the object pixels).

    ``failure``: draw this image as a failure of that mode (module doc); its own random choices (where a misbound
    colour goes) come from ``failure_rng``, so ``rng`` is used exactly as for a faithful image.
    """
    canvas = prompt_background(rng, size, size) if style == "prompt" else background(rng, size, size)
    drawn = cls
    if failure is not None:
        if failure_rng is None:
            raise ValueError("a failing image needs its failure_rng")
        if failure.mode == "shape":
            drawn = ObjectClass(cls.colour, cls.pattern, failure.wrong)
        else:
            drawn = ObjectClass(failure.wrong, cls.pattern, cls.shape)
    copies, radius, margin = 1, (0.28, 0.40), 1.15  # margin 1.15 r: the whole object is in view
    if "many" in modifiers:
        copies, radius = int(rng.integers(2, 4)), (0.15, 0.22)
    elif "small" in modifiers:
        radius = (0.16, 0.24)
    elif "large" in modifiers or "close-up" in modifiers:
        radius = (0.40, 0.48)
    elif "cropped" in modifiers:
        radius, margin = (0.40, 0.55), 0.3  # the object may run off the edges
    leak = ""  # where a colour failure binds the class's colour: "distractor" or "background"
    if failure is not None and failure.mode == "colour":
        assert failure_rng is not None
        leak = "distractor" if failure_rng.random() < DISTRACTOR_SHARE else "background"
    if leak == "background":  # washed with the class's colour before the object is drawn
        assert failure_rng is not None
        colour, _ = object_colours(ObjectClass(cls.colour, "solid", cls.shape), failure_rng, style)
        wash = failure_rng.uniform(*BACKGROUND_WASH)
        canvas *= 1 - wash
        canvas += wash * colour
    union = np.zeros((size, size), bool)
    for _ in range(copies):
        r = size * rng.uniform(*radius)
        lo, hi = margin * r, size - margin * r
        cx, cy = rng.uniform(min(lo, size / 2), max(hi, size / 2), 2)
        p = Placement(drawn, float(cx), float(cy), float(r), float(rng.uniform(-MAX_TILT, MAX_TILT)))
        union |= draw_object(canvas, p, rng, style)
    if leak == "distractor":
        assert failure_rng is not None
        _add_distractor(canvas, union, cls, failure_rng, size, radius, style)
    image = _degrade(finish(canvas, rng, PROMPT_NOISE if style == "prompt" else 3.0), modifiers, rng)
    return image, union


def _add_distractor(
    canvas: np.ndarray,
    objects: np.ndarray,
    cls: ObjectClass,
    rng: np.random.Generator,
    size: int,
    radius: tuple[float, float],
    style: str,
) -> None:
    """A colour failure's misbound colour: a smaller, solid object of another shape in the class's colour, behind
    the drawn ``objects`` (their pixels and outlines stay), placed where it overlaps them least of a few tries."""
    shapes = [s for s in SHAPES if s != cls.shape]
    other = ObjectClass(cls.colour, "solid", shapes[int(rng.integers(len(shapes)))])
    r = size * rng.uniform(*radius) * rng.uniform(*DISTRACTOR_SCALE)
    angle = float(rng.uniform(-MAX_TILT, MAX_TILT))
    lo, hi = min(1.15 * r, size / 2), max(size - 1.15 * r, size / 2)
    protect = binary_dilation(objects, iterations=max(1, round(PROMPT_OUTLINE * size * radius[1])) + 1)
    best: Optional[tuple[int, float, float]] = None
    for _ in range(DISTRACTOR_TRIES):
        cx, cy = (float(v) for v in rng.uniform(lo, hi, 2))
        overlap = int((shape_mask(other.shape, cx, cy, r, angle, size, size) & protect).sum())
        if best is None or overlap < best[0]:
            best = (overlap, cx, cy)
    assert best is not None
    layer = canvas.copy()
    draw_object(layer, Placement(other, best[1], best[2], float(r), angle), rng, style)
    keep = (layer != canvas).any(-1) & ~protect
    canvas[keep] = layer[keep]


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


def text_seed(text: str, seed: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one (sentence, seed) pair: independent of batch composition and order.

    ``stream`` 0 draws the image; 1 decides whether it fails and how (so failures leave stream 0 untouched)."""
    key = [int(seed) & 0xFFFFFFFF, zlib.crc32(text.encode()), WORLD_VERSION]
    return np.random.default_rng(key + [stream] if stream else key)


def parse_failures(value: object) -> float:
    """The generator's failure scale from ``on`` / ``off`` / a number >= 0 (0 = off, 1 = the world's rates)."""
    text = str(value).strip().lower()
    if text in ("on", "true"):
        return 1.0
    if text in ("off", "false", "none"):
        return 0.0
    try:
        scale = float(text)
    except ValueError:
        scale = -1.0
    if not (scale >= 0 and math.isfinite(scale)):
        raise InputError(
            f"generator failures must be on, off or a number >= 0 (a scale of every class's rate), got {value!r}"
        )
    return scale


class SyntheticGenerator:
    """Text-to-image generator of the synthetic world, with the interface the prompt banks use for SD.

    ``identity`` names everything that changes its output (world version, image size, style, failure scale), so
    prompt banks built with it are keyed correctly. ``failures``: 1 (the default) = the world's per-class failure
    rates, 0 = off (every image faithful), x = every rate scaled by x (capped at 1); also ``"on"`` / ``"off"``.
    """

    source = "synthetic"  # the --generator spec; get_generator sets the full one

    def __init__(
        self,
        size: int = 64,
        device: Optional[str] = None,
        style: str = "prompt",
        failures: float | str = 1.0,
        **_ignored,
    ):
        if not isinstance(size, int) or size < 16:
            raise InputError(f"SyntheticGenerator size must be an integer >= 16, got {size!r}")
        if style not in STYLES:
            raise InputError(f"SyntheticGenerator style must be one of {', '.join(STYLES)}, got {style!r}")
        self.size = size
        self.style = style
        self.failures = parse_failures(failures)
        scale = "off" if self.failures == 0 else f"{self.failures:g}"
        self.identity = f"synthetic-world-v{WORLD_VERSION}-{size}px-{style}-style-failures-{scale}"

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
            failure, failure_rng = self.failure_of(cls, text, seed)
            image = render_object_image(
                cls, text_seed(text, seed), self.size, modifiers_of(text), self.style, failure, failure_rng
            )
            out.append(image)
        return out

    def failure_of(self, cls: ObjectClass, text: str, seed: int) -> tuple[Optional[Failure], np.random.Generator]:
        """Whether the image of (``text``, ``seed``) fails (its class's :class:`Failure`, else None), and the random
        stream its failure draws from."""
        rng = text_seed(text, seed, stream=1)
        failure = failure_profile()[cls]
        fails = rng.random() < min(1.0, self.failures * failure.rate)
        return (failure if fails else None), rng

    def __repr__(self) -> str:
        return f"SyntheticGenerator(size={self.size}, style={self.style!r}, failures={self.failures:g})"


def _from_spec(spec_options: str, cfg: PromptsConfig, device: Optional[str] = None) -> SyntheticGenerator:
    """``synthetic`` (size = prompts.resolution, prompt style, failures on), ``synthetic:96``, ``synthetic:size=96``,
    ``synthetic:style=scene``, ``synthetic:failures=off`` or a comma-separated mix such as
    ``synthetic:size=96,style=scene,failures=0.5`` (``style=scene`` turns the style gap off, ``failures=off`` the
    generator's failures)."""
    options = {"size": str(cfg.resolution), "style": "prompt", "failures": "on"}
    spec = f"synthetic:{spec_options}"
    for part in spec_options.split(",") if spec_options else []:
        name, _, value = part.strip().rpartition("=")
        name = name or "size"
        if name not in options or (name == "size" and not value.isdigit()) or not value:
            raise BankError(
                f"generator spec '{spec}' must look like synthetic, synthetic:size=N, "
                "synthetic:style=prompt|scene, synthetic:failures=on|off|X or a mix such as "
                "synthetic:size=N,style=scene,failures=off"
            )
        options[name] = value
    if options["style"] not in STYLES:
        raise BankError(f"generator spec '{spec}': style must be prompt or scene, got '{options['style']}'")
    try:
        failures = parse_failures(options["failures"])
    except InputError as e:
        raise BankError(f"generator spec '{spec}': {e}") from None
    return SyntheticGenerator(size=int(options["size"]), device=device, style=options["style"], failures=failures)


register_generator("synthetic", _from_spec)

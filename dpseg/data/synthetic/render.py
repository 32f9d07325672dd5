"""Procedural rendering of the synthetic world: textured backgrounds, patterned shapes, scenes with exact labels.

Everything is drawn with hard edges (no anti-aliasing), so every pixel belongs to exactly one object or to the
background and the label map is exact: a pixel is labelled with the class of the *topmost* object whose mask
covers it (objects are drawn in list order, later ones occlude earlier ones), and -1 (ignore) where no object
is. All randomness comes from the ``numpy.random.Generator`` passed in: same generator state, same pixels.

Two drawing styles (:data:`STYLES`). ``scene``: every scene and scene crop - textured, weakly coloured
backgrounds, sensor noise. ``prompt``: the generator's prompt images when the world's style gap is on (world
README) - a light, near-uniform background with no texture, a dark outline around each object, a lighter
palette with a slightly shifted hue, patterns at a finer scale and less noise. Visual prompts thus show the
right colour, pattern and shape but do not look like the scenes, as Stable Diffusion's renderings do not look
like the photos of a benchmark.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import binary_dilation

from dpseg.data.synthetic.world import ObjectClass
from dpseg.vocab import IGNORE_INDEX

IGNORE = IGNORE_INDEX  # in-memory ignore label (255 on disk)
# Objects stand upright, tilted by at most this many radians (±14°): a triangle points up, a square is not a
# diamond. Free rotation makes shape 5x slower to learn for the tiny CNNs (30% vs 90% shape accuracy after
# 250 supervised steps), and the CPU budget is minutes.
MAX_TILT = 0.25
STYLES = ("scene", "prompt")
# The prompt style: pattern periods x0.65, colours 25% of the way to white after a hue shift of +0.02 turns
# (7 degrees), an outline of 8% of the radius, noise sigma 1.5 instead of 3.
PROMPT_PATTERN_SCALE = 0.65
PROMPT_LIGHTEN = 0.25
PROMPT_HUE_SHIFT = 0.02
PROMPT_OUTLINE = 0.08
PROMPT_NOISE = 1.5


@dataclass
class Placement:
    """Where and how one object is drawn: centre (x, y) in pixels, outer radius, rotation in radians."""

    cls: ObjectClass
    cx: float
    cy: float
    radius: float
    angle: float


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) int16: vocabulary index of the topmost object, IGNORE on background
    placements: list[Placement] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)  # full (unoccluded) bool mask of each object


# ---------------------------------------------------------------------------------------------- background


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random (cells x cells) grid upsampled bilinearly to (h, w)."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BILINEAR))


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured, weakly coloured background (H, W, 3) float32 in [0, 255]: never a saturated object colour."""
    grey = rng.uniform(70, 190)
    tint = rng.uniform(-12, 12, 3)
    base = np.full((h, w, 3), grey, np.float32) + tint
    base += 28 * _smooth_noise(rng, h, w, int(rng.integers(3, 8)))[..., None]
    kind = rng.integers(0, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 1:  # faint neutral stripes: the background can be "striped" too, only objects are coloured
        a = rng.uniform(0, math.pi)
        period = rng.uniform(5, 14)
        base += (
            rng.uniform(6, 14)
            * np.sign(np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period))[..., None]
        )
    elif kind == 2:  # fine speckle texture
        base += rng.uniform(6, 12) * _smooth_noise(rng, h, w, max(4, min(h, w) // 3))[..., None]
    return np.clip(base, 0, 255)


def prompt_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The prompt style's background (H, W, 3) float32: light grey, a faint tint and gradient, no texture."""
    level = rng.uniform(205, 235)
    tint = rng.uniform(-5, 5, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    ramp = ((xx / max(1, w - 1) - 0.5) * math.cos(a) + (yy / max(1, h - 1) - 0.5) * math.sin(a)) * rng.uniform(0, 10)
    return np.clip(np.full((h, w, 3), level, np.float32) + tint + ramp[..., None], 0, 255)


# ------------------------------------------------------------------------------------------------- shapes


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(r, math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif shape == "triangle":
        pts = [(1.15 * r, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
    elif shape == "star":
        pts = [(1.1 * r if k % 2 == 0 else 0.47 * r, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    elif shape == "cross":
        a, b = 0.34 * r, r  # arm half-width, arm length
        corners = [
            (a, b),
            (a, a),
            (b, a),
            (b, -a),
            (a, -a),
            (a, -b),
            (-a, -b),
            (-a, -a),
            (-b, -a),
            (-b, a),
            (-a, a),
            (-a, b),
        ]
        pts = [(math.hypot(x, y), math.atan2(y, x)) for x, y in corners]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    return [(cx + rr * math.cos(t + angle), cy + rr * math.sin(t + angle)) for rr, t in pts]


def shape_mask(shape: str, cx: float, cy: float, r: float, angle: float, h: int, w: int) -> np.ndarray:
    """(H, W) bool mask of one shape with outer radius ``r`` (pixel (x, y) covers [x, x+1) x [y, y+1))."""
    if shape == "circle":
        yy, xx = np.mgrid[0:h, 0:w]
        return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= (0.88 * r) ** 2
    img = Image.new("1", (w, h), 0)
    ImageDraw.Draw(img).polygon(_polygon(shape, cx, cy, r, angle), fill=1)
    return np.asarray(img, dtype=bool)


def pattern_marks(
    pattern: str, rng: np.random.Generator, cx: float, cy: float, r: float, h: int, w: int, scale: float = 1.0
) -> np.ndarray:
    """(H, W) bool: where the object's darker pattern colour goes (all False for 'solid'); ``scale`` x the period."""
    if pattern == "solid":
        return np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, math.pi)
    u = (xx + 0.5 - cx) * math.cos(a) + (yy + 0.5 - cy) * math.sin(a)
    v = -(xx + 0.5 - cx) * math.sin(a) + (yy + 0.5 - cy) * math.cos(a)
    if pattern == "striped":
        period = max(3.0, scale * r * rng.uniform(0.45, 0.6))
        return np.floor(u / period + rng.uniform(0, 1)) % 2 == 1
    if pattern == "dotted":
        spacing = max(3.0, scale * r * rng.uniform(0.5, 0.62))
        du = (u / spacing + rng.uniform(0, 1)) % 1 - 0.5
        dv = (v / spacing + rng.uniform(0, 1)) % 1 - 0.5
        return du * du + dv * dv < 0.3**2
    raise ValueError(f"unknown pattern {pattern!r}")


def object_colours(cls: ObjectClass, rng: np.random.Generator, style: str = "scene") -> tuple[np.ndarray, np.ndarray]:
    """(base, mark) RGB float32: the class colour with a little jitter, and a darker shade of it for patterns."""
    rgb = np.asarray(cls.rgb, np.float32)
    if style == "prompt":
        h, s, v = colorsys.rgb_to_hsv(*(rgb / 255))
        rgb = 255 * np.asarray(colorsys.hsv_to_rgb((h + PROMPT_HUE_SHIFT) % 1, s, v), np.float32)
        rgb = rgb + (255 - rgb) * PROMPT_LIGHTEN
    base = np.clip(rgb + rng.normal(0, 10, 3), 0, 255)
    return base, base * rng.uniform(0.3, 0.45)


def draw_object(canvas: np.ndarray, p: Placement, rng: np.random.Generator, style: str = "scene") -> np.ndarray:
    """Paint one object onto ``canvas`` (H, W, 3) float32 in place, in ``style``; return its (H, W) bool mask."""
    if style not in STYLES:
        raise ValueError(f"unknown drawing style {style!r}")
    h, w = canvas.shape[:2]
    mask = shape_mask(p.cls.shape, p.cx, p.cy, p.radius, p.angle, h, w)
    if style == "prompt":
        width = max(1, round(PROMPT_OUTLINE * p.radius))
        ring = binary_dilation(mask, np.ones((3, 3), bool), iterations=width) & ~mask
        canvas[ring] = rng.uniform(20, 50)
    base, mark = object_colours(p.cls, rng, style)
    scale = PROMPT_PATTERN_SCALE if style == "prompt" else 1.0
    marks = pattern_marks(p.cls.pattern, rng, p.cx, p.cy, p.radius, h, w, scale)
    canvas[mask] = base
    canvas[mask & marks] = mark
    return mask


def finish(canvas: np.ndarray, rng: np.random.Generator, noise: float = 3.0) -> np.ndarray:
    """Add sensor noise and quantise to uint8."""
    canvas = canvas + rng.normal(0, noise, canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------- scenes


def render_placements(
    placements: Sequence[Placement], vocab: Sequence[ObjectClass], rng: np.random.Generator, h: int, w: int
) -> Scene:
    """Draw ``placements`` in order on a fresh background; label = vocabulary index of the topmost object."""
    index = {k: i for i, k in enumerate(vocab)}
    canvas = background(rng, h, w)
    label = np.full((h, w), IGNORE, np.int16)
    masks = []
    for p in placements:
        mask = draw_object(canvas, p, rng)
        label[mask] = index[p.cls]
        masks.append(mask)
    return Scene(finish(canvas, rng), label, list(placements), masks)


def visible_fractions(masks: Sequence[np.ndarray]) -> list[float]:
    """Fraction of each object's own area left visible by the objects drawn after it."""
    out = []
    for i, m in enumerate(masks):
        covered = np.zeros_like(m)
        for later in masks[i + 1 :]:
            covered |= later
        out.append(float((m & ~covered).sum()) / max(1, int(m.sum())))
    return out


def random_scene(
    vocab: Sequence[ObjectClass],
    rng: np.random.Generator,
    size: int = 128,
    num_objects: tuple[int, int] = (2, 4),
    radius: tuple[float, float] = (0.12, 0.24),
    min_visible: float = 0.4,
) -> Scene:
    """A scene of ``num_objects`` distinct classes drawn from ``vocab``, sizes and poses at random.

    Layouts in which an object keeps less than ``min_visible`` of its area are re-drawn (so every object in the
    label map is recognisable), trying new positions up to 50 times, then with one object fewer, then with one.
    """
    n = int(rng.integers(num_objects[0], num_objects[1] + 1))
    n = min(n, len(vocab))
    chosen = [vocab[i] for i in rng.choice(len(vocab), n, replace=False)]
    for attempt in range(100):
        k = chosen if attempt < 50 else chosen[: max(1, n - 1)] if attempt < 75 else chosen[:1]
        placements = []
        for cls in k:
            r = size * rng.uniform(*radius)
            cx, cy = rng.uniform(0.6 * r, size - 0.6 * r, 2)
            placements.append(Placement(cls, float(cx), float(cy), float(r), float(rng.uniform(-MAX_TILT, MAX_TILT))))
        masks = [shape_mask(p.cls.shape, p.cx, p.cy, p.radius, p.angle, size, size) for p in placements]
        if min(visible_fractions(masks)) >= min_visible:
            break
    return render_placements(placements, vocab, rng, size, size)


def object_crops(scene: Scene, size: int = 64, margin: float = 0.15) -> list[tuple[np.ndarray, ObjectClass]]:
    """Square crops around every visible object of a scene, resized to ``size`` (neighbours stay in view).

    These are what the second inference pass crops from an image; used to train and test the tiny CLIP.
    """
    h, w = scene.label.shape
    out = []
    later = np.zeros((h, w), bool)
    visible = []
    for mask in reversed(scene.masks):  # topmost first: what is left of each mask after later objects
        visible.append(mask & ~later)
        later |= mask
    for p, vis in zip(scene.placements, reversed(visible)):
        ys, xs = np.nonzero(vis)
        if len(xs) == 0:
            continue
        side = (1 + 2 * margin) * max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        cx, cy = (xs.max() + xs.min() + 1) / 2, (ys.max() + ys.min() + 1) / 2
        box = (
            int(round(cx - side / 2)),
            int(round(cy - side / 2)),
            int(round(cx + side / 2)),
            int(round(cy + side / 2)),
        )
        crop = Image.fromarray(scene.image).crop(box)  # outside the image is black, as for a crop at a border
        out.append((np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR)), p.cls))
    return out

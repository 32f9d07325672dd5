"""Colours for label maps: a fixed palette, a blended overlay with class borders, and a legend.

The colours of a vocabulary depend only on its class list, so the same list gives the same colours in every image,
in the CLI's files, the demo and the quickstart's figure (:func:`class_palette`). A vocabulary whose every class
name starts with a colour word (the synthetic world's ``red striped star``, ``blue solid square``) is drawn in those
colours, the classes that share a colour word in shades of it (lighter and darker in list order: read the legend to
tell them apart); any other vocabulary gets the fixed palette of :func:`palette`, by class index. The legend lists
the classes present in the image, largest first, with the share of the image each covers.
"""

from __future__ import annotations

import colorsys
import html
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# 20 well-separated colours first (Tableau 20 reordered: saturated before light), then a golden-ratio hue walk.
_BASE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
]
MAX_LEGEND_ROWS = 30
# Colour words and the RGB they are drawn in; the first five are the synthetic world's object colours
# (dpseg.data.synthetic.world.COLOURS, checked equal by tests/test_segment_visualize.py).
COLOUR_WORDS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (230, 205, 35),
    "purple": (145, 50, 200),
    "orange": (245, 130, 30),
    "pink": (240, 120, 180),
    "brown": (130, 80, 40),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
    "black": (30, 30, 30),
    "white": (235, 235, 235),
}


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 RGB colours, deterministic and distinct for neighbouring indices."""
    colours = list(_BASE[:num_classes])
    for i in range(len(colours), num_classes):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.85, 0.95) if i % 3 == 0 else (0.55, 0.85) if i % 3 == 1 else (0.95, 0.65)
        r, g, b = (int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, sat, val))
        colours.append((r, g, b))
    return np.array(colours, dtype=np.uint8).reshape(num_classes, 3)


def colour_word(name: str) -> Optional[str]:
    """The colour word a class name starts with (its first synonym's first word), or None."""
    words = name.split(",")[0].split()
    return words[0].lower() if words and words[0].lower() in COLOUR_WORDS else None


def shades(rgb: tuple[int, int, int], n: int) -> list[tuple[int, int, int]]:
    """``n`` distinguishable shades of one colour, the colour itself first: lighter and darker ones in turn (light
    colours such as yellow only lighter: a darker yellow reads as olive), lightness steps of up to 0.13 within
    [0.2, 0.88], with a small hue shift per step."""
    h, l0, s = colorsys.rgb_to_hls(*(c / 255 for c in rgb))
    light = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255 > 0.6  # luma: yellow, white
    step = min(0.13, (0.88 - l0 if light else 0.6) / max(1, n - 1))
    out = []
    for i in range(n):
        k = i if light else (i + 1) // 2 * (1 if i % 2 else -1)  # light: 0, 1, 2, ...; else 0, +1, -1, +2, ...
        lightness = min(0.88, max(0.2, l0 + k * step))
        hue = (h + 0.015 * k) % 1.0
        out.append(tuple(int(round(c * 255)) for c in colorsys.hls_to_rgb(hue, lightness, s)))
    return out  # type: ignore[return-value]


def class_palette(class_names: Sequence[str]) -> np.ndarray:
    """(K, 3) uint8 colours of a vocabulary (module doc): its colour words when every class name starts with one,
    else :func:`palette`."""
    words = [colour_word(n) for n in class_names]
    if not class_names or any(w is None for w in words):
        return palette(len(class_names))
    colours: list = [None] * len(class_names)
    for word in dict.fromkeys(words):
        members = [k for k, w in enumerate(words) if w == word]
        for k, rgb in zip(members, shades(COLOUR_WORDS[word], len(members))):  # type: ignore[index]
            colours[k] = rgb
    return np.array(colours, dtype=np.uint8).reshape(len(class_names), 3)


def colorize(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colour image (unlabelled values, outside [0, K), are black)."""
    lab = labels.astype(np.int64, copy=False)
    valid = (lab >= 0) & (lab < len(colours))
    return np.where(valid[..., None], colours[np.where(valid, lab, 0)], 0).astype(np.uint8)


def legend_entries(
    class_names: Sequence[str], pixels: Union[Sequence[int], np.ndarray], total: Optional[int] = None
) -> list[tuple[int, str, float]]:
    """(index, name, share of ``total`` pixels) of the classes present, largest first (ties by index)."""
    total = max(1, int(total if total is not None else sum(int(p) for p in pixels)))
    present = [(k, class_names[k], int(p) / total) for k, p in enumerate(pixels) if int(p) > 0]
    return sorted(present, key=lambda e: (-e[2], e[0]))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _fit(image: np.ndarray, labels: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Downscale image (bilinear) and labels (nearest) together so the long side is at most ``max_side``."""
    h, w = labels.shape
    if not max_side or max(h, w) <= max_side:
        return image, labels
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0))
    rows = (np.arange(size[1]) * h // size[1]).clip(max=h - 1)
    cols = (np.arange(size[0]) * w // size[0]).clip(max=w - 1)
    return small, labels[rows][:, cols]


def blend(
    image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5, borders: bool = True
) -> np.ndarray:
    """(H, W, 3) uint8 image and (H, W) labels -> the image tinted with class colours, borders darkened."""
    a = int(round(min(max(alpha, 0.0), 1.0) * 256))
    out = ((image.astype(np.uint16) * (256 - a) + colorize(labels, colours).astype(np.uint16) * a) >> 8).astype(
        np.uint8
    )
    unlabelled = (labels < 0) | (labels >= len(colours))
    out[unlabelled] = image[unlabelled]  # unlabelled pixels (below min_score) keep their colour
    if borders and labels.size:
        edge = np.zeros(labels.shape, dtype=bool)
        edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edge[1:, :] |= labels[1:, :] != labels[:-1, :]
        out[edge] = out[edge] // 3
    return out


def draw_legend(
    entries: Sequence[tuple[int, str, float]],
    colours: np.ndarray,
    font_size: int,
    min_height: int = 0,
    unlabelled: float = 0.0,
) -> Image.Image:
    """A white panel listing swatch, class name and area share per entry (at most MAX_LEGEND_ROWS rows)."""
    font = _font(font_size)
    rows = [(colours[k], f"{name}  {100 * frac:.1f}%") for k, name, frac in entries[:MAX_LEGEND_ROWS]]
    if len(entries) > MAX_LEGEND_ROWS:
        rows.append((None, f"... and {len(entries) - MAX_LEGEND_ROWS} more classes"))
    if unlabelled > 0:
        rows.append((None, f"unlabelled  {100 * unlabelled:.1f}%"))
    if not rows:
        rows.append((None, "no class"))
    pad, line = max(4, font_size // 2), int(font_size * 1.5)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(int(probe.textlength(text, font=font)) for _, text in rows)
    width = pad * 3 + font_size + text_w
    panel = Image.new("RGB", (width, max(min_height, pad * 2 + line * len(rows))), "white")
    draw = ImageDraw.Draw(panel)
    for i, (colour, text) in enumerate(rows):
        y = pad + i * line
        if colour is not None:
            draw.rectangle(
                [pad, y, pad + font_size, y + font_size], fill=tuple(int(c) for c in colour), outline="black"
            )
        draw.text((pad * 2 + font_size, y), text, fill="black", font=font)
    return panel


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    pixels: Optional[Sequence[int]] = None,
    alpha: float = 0.5,
    max_side: int = 4096,
    legend: bool = True,
) -> Image.Image:
    """The image tinted by class with a legend panel on its right (long side capped at ``max_side`` for viewing).

    ``image``: (H, W, 3) uint8; ``labels``: (H, W) indices into ``class_names``; ``pixels``: per-class pixel counts
    for the legend (computed from ``labels`` when omitted).
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    colours = class_palette(class_names)
    counts = pixels if pixels is not None else np.bincount(labels.ravel().astype(np.int64), minlength=len(class_names))
    small, small_labels = _fit(image, labels, max_side)
    tinted = Image.fromarray(blend(small, small_labels, colours, alpha))
    if not legend:
        return tinted
    font_size = int(min(40, max(12, round(max(tinted.size) / 45))))
    unlabelled = 1 - int(np.sum(counts)) / max(1, labels.size)
    panel = draw_legend(legend_entries(class_names, counts, labels.size), colours, font_size, tinted.height, unlabelled)
    canvas = Image.new("RGB", (tinted.width + panel.width, max(tinted.height, panel.height)), "white")
    canvas.paste(tinted, (0, 0))
    canvas.paste(panel, (tinted.width, 0))
    return canvas


def legend_html(class_names: Sequence[str], pixels: Sequence[int], total: Optional[int] = None) -> str:
    """The legend as HTML (swatch, name, area share), for the demo page."""
    colours = class_palette(class_names)
    items = []
    for k, name, frac in legend_entries(class_names, pixels, total):
        r, g, b = (int(c) for c in colours[k])
        items.append(
            f'<li class="dpseg-legend-item"><span style="display:inline-block;width:1em;height:1em;'
            f'background:rgb({r},{g},{b});border:1px solid #000;margin-right:.5em;vertical-align:middle"></span>'
            f"<b>{html.escape(name)}</b> {100 * frac:.1f}%</li>"
        )
    return '<ul class="dpseg-legend" style="list-style:none;padding-left:0">' + "".join(items) + "</ul>"

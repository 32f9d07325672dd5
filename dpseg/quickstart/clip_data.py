"""What the tiny CLIP learns from: seen-class object tiles, their captions, and 2x2 mosaics at the scene resolution.

**Scenes.** 128-px scenes of seen classes, drawn like the segmenter's (scene style, 2-4 objects, random poses).
The segmenter reads the CLIP's *dense* embedding E (the CLIP head at every cell of the last stage - stride 16 with the
synthetic preset's dilated tower -
:meth:`dpseg.model.towers.ImageTower.dense_head`) on such scenes, so that is what is trained: each object of a
scene is embedded by the mean of the (per-cell L2-normalised) E over the dense cells it covers, each cell
weighted by the share of it that the object's visible pixels fill - the embedding
:mod:`~dpseg.quickstart.zeroshot` tests.

**Tiles in mosaics.** 64-px images of seen-class objects: square crops around the pool scenes' objects (scene
style, neighbours in view - what the second inference pass crops). Four tiles make one 128-px 2x2 mosaic and a
tile's embedding is the mean of E over its 2x2 cells, so tiles are learnt at the scene resolution, for as many pixels
as 64-px images would cost.

**No generator images (world v3).** The pool holds only scene-style images - scenes and crops of their objects -
so the generator's prompt style is one the CLIP never saw, as a real CLIP was trained on photos long before the
diffusion model that draws its prompts existed: generated visual prompts carry a real style gap that crops of the
scene itself (the second inference pass) can close (world README). ``generator_images=True`` puts them back as
world v2 had them: ``1 - crop_fraction`` of the tiles are images of the world's generator from a random ImageNet
template, in the prompt style when the style gap is on, drawn faithfully (generator failures off: a caption is
true of its image).

Only seen classes are ever rendered. A CLIP trained on 64-px images alone (a 2x2 grid) is near chance on 128-px
scenes (a 4x4 grid) even with its global embedding; with objects at random positions in scenes, mosaics alone
still left shape near chance (measured; world README).

**Captions.** The full phrase in a template ("a dark photo of the red stripy star.") or a phrase naming only some
attributes ("a photo of a red shape.", "a spotted star."); half of them bare phrases. With the world's *text
gap* on (the default) a pattern is always named by its caption-only synonym (plain / stripy / spotted): the class
vocabulary's pattern words (solid / striped / dotted) never reach the text tower, whose embeddings of those tokens
stay untrained, like the rare words a real CLIP text tower barely knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dpseg.data.synthetic.generator import SyntheticGenerator
from dpseg.data.synthetic.render import IGNORE, object_crops, random_scene
from dpseg.data.synthetic.world import (
    COLOURS,
    GENERIC_NOUN,
    PATTERNS,
    SHAPES,
    WORLD_VERSION,
    ObjectClass,
    caption_pattern_word,
    seen_classes,
)

TILE = 64  # pixels per mosaic tile (= the generator's prompt image size)
GRID = 2  # tiles per mosaic side: 128-px mosaics, the scene resolution
STRIDE = 32  # the image tower's output stride (cells of the dense embedding) unless the tower says otherwise
MAX_OBJECTS = 4  # objects per scene at most (render.random_scene's default)
BARE_TEMPLATES = ("{}", "a {}.")


def phrase_of(values: np.ndarray, text_gap: bool = False) -> str:
    """Caption phrase of attribute values (-1 = not named): (0, -1, 3) -> 'red star'; (-1, 1, -1) -> 'stripy shape'."""
    c, p, s = (int(v) for v in values)
    words = [list(COLOURS)[c]] if c >= 0 else []
    words += [caption_pattern_word(PATTERNS[p], text_gap)] if p >= 0 else []
    return " ".join(words + [SHAPES[s] if s >= 0 else GENERIC_NOUN])


def caption_name(cls: ObjectClass, text_gap: bool) -> str:
    """The full phrase of a class in the captions' words ('red stripy star' when the text gap is on)."""
    return phrase_of(np.asarray(cls.indices), text_gap)


def caption_universe() -> np.ndarray:
    """(U, 3) every distinct caption of seen classes: full phrases and every non-empty subset of attributes."""
    rows = set()
    for k in seen_classes():
        for mask in range(1, 8):
            rows.add(tuple(v if mask >> a & 1 else -1 for a, v in enumerate(k.indices)))
    return np.asarray(sorted(rows))


@dataclass
class Pool:
    """Everything the pretraining batches are drawn from (rendered once)."""

    scenes: Tensor  # (N_s, 3, 128, 128) uint8
    cover: Tensor  # (N_s, O, h, w) float: share of each dense cell (8x8 at stride 16) filled by object slot o
    scene_attrs: np.ndarray  # (N_s, O, 3) attribute indices, -1 for an empty slot
    tiles: Tensor  # (N_t, 3, 64, 64) uint8
    tile_attrs: np.ndarray  # (N_t, 3)
    tile_templates: list[int]  # the template index each generator tile was rendered with (crops: a random one)


def object_cover(label: np.ndarray, classes: list[ObjectClass], stride: int = STRIDE) -> tuple[np.ndarray, np.ndarray]:
    """(O, h, w) share of each stride cell covered by each object of a scene label map, and (O, 3) attributes."""
    cover = np.zeros((MAX_OBJECTS, label.shape[0] // stride, label.shape[1] // stride), np.float32)
    attrs = np.full((MAX_OBJECTS, 3), -1)
    for slot, k in enumerate(sorted(set(np.unique(label).tolist()) - {IGNORE})):
        mask = (label == k).astype(np.float32)
        cover[slot] = mask.reshape(cover.shape[1], stride, cover.shape[2], stride).mean(axis=(1, 3))
        attrs[slot] = classes[k].indices
    return cover, attrs


def render_pool(
    scenes: int,
    tiles: int,
    crop_fraction: float,
    templates: list[str],
    seed: int,
    text_gap: bool,
    style_gap: bool,
    stride: int = STRIDE,
    generator_images: bool = False,
) -> Pool:
    """Render the seen-class pool: ``scenes`` scenes, and ``tiles`` tiles, all of them scene crops unless
    ``generator_images`` (then ``crop_fraction`` of them; the rest generator images, prompt style if ``style_gap``);
    scene covers on the dense grid of a tower with output stride ``stride``."""
    rng = np.random.default_rng([seed, 7, WORLD_VERSION])
    classes = seen_classes()
    gen = SyntheticGenerator(size=TILE, style="prompt" if style_gap else "scene", failures=0.0)
    n_crops = int(tiles * crop_fraction) if generator_images else tiles
    scene_images: list[np.ndarray] = []
    covers: list[np.ndarray] = []
    scene_attrs: list[np.ndarray] = []
    images: list[np.ndarray] = []
    attrs: list = []
    tmpl: list[int] = []
    while len(scene_images) < scenes or len(images) < n_crops:  # crops come from the pool scenes (more if needed)
        scene = random_scene(classes, rng, size=TILE * GRID)
        if len(scene_images) < scenes:
            cover, a = object_cover(scene.label, classes, stride)
            scene_images.append(scene.image)
            covers.append(cover)
            scene_attrs.append(a)
        for crop, cls in object_crops(scene, TILE)[: max(0, n_crops - len(images))]:
            images.append(crop)
            attrs.append(cls.indices)
            tmpl.append(int(rng.integers(len(templates))))
    for _ in range(tiles - len(images)):
        cls = classes[rng.integers(len(classes))]
        t = int(rng.integers(len(templates)))
        text = templates[t].format(caption_name(cls, text_gap))
        ((img, _),) = gen.generate_with_masks([text], [int(rng.integers(2**31))])
        images.append(img)
        attrs.append(cls.indices)
        tmpl.append(t)

    def stack(arrays: list[np.ndarray], size: int) -> Tensor:  # (N, S, S, 3) uint8 -> (N, 3, S, S)
        x = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

    cover_shape = (0, MAX_OBJECTS, GRID * TILE // stride, GRID * TILE // stride)
    return Pool(
        scenes=stack(scene_images, GRID * TILE),
        cover=torch.from_numpy(np.stack(covers)) if covers else torch.zeros(cover_shape),
        scene_attrs=np.stack(scene_attrs) if scene_attrs else np.zeros((0, MAX_OBJECTS, 3), int),
        tiles=stack(images, TILE),
        tile_attrs=np.asarray(attrs).reshape(-1, 3),
        tile_templates=tmpl,
    )


def mosaics(tiles: Tensor) -> Tensor:
    """(4n, C, S, S) tiles -> (n, C, 2S, 2S) images; tile 4i + 2r + c goes to row r, column c of image i."""
    n, ch, s = tiles.shape[0] // (GRID * GRID), tiles.shape[1], tiles.shape[2]
    x = tiles.view(n, GRID, GRID, ch, s, s)  # (n, r, c, C, S, S)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(n, ch, GRID * s, GRID * s)  # (n, C, r, S, c, S) -> (n, C, 2S, 2S)


def tile_embeddings(dense: Tensor) -> Tensor:
    """(n, d, h, w) dense embeddings of mosaics -> (4n, d): each tile's mean over its cells (:func:`mosaics`' order)."""
    n, d, h, w = dense.shape
    x = dense.view(n, d, GRID, h // GRID, GRID, w // GRID)  # (n, d, r, cells, c, cells)
    x = x.mean(dim=(3, 5))  # (n, d, r, c)
    return x.permute(0, 2, 3, 1).reshape(n * GRID * GRID, d)  # (n, r, c, d) -> (4n, d)


def flip(x: Tensor, flips: Tensor) -> Tensor:
    """Mirror the images (or maps) ``x`` (N, ..., W) where ``flips`` (N,) is true: upright shapes are
    mirror-symmetric; rotations would turn them over."""
    return torch.where(flips.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)


def scene_object_embeddings(dense: Tensor, cover: Tensor) -> Tensor:
    """(n, d, h, w) dense embeddings of scenes and (n, O, h, w) cell covers -> (n, O, d) L2-normalised object
    embeddings: the cover-weighted mean of the per-cell normalised E (empty slots give zeros)."""
    e = F.normalize(dense, dim=1)
    summed = torch.einsum("nohw,ndhw->nod", cover, e)  # (n, O, d)
    return F.normalize(summed / cover.sum(dim=(2, 3)).clamp(min=1e-6)[..., None], dim=-1)


def mosaic_tile_embeddings(dense: Tensor) -> Tensor:
    """(n, d, h, w) dense embeddings of mosaics -> (4n, d) L2-normalised tile embeddings (per-cell normalised E
    averaged over each tile's cells)."""
    return F.normalize(tile_embeddings(F.normalize(dense, dim=1)), dim=-1)


def normalised_tile_embeddings(image_tower, tiles: Tensor) -> Tensor:
    """(4n, 3, S, S) float tiles in [0, 1] -> (4n, d) L2-normalised tile embeddings through 2x2 mosaics."""
    return mosaic_tile_embeddings(image_tower(mosaics(tiles)).dense)

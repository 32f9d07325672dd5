"""A tiny CLIP for the synthetic world, pretrained contrastively on rendered image/caption pairs.

The model is the open_clip ``CLIP`` of the ``synthetic`` preset (``model.clip_model_cfg``), built by
:func:`dpseg.clip_loading.create_clip`; the result is saved in OpenCLIP layout as safetensors and loaded back
through ``model.clip_pretrained=/path/file.safetensors``, the path real OpenCLIP weights take.

Data (:mod:`~dpseg.quickstart.clip_data`): 128-px scenes of seen-class objects and 64-px tiles (crops of scene
objects; no generator images since world v3 unless ``generator_images``) assembled into 128-px 2x2 mosaics, so the
CLIP is trained at the resolution the segmenter uses it at; each tile is embedded by the mean of the dense
joint-space head over its cells. Captions name all or some attributes; partial captions make the text tower learn
one direction per attribute word, which is what lets an *unseen* triple of known words land near its images. Half
the captions are the bare phrase ("red stripy star", "a red star."): in a long template the few attribute words are
a small part of what the text tower sees.

Every step also embeds the whole *caption universe* (every distinct seen caption: full phrases and every subset of
their attributes, each in a random template) as extra text candidates for the image -> text loss, so each tile
is told apart from every seen class in every step, not only from the classes in its batch.

Loss: CLIP's symmetric InfoNCE with multiple positives - every caption whose named attributes all match a tile
is a positive for it (a "red shape" caption is true of every red object in the batch), targets spread evenly
over the positives. Plain InfoNCE would push such true pairs apart.

The world's gaps (README): ``text_gap`` - captions name patterns by their caption-only synonyms, never by the
vocabulary's words; ``generator_images`` (off by default, world v3) - the pool also holds generator images, in the
prompt style when ``style_gap``. They are part of the cache key; ``style_gap`` and ``crop_fraction`` only where
they change the pool (with generator images), so the same CLIP serves the quickstart with and without the style gap.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from dpseg.atomic import json_text
from dpseg.clip_loading import clip_model_config, create_clip, make_tokenizer
from dpseg.config import Config
from dpseg.data.synthetic.world import COLOURS, PATTERNS, SHAPES, WORLD_VERSION
from dpseg.engine.optim import cpu_fused_adamw
from dpseg.errors import InputError
from dpseg.model.towers import ImageTower
from dpseg.prompts.templates import get_templates
from dpseg.quickstart.clip_data import (
    BARE_TEMPLATES,
    GRID,
    caption_universe,
    flip,
    mosaic_tile_embeddings,
    mosaics,
    phrase_of,
    render_pool,
    scene_object_embeddings,
)
from dpseg.weights import read_state_dict, safetensors_metadata, save_safetensors

# Bump when the training recipe changes: part of the cache key of the saved weights.
# v3: 128-px mosaics of 2x2 tiles, tile embedding = mean of the dense head over the tile's cells.
# v4: a share of whole prompt images embedded by the pooled (global) path, at the prompt size.
PRETRAIN_VERSION = 4

ATTRIBUTE_VALUES = (len(COLOURS), len(PATTERNS), len(SHAPES))  # classes of the optional attribute heads

# Tiny CLIP weights shipped with the package, named like the cache files (``tiny-clip-{settings_key}.safetensors``):
# the quickstart's default CLIP is pretrained for longer than its 10-minute budget could pay for, as a real CLIP is
# downloaded rather than trained. A file is used only for exactly the settings it was trained with.
SHIPPED_DIR = Path(__file__).parent / "weights"

# settings added after recipe v4, with the value that gives v4's training: left out of the cache key at that value,
# so that weights trained before a setting existed stay valid
ADDED_LATER = {"attribute_weight": 0.0}
# settings that change nothing without generator images in the pool (generator_images=False): left out of the key
GENERATOR_POOL_ONLY = ("style_gap", "crop_fraction")


@dataclass
class PretrainSettings:
    steps: int = 600
    batch_size: int = 128  # 64-px tiles' worth of pixels per step: batch_size / 4 images of 128 px
    scene_fraction: float = 0.5  # share of those 128-px images that are scenes (the rest: mosaics of tiles)
    # share that are whole prompt images (pool tiles resized to ``prompt_size``) embedded by the pooled global path:
    # the path the visual-prompt encoder takes for generated images and refinement crops (ImageTower.encode_prompts)
    prompt_fraction: float = 0.25
    prompt_size: int = 128
    scenes: int = 1000  # rendered 128-px scenes in the pool
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 40
    pool_size: int = 4000  # rendered 64-px tiles the mosaics are drawn from (all images augmented by flips)
    # the pool also holds images of the world's generator (world v2's pool); off = only scenes and their crops, so the
    # generator's prompt style is one the CLIP never saw (world v3, README)
    generator_images: bool = False
    crop_fraction: float = 0.3  # with generator_images: share of the tiles that are scene crops (rest: generator)
    full_caption_prob: float = 0.5  # else a caption naming a random non-empty subset of the attributes
    bare_caption_prob: float = 0.5  # captions that are the bare phrase ("{}", "a {}.") rather than a template
    text_gap: bool = True  # captions never use the vocabulary's pattern words (world README)
    style_gap: bool = True  # with generator_images: the pool's generator images are in the prompt style
    seed: int = 0
    # weight of an image-side auxiliary loss: linear heads (discarded after pretraining) name each object
    # embedding's colour, pattern and shape (cross-entropy, seen-class objects only; no text, so the text gap stays).
    # 0 = off (the default; method study section 1d)
    attribute_weight: float = 0.0


def multi_positive_loss(
    img: torch.Tensor, txt: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where ``positives`` (B, C) bool marks every true (image, caption) pair.

    Image -> text runs over all C captions; text -> image over the batch images, for captions true of some image.
    """
    logits = scale * img @ txt.T  # (B, d) @ (d, C) -> (B, C)
    target = positives.float()
    i2t = -(F.log_softmax(logits, dim=1) * target / target.sum(1, keepdim=True)).sum(1).mean()
    has = target.sum(0) > 0  # (C,)
    col = target[:, has] / target[:, has].sum(0, keepdim=True)
    t2i = -(F.log_softmax(logits[:, has], dim=0) * col).sum(0).mean()
    return (i2t + t2i) / 2


def batch_captions(
    attrs: np.ndarray,
    tmpl: list[int],
    universe: np.ndarray,
    templates: list[str],
    settings: PretrainSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[str]]:
    """One caption per tile (attributes ``attrs`` (B, 3)), then the caption universe (U, 3), in words and as
    (B + U, 3) attribute values (-1 = not named). A tile's caption often uses the template it was rendered from."""
    b = len(attrs)
    named = rng.random((b, 3)) < 0.5
    named[rng.random(b) < settings.full_caption_prob] = True
    named[~named.any(1), rng.integers(0, 3)] = True  # every caption names at least one attribute
    cap_attrs = np.concatenate([np.where(named, attrs, -1), universe])  # (B + U, 3)
    picks = [t if rng.random() < 0.5 else int(rng.integers(len(templates))) for t in tmpl]
    picks += [int(rng.integers(len(templates))) for _ in universe]
    captions = []
    for values, t in zip(cap_attrs, picks):
        bare = rng.random() < settings.bare_caption_prob
        template = BARE_TEMPLATES[int(rng.integers(len(BARE_TEMPLATES)))] if bare else templates[t]
        captions.append(template.format(phrase_of(values, settings.text_gap)))
    return cap_attrs, captions


def pretrain(
    cfg: Config, settings: PretrainSettings, log: Callable[[str], None] = print
) -> tuple[torch.nn.Module, dict]:
    """Train the tiny CLIP of ``cfg.model`` from scratch; returns (model in eval mode, training stats)."""
    torch.manual_seed(settings.seed)
    templates = get_templates("imagenet80")
    t0, c0 = time.time(), time.process_time()
    model = create_clip(cfg.model, load_weights=False).train()
    tower = ImageTower(model.visual, open_clip.constants.OPENAI_DATASET_MEAN, open_clip.constants.OPENAI_DATASET_STD)
    pool = render_pool(
        settings.scenes,
        settings.pool_size,
        settings.crop_fraction,
        templates,
        settings.seed,
        settings.text_gap,
        settings.style_gap,
        stride=tower.dense_stride,
        generator_images=settings.generator_images,
    )
    render_seconds = time.time() - t0
    log(f"rendered {len(pool.scenes)} seen-class scenes and {len(pool.tiles)} tiles in {render_seconds:.1f}s")
    n_scenes = round(settings.scene_fraction * settings.batch_size / (GRID * GRID))
    n_prompts = round(settings.prompt_fraction * settings.batch_size / (GRID * GRID))  # 128-px images cost 4 tiles
    n_tiles = settings.batch_size - GRID * GRID * (n_scenes + n_prompts)
    tokenizer = make_tokenizer(cfg.model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    heads = torch.nn.ModuleList()  # made only when used: a run without them draws the same random numbers as before
    if settings.attribute_weight:
        heads.extend(torch.nn.Linear(tower.embed_dim, n) for n in ATTRIBUTE_VALUES)
        decay += [h.weight for h in heads]
        rest += [h.bias for h in heads]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        # the same update in one fused kernel: most of the parameters are the 49408-token embedding, and the
        # per-tensor loop over it was ~30 % of a step (30 steps: 13.1 s -> 9.1 s on 2 threads)
        fused=cpu_fused_adamw() or None,
    )
    gen = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng([settings.seed, 11])
    universe = caption_universe()  # (U, 3) attribute values, -1 = not named
    losses, t1, c1 = [], time.time(), time.process_time()
    for step in range(settings.steps):
        lr = settings.lr * min(1.0, (step + 1) / max(1, settings.warmup))
        lr *= 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        si = torch.randint(0, max(1, len(pool.scenes)), (n_scenes,), generator=gen)
        ti = torch.randint(0, max(1, len(pool.tiles)), (n_tiles + n_prompts,), generator=gen)
        pi, ti = ti[n_tiles:], ti[:n_tiles]
        flips = torch.rand(n_scenes, generator=gen) < 0.5
        cover = flip(pool.cover[si], flips)  # (n_s, O, h, w)
        tiles = flip(pool.tiles[ti], torch.rand(n_tiles, generator=gen) < 0.5)
        images = torch.cat([flip(pool.scenes[si], flips), mosaics(tiles)])  # (n_s + n_t / 4, 3, 128, 128)
        dense = tower(images.float() / 255).dense  # (n_s + n_t / 4, d, h, w)
        present = torch.from_numpy(pool.scene_attrs[si.numpy(), :, 0] >= 0)  # (n_s, O)
        scene_attrs = pool.scene_attrs[si.numpy()][present.numpy()]  # (n_s, O, 3) -> (P_s, 3)
        obj_attrs = np.concatenate([scene_attrs, pool.tile_attrs[ti.numpy()], pool.tile_attrs[pi.numpy()]])  # (P, 3)
        tmpl = [int(rng.integers(len(templates))) for _ in range(int(present.sum()))]  # scene objects: any template
        tmpl += [pool.tile_templates[j] for j in ti.tolist() + pi.tolist()]
        cap_attrs, captions = batch_captions(obj_attrs, tmpl, universe, templates, settings, rng)
        # caption j is true of object i iff every attribute it names equals object i's
        positives = torch.from_numpy(((cap_attrs[None] == obj_attrs[:, None]) | (cap_attrs[None] < 0)).all(-1))  # (P,C)
        scene_objects = scene_object_embeddings(dense[:n_scenes], cover)[present]  # (n_s, O, d) -> (P_s, d)
        parts = [scene_objects, mosaic_tile_embeddings(dense[n_scenes:])]
        if n_prompts:  # whole prompt images through the global path, resized as prepare_prompt_image resizes them
            prompts = flip(pool.tiles[pi], torch.rand(n_prompts, generator=gen) < 0.5).float() / 255
            prompts = F.interpolate(prompts, size=(settings.prompt_size,) * 2, mode="bilinear", align_corners=False)
            parts.append(F.normalize(tower.pooled(tower(prompts)), dim=-1))  # (n_p, d)
        img = torch.cat(parts)  # (P, d)
        txt = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
        loss = multi_positive_loss(img, txt, positives, model.logit_scale.exp())
        if settings.attribute_weight:
            truth = torch.from_numpy(obj_attrs).long()  # (P, 3): colour, pattern, shape indices
            named = sum(F.cross_entropy(head(img), truth[:, a]) for a, head in enumerate(heads)) / len(heads)
            loss = loss + settings.attribute_weight * named
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if (step + 1) % max(1, settings.steps // 10) == 0:
            log(
                f"tiny CLIP step {step + 1}/{settings.steps}  loss {np.mean(losses[-20:]):.3f}  {time.time() - t1:.0f}s"
            )
    stats = {
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(time.time() - t1, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "train_cpu_seconds": round(time.process_time() - c1, 1),
        "threads": torch.get_num_threads(),
        "final_loss": float(np.mean(losses[-20:])),
    }
    return model.eval(), stats


def ship(path: str | Path, report: Optional[dict] = None, out_dir: str | Path = "") -> Path:
    """Copy the trained weight file ``path`` into ``out_dir`` (default: the package's :data:`SHIPPED_DIR`) in float16,
    under the same name (its cache key) and metadata, plus ``report`` (the zero-shot numbers, as JSON).

    float16 halves the file (most of it is the 49408 x 64 token embedding); the loader casts back to the model's
    float32, as it does for OpenCLIP's own float16 checkpoints.
    """
    path = Path(path)
    state = read_state_dict(path, "tiny CLIP")
    meta = safetensors_metadata(path)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    if report is not None:
        meta["zero_shot"] = json_text(report, indent=None, sort_keys=True)
    return save_safetensors(half, Path(out_dir or SHIPPED_DIR) / path.name, metadata=meta)


def settings_key(cfg: Config, settings: PretrainSettings) -> str:
    """The cache key of the weights: world, recipe, CLIP config and the settings that shape the training."""
    import hashlib

    shaping = {k: v for k, v in asdict(settings).items() if k not in ADDED_LATER or v != ADDED_LATER[k]}
    if not settings.generator_images:
        shaping = {k: v for k, v in shaping.items() if k not in GENERATOR_POOL_ONLY}
    blob = json.dumps(
        {
            "world": WORLD_VERSION,
            "recipe": PRETRAIN_VERSION,
            "clip": clip_model_config(cfg.model),
            "settings": shaping,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pretrained_clip(
    cfg: Config,
    cache_dir: str | Path,
    settings: Optional[PretrainSettings] = None,
    log: Callable[[str], None] = print,
    use_shipped: bool = True,
) -> Path:
    """The tiny CLIP weight file for ``cfg`` and ``settings``: from ``cache_dir`` if trained before, else the copy
    shipped with dpseg for exactly these settings (``use_shipped``), else trained now and kept in ``cache_dir``."""
    settings = settings or PretrainSettings()
    if settings.steps < 1 or settings.batch_size < 4 or settings.batch_size % (GRID * GRID):
        raise InputError(
            "tiny CLIP pretraining needs steps >= 1 and a batch_size that is a positive multiple of 4 "
            "(64-px tiles' worth of 128-px images)"
        )
    if not 0 <= settings.scene_fraction <= 1 or settings.scenes < 0 or settings.pool_size < 0:
        raise InputError("tiny CLIP pretraining needs 0 <= scene_fraction <= 1 and scenes, pool_size >= 0")
    if (
        not 0 <= settings.prompt_fraction <= 1 - settings.scene_fraction
        or settings.prompt_size < 32
        or settings.prompt_size % 32
    ):
        raise InputError(
            "tiny CLIP pretraining needs 0 <= prompt_fraction <= 1 - scene_fraction and a prompt_size "
            "that is a multiple of 32"
        )
    no_scenes, no_tiles = settings.scenes < 1, settings.pool_size < GRID * GRID
    if (settings.scene_fraction > 0 and no_scenes) or (settings.scene_fraction < 1 and no_tiles):
        raise InputError(
            "tiny CLIP pretraining draws scenes (scene_fraction > 0) and tiles (scene_fraction < 1): "
            "give scenes >= 1 and pool_size >= 4 for the kinds it draws"
        )
    key = settings_key(cfg, settings)
    path = Path(cache_dir) / f"tiny-clip-{key}.safetensors"
    candidates = [(path, "reusing tiny CLIP")]  # trained here before, then the copy shipped for these settings
    if use_shipped:
        candidates.append(
            (SHIPPED_DIR / path.name, "using the tiny CLIP shipped with dpseg, pretrained with these settings:")
        )
    for candidate, using in candidates:
        if candidate.is_file():
            try:
                read_state_dict(candidate, "tiny CLIP")
                log(f"{using} {candidate}")
                return candidate
            except Exception as e:  # noqa: BLE001 - a broken cache file or installation: train one, and say why
                log(f"tiny CLIP {candidate} is unreadable ({e}); training one")
    model, stats = pretrain(cfg, settings, log)
    meta = {"key": key, "world_version": WORLD_VERSION, "settings": json.dumps(asdict(settings)), **stats}
    save_safetensors(model.state_dict(), path, metadata=meta)
    log(f"saved tiny CLIP ({stats['train_seconds']}s of training) to {path}")
    return path

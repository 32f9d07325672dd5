"""A tiny CLIP for the synthetic world, pretrained contrastively on rendered image/caption pairs.

The model is the open_clip ``CLIP`` of the ``synthetic`` preset (``model.clip_model_cfg``), built by
:func:`dpseg.model.towers.create_clip`; the result is saved in OpenCLIP layout as safetensors and loaded back
through ``model.clip_pretrained=/path/file.safetensors``, the path real OpenCLIP weights take.

Data: images of **seen** classes only (never an unseen class), rendered by the world's generator from a random
ImageNet template, plus square crops of objects in random scenes (what refinement crops look like). Captions:
the full phrase in a template ("a dark photo of the red striped star.") or a phrase naming only some attributes
("a photo of a red shape.", "a striped star."). Partial captions make the text tower learn one direction per
attribute word, which is what lets an *unseen* triple of known words land near its images. Half the captions are
the bare phrase ("red striped star", "a red star."): in a long template the few attribute words are a small part
of what the text tower sees, and with templates only, shape (the hardest attribute for the image tower) was still
at chance after 300 steps (bare half: 69% shape accuracy on seen classes after 300 steps).

Every step also embeds the whole *caption universe* (all 128 distinct seen captions: 60 full phrases and every
subset of their attributes, each in a random template) as extra text candidates for the image -> text loss, so
each image is told apart from every seen class in every step, not only from the classes in its batch.

Loss: CLIP's symmetric InfoNCE with multiple positives - every caption whose named attributes all match an image
is a positive for it (a "red shape" caption is true of every red object in the batch), targets spread evenly
over the positives. Plain InfoNCE would push such true pairs apart.
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

from dpseg.config import Config
from dpseg.data.synthetic.generator import SyntheticGenerator
from dpseg.data.synthetic.render import object_crops, random_scene
from dpseg.data.synthetic.world import COLOURS, GENERIC_NOUN, PATTERNS, SHAPES, WORLD_VERSION, seen_classes
from dpseg.errors import InputError
from dpseg.model.towers import clip_model_config, create_clip, make_tokenizer
from dpseg.prompts.templates import get_templates
from dpseg.weights import read_state_dict, save_safetensors

# Bump when the training recipe changes: part of the cache key of the saved weights.
PRETRAIN_VERSION = 2


@dataclass
class PretrainSettings:
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 40
    pool_size: int = 6000  # rendered images the batches are drawn from (augmented by horizontal flips)
    crop_fraction: float = 0.3  # share of the pool that are object crops from scenes (the rest: generator images)
    full_caption_prob: float = 0.5  # else a caption naming a random non-empty subset of the attributes
    bare_caption_prob: float = 0.5  # captions that are the bare phrase ("{}", "a {}.") rather than a template
    seed: int = 0


def phrase_of(values: np.ndarray) -> str:
    """Caption phrase of attribute values (-1 = not named): (0, -1, 3) -> 'red star'."""
    c, p, s = (int(v) for v in values)
    words = [list(COLOURS)[c]] if c >= 0 else []
    words += [PATTERNS[p]] if p >= 0 else []
    return " ".join(words + [SHAPES[s] if s >= 0 else GENERIC_NOUN])


def caption_universe() -> np.ndarray:
    """(U, 3) every distinct caption of seen classes: full phrases and every non-empty subset of attributes."""
    rows = set()
    for k in seen_classes():
        for mask in range(1, 8):
            rows.add(tuple(v if mask >> a & 1 else -1 for a, v in enumerate(k.indices)))
    return np.asarray(sorted(rows))


def render_pool(settings: PretrainSettings, size: int, templates: list[str]) -> tuple[torch.Tensor, np.ndarray, list[int]]:
    """(N, 3, S, S) uint8 images, (N, 3) attribute indices, and the template index each was rendered with."""
    rng = np.random.default_rng([settings.seed, 7, WORLD_VERSION])
    classes = seen_classes()
    gen = SyntheticGenerator(size=size)
    n_crops = int(settings.pool_size * settings.crop_fraction)
    images, attrs, tmpl = [], [], []
    while len(images) < n_crops:
        scene = random_scene(classes, rng, size=128)
        for crop, cls in object_crops(scene, size):
            images.append(crop)
            attrs.append(cls.indices)
            tmpl.append(int(rng.integers(len(templates))))
    for _ in range(settings.pool_size - len(images)):
        cls = classes[rng.integers(len(classes))]
        t = int(rng.integers(len(templates)))
        (img, _), = gen.generate_with_masks([templates[t].format(cls.name)], [int(rng.integers(2**31))])
        images.append(img)
        attrs.append(cls.indices)
        tmpl.append(t)
    stack = torch.from_numpy(np.stack(images[: settings.pool_size])).permute(0, 3, 1, 2)  # (N, S, S, 3) -> (N, 3, S, S)
    return stack.contiguous(), np.asarray(attrs[: settings.pool_size]), tmpl[: settings.pool_size]


def multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
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


BARE_TEMPLATES = ("{}", "a {}.")


def pick_template(template: str, settings: PretrainSettings, rng: np.random.Generator) -> str:
    if rng.random() < settings.bare_caption_prob:
        return BARE_TEMPLATES[int(rng.integers(len(BARE_TEMPLATES)))]
    return template


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips (upright shapes are mirror-symmetric; rotations would turn them over)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def pretrain(cfg: Config, settings: PretrainSettings, log: Callable[[str], None] = print) -> tuple[torch.nn.Module, dict]:
    """Train the tiny CLIP of ``cfg.model`` from scratch; returns (model in eval mode, training stats)."""
    torch.manual_seed(settings.seed)
    size = clip_model_config(cfg.model)["vision_cfg"].get("image_size", 64)
    templates = get_templates("imagenet80")
    t0 = time.time()
    pool, attrs, tmpl = render_pool(settings, size, templates)
    log(f"rendered {len(pool)} seen-class images ({size}px) in {time.time() - t0:.1f}s")
    model = create_clip(cfg.model, load_weights=False).train()
    tokenizer = make_tokenizer(cfg.model)
    mean = torch.tensor(open_clip.constants.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.constants.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=settings.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    gen = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng([settings.seed, 11])
    universe = caption_universe()  # (U, 3) attribute values, -1 = not named
    losses, t1 = [], time.time()
    for step in range(settings.steps):
        lr = settings.lr * min(1.0, (step + 1) / max(1, settings.warmup))
        lr *= 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(pool), (settings.batch_size,), generator=gen)
        a = attrs[idx.numpy()]  # (B, 3)
        named = rng.random((settings.batch_size, 3)) < 0.5
        named[rng.random(settings.batch_size) < settings.full_caption_prob] = True
        named[~named.any(1), rng.integers(0, 3)] = True  # every caption names at least one attribute
        cap_attrs = np.concatenate([np.where(named, a, -1), universe])  # (B + U, 3)
        captions = []
        for i, j in enumerate(idx.tolist()):  # one caption per image, often in the template it was rendered from
            t = tmpl[j] if rng.random() < 0.5 else int(rng.integers(len(templates)))
            captions.append(pick_template(templates[t], settings, rng).format(phrase_of(cap_attrs[i])))
        captions += [pick_template(templates[int(rng.integers(len(templates)))], settings, rng).format(phrase_of(u)) for u in universe]
        # caption j is true of image i iff every attribute it names equals image i's
        positives = ((cap_attrs[None] == a[:, None]) | (cap_attrs[None] < 0)).all(-1)  # (B, B + U, 3) -> (B, B + U)
        images = (_augment(pool[idx], gen).float() / 255 - mean) / std
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
        loss = multi_positive_loss(img, txt, torch.from_numpy(positives), model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if (step + 1) % max(1, settings.steps // 10) == 0:
            log(f"tiny CLIP step {step + 1}/{settings.steps}  loss {np.mean(losses[-20:]):.3f}  {time.time() - t1:.0f}s")
    stats = {"train_seconds": round(time.time() - t1, 1), "final_loss": float(np.mean(losses[-20:]))}
    return model.eval(), stats


def settings_key(cfg: Config, settings: PretrainSettings) -> str:
    import hashlib

    blob = json.dumps({"world": WORLD_VERSION, "recipe": PRETRAIN_VERSION, "clip": clip_model_config(cfg.model), "settings": asdict(settings)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pretrained_clip(
    cfg: Config, cache_dir: str | Path, settings: Optional[PretrainSettings] = None, log: Callable[[str], None] = print
) -> Path:
    """The tiny CLIP weight file for ``cfg`` and ``settings``: trained once, then reused from ``cache_dir``."""
    settings = settings or PretrainSettings()
    if settings.steps < 1 or settings.batch_size < 2 or settings.pool_size < settings.batch_size:
        raise InputError("tiny CLIP pretraining needs steps >= 1, batch_size >= 2 and pool_size >= batch_size")
    key = settings_key(cfg, settings)
    path = Path(cache_dir) / f"tiny-clip-{key}.safetensors"
    if path.is_file():
        try:
            read_state_dict(path, "tiny CLIP")
            log(f"reusing tiny CLIP {path}")
            return path
        except Exception:  # noqa: BLE001 - a broken cache file is retrained
            log(f"tiny CLIP cache {path} is unreadable; retraining")
    model, stats = pretrain(cfg, settings, log)
    meta = {"key": key, "world_version": WORLD_VERSION, "settings": json.dumps(asdict(settings)), **stats}
    save_safetensors(model.state_dict(), path, metadata=meta)
    log(f"saved tiny CLIP ({stats['train_seconds']}s of training) to {path}")
    return path

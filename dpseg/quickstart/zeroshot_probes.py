"""The probes of :mod:`dpseg.quickstart.zeroshot`: test scenes from seeds no training image used, the tiny CLIP's
dense and global embeddings of their objects, of generator images and of framed crops, and class prototypes - what
each zero-shot check classifies (the checks and their report are in zeroshot.py)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dpseg.data.synthetic.generator import SyntheticGenerator
from dpseg.data.synthetic.render import object_crops, random_scene
from dpseg.data.synthetic.world import WORLD_VERSION, ObjectClass
from dpseg.model.prompt_image import prepare_prompt_image
from dpseg.prompts.exemplars import encode_prompt_images
from dpseg.quickstart.clip_data import TILE, caption_name

SCENE = 128  # the evaluation scenes' size (the quickstart's)


def test_scenes(classes: Sequence[ObjectClass], per_class: int, seed: int, stream: int = 1000) -> dict:
    """Scenes of ``classes`` until each has ``per_class`` visible objects (seeds disjoint from training; ``stream``
    picks another set of scenes).

    Returns images (N, 3, S, S) float in [0, 1], labels (N, S, S) long (index into ``classes``, -1 background),
    objects (O, 2) long (scene index, class index) of the counted objects, and crops (O, 3, 64, 64) float.
    """
    rng = np.random.default_rng([seed, stream, WORLD_VERSION])
    index = {k: i for i, k in enumerate(classes)}
    counts = np.zeros(len(classes), int)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    objects: list[tuple[int, int]] = []
    crops: list[np.ndarray] = []
    while counts.min() < per_class:
        scene = random_scene(list(classes), rng, size=SCENE)
        counted = False
        for crop, cls in object_crops(scene, TILE):  # classes are distinct within a scene: label == class = visible
            if counts[index[cls]] < per_class:
                counts[index[cls]] += 1
                objects.append((len(images), index[cls]))
                crops.append(crop)
                counted = True
        if counted:
            images.append(scene.image)
            labels.append(scene.label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # (N, S, S, 3) -> (N, 3, S, S)
    c = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255  # (O, T, T, 3) -> (O, 3, T, T)
    labels_ = torch.from_numpy(np.stack(labels)).long()
    return {"images": x, "labels": labels_, "objects": torch.tensor(objects), "crops": c}


@torch.no_grad()
def dense_embeddings(image_tower, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(N, 3, S, S) -> (N, d, S/s, S/s) L2-normalised dense embeddings E (s: the tower's dense stride)."""
    chunks = [image_tower(images[i : i + batch]).dense for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(chunks), dim=1)


def cell_oracle_accuracy(labels: torch.Tensor, objects: torch.Tensor, stride: int = 32) -> float:
    """Accuracy on ``objects`` of cells that each carry the one-hot class filling most of them (see module doc)."""
    k = int(labels.max()) + 1
    onehot = F.one_hot(labels.clamp(min=0), k).permute(0, 3, 1, 2).float() * (labels >= 0)[:, None]  # (N, K, S, S)
    share = F.avg_pool2d(onehot, stride)  # (N, K, h, w): share of each cell per class
    majority = F.one_hot(share.argmax(1), k).permute(0, 3, 1, 2) * (share.amax(1) > 0)[:, None]  # (N, K, h, w)
    right = [int((majority[n] * share[n, c]).sum(dim=(1, 2)).argmax()) == c for n, c in objects.tolist()]
    return float(np.mean(right))


def object_embeddings(dense: torch.Tensor, labels: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """(O, d): each object's coverage-weighted mean of E over the dense cells its visible pixels fall in."""
    stride = labels.shape[-1] // dense.shape[-1]
    out = []
    for scene, k in objects.tolist():
        cover = F.avg_pool2d((labels[scene] == k).float()[None, None], stride)[0, 0]  # (S, S) -> (h, w) share
        out.append((dense[scene] * cover).sum(dim=(1, 2)) / cover.sum())  # (d, h, w) -> (d,)
    return F.normalize(torch.stack(out), dim=-1)


@torch.no_grad()
def prompt_images(
    prompt_tower,
    classes: Sequence[ObjectClass],
    per_class: int,
    seed: int,
    style: str,
    templates: Sequence[str] = ("a photo of a {}.",),
    size: int = 128,
    failures: float = 1.0,
):
    """Global embeddings (K * per_class, d) of generator images and their class indices: image i of a class from
    ``templates[i % M]``, by the generator with ``style`` and ``failures``, encoded as the prompt bank encodes
    images (:func:`~dpseg.prompts.exemplars.encode_prompt_images` at ``size``)."""
    rng = np.random.default_rng([seed, 2000, WORLD_VERSION])
    gen = SyntheticGenerator(size=TILE, style=style, failures=failures)
    images, labels = [], []
    for k, cls in enumerate(classes):
        seeds = [int(s) for s in rng.integers(2**31, size=per_class)]
        texts = [templates[i % len(templates)].format(cls.name) for i in range(per_class)]
        images += [img for img, _ in gen.generate_with_masks(texts, seeds)]
        labels += [k] * per_class
    embeddings, _ = encode_prompt_images(prompt_tower, images, size, batch_size=256)
    return embeddings, torch.tensor(labels)


@torch.no_grad()
def object_crops_framed(prompt_tower, scenes: dict, size: int = 128) -> torch.Tensor:
    """(O, d) global embeddings of a crop around every counted object of ``scenes`` (:func:`test_scenes`), framed
    around its visible mask as the second inference pass frames a predicted region
    (:func:`~dpseg.model.prompt_image.prepare_prompt_image`), encoded as the prompt bank encodes images."""
    framed = [
        prepare_prompt_image(scenes["images"][n], size, mask=scenes["labels"][n] == k)
        for n, k in scenes["objects"].tolist()
    ]
    out = [prompt_tower.encode_prompts(torch.stack(framed[i : i + 256]))[0] for i in range(0, len(framed), 256)]
    return torch.cat(out)


def prototypes(emb: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """(K, d): the L2-normalised mean of each class's L2-normalised embeddings."""
    return F.normalize(torch.stack([F.normalize(emb[y == c], dim=-1).mean(0) for c in range(k)]), dim=-1)


@torch.no_grad()
def class_text_embeddings(text_tower, classes: Sequence[ObjectClass], templates: Sequence[str], words: str):
    """(K, d): template-averaged, L2-normalised text embeddings of the names in vocabulary or caption words."""
    names = [k.name if words == "vocabulary" else caption_name(k, text_gap=True) for k in classes]
    return F.normalize(text_tower.encode(names, list(templates)).mean(1), dim=-1)  # (K, M, d) -> (K, d)

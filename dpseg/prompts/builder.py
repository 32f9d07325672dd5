"""Filling a prompt bank: generated visual prompts (resumable, sharded) and user exemplar images.

Generated prompts (docs/paper-choices.md #1-#4): for class k, image i is drawn from the templated sentence
``templates[i % M]`` with the class's first synonym and the seed ``image_seed(seed, k, i)``, so a class's images
do not depend on which rank builds it, in which order, or whether the build was interrupted. With N = M images
(the paper, ``images_per_class = 0``) template m gets image m. ``images_per_class = N`` is a documented deviation
for small budgets: with N < M template m reuses image m mod N; with N > M template m averages the images
i = m (mod M). Each class is written once, atomically, after all its images are encoded.

Sharding: rank r of W builds the classes at positions i ≡ r (mod W) of the requested list, so every rank
derives the same split with no communication, and a restarted job with the same W resumes the same shares.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from dpseg.errors import BankError, InputError
from dpseg.image_io import load_image, save_atomic
from dpseg.progress import progress as progress_bar
from dpseg.prompts.bank import PromptBank
from dpseg.prompts.exemplars import average_prompts, encode_prompt_images
from dpseg.prompts.generate import generator_prompt, image_seed
from dpseg.prompts.templates import templates_id
from dpseg.vocab import check_class_list


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)  # classes written by this call
    skipped: int = 0  # classes of this rank's share that were already in the bank
    repaired: list[str] = field(default_factory=list)  # classes whose file failed its content-hash check: rebuilt
    images: int = 0
    generate_seconds: float = 0.0
    encode_seconds: float = 0.0  # visual-prompt encoder + text tower


def template_assignment(num_templates: int, num_images: int) -> torch.Tensor:
    """(M, N) row-normalised weights: which images make the visual prompt of each template (module doc)."""
    m = torch.arange(num_templates)
    if num_images <= num_templates:
        a = F.one_hot(m % num_images, num_images).float()  # (M, N)
    else:
        a = (torch.arange(num_images)[None, :] % num_templates == m[:, None]).float()  # (M, N)
    return a / a.sum(dim=1, keepdim=True)


def _check_images(images, expected: int, generator) -> list[Image.Image]:
    if not isinstance(images, (list, tuple)) or len(images) != expected:
        n = len(images) if hasattr(images, "__len__") else "?"
        raise BankError(f"generator {type(generator).__name__} returned {n} images for {expected} prompts")
    bad = [type(im).__name__ for im in images if not isinstance(im, Image.Image)]
    if bad:
        raise BankError(f"generator {type(generator).__name__} returned {bad[0]} objects; it must return PIL images")
    return [im if im.mode == "RGB" else im.convert("RGB") for im in images]


def build_bank(
    bank: PromptBank,
    class_names: Sequence[str],
    generator,
    prompt_encoder,
    text_tower,
    templates: Optional[Sequence[str]] = None,
    *,
    batch_size: int = 8,
    encode_batch_size: int = 32,
    keep_images: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> BuildReport:
    """Generate, encode and store every class of this rank's share that the bank lacks (resumable)."""
    names = check_class_list(class_names)
    templates = bank.templates if templates is None else list(templates)
    if templates_id(templates) != bank.manifest["templates_id"]:
        raise BankError(f"prompt bank {bank.root} was built with other templates; pass its own (bank.templates)")
    if not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is outside world size {world_size}")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    bank.check_encoders(prompt_encoder, text_tower)
    bank.check_generation(generator.identity, bank.manifest["seed"], bank.manifest["images_per_class"])
    bank.clean_temp_files()
    share = [n for i, n in enumerate(names) if i % world_size == rank]
    damaged = [n for n in share if bank.has(n) and bank.damaged(n)]
    todo = [n for n in share if not bank.has(n) or n in damaged]
    report = BuildReport(skipped=len(share) - len(todo), repaired=damaged)
    m = len(templates)
    n_img = bank.manifest["images_per_class"] or m
    assign = template_assignment(m, n_img)  # (M, N)
    size, seed = bank.manifest["prompt_image_size"], bank.manifest["seed"]
    desc = f"prompt bank (rank {rank}/{world_size})" if world_size > 1 else "prompt bank"
    bar = progress_bar(len(todo) * n_img, desc, unit="img", enabled=progress and bool(todo))
    try:
        for name in todo:
            sentences = [generator_prompt(templates[i % m], name) for i in range(n_img)]
            seeds = [image_seed(seed, name, i) for i in range(n_img)]
            images: list[Image.Image] = []
            t0 = time.perf_counter()
            for b in range(0, n_img, batch_size):
                batch = generator.generate(sentences[b : b + batch_size], seeds[b : b + batch_size])
                images += _check_images(batch, len(sentences[b : b + batch_size]), generator)
                bar.set_postfix(name[:30])
                bar.update(len(batch))
            t1 = time.perf_counter()
            v, stages = encode_prompt_images(prompt_encoder, images, size, encode_batch_size)  # (N, d), [(N, D_j)]
            a = assign.to(v.device)
            visual = F.normalize(a @ F.normalize(v, dim=-1), dim=-1)  # (M, N) @ (N, d) -> (M, d)
            text = text_tower.encode([name], templates)[0]  # (1, M, d) -> (M, d)
            report.encode_seconds += time.perf_counter() - t1
            report.generate_seconds += t1 - t0
            if keep_images:
                for i, im in enumerate(images):
                    save_atomic(im, bank.image_dir(name) / f"{i:03d}.png")
            bank.write_class(name, text, visual, [a @ s for s in stages], "generated", seeds)  # [(M, N) @ (N, D_j)]
            report.built.append(name)
            report.images += len(images)
    finally:
        bar.close()
    return report


def add_exemplars(
    bank: PromptBank,
    images_by_class: Mapping[str, Sequence],
    prompt_encoder,
    text_tower,
    *,
    encode_batch_size: int = 32,
    progress: bool = False,
) -> list[str]:
    """Set the visual prompts of classes from user images (paths or images): the mean of their embeddings.

    Every template of the class gets the same averaged V and v_j (as a refinement crop does, docs/paper-choices.md #19);
    text prompts are (re)computed with the bank's templates. Classes are written one at a time, atomically,
    marked ``source=exemplar``; a class not yet in the bank is added.
    """
    names = check_class_list(list(images_by_class), "the exemplar class list")
    bank.check_encoders(prompt_encoder, text_tower)
    templates, size, m = bank.templates, bank.manifest["prompt_image_size"], len(bank.templates)
    done = []
    items = list(images_by_class.items())
    bar = progress_bar(len(items), "exemplars", unit="class", enabled=progress)
    for name, (_, sources) in zip(names, items):
        if not len(sources):
            raise InputError(f"class {name!r} has no exemplar images")
        images = [load_image(s) if isinstance(s, (str, os.PathLike)) else s for s in sources]
        v, stages = encode_prompt_images(prompt_encoder, images, size, encode_batch_size)  # (N, d), [(N, D_j)]
        mean_v, mean_stages = average_prompts(v, stages)  # (d,), [(D_j,)]
        text = text_tower.encode([name], templates)[0]  # (1, M, d) -> (M, d)
        files = [Path(s).name for s in sources if isinstance(s, (str, os.PathLike))]
        bank.write_class(
            name,
            text,
            mean_v.expand(m, -1),
            [s.expand(m, -1) for s in mean_stages],
            "exemplar",  # (d,) -> (M, d)
            [-1] * len(sources),
            extra={"exemplars": json.dumps(files[:200])},
        )
        done.append(name)
        bar.update()
    bar.close()
    return done

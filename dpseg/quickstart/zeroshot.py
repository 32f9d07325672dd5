"""Zero-shot classification of rendered objects with a CLIP loaded through the real weight-loading path.

For a vocabulary (seen / unseen / all) the text tower embeds every class name in the preset's templates (averaged
over templates, as the text prompts of DPSeg are), the image tower embeds object images, and each image is
assigned its nearest class. Two kinds of test images, from seeds no training image used:
``crops`` - square crops around objects in random scenes (neighbours in view), and ``prompts`` - generator images
("a photo of a {}." only). Chance = 1 / K for K classes. ``alignment`` checks that text embeddings of unseen
phrases land near their own images: the cosine of each class text with the mean embedding of its own images,
against the best other class of the vocabulary, and the rank of the own class.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dpseg.config import Config, atomic_write_text, build_config
from dpseg.data.synthetic.generator import SyntheticGenerator
from dpseg.data.synthetic.render import object_crops, random_scene
from dpseg.data.synthetic.world import WORLD_VERSION, ObjectClass, vocabulary
from dpseg.model.towers import build_towers
from dpseg.prompts.templates import get_templates
from dpseg.quickstart.clip_pretrain import PretrainSettings, pretrained_clip


def test_images(classes: Sequence[ObjectClass], kind: str, per_class: int, size: int, seed: int):
    """(N, 3, S, S) float images in [0, 1] and (N,) indices into ``classes``; seeds disjoint from training."""
    rng = np.random.default_rng([seed, 1000, WORLD_VERSION])
    index = {k: i for i, k in enumerate(classes)}
    images, labels = [], []
    if kind == "crops":
        counts = np.zeros(len(classes), int)
        while counts.min() < per_class:
            for crop, cls in object_crops(random_scene(list(classes), rng, size=128), size):
                if counts[index[cls]] < per_class:
                    counts[index[cls]] += 1
                    images.append(crop)
                    labels.append(index[cls])
    elif kind == "prompts":
        gen = SyntheticGenerator(size=size)
        for k, cls in enumerate(classes):
            seeds = [int(s) for s in rng.integers(2**31, size=per_class)]
            images += [img for img, _ in gen.generate_with_masks([f"a photo of a {cls.name}."] * per_class, seeds)]
            labels += [k] * per_class
    else:
        raise ValueError(f"unknown test image kind {kind!r}")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # (N, S, S, 3) -> (N, 3, S, S)
    return x, torch.tensor(labels)


@torch.no_grad()
def class_text_embeddings(text_tower, classes: Sequence[ObjectClass], templates: Sequence[str]) -> torch.Tensor:
    """(K, d): template-averaged, L2-normalised text embeddings."""
    t = text_tower.encode([k.name for k in classes], list(templates))  # (K, M, d)
    return F.normalize(t.mean(1), dim=-1)


@torch.no_grad()
def image_embeddings(image_tower, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([image_tower.encode_prompts(images[i : i + batch])[0] for i in range(0, len(images), batch)])


def evaluate_zero_shot(
    cfg: Config, per_class: int = 20, seed: int = 0, vocabs: Sequence[str] = ("seen", "unseen", "all"),
    kinds: Sequence[str] = ("crops", "prompts"),
) -> dict:
    """Zero-shot accuracy of ``cfg.model``'s CLIP (weights from ``cfg.model.clip_pretrained``) per vocabulary.

    Keys ``"<test set>/<kind>"``: ``seen`` = seen-class images among the 60 seen names, ``unseen`` = unseen-class
    images among the 15 unseen names (the zero-shot protocol of the segmentation benchmark), ``unseen-among-all``
    = unseen-class images among all 75 names (generalised zero-shot: seen names compete).
    """
    _, prompt_tower, text_tower = build_towers(cfg.model, load_weights=True)
    templates = get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
    size = cfg.model.prompt_image_size
    attr_names = ("colour", "pattern", "shape")
    report: dict = {"templates": len(templates), "per_class": per_class}
    for vocab in vocabs:
        classes = vocabulary(vocab)
        text = class_text_embeddings(text_tower, classes, templates)  # (K, d)
        for kind in kinds:
            subset = vocabulary("unseen") if vocab == "all" else classes
            x, y = test_images(subset, kind, per_class, size, seed)
            y = torch.tensor([classes.index(subset[i]) for i in y.tolist()])
            emb = image_embeddings(prompt_tower, x)  # (N, d)
            pred = (emb @ text.T).argmax(1)  # (N, d) @ (d, K) -> (N, K) -> (N,)
            entry = {"classes": len(classes), "images": len(y), "accuracy": float((pred == y).float().mean()),
                     "chance": 1.0 / len(classes)}
            for a, name in enumerate(attr_names):  # which attribute the mistakes get wrong
                got = torch.tensor([classes[p].indices[a] for p in pred.tolist()])
                want = torch.tensor([classes[t].indices[a] for t in y.tolist()])
                entry[f"{name}_accuracy"] = float((got == want).float().mean())
            if kind == "crops":
                entry["alignment"] = alignment(emb, y, text)
            report[f"{'unseen-among-all' if vocab == 'all' else vocab}/{kind}"] = entry
    return report


def alignment(emb: torch.Tensor, y: torch.Tensor, text: torch.Tensor) -> dict:
    """Cosine of each class text to the mean of its own images vs. the closest other class text; mean rank."""
    own, other, ranks = [], [], []
    for k in y.unique().tolist():
        centre = F.normalize(emb[y == k].mean(0), dim=-1)  # (d,)
        sims = text @ centre  # (K, d) @ (d,) -> (K,)
        own.append(float(sims[k]))
        other.append(float(torch.cat([sims[:k], sims[k + 1 :]]).max()))
        ranks.append(int((sims > sims[k]).sum()) + 1)
    return {"own_text_cos": float(np.mean(own)), "best_other_text_cos": float(np.mean(other)), "mean_rank": float(np.mean(ranks))}


def format_report(report: dict) -> str:
    """A Markdown table of :func:`evaluate_zero_shot`'s result."""
    lines = ["| vocabulary / test images | K | accuracy | chance | colour | pattern | shape |", "|---|---|---|---|---|---|---|"]
    for key, e in report.items():
        if isinstance(e, dict):
            lines.append(
                f"| {key} | {e['classes']} | {100 * e['accuracy']:.1f} | {100 * e['chance']:.1f} | "
                f"{100 * e['colour_accuracy']:.1f} | {100 * e['pattern_accuracy']:.1f} | {100 * e['shape_accuracy']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """python -m dpseg.quickstart.zeroshot [--cache DIR] [--steps N]: pretrain (or reuse) and score the tiny CLIP."""
    import argparse
    import json
    import time


    parser = argparse.ArgumentParser(prog="python -m dpseg.quickstart.zeroshot", description=main.__doc__)
    parser.add_argument("--cache", default=".dpseg_cache/synthetic", help="where the weight file is kept")
    parser.add_argument("--steps", type=int, default=PretrainSettings.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=20, help="test images per class and kind")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    path = pretrained_clip(build_config("synthetic"), args.cache, PretrainSettings(steps=args.steps, seed=args.seed))
    cfg = build_config("synthetic", overrides=[f"model.clip_pretrained={path}"])
    report = evaluate_zero_shot(cfg, per_class=args.per_class)
    report["weights"], report["seconds"] = str(path), round(time.time() - t0, 1)
    print(format_report(report))
    for key, e in report.items():
        if isinstance(e, dict) and "alignment" in e:
            a = e["alignment"]
            print(f"{key}: text-to-own-images cos {a['own_text_cos']:.3f}, best other class {a['best_other_text_cos']:.3f}, "
                  f"mean rank of own class {a['mean_rank']:.2f}")
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

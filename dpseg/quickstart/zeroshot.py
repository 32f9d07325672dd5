"""Zero-shot checks of the tiny CLIP at the resolution the segmenter uses it, loaded through the real weight path.

The segmenter sees the CLIP on 128-px scenes (96-px training crops), through its *dense* embedding E (the CLIP head
at every cell: stride 16 for the synthetic preset's dilated tower, 32 for a plain ConvNeXt). So the test images
are 128-px scenes from seeds no training image used, and

* ``scene-objects`` - every object of a scene is embedded by the mean of E over the dense cells it covers,
  each cell weighted by the share of it the object's visible pixels fill; then assigned its nearest class text.
  This is the headline check (the object at the size and grid the segmenter sees it). Its ``ceiling`` is the
  accuracy of an oracle whose every cell holds exactly the class that fills most of it: small objects that never
  dominate a cell are lost to their neighbours whatever the CLIP.
* ``mosaic-tiles`` - 64-px square crops around scene objects put into 128-px 2x2 mosaics, each tile embedded by the
  mean of E over its cells: the pretraining format on unseen test images.
* ``prompt-images`` - 64-px generator images, one per template of the preset's (cycling, as the prompt bank draws
  them), with the generator's failures, encoded as the prompt bank encodes images (framed and resized to
  ``model.prompt_image_size``, global embedding); classified by the class texts.
* ``scene-objects-by-prompts`` - the scene objects again, each class represented by the mean global embedding of its
  prompt images instead of its text: how much the visual prompts alone know (the style gap makes them differ
  from the scenes, the generator's failures make some classes' prompts show another class).
* ``scene-objects-by-crops`` - the same, each class represented by the mean global embedding of ground-truth crops of
  its objects from other scenes (framed around the object's visible mask as the second inference pass frames a
  predicted region, encoded as the prompt bank encodes images): what prompts in the scenes' own style would know.
  Against ``scene-objects-by-prompts`` it measures the style gap that refinement crops could close.
* ``crops-by-prompts`` - those crops of the test scenes' own objects, each assigned the class of its nearest
  prompt-image prototype: whether a crop of an object finds its own class's generated prompts.
* ``scene-objects-by-dual`` - the scene objects classified by dual prototypes, normalise(normalise(text) +
  normalise(prompt-image mean)), DPSeg's dual prompt at the CLIP level: whether text and prompt images together
  know more than either (with the text gap and the generator's failures, each knows something the other lacks).
* ``dense`` - the CLIP's dense cost volume alone on the scenes: argmax over classes of cos(E, T) per pixel
  (bilinearly upsampled from the dense stride), mIoU over the classes present, against the mIoU of a uniformly random
  class per pixel.

Vocabularies: ``seen`` (seen-class scenes, 59 names), ``unseen`` (unseen-class scenes, 16 names) and
``unseen-among-all`` (the same unseen scenes, all 75 names: generalised zero-shot). Class texts are the names in the
preset's templates (averaged over templates, as DPSeg's text prompts are), written with the vocabulary's pattern
words (``words="vocabulary"``: what the segmenter is given) or with the captions' synonyms (``words="caption"``).
With the text gap on, the two differ exactly in the pattern words the CLIP's text tower never saw. Every
classification kind also reports its accuracy on the objects of the classes the generator misdraws often (its *hard*
classes, :func:`~dpseg.data.synthetic.generator.failure_profile`) and on the others, so that kinds can be compared
on the same objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from dpseg.atomic import atomic_write_json
from dpseg.clip_loading import build_towers
from dpseg.config import Config, build_config
from dpseg.data.synthetic.generator import failure_profile
from dpseg.data.synthetic.render import IGNORE
from dpseg.data.synthetic.world import ObjectClass, vocabulary
from dpseg.errors import InputError
from dpseg.evaluation.metrics import ConfusionMatrix, metrics_from_confusion
from dpseg.prompts.templates import get_templates
from dpseg.quickstart.clip_data import normalised_tile_embeddings
from dpseg.quickstart.clip_pretrain import PretrainSettings, pretrained_clip, ship
from dpseg.quickstart.zeroshot_probes import (
    cell_oracle_accuracy,
    class_text_embeddings,
    dense_embeddings,
    object_crops_framed,
    object_embeddings,
    prompt_images,
    prototypes,
    test_scenes,
)

KINDS = (
    "scene-objects",
    "mosaic-tiles",
    "prompt-images",
    "scene-objects-by-prompts",
    "scene-objects-by-crops",
    "crops-by-prompts",
    "scene-objects-by-dual",
    "dense",
)
PROMPT_KINDS = ("prompt-images", "scene-objects-by-prompts", "crops-by-prompts", "scene-objects-by-dual")
WORDS = ("vocabulary", "caption")
ATTRIBUTES = ("colour", "pattern", "shape")


def score(
    emb: torch.Tensor,
    y: torch.Tensor,
    prototypes: torch.Tensor,
    classes: Sequence[ObjectClass],
    by_failure: bool = False,
) -> dict:
    """Accuracy of nearest-prototype classification and of each attribute of the predicted class; ``by_failure``:
    also the accuracy on the objects of the generator's hard classes and on the others."""
    pred = (emb @ prototypes.T).argmax(1)  # (N, d) @ (d, K) -> (N, K) -> (N,)
    entry = {
        "classes": len(classes),
        "images": len(y),
        "accuracy": float((pred == y).float().mean()),
        "chance": 1 / len(classes),
    }
    hard = torch.tensor([failure_profile()[classes[t]].hard for t in y.tolist()], dtype=torch.bool)
    right = pred == y
    entry["hard_classes_accuracy"] = float(right[hard].float().mean()) if hard.any() else float("nan")
    entry["other_classes_accuracy"] = float(right[~hard].float().mean()) if (~hard).any() else float("nan")
    for a, name in enumerate(ATTRIBUTES):
        got = torch.tensor([classes[p].indices[a] for p in pred.tolist()])
        want = torch.tensor([classes[t].indices[a] for t in y.tolist()])
        entry[f"{name}_accuracy"] = float((got == want).float().mean())
    return entry


def dense_miou(dense: torch.Tensor, labels: torch.Tensor, text: torch.Tensor) -> dict:
    """mIoU (%) of argmax_k cos(E, T_k) per pixel, and of a uniformly random class per pixel (chance)."""
    k = len(text)
    conf = ConfusionMatrix(k)
    for i in range(0, len(dense), 64):
        scores = torch.einsum("bdhw,kd->bkhw", dense[i : i + 64], text)  # (b, K, h, w)
        scores = F.interpolate(scores, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        conf.update(scores.argmax(1), labels[i : i + 64])
    counts = conf.mat.sum(1).double().numpy()  # ground-truth pixels per class
    present = counts > 0
    # a uniform random predictor's expected confusion row is n_c / K: IoU_c = (n_c / K) / (n_c + N / K - n_c / K)
    iou = (counts / k) / (counts + counts.sum() / k - counts / k)
    miou = float(metrics_from_confusion(conf.mat)["mIoU"])
    return {"classes": k, "mIoU": miou, "chance": float(100 * iou[present].mean())}


def evaluate_zero_shot(
    cfg: Config,
    per_class: int = 20,
    seed: int = 0,
    vocabs: Sequence[str] = ("seen", "unseen", "all"),
    kinds: Sequence[str] = KINDS,
    words: str = "vocabulary",
    style: str = "prompt",
    failures: float = 1.0,
) -> dict:
    """Zero-shot checks (module docstring) of ``cfg.model``'s CLIP (weights from ``cfg.model.clip_pretrained``).

    Keys ``"<test set>/<kind>"``: ``seen``, ``unseen`` and ``unseen-among-all`` (vocabulary ``all``: unseen-class
    scenes scored with all 75 names). ``style`` and ``failures`` are the generator's for the prompt-image kinds.
    """
    bad_vocab = any(v not in ("seen", "unseen", "all") for v in vocabs)
    if words not in WORDS or any(k not in KINDS for k in kinds) or bad_vocab:
        raise InputError(
            f"zero-shot check: words must be one of {WORDS}, kinds among {KINDS}, vocabularies among "
            f"seen, unseen, all; got {words!r}, {tuple(kinds)}, {tuple(vocabs)}"
        )
    image_tower, prompt_tower, text_tower = build_towers(cfg.model, load_weights=True)
    image_tower.eval()
    templates = get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
    size = cfg.model.prompt_image_size
    report: dict = {
        "templates": len(templates),
        "per_class": per_class,
        "words": words,
        "style": style,
        "failures": failures,
    }
    cache: dict = {}
    visual: dict = {}  # classes -> (prompt-image prototypes, crop prototypes), made once per vocabulary

    def prompt_prototypes(classes: list[ObjectClass]) -> torch.Tensor:
        if ("prompts", tuple(classes)) not in visual:
            emb, yp = prompt_images(prompt_tower, classes, per_class, seed + 1, style, templates, size, failures)
            visual["prompts", tuple(classes)] = prototypes(emb, yp, len(classes))
        return visual["prompts", tuple(classes)]

    def crop_prototypes(classes: list[ObjectClass]) -> torch.Tensor:
        if ("crops", tuple(classes)) not in visual:
            other = test_scenes(classes, per_class, seed, stream=3000)  # other scenes than the test objects'
            emb = object_crops_framed(prompt_tower, other, size)
            visual["crops", tuple(classes)] = prototypes(emb, other["objects"][:, 1], len(classes))
        return visual["crops", tuple(classes)]

    for vocab in vocabs:
        classes = vocabulary(vocab)
        text = class_text_embeddings(text_tower, classes, templates, words)  # (K, d)
        subset = vocabulary("unseen") if vocab == "all" else classes
        to_vocab = torch.tensor([classes.index(k) for k in subset])  # index in subset -> index in classes
        if tuple(subset) not in cache:
            scenes = test_scenes(subset, per_class, seed)
            dense = dense_embeddings(image_tower, scenes["images"])
            cache[tuple(subset)] = scenes, dense, object_embeddings(dense, scenes["labels"], scenes["objects"])
        scenes, dense, objects = cache[tuple(subset)]
        y = to_vocab[scenes["objects"][:, 1]]
        key = "unseen-among-all" if vocab == "all" else vocab
        for kind in kinds:
            if kind == "scene-objects":
                ceiling = cell_oracle_accuracy(scenes["labels"], scenes["objects"], image_tower.dense_stride)
                report[f"{key}/{kind}"] = {**score(objects, y, text, classes), "ceiling": ceiling}
            elif kind == "mosaic-tiles":
                with torch.no_grad():
                    tiles = normalised_tile_embeddings(image_tower, _multiple_of_four(scenes["crops"]))[: len(y)]
                report[f"{key}/{kind}"] = score(tiles, y, text, classes)
            elif kind == "prompt-images":
                emb, yp = prompt_images(prompt_tower, subset, per_class, seed, style, templates, size, failures)
                report[f"{key}/{kind}"] = score(emb, to_vocab[yp], text, classes)
            elif kind == "scene-objects-by-prompts":
                report[f"{key}/{kind}"] = score(objects, y, prompt_prototypes(classes), classes)
            elif kind == "scene-objects-by-crops":
                report[f"{key}/{kind}"] = score(objects, y, crop_prototypes(classes), classes)
            elif kind == "crops-by-prompts":
                with torch.no_grad():
                    crops = object_crops_framed(prompt_tower, scenes, size)
                report[f"{key}/{kind}"] = score(crops, y, prompt_prototypes(classes), classes)
            elif kind == "scene-objects-by-dual":
                dual = F.normalize(F.normalize(text, dim=-1) + prompt_prototypes(classes), dim=-1)  # (K, d)
                report[f"{key}/{kind}"] = score(objects, y, dual, classes)
            else:
                labels = torch.where(scenes["labels"] >= 0, to_vocab[scenes["labels"].clamp(min=0)], IGNORE)
                report[f"{key}/{kind}"] = dense_miou(dense, labels, text)
    return report


def _multiple_of_four(tiles: torch.Tensor) -> torch.Tensor:
    """Pad the tiles to a whole number of 2x2 mosaics by repeating the first ones."""
    return torch.cat([tiles, tiles[: (-len(tiles)) % 4]])


def format_report(report: dict) -> str:
    """A Markdown table of :func:`evaluate_zero_shot`'s result (classification rows, then dense cost-volume rows)."""
    failures = report.get("failures", 1.0)
    lines = [
        f"class texts in {report.get('words', 'vocabulary')} words; generator style {report.get('style', 'prompt')}, "
        f"failures {'off' if failures == 0 else f'x{failures:g}'}",
        "",
        "| test set / kind | K | accuracy % | chance % | colour % | pattern % | shape % | dense-cell ceiling % "
        "| hard classes % | other classes % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    dense = []
    for key, e in report.items():
        if isinstance(e, dict) and "accuracy" in e:
            cells = [e["accuracy"], e["chance"], e["colour_accuracy"], e["pattern_accuracy"], e["shape_accuracy"]]
            ceiling = f"{100 * e['ceiling']:.1f}" if "ceiling" in e else "-"
            percent = " | ".join(f"{100 * c:.1f}" for c in cells)
            split = " | ".join(
                f"{100 * e[k]:.1f}" if k in e else "-" for k in ("hard_classes_accuracy", "other_classes_accuracy")
            )
            lines.append(f"| {key} | {e['classes']} | {percent} | {ceiling} | {split} |")
        elif isinstance(e, dict) and "mIoU" in e:
            dense.append(f"| {key} | {e['classes']} | {e['mIoU']:.1f} | {e['chance']:.1f} |")
    if dense:
        head = "| test set / dense cost volume alone | K | mIoU % | chance mIoU % |"
        lines += ["", head, "|---|---|---|---|", *dense]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """python -m dpseg.quickstart.zeroshot [--cache DIR] [--steps N] [--no-text-gap] [--no-style-gap]
    [--no-generator-failures] [--generator-images]."""
    import argparse
    import copy
    import time

    parser = argparse.ArgumentParser(prog="python -m dpseg.quickstart.zeroshot", description=main.__doc__)
    parser.add_argument("--cache", default=".dpseg_cache/synthetic", help="where the weight file is kept")
    parser.add_argument("--steps", type=int, default=PretrainSettings.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=20, help="test objects per class")
    parser.add_argument("--no-text-gap", action="store_true", help="captions use the vocabulary's pattern words")
    parser.add_argument("--no-style-gap", action="store_true", help="generator images drawn like the scenes")
    parser.add_argument(
        "--no-generator-failures", action="store_true", help="the generator draws every class faithfully"
    )
    parser.add_argument(
        "--generator-images",
        action="store_true",
        help="the pretraining pool also holds generator images (world v2's pool; the default pool has none)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument(
        "--tower",
        default="",
        help="timm name of the image tower (default: the synthetic preset's dpseg_convnext_nano_os16, dense "
        "embedding at stride 16; dpseg_convnext_nano = the plain ConvNeXt, stride 32)",
    )
    parser.add_argument(
        "--attribute-weight",
        type=float,
        default=PretrainSettings.attribute_weight,
        help="weight of the image-side colour/pattern/shape heads during pretraining (0 = off)",
    )
    parser.add_argument("--scenes", type=int, default=PretrainSettings.scenes, help="rendered scenes in the pool")
    parser.add_argument(
        "--pool-size", type=int, default=PretrainSettings.pool_size, help="rendered 64-px tiles in the pool"
    )
    parser.add_argument(
        "--ship",
        action="store_true",
        help="(maintainers) copy the weights, float16, with this report, into the package's shipped weights",
    )
    parser.add_argument(
        "--weights",
        help="check this tiny CLIP weight file (e.g. one of an earlier world version) instead of the one pretrained "
        "with the settings above; the settings then only choose the class words and the generator",
    )
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    settings = PretrainSettings(
        steps=args.steps,
        seed=args.seed,
        text_gap=not args.no_text_gap,
        style_gap=not args.no_style_gap,
        generator_images=args.generator_images,
        attribute_weight=args.attribute_weight,
        scenes=args.scenes,
        pool_size=args.pool_size,
    )
    base = build_config("synthetic")
    if args.tower:
        base.model.clip_model_cfg["vision_cfg"]["timm_model_name"] = args.tower
    if args.weights and args.ship:
        raise InputError("--ship ships the weights pretrained with these settings; it does not take --weights")
    path = Path(args.weights) if args.weights else pretrained_clip(base, args.cache, settings)
    cfg = copy.deepcopy(base)
    cfg.model.clip_pretrained = str(path)
    style = "prompt" if settings.style_gap else "scene"
    failures = 0.0 if args.no_generator_failures else 1.0
    reports = {
        w: evaluate_zero_shot(cfg, per_class=args.per_class, words=w, style=style, failures=failures)
        for w in (WORDS if settings.text_gap else WORDS[:1])
    }
    for report in reports.values():
        print(format_report(report), end="\n\n")
    if args.ship:
        print(f"shipped: {ship(path, reports)}")
    if args.json:
        blob = {"weights": str(path), "seconds": round(time.time() - t0, 1), "settings": vars(args), **reports}
        atomic_write_json(args.json, blob)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

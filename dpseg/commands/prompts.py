"""Build, extend and inspect prompt banks (text + visual prompts of a vocabulary).

  dpseg prompts build --vocab ade150 --generator DIR_OR_HUB_ID --out banks/ade150 [--checkpoint CKPT | --preset ...]
  torchrun --nproc_per_node 8 -m dpseg prompts build ...     (each rank builds its share of the classes)
  dpseg prompts add-exemplars --bank banks/ade150 --folder my_exemplars/    (folder/<class name>/*.jpg)
  dpseg prompts info banks/ade150 [--vocab ade150]

A build can be interrupted at any time and resumed by running the same command again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from dpseg.commands import add_config_arguments, config_from_args, main
from dpseg.errors import ConfigError, InputError
from dpseg.vocab import read_class_list

# the models, banks, generators and torch.distributed are imported where they are used: `dpseg prompts --help` stays
# instant


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="generate and encode the visual prompts (and text prompts) of a vocabulary")
    b.add_argument(
        "--vocab",
        required=True,
        help="dataset vocabulary name (ade150, ade847, coco, ...) or a class-list file "
        "(.txt one per line, or .json list)",
    )
    b.add_argument("--out", required=True, help="bank directory (created, or resumed if it exists)")
    b.add_argument(
        "--generator", help="diffusers pipeline folder or hub id, or 'synthetic' (default: prompts.generator)"
    )
    b.add_argument(
        "--images-per-class",
        type=int,
        help="share N images across the templates instead of one per template (a deviation)",
    )
    b.add_argument("--keep-images", action="store_true", default=None, help="also save the generated images as PNG")
    b.add_argument("--batch-size", type=int, help="images per generator call (default: prompts.batch_size)")
    _model_arguments(b, add_config_arguments)
    e = sub.add_parser(
        "add-exemplars", help="set classes' visual prompts from your own images (folder/<class name>/*.jpg)"
    )
    e.add_argument("--bank", required=True, help="bank directory (created if it does not exist)")
    e.add_argument("--folder", required=True, help="folder with one sub-folder of images per class")
    _model_arguments(e, add_config_arguments)
    i = sub.add_parser("info", help="describe a bank (key, classes, sources, size)")
    i.add_argument("bank", help="bank directory")
    i.add_argument("--vocab", help="also report which classes of this vocabulary are missing")
    i.add_argument("--json", action="store_true", help="print JSON")


def _model_arguments(p: argparse.ArgumentParser, add_config_arguments) -> None:
    p.add_argument(
        "--checkpoint", help="DPSeg checkpoint folder or hub id: use its encoders (else the CLIP of the config)"
    )
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda:$LOCAL_RANK if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(p)


def _device(args) -> str:
    import torch

    from dpseg.distributed import launched

    if args.device:  # checked like every --device: a CUDA request without CUDA is one line, not a driver traceback
        from dpseg.evaluation.runtime import resolve_device

        return str(resolve_device(args.device, what="--device", error=InputError))
    return f"cuda:{launched()[2]}" if torch.cuda.is_available() else "cpu"


def load_encoders(args, device: str):
    """(config, visual-prompt encoder, text tower) from --checkpoint or the config's CLIP, on ``device``."""
    from dpseg.checkpoint import load_model
    from dpseg.clip_loading import build_towers
    from dpseg.config import build_config

    if args.checkpoint:
        model, ckpt_cfg = load_model(args.checkpoint)
        if model.prompt_encoder is None:
            raise InputError(
                f"checkpoint {args.checkpoint} uses text prompts only (preset {ckpt_cfg.preset}) and has no "
                "visual-prompt encoder, so a prompt bank means nothing to it; it needs no bank"
            )
        cfg = build_config(delta=ckpt_cfg.to_dict(), overrides=args.overrides)
        prompt_encoder, text_tower = model.prompt_encoder, model.text_encoder
    else:
        cfg = config_from_args(args)
        if not cfg.model.clip_pretrained:
            raise ConfigError(
                "config key 'model.clip_pretrained' is empty, so the encoders would be random and the bank useless; "
                "pass --checkpoint or set it to a CLIP tag or weight file (--set model.clip_pretrained=...)"
            )
        _, built_encoder, text_tower = build_towers(cfg.model, load_weights=True)
        assert built_encoder is not None  # build_towers makes one unless told not to
        prompt_encoder = built_encoder
    return cfg, prompt_encoder.to(device).eval(), text_tower.to(device).eval()


def _build(args) -> int:
    import dpseg.data.synthetic  # noqa: F401 - registers the "synthetic" generator (--generator synthetic)
    from dpseg.distributed import launched
    from dpseg.errors import short_list
    from dpseg.prompts.bank import PromptBank
    from dpseg.prompts.builder import build_bank
    from dpseg.prompts.generate import get_generator
    from dpseg.prompts.manifest import make_key
    from dpseg.prompts.templates import get_templates

    rank, world, _ = launched()
    names = read_class_list(args.vocab)
    if args.images_per_class is not None and args.images_per_class < 0:
        raise InputError(f"--images-per-class must be >= 0, got {args.images_per_class}")
    for option in ("images_per_class", "keep_images", "batch_size"):
        if getattr(args, option) is not None:
            args.overrides.append(f"prompts.{option}={getattr(args, option)}")
    device = _device(args)
    if args.generator or not args.checkpoint:  # no weights -> fails here, before any heavy loading
        early = config_from_args(args).prompts
        get_generator(args.generator or early.generator, early, device=device)
    cfg, prompt_encoder, text_tower = load_encoders(args, device)
    p = cfg.prompts  # with --checkpoint: its own prompt settings (templates, sampler), then --set
    spec = args.generator or p.generator
    generator = get_generator(spec, p, device=device)
    templates = get_templates(p.templates, p.num_templates)
    key = make_key(prompt_encoder, text_tower, templates, cfg.model.prompt_image_size)
    if rank == 0:
        bank = PromptBank.create(args.out, key, generator.identity, spec, p.seed, p.images_per_class)
    else:
        bank = PromptBank.open(args.out, wait=600)  # rank 0 writes the manifest
        bank.check_key(key)
        bank.check_generation(generator.identity, p.seed, p.images_per_class)
    t0 = time.perf_counter()
    report = build_bank(
        bank,
        names,
        generator,
        prompt_encoder,
        text_tower,
        templates,
        batch_size=p.batch_size,
        keep_images=p.keep_images,
        rank=rank,
        world_size=world,
        progress=rank == 0 and not args.quiet,
    )
    dt = time.perf_counter() - t0
    who = f"rank {rank}/{world}: " if world > 1 else ""
    rate = f", {report.images / dt:.2f} img/s" if report.images and dt > 0 else ""
    print(
        f"{who}built {len(report.built)} classes ({report.images} images) in {dt:.1f}s{rate}; "
        f"{report.skipped} already in the bank"
    )
    if report.repaired:
        print(
            f"{who}rebuilt {len(report.repaired)} damaged class file(s) (content hash mismatch): "
            f"{short_list(report.repaired)}"
        )
    missing = bank.missing(names)
    if missing:
        print(
            f"{who}bank {bank.root}: {len(names) - len(missing)}/{len(names)} classes present; "
            f"other ranks are still building {len(missing)}"
        )
    else:
        print(f"{who}bank {bank.root} is complete for {args.vocab} ({len(names)} classes x {len(templates)} templates)")
    return 0


def _add_exemplars(args) -> int:
    from dpseg.prompts.bank import MANIFEST, PromptBank
    from dpseg.prompts.builder import add_exemplars
    from dpseg.prompts.exemplars import find_exemplars
    from dpseg.prompts.manifest import make_key
    from dpseg.prompts.templates import get_templates

    found = find_exemplars(args.folder)  # before loading any weights: bad folders fail at once
    cfg, prompt_encoder, text_tower = load_encoders(args, _device(args))
    if os.path.exists(os.path.join(os.path.expanduser(args.bank), MANIFEST)):
        bank = PromptBank.open(args.bank)
    else:
        templates = get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
        bank = PromptBank.create(
            args.bank, make_key(prompt_encoder, text_tower, templates, cfg.model.prompt_image_size)
        )
    done = add_exemplars(bank, found, prompt_encoder, text_tower, progress=not args.quiet)
    n = sum(len(v) for v in found.values())
    print(f"set visual prompts of {len(done)} classes from {n} exemplar images in bank {bank.root}")
    return 0


def _info(args) -> int:
    from dpseg.errors import short_list
    from dpseg.prompts.bank import PromptBank

    bank = PromptBank.open(args.bank)
    info = bank.info()
    if args.vocab:
        names = read_class_list(args.vocab)
        info["vocab"], info["missing"] = args.vocab, bank.missing(names)
    if args.json:
        from dpseg.atomic import json_text

        print(json_text(info))
        return 0
    rows = [
        ("bank", info["path"]),
        ("classes", f"{info['num_classes']} ({', '.join(f'{v} {k}' for k, v in info['sources'].items()) or 'none'})"),
        ("templates", f"{info['num_templates']} (id {info['templates_id']})"),
        ("visual-prompt encoder", info["prompt_encoder"]),
        ("text tower", info["text_tower"]),
        ("generator", info["generator"] or "(none: exemplars only)"),
        ("generator source", info["generator_spec"] or "-"),
        ("seed / images per class", f"{info['seed']} / {info['images_per_class'] or 'one per template'}"),
        ("prompt image size", info["prompt_image_size"]),
        ("dims d / D2-D4", f"{info['embed_dim']} / {info['stage_dims']}"),
        ("kept images", info["kept_images"]),
        ("size", f"{info['size_mb']} MB"),
        ("created", info.get("created", "?")),
    ]
    rows.append(("integrity", _integrity_line(info["integrity"], bank)))
    if info["temp_files"]:
        rows.append(
            (
                "stray temp files",
                f"{info['temp_files']} (from an interrupted write; ignored, removed by the next build)",
            )
        )
    if args.vocab:
        rows.append(
            (
                f"missing of {args.vocab}",
                f"{len(info['missing'])}" + (f": {short_list(info['missing'])}" if info["missing"] else ""),
            )
        )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _integrity_line(integrity: dict, bank) -> str:
    ok, old, bad = len(integrity["ok"]), len(integrity["unverified"]), integrity["damaged"]
    parts = [f"{ok} class file(s) verified (SHA-256)"]
    if integrity["manifest"][0] != "ok":
        parts.append(f"manifest.json {integrity['manifest'][0]}: {integrity['manifest'][1]}")
    if old:
        parts.append(f"{old} without a content hash (written by an older dpseg; cannot be checked)")
    if bad:
        why = bad[0][1]
        parts.append(
            f"{len(bad)} DAMAGED ({', '.join(f for f, _ in bad[:5])}; first: {why}) - rebuild them with "
            f"'{bank.build_command()}', which rebuilds damaged files"
        )
    return "; ".join(parts)


def run(args) -> int:
    handlers = {"build": _build, "add-exemplars": _add_exemplars, "info": _info}
    return handlers[args.action](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(["prompts", *sys.argv[1:]]))

"""Evaluate a checkpoint on the zero-shot benchmarks and write mIoU tables (JSON + Markdown).

  dpseg eval runs/dpseg-b/final --bank banks/dpseg-b --datasets a847,pc459,a150,pc59,voc20,voc20b
  dpseg eval --datasets runs/quickstart/example         (no checkpoint: the model of the last `dpseg quickstart`)
  torchrun --nproc_per_node 4 -m dpseg eval CKPT --bank BANK          (images split over GPUs, same numbers)

Prompts come from a prompt bank (--bank, default: the checkpoint's prompts.bank); --text-only uses text prompts
alone and is only valid for text-only models. With eval.two_pass (default on) both passes are reported.
Finished datasets are kept in OUTPUT/results.json and skipped on a rerun with the same settings (--force redoes
them). Protocol options: --protocol, or --set eval.KEY=VALUE (see 'dpseg config --preset dpseg-b').
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dpseg.errors import DataError, InputError
from dpseg.quickstart import default_artifacts

# torch and the evaluation machinery are imported where they are used: `dpseg eval --help` stays instant
if TYPE_CHECKING:
    import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument(
        "checkpoint",
        nargs="?",
        help="checkpoint directory (config.json + model.safetensors) or hub "
        "id (default: the model of the last `dpseg quickstart`, with its prompt bank)",
    )
    parser.add_argument(
        "--datasets",
        help="comma-separated: a847,pc459,a150,pc59,voc20,voc20b,coco171 or custom PATH[:SPLIT] "
        "(default: the config's eval.datasets)",
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--bank", help="prompt bank directory (dpseg prompts build)")
    src.add_argument("--text-only", action="store_true", help="no visual prompts: text prompts only (text-only models)")
    parser.add_argument("--root", help="datasets root (default: data.root, $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--output", help="results folder (default: CHECKPOINT/eval)")
    parser.add_argument(
        "--protocol", choices=["whole", "slide"], help="whole image (SED, default) or sliding window (CAT-Seg)"
    )
    parser.add_argument(
        "--two-pass", action=argparse.BooleanOptionalAction, default=None, help="report the refined second pass too"
    )
    parser.add_argument(
        "--max-images", type=int, help="evaluate only the first N images of each dataset (quick checks)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:1, cpu")
    parser.add_argument("--force", action="store_true", help="recompute datasets already in the results file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="eval.KEY=VALUE",
        help="override an eval setting, e.g. --set eval.class_chunk=64 (repeatable)",
    )


def _distributed(device_arg: str) -> tuple[int, torch.device]:
    """Start torch.distributed under torchrun; returns (rank, device)."""
    from dpseg import distributed
    from dpseg.evaluation.runtime import resolve_device

    _, world, local = distributed.launched()
    device = resolve_device(device_arg, local if world > 1 else 0, what="--device", error=InputError)
    distributed.start(device)
    return distributed.rank_world()[0], device


def _eval_config(cfg, args):
    from dpseg.config import build_config

    for text in args.overrides:
        if not text.strip().startswith("eval."):
            raise InputError(
                f"--set {text}: only eval.* settings can change at evaluation (the model is fixed by the checkpoint)"
            )
    if args.max_images is not None and args.max_images < 0:
        raise InputError("--max-images must be >= 0 (0 = all images)")
    full = build_config(preset=cfg.preset, delta=cfg.to_dict(), overrides=args.overrides)
    changes = {
        k: v
        for k, v in (("protocol", args.protocol), ("two_pass", args.two_pass), ("max_images", args.max_images))
        if v is not None
    }
    return dataclasses.replace(full.eval, **changes)


def _build_datasets(names: list[str], root: str) -> dict:
    from dpseg.data.catalog import build_dataset

    out, errors = {}, []
    for name in names:
        try:
            out[name] = build_dataset(name, root=root)  # custom folders: PATH (val split) or PATH:SPLIT
        except (DataError, InputError) as e:
            errors.append((name, str(e)))
    if errors:
        more = f" (also unavailable: {', '.join(n for n, _ in errors[1:])})" if len(errors) > 1 else ""
        raise DataError(f"{errors[0][1]}{more}")
    return out


class _Prompts:
    """Prompts per vocabulary through the one resolver; evaluation never runs a visual-prompt model degraded."""

    def __init__(self, model, cfg, bank_dir: str, text_only: bool):
        from dpseg.prompts.templates import model_templates

        self.model, self.templates = model, model_templates(cfg)
        self.bank = None if text_only or not bank_dir else bank_dir
        if text_only and model.needs_visual_prompts:
            raise InputError(
                f"this model needs visual prompts (prompt_type={model.prompt_type}, visual cost volumes at "
                f"{list(model.visual_scales)}); pass --bank DIR instead of --text-only"
            )
        self.source = f"bank {Path(self.bank).resolve()}" if self.bank else "text-only"

    def __call__(self, vocabulary: list[str], device):
        from dpseg.prompts.resolve import resolve_prompts

        return resolve_prompts(
            self.model, self.templates, vocabulary, bank=self.bank, device=device, what="the evaluation vocabulary"
        ).prompts


def run(args: argparse.Namespace) -> int:
    from dpseg import distributed
    from dpseg.checkpoint import load_model
    from dpseg.evaluation.evaluator import evaluate
    from dpseg.evaluation.inference import Inference
    from dpseg.evaluation.results import is_finished, load_results, markdown_table, save_results
    from dpseg.prompts.resolve import prompt_fingerprint
    from dpseg.weights import state_fingerprint

    rank, device = _distributed(args.device)
    checkpoint, bank = args.checkpoint, args.bank
    if checkpoint is None:  # the quickstart's model, as `dpseg segment` and the demo do
        checkpoint, quickstart_bank = default_artifacts()
        if bank is None and not args.text_only and quickstart_bank is not None:
            bank = str(quickstart_bank)
        if rank == 0:
            print(f"no checkpoint given: evaluating the quickstart model {checkpoint}", file=sys.stderr)
    model, cfg = load_model(checkpoint, device=device)
    ecfg = _eval_config(cfg, args)
    names = [n.strip() for n in (args.datasets.split(",") if args.datasets else ecfg.datasets) if n.strip()]
    if not names:
        raise InputError("no datasets to evaluate: pass --datasets a150,pc59,...")
    datasets = _build_datasets(names, args.root if args.root is not None else cfg.data.root)
    prompts_for = _Prompts(model, cfg, bank if bank is not None else cfg.prompts.bank, args.text_only)
    ckpt_dir = Path(checkpoint)
    hub_dir = Path(f"eval-{str(checkpoint).replace('/', '-')}")
    out_dir = Path(args.output) if args.output else (ckpt_dir / "eval" if ckpt_dir.is_dir() else hub_dir)
    results = load_results(out_dir / "results.json", str(checkpoint))
    results["checkpoint"] = str(checkpoint)  # another model is caught by the weight fingerprint in the settings
    model_fp = state_fingerprint(model)
    for name, ds in datasets.items():
        prompts = prompts_for(ds.vocabulary, device)
        # --two-pass asks for refinement (an error where it cannot run); the default refines where it can
        inference = Inference(model, prompts, ecfg, two_pass=args.two_pass or None, device=device)
        settings = {
            "model": model_fp,
            "prompts": prompt_fingerprint(prompts),
            "prompt_source": prompts_for.source,
            **inference.describe(),
            "max_images": ecfg.max_images,
            "images_in_dataset": len(ds),
        }
        if is_finished(results, name, settings, args.force, out_dir / "results.json"):
            if rank == 0:
                print(f"{name}: already in {out_dir / 'results.json'}, skipped (--force to redo)")
            continue
        res = evaluate(inference, ds, progress=not args.no_progress and rank == 0)
        results["datasets"][name] = {"settings": settings, "title": getattr(ds, "name", name), **res}
        if rank == 0:
            passes = ", ".join(
                f"{k} mIoU {res[k]['mIoU']:.2f}" for k in ("pass1", "pass2") if k in res and res[k]["mIoU"] is not None
            )
            print(f"{name}: {passes} ({res['num_images']} images, {res['seconds']:.0f} s)")
            save_results(results, out_dir)
    if rank == 0:
        json_path, md_path = save_results(results, out_dir)
        print("\n" + markdown_table(results))
        print(f"results: {json_path} and {md_path}")
    distributed.barrier()
    return 0

"""Prompt-bank throughput: images/s of generation (text-to-image) and of encoding (visual-prompt encoder).

  python benchmarks/bench_prompt_bank.py                       # CPU: tiny random SD pipeline, dpseg-tiny towers
  python benchmarks/bench_prompt_bank.py --preset dpseg-b      # CPU: tiny pipeline, real ConvNeXt-B encoder sizes
  python benchmarks/bench_prompt_bank.py --generator /path/to/stable-diffusion-v1-5 --preset dpseg-b \
      --device cuda --images 64 --classes 4                    # GPU: real SD-1.5 (DPM-Solver++ 25 steps, 512²)

Encoder speed does not depend on the weights, so the towers are random unless --load-weights is given.
Reports: generation img/s, visual-prompt encoding img/s, text-tower sentences/s, an end-to-end ``bank.build``
img/s (generation + encoding + writing) and the projected single-device time for A-847 × 80 templates.
Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from dpseg.atomic import atomic_write_json


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def run(args) -> dict:
    import torch

    from dpseg.clip_loading import build_towers
    from dpseg.config import build_config
    from dpseg.prompts.bank import PromptBank
    from dpseg.prompts.builder import build_bank
    from dpseg.prompts.exemplars import encode_prompt_images
    from dpseg.prompts.generate import generator_prompt, get_generator, image_seed
    from dpseg.prompts.manifest import make_key
    from dpseg.prompts.templates import get_templates
    from dpseg.prompts.tiny_pipeline import make_tiny_pipeline

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_prompt_bank_"))
    tiny = args.generator == "tiny"
    defaults = ["prompts.resolution=64", "prompts.steps=4"] if tiny else []
    cfg = build_config(
        args.preset, overrides=defaults + ([] if args.load_weights else ["model.clip_pretrained="]) + args.set
    )
    spec = str(make_tiny_pipeline(tmp / "tiny-sd")) if tiny else args.generator
    gen = get_generator(spec, cfg.prompts, device=str(device))
    _, prompt, text = build_towers(cfg.model, load_weights=args.load_weights)
    prompt, text = prompt.to(device).eval(), text.to(device).eval()
    templates = get_templates(cfg.prompts.templates, cfg.prompts.num_templates)
    names = [f"class {i}" for i in range(args.classes)]
    sentences = [generator_prompt(templates[i % len(templates)], "cat") for i in range(args.images)]
    seeds = [image_seed(0, "cat", i) for i in range(args.images)]
    bs = args.batch_size or cfg.prompts.batch_size

    gen.generate(sentences[:1], seeds[:1])  # warm-up: loads the pipeline
    images, gen_s = _timed(
        lambda: [
            im for b in range(0, len(sentences), bs) for im in gen.generate(sentences[b : b + bs], seeds[b : b + bs])
        ],
        device,
    )
    size = cfg.model.prompt_image_size
    encode_prompt_images(prompt, images[: args.encode_batch_size], size, args.encode_batch_size)  # warm-up
    _, enc_s = _timed(
        lambda: [encode_prompt_images(prompt, images, size, args.encode_batch_size) for _ in range(args.repeat)], device
    )
    _, text_s = _timed(lambda: text.encode(names, templates), device)

    bank = PromptBank.create(tmp / "bank", make_key(prompt, text, templates, size), gen.identity, spec)
    report, build_s = _timed(
        lambda: build_bank(
            bank, names, gen, prompt, text, batch_size=bs, encode_batch_size=args.encode_batch_size, progress=False
        ),
        device,
    )
    e2e = report.images / build_s
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "generator": gen.identity,
        "preset": args.preset,
        "prompt_image_size": size,
        "templates": len(templates),
        "generation_img_per_s": round(len(images) / gen_s, 3),
        "encoding_img_per_s": round(args.repeat * len(images) / enc_s, 2),
        "text_sentences_per_s": round(len(names) * len(templates) / text_s, 1),
        "build_img_per_s": round(e2e, 3),
        "build_share_generation": round(report.generate_seconds / build_s, 3),
        "a847x80_hours_one_device": round(847 * 80 / e2e / 3600, 2),
        "settings": {
            "images": args.images,
            "classes": args.classes,
            "batch_size": bs,
            "encode_batch_size": args.encode_batch_size,
            "steps": cfg.prompts.steps,
            "resolution": cfg.prompts.resolution,
            "scheduler": cfg.prompts.scheduler,
        },
    }
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--generator", default="tiny", help="'tiny' (random toy SD built here), a diffusers folder or hub id"
    )
    p.add_argument("--preset", default="dpseg-tiny")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=16, help="images generated for the generation timing")
    p.add_argument("--classes", type=int, default=2, help="classes in the end-to-end bank.build timing")
    p.add_argument("--batch-size", type=int, default=0, help="generator batch (0 = prompts.batch_size)")
    p.add_argument("--encode-batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3, help="encoding passes over the generated images")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads (0 = torch default; 1 is fastest on a busy machine)"
    )
    p.add_argument(
        "--load-weights", action="store_true", help="load the preset's CLIP weights (speed does not need them)"
    )
    p.add_argument("--out", default="benchmarks/results/prompt_bank.json")
    args = p.parse_args()
    result = run(args)
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), result, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Training step time and peak memory: the engine's optimizer, precision and loss on random data.

    python benchmarks/bench_train.py --preset dpseg-b --device cuda --batch 4 --crop 768 --classes 171   # the paper
    python benchmarks/bench_train.py --preset dpseg-b --batch 2 --crop 256 --classes 20                  # CPU, reduced

One step = forward with the training vocabulary's prompts, BCE loss, backward, full-model gradient clipping,
AdamW step - exactly what ``dpseg/engine/train.py`` does per iteration, minus data loading. Random weights and
data: step time does not depend on their values. Reports the median of ``--steps`` steps after ``--warmup`` and the
peak memory (CUDA max allocated, or the process peak RSS on CPU). Prints one JSON line per setting and a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch


def run(args) -> dict:
    from dpseg.build import build_model
    from dpseg.config import build_config
    from dpseg.engine.optim import build_optimizer, make_scaler
    from dpseg.evaluation.runtime import autocast, resolve_precision
    from dpseg.model.dual_prompt import PromptSet
    from dpseg.model.loss import SegmentationLoss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = build_config(args.preset, overrides=["model.clip_pretrained="] + args.set)
    torch.manual_seed(0)
    model = build_model(cfg, load_clip_weights=False).to(device).train()
    K, M = args.classes, model.num_templates
    d, D = model.text_encoder.embed_dim, model.image_encoder.stage_dims
    prompts = PromptSet(
        [f"c{i}" for i in range(K)],
        torch.randn(K, M, d),
        torch.randn(K, M, d),
        [torch.randn(K, M, D[j]) for j in range(3)],
    ).to(device)
    precision = resolve_precision(args.precision, device)
    optimizer = build_optimizer(model, cfg.train, device)
    scaler = make_scaler(precision, device)
    criterion = SegmentationLoss(cfg.train.loss_ignore)
    trainable = [p for p in model.parameters() if p.requires_grad]
    images = torch.rand(args.batch, 3, args.crop, args.crop, device=device)
    labels = torch.randint(-1, K, (args.batch, args.crop, args.crop), device=device)

    def step():
        with autocast(precision, device):
            logits = model(images, prompts)["logits"]
        loss = criterion(logits.float(), labels)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ) / 2**30
    return {
        "preset": args.preset,
        "device": str(device),
        "precision": precision,
        "batch": args.batch,
        "crop": args.crop,
        "classes": K,
        "templates": M,
        "step_s": statistics.median(times),
        "steps_s": times,
        "peak_mem_gib": peak,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="dpseg-b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--classes", type=int, default=171)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", default="benchmarks/results/train.json")
    args = p.parse_args()
    r = run(args)
    print(json.dumps(r))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print(
        f"{r['preset']} {r['device']} {r['precision']}: batch {r['batch']} x {r['crop']}², "
        f"K={r['classes']}, M={r['templates']}: "
        f"{r['step_s']:.2f} s/step, peak {r['peak_mem_gib']:.2f} GiB"
    )


if __name__ == "__main__":
    main()

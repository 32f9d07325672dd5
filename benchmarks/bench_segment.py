"""Latency of ``Segmenter.segment`` per image: one pass and two passes (refinement), random weights.

    python benchmarks/bench_segment.py --preset dpseg-tiny --classes 10
    python benchmarks/bench_segment.py --preset dpseg-b --classes 10 --size 768 --repeat 2      # CPU: minutes
    python benchmarks/bench_segment.py --preset dpseg-b --classes 150 --device cuda --repeat 10

Prompts are text-only in the degraded mode (V := T, zero stage prompts): the same tensor shapes, hence the same
cost, as bank prompts. Timing covers everything ``segment`` does for an in-memory uint8 image (protocol resize,
encoder, cost volumes, decoder, full-resolution chunked argmax, class statistics); the first call is a warm-up.
Prints a table and writes JSON with the device and thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="dpseg-tiny")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--size", type=int, default=768, help="square test image side (pixels)")
    p.add_argument("--input-size", type=int, default=0, help="override eval.input_size / short_side (0 = preset)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default="benchmarks/results/segment.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from dpseg.build import build_model
    from dpseg.config import build_config
    from dpseg.segmenter import Segmenter

    overrides = ["model.clip_pretrained="]
    if args.input_size:
        overrides += [f"eval.input_size={args.input_size}", f"eval.short_side={args.input_size}"]
    cfg = build_config(args.preset, overrides=overrides)
    torch.manual_seed(0)
    seg = Segmenter(build_model(cfg, load_clip_weights=False), cfg, args.device)
    seg.set_vocabulary([f"class {i}" for i in range(args.classes)], text_only=True)
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    rows = {}
    for refine in (False, True):
        times = []
        for i in range(args.repeat + 1):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            seg.segment(image, refine=refine)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t)
        rows["two passes" if refine else "one pass"] = {"median_s": statistics.median(times), "min_s": min(times)}
    info = {
        "preset": args.preset,
        "classes": args.classes,
        "image": f"{args.size}x{args.size}",
        "model_input": seg.settings.input_size,
        "protocol": seg.settings.protocol,
        "class_chunk": seg.settings.class_chunk,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "repeat": args.repeat,
        "results": rows,
    }
    print(
        f"{args.preset}, K={args.classes}, image {args.size}² -> model {seg.settings.input_size}², {info['device']}, "
        f"{info['threads']} threads"
    )
    for name, r in rows.items():
        print(f"  {name:<10} median {r['median_s'] * 1000:9.1f} ms   min {r['min_s'] * 1000:9.1f} ms")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

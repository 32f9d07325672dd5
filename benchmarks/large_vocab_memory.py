"""Peak memory of one inference pass at a large vocabulary (CPU: process RSS; CUDA: max allocated).

Usage: python benchmarks/large_vocab_memory.py --preset dpseg-b --classes 847 --size 768 --chunk 128
Runs in a fresh process per setting so peaks do not mix. Random weights: memory does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(args) -> dict:
    import torch

    from dpseg.build import build_model
    from dpseg.config import build_config
    from dpseg.model.prompts import PromptSet

    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    cfg = build_config(args.preset, overrides=["model.clip_pretrained="] + args.set)
    model = build_model(cfg, load_clip_weights=False).eval().to(device)
    K, M = args.classes, model.num_templates
    d, D = model.text_encoder.embed_dim, model.image_encoder.stage_dims
    g = torch.Generator().manual_seed(0)
    prompts = PromptSet([f"c{i}" for i in range(K)], torch.randn(K, M, d, generator=g), torch.randn(K, M, d, generator=g),
                        [torch.randn(K, M, D[j], generator=g) for j in range(3)]).to(device)
    x = torch.rand(1, 3, args.size, args.size, generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = time.perf_counter()
    logits = model(x, prompts, class_chunk=args.chunk)["logits"]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    out = {"preset": args.preset, "classes": K, "templates": M, "size": args.size, "chunk": args.chunk,
           "seconds": round(seconds, 2), "logits": list(logits.shape)}
    if device.type == "cuda":
        out["peak_gib_over_weights"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)
        out["peak_gib_total"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out["peak_rss_gib"] = round(peak, 2)
        out["rss_gib_before_forward"] = round(base_rss, 2)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="dpseg-b")
    p.add_argument("--classes", type=int, nargs="+", default=[847])
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--chunk", type=int, nargs="+", default=[128])
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.classes, args.chunk = args.classes[0], args.chunk[0]
        print(json.dumps(measure(args)))
        return
    for k in args.classes:
        for c in args.chunk:
            cmd = [sys.executable, __file__, "--child", "--preset", args.preset, "--classes", str(k), "--size",
                   str(args.size), "--chunk", str(c), "--device", args.device] + sum((["--set", s] for s in args.set), [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            print(res.stdout.strip() or res.stderr.strip()[-2000:], flush=True)


if __name__ == "__main__":
    main()

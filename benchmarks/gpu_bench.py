"""One table of what DPSeg and SED cost on a GPU: latency and peak memory per inference mode, vocabulary size and
precision, and one training step. Run through ``benchmarks/gpu.sh`` (which installs what is missing first).

    python benchmarks/gpu_bench.py                                   # dpseg-b / sed-b, 768², K = 150 and 847
    python benchmarks/gpu_bench.py --device cpu --preset dpseg-tiny --size 64 --classes 5 9 --train-size 64 \\
        --train-classes 3 --train-batch 1 --repeat 1 --warmup 0      # a dry run on a CPU (the test does this)

Random-weight models (speed does not depend on weight values; ``benchmarks/bench_common.py``), prompts as from a
cached bank, one image. Modes: ``sed`` (preset sed-b, SED's released architecture), ``sed_fast`` (its early
rejection at top 8), ``pass1`` (DPSeg Inference I), ``pass1_cl`` (the same with channels-last class maps, the CPU's
layout, to decide the GPU's default), ``pass1_fast`` / ``pass1_fast_cost`` (DPSeg with SED's early rejection, the
first ranking by stage 0's head / by the cost volume before stage 0), ``two_pass`` (the paper's Inference II over
every class) and ``two_pass_present`` (pass 2 over the detected classes only); the two-pass modes give the pass-1 map
``--detected`` classes and early rejection keeps at most ``--survivors`` (bench_common.py says why). Latency: median of
``--repeat`` synchronised calls after ``--warmup``; memory: ``torch.cuda.max_memory_allocated`` with only the
measured model on the GPU (its weights included). Training: dpseg-b, batch ``--train-batch`` at
``--train-size``², ``--train-classes`` classes, the engine's loss, clipping and AdamW (benchmarks/bench_train.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import build, limit_survivors, make_call, random_prompts  # noqa: E402

MODES = ["sed", "sed_fast", "pass1", "pass1_cl", "pass1_fast", "pass1_fast_cost", "two_pass", "two_pass_present"]


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: the process peak (dry runs)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def inference_rows(args, device: torch.device, precision: str) -> list[dict]:
    from dpseg.evaluation.runtime import autocast

    rows = []
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    for mode in args.modes:
        model, _ = build(args.preset, mode.removesuffix("_cl"))  # on the CPU: only the measured model goes over
        model.to(device)
        if mode == "pass1_cl":
            model.channels_last = True
        for K in args.classes:
            prompts = random_prompts(model, K, device, text_only=mode.startswith("sed"))
            call = make_call(model, mode.removesuffix("_cl"), x.to(device), prompts, args.chunk, args.detected)
            reset_peak(device)
            times = []
            with torch.no_grad(), autocast(precision, device):
                for i in range(args.warmup + args.repeat):
                    t = time.perf_counter()
                    call()
                    sync(device)
                    if i >= args.warmup:
                        times.append(time.perf_counter() - t)
            row = {"mode": mode, "classes": K, "precision": precision, "latency_s": statistics.median(times)}
            row.update(peak_mem_gib=peak_gib(device), refined=call.refined)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del prompts, call
        model.to("cpu")
        del model
    return rows


def training_row(args, device: torch.device, precision: str) -> dict:
    from bench_train import run

    reset_peak(device)
    r = run(
        SimpleNamespace(
            preset=args.preset,
            device=str(device),
            precision=precision,
            batch=args.train_batch,
            crop=args.train_size,
            classes=args.train_classes,
            steps=args.train_steps,
            warmup=1,
            threads=0,
            set=[],
        )
    )
    row = {"mode": "train step", "classes": args.train_classes, "precision": r["precision"]}
    row.update(latency_s=r["step_s"], peak_mem_gib=r["peak_mem_gib"], refined=0)
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict], args) -> str:
    lines = [
        "| mode | K | precision | latency (s) | peak memory (GiB) | vs sed (same K, precision) |",
        "|---|---|---|---|---|---|",
    ]
    sed = {(r["classes"], r["precision"]): r for r in rows if r["mode"] == "sed"}
    for r in rows:
        base = sed.get((r["classes"], r["precision"]))
        ratio = f"{r['latency_s'] / base['latency_s']:.2f}x" if base and r["mode"] != "train step" else ""
        what = r["mode"] if r["mode"] != "train step" else f"train step (batch {args.train_batch}, {args.train_size}²)"
        lines.append(
            f"| {what} | {r['classes']} | {r['precision']} | {r['latency_s']:.3f} | {r['peak_mem_gib']:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="dpseg-b", help="the DPSeg preset; sed modes use its SED twin (sed-b)")
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--classes", type=int, nargs="+", default=[150, 847])
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES + ["two_pass_pooled", "two_pass_present_pooled"])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--detected", type=int, default=10)
    p.add_argument("--survivors", type=int, default=24)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-size", type=int, default=768)
    p.add_argument("--train-classes", type=int, default=171)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/gpu.json")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    limit_survivors(args.survivors)
    start = time.perf_counter()
    rows = []
    for precision in args.precisions:
        rows += inference_rows(args, device, precision)
        rows.append(training_row(args, device, precision))
    print(f"\n{table(rows, args)}\n\n(whole run {time.perf_counter() - start:.0f} s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

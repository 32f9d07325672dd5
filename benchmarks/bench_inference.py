"""Inference cost of DPSeg against SED and the bare encoder, per vocabulary size (one process each).

    python benchmarks/bench_inference.py --preset dpseg-b --size 768 --classes 20 150 847          # CPU: ~30 min
    python benchmarks/bench_inference.py --preset dpseg-b --classes 20 150 847 --device cuda --precision bf16

Modes, on random-weight models (speed does not depend on weight values), M templates from the preset:

* ``encoder``  - the image encoder forward alone: the floor;
* ``sed``      - SED itself: preset ``sed-b`` (``sed-l`` for ``--preset dpseg-l``; for other presets the same
  switches: text prompts, upsampled-F_c guidance, ConvNeXt spatial block, SED's class attention, auxiliary heads),
  the architecture whose released checkpoints ``dpseg convert sed`` imports;
* ``sed_fast`` - the same with SED's category early rejection at top-8 (``eval.early_rejection_topk=8``); with
  random weights almost every class would survive, so at most ``--survivors`` do (``bench_common.limit_survivors``);
* ``text_upsampled`` - DPSeg's own SED-like ablation: text-only prompts, upsampled-F_c guidance, DPSeg's decoder
  blocks (the ``sed`` mode of earlier versions of this script);
* ``pass1``    - DPSeg Inference I: dual prompts, visual cost volumes at stages 2-4;
* ``pass1_fast`` - the same with auxiliary heads and early rejection at top-8, at most ``--survivors`` kept;
* ``two_pass`` - DPSeg Inference I + refinement crops + Inference II (re-using the image features), the paper's
  re-decoding of every class (``eval.refine_scope=all``);
* ``two_pass_present`` - the same, re-decoding only the classes present in the pass-1 map
  (``eval.refine_scope=present``).

Prompts are precomputed (a cached bank), so prompt encoding is not timed. The two-pass modes give the pass-1 map
``--detected`` classes in a realistic layout (``benchmarks/bench_common.py``). ``--reference`` switches the decoder's
exact speed-ups off (``DPSeg.set_fast_paths(False)``). Each (mode, K) runs in a fresh subprocess: latency is the
median of ``--repeat`` timed calls after ``--warmup`` calls (also their CPU time); peak memory is the process peak
RSS on CPU (weights included; ``before_call_gib`` is the peak before the first call: weights, prompts, runtime) or
``torch.cuda.max_memory_allocated`` on CUDA; the per-stage breakdown comes from one extra profiled call (labels
``dpseg.*`` in the model code). Prints a table, writes JSON and a PNG plot of latency/memory against K.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import (  # noqa: E402
    MODES,
    SED_CODE_NEEDS_REPO,
    TEXT_ONLY_MODES,
    build,
    limit_survivors,
    make_call,
    random_prompts,
)

STAGES = [
    "dpseg.image_encoder",
    "dpseg.cost_volume",
    "dpseg.cost_embedding",
    "dpseg.visual_cost_volume",
    "dpseg.visual_statistics",
    "dpseg.upsampled_cost",
    "dpseg.decode",
    "dpseg.refine_crops",
]


def child(args) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, cfg = build(args.preset, args.mode, [] if args.mode.startswith("sed") else args.set, device)
    if args.reference:
        model.set_fast_paths(False)
    if args.survivors:
        limit_survivors(args.survivors)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    K = args.classes
    prompts = random_prompts(model, K, device, text_only=args.mode in TEXT_ONLY_MODES)
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    run = make_call(model, args.mode, x, prompts, args.chunk, args.detected, sed_repo=args.sed_repo)

    def call():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return run()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # weights, prompts, runtime
    for _ in range(args.warmup):
        call()
        sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu = [], []
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        call()
        sync()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    out = {
        "mode": args.mode + (":ref" if args.reference else ""),
        "preset": cfg.preset,
        "classes": K,
        "templates": model.num_templates,
        "size": args.size,
        "chunk": args.chunk,
        "latency_s": statistics.median(times),
        "latencies_s": times,
        "cpu_s": statistics.median(cpu),
    }
    if args.mode.startswith("two_pass"):
        out["refined_classes"] = run.refined
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        out["peak_mem_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out["before_call_gib"] = rss_before
    if args.profile:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            call()
            sync()
        key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
        totals = {e.key: getattr(e, key) / 1e6 for e in prof.key_averages() if e.key in STAGES}
        decode = totals.get("dpseg.decode", 0.0)
        inner = sum(totals.get(k, 0.0) for k in STAGES[1:6])
        out["breakdown_s"] = {
            "encoder": totals.get("dpseg.image_encoder", 0.0),
            "cost_volume": totals.get("dpseg.cost_volume", 0.0) + totals.get("dpseg.cost_embedding", 0.0),
            "visual_cost_volumes": totals.get("dpseg.visual_cost_volume", 0.0)
            + totals.get("dpseg.visual_statistics", 0.0),
            "upsampled_cost_guidance": totals.get("dpseg.upsampled_cost", 0.0),
            "decoder": max(0.0, decode - inner),
            "refinement_crops": totals.get("dpseg.refine_crops", 0.0),
        }
    return out


def run_child(args, mode: str, k: int) -> dict:
    cmd = (
        [
            sys.executable,
            __file__,
            "--child",
            "--mode",
            mode,
            "--classes",
            str(k),
            "--preset",
            args.preset,
            "--size",
            str(args.size),
            "--device",
            args.device,
            "--precision",
            args.precision,
            "--repeat",
            str(args.repeat),
            "--warmup",
            str(args.warmup if k < args.warmup_below else 0),
            "--chunk",
            str(args.chunk),
            "--threads",
            str(args.threads),
            "--detected",
            str(args.detected),
            "--survivors",
            str(args.survivors),
        ]
        + (["--reference"] if args.reference else [])
        + (["--sed-repo", args.sed_repo] if args.sed_repo else [])
    )
    profile = args.profile and (not args.profile_classes or k in args.profile_classes)
    cmd += sum((["--set", s] for s in args.set), []) + (["--profile"] if profile else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{mode} K={k} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def targets(results: list[dict]) -> list[str]:
    """The issue's targets as ratios taken in this run (where the needed rows were measured)."""
    at = {(r["mode"], r["classes"]): r for r in results}
    lines = ["", "targets (ratios in this run):"]
    if ("pass1", 150) in at and ("sed", 150) in at:
        ratio = at["pass1", 150]["latency_s"] / at["sed", 150]["latency_s"]
        lines.append(f"  pass 1 / SED at K=150: {ratio:.2f}x (target <= 1.35)")
    for k in sorted({k for _, k in at}):
        for mode in ("two_pass", "two_pass_present"):
            if (mode, k) in at and ("pass1", k) in at:
                ratio = at[mode, k]["latency_s"] / at["pass1", k]["latency_s"]
                lines.append(f"  {mode} / pass 1 at K={k}: {ratio:.2f}x (target <= 1.5)")
    for mode in ("sed", "pass1"):
        if (mode, 847) in at and (mode, 150) in at:
            mem = at[mode, 847]["peak_mem_gib"] / at[mode, 150]["peak_mem_gib"]
            lines.append(f"  {mode} peak memory K=847 / K=150: {mem:.2f}x (target <= 2)")
        rows = sorted((r for (m, _), r in at.items() if m == mode), key=lambda r: r["classes"])
        if len(rows) >= 3:  # linear in K: the per-class slope is the same between consecutive K
            slopes = [(b["latency_s"] - a["latency_s"]) / (b["classes"] - a["classes"]) for a, b in zip(rows, rows[1:])]
            lines.append(
                f"  {mode} latency per added class: "
                + ", ".join(f"{s * 1000:.0f} ms" for s in slopes)
                + " (linear in K: equal slopes)"
            )
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for mode in dict.fromkeys(r["mode"] for r in results):
        rows = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["classes"])
        ks = [r["classes"] for r in rows]
        axes[0].plot(ks, [r["latency_s"] for r in rows], marker="o", label=mode)
        axes[1].plot(ks, [r["peak_mem_gib"] for r in rows], marker="o", label=mode)
    axes[0].set(xlabel="classes K", ylabel="latency per image (s)", title="latency")
    axes[1].set(xlabel="classes K", ylabel="peak memory (GiB)", title="peak memory")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="dpseg-b")
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--classes", type=int, nargs="+", default=[20, 150, 847])
    p.add_argument(
        "--modes",
        nargs="+",
        default=["encoder", "sed", "pass1", "two_pass", "two_pass_present"],
        choices=list(MODES),
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    p.add_argument(
        "--warmup-below",
        type=int,
        default=500,
        help="warm up only for K below this (a call at K=847 on CPU takes minutes: its one-off costs are noise)",
    )
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--detected", type=int, default=10, help="classes present in the pass-1 map (two_pass)")
    p.add_argument("--survivors", type=int, default=24, help="classes early rejection keeps at most (fast modes)")
    p.add_argument(
        "--reference", action="store_true", help="the decoder's exact speed-ups off (DPSeg.set_fast_paths(False))"
    )
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--sed-repo", default="", help="a local checkout of SED (mode sed_code: SED-B's own decoder)")
    p.add_argument("--profile", action="store_true", help="add a per-stage breakdown (one extra call)")
    p.add_argument("--profile-classes", type=int, nargs="*", default=[], help="profile only these K (default: every K)")
    p.add_argument("--skip", nargs="*", default=[], metavar="MODE:K", help="settings not to run, e.g. two_pass:847")
    p.add_argument("--out", default="benchmarks/results/inference")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.classes = args.classes[0]
        print(json.dumps(child(args)))
        return
    if "sed_code" in args.modes and not args.sed_repo:
        raise SystemExit(SED_CODE_NEEDS_REPO)  # before any child runs
    results = []
    for k in args.classes:
        for mode in args.modes:
            if (mode == "encoder" and k != args.classes[0]) or f"{mode}:{k}" in args.skip:
                continue  # the encoder does not depend on K
            r = run_child(args, mode, k)
            results.append(r)
            extra = f"  refined {r['refined_classes']}" if "refined_classes" in r else ""
            print(f"K={k:>4} {mode:<16} {r['latency_s']:8.2f} s  {r['peak_mem_gib']:6.2f} GiB{extra}", flush=True)
    target_lines = targets(results)
    for line in target_lines:
        print(line)
    import torch

    env = {
        "device": args.device,
        "precision": args.precision,
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "preset": args.preset,
        "size": args.size,
        "chunk": args.chunk,
        "detected_cap": args.detected,
    }
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"env": env, "results": results, "targets": target_lines[2:]}, indent=2)
    )
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

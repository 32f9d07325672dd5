"""Where the time of one inference goes, stage by stage: the ``dpseg.*`` labels of the model code under torch.profiler.

    python benchmarks/profile_stages.py --classes 150 847 --modes sed pass1 two_pass two_pass_present --threads 1

Random-weight models (``benchmarks/bench_common.py``: speed does not depend on weight values; the two-pass modes
give the pass-1 map ``--detected`` classes), one warm-up call when ``--warmup`` and one profiled call per (mode, K),
in one process per model so that each row's peak memory is its own. Prints, per mode and K, the seconds of CPU
time (CUDA time on a GPU) under each label - labels are inclusive, ``decode`` contains every per-stage label - and
the operators that took the most self time; writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import MODES, TEXT_ONLY_MODES, build, limit_survivors, make_call, random_prompts  # noqa: E402

# the per-stage labels, in the order of the decoder; the numbered ones are per decoder stage
ORDER = [
    "dpseg.image_encoder",
    "dpseg.decode",
    "dpseg.encoder_guidance",
    "dpseg.visual_statistics",
    "dpseg.cost_volume",
    "dpseg.cost_embedding",
    "dpseg.spatial_aggregation",
    "dpseg.class_aggregation",
    "dpseg.visual_cost_volume",
    "dpseg.upsampled_cost",
    "dpseg.upsample_fuse",
    "dpseg.aux_heads",
    "dpseg.head",
    "dpseg.refine_crops",
]


def child(args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, _ = build(args.preset, args.mode, args.set, device)
    if args.survivors:
        limit_survivors(args.survivors)
    prompts = random_prompts(model, args.classes, device, text_only=args.mode in TEXT_ONLY_MODES)
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    call = make_call(model, args.mode, x, prompts, args.chunk, args.detected)
    if args.warmup:
        call()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t = time.perf_counter()
    with profile(activities=acts) as prof:
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - t
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    self_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    labels: dict[str, float] = defaultdict(float)
    ops = []
    for e in prof.key_averages():
        if e.key.startswith("dpseg."):
            labels[e.key] += getattr(e, key) / 1e6
        else:
            ops.append((e.key, getattr(e, self_key) / 1e6, e.count))
    ops.sort(key=lambda o: -o[1])
    mem = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "preset": args.preset,
        "mode": args.mode,
        "classes": args.classes,
        "size": args.size,
        "threads": args.threads,
        "wall_s": wall,
        "peak_mem_gib": mem,
        "refined_classes": call.refined,
        "labels_s": dict(labels),
        "top_ops": ops[: args.top],
    }


def grouped(labels: dict[str, float]) -> dict[str, float]:
    """Numbered per-stage labels summed into their family, and the decoder's remainder."""
    out: dict[str, float] = defaultdict(float)
    for k, v in labels.items():
        family = k.rsplit(".", 1)[0] if k[-1].isdigit() else k
        out[family] += v
    if "dpseg.decode" in out:
        inner = sum(v for k, v in out.items() if k not in ("dpseg.decode", "dpseg.image_encoder", "dpseg.refine_crops"))
        out["dpseg.decode (other)"] = out["dpseg.decode"] - inner
    return dict(out)


def report(r: dict) -> str:
    lines = [
        f"## {r['preset']} {r['mode']} K={r['classes']} {r['size']}^2, {r['threads']} thread(s): "
        f"{r['wall_s']:.2f} s profiled wall, peak {r['peak_mem_gib']:.2f} GiB"
        + (f", {r['refined_classes']} classes refined" if r["refined_classes"] else ""),
        "",
        "| label | s | per stage (0, 1, 2) |",
        "|---|---|---|",
    ]
    g = grouped(r["labels_s"])
    for name in ORDER + ["dpseg.decode (other)"]:
        if name not in g:
            continue
        stages = [r["labels_s"].get(f"{name}.{s}") for s in range(3)]
        per = ", ".join(f"{v:.2f}" for v in stages if v is not None)
        lines.append(f"| {name} | {g[name]:.2f} | {per} |")
    lines += ["", "| top operators (self time) | s | calls |", "|---|---|---|"]
    lines += [f"| {name} | {s:.2f} | {n} |" for name, s, n in r["top_ops"]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="dpseg-b", help="the DPSeg preset; sed* modes use its SED twin (sed-b)")
    p.add_argument("--modes", nargs="+", default=["sed", "pass1", "two_pass", "two_pass_present"], choices=MODES)
    p.add_argument("--classes", type=int, nargs="+", default=[150])
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--detected", type=int, default=10)
    p.add_argument("--survivors", type=int, default=24, help="early rejection keeps at most this many (fast modes)")
    p.add_argument("--warmup", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", default="benchmarks/results/profile.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.classes = args.classes[0]
        print(json.dumps(child(args)))
        return
    results = []
    for k in args.classes:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", "--mode", mode, "--classes", str(k), "--preset", args.preset]
            for flag in ("size", "threads", "chunk", "detected", "survivors", "device", "top"):
                cmd += [f"--{flag}", str(getattr(args, flag))]
            cmd += sum((["--set", s] for s in args.set), []) + (["--warmup"] if args.warmup else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(f"{mode} K={k} failed:\n{res.stderr[-3000:]}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            results.append(r)
            print(report(r) + "\n", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

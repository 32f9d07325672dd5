"""Cost of the content-hash check on load (README "Integrity"): a checkpoint of the preset's size, random weights.

    python benchmarks/bench_hash.py                       # dpseg-b: a 1.08 GB model.safetensors in a temp folder
    python benchmarks/bench_hash.py --preset dpseg-tiny --repeat 3

Times (median over --repeat, CPU seconds of this process and wall seconds): hashlib SHA-256 streamed over the file,
dpseg's check alone (``safetensors_integrity``), and ``load_model`` with and without the check (the check replaced
by a stub). The page cache is warm (the file was just written), so disk reads are not part of the numbers. The
temporary checkpoint is deleted at the end. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time

import torch


def _timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="dpseg-b")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default="benchmarks/results/hash.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import dpseg.build as build
    import dpseg.checkpoint as checkpoint
    from dpseg import weights
    from dpseg.config import build_config

    cfg = build_config(args.preset)
    folder = tempfile.mkdtemp(prefix="dpseg-bench-hash-")
    try:
        checkpoint.save_model(build.build_model(cfg, load_clip_weights=False), cfg, folder)
        path = os.path.join(folder, checkpoint.WEIGHTS_NAME)
        real = weights.safetensors_integrity

        def sha256_stream():
            h, buf = hashlib.sha256(), bytearray(1 << 23)
            with open(path, "rb") as f:
                while n := f.readinto(buf):
                    h.update(memoryview(buf)[:n])

        def check():
            weights._digests.cache_clear()
            assert real(path)[0] == "ok"

        def load(with_check: bool):
            weights._digests.cache_clear()
            stub = real if with_check else (lambda _: ("ok", "stub"))
            weights.safetensors_integrity = checkpoint.safetensors_integrity = stub
            try:
                checkpoint.load_model(folder)
            finally:
                weights.safetensors_integrity = checkpoint.safetensors_integrity = real

        cases = {
            "hashlib sha256, streamed": sha256_stream,
            "dpseg check alone": check,
            "load_model without the check": lambda: load(False),
            "load_model with the check": lambda: load(True),
        }
        times: dict = {k: [] for k in cases}
        for _ in range(args.repeat):
            for name, fn in cases.items():
                times[name].append(_timed(fn))
        size = os.path.getsize(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = {
        k: {"cpu_s": statistics.median(c for c, _ in v), "wall_s": statistics.median(w for _, w in v)}
        for k, v in times.items()
    }
    print(f"{args.preset}: model.safetensors {size / 1e9:.3f} GB, {args.threads} thread(s), median of {args.repeat}")
    for name, r in rows.items():
        print(f"  {name:30s} {r['cpu_s']:6.2f} CPU s  {r['wall_s']:6.2f} s wall")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(
            {"preset": args.preset, "bytes": size, "threads": args.threads, "repeat": args.repeat, **rows}, f, indent=2
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

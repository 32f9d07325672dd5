"""Throughput of ``dpseg label``: images/s for 1..N processes (GPUs) and several batch sizes, and where the time goes.

    python benchmarks/bench_label.py                                   # CPU: both collections, 1 and 2 processes
    python benchmarks/bench_label.py --device cuda --procs 1,2,4,8 --batches 1,8,32 --large-batches 1,4,8 \\
        --scenes 10000 --large 1000                                    # a GPU machine: one process per GPU

Two collections, made once under ``--work`` (kept between runs):

* ``--scenes`` rendered scenes of the synthetic world (128 px PNG), labelled with the quickstart's DPSeg model and its
  prompt bank, all 75 classes, the checkpoint's own settings (two passes). Without a quickstart model in the cache
  (``dpseg.quickstart.default_artifacts``) ``dpseg quickstart --fast`` runs first (minutes).
* ``--large`` rendered scenes at 768 x 768 saved as JPEG (quality 90), labelled with ``dpseg-b`` at random weights as
  a text-only model (``model.prompt_type=text model.guidance=upsampled``: no prompt bank needed, the ConvNeXt-B
  encoder and the decoder at full size), 10 classes, one pass.

Each (collection, processes P, batch B) is one ``dpseg label`` run into a fresh folder - ``python -m dpseg label``
for P = 1, ``torchrun --standalone --nproc-per-node P -m dpseg label`` otherwise - and its figures come from the
job's own ``progress/stats.json``: images/s = images / the slowest rank's labelling loop (start-up - imports, model
loading, manifest - is reported apart), and the loop's time summed over ranks: decoding (in the loader's worker
processes, in parallel with the model), waiting for decoded images (what the model loop lost to decoding), model
(protocol, network, argmax), writing (PNG, JSON, RLE; in a thread, overlapping the next batch's model time). With
``--repeat N`` each setting runs N times and the fastest run is kept (other jobs on a shared machine only ever slow a
run down). Scaling efficiency = img/s at P / (P x img/s at 1 process,
same batch). On a CPU every process runs one intra-op thread (``--threads`` overrides: on a machine shared with other
jobs OpenMP threads spin against each other, README *Training*), so P processes use P cores: the efficiency says how
well more processes turn more cores into images/s; on GPUs each process drives its own GPU. Prints a Markdown table
and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LARGE_CLASSES = ["person", "car", "tree", "sky", "road", "building", "grass", "dog", "water", "chair"]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def render(folder: Path, count: int, size: int, suffix: str, seed: int) -> Path:
    """``count`` synthetic scenes of ``size`` px in ``folder`` (reused when already there)."""
    import numpy as np
    from PIL import Image

    from dpseg.data.synthetic.render import random_scene
    from dpseg.data.synthetic.world import all_classes

    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(folder.glob(f"*{suffix}"))
    if len(have) == count:
        return folder
    for p in have:
        p.unlink()
    rng, vocab = np.random.default_rng(seed), all_classes()
    start = time.perf_counter()
    for i in range(count):
        scene = random_scene(vocab, rng, size=size, num_objects=(2, 5))
        Image.fromarray(scene.image).save(folder / f"{i:06d}{suffix}", **({"quality": 90} if suffix == ".jpg" else {}))
    log(f"rendered {count} scenes of {size} px into {folder} in {time.perf_counter() - start:.0f} s")
    return folder


def quickstart_model() -> tuple[Path, Path]:
    from dpseg.errors import CheckpointError
    from dpseg.quickstart import default_artifacts

    try:
        model, bank = default_artifacts()
    except CheckpointError:
        log("no quickstart model in the cache: running `dpseg quickstart --fast` first")
        subprocess.run([sys.executable, "-m", "dpseg", "quickstart", "--fast"], check=True, env=_env(0))
        model, bank = default_artifacts()
    assert bank is not None, "the quickstart model has no prompt bank"
    return model, bank


def random_dpseg_b(folder: Path) -> Path:
    """dpseg-b at random weights as a text-only model, saved once."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch

    from dpseg.build import build_model
    from dpseg.checkpoint import save_model
    from dpseg.config import build_config

    cfg = build_config(
        "dpseg-b", overrides=["model.clip_pretrained=", "model.prompt_type=text", "model.guidance=upsampled"]
    )
    torch.manual_seed(0)
    save_model(build_model(cfg, load_clip_weights=False), cfg, folder)
    log(f"saved dpseg-b (random weights, text-only) to {folder}")
    return folder


def _env(threads: int) -> dict:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def label_run(args, name: str, images: Path, out: Path, procs: int, batch: int, extra: list[str]) -> dict:
    if out.exists():
        shutil.rmtree(out)
    head = [sys.executable, "-m", "dpseg"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", "-m", "dpseg"
    ]  # fmt: skip
    cmd = [*head, "label", str(images), "--out", str(out), "--batch-size", str(batch), "--workers", str(args.workers)]
    cmd += ["--device", args.device, "--quiet", *extra]
    threads = args.threads or (1 if args.device == "cpu" else 0)
    log(f"{name}: {procs} process(es), batch {batch}, {threads or 'default'} thread(s) each ...")
    start = time.perf_counter()
    run = subprocess.run(cmd, env={**_env(threads), "GLOO_SOCKET_IFNAME": "lo"}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    stats = json.loads((out / "progress" / "stats.json").read_text())
    row = {
        "collection": name,
        "processes": procs,
        "batch": batch,
        "threads": threads,
        "images": stats["new"],
        "images_per_s": stats["images_per_s"],
        "loop_s": stats["seconds"],
        "startup_s": round(wall - stats["seconds"], 1),
        **stats["stats"],
    }
    took = f"{row['images']} images in {row['loop_s']:.1f} s, start-up {row['startup_s']} s"
    log(f"  {row['images_per_s']:.3g} img/s ({took})")
    return row


def table(rows: list[dict]) -> str:
    base = {(r["collection"], r["batch"]): r["images_per_s"] for r in rows if r["processes"] == 1}
    lines = [
        "| collection | processes | batch | images | img/s | scaling eff. | decode s | waited s | model s | write s "
        "| model % of loop | start-up s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        one = base.get((r["collection"], r["batch"]))
        eff = f"{r['images_per_s'] / (r['processes'] * one):.0%}" if one and r["processes"] > 1 else "-"
        busy = r["model_s"] / max(1e-9, r["loop_s"] * r["processes"])
        lines.append(
            f"| {r['collection']} | {r['processes']} | {r['batch']} | {r['images']} | {r['images_per_s']:.3g} | {eff} "
            f"| {r['decode_s']:.1f} | {r['wait_s']:.1f} | {r['model_s']:.1f} | {r['write_s']:.1f} | {busy:.0%} "
            f"| {r['startup_s']} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    p.add_argument("--procs", default="1,2", help="process counts (GPUs), comma-separated")
    p.add_argument("--batches", default="1,8,32", help="batch sizes for the scenes")
    p.add_argument("--large-batches", default="1,2", help="batch sizes for the 768 px images")
    p.add_argument("--scenes", type=int, default=1000, help="rendered 128 px scenes (0 = skip)")
    p.add_argument("--large", type=int, default=50, help="768 px images for dpseg-b (0 = skip)")
    p.add_argument("--repeat", type=int, default=1, help="runs per setting, the fastest kept (machines shared)")
    p.add_argument("--no-refine", action="store_true", help="scenes: one pass instead of the checkpoint's two")
    p.add_argument("--workers", type=int, help="decoding processes per rank (default: 1 on cpu, 4 on cuda)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per process (0: 1 on cpu, torch's on cuda)")
    p.add_argument("--work", default="benchmarks/results/label", help="where collections, models and runs live")
    p.add_argument("--json", default="benchmarks/results/label.json")
    args = p.parse_args()
    if args.workers is None:
        args.workers = 1 if args.device == "cpu" else 4
    work = Path(args.work)
    procs = [int(x) for x in args.procs.split(",")]
    jobs = []
    if args.scenes:
        model, bank = quickstart_model()
        classes = work / "synthetic_classes.txt"
        from dpseg.data.synthetic.world import all_classes

        classes.parent.mkdir(parents=True, exist_ok=True)
        classes.write_text("".join(c.name + "\n" for c in all_classes()))
        images = render(work / f"scenes-{args.scenes}", args.scenes, 128, ".png", seed=0)
        extra = ["--checkpoint", str(model), "--bank", str(bank), "--classes-file", str(classes)]
        extra += ["--no-refine"] if args.no_refine else []
        what = "scenes 128 px, quickstart model" + (", 1 pass" if args.no_refine else ", 2 passes")
        jobs += [(what, images, b, extra) for b in map(int, args.batches.split(","))]
    if args.large:
        model = random_dpseg_b(work / "dpseg-b-random-text")
        images = render(work / f"large-{args.large}", args.large, 768, ".jpg", seed=1)
        extra = ["--checkpoint", str(model), "--text-only", "--classes", ", ".join(LARGE_CLASSES)]
        jobs += [("768 px JPEG, dpseg-b random", images, b, extra) for b in map(int, args.large_batches.split(","))]
    rows = []
    for name, images, batch, extra in jobs:
        for n in procs:
            folder = work / "runs" / f"{images.name}-p{n}-b{batch}"
            tries = [label_run(args, name, images, folder, n, batch, extra) for _ in range(args.repeat)]
            best = max(tries, key=lambda r: r["images_per_s"])
            rows.append({**best, "tries_images_per_s": [r["images_per_s"] for r in tries]})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print("\n" + table(rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": args.device,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

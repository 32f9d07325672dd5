"""Start-up cost of ``dpseg segment``: what it spends before its first image's inference, next to the floor of
importing torch and open_clip and reading the checkpoint's weights.

    python benchmarks/bench_startup.py                       # the quickstart-sized model (preset synthetic)
    python benchmarks/bench_startup.py --preset dpseg-tiny --repeat 5
    python benchmarks/bench_startup.py --importtime 25       # also the top imports that the floor does not pay

Each measurement runs in a fresh process, ``--repeat`` times (median and min of wall seconds, from before the
interpreter starts to the moment measured):

* ``floor: import torch, open_clip`` - ``python -c "import torch, open_clip"``;
* ``floor: + read the weights`` - the same, then the checkpoint's weights read into memory and made tensors
  (``safetensors.torch.load`` of the file's bytes; ``load_file`` would map the file and read nothing yet);
* ``dpseg segment -> first inference`` - ``dpseg segment IMAGE --checkpoint CKPT --bank BANK --classes ...``
  run through :func:`dpseg.commands.main`, stopped when ``Segmenter.segment`` is first called (arguments parsed,
  options checked, model built and loaded, weights hashed, prompts read from the bank, image listed);
* ``overhead`` = segment minus the floor with weights, of the medians and of the minima (the issue-16 target: at
  most 1 s).

Each row gives the CPU seconds of the measured process up to that moment (``time.process_time``; what a loaded
machine changes least) and its wall seconds.

The checkpoint has random weights (start-up does not depend on their values) and a prompt bank of exemplar
prompts for its classes; both are written to a temporary folder. ``--importtime N`` runs the segment start-up
once more under ``python -X importtime`` and lists the N slowest modules (self time) that the floor does not
import, and the heavy packages (gradio, diffusers, matplotlib, tensorboard, ...) if any was imported. Not a
test: the numbers depend on the machine and its load; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dpseg.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "gradio",
    "diffusers",
    "matplotlib",
    "tensorboard",
    "torch.utils.tensorboard",
    "cv2",
    "scipy",
    "pandas",
    "dpseg.data.synthetic",
    "dpseg.prompts.generate",
    "dpseg.engine",
    "selenium",
    "huggingface_hub",
)

# every measured process prints "MARK <time>" at the moment measured and exits at once (interpreter shutdown, which
# takes seconds after importing torch, is not start-up)
MARK = "; import os, time; print('MARK', time.time(), time.process_time(), flush=True); os._exit(0)"
SEGMENT_PROBE = """
import os, sys, time
from dpseg.segmenter import Segmenter
def _stop(self, *a, **k):
    print("MARK", time.time(), time.process_time(), flush=True)
    os._exit(0)
Segmenter.segment = _stop
from dpseg.commands import main
sys.exit(main(sys.argv[1:]))
"""


def make_checkpoint(preset: str, folder: Path) -> tuple[Path, Path, list[str]]:
    """A random-weight checkpoint of ``preset`` and a prompt bank of exemplar prompts for a few classes."""
    import numpy as np
    import torch
    from PIL import Image

    from dpseg.build import build_model
    from dpseg.checkpoint import save_model
    from dpseg.config import build_config
    from dpseg.prompts.bank import PromptBank
    from dpseg.prompts.builder import add_exemplars
    from dpseg.prompts.manifest import make_key
    from dpseg.prompts.templates import model_templates

    torch.manual_seed(0)
    cfg = build_config(preset, overrides=["model.clip_pretrained="])
    model = build_model(cfg, load_clip_weights=False)
    ckpt = save_model(model, cfg, folder / "ckpt")
    classes = ["red striped star", "blue dotted circle", "green plain square"]
    key = make_key(model.prompt_encoder, model.text_encoder, model_templates(cfg), model.prompt_image_size)
    bank = PromptBank.create(folder / "bank", key)
    rng = np.random.default_rng(0)
    images = {n: [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))] for n in classes}
    add_exemplars(bank, images, model.prompt_encoder, model.text_encoder)
    return ckpt, folder / "bank", classes


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds from spawning ``argv`` to its MARK line, CPU seconds of the process up to that line)."""
    start = time.time()
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({out.returncode}):\n{out.stderr[-2000:]}")
    line = next((x for x in out.stdout.splitlines() if x.startswith("MARK")), None)
    if line is None:
        raise SystemExit(f"no MARK line in the output:\n{out.stdout[-1000:]}\n{out.stderr[-2000:]}")
    _, end, cpu = line.split()
    return float(end) - start, float(cpu)


def import_times(argv: list[str], env: dict) -> dict[str, int]:
    """module -> self import time (microseconds) of one run under ``-X importtime``."""
    out = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True)
    times = {}
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            self_us, _, name = line.split(":", 1)[1].split("|")
            times[name.strip()] = int(self_us)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="synthetic")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the measured processes")
    p.add_argument("--importtime", type=int, default=15, help="list this many extra imports (0 = skip)")
    p.add_argument("--json", default="benchmarks/results/startup.json")
    args = p.parse_args()
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="dpseg-startup-") as tmp:
        tmp = Path(tmp)
        ckpt, bank, classes = make_checkpoint(args.preset, tmp)
        from PIL import Image

        Image.new("RGB", (128, 128), (90, 120, 200)).save(tmp / "scene.png")
        weights = ckpt / "model.safetensors"
        cases = {
            "floor: import torch, open_clip": [py, "-c", "import torch, open_clip" + MARK],
            "floor: + read the weights": [
                py,
                "-c",
                "import torch, open_clip; from safetensors.torch import load; "
                f"load(open({str(weights)!r}, 'rb').read())" + MARK,
            ],
            "dpseg segment -> first inference": [
                py,
                "-c",
                SEGMENT_PROBE,
                "segment",
                str(tmp / "scene.png"),
                "--checkpoint",
                str(ckpt),
                "--bank",
                str(bank),
                "--classes",
                ", ".join(classes),
                "--out",
                str(tmp / "out"),
                "--quiet",
                "--device",
                "cpu",
            ],
        }
        walls: dict[str, list[float]] = {name: [] for name in cases}
        cpus: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):  # interleaved, so that load changes hit every row alike
            for name, argv in cases.items():
                wall, cpu = timed(argv, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
        seg, floor = "dpseg segment -> first inference", "floor: + read the weights"
        overhead = "overhead (segment - floor with weights)"
        summary = {}
        for name in cases:
            cpu, wall = cpus[name], walls[name]
            summary[name] = {
                "cpu_median_s": round(statistics.median(cpu), 3),
                "cpu_min_s": round(min(cpu), 3),
                "wall_median_s": round(statistics.median(wall), 3),
                "wall_min_s": round(min(wall), 3),
                "cpu_runs": [round(x, 3) for x in cpu],
                "wall_runs": [round(x, 3) for x in wall],
            }
        summary[overhead] = {
            key: round(summary[seg][key] - summary[floor][key], 3)
            for key in ("cpu_median_s", "cpu_min_s", "wall_median_s", "wall_min_s")
        }
        print(
            f"preset {args.preset}, weights {weights.stat().st_size / 1e6:.1f} MB, {args.repeat} runs each, "
            f"OMP_NUM_THREADS={args.threads}; seconds (CPU time of the process; wall time, which the machine's load "
            "inflates)"
        )
        print(f"  {'':<42} {'CPU median':>10} {'CPU min':>8} {'wall median':>12} {'wall min':>9}")
        for name, r in summary.items():
            print(
                f"  {name:<42} {r['cpu_median_s']:10.2f} {r['cpu_min_s']:8.2f} {r['wall_median_s']:12.2f} "
                f"{r['wall_min_s']:9.2f}"
            )
        extra = {}
        if args.importtime:
            base = import_times(cases["floor: + read the weights"], env)
            seg = import_times(cases["dpseg segment -> first inference"], env)
            extra = {m: t for m, t in seg.items() if m not in base}
            heavy = sorted(m for m in extra if m in HEAVY)
            print(
                f"\nimports beyond the floor: {len(extra)} modules, {sum(extra.values()) / 1e6:.2f} s self time "
                f"(floor: {len(base)} modules, {sum(base.values()) / 1e6:.2f} s)"
            )
            for m, t in sorted(extra.items(), key=lambda kv: -kv[1])[: args.importtime]:
                print(f"  {t / 1e3:8.1f} ms  {m}")
            print("heavy packages imported beyond the floor: " + (", ".join(heavy) if heavy else "none"))
            summary["imports_beyond_floor"] = {
                "modules": len(extra),
                "self_s": round(sum(extra.values()) / 1e6, 3),
                "heavy": heavy,
            }
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        atomic_write_json(Path(args.json), {"preset": args.preset, "repeat": args.repeat, **summary}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

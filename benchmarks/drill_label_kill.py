"""The kill -9 drill of ``dpseg label``: kill one rank of a torchrun job from outside, run the same command again, and
compare every output with an uninterrupted 1-process run, byte for byte.

    python benchmarks/drill_label_kill.py                      # 200 scenes, 2 processes, rank 0 killed after 60 images
    python benchmarks/drill_label_kill.py --rank 1 --after 30 --scenes 500 --batch 4

Uses the quickstart model and bank (as ``bench_label.py``; ``dpseg quickstart --fast`` first if there is none) on
rendered scenes, one intra-op thread per process. The rank's process id is read from its progress file
(``OUT/progress/rank-R.json``), and it gets SIGKILL once that file reports ``--after`` images done; torchrun then
stops the other rank. Prints what the kill left (label maps without JSON, temporary files, shard lines), the rerun's
start-up line, and the comparison (files that differ, missing or extra; ``progress/`` and ``shards/`` are run
records and are left out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_label import _env, quickstart_model, render  # noqa: E402

RUN_ONLY = ("progress", "shards")


def tree(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] not in RUN_ONLY
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--rank", type=int, default=0, help="the rank to kill")
    p.add_argument("--after", type=int, default=60, help="kill once that rank reports this many images done")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--work", default="benchmarks/results/label-drill")
    args = p.parse_args()
    work = Path(args.work)
    model, bank = quickstart_model()
    from dpseg.data.synthetic.world import all_classes

    classes = work / "classes.txt"
    classes.parent.mkdir(parents=True, exist_ok=True)
    classes.write_text("".join(c.name + "\n" for c in all_classes()))
    images = render(work / f"scenes-{args.scenes}", args.scenes, 128, ".png", seed=2)
    tail = ["label", str(images), "--checkpoint", str(model), "--bank", str(bank), "--classes-file", str(classes)]
    tail += ["--batch-size", str(args.batch), "--workers", "1", "--device", "cpu", "--no-refine"]
    env = {**_env(1), "GLOO_SOCKET_IFNAME": "lo", "DPSEG_PROGRESS": "lines", "DPSEG_PROGRESS_INTERVAL": "5"}
    one, many = work / "one", work / "many"
    for folder in (one, many):
        shutil.rmtree(folder, ignore_errors=True)

    print(f"reference: 1 process, uninterrupted, {args.scenes} scenes", flush=True)
    ref = subprocess.run(
        [sys.executable, "-m", "dpseg", *tail, "--out", str(one)], env=env, text=True, capture_output=True
    )
    assert ref.returncode == 0, ref.stderr[-2000:]

    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.procs}"]
    cmd = [*launch, "-m", "dpseg", *tail, "--out", str(many)]
    print(f"$ torchrun --nproc-per-node {args.procs} -m dpseg {' '.join(tail)} --out {many}", flush=True)
    job = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    progress, pid = many / "progress" / f"rank-{args.rank:05d}.json", None
    while job.poll() is None:
        try:
            stats = json.loads(progress.read_text())
        except (OSError, ValueError):
            stats = {}
        if stats.get("done", 0) >= args.after and not stats.get("finished"):
            pid = stats["pid"]
            os.kill(pid, signal.SIGKILL)
            print(f"kill -9 {pid} (rank {args.rank}, {stats['done']} of its {stats['todo']} images done)", flush=True)
            break
        time.sleep(0.05)
    out, _ = job.communicate()
    assert pid is not None, "the job ended before the kill; raise --scenes or lower --after\n" + out[-2000:]
    print(f"torchrun exit status {job.returncode}")
    labels = many / "labels"
    maps, done = list(labels.rglob("*.png")), list(labels.rglob("*.json"))
    temps = [q for q in many.rglob(".*.tmp")]
    lines = sum(len(s.read_bytes().splitlines()) for s in (many / "shards").glob("*.jsonl"))
    ann = "present" if (many / "annotations.json").exists() else "absent"
    print(
        f"left: {len(done)} images done, {len(maps) - len(done)} label maps without JSON, {len(temps)} temporary "
        f"files, {lines} shard lines, annotations.json {ann}"
    )

    print("rerun: the same command", flush=True)
    rerun = subprocess.run(cmd, env=env, text=True, capture_output=True)
    said = [line for line in rerun.stderr.splitlines() if line.startswith(("label:", "labelled"))]
    print("\n".join(f"  {line}" for line in said))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    a, b = tree(one), tree(many)
    differ = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    print(
        f"compared {len(a)} files of the uninterrupted 1-process run: {len(differ)} differ, "
        f"{len(a.keys() - b.keys())} missing, {len(b.keys() - a.keys())} extra"
    )
    coco = json.loads((many / "annotations.json").read_text())
    ids = [i["id"] for i in coco["images"]]
    print(f"annotations.json: {len(ids)} images, {len(set(ids))} distinct ids, {len(coco['annotations'])} annotations")
    return 0 if not differ and a.keys() == b.keys() else 1


if __name__ == "__main__":
    sys.exit(main())

"""Are two quickstart caches' trained runs the same? (issue #23: does a rerun of the default quickstart reproduce
its table?)

    python benchmarks/compare_runs.py /tmp/first-run/cache .dpseg_cache/quickstart

Pairs every trained run (``runs/*/final``) of cache A with the run of cache B trained with the same config - paths
aside: the datasets, bank and tiny CLIP are named by their content keys, and two dataset folders count as the same
when their training images and labels are byte-identical - and compares the weights tensor by tensor. Prints, per
pair, the number of tensors that differ and the largest difference; runs of A without a partner in B are listed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

_KEYED = re.compile(r"[^\"]*/((?:bank|synthetic)-[0-9a-f]+|tiny-clip-[0-9a-f]+\.safetensors)")


def training_data_hash(dataset: Path) -> str:
    """A hash of the training split's images and labels (the folder's name also keys its val/test counts)."""
    h = hashlib.sha256()
    for sub in ("images", "labels"):
        for f in sorted((dataset / sub / "train").glob("*")):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def run_signature(final: Path) -> str:
    """The run's training config (eval and metadata left out) with paths replaced by what they hold."""
    cfg = json.loads((final / "config.json").read_text())
    for key in ("dpseg", "eval"):
        cfg.pop(key, None)
    cfg["train"].pop("output_dir", None)
    train_dataset = Path(cfg["data"].pop("train_dataset"))
    if not train_dataset.is_dir():  # relative to where the quickstart ran, or moved: the world's folder in this cache
        train_dataset = final.parents[2] / train_dataset.parent.name / train_dataset.name
    cfg["data"]["train_data"] = training_data_hash(train_dataset)
    return _KEYED.sub(r"\1", json.dumps(cfg, sort_keys=True))


def runs(cache: Path) -> dict[str, Path]:
    out = {}
    for final in sorted(cache.glob("runs/*/final")):
        if (final / "model.safetensors").is_file() and (final / "config.json").is_file():
            out[run_signature(final)] = final
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="a quickstart cache (the folder holding runs/)")
    ap.add_argument("b", type=Path)
    args = ap.parse_args()
    ra, rb = runs(args.a), runs(args.b)
    same = unmatched = 0
    for sig, fa in ra.items():
        fb = rb.get(sig)
        if fb is None:
            print(f"{fa.parent.name}: no run with this config in {args.b}")
            unmatched += 1
            continue
        a, b = load_file(fa / "model.safetensors"), load_file(fb / "model.safetensors")
        differ = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
        worst = max(((a[k] - b[k]).abs().max().item() for k in differ if k in b), default=0.0)
        same += not differ
        print(f"{fa.parent.name} ~ {fb.parent.name}: {len(differ)} of {len(a)} tensors differ (max |diff| {worst:g})")
    print(f"{same} of {len(ra) - unmatched} paired runs identical; {unmatched} without a partner")


if __name__ == "__main__":
    main()

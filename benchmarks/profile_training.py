"""Where a training step's time goes: forward, loss, backward, optimizer and data, under torch.profiler.

    python benchmarks/profile_training.py --variant dual --steps 60 --threads 1      # the quickstart's DPSeg run

Trains ``--steps`` steps of one quickstart run (the synthetic preset with the variant's switches, the quickstart's
datasets and prompt bank in ``--cache``, made there if missing) through the real engine
(:func:`dpseg.engine.train.train`) into a temporary folder, one thread as the quickstart's workers run. Prints the
share of the profiled CPU time in each part and the operators with the most self time. Shares, not seconds, are
the figures to compare: absolute times on a shared machine vary from session to session.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def part_of(key: str) -> str | None:
    """The part of a step a profiler row (a top-level one) belongs to."""
    if key.startswith("autograd::engine::evaluate_function"):
        return "backward"
    if key.startswith("Optimizer.step") or key.startswith("Optimizer.zero_grad"):
        return "optimizer"
    if key.startswith("enumerate(DataLoader)"):
        return "data"
    if key in ("dpseg.image_encoder", "dpseg.decode"):
        return "forward"
    if key == "dpseg.loss":  # labelled by this script
        return "loss"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="dual")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=None, help="the quickstart's cache (default: its default)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--budget", default="default", help="the quickstart budget whose datasets are trained on")
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile, record_function

    from dpseg.config import build_config
    from dpseg.data.synthetic.folders import build_datasets
    from dpseg.data.synthetic.world import all_classes
    from dpseg.engine.train import train
    from dpseg.model import loss as loss_module
    from dpseg.quickstart import default_cache
    from dpseg.quickstart import experiment as ex
    from dpseg.quickstart.run import BUDGETS

    torch.set_num_threads(args.threads)
    if args.budget not in BUDGETS:
        raise SystemExit(f"--budget must be one of {', '.join(sorted(BUDGETS))}, got {args.budget!r}")
    budget = BUDGETS[args.budget]
    cache = args.cache or default_cache()
    shipped = sorted((Path(ex.__file__).parent / "weights").glob("tiny-clip-*.safetensors"))
    if len(shipped) != 1:
        raise SystemExit(f"expected one tiny CLIP shipped with dpseg, found {len(shipped)}")
    ds = build_datasets(cache, seed=0, size=128, num_train=budget.num_train, num_val=budget.num_val)
    base = build_config("synthetic", overrides=[f"model.clip_pretrained={shipped[0]}"])
    base.train.iterations = args.steps
    bank = ex.build_prompt_bank(base, cache, [k.name for k in all_classes()], log=lambda _: None)  # reused if made
    variant = ex.VARIANTS[args.variant]

    forward = loss_module.SegmentationLoss.forward

    def labelled(self, logits, labels):  # the loss has no label of its own in the engine
        with record_function("dpseg.loss"):
            return forward(self, logits, labels)

    loss_module.SegmentationLoss.forward = labelled  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="dpseg-profile-") as tmp:
        cfg = ex.run_config(base, variant, 0, ds, bank, Path(tmp))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train(cfg, progress=False)
    rows = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in rows) / 1e6
    parts = {"forward": 0.0, "loss": 0.0, "backward": 0.0, "optimizer": 0.0, "data": 0.0}
    for e in rows:
        part = part_of(e.key)
        if part:
            parts[part] += e.cpu_time_total / 1e6
    print(f"{args.variant}, {args.steps} steps, {args.threads} thread(s): {total:.1f} s of CPU time profiled")
    for part, seconds in parts.items():
        print(f"  {part:10s} {seconds:7.2f} s  {100 * seconds / total:5.1f} %")
    rest = total - sum(parts.values())
    print(f"  {'other':10s} {rest:7.2f} s  {100 * rest / total:5.1f} %  (set-up, export, calibration, logging)")
    print("operators with the most self time:")
    ops = sorted(
        (e for e in rows if not e.key.startswith(("dpseg.", "autograd::"))), key=lambda e: -e.self_cpu_time_total
    )
    for e in ops[: args.top]:
        print(f"  {e.key:50s} {e.self_cpu_time_total / 1e6:7.2f} s  {100 * e.self_cpu_time_total / 1e6 / total:5.1f} %")


if __name__ == "__main__":
    main()

"""The cost-volume ranking of early rejection (``eval.early_rejection_rank=cost``) with and without building the
cost volume: ``cosine_cost_volume(E, R).mean(2)`` against ``template_mean_similarity(E, R)``, in class chunks of
128 as the decoder ranks them, at dpseg-b's sizes (E: 640 channels on a 24 × 24 grid, a 768² image; M = 80)::

    python benchmarks/bench_rank_by_cost.py --classes 150 847        # a few seconds, one thread

Prints the median CPU time of each over ``--repeat`` calls, their largest difference and whether every pixel keeps
the same top-k classes (random E and R; the time does not depend on their values).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dpseg.model.cost_volume import cosine_cost_volume, template_mean_similarity


def ranked(fn, E: torch.Tensor, R: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """(B, K, h, w) scores of all K classes, ``chunk`` classes at a time."""
    return torch.cat([fn(E, R[c : c + chunk]) for c in range(0, R.shape[0], chunk)], dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[150, 847])
    ap.add_argument("--templates", type=int, default=80)
    ap.add_argument("--dim", type=int, default=640)
    ap.add_argument("--grid", type=int, default=24)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    E = torch.randn(1, args.dim, args.grid, args.grid)
    volume_mean = lambda E, R: cosine_cost_volume(E, R).mean(2)  # noqa: E731 - (B, k, M, h, w) -> (B, k, h, w)
    for K in args.classes:
        R = torch.randn(K, args.templates, args.dim)
        outputs = {}
        for name, fn in (
            ("cost volume, mean over M", volume_mean),
            ("template_mean_similarity", template_mean_similarity),
        ):
            outputs[name] = ranked(fn, E, R)  # also the warm-up
            times = []
            for _ in range(args.repeat):
                start = time.process_time()
                ranked(fn, E, R)
                times.append(time.process_time() - start)
            print(f"K={K:4d}  {name:26s} {statistics.median(times):.3f} s CPU (median of {args.repeat})")
        a, b = outputs.values()
        k = min(args.topk, K)
        same = torch.equal(a.topk(k, 1).indices.sort(1).values, b.topk(k, 1).indices.sort(1).values)
        print(f"K={K:4d}  largest difference {float((a - b).abs().max()):.1e}; same top-{k} classes everywhere: {same}")


if __name__ == "__main__":
    main()

"""What ``torch.compile`` buys the decoder on this machine, and what it costs to compile: eager vs compiled
``model.decode`` of sed-b and dpseg-b pass 1, same inputs, CPU time.

    python benchmarks/bench_compile.py --classes 150 --size 384 --rounds 2 --json docs/bench_issue26/compile.json

Per mode: the model is built once (random weights, prompts as from a bank; bench_common.py); two eager calls (the
first warms up), then ``model.decode`` is replaced by ``torch.compile(model.decode, dynamic=False)`` (inductor, one
graph per input shape: the image encoder stays eager), the first compiled call is timed (compile time included),
then ``--rounds`` compiled and eager calls alternate (A B A B). Reports the median CPU time of each, compiled /
eager, the compile call's time and the largest difference of the logits (compiled kernels reorder float sums).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from dpseg.atomic import atomic_write_json

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import build, random_prompts  # noqa: E402


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def measure(mode: str, args, x: torch.Tensor) -> dict:
    """One mode's eager and compiled decode times (module doc); prints and returns its row."""
    model, _ = build(args.preset, mode)
    prompts = random_prompts(model, args.classes, text_only=mode == "sed")
    eager_decode = model.decode
    compiled_decode = torch.compile(model.decode, dynamic=False)

    def call(decode):
        model.decode = decode
        with torch.no_grad():
            return model(x, prompts, class_chunk=args.chunk)["logits"]

    timed(lambda: call(eager_decode))  # warm-up
    _, reference = timed(lambda: call(eager_decode))
    compile_s, out = timed(lambda: call(compiled_decode))
    eager, compiled = [], []
    for _ in range(args.rounds):
        compiled.append(timed(lambda: call(compiled_decode))[0])
        eager.append(timed(lambda: call(eager_decode))[0])
    ratios = [c / e for c, e in zip(compiled, eager)]
    row = {
        "mode": mode,
        "classes": args.classes,
        "size": args.size,
        "eager_s": statistics.median(eager),
        "compiled_s": statistics.median(compiled),
        "compiled_over_eager": ratios,
        "first_compiled_call_s": compile_s,
        "max_abs_diff": float((out - reference).abs().max()),
    }
    print(
        f"{mode}: eager {row['eager_s']:.2f} s, compiled {row['compiled_s']:.2f} s (x{statistics.median(ratios):.2f}; "
        f"per round {', '.join(f'{r:.2f}' for r in ratios)}), first compiled call {compile_s:.0f} s, "
        f"max |diff| {row['max_abs_diff']:.2e}",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="dpseg-b")
    p.add_argument("--modes", nargs="+", default=["sed", "pass1"], choices=["sed", "pass1"])
    p.add_argument("--classes", type=int, default=150)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--json", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows = [measure(mode, args, x) for mode in args.modes]
    if args.json:
        meta = {"command": " ".join(sys.argv), "torch": torch.__version__, "threads": args.threads}
        atomic_write_json(Path(args.json), {**meta, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()

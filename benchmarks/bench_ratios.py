"""Latency ratios between inference modes, measured A B A B in one process (robust on a shared, noisy machine).

    python benchmarks/bench_ratios.py --classes 150 --modes sed pass1 two_pass two_pass_present --rounds 2
    python benchmarks/bench_ratios.py --classes 150 --modes sed sed:ref pass1 pass1:ref --rounds 2

Every mode's model is built once (random weights, ``benchmarks/bench_common.py``); then each round calls every mode
once, in the given order, and each mode's time is divided by the base mode's time *of the same round*. Time is
the process's CPU time (``--clock cpu``, the default: on a machine shared with other jobs it does not count the
time spent waiting for a core, which wall time does) or wall time (``--clock wall``); both are recorded. A mode
written ``MODE:ref`` runs the same model with the decoder's exact speed-ups switched off
(``DPSeg.set_fast_paths(False)``: the computation as it was written before them); ``MODE:-a,b`` runs it with
only the speed-ups ``a`` and ``b`` off (``bench_common.SWITCHES``). Prints every round and the
min / median of each ratio; one thread by default so that two contending processes do not thrash.
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
from bench_common import (  # noqa: E402
    MODES,
    SWITCHES,
    TEXT_ONLY_MODES,
    TWO_PASS_MODES,
    build,
    limit_survivors,
    make_call,
    random_prompts,
    set_switches,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="dpseg-b")
    p.add_argument("--modes", nargs="+", default=["sed", "pass1"], help=f"of {MODES}, optionally with ':ref'")
    p.add_argument("--base", default=None, help="the mode every ratio is taken against (default: the first)")
    p.add_argument("--classes", type=int, default=150)
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", action="store_true", help="one untimed call of every mode first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--detected", type=int, default=10, help="classes present in the pass-1 map (two-pass modes)")
    p.add_argument("--survivors", type=int, default=24, help="classes early rejection keeps at most (fast modes)")
    p.add_argument("--set", action="append", default=[], help="config override for the DPSeg models")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="which time the ratios are taken of")
    p.add_argument("--sed-repo", default="", help="a local checkout of SED (mode sed_code: SED-B's own decoder)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    if args.survivors:
        limit_survivors(args.survivors)
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    models: dict[str, object] = {}
    calls = {}
    for name in args.modes:
        mode, _, variant = name.partition(":")
        if mode not in MODES or not (variant in ("", "ref") or variant.startswith("-")):
            raise SystemExit(f"unknown mode {name!r}: one of {MODES}, optionally with ':ref' or ':-SWITCH,...'")
        key = mode if mode in TWO_PASS_MODES else ("sed" if mode.startswith("sed") else mode)
        if key not in models:  # two-pass modes wrap decode, so they get their own model
            models[key] = build(args.preset, mode, [] if mode.startswith("sed") else args.set)[0]
        model = models[key]
        prompts = random_prompts(model, args.classes, text_only=mode in TEXT_ONLY_MODES)
        call = make_call(model, mode, x, prompts, args.chunk, args.detected, sed_repo=args.sed_repo)
        off = set(SWITCHES) if variant == "ref" else set(variant[1:].split(",")) - {""}
        calls[name] = (model, off, call)

    wall: dict[str, list[float]] = {name: [] for name in args.modes}

    def run(name: str) -> float:
        model, off, call = calls[name]
        set_switches(model, off)
        t, c = time.perf_counter(), time.process_time()
        call()
        wall[name].append(time.perf_counter() - t)
        cpu = time.process_time() - c
        return cpu if args.clock == "cpu" else wall[name][-1]

    if args.warmup:
        for name in args.modes:
            run(name)
            wall[name].clear()
    base = args.base or args.modes[0]
    times: dict[str, list[float]] = {name: [] for name in args.modes}
    for r in range(args.rounds):
        for name in args.modes:
            times[name].append(run(name))
        row = "  ".join(f"{n} {times[n][-1]:.2f}s ({times[n][-1] / times[base][-1]:.2f}x)" for n in args.modes)
        print(f"round {r + 1}: {row}", flush=True)
    setting = f"K={args.classes}, {args.size}^2, {args.threads} thread(s), {args.clock} time"
    print(f"\n{setting}, ratios to {base} per round:")
    summary = {}
    for name in args.modes:
        ratios = [t / b for t, b in zip(times[name], times[base])]
        summary[name] = {"times_s": times[name], "wall_s": wall[name], "ratios": ratios}
        print(
            f"  {name:<22} time median {statistics.median(times[name]):7.2f} s   ratio min {min(ratios):.2f}  "
            f"median {statistics.median(ratios):.2f}  (rounds: {', '.join(f'{q:.2f}' for q in ratios)}; "
            f"wall {', '.join(f'{w:.1f}' for w in wall[name])} s)"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.out), {"args": vars(args), "base": base, "modes": summary}, indent=2)


if __name__ == "__main__":
    main()

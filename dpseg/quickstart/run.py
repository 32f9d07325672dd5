"""dpseg quickstart [--fast]: the whole method, end to end, on the built-in synthetic world (CPU, minutes).

1. render the world's datasets (custom-dataset folders: seen/train for training, seen/val for calibration,
   seen/test and unseen/test for evaluation);
2. pretrain a tiny CLIP on rendered objects of the seen classes, save it as OpenCLIP safetensors and load it back
   through ``model.clip_pretrained`` (the path real OpenCLIP weights take); report its zero-shot accuracy;
3. build a prompt bank for all 75 classes with the world's text-to-image generator (Stable Diffusion's role);
4. train DPSeg variants (text / visual / dual prompts, with and without visual cost volumes) on the seen classes
   with the real training engine, over several seeds;
5. evaluate every run with the real evaluator on the seen and the **unseen** test splits, pass 1 and pass 2,
   next to two references: chance and the CLIP's own dense cost volume with no decoder;
6. write ``results.md`` (table, verdicts on the method's claims, spread over seeds), ``results.json`` and
   ``figure.png`` (unseen test images, ground truth, predictions) to ``--out``.

Every intermediate artefact is cached under ``--cache``, keyed by what produced it; a rerun reuses them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, cast

from dpseg.atomic import atomic_write_json
from dpseg.config import atomic_write_text, build_config
from dpseg.config_schema import Config
from dpseg.data.synthetic.folders import TEST_SPLIT, build_datasets
from dpseg.data.synthetic.generator import SyntheticGenerator
from dpseg.data.synthetic.world import all_classes
from dpseg.errors import ConfigError, DPSegError
from dpseg.fingerprint import code_fingerprint
from dpseg.prompts.generate import get_generator
from dpseg.quickstart import experiment as ex
from dpseg.quickstart import report
from dpseg.quickstart.clip_pretrain import PretrainSettings, pretrained_clip
from dpseg.quickstart.example import check_example, write_example
from dpseg.quickstart.zeroshot import evaluate_zero_shot
from dpseg.safe_load import read_json
from dpseg.weights import file_sha256


@dataclass(frozen=True)  # BUDGETS' values are shared: change a copy (dataclasses.replace)
class Budget:
    num_train: int
    num_val: int
    clip_steps: int
    clip_batch: int
    clip_pool: int
    clip_scenes: int
    iterations: int
    seeds: int
    variants: tuple[str, ...]
    zero_shot_per_class: int
    examples: int


BUDGETS: dict[str, Budget] = {
    # the README numbers: about 10 minutes on 2 free CPU cores (10:10 - 10:35 measured: see README "Quickstart")
    "default": Budget(
        num_train=600,
        num_val=30,
        # the shipped tiny CLIP (dpseg/quickstart/weights): 4000 steps, about 24 minutes on 2 cores, so not retrained
        clip_steps=4000,
        clip_batch=128,
        clip_pool=16000,
        clip_scenes=4000,
        iterations=400,
        seeds=2,
        # the key variants (text + F_c, visual + F_v, dual + F_v = DPSeg, dual + F_c): each of DPSeg's parts is one
        # single-factor comparison; the method study adds the other five (benchmarks/method_study.py)
        variants=("text", "visual", "dual", "dual-upsampled"),
        zero_shot_per_class=10,
        examples=4,
    ),
    # a smoke run (tests, CI): every stage with tiny sizes, one seed, two variants
    "fast": Budget(
        num_train=64,
        num_val=8,
        clip_steps=100,
        clip_batch=64,
        clip_pool=400,
        clip_scenes=200,
        iterations=100,
        seeds=1,
        variants=("text", "dual"),
        zero_shot_per_class=3,
        examples=2,
    ),
}


def quickstart(
    budget: Budget,
    cache: Path,
    out: Path,
    config_file=None,
    overrides=(),
    workers: int = 1,
    text_gap: bool = True,
    retrain_clip: bool = False,
    clip_generator_images: bool = False,
) -> dict:
    """Run every stage (module docstring); returns the results dict that is also written to ``out``.

    ``text_gap`` is the tiny CLIP's text gap; the style gap and the generator's failures follow ``prompts.generator``
    (``synthetic:style=scene`` / ``synthetic:failures=off`` switch them off); ``clip_generator_images`` puts
    generator images back into the CLIP's pretraining pool (world v2's pool, in the generator's style).
    ``retrain_clip``: pretrain the tiny CLIP here even when dpseg ships one for these settings.
    """
    clock = _Clock()
    log = clock.log
    clip_cfg, style = _clip_config(config_file, overrides)
    with clock.stage("datasets"):
        log("1/6 rendering the synthetic world's datasets")
        ds = build_datasets(
            cache,
            seed=0,
            size=128,
            num_train=budget.num_train,
            num_val=budget.num_val,
            num_test=budget.num_val,
            log=log,
        )
    with clock.stage("tiny_clip"):
        log(f"2/6 tiny CLIP, pretrained contrastively on seen-class objects ({budget.clip_steps} steps)")
        settings = clip_settings(budget, clip_cfg, text_gap, style, clip_generator_images)
        clip = pretrained_clip(clip_cfg, cache, settings, log=log, use_shipped=not retrain_clip)
        base = build_config("synthetic", file=config_file, overrides=[f"model.clip_pretrained={clip}", *overrides])
        base.train.iterations = budget.iterations
        zero_shot = evaluate_zero_shot(
            base, per_class=budget.zero_shot_per_class, kinds=("scene-objects", "dense"), style=style
        )
    with clock.stage("prompt_bank"):
        log("3/6 prompt bank for all 75 classes from the synthetic text-to-image generator")
        bank = ex.build_prompt_bank(base, cache, [k.name for k in all_classes()], log=log)
    splits = {"seen": ds.seen, "unseen": ds.unseen, "unseen-all": ds.unseen_all}
    with clock.stage("train_and_evaluate"):
        runs, dirs = _train_and_evaluate(budget, base, ds, bank, cache, splits, workers, log)
    demo_run = next((v for v in ("dual", *budget.variants) if (v, 0) in dirs), None)
    if demo_run is not None:  # the model `dpseg segment` / `dpseg demo` use by default: its score threshold
        with clock.stage("calibration"):  # chosen on the seen-class validation scenes
            ex.calibrate_run(dirs[(demo_run, 0)], ds.seen, budget.num_val, inference=base.eval)
    demo_bank = bank if demo_run is not None and ex.VARIANTS[demo_run].uses_bank else None
    with clock.stage("example_check"):  # the README's example scenes, segmented as `dpseg segment` and the demo do
        example = write_example(out, ds.unseen, TEST_SPLIT)  # unseen-class scenes for the README's next commands
        example_check = check_example(example, dirs[(demo_run, 0)], demo_bank, log) if demo_run else None
    with clock.stage("references"):
        log("5/6 references: chance and the CLIP's dense cost volume alone")
        chance = {k: ex.chance_miou(f, budget.num_val, split=TEST_SPLIT) for k, f in splits.items()}
        clip_dense = {k: ex.clip_dense_miou(base, f, budget.num_val, split=TEST_SPLIT) for k, f in splits.items()}
    log("6/6 report")
    figure = _figure(out, dirs, ds.unseen, budget.examples)
    clock.timings["total"] = round(clock.elapsed(), 1)
    results = report.results(budget, runs, chance, clip_dense, zero_shot, clock.timings, clip, bank, ds.root, figure)
    report.add_example_check(results, example_check)
    results["settings"] = _shared_settings(base)
    atomic_write_json(out / "results.json", results, default=str)
    if demo_run is not None:  # the model `dpseg demo` shows by default
        _point_demo_at(cache, dirs[(demo_run, 0)], demo_bank, demo_run)
    atomic_write_text(out / "results.md", results["markdown"])
    log(f"wrote {out / 'results.md'}, {out / 'results.json'}, {figure}, {example}/")
    return results


def _shared_settings(base: Config) -> dict:
    """The model, prompt and evaluation settings every run shares (the preset with --set applied), so a results file
    says which defaults produced it; the CLIP's weights file is named by content in ``clip_weights``."""
    settings = {k: asdict(getattr(base, k)) for k in ("model", "prompts", "eval")}
    settings["model"].pop("clip_pretrained", None)
    return settings


class _Clock:
    """Elapsed-time log lines and the seconds each stage took."""

    def __init__(self):
        self.t0 = time.time()
        self.timings: dict = {}

    def elapsed(self) -> float:
        return time.time() - self.t0

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():6.0f}s] {msg}", flush=True)

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.time()
        yield
        self.timings[name] = round(time.time() - start, 1)


def _clip_config(config_file, overrides) -> tuple:
    """The synthetic preset with the user's file and overrides, before the tiny CLIP exists, and the generator's
    style (the world's style gap)."""
    clip_cfg = build_config("synthetic", file=config_file, overrides=list(overrides))
    spec = clip_cfg.prompts.generator or "synthetic"
    if spec.split(":")[0] != "synthetic":
        raise ConfigError(
            f"quickstart renders its prompts with the synthetic world's generator; drop "
            f"prompts.generator={spec} (synthetic:style=scene switches the style gap off)"
        )
    style = cast(SyntheticGenerator, get_generator(spec, clip_cfg.prompts)).style  # a synthetic spec (checked above)
    return clip_cfg, style


def _train_and_evaluate(budget: Budget, base, ds, bank: Path, cache: Path, splits: dict, workers: int, log):
    """Every (variant, seed) run trained (or reused) and evaluated on every split: ({variant: {seed: result}},
    {(variant, seed): model folder})."""
    jobs = [
        (
            ex.run_config(base, ex.VARIANTS[v], seed, ds, bank, cache / "runs"),
            v,
            seed,
            splits,
            budget.num_val,
            TEST_SPLIT,
        )
        for v in budget.variants
        for seed in range(budget.seeds)
    ]
    log(
        f"4/6 training and evaluating {len(jobs)} runs ({len(budget.variants)} variants x {budget.seeds} seeds, "
        f"{budget.iterations} steps each, {workers} at a time; training logs in each run's quickstart.log)"
    )
    runs: dict = {}
    dirs: dict = {}
    trained: list = []  # seconds of each run trained here (a reused one takes none)
    for done, (v_name, seed, model_dir, result, seconds, reused) in enumerate(_run_all(jobs, workers), 1):
        dirs[(v_name, seed)] = model_dir
        runs.setdefault(v_name, {})[seed] = result
        brief = ", ".join(
            f"{k} {p.replace('pass', 'pass ')} {m['mIoU']:.1f}" for k, r in result.items() for p, m in r.items()
        )
        how = "reusing the trained run" if reused else f"{seconds:.0f}s"
        trained += [] if reused else [seconds]
        left = eta_seconds(trained, len(jobs) - done, workers) if done < len(jobs) else None
        eta = f", about {left / 60:.1f} min left" if left is not None else ""
        log(f"    run {done}/{len(jobs)}{eta}: {ex.VARIANTS[v_name].title}, seed {seed} ({how}): mIoU {brief}")
    return runs, dirs


def eta_seconds(trained: list, left: int, workers: int) -> Optional[float]:
    """The time the ``left`` runs still take, or None before a run was trained here: runs take about as long as each
    other (the mean of those trained so far) and ``workers`` of them run at a time. From the runs' own times, not the
    time since the stage began: runs finish in batches of ``workers``, so a rate since the start jumps up and down
    between the runs of one batch (27, 24, then 27 min left again)."""
    if not trained:
        return None
    return sum(trained) / len(trained) * left / max(1, workers)


def _figure(out: Path, dirs: dict, unseen: Path, examples: int) -> Path:
    """Unseen test scenes, their ground truth and the seed-0 DPSeg (both passes) and text-only predictions."""
    predictions, shown = {}, None
    for name in ("dual", "text"):
        if (name, 0) not in dirs:
            continue
        variant = ex.VARIANTS[name]
        shown = ex.predict_examples(dirs[(name, 0)], unseen, list(range(examples)), variant.two_pass, split=TEST_SPLIT)
        for key in ("pass1", "pass2"):
            if key in shown:
                predictions[f"{name} {key.replace('pass', 'pass ')}"] = shown[key]
    assert shown is not None, "every budget trains the text and dual variants"
    out.mkdir(parents=True, exist_ok=True)
    return report.figure(
        out / "figure.png",
        shown["images"],
        shown["labels"],
        predictions,
        shown["class_names"],
        "unseen classes (never seen in training): seed-0 models; dimmed = background (not scored)",
    )


def _point_demo_at(cache: Path, model_dir: Path, bank, variant: str) -> None:
    """``latest.json``: the model (and bank) `dpseg demo`, `segment` and `eval` use when given none."""
    pointer = {
        "model": str(model_dir.resolve()),
        "variant": variant,
        "bank": str(Path(bank).resolve()) if bank else None,
    }
    atomic_write_json(cache / "latest.json", pointer, indent=None)


def clip_settings(
    budget: Budget, clip_cfg, text_gap: bool, style: str, generator_images: bool = False
) -> PretrainSettings:
    """The tiny CLIP's pretraining settings of ``budget`` (part of its cache key)."""
    return PretrainSettings(
        steps=budget.clip_steps,
        batch_size=budget.clip_batch,
        pool_size=budget.clip_pool,
        scenes=budget.clip_scenes,
        text_gap=text_gap,
        style_gap=style == "prompt",
        generator_images=generator_images,
        prompt_size=clip_cfg.model.prompt_image_size,
    )


def _run_one(job) -> tuple:
    """Train (or reuse) and evaluate (or reuse) one run on split ``split`` of each dataset folder of ``splits`` (the
    quickstart: the test scenes; choices: ``CHOICE_SPLIT``); its training log goes to the run's quickstart.log."""
    cfg, v_name, seed, splits, max_images, split = job
    start = time.time()
    run_dir = Path(cfg.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    reused = ex.is_trained(cfg)
    with open(run_dir / "quickstart.log", "a") as f, contextlib.redirect_stdout(f):
        model_dir = ex.trained_model_dir(cfg)
        # the inference settings are part of the key: a trained run is reused when only they change; the model's
        # weights and the evaluating code are too, so a run trained again or code changed since is evaluated again
        key = {
            "splits": {k: f"{ex.keyed_folder(v)}:{split}" for k, v in splits.items()},
            "max_images": max_images,
            "variant": v_name,
            "eval": cfg.to_dict()["eval"],
            "model": file_sha256(model_dir / "model.safetensors"),
            "code": code_fingerprint("dpseg.quickstart.experiment"),
        }
        path = run_dir / ex.EVAL_CACHE
        try:
            cached = read_json(path, "evaluation cache", dict) if path.is_file() else {}
        except DPSegError:  # unreadable: evaluated again
            cached = {}
        if cached.get("key") == key:
            result = cached["result"]
        else:
            variant = ex.VARIANTS[v_name]
            result = ex.evaluate_model(model_dir, splits, variant, max_images, eval_cfg=cfg.eval, split=split)
            atomic_write_json(path, {"key": key, "result": result}, indent=None)
    return v_name, seed, model_dir, result, time.time() - start, reused


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: tiny tensors run faster than with threads fighting over cores


def _run_all(jobs: list, workers: int):
    """Yield each job's result in order; ``workers`` > 1 runs them in that many processes (one thread each)."""
    if workers <= 1:
        yield from map(_run_one, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init)
    try:
        yield from pool.map(_run_one, jobs)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM) or failed: stop the runs in flight, do not wait for them
        pids = list(getattr(pool, "_processes", None) or {})  # pid -> Process; no public way before Python 3.14
        pool.shutdown(wait=False, cancel_futures=True)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        raise
    pool.shutdown()

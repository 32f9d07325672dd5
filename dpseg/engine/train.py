"""Train DPSeg: dpseg train CONFIG [--set k=v ...] [--resume [RUN_OR_CHECKPOINT]] (torchrun for several GPUs).

:func:`train` is the whole loop, one named step a line: set up the run (data first, then the model, ``train.init_from``
- matching weights of another checkpoint, e.g. SED converted by ``dpseg convert sed`` -, the prompts, the optimizer,
the resumed state), then per step {lr, batch, forward under autocast, BCE loss (+ the auxiliary heads' BCE, SED),
backward, clip, NaN guard, AdamW}, logs, evaluation with best-model export, atomic checkpoints, and at the end the
final export (``OUTPUT/final``: config.json + model.safetensors, what ``dpseg eval`` and ``Segmenter`` load; with a
validation set, its default score threshold ``eval.min_score`` is chosen there, :mod:`dpseg.evaluation.calibrate`).
Several GPUs / nodes::

    torchrun --nproc_per_node=4 -m dpseg train my.yaml           # train.batch_size is the global batch
    torchrun --nproc_per_node=4 -m dpseg train my.yaml --resume  # continue from OUTPUT/checkpoints (shared disk)

A resumed run ends with the same weights as an uninterrupted one (bit-identical on CPU; see README "Training").
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch

from dpseg.atomic import atomic_write_json
from dpseg.checkpoint import save_model
from dpseg.config import Config
from dpseg.distributed import all_reduce_sum, barrier, gather_objects
from dpseg.engine import TrainingError, training_code
from dpseg.engine.class_sampling import remap_labels, sample_step_classes
from dpseg.engine.data import build_train_loader
from dpseg.engine.distributed import init_distributed, local_batch_size, mix_seed, shutdown
from dpseg.engine.logging import TrainLogger
from dpseg.engine.optim import lr_factor, set_lr
from dpseg.engine.resume import (
    list_checkpoints,
    prune_checkpoints,
    save_checkpoint,
    trainable_state,
)
from dpseg.engine.rng import capture_rng
from dpseg.engine.setup import Run, announce, set_up
from dpseg.evaluation.calibrate import TRAINING_CALIBRATION_IMAGES, Calibration, calibrate, write_calibration
from dpseg.evaluation.evaluator import evaluate
from dpseg.evaluation.inference import Inference
from dpseg.evaluation.runtime import autocast
from dpseg.weights import state_fingerprint

StepCallback = Callable[[int, dict], None]


def train(
    cfg: Config, resume: Optional[str] = None, callback: Optional[StepCallback] = None, progress: bool = True
) -> dict:
    """Run (or continue) training; returns {"step", "final", "best", "loss", "output_dir"} (same on every rank).

    ``resume``: None = new run (refused if the output directory already holds checkpoints); ``"auto"`` = continue
    from the newest checkpoint of ``train.output_dir`` if there is one; a run directory or checkpoint path.
    ``callback(step, {"loss", "lr", "grad_norm"})`` runs on every rank after every optimizer step.
    """
    tc = cfg.train
    ctx = init_distributed(tc.device)
    logger = None
    try:
        run = set_up(cfg, ctx, resume)
        logger = TrainLogger(run.out, ctx.is_main, run.step, tc.iterations, tc.tensorboard, progress)
        announce(run, logger)
        loader = iter(build_train_loader(cfg, run.train_set, ctx, start_position=run.consumed))
        run.net.train()
        window = _Window()
        while run.step < tc.iterations:
            lr = tc.lr * lr_factor(run.step, tc.iterations, tc.warmup_iters)
            set_lr(run.optimizer, lr)
            loss, norm = _train_step(run, next(loader), lr)
            run.step, run.consumed = run.step + 1, run.consumed + tc.batch_size
            logger.advance()
            window.add(loss)
            if run.step % max(1, tc.log_every) == 0 or run.step == tc.iterations:
                logger.train(run.step, window.mean(), lr, norm, window.rate())
                window = _Window()
            if callback is not None:
                callback(run.step, {"loss": loss, "lr": lr, "grad_norm": norm})
            last = run.step == tc.iterations
            if run.val_set is not None and (run.step % tc.eval_every == 0 or last):
                _validate(run, logger)
                window.t0 = time.perf_counter()  # evaluation time is not training speed
            if (tc.checkpoint_every > 0 and run.step % tc.checkpoint_every == 0) or last:
                _checkpoint(run)
        _export_final(run, logger, progress)
        return {
            "step": run.step,
            "final": str(run.out / "final"),
            "best": run.best,
            "loss": run.loss,
            "output_dir": str(run.out),
        }
    finally:
        if logger is not None:
            logger.close()
        shutdown(ctx)


class _Window:
    """The mean loss and step rate since the last log line."""

    def __init__(self):
        self.loss, self.steps, self.t0 = 0.0, 0, time.perf_counter()

    def add(self, loss: float) -> None:
        self.loss, self.steps = self.loss + loss, self.steps + 1

    def mean(self) -> float:
        return self.loss / max(1, self.steps)

    def rate(self) -> float:
        return self.steps / max(1e-9, time.perf_counter() - self.t0)


# ------------------------------------------------------------------------------------------------ a step


def _train_step(run: Run, batch: dict, lr: float) -> tuple[float, float]:
    """One optimizer step on one batch; returns (global mean loss, gradient norm). Refuses a non-finite loss or
    gradient before the update, so no NaN ever reaches a checkpoint."""
    cfg, ctx, tc = run.cfg, run.ctx, run.cfg.train
    images = batch["image"].to(ctx.device, non_blocking=True).float().div_(255)  # (b, 3, S, S) in [0, 1]
    labels = batch["label"].to(ctx.device, non_blocking=True)  # (b, S, S), -1 = ignore
    prompts = run.train_prompts
    if tc.classes_per_step:
        classes = sample_step_classes(
            labels,
            prompts.num_classes,
            tc.classes_per_step,
            mix_seed(tc.seed, 0xC1A55, ctx.rank, run.step),  # seeded by step: resume-exact
            run.class_similarity,
            tc.negatives_temperature,
        )
        if classes is not None:
            labels = remap_labels(labels, classes, prompts.num_classes)
            prompts = prompts.select(classes.tolist())
    try:
        with autocast(run.precision, ctx.device):
            outputs = run.net(images, prompts)  # logits (b, K_step, S/4, S/4); SED: "aux" at strides 32..8
        loss = run.criterion(outputs["logits"].float(), labels)
        for aux in outputs.get("aux", []):  # SED's auxiliary heads, each its own BCE with weight 1
            loss = loss + run.criterion(aux.float(), labels)
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(run.trainable, tc.grad_clip if tc.grad_clip > 0 else math.inf)
        run.loss = float(all_reduce_sum(loss.detach().float()) / ctx.world_size)  # global mean loss
        norm = float(grad_norm)  # from the all-reduced gradients: the same on every rank
        if not math.isfinite(run.loss) or (run.precision != "fp16" and not math.isfinite(norm)):
            last = list_checkpoints(run.out)
            raise TrainingError(
                f"non-finite loss or gradient at step {run.step + 1}: loss {run.loss}, gradient norm {norm}, "
                f"lr {lr:.3g}; the last good weights are in {last[-1] if last else '(no checkpoint yet)'}; lower "
                "train.lr, check the data, or use train.precision=fp32"
            )
        run.scaler.step(run.optimizer)  # fp16: skipped by the scaler when the gradients overflowed
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(
            f"out of GPU memory at step {run.step + 1} (batch {local_batch_size(tc.batch_size, ctx.world_size)} "
            f"per GPU, crop {cfg.data.crop_size}, {len(run.train_set.class_names)} classes, {run.precision}); "
            f"lower train.batch_size (global, now {tc.batch_size}) or data.crop_size, or --set "
            "model.grad_checkpointing=true"
        ) from None
    return run.loss, norm


# ------------------------------------------------------------------------------------ evaluation and saving


def _validate(run: Run, logger: TrainLogger) -> None:
    """Pass-1 mIoU on the validation set (spread over the ranks); a new best is exported to OUTPUT/best."""
    results = _with_eval_mode(
        run,
        lambda inference: evaluate(inference, run.val_set, max_images=run.cfg.train.eval_max_images, progress=False),
        two_pass=False,
    )
    miou = results["pass1"]["mIoU"]
    if miou is not None and (run.best["mIoU"] is None or miou > run.best["mIoU"]):
        run.best = {"mIoU": miou, "step": run.step}
        if run.ctx.is_main:
            save_model(run.model, run.cfg, run.out / "best", metadata={"training_code": training_code()})
            atomic_write_json(run.out / "best" / "best.json", {**run.best, "dataset": run.val_set.name})
    logger.eval(run.step, run.val_set.name, results, run.best)


def _checkpoint(run: Run) -> None:
    """Every rank's RNG and the replicas' fingerprints gathered; rank 0 writes the checkpoint atomically."""
    ctx, tc = run.ctx, run.cfg.train
    rngs = gather_objects(capture_rng())  # every rank's RNG, so each resumes its own stream
    replicas = gather_objects(state_fingerprint(trainable_state(run.model)) if ctx.distributed else None)
    if len(set(replicas)) > 1:  # DDP keeps replicas equal; anything else is a bug worth stopping for
        raise TrainingError(
            f"the {ctx.world_size} processes hold different weights at step {run.step} ({replicas}); "
            "this is a bug in the training engine, please report it"
        )
    if ctx.is_main:
        state = {
            "step": run.step,
            "consumed_samples": run.consumed,
            "global_batch": tc.batch_size,
            "replicas": replicas,
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            "rng": rngs,
            "schedule": {"name": "cosine", "total": tc.iterations, "warmup": tc.warmup_iters},
            "best": dict(run.best),
            "frozen": run.frozen,
            "config": run.cfg.to_dict(),
            "training_code": training_code(),
        }
        save_checkpoint(run.out, run.step, run.model, state, run.cfg)
        prune_checkpoints(run.out, tc.keep_checkpoints)
    barrier()


def _export_final(run: Run, logger: TrainLogger, progress: bool) -> None:
    """OUTPUT/final in the inference format, with its score threshold chosen on the validation set for the map that
    ``dpseg segment`` makes by default (pass 2 when the model refines)."""
    calibration: Optional[Calibration] = None
    if run.val_set is not None:
        images = run.cfg.train.eval_max_images or TRAINING_CALIBRATION_IMAGES
        calibration = _with_eval_mode(
            run,
            lambda inference: calibrate(
                inference, run.val_set, run.cfg.eval.background_class, images, progress=progress and run.ctx.is_main
            ),
        )
        logger.message(calibration.summary())
    if run.ctx.is_main:
        save_model(run.model, run.cfg, run.out / "final", metadata={"training_code": training_code()})
        if calibration is not None:
            write_calibration(run.out / "final", calibration)
        best = run.best
        logger.message(
            f"done: {run.step} steps; final model in {run.out / 'final'}"
            + (
                f"; best mIoU {best['mIoU']:.2f} at step {best['step']} in {run.out / 'best'}"
                if best["mIoU"] is not None
                else ""
            )
        )
    barrier()


def _with_eval_mode(run: Run, job: Callable[[Inference], Any], two_pass: Optional[bool] = None):
    """``job(inference)`` on the validation prompts, with the model in eval mode under the training precision;
    leaves every RNG and the training mode as it found them."""
    devices = [run.ctx.device] if run.ctx.device.type == "cuda" else []
    inference = Inference(
        run.model, run.val_prompts, run.cfg.eval, two_pass=two_pass, device=run.ctx.device, precision=run.precision
    )
    run.model.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            return job(inference)
    finally:
        run.model.train()

"""Train DPSeg: dpseg train CONFIG [--set k=v ...] [--resume [RUN_OR_CHECKPOINT]] (torchrun for several GPUs).

The whole loop is :func:`train`, top to bottom: data -> model (-> ``train.init_from``: matching weights of another
checkpoint, e.g. SED converted by ``dpseg convert sed``) -> prompts -> optimizer -> (resume) -> steps of
{lr, batch, forward under autocast, BCE loss (+ the auxiliary heads' BCE, SED), backward, clip, NaN guard, AdamW}
-> logs, evaluation with
best-model export, atomic checkpoints -> final export (``OUTPUT/final``: config.json + model.safetensors, what
``dpseg eval`` and ``Segmenter`` load; with a validation set, its default score threshold ``eval.min_score`` is
chosen there, :mod:`dpseg.evaluation.calibrate`). Several GPUs / nodes::

    torchrun --nproc_per_node=4 -m dpseg train my.yaml           # train.batch_size is the global batch
    torchrun --nproc_per_node=4 -m dpseg train my.yaml --resume  # continue from OUTPUT/checkpoints (shared disk)

A resumed run ends with the same weights as an uninterrupted one (bit-identical on CPU; see README "Training").
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional, cast

import torch

from dpseg.atomic import atomic_write_json
from dpseg.build import build_model
from dpseg.checkpoint import checkpoint_files, save_model
from dpseg.config import Config, save_config
from dpseg.data.catalog import build_dataset
from dpseg.engine import TrainingError
from dpseg.engine.class_sampling import remap_labels, sample_step_classes
from dpseg.engine.data import build_train_dataset, build_train_loader
from dpseg.engine.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
    local_batch_size,
    mix_seed,
    shutdown,
)
from dpseg.engine.logging import TrainLogger, setup_table
from dpseg.engine.optim import build_optimizer, lr_factor, make_scaler, set_lr
from dpseg.engine.resume import (
    config_changes,
    list_checkpoints,
    prune_checkpoints,
    restore_training,
    resume_target,
    save_checkpoint,
    trainable_state,
)
from dpseg.engine.rng import capture_rng, seed_all
from dpseg.errors import ConfigError, DataError, DPSegError
from dpseg.evaluation.calibrate import TRAINING_CALIBRATION_IMAGES, calibrate, write_calibration
from dpseg.evaluation.evaluator import evaluate
from dpseg.evaluation.runtime import autocast, resolve_precision
from dpseg.init_from import init_from_checkpoint
from dpseg.model.loss import SegmentationLoss
from dpseg.prompts.resolve import vocabulary_prompts
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
        torch.manual_seed(tc.seed)
        out = Path(tc.output_dir)
        skipped: list[str] = []  # damaged checkpoints passed over (filled on rank 0, which logs)
        ckpt = _on_main(ctx, lambda: resume_target(out, resume, skipped))  # decided once, so every rank agrees
        local_batch = local_batch_size(tc.batch_size, ctx.world_size)

        # ---- data first: a missing dataset must fail before minutes of model building
        train_set = build_train_dataset(cfg)
        if tc.init_from and ckpt is None:
            checkpoint_files(tc.init_from)  # a wrong path fails now, too
        val_set = None
        if tc.eval_every > 0:
            try:
                val_set = build_dataset(cfg.data.val_dataset, root=cfg.data.root, split="val")
            except DataError as e:
                raise DataError(
                    f"validation set (data.val_dataset, evaluated every train.eval_every={tc.eval_every} "
                    f"steps): {e}; or --set train.eval_every=0 to train without evaluation"
                ) from None

        # ---- model, prompts (computed once, kept on the device), optimizer
        precision = resolve_precision(tc.precision, ctx.device)
        model = build_model(cfg)  # seeded above: identical random init on every rank and after a restart
        init = init_from_checkpoint(model, tc.init_from) if tc.init_from and ckpt is None else None  # a resume has them
        frozen = {
            name: state_fingerprint(tower)
            for name, tower in (("prompt_encoder", model.prompt_encoder), ("text_encoder", model.text_encoder))
            if tower is not None
        }
        model.to(ctx.device)
        train_prompts = vocabulary_prompts(
            cfg, model, train_set.class_names, ctx.device, f"the training vocabulary of {train_set.name}"
        )
        val_prompts = None
        if val_set is not None:
            val_prompts = vocabulary_prompts(
                cfg, model, val_set.vocabulary, ctx.device, f"the validation vocabulary of {val_set.name}"
            )
        optimizer = build_optimizer(model, tc, ctx.device)
        scaler = make_scaler(precision, ctx.device)
        criterion = SegmentationLoss(tc.loss_ignore)
        trainable = [p for p in model.parameters() if p.requires_grad]
        step, consumed = 0, 0
        best: dict[str, Optional[float]] = {"mIoU": None, "step": None}
        notes: list[str] = []
        if ckpt is not None:
            state, notes = restore_training(ckpt, model, optimizer, scaler, frozen, ctx.rank, ctx.world_size)
            step, consumed, best = state["step"], state["consumed_samples"], state["best"]
            changed = config_changes(state["config"], cfg.to_dict())
            if changed:
                notes.append(
                    "resuming with changed settings (exactness holds only if none matter): " + "; ".join(changed)
                )
        else:
            seed_all(mix_seed(tc.seed, 0x7A1, ctx.rank))  # per-rank runtime randomness (drop path)
        if ctx.is_main:
            _prepare_output(out, cfg)

        net: torch.nn.Module = model
        if ctx.distributed:
            net = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                broadcast_buffers=False,
                gradient_as_bucket_view=True,
            )
        if tc.compile:
            net = cast(torch.nn.Module, torch.compile(net))  # compiling a Module gives an OptimizedModule (a Module)
        loader = iter(build_train_loader(cfg, train_set, ctx, start_position=consumed))

        logger = TrainLogger(out, ctx.is_main, step, tc.iterations, tc.tensorboard, progress)
        facts = [
            ("device", f"{ctx.device} x {ctx.world_size} process(es)"),
            ("precision", precision),
            ("batch", f"{local_batch} per process x {ctx.world_size} = {tc.batch_size} (effective)"),
            ("iterations", f"{tc.iterations}" + (f" (resuming at step {step} from {ckpt})" if ckpt else "")),
            (
                "initial weights",
                f"{tc.init_from}: {len(init.loaded)} tensors loaded, {len(init.fresh) + len(init.mismatched)} "
                "fresh (list below)"
                if init
                else f"from the checkpoint {ckpt}"
                if ckpt
                else "fresh",
            ),
            (
                "classes per step",
                f"present + random absent up to {tc.classes_per_step}" if tc.classes_per_step else "all",
            ),
            (
                "optimizer",
                f"AdamW lr {tc.lr:g}, image encoder x{tc.encoder_lr_mult:g}, wd {tc.weight_decay:g} "
                f"(0 on norm/bias/embedding), grad clip {tc.grad_clip:g}",
            ),
            ("schedule", f"cosine to 0 over {tc.iterations} steps, warm-up {tc.warmup_iters}"),
            (
                "train data",
                f"{train_set.name}: {len(train_set)} images, {len(train_set.class_names)} classes, "
                f"crop {cfg.data.crop_size}",
            ),
            (
                "prompts",
                f"bank {cfg.prompts.bank}"
                if cfg.prompts.bank
                else f"text tower, {train_prompts.num_templates} templates",
            ),
            ("evaluation", f"{val_set.name} every {tc.eval_every} steps" if val_set else "off"),
            (
                "output",
                f"{out} (checkpoint every {tc.checkpoint_every or '-'} steps and at the end, "
                f"keep {tc.keep_checkpoints or 'all'})",
            ),
        ]
        logger.message(setup_table(model, facts))
        if init is not None:
            for line in init.lines(model):
                logger.message(line)
            if ctx.is_main:
                atomic_write_json(out / "init_from.json", init.to_dict())
        elif tc.init_from:
            notes.append(
                f"train.init_from={tc.init_from} is not applied: the run resumes from {ckpt}, which holds its weights"
            )
        for note in skipped + notes:
            logger.message(note)

        def checkpoint() -> None:
            rngs = gather_objects(ctx, capture_rng())  # every rank's RNG, so each resumes its own stream
            replicas = gather_objects(ctx, state_fingerprint(trainable_state(model)) if ctx.distributed else None)
            if len(set(replicas)) > 1:  # DDP keeps replicas equal; anything else is a bug worth stopping for
                raise TrainingError(
                    f"the {ctx.world_size} processes hold different weights at step {step} ({replicas}); "
                    "this is a bug in the training engine, please report it"
                )
            if ctx.is_main:
                state = {
                    "step": step,
                    "consumed_samples": consumed,
                    "global_batch": tc.batch_size,
                    "replicas": replicas,
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rngs,
                    "schedule": {"name": "cosine", "total": tc.iterations, "warmup": tc.warmup_iters},
                    "best": dict(best),
                    "frozen": frozen,
                    "config": cfg.to_dict(),
                }
                save_checkpoint(out, step, model, state, cfg)
                prune_checkpoints(out, tc.keep_checkpoints)
            barrier(ctx)

        # ---- the loop
        net.train()
        window_loss, window_steps, window_t0 = 0.0, 0, time.perf_counter()
        loss_value = float("nan")
        while step < tc.iterations:
            lr = tc.lr * lr_factor(step, tc.iterations, tc.warmup_iters)
            set_lr(optimizer, lr)
            batch = next(loader)
            images = batch["image"].to(ctx.device, non_blocking=True).float().div_(255)  # (b, 3, S, S) in [0, 1]
            labels = batch["label"].to(ctx.device, non_blocking=True)  # (b, S, S), -1 = ignore
            step_prompts = train_prompts
            if tc.classes_per_step:
                classes = sample_step_classes(
                    labels, train_prompts.num_classes, tc.classes_per_step, mix_seed(tc.seed, 0xC1A55, ctx.rank, step)
                )  # seeded by step: resume-exact
                if classes is not None:
                    step_prompts = train_prompts.select(classes.tolist())
                    labels = remap_labels(labels, classes, train_prompts.num_classes)
            try:
                with autocast(precision, ctx.device):
                    outputs = net(images, step_prompts)  # logits (b, K_step, S/4, S/4); SED: "aux" at strides 32..8
                loss = criterion(outputs["logits"].float(), labels)
                for aux in outputs.get("aux", []):  # SED's auxiliary heads, each its own BCE with weight 1
                    loss = loss + criterion(aux.float(), labels)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip if tc.grad_clip > 0 else math.inf)
                loss_value = float(all_reduce_sum(ctx, loss.detach().float()) / ctx.world_size)  # global mean loss
                norm = float(grad_norm)  # from the all-reduced gradients: the same on every rank
                if not math.isfinite(loss_value) or (precision != "fp16" and not math.isfinite(norm)):
                    last = list_checkpoints(out)
                    raise TrainingError(
                        f"non-finite loss or gradient at step {step + 1}: loss {loss_value}, gradient norm {norm}, "
                        f"lr {lr:.3g}; "
                        f"the last good weights are in {last[-1] if last else '(no checkpoint yet)'}; lower train.lr, "
                        "check the data, or use train.precision=fp32"
                    )
                scaler.step(optimizer)  # fp16: skipped by the scaler when the gradients overflowed
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            except torch.cuda.OutOfMemoryError:
                raise TrainingError(
                    f"out of GPU memory at step {step + 1} (batch {local_batch} per GPU, crop {cfg.data.crop_size}, "
                    f"{len(train_set.class_names)} classes, {precision}); "
                    f"lower train.batch_size (global, now {tc.batch_size}) "
                    "or data.crop_size, or --set model.grad_checkpointing=true"
                ) from None
            step, consumed = step + 1, consumed + tc.batch_size
            logger.advance()
            window_loss, window_steps = window_loss + loss_value, window_steps + 1
            if step % max(1, tc.log_every) == 0 or step == tc.iterations:
                rate = window_steps / max(1e-9, time.perf_counter() - window_t0)
                logger.train(step, window_loss / window_steps, lr, norm, rate)
                window_loss, window_steps, window_t0 = 0.0, 0, time.perf_counter()
            if callback is not None:
                callback(step, {"loss": loss_value, "lr": lr, "grad_norm": norm})
            last_step = step == tc.iterations
            if val_set is not None and (step % tc.eval_every == 0 or last_step):
                results = _evaluate(cfg, model, val_prompts, val_set, ctx, precision)
                miou = results["pass1"]["mIoU"]
                if miou is not None and (best["mIoU"] is None or miou > best["mIoU"]):
                    best = {"mIoU": miou, "step": step}
                    if ctx.is_main:
                        save_model(model, cfg, out / "best")
                        atomic_write_json(out / "best" / "best.json", {**best, "dataset": val_set.name})
                logger.eval(step, val_set.name, results, best)
                window_t0 = time.perf_counter()  # evaluation time is not training speed
            if (tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0) or last_step:
                checkpoint()

        # ---- export the final model in the inference format, with its score threshold chosen on the validation set
        calibration = None
        if val_set is not None:
            calibration = _calibrate(cfg, model, val_prompts, val_set, ctx, precision, progress)
            logger.message(calibration.summary())
        if ctx.is_main:
            save_model(model, cfg, out / "final")
            if calibration is not None:
                write_calibration(out / "final", calibration)
            logger.message(
                f"done: {step} steps; final model in {out / 'final'}"
                + (
                    f"; best mIoU {best['mIoU']:.2f} at step {best['step']} in {out / 'best'}"
                    if best["mIoU"] is not None
                    else ""
                )
            )
        barrier(ctx)
        return {"step": step, "final": str(out / "final"), "best": best, "loss": loss_value, "output_dir": str(out)}
    finally:
        if logger is not None:
            logger.close()
        shutdown(ctx)


# ------------------------------------------------------------------------------------------------ helpers


def _on_main(ctx: DistContext, fn: Callable):
    """``fn()`` computed on rank 0 and shared; a user error raised there is raised on every rank."""
    result = None
    if ctx.is_main:
        try:
            result = ("ok", fn())
        except DPSegError as e:
            result = ("error", e)
    result = broadcast_object(ctx, result)
    if result[0] == "error":
        raise result[1]
    return result[1]


def _prepare_output(out: Path, cfg: Config) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create train.output_dir {out}: {e.strerror}") from None
    prune_checkpoints(out, 0)  # only clears temporary directories left by a crash mid-write
    save_config(cfg, out / "config.yaml")


def _calibrate(cfg: Config, model, prompts, dataset, ctx: DistContext, precision: str, progress: bool):
    """The final model's default score threshold (eval.min_score), chosen on the validation set for the map that
    ``dpseg segment`` makes by default (pass 2 when the model refines); leaves every RNG as it found it."""
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    two = cfg.eval.two_pass and model.needs_visual_prompts and prompts.has_visual
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), autocast(precision, ctx.device):
            images = cfg.train.eval_max_images or TRAINING_CALIBRATION_IMAGES
            return calibrate(
                model,
                prompts,
                dataset,
                cfg.eval,
                ctx.device,
                cfg.eval.background_class,
                two,
                images,
                progress=progress and ctx.is_main,
            )
    finally:
        model.train()


def _evaluate(cfg: Config, model, prompts, dataset, ctx: DistContext, precision: str) -> dict:
    """Pass-1 metrics on the validation set, spread over the ranks; leaves every RNG as it found it."""
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), autocast(precision, ctx.device):
            return evaluate(
                model,
                prompts,
                dataset,
                cfg.eval,
                device=ctx.device,
                two_pass=False,
                max_images=cfg.train.eval_max_images,
                progress=False,
            )
    finally:
        model.train()

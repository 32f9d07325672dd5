"""Setting up a training run: the data (first: a missing dataset must fail before minutes of model building), the
model (``train.init_from``: matching weights of another checkpoint), the prompts (computed once, kept on the device),
the optimizer, the state of the checkpoint resumed from, and the start-up table. :mod:`dpseg.engine.train` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, cast

import torch

from dpseg.atomic import atomic_write_json
from dpseg.build import build_model
from dpseg.checkpoint import checkpoint_files
from dpseg.config import Config, save_config
from dpseg.data.catalog import build_dataset
from dpseg.distributed import broadcast_object
from dpseg.engine import training_code
from dpseg.engine.class_sampling import prompt_similarity
from dpseg.engine.data import build_train_dataset
from dpseg.engine.distributed import DistContext, local_batch_size, mix_seed
from dpseg.engine.logging import TrainLogger, setup_table
from dpseg.engine.optim import build_optimizer, make_scaler
from dpseg.engine.resume import config_changes, prune_checkpoints, restore_training, resume_target
from dpseg.engine.rng import seed_all
from dpseg.errors import ConfigError, DataError, DPSegError
from dpseg.evaluation.runtime import resolve_precision
from dpseg.init_from import InitReport, init_from_checkpoint
from dpseg.model.loss import SegmentationLoss
from dpseg.prompts.resolve import vocabulary_prompts
from dpseg.weights import state_fingerprint


@dataclass
class Run:
    """Everything one training run holds; ``step``, ``consumed``, ``best`` and ``loss`` change as it goes."""

    cfg: Config
    ctx: DistContext
    out: Path
    train_set: Any
    val_set: Any
    model: Any  # DPSeg
    net: torch.nn.Module  # the model as trained: DDP-wrapped and/or compiled
    train_prompts: Any
    val_prompts: Any
    precision: str
    optimizer: torch.optim.Optimizer
    scaler: Any
    criterion: SegmentationLoss
    trainable: list
    frozen: dict  # the frozen towers' fingerprints, checked on resume
    ckpt: Optional[Path]  # the checkpoint resumed from
    init: Optional[InitReport]  # what train.init_from loaded
    notes: list[str] = field(default_factory=list)  # said once at start-up
    step: int = 0
    consumed: int = 0  # samples consumed: the data position
    best: dict = field(default_factory=lambda: {"mIoU": None, "step": None})
    loss: float = float("nan")
    class_similarity: Optional[torch.Tensor] = None  # (K, K) for train.negatives=similar


def set_up(cfg: Config, ctx: DistContext, resume: Optional[str]) -> Run:
    """Data (first: a missing dataset must fail before minutes of model building), model, prompts (computed once,
    kept on the device), optimizer, and the state of the checkpoint resumed from."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    out = Path(tc.output_dir)
    skipped: list[str] = []  # damaged checkpoints passed over (filled on rank 0, which logs)
    ckpt = _on_main(ctx, lambda: resume_target(out, resume, skipped))  # decided once, so every rank agrees
    local_batch_size(tc.batch_size, ctx.world_size)  # a batch the ranks cannot share fails now
    train_set = build_train_dataset(cfg)
    if tc.init_from and ckpt is None:
        checkpoint_files(tc.init_from)  # a wrong path fails now, too
    val_set = _validation_set(cfg)
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
    run = Run(
        cfg, ctx, out, train_set, val_set, model, model, train_prompts, val_prompts, precision, optimizer,
        make_scaler(precision, ctx.device), SegmentationLoss(tc.loss_ignore),
        [p for p in model.parameters() if p.requires_grad], frozen, ckpt, init, notes=list(skipped),
    )  # fmt: skip
    if ckpt is not None:
        state, notes = restore_training(ckpt, model, optimizer, run.scaler, frozen, ctx.rank, ctx.world_size)
        run.step, run.consumed, run.best = state["step"], state["consumed_samples"], state["best"]
        run.notes += notes
        started_by = state.get("training_code")  # None: a checkpoint written before it was recorded
        if started_by is not None and started_by != training_code():
            run.notes.append(
                f"resuming a run that other code started (training code {started_by}, now {training_code()}): "
                "the continuation mixes the two"
            )
        changed = config_changes(state["config"], cfg.to_dict())
        if changed:
            run.notes.append(
                "resuming with changed settings (exactness holds only if none matter): " + "; ".join(changed)
            )
    else:
        seed_all(mix_seed(tc.seed, 0x7A1, ctx.rank))  # per-rank runtime randomness (drop path)
    if ctx.is_main:
        _prepare_output(out, cfg)
    run.net = _wrap(model, ctx, tc.compile)
    if tc.classes_per_step and tc.negatives == "similar":
        run.class_similarity = prompt_similarity(train_prompts, cfg.model.prompt_type)
    return run


def _validation_set(cfg: Config):
    tc = cfg.train
    if tc.eval_every <= 0:
        return None
    try:
        return build_dataset(cfg.data.val_dataset, root=cfg.data.root, split="val")
    except DataError as e:
        raise DataError(
            f"validation set (data.val_dataset, evaluated every train.eval_every={tc.eval_every} "
            f"steps): {e}; or --set train.eval_every=0 to train without evaluation"
        ) from None


def _wrap(model, ctx: DistContext, compile_: bool) -> torch.nn.Module:
    net: torch.nn.Module = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            broadcast_buffers=False,
            gradient_as_bucket_view=True,
        )
    if compile_:
        net = cast(torch.nn.Module, torch.compile(net))  # compiling a Module gives an OptimizedModule (a Module)
    return net


def announce(run: Run, logger: TrainLogger) -> None:
    """The start-up table, what train.init_from did, and the notes (skipped checkpoints, changed settings)."""
    cfg, ctx, tc = run.cfg, run.ctx, run.cfg.train
    local_batch = local_batch_size(tc.batch_size, ctx.world_size)
    if run.init is not None:
        weights = (
            f"{tc.init_from}: {len(run.init.loaded)} tensors loaded, "
            f"{len(run.init.fresh) + len(run.init.mismatched)} fresh (list below)"
        )
    else:
        weights = f"from the checkpoint {run.ckpt}" if run.ckpt else "fresh"
    facts = [
        ("device", f"{ctx.device} x {ctx.world_size} process(es)"),
        ("precision", run.precision),
        ("batch", f"{local_batch} per process x {ctx.world_size} = {tc.batch_size} (effective)"),
        ("iterations", f"{tc.iterations}" + (f" (resuming at step {run.step} from {run.ckpt})" if run.ckpt else "")),
        ("initial weights", weights),
        (
            "classes per step",
            f"present + {'similar' if tc.negatives == 'similar' else 'random'} absent up to {tc.classes_per_step}"
            if tc.classes_per_step
            else "all",
        ),
        (
            "optimizer",
            f"AdamW lr {tc.lr:g}, image encoder x{tc.encoder_lr_mult:g}, wd {tc.weight_decay:g} "
            f"(0 on norm/bias/embedding), grad clip {tc.grad_clip:g}",
        ),
        ("schedule", f"cosine to 0 over {tc.iterations} steps, warm-up {tc.warmup_iters}"),
        (
            "train data",
            f"{run.train_set.name}: {len(run.train_set)} images, {len(run.train_set.class_names)} classes, "
            f"crop {cfg.data.crop_size}",
        ),
        (
            "prompts",
            f"bank {cfg.prompts.bank}"
            if cfg.prompts.bank
            else f"text tower, {run.train_prompts.num_templates} templates",
        ),
        ("evaluation", f"{run.val_set.name} every {tc.eval_every} steps" if run.val_set else "off"),
        (
            "output",
            f"{run.out} (checkpoint every {tc.checkpoint_every or '-'} steps and at the end, "
            f"keep {tc.keep_checkpoints or 'all'})",
        ),
    ]
    logger.message(setup_table(run.model, facts))
    if run.init is not None:
        for line in run.init.lines(run.model):
            logger.message(line)
        if ctx.is_main:
            atomic_write_json(run.out / "init_from.json", run.init.to_dict())
    elif tc.init_from:
        run.notes.append(
            f"train.init_from={tc.init_from} is not applied: the run resumes from {run.ckpt}, which holds its weights"
        )
    for note in run.notes:
        logger.message(note)


def _on_main(ctx: DistContext, fn: Callable):
    """``fn()`` computed on rank 0 and shared; a user error raised there is raised on every rank."""
    result = None
    if ctx.is_main:
        try:
            result = ("ok", fn())
        except DPSegError as e:
            result = ("error", e)
    result = broadcast_object(result)
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

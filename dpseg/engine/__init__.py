"""The training engine: one top-down loop (:mod:`dpseg.engine.train`) and its small helpers.

* :mod:`~dpseg.engine.distributed` — torchrun / DDP context, the deterministic sharded infinite sampler;
* :mod:`~dpseg.engine.data` — the training loader whose augmentation is seeded by sample position;
* :mod:`~dpseg.engine.optim` — AdamW parameter groups, the cosine schedule, precision;
* :mod:`~dpseg.engine.resume` — atomic checkpoints, RNG capture, strict trainable-state loading;
* :mod:`~dpseg.engine.logging` — progress bar, JSONL / CSV / TensorBoard logs, the start-up table;
* :mod:`~dpseg.engine.class_sampling` — the prompts of a dataset's vocabulary (bank or text tower).
"""

from dpseg.errors import DPSegError
from dpseg.fingerprint import code_fingerprint


class TrainingError(DPSegError):
    """Training cannot go on (non-finite loss, out of memory, ...); the message says what to change."""


def training_code() -> str:
    """The fingerprint of the code that trains (:func:`dpseg.fingerprint.code_fingerprint` of this engine's loop):
    written into every checkpoint and exported model, so a cache of trained runs can tell a run made by other code."""
    return code_fingerprint("dpseg.engine.train")

"""A checkpoint's default score threshold (``eval.min_score``), chosen on a labelled validation split.

The model scores every class on its own (a sigmoid per class); ``dpseg segment``, :class:`~dpseg.segmenter.Segmenter`
and the demo give a pixel its best class and leave it *unlabelled* when that class's probability is below
``eval.min_score``. Whether anything should stay unlabelled depends on the vocabulary:

* it has a background / "other" class, or names every pixel (``eval.background_class: true``): every pixel gets
  a class, the threshold is 0;
* otherwise (``false``) the labels' ignore pixels are what no class names (the background of the synthetic world,
  the unnamed parts of PC-59), and they should stay unlabelled.

``null`` (the default) is decided here from the split: ``true`` when under ``COVERED_IGNORE_FRACTION`` (1 %) of its
pixels are ignore (a few unannotated pixels do not make a background) or the dataset merges a background class
(PAS-20b), else ``false``.

**Criterion.** For every threshold t of :data:`THRESHOLDS` (0, 0.05, ..., 0.95) the split's predictions - the map
``segment`` makes by default, pass 2 when the checkpoint refines - are thresholded and scored as a (K + 1)-class
problem: the K classes plus "unlabelled", whose ground truth is the ignore pixels. The chosen t maximises the mIoU
over those K + 1 classes (a class absent from the ground truth is left out, as in :mod:`dpseg.evaluation.metrics`);
ties go to the lower t. mIoU weighs every class alike, so a threshold that erases a small class costs as much as
background left painted over. With ``background_class: true`` nothing is measured and t = 0.

The result goes into the checkpoint's ``config.json`` (``eval.min_score``, ``eval.background_class``; written
atomically, the weights and their content hash untouched) with the whole table in ``calibration.json`` beside it:
at the end of training when a validation set exists (:mod:`dpseg.engine.train`), or with ``dpseg calibrate``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from dpseg.atomic import atomic_write_json
from dpseg.checkpoint import CONFIG_NAME, load_model
from dpseg.data.catalog import build_dataset
from dpseg.distributed import all_reduce_sum, rank_world
from dpseg.errors import CheckpointError, DataError, DPSegError, InputError
from dpseg.evaluation.inference import Inference
from dpseg.evaluation.metrics import metrics_from_confusion
from dpseg.evaluation.runtime import resolve_device
from dpseg.progress import progress as progress_bar
from dpseg.prompts.resolve import resolve_prompts
from dpseg.prompts.templates import model_templates
from dpseg.safe_load import read_json

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))  # 0, 0.05, ..., 0.95
COVERED_IGNORE_FRACTION = 0.01
# images the end of training calibrates on when train.eval_max_images does not say (a 20-value grid needs no more;
# two passes over all 5000 COCO-Stuff validation images would cost as much as a long evaluation)
TRAINING_CALIBRATION_IMAGES = 500
CALIBRATION_NAME = "calibration.json"
CALIBRATED_KEYS = ("min_score", "background_class")  # the eval keys this module writes into a checkpoint's config


@dataclass
class Calibration:
    """The chosen threshold and the evidence: mIoU (%, K classes + "unlabelled") per threshold."""

    min_score: float
    background_class: bool
    dataset: str = ""
    num_images: int = 0
    ignore_fraction: Optional[float] = None  # share of the split's pixels that are ignore
    prediction: str = "pass1"  # which map was thresholded (pass2 = after refinement)
    criterion: str = "mIoU over the K classes + 'unlabelled' (ground truth: ignore pixels), ties to the lower threshold"
    scores: dict = field(default_factory=dict)  # threshold -> mIoU in % (None: nothing to score)

    def to_dict(self) -> dict:
        return {**asdict(self), "scores": {f"{t:g}": s for t, s in self.scores.items()}}

    def summary(self) -> str:
        if self.background_class and not self.scores:
            return "score threshold eval.min_score = 0: the vocabulary has a background class, every pixel gets a class"
        best = self.scores.get(self.min_score)
        zero = self.scores.get(0.0)
        gain = "" if best is None or zero is None else f" (mIoU with 'unlabelled' {best:.1f} vs {zero:.1f} at 0)"
        return (
            f"score threshold eval.min_score = {self.min_score:g}, chosen on {self.dataset} "
            f"({self.num_images} images, {self.prediction}){gain}"
        )

    def table(self) -> str:
        rows = [f"{'min_score':>9}  mIoU (K + unlabelled)"]
        for t, s in self.scores.items():
            mark = "  <- chosen" if t == self.min_score else ""
            rows.append(f"{t:>9.2f}  {'-' if s is None else f'{s:.2f}'}{mark}")
        return "\n".join(rows)


@torch.no_grad()
def calibrate(
    inference: Inference,
    dataset,
    background_class: Optional[bool] = None,
    max_images: int = 0,
    progress: bool = True,
    thresholds=THRESHOLDS,
) -> Calibration:
    """Choose ``eval.min_score`` for the map ``inference`` makes (its last pass: pass 2 when it refines) on ``dataset``
    (items ``{"image", "label"}``, ``class_names``; optional ``vocabulary`` and ``merge_predictions_from`` as the
    evaluator reads them) by the criterion of the module doc. Distributed: every rank takes every world_size-th
    image and the counts are summed."""
    name = getattr(dataset, "name", type(dataset).__name__)
    merge = getattr(dataset, "merge_predictions_from", None)
    if background_class is None and merge is not None:
        background_class = True  # the vocabulary's own background class (PAS-20b)
    if background_class:
        return Calibration(0.0, True, name)
    thresholds = sorted(float(t) for t in thresholds)
    if not thresholds or thresholds[0] != 0 or thresholds[-1] >= 1:
        raise InputError(f"thresholds must start at 0 and stay below 1, got {thresholds}")
    K = len(dataset.class_names)
    n = len(dataset) if not max_images else min(max_images, len(dataset))
    rank, world = rank_world()
    indices = list(range(rank, n, world))
    # conf[t, g, p]: pixels of ground truth g (K = ignore, i.e. "unlabelled") predicted p (K = below threshold t)
    conf = torch.zeros(len(thresholds), K + 1, K + 1, dtype=torch.int64)
    key = inference.final
    bar = progress_bar(len(indices), f"calibrate on {name}", unit="img", enabled=progress and rank == 0)
    for i in indices:
        item = dataset[i]
        pred = inference.predict([item["image"]])[0][key]
        labels, scores = pred.labels.reshape(-1).long(), pred.scores.reshape(-1).float()
        if merge is not None:
            labels = labels.clamp(max=merge)
        gt = item["label"].reshape(-1).long()
        if gt.shape != labels.shape:
            raise DataError(f"{name} item {i}: a label of {tuple(item['label'].shape)} differs from its image's size")
        gt = torch.where(gt < 0, K, gt)
        if gt.numel() and int(gt.max()) > K:
            raise DataError(f"{name} item {i}: label value {int(gt.max())} is out of range for {K} classes")
        for j, t in enumerate(thresholds):
            p = torch.where(scores >= t, labels, K) if t > 0 else labels
            conf[j] += torch.bincount(gt * (K + 1) + p, minlength=(K + 1) ** 2).reshape(K + 1, K + 1)  # (g, p)
        bar.update()
    bar.close()
    conf = all_reduce_sum(conf)
    total = int(conf[0].sum())
    if total == 0:
        raise DataError(f"{name}: no pixels to calibrate the score threshold on ({n} images)")
    ignore_fraction = float(conf[0, K].sum()) / total
    if background_class is None:
        background_class = ignore_fraction < COVERED_IGNORE_FRACTION
    result = Calibration(0.0, bool(background_class), name, n, round(ignore_fraction, 6), key)
    if background_class:
        return result
    best = None
    for j, t in enumerate(thresholds):
        miou = metrics_from_confusion(conf[j])["mIoU"]
        result.scores[t] = None if miou is None else round(miou, 4)
        if miou is not None and (best is None or miou > best + 1e-9):
            best, result.min_score = miou, t
    return result


# ------------------------------------------------------------------------------------------ checkpoints


def write_calibration(directory: Union[str, Path], calibration: Calibration) -> Path:
    """Put the calibration into a checkpoint folder: ``eval.min_score`` and ``eval.background_class`` of its
    ``config.json`` (everything else kept byte for byte in meaning; written atomically) and ``calibration.json``.
    The weights are not touched, so their content hash stays valid."""
    directory = Path(directory)
    update_eval_config(
        directory, {"min_score": calibration.min_score, "background_class": calibration.background_class}
    )
    atomic_write_json(directory / CALIBRATION_NAME, calibration.to_dict())  # last: marks it done
    return directory / CONFIG_NAME


def update_eval_config(directory: Union[str, Path], values: dict) -> bool:
    """Set these ``eval`` keys in a checkpoint folder's ``config.json`` (everything else kept; written atomically,
    only if something changes; the weights are not touched). True if it changed."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    try:
        data = read_json(path, "checkpoint config", dict, CheckpointError)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; is {directory} a dpseg checkpoint folder?") from None
    if not isinstance(data.get("eval"), dict):
        raise CheckpointError(f"{path} has no eval section; is {directory} a dpseg checkpoint folder?")
    if all(k in data["eval"] and data["eval"][k] == v for k, v in values.items()):
        return False
    data["eval"].update(values)
    atomic_write_json(path, data)
    return True


def read_calibration(directory: Union[str, Path]) -> Optional[dict]:
    """The ``calibration.json`` of a checkpoint folder when its ``config.json`` still holds that choice, else None
    (never calibrated, or exported again since)."""
    try:
        done = read_json(Path(directory) / CALIBRATION_NAME, "calibration", dict)
        ev = read_json(Path(directory) / CONFIG_NAME, "checkpoint config", dict)["eval"]
        if not isinstance(ev, dict):
            return None
    except (DPSegError, KeyError):
        return None
    same = ev.get("min_score") == done.get("min_score") and ev.get("background_class") == done.get("background_class")
    return done if same else None


def calibrate_checkpoint(
    checkpoint: Union[str, Path],
    dataset: str,
    *,
    root: str = "",
    bank: Optional[str] = None,
    background_class: Optional[bool] = None,
    device=None,
    max_images: int = 0,
    two_pass: Optional[bool] = None,
    progress: bool = True,
) -> Calibration:
    """(Re)choose the threshold of a checkpoint folder on ``dataset`` (a catalog name or a custom folder
    ``PATH[:SPLIT]``, its ``val`` split by default) and write it into the folder (:func:`write_calibration`).
    ``two_pass=None`` thresholds the map ``segment`` makes by default; ``bank`` defaults to the checkpoint's."""
    folder = Path(checkpoint).expanduser()
    if not folder.is_dir():
        raise CheckpointError(
            f"{checkpoint} is not a checkpoint folder on this machine (config.json + "
            "model.safetensors); calibration writes into the folder, so give a local one"
        )
    if max_images < 0:
        raise InputError(f"max_images must be >= 0 (0 = the whole split), got {max_images}")
    data = build_dataset(dataset, root=root, split="val")  # a missing dataset fails before the model is built
    device = resolve_device(device, what="device", error=InputError)
    model, cfg = load_model(folder, device=device)
    if bank is None and cfg.prompts.bank and Path(cfg.prompts.bank).is_dir():
        bank = cfg.prompts.bank
    vocab = list(getattr(data, "vocabulary", data.class_names))
    prompts = resolve_prompts(
        model, model_templates(cfg), vocab, bank=bank, device=device, what=f"the vocabulary of {data.name}"
    ).prompts
    inference = Inference(model, prompts, cfg.eval, two_pass=two_pass, device=device)
    result = calibrate(inference, data, background_class, max_images, progress)
    result.dataset = str(dataset)
    write_calibration(folder, result)
    return result

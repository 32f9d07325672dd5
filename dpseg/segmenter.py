"""Segment your own images into the classes you name.

    from dpseg.segmenter import Segmenter
    seg = Segmenter.from_pretrained("path/to/checkpoint")            # config.json + model.safetensors, or a hub id
    seg.set_vocabulary(["cat", "sofa, couch", "lamp"], bank="banks/home")   # encoded once, cached per vocabulary
    result = seg.segment("photo.jpg")                                 # or a list of paths / PIL / arrays / tensors
    result.labels          # (H, W) class indices at the original resolution (EXIF orientation applied)
    result.classes         # per class: pixels, area fraction, mean probability over its area

Pixels whose best class probability is below ``min_score`` stay unlabelled (255 in an 8-bit map). The default is
the checkpoint's ``eval.min_score``, chosen on its validation split when it was trained (0 for a vocabulary with a
background class, and in checkpoints from before calibration): :mod:`dpseg.evaluation.calibrate`.

Visual prompts come from a prompt bank (``bank=``; default: the checkpoint's ``prompts.bank``, stored relative to
the checkpoint folder when it lies next to it; a missing one is named in the error), from your own exemplar images
(``exemplars=DIR`` with ``DIR/<class name>/*.jpg``; with a bank too, the exemplars win for the classes they
cover), or from nowhere (``text_only=True``). :attr:`Segmenter.prompt_source`
says which, and the choice is logged. A model trained with visual prompts (``prompt_type`` dual/visual, or visual
cost volumes) refuses a vocabulary without visual prompts unless you pass ``text_only=True``; it then runs
*degraded*: V is replaced by T (so R = T) and the visual cost volumes see no prompt (zero stage features). With
refinement on, pass 2 replaces the visual prompts of the classes found in pass 1 by crops of the image (the
paper's own refinement), which recovers part of the loss.

Inference is :mod:`dpseg.evaluation.inference` - the same protocol (``eval`` section of the checkpoint: whole or
slide) and chunked argmax as ``dpseg eval``. Memory stays bounded on very large images: above ``max_full_pixels``
the map is computed on a copy downscaled to that size and enlarged (nearest) - the model sees a 768 px view
anyway; or ``tile=N`` cuts the image into N x N tiles at native resolution (overlap N/4, seams at the middle of
each overlap), each run through the protocol: more detail for small objects in large photos.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union, cast

import numpy as np
import torch

from dpseg.checkpoint import load_model, missing_bank_message
from dpseg.errors import BankError, InputError
from dpseg.evaluation.inference import Inference
from dpseg.evaluation.runtime import resolve_device
from dpseg.image_io import DEFAULT_MAX_PIXELS, ImageInput, to_image_tensor
from dpseg.model.dual_prompt import PromptSet
from dpseg.prompts.resolve import resolve_prompts, source_key
from dpseg.prompts.templates import model_templates
from dpseg.vocab import check_class_list, parse_class_list

log = logging.getLogger("dpseg.segmenter")
STATS_BAND = 1 << 22  # pixels per band when counting classes (bounded memory on huge maps)


@dataclass
class ClassScore:
    index: int
    name: str
    pixels: int
    area: float  # fraction of the image
    mean_score: Optional[float]  # mean probability of the class over its pixels (None when absent)


@dataclass
class SegmentationResult:
    """One image's segmentation. ``labels[y, x] = k`` means ``class_names[k]``."""

    labels: np.ndarray  # (H, W) uint8 / int16 / int32 class indices at the original resolution
    scores: np.ndarray  # (H, W) float32 probability of the winning class
    class_names: list[str]
    pixels: np.ndarray  # (K,) pixels per class
    score_sums: np.ndarray  # (K,) sum of the winning probability over each class's pixels
    prompt_source: str = ""
    refined: bool = False
    labels_pass1: Optional[np.ndarray] = None  # pass-1 map when refined
    min_score: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def unlabelled_value(self) -> int:
        """Label of pixels whose best probability is below ``min_score``: 255 (uint8), 65535 (uint16), -1 (int32)."""
        return -1 if self.labels.dtype == np.int32 else int(np.iinfo(self.labels.dtype).max)

    @property
    def unlabelled_pixels(self) -> int:
        return int(self.labels.size - self.pixels.sum())

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.labels.shape)  # (H, W)

    @property
    def classes(self) -> list[ClassScore]:
        """Every class of the vocabulary, in vocabulary order."""
        total = max(1, self.labels.size)
        return [
            ClassScore(k, n, int(p), int(p) / total, float(s / p) if p else None)
            for k, (n, p, s) in enumerate(zip(self.class_names, self.pixels, self.score_sums))
        ]

    @property
    def present(self) -> list[ClassScore]:
        """The classes found in the image, largest first."""
        return sorted((c for c in self.classes if c.pixels), key=lambda c: (-c.pixels, c.index))

    def mask(self, name: str) -> np.ndarray:
        """(H, W) bool mask of one class."""
        return self.labels == self.class_names.index(name)

    def to_dict(self) -> dict:
        round_ = lambda x: None if x is None else round(x, 6)  # noqa: E731
        return {
            "size": list(self.size),
            "refined": self.refined,
            "prompts": self.prompt_source,
            **self.meta,
            "min_score": self.min_score,
            "unlabelled_pixels": self.unlabelled_pixels,
            "unlabelled_value": self.unlabelled_value,
            "classes": [
                {
                    "index": c.index,
                    "name": c.name,
                    "pixels": c.pixels,
                    "area": round_(c.area),
                    "mean_score": round_(c.mean_score),
                }
                for c in self.classes
            ],
        }


def class_stats(labels: torch.Tensor, scores: torch.Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and summed scores per class, counted in bands of rows so that no int64 copy of a huge map is made."""
    pixels = torch.zeros(num_classes, dtype=torch.float64)
    sums = torch.zeros(num_classes, dtype=torch.float64)
    rows = max(1, STATS_BAND // max(1, labels.shape[1]))
    for y in range(0, labels.shape[0], rows):
        lab = labels[y : y + rows].reshape(-1).long()
        valid = (lab >= 0) & (lab < num_classes)  # unlabelled pixels (min_score) hold 255 / -1
        lab, sc = lab[valid], scores[y : y + rows].reshape(-1)[valid].double()
        pixels += torch.bincount(lab, minlength=num_classes).double()
        sums += torch.bincount(lab, weights=sc, minlength=num_classes)
    return pixels.long().numpy(), sums.numpy()


def _numpy_labels(t: torch.Tensor) -> np.ndarray:
    return t.numpy().view(np.uint16) if t.dtype == torch.int16 else t.numpy()  # indices are >= 0


class Segmenter:
    """A loaded checkpoint plus the current vocabulary's prompts (see the module doc)."""

    def __init__(
        self, model, cfg, device: Union[str, torch.device, None] = None, bank: Optional[str] = None, cache_size: int = 8
    ):
        self.device = (
            resolve_device(device, what="device", error=InputError)
            if device is not None
            else next(model.parameters()).device
        )
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.templates = model_templates(cfg)
        # how images become maps (protocol, refinement, early rejection, precision: dpseg.evaluation.inference), as
        # `dpseg eval` makes them; replace it to change them (dataclasses.replace(seg.settings, protocol="slide"))
        self.settings = cfg.eval
        # pixels below this probability stay unlabelled unless segment(min_score=) says otherwise: the checkpoint's
        # eval.min_score, chosen on its validation split (dpseg.evaluation.calibrate; 0 in older checkpoints)
        self.min_score = float(cfg.eval.min_score)
        configured = cfg.prompts.bank and Path(cfg.prompts.bank).expanduser().is_dir()
        self.default_bank = bank if bank is not None else (cfg.prompts.bank if configured else None)
        # the checkpoint's bank when its config names one that is not there (named in the error if it is needed)
        self.missing_bank = cfg.prompts.bank if bank is None and cfg.prompts.bank and not configured else None
        self.max_pixels = DEFAULT_MAX_PIXELS  # files above this are refused before decoding
        self.max_full_pixels = 4096 * 4096  # above this, predict on a downscaled copy (bounded memory)
        self.cache_size = cache_size
        self.checkpoint: Optional[str] = None
        self.class_names: Optional[list[str]] = None
        self.prompts: Optional[PromptSet] = None
        self.prompt_source = "none (call set_vocabulary first)"
        self.degraded = False
        self._cache: OrderedDict = OrderedDict()

    @classmethod
    def from_pretrained(
        cls,
        source: Union[str, Path],
        device: Union[str, torch.device, None] = None,
        bank: Optional[str] = None,
        **kwargs,
    ) -> Segmenter:
        """Load our checkpoint directory (config.json + model.safetensors) or a hub id (online, or cached)."""
        device = resolve_device(device, what="device", error=InputError)
        model, cfg = load_model(source, device=device)
        seg = cls(model, cfg, device, bank, **kwargs)
        seg.checkpoint = str(source)
        return seg

    # ------------------------------------------------------------------------------------------ vocabulary
    def set_vocabulary(
        self,
        classes: Union[str, Sequence[str]],
        bank: Optional[str] = None,
        exemplars: Optional[str] = None,
        text_only: bool = False,
    ) -> Segmenter:
        """Choose the classes (a list, or one string split as :func:`parse_class_list` says) and their prompts."""
        names = parse_class_list(classes) if isinstance(classes, str) else check_class_list(list(classes))
        if text_only and (bank is not None or exemplars is not None):
            raise InputError("text_only=True cannot be combined with a bank or exemplars; choose one source")
        if bank is None and not text_only:
            bank = self.default_bank
        needs_bank = bank is None and exemplars is None and not text_only and self.model.needs_visual_prompts
        if needs_bank and self.missing_bank:
            raise BankError(missing_bank_message(self.missing_bank, self.checkpoint or "(in memory)"))
        key = source_key(names, bank, exemplars)
        cached = key in self._cache
        if cached:
            self._cache.move_to_end(key)
        else:
            resolved = resolve_prompts(
                self.model,
                self.templates,
                names,
                bank=bank,
                exemplars=exemplars,
                text_only=text_only,
                device=self.device,
            )
            self._cache[key] = (resolved.prompts, resolved.source, resolved.degraded)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self.prompts, self.prompt_source, self.degraded = self._cache[key]
        self.class_names = names
        level = logging.WARNING if self.degraded else logging.INFO
        log.log(
            level,
            "vocabulary of %d classes; prompts: %s%s",
            len(names),
            self.prompt_source,
            " (cached)" if cached else "",
        )
        return self

    # ---------------------------------------------------------------------------------------- segmenting
    def load(self, image: ImageInput) -> torch.Tensor:
        """Any supported input -> uint8 (3, H, W) RGB (rules in :mod:`dpseg.image_io`)."""
        return to_image_tensor(image, self.max_pixels)

    def _vocabulary(self) -> tuple[PromptSet, list[str]]:
        """(prompts, class names) of the current vocabulary."""
        if self.prompts is None or self.class_names is None:
            raise InputError("no vocabulary: call set_vocabulary(classes, ...) before segment()")
        return self.prompts, self.class_names

    @torch.no_grad()
    def segment(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        refine: Optional[bool] = None,
        tile: int = 0,
        batch_size: int = 1,
        min_score: Optional[float] = None,
    ):
        """One image -> :class:`SegmentationResult`; a list -> a list. ``refine=None`` follows the checkpoint's
        ``eval.two_pass`` (when the prompts have visual prompts); ``tile`` see the module doc; pixels whose best
        class probability is below ``min_score`` are left unlabelled (``result.unlabelled_value``); ``None`` =
        the checkpoint's ``eval.min_score`` (:attr:`min_score`), 0 labels every pixel."""
        min_score = self.min_score if min_score is None else float(min_score)
        if not 0 <= min_score < 1:
            raise InputError(f"min_score must be in [0, 1), got {min_score}")
        prompts, _ = self._vocabulary()
        single = not isinstance(images, (list, tuple))
        # a list or tuple is a batch; anything else is one image (load() refuses what is not an image)
        items: list[ImageInput] = list(images) if isinstance(images, (list, tuple)) else [cast(ImageInput, images)]
        if not items:
            raise InputError("no images given")
        inference = self.inference(refine)
        results = []
        for start in range(0, len(items), max(1, batch_size)):
            loaded = [self.load(im) for im in items[start : start + max(1, batch_size)]]
            for pred in inference.predict(loaded, tile=tile, max_pixels=self.max_full_pixels):
                results.append(self._result(pred, inference, min_score))
        return results[0] if single else results

    def inference(self, refine: Optional[bool] = None) -> Inference:
        """The inference of the current vocabulary: ``refine=None`` follows the checkpoint's ``eval.two_pass`` where
        the model and prompts can refine; True where they cannot is an error."""
        return Inference(self.model, self._vocabulary()[0], self.settings, two_pass=refine, device=self.device)

    def _result(self, pred: dict, inference: Inference, min_score: float) -> SegmentationResult:
        labels, scores = pred[inference.final]
        if min_score > 0:
            labels = labels.masked_fill(scores < min_score, 255 if labels.dtype == torch.uint8 else -1)
        names = self._vocabulary()[1]
        pixels, sums = class_stats(labels, scores, len(names))
        return SegmentationResult(
            labels=_numpy_labels(labels),
            scores=scores.numpy(),
            class_names=list(names),
            pixels=pixels,
            score_sums=sums,
            prompt_source=self.prompt_source,
            refined=inference.two_pass,
            labels_pass1=_numpy_labels(pred["pass1"].labels) if inference.two_pass else None,
            min_score=min_score,
            meta={"protocol": self.settings.protocol, "degraded": self.degraded},
        )

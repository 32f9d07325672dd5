"""The one inference path: a model, one vocabulary's prompts and the ``eval`` settings -> predictions.

An :class:`Inference` is built once from ``(model, prompts, eval settings)`` plus explicit overrides (two passes or
one, device, precision) and owns everything between an image and its label map: the test protocol (``whole`` /
``slide``, :mod:`dpseg.evaluation.protocols`, and for very large images tiles or a downscaled copy), the two-pass
rule, the refinement policy (``eval.refine_*`` -> :class:`~dpseg.model.refine.RefinePolicy`), SED's category early
rejection, class chunking and autocast. :class:`~dpseg.segmenter.Segmenter` (and through it ``dpseg segment`` and the
demo), :func:`~dpseg.evaluation.evaluator.evaluate` (``dpseg eval``, training's evaluation, the quickstart) and
:func:`~dpseg.evaluation.calibrate.calibrate` all predict through it, so a map is computed the same way everywhere.

**The two-pass rule.** Refinement replaces visual prompts, so it can run only when the model reads visual prompts and
the prompt set has them. ``two_pass=None`` follows ``eval.two_pass`` where refinement can run and is off elsewhere;
``two_pass=True`` where it cannot run is an error.

A new ``eval`` key costs its schema line (:mod:`dpseg.config_schema`) and its use here; a new refinement setting
``eval.refine_X`` is the field ``X`` of :class:`~dpseg.model.refine.RefinePolicy`, mapped by name.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from dpseg.config import validate_eval
from dpseg.config_schema import EvalConfig
from dpseg.data.transforms import resize_label
from dpseg.errors import InputError
from dpseg.evaluation.protocols import Prediction, check_images, label_dtype, predict, window_starts
from dpseg.evaluation.runtime import autocast, resolve_precision
from dpseg.model.dual_prompt import PromptSet
from dpseg.model.early_rejection import EarlyRejection
from dpseg.model.refine import RefinePolicy, two_pass

REFINE_PREFIX = "refine_"
# the eval keys that decide pass 2: what a model folder must carry for `dpseg segment` and the demo to refine as an
# experiment did (dpseg.quickstart)
REFINEMENT_KEYS = ("two_pass", *(REFINE_PREFIX + f.name for f in fields(RefinePolicy)))
# the eval keys that change no prediction (what is evaluated, how fast, what segment leaves unlabelled afterwards)
NOT_PREDICTION_KEYS = (
    "datasets",
    "class_chunk",
    "batch_size",
    "max_images",
    "num_workers",
    "min_score",
    "background_class",
)


def refine_policy(settings: EvalConfig) -> RefinePolicy:
    """``eval.refine_X`` -> ``RefinePolicy.X`` for every field."""
    return RefinePolicy(**{f.name: getattr(settings, REFINE_PREFIX + f.name) for f in fields(RefinePolicy)})


def _device_of(model) -> torch.device:
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


class Inference:
    """Images -> predictions for one model, one prompt set and the ``eval`` settings (module doc)."""

    def __init__(
        self,
        model,
        prompts: PromptSet,
        settings: EvalConfig,
        *,
        two_pass: Optional[bool] = None,
        device: Union[str, torch.device, None] = None,
        precision: Optional[str] = None,
    ):
        validate_eval(settings)
        self.model, self.prompts, self.settings = model, prompts, settings
        self.num_classes = prompts.num_classes
        self.device = torch.device(device) if device is not None else _device_of(model)
        # eval.precision unless the caller runs under its own (training evaluates with the training precision)
        self.precision = resolve_precision(
            precision or settings.precision, self.device, what="config key 'eval.precision'"
        )
        self.can_refine = bool(model.needs_visual_prompts and prompts.has_visual)
        if two_pass and not self.can_refine:
            raise InputError(
                "refinement (the second pass) replaces visual prompts, which "
                + (
                    "these prompts do not have (text prompts only)"
                    if model.needs_visual_prompts
                    else "this model does not use"
                )
                + "; turn it off (two_pass=False, refine=False, --no-refine, --set eval.two_pass=false)"
            )
        self.two_pass = bool(settings.two_pass and self.can_refine if two_pass is None else two_pass)
        self.passes = ("pass1", "pass2") if self.two_pass else ("pass1",)
        self.final = self.passes[-1]  # the map `dpseg segment` shows and calibration thresholds
        self.refine = refine_policy(settings)

    def describe(self) -> dict:
        """The settings that shape the predictions (for keys of cached results): every eval key but those in
        :data:`NOT_PREDICTION_KEYS`, refinement only when it runs, slide settings only for ``slide``, plus the
        resolved two-pass rule and precision."""
        out = {k: v for k, v in asdict(self.settings).items() if k not in NOT_PREDICTION_KEYS}
        if not self.two_pass:
            out = {k: v for k, v in out.items() if not k.startswith(REFINE_PREFIX)}
        if self.settings.protocol != "slide":
            out = {k: v for k, v in out.items() if not k.startswith("slide_")}
        return {**out, "two_pass": self.two_pass, "precision": self.precision}

    # ------------------------------------------------------------------------------------------ the model call
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> {"pass1": logits (B, K, H/4, W/4)[, "pass2": ...]}; with early rejection,
        rejected classes come back at ``REJECTED_LOGIT`` (probability exactly 0)."""
        s = self.settings
        rejection = EarlyRejection.of(s)
        if not self.two_pass:
            options = rejection.decode_options()
            return {"pass1": self.model(images, self.prompts, class_chunk=s.class_chunk, **options)["logits"]}
        out = two_pass(self.model, images, self.prompts, self.refine, class_chunk=s.class_chunk, rejection=rejection)
        return {"pass1": out["logits_pass1"], "pass2": out["logits"]}

    # ------------------------------------------------------------------------------------------- images
    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor], tile: int = 0, max_pixels: int = 0) -> list[dict]:
        """uint8 (3, H_i, W_i) images of any sizes -> per image {pass: Prediction} at the image's resolution.

        ``tile`` = N > 0 cuts each image into N x N tiles at native resolution (overlap N/4, seams in the middle of
        each overlap), each run through the protocol: more detail for small objects in large photos. Otherwise an
        image above ``max_pixels`` (0 = no limit) is predicted on a copy downscaled to that many pixels and the map
        enlarged (nearest): bounded memory, and the model sees an ``input_size`` view anyway."""
        check_images(images)
        if tile and (tile < 32 or tile % 32):
            raise InputError(f"tile must be a multiple of 32 (>= 32), got {tile}")
        out: list = [None] * len(images)
        with autocast(self.precision, self.device):
            plain = [i for i, im in enumerate(images) if not tile and not (max_pixels and _pixels(im) > max_pixels)]
            if plain:
                for i, pred in zip(plain, self._protocol([images[i] for i in plain])):
                    out[i] = pred
            for i, img in enumerate(images):
                if out[i] is None:
                    out[i] = self._tiled(img, tile) if tile else self._downscaled(img, max_pixels)
        return out

    def _protocol(self, images: Sequence[torch.Tensor]) -> list[dict]:
        return predict(self.forward, images, self.settings, self.num_classes, self.device)

    def _downscaled(self, img: torch.Tensor, max_pixels: int) -> dict:
        H, W = img.shape[-2:]
        s = math.sqrt(max_pixels / (H * W))
        size = (max(1, int(W * s)), max(1, int(H * s)))
        small = Image.fromarray(img.permute(1, 2, 0).numpy()).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        work = torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1)  # (h, w, 3) -> (3, h, w)
        pred = self._protocol([work])[0]
        return {
            key: Prediction(resize_label(p.labels, (H, W)), resize_label(p.scores, (H, W))) for key, p in pred.items()
        }

    def _tiled(self, img: torch.Tensor, tile: int) -> dict:
        H, W = img.shape[-2:]
        stride = tile - tile // 4
        spans = [_cores(window_starts(n, min(tile, n), stride), min(tile, n), n) for n in (H, W)]
        maps: dict = {}
        for y, y0, y1 in spans[0]:
            for x, x0, x1 in spans[1]:
                pred = self._protocol([img[:, y : y + tile, x : x + tile]])[0]
                for key, p in pred.items():
                    if key not in maps:
                        maps[key] = Prediction(
                            torch.zeros(H, W, dtype=label_dtype(self.num_classes)), torch.zeros(H, W)
                        )
                    maps[key].labels[y0:y1, x0:x1] = p.labels[y0 - y : y1 - y, x0 - x : x1 - x]
                    maps[key].scores[y0:y1, x0:x1] = p.scores[y0 - y : y1 - y, x0 - x : x1 - x]
        return maps


def _pixels(image: torch.Tensor) -> int:
    return int(image.shape[-2]) * int(image.shape[-1])


def _cores(starts: list[int], tile: int, size: int) -> list[tuple[int, int, int]]:
    """(start, core_begin, core_end) per tile: each pixel belongs to one tile, seams in the middle of overlaps."""
    bounds = [0] + [(s1 + s0 + tile) // 2 for s0, s1 in zip(starts, starts[1:])] + [size]
    return [(s, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]

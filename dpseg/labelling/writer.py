"""One batch of a labelling job: predicted through the :class:`~dpseg.segmenter.Segmenter` (the one inference
path), then each image's outputs written atomically, its JSON last - the mark that the image is done."""

from __future__ import annotations

import json
import os
import signal
from typing import Optional

import torch

from dpseg.atomic import atomic_write_text
from dpseg.errors import DPSegError
from dpseg.image_io import label_image, save_atomic, score_image
from dpseg.labelling.coco import ShardWriter, image_record
from dpseg.labelling.job import Layout
from dpseg.labelling.loader import Loaded
from dpseg.labelling.manifest import Entry
from dpseg.segmenter import SegmentationResult, Segmenter
from dpseg.visualize import overlay

KILL_HOOK = "DPSEG_LABEL_TEST_KILL"  # "RANK:N": that rank kills itself (SIGKILL) after the label map of its N-th image


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower()


def predict_batch(seg: Segmenter, items: list[Loaded], refine: Optional[bool], tile: int, min_score: float) -> list:
    """Decoded images -> [(item, SegmentationResult or None, error or None)]. A batch that fails (out of memory, an
    image the model refuses) is retried one image at a time, so only the image at fault fails."""
    try:
        results = seg.segment(
            [it.image for it in items if it.image is not None],
            refine=refine,
            tile=tile,
            batch_size=len(items),
            min_score=min_score,
        )
        return [(it, r, None) for it, r in zip(items, results)]
    except (DPSegError, RuntimeError, MemoryError) as e:
        if not isinstance(e, DPSegError) and not _is_oom(e):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(items) > 1:
            return [out for it in items for out in predict_batch(seg, [it], refine, tile, min_score)]
        why = "out of memory; try --tile 1024 or --batch-size 1" if _is_oom(e) else str(e)
        return [(items[0], None, why)]


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 6)


class ImageWriter:
    """Writes one image's outputs (dpseg.labelling.job's layout): label map, overlay, scores, shard record, JSON."""

    def __init__(self, layout: Layout, shard: ShardWriter, rank: int, overlays: bool, scores: bool, alpha: float):
        self.layout, self.shard = layout, shard
        self.overlays, self.scores, self.alpha = overlays, scores, alpha
        hook = os.environ.get(KILL_HOOK, "")
        self.kill_after = int(hook.split(":")[1]) if hook and int(hook.split(":")[0]) == rank else 0
        self.written = 0

    def __call__(self, entry: Entry, image: torch.Tensor, result: SegmentationResult) -> None:
        layout, K = self.layout, len(result.class_names)
        save_atomic(label_image(result.labels, K), layout.label_png(entry.name))
        self.written += 1
        if self.written == self.kill_after:  # the kill -9 drill of the tests: the worst moment, the map without JSON
            os.kill(os.getpid(), signal.SIGKILL)
        if self.overlays:
            rgb = image.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
            picture = overlay(rgb, result.labels, result.class_names, result.pixels.tolist(), self.alpha)
            save_atomic(picture, layout.overlay(entry.name), quality=90)
        if self.scores:
            save_atomic(score_image(result.scores), layout.score_png(entry.name))
        present = [c for c in result.classes if c.pixels]  # vocabulary order
        self.shard.append(image_record(entry, result.labels, [(c.index, _round(c.mean_score)) for c in present]))
        info = {
            "image": entry.image,
            "file_name": entry.file_name,
            "size": list(result.size),
            "refined": result.refined,
            "unlabelled_pixels": result.unlabelled_pixels,
            "classes": [
                {
                    "index": c.index,
                    "name": c.name,
                    "pixels": c.pixels,
                    "area": _round(c.area),
                    "mean_score": _round(c.mean_score),
                }
                for c in present
            ],
        }
        atomic_write_text(layout.marker(entry.name), json.dumps(info, indent=1, allow_nan=False) + "\n")

"""Images of a labelling job decoded in worker processes, one fixed batch at a time.

Each item is read with dpseg's one reader (:func:`dpseg.image_io.to_image_tensor`: EXIF, modes, 16-bit, alpha,
the pixel limit checked from the header) and comes back as a :class:`Loaded` - the tensor, or the reason it could
not be read. A worker never raises for an image, so one bad file cannot stop the job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from dpseg.errors import DPSegError
from dpseg.image_io import to_image_tensor


@dataclass
class Loaded:
    index: int
    image: Optional[torch.Tensor]  # uint8 (3, H, W), or None when it could not be read
    error: Optional[str]  # why not
    seconds: float  # time spent reading and decoding


class ImageReader(torch.utils.data.Dataset):
    def __init__(self, paths: dict[int, str], max_pixels: int):
        self.paths, self.max_pixels = paths, max_pixels  # manifest index -> image file (this rank's images only)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Loaded:
        start = time.perf_counter()
        try:
            image: Optional[torch.Tensor] = to_image_tensor(self.paths[index], self.max_pixels)
            error = None
        except DPSegError as e:
            image, error = None, str(e)
        except Exception as e:  # noqa: BLE001 - whatever a file does to a decoder is that file's failure
            image, error = None, f"cannot read image {self.paths[index]}: {type(e).__name__}: {e}"
        return Loaded(index, image, error, time.perf_counter() - start)


def _as_list(items: list[Loaded]) -> list[Loaded]:
    return items


def batch_loader(paths: dict[int, str], batches: list[list[int]], max_pixels: int, workers: int):
    """An iterator over ``batches`` (lists of manifest indices) -> lists of :class:`Loaded`, decoded by ``workers``
    processes ahead of the model (0 = in this process)."""
    return torch.utils.data.DataLoader(
        ImageReader(paths, max_pixels),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_as_list,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )

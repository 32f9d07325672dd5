"""How the decoder holds its class maps (B, K, C, h, w): memory layout and class chunks. Neither changes a value.

* **Layout.** On a CPU each class map is kept channels-last - (B, K, h, w, C) in memory - so that the per-class
  convolutions run oneDNN's channels-last kernels (1.5-3x faster at the decoder's widths than on plain NCHW maps)
  and the class attention reads a class's tokens without reordering them. Modules keep whatever layout they get.
* **Chunks.** Every step but class aggregation is per class, so the decoder runs a few classes at a time. On a CPU
  a chunk holds at most :data:`CPU_CHUNK_ELEMENTS` elements of maps (each convolution, norm and activation re-reads
  them, and small chunks stay in the caches); elsewhere (a GPU wants large batches) it holds ``class_chunk`` classes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

# 4M elements (16 MB fp32) of class maps per chunk on a CPU - e.g. 8 classes at the head's 192x192 at 768^2: a K = 150
# vocabulary decoded in 13 s of CPU time instead of 18-20 s with chunks of 128 classes (2-core reference machine).
CPU_CHUNK_ELEMENTS = 2**22


def stage_chunk(class_chunk: int, per_class: int, device: torch.device, cpu_elements: int = CPU_CHUNK_ELEMENTS) -> int:
    """Classes per chunk for maps of ``per_class`` elements each: on a CPU as many as fit ``cpu_elements`` (0 = no
    limit), never more than ``class_chunk`` (0 = all)."""
    if device.type != "cpu" or cpu_elements <= 0:
        return class_chunk
    fit = max(1, cpu_elements // per_class)
    return fit if class_chunk <= 0 else min(class_chunk, fit)


def use_channels_last(setting: Optional[bool], device: torch.device) -> bool:
    """Whether class maps are channels-last: as set, or (None) on a CPU, where it is measured faster."""
    return setting if setting is not None else device.type == "cpu"


def to_class_layout(maps: Tensor, channels_last: bool) -> Tensor:
    """(B, k, C, h, w) class maps in the decoder's layout (a copy only when the layout changes)."""
    if not channels_last:
        return maps
    return maps.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # memory (B, k, h, w, C)


def class_maps(B: int, K: int, C: int, h: int, w: int, like: Tensor) -> Tensor:
    """An empty (B, K, C, h, w) tensor whose class maps are each channels-last ((B, K, h, w, C) in memory)."""
    return like.new_empty((B, K, h, w, C)).permute(0, 1, 4, 2, 3)  # (B, K, h, w, C) -> (B, K, C, h, w)


def is_channels_last_per_class(x: Tensor) -> bool:
    """Whether a (B, K, C, h, w) tensor is laid out as :func:`class_maps` makes them (and not plainly contiguous)."""
    return x.permute(0, 1, 3, 4, 2).is_contiguous() and not x.is_contiguous()


def empty_class_maps(like: Tensor, n: int) -> Tensor:
    """An empty (B, n, C, h, w) for n classes of maps like ``like`` (B, k, C, h, w), in its memory layout."""
    B, _, C, h, w = like.shape
    return class_maps(B, n, C, h, w, like) if is_channels_last_per_class(like) else like.new_empty((B, n, C, h, w))

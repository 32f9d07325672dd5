"""Visual prompts from images: encoding with the frozen visual-prompt encoder, averaging, exemplar folders.

Every image goes through the one prompt-image rule of :func:`dpseg.model.prompt_image.prepare_prompt_image`
(generated images, user exemplars and the crops of the second inference pass alike).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from dpseg.errors import DataError, InputError
from dpseg.image_io import IMAGE_SUFFIXES
from dpseg.model.prompt_image import ImageLike, prepare_prompt_image
from dpseg.vocab import describe_duplicates, duplicate_groups


@torch.no_grad()
def encode_prompt_images(
    prompt_encoder, images: Sequence[ImageLike], size: int, batch_size: int = 32
) -> tuple[Tensor, list[Tensor]]:
    """Encode images with the frozen visual-prompt encoder: V (N, d) L2-normalised, [v_j (N, D_j), j = 2, 3, 4].

    Outputs are float32 on the encoder's device. Each batch is computed independently, so results do not depend
    on how a list is split across calls of the same batch composition.
    """
    if not len(images):
        raise InputError("no images to encode")
    param = next(prompt_encoder.parameters())
    globals_: list[Tensor] = []
    stages: list[list[Tensor]] = [[], [], []]
    for i in range(0, len(images), max(1, batch_size)):
        batch = torch.stack([prepare_prompt_image(im, size) for im in images[i : i + batch_size]])  # (b, 3, s, s)
        v, pooled = prompt_encoder.encode_prompts(batch.to(device=param.device, dtype=param.dtype))
        globals_.append(v.float())
        for j, p in enumerate(pooled):
            stages[j].append(p.float())
    return torch.cat(globals_), [torch.cat(s) for s in stages]


def average_prompts(v: Tensor, stages: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """One visual prompt from several images: mean of the L2-normalised V, renormalised; mean of each v_j."""
    return F.normalize(F.normalize(v, dim=-1).mean(dim=0), dim=-1), [s.mean(dim=0) for s in stages]


def find_exemplars(folder: Union[str, Path]) -> dict[str, list[Path]]:
    """``folder/<class name>/*.jpg`` -> {class name: sorted image paths}; hidden files and folders are skipped."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise DataError(f"exemplar folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"exemplar folder {folder} is not a directory; pass a folder of class_name/*.jpg")
    found: dict[str, list[Path]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            p
            for p in sub.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DataError(f"exemplar class folder {sub} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        found[sub.name] = files
    if not found:
        raise DataError(f"exemplar folder {folder} has no class sub-folders; expected {folder}/<class name>/*.jpg")
    try:
        dup = duplicate_groups(list(found))
    except ValueError as e:  # a folder named only by spaces and commas
        raise DataError(f"exemplar folder {folder}: {e}; rename that sub-folder after its class") from None
    if dup:
        raise DataError(
            f"exemplar folder {folder} has sub-folders for {describe_duplicates(dup)} more than once; "
            "merge them into one folder per class"
        )
    return found

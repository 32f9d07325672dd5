"""The training loader: catalog/custom dataset -> SED augmentation -> batches, reproducible to the bit.

Every sample's augmentation draws from its own generator seeded by ``(seed, sample position)``, never from a
worker's or the process's RNG. A batch therefore depends only on the step, not on ``data.num_workers``, on the
number of ranks, or on whether the run was resumed — which is what makes exact resume and the DDP / one-process
equivalence hold with worker processes too.
"""

from __future__ import annotations

import torch

from dpseg.config import Config
from dpseg.data.catalog import build_dataset
from dpseg.data.transforms import build_train_transform
from dpseg.engine.distributed import DistContext, ShardedInfiniteSampler, local_batch_size, mix_seed
from dpseg.errors import ConfigError, DataError


class PositionSeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset of raw items; key ``(index, position)`` -> item ``index`` augmented with seed ``position``."""

    def __init__(self, base, transform, seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, position = key
        g = torch.Generator().manual_seed(mix_seed(self.seed, 0xA06, position))
        item = self.transform(self.base[index], generator=g)
        return {"image": item["image"], "label": item["label"]}


def collate(items: list[dict]) -> dict:
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) != 1:
        raise DataError(
            f"training crops have different sizes {sorted(shapes)}; data.crop_size must pad every crop to one size"
        )
    return {
        "image": torch.stack([it["image"] for it in items]),  # B x (3, S, S) uint8 -> (B, 3, S, S)
        "label": torch.stack([it["label"] for it in items]),
    }  # B x (S, S) int64 -> (B, S, S)


def _worker_init(_worker_id: int) -> None:
    import cv2

    cv2.setNumThreads(0)  # OpenCV's own thread pool in every worker oversubscribes the cores


def build_train_dataset(cfg: Config):
    """The raw training dataset (no transform): a catalog name or a custom folder, split ``train``."""
    if cfg.data.crop_size % 32:
        raise ConfigError(
            f"config key 'data.crop_size' must be a multiple of 32 (the encoder's stride), got {cfg.data.crop_size}"
        )
    build_train_transform(cfg.data)  # check the augmentation settings before any data is read
    return build_dataset(cfg.data.train_dataset, root=cfg.data.root, split="train")


def build_train_loader(cfg: Config, dataset, ctx: DistContext, start_position: int) -> torch.utils.data.DataLoader:
    """An infinite loader of this rank's ``{"image": uint8 (b, 3, S, S), "label": int64 (b, S, S)}`` batches."""
    local = local_batch_size(cfg.train.batch_size, ctx.world_size)
    sampler = ShardedInfiniteSampler(
        len(dataset), cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.train.seed, start_position
    )
    workers = cfg.data.num_workers
    return torch.utils.data.DataLoader(
        PositionSeededDataset(dataset, build_train_transform(cfg.data), cfg.train.seed),
        batch_size=local,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(
            cfg.train.seed
        ),  # the loader's base-seed draw must not touch the global RNG
    )

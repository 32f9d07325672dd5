"""Training transforms: geometry keeps image and label aligned, the ignore value survives, constraints hold."""

import dataclasses

import pytest
import torch

from dpseg.config import DataConfig
from dpseg.data.transforms import (
    PadToSize,
    PhotometricJitterSSD,
    RandomCropCategoryArea,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    build_train_transform,
    resize_label,
    shortest_edge_size,
)
from dpseg.errors import ConfigError
from dpseg.vocab import IGNORE_INDEX


def coded_item(h, w, ignore_band=True):
    """An image whose pixels encode their own label: R = label, G = B = 0; label = (y * 7 + x) % 200."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    label = (ys * 7 + xs) % 200
    if ignore_band:
        label[: max(1, h // 5)] = IGNORE_INDEX
    r = torch.where(label >= 0, label, torch.full_like(label, 250))
    image = torch.stack([r, torch.zeros_like(r), torch.zeros_like(r)]).to(torch.uint8)
    return {"image": image, "label": label.long(), "name": "x"}


def assert_aligned(item, pad_value=None):
    r, lab = item["image"][0].long(), item["label"]
    labelled = lab >= 0
    assert torch.equal(r[labelled], lab[labelled])
    ignored = lab == IGNORE_INDEX
    ok = r[ignored] == 250
    if pad_value is not None:
        ok |= r[ignored] == pad_value
    assert ok.all()


def test_shortest_edge_arithmetic_matches_detectron2():
    assert shortest_edge_size(480, 640, 768, 2666) == (768, 1024)
    assert shortest_edge_size(100, 1000, 768, 2666) == (267, 2666)  # long side capped
    assert shortest_edge_size(375, 500, 640, 2560) == (640, 853)


@pytest.mark.parametrize("size", [(37, 91), (64, 64), (120, 33)])
def test_nearest_label_resize_keeps_values_and_alignment(size):
    item = coded_item(50, 70)
    out = ResizeShortestEdge(size[0], 0)(item)
    assert set(out["label"].unique().tolist()) <= set(item["label"].unique().tolist())
    down = resize_label(item["label"], (25, 35))  # exact 2x: picks every other pixel
    assert torch.equal(down, item["label"][::2, ::2])


def test_crop_flip_pad_keep_alignment_and_ignore():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        item = coded_item(40, 55)
        for t in (RandomCropCategoryArea(32), RandomHorizontalFlip(1.0), PadToSize(64, image_value=128)):
            item = t(item, g)
        assert item["image"].shape == (3, 64, 64) and item["label"].shape == (64, 64)
        assert_aligned(item, pad_value=128)
        assert (item["label"][32:, :] == IGNORE_INDEX).all() and (item["label"][:, 32:] == IGNORE_INDEX).all()


def test_flip_mirrors_both():
    item = coded_item(6, 9)
    out = RandomHorizontalFlip(1.0)(item)
    assert torch.equal(out["label"], item["label"].flip(-1)) and torch.equal(out["image"], item["image"].flip(-1))
    assert RandomHorizontalFlip(0.0)(item) is item


def test_category_area_constraint_rejects_single_class_crops():
    label = torch.zeros(100, 100, dtype=torch.long)
    label[:, 70:] = 1  # a 50-wide crop passes the 0.75 rule only for x in 33..50 (18 of 51 offsets)
    label[:10] = IGNORE_INDEX
    item = {"image": torch.zeros(3, 100, 100, dtype=torch.uint8), "label": label, "name": "x"}
    g = torch.Generator().manual_seed(1)
    constrained = [RandomCropCategoryArea(50, 0.75, tries=50)(item, g)["label"] for _ in range(30)]
    plain = [RandomCropCategoryArea(50, 1.0)(item, g)["label"] for _ in range(30)]

    def ok(lab):
        _, c = lab[lab != IGNORE_INDEX].unique(return_counts=True)
        return len(c) > 1 and c.max() / c.sum() < 0.75

    assert all(ok(x) for x in constrained)
    assert not all(ok(x) for x in plain)


def test_photometric_jitter_changes_only_the_image():
    item = coded_item(30, 30)
    item["image"][1] = 100
    g = torch.Generator().manual_seed(3)
    outs = [PhotometricJitterSSD()(item, g) for _ in range(8)]
    assert all(o["label"] is item["label"] for o in outs)
    assert all(o["image"].dtype == torch.uint8 and o["image"].shape == item["image"].shape for o in outs)
    assert sum(not torch.equal(o["image"], item["image"]) for o in outs) >= 6


def test_pipeline_from_config_is_reproducible_and_shaped():
    cfg = dataclasses.replace(DataConfig(), crop_size=48, resize_short=40, resize_max=100, cat_max_ratio=0.9)
    t = build_train_transform(cfg)
    item = coded_item(30, 80)
    a = t(item, torch.Generator().manual_seed(5))
    b = t(item, torch.Generator().manual_seed(5))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert a["image"].shape == (3, 48, 48) and a["label"].dtype == torch.int64
    assert (a["label"][40:] == IGNORE_INDEX).all()  # resized short side 40 < crop 48: padded rows are ignore
    no_aug = build_train_transform(
        dataclasses.replace(cfg, color_jitter=False, flip=False, resize_short=30, resize_max=0)
    )
    assert_aligned(no_aug(item, torch.Generator().manual_seed(0)), pad_value=cfg.pad_value)


def test_pipeline_config_errors():
    with pytest.raises(ConfigError, match="cat_max_ratio"):
        build_train_transform(dataclasses.replace(DataConfig(), cat_max_ratio=0.0))
    with pytest.raises(ConfigError, match="crop_size"):
        build_train_transform(dataclasses.replace(DataConfig(), crop_size=0))

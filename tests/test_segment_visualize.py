"""Palette, overlay with legend, label PNG depth, and in-memory image inputs (no model needed)."""

import numpy as np
import pytest
import torch
from PIL import Image

from dpseg.errors import DataError, InputError
from dpseg.image_io import MEAN_RGB, label_image, mask_image, read_image, score_image, to_image_tensor
from dpseg.visualize import blend, legend_entries, legend_html, overlay, palette


def test_palette_is_fixed_and_distinct():
    p = palette(300)
    assert p.shape == (300, 3) and p.dtype == np.uint8
    assert np.array_equal(palette(5), p[:5])  # a class keeps its colour whatever the vocabulary size
    assert len({tuple(c) for c in p}) == 300


def test_overlay_tints_marks_borders_keeps_unlabelled_and_adds_a_legend():
    img = np.full((40, 60, 3), 200, np.uint8)
    labels = np.zeros((40, 60), np.uint8)
    labels[:, 30:] = 1
    labels[:10, :10] = 255  # unlabelled
    tinted = blend(img, labels, palette(2), alpha=0.5, borders=True)
    assert (tinted[20, 5] != img[20, 5]).any() and (tinted[20, 5] != tinted[20, 45]).any()
    assert (tinted[2, 2] == img[2, 2]).all()  # unlabelled pixels keep the image colour
    assert tinted[20, 30].sum() < tinted[20, 45].sum()  # the class border is darkened
    full = overlay(img, labels, ["sky", "sea"], [labels.size // 2 - 100, labels.size // 2])
    assert (
        full.height >= 40
        and full.width > 60
        and np.array_equal(np.asarray(full)[:40, :60], blend(img, labels, palette(2)))
    )
    entries = legend_entries(["sky", "sea", "none"], [700, 1200, 0], total=2400)
    assert entries == [(1, "sea", 0.5), (0, "sky", pytest.approx(700 / 2400))]
    html = legend_html(["a<b", "sea"], [3, 1], 4)
    assert "a&lt;b" in html and "75.0%" in html and html.index("a&lt;b") < html.index("sea")


def test_overlay_of_a_huge_map_is_capped_for_viewing():
    labels = np.zeros((3000, 5000), np.uint8)
    out = overlay(np.zeros((3000, 5000, 3), np.uint8), labels, ["a"], max_side=1000)
    assert out.height <= 600 + 1 and 1000 < out.width < 1400


def test_label_png_depth_follows_the_vocabulary_size(tmp_path):
    small = label_image(np.array([[0, 1], [254, 255]], np.uint8), 255)
    small.save(tmp_path / "s.png")
    back = Image.open(tmp_path / "s.png")  # a palette PNG: colours for viewers, class indices for programs
    assert back.mode == "P" and np.asarray(back).tolist() == [[0, 1], [254, 255]]
    shown = np.asarray(back.convert("RGB"))
    assert shown[0, 0].tolist() == palette(1)[0].tolist() and shown[1, 0].tolist() == palette(255)[254].tolist()
    assert shown[1, 1].tolist() == [0, 0, 0]  # 255 = unlabelled: black
    big = label_image(np.array([[0, 299], [65535, 3]], np.uint16), 300)
    big.save(tmp_path / "l.png")
    back = Image.open(tmp_path / "l.png")
    assert back.mode == "I;16" and np.asarray(back).tolist() == [[0, 299], [65535, 3]]
    assert np.asarray(label_image(np.array([[-1, 5]], np.int32), 40000)).tolist() == [[65535, 5]]
    with pytest.raises(InputError, match="index 7 but the vocabulary has 3"):
        label_image(np.array([[7]], np.uint8), 3)


def test_score_and_mask_pngs_round_trip(tmp_path):
    scores = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    score_image(scores).save(tmp_path / "s.png")
    back = np.asarray(Image.open(tmp_path / "s.png"))
    assert back.dtype == np.uint16 and np.allclose(back / 65535, scores, atol=1 / 65535)
    mask_image(np.array([[True, False]])).save(tmp_path / "m.png")
    assert np.asarray(Image.open(tmp_path / "m.png")).tolist() == [[255, 0]]


def test_in_memory_inputs():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = to_image_tensor(rgb)
    assert t.shape == (3, 5, 7) and t.dtype == torch.uint8 and torch.equal(t.permute(1, 2, 0), torch.from_numpy(rgb))
    assert torch.equal(to_image_tensor(Image.fromarray(rgb)), t)
    assert torch.equal(to_image_tensor(t.float() / 255), t)
    assert torch.equal(to_image_tensor(rgb.astype(np.uint16) * 257), t)
    assert torch.equal(to_image_tensor(rgb[..., 0]), t[:1].expand(3, -1, -1))
    rgba = np.dstack([rgb, np.zeros((5, 7), np.uint8)])
    assert (to_image_tensor(rgba).permute(1, 2, 0) == torch.tensor(MEAN_RGB, dtype=torch.uint8)).all()
    with pytest.raises(InputError, match="uint8 or float"):
        to_image_tensor(torch.zeros(3, 4, 4, dtype=torch.int64))
    with pytest.raises(DataError, match="above the limit"):
        to_image_tensor(Image.new("RGB", (100, 100)), max_pixels=5000)


def test_oversized_file_is_refused_before_decoding(tmp_path, monkeypatch):
    Image.new("RGB", (300, 200)).save(tmp_path / "x.png")
    import dpseg.image_io as io

    monkeypatch.setattr(io, "load_image", lambda p: pytest.fail("decoded an over-large image"))
    with pytest.raises(DataError, match="300x200 = 0.1 megapixels, above the limit of 0.0"):
        read_image(tmp_path / "x.png", max_pixels=1000)
    with pytest.raises(DataError, match="is a directory"):
        read_image(tmp_path)

"""Pascal-Context-59 / 459 and VOC 2012 converters on tiny inputs in the official raw formats."""

import json

import numpy as np
import pytest
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils

from dpseg.commands import main
from dpseg.data.catalog import build_dataset
from dpseg.data.prepare.pascal import pc459_val_ids, prepare_pc59, prepare_pc459, prepare_voc
from dpseg.errors import DataError

PC_IDS = pc459_val_ids()


def rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def write_jpegs(folder, names, h=6, w=8):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(folder / f"{n}.jpg")


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_pc59_paints_rle_masks_in_order_and_maps_ids(tmp_path, capsys):
    src = tmp_path / "VOC2010"
    write_jpegs(src / "JPEGImages", [PC_IDS[0], PC_IDS[1], PC_IDS[2]])
    a = np.zeros((6, 8), bool)
    a[:4, :4] = True
    b = np.zeros((6, 8), bool)
    b[2:, 2:6] = True  # overlaps a; painted later, so it wins
    c = np.zeros((6, 8), bool)
    c[5, 7] = True
    uncompressed = {"size": [6, 8], "counts": [40, 2, 6]}  # column-major runs: 40 off, 2 on (rows 4-5 of col 6)
    data = {
        "images": [
            {"image_id": 1, "file_name": f"{PC_IDS[0]}.jpg", "height": 6, "width": 8, "phase": "val"},
            {"image_id": 2, "file_name": f"{PC_IDS[1]}.jpg", "height": 6, "width": 8, "phase": "train"},
            {"image_id": 3, "file_name": f"{PC_IDS[2]}.jpg", "height": 6, "width": 8, "phase": "val"},
        ],
        "annos_segmentation": [
            {"image_id": 1, "category_id": 2, "segmentation": rle(a)},  # aeroplane (first of the sorted ids) -> 0
            {"image_id": 2, "category_id": 2, "segmentation": rle(a)},
            {"image_id": 1, "category_id": 458, "segmentation": rle(b)},  # wood (largest id) -> 58
            {"image_id": 1, "category_id": 7, "segmentation": rle(c)},  # not one of the 59 -> 255
            {"image_id": 3, "category_id": 9, "segmentation": uncompressed},  # bag -> 1
        ],
        "categories": [],
    }
    (src / "trainval_merged.json").write_text(json.dumps(data))
    root = tmp_path / "root"
    prepare_pc59(src, root, progress=False)
    out_dir = root / "VOCdevkit/VOC2010/annotations_detectron2/pc59_val"
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{PC_IDS[0]}.png", f"{PC_IDS[2]}.png"]  # val phase only
    expect = np.full((6, 8), 255)
    expect[a] = 0
    expect[b] = 58
    expect[c] = 255
    assert (np.asarray(Image.open(out_dir / f"{PC_IDS[0]}.png")) == expect).all()
    third = np.asarray(Image.open(out_dir / f"{PC_IDS[2]}.png"))
    assert third[4:, 6].tolist() == [1, 1] and (third == 255).sum() == 46
    assert len(build_dataset("pc59", root=root)) == 2
    with pytest.raises(DataError, match="trainval_merged.json not found"):
        prepare_pc59(tmp_path, root, progress=False)


def test_pc459_uses_the_shipped_list_and_shifts_labelmap(tmp_path, capsys):
    src = tmp_path / "VOC2010"
    (src / "trainval").mkdir(parents=True)
    write_jpegs(src / "JPEGImages", PC_IDS[:2] + ["2007_000001"])
    labelmaps = {}
    for i, name in enumerate(PC_IDS[:2] + ["2007_000001"]):  # the last id is not in the val list
        lm = np.random.default_rng(i).integers(1, 460, size=(6, 8)).astype(np.uint16)
        lm[0, 0], lm[0, 1] = 1, 459
        scipy.io.savemat(src / "trainval" / f"{name}.mat", {"LabelMap": lm})
        labelmaps[name] = lm
    (src / "pascalcontext_val.txt").write_text("2007_000001\n")
    root = tmp_path / "root"
    prepare_pc459(src, root, progress=False)
    out = capsys.readouterr().out
    assert "2 of the 5104 listed val ids have a .mat file" in out and "differs from the peers' list" in out
    out_dir = root / "VOCdevkit/VOC2010/annotations_detectron2/pc459_val"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{n}.tif" for n in PC_IDS[:2])
    tif = Image.open(out_dir / f"{PC_IDS[0]}.tif")
    arr = np.asarray(tif)
    assert tif.format == "TIFF" and arr.dtype == np.uint16
    assert (arr == labelmaps[PC_IDS[0]] - 1).all() and arr.min() == 0 and arr.max() == 458
    assert build_dataset("pc459", root=root)[0]["label"].max() == 458
    with pytest.raises(DataError, match="trainval.tar.gz"):
        prepare_pc459(tmp_path, root, progress=False)


def test_voc_writes_pas20_and_pas20b_with_different_file_sets(tmp_path, capsys):
    src = tmp_path / "VOC2012"
    ids = ["2007_000033", "2007_000042", "2007_000061"]
    (src / "ImageSets/Segmentation").mkdir(parents=True)
    (src / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    (src / "SegmentationClassAug").mkdir()
    write_jpegs(src / "JPEGImages", ids, h=2, w=3)
    maps = [
        np.array([[0, 1, 20], [255, 21, 15]], np.uint8),  # objects + background; 21 is not a VOC id -> 255
        np.array([[0, 0, 0], [255, 0, 0]], np.uint8),  # background only: no PAS-20 label
        np.full((2, 3), 255, np.uint8),  # nothing labelled: neither
    ]
    for i, m in zip(ids, maps):
        Image.fromarray(m).save(src / "SegmentationClassAug" / f"{i}.png")
    root = tmp_path / "root"
    prepare_voc(src, root, progress=False)
    base = root / "VOCdevkit/VOC2012"
    assert sorted(p.stem for p in (base / "annotations_detectron2/val").iterdir()) == ids[:1]
    assert sorted(p.stem for p in (base / "annotations_detectron2_bg/val").iterdir()) == ids[:2]
    assert np.asarray(Image.open(base / "annotations_detectron2/val" / f"{ids[0]}.png")).tolist() == [
        [255, 0, 19],
        [255, 255, 14],
    ]
    assert np.asarray(Image.open(base / "annotations_detectron2_bg/val" / f"{ids[0]}.png")).tolist() == [
        [20, 0, 19],
        [255, 255, 14],
    ]
    assert "voc20 val: 1 written, 0 already done, 2 not written by design" in capsys.readouterr().out
    ds = build_dataset("voc20b", root=root)
    assert len(ds) == 2 and ds[1]["label"].tolist() == [[20, 20, 20], [-1, 20, 20]]
    (src / "SegmentationClassAug" / f"{ids[2]}.png").unlink()
    with pytest.raises(DataError, match="1 of the 3 val labels are missing"):
        prepare_voc(src, root, progress=False)


def test_splits_with_nothing_to_convert_are_errors(tmp_path, capsys):
    """'0 written' and exit 0 was the old answer to an empty download (issue 17 #4)."""
    src = tmp_path / "VOC2010"
    (src / "trainval").mkdir(parents=True)  # unpacked nothing (or the wrong archive) into trainval/
    (src / "trainval" / "2008_000002.txt").write_text("not a .mat")
    with pytest.raises(
        DataError,
        match=rf"pc459 val: nothing to convert; none of the 5104 listed val ids has a .mat file in "
        rf".*trainval \(expected e.g. .*trainval/{PC_IDS[0]}.mat\); unpack trainval.tar.gz",
    ):
        prepare_pc459(src, tmp_path / "root", progress=False)
    assert main(["prepare", "pc459", "--src", str(src), "--root", str(tmp_path / "root"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nothing to convert" in err and len(err.strip().splitlines()) == 1
    (src / "trainval_merged.json").write_text(
        json.dumps(
            {
                "images": [{"image_id": 1, "file_name": "a.jpg", "height": 2, "width": 2, "phase": "train"}],
                "annos_segmentation": [],
            }
        )
    )
    with pytest.raises(
        DataError,
        match=r"pc59 val: nothing to convert; expected images of phase 'val' in "
        r".*trainval_merged.json",
    ):
        prepare_pc59(src, tmp_path / "root", progress=False)
    voc = tmp_path / "VOC2012"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n")
    (voc / "SegmentationClassAug").mkdir()
    with pytest.raises(DataError, match=r"voc val: nothing to convert; .*val.txt lists no image ids"):
        prepare_voc(voc, tmp_path / "root", progress=False)

"""COCO-Stuff, ADE20K-150 and ADE20K-847 converters on tiny inputs in the official raw formats."""

import os
import pickle
import subprocess

import cv2
import numpy as np
import pytest
from PIL import Image

from dpseg.commands import main
from dpseg.data.catalog import build_dataset
from dpseg.data.prepare.ade20k import a847_size, prepare_a150, prepare_a847
from dpseg.data.prepare.coco_stuff import prepare_coco_stuff
from dpseg.errors import DataError


def save_palette_png(arr, path):
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def test_coco_stuff_ids_map_to_171_train_ids_and_resume(tmp_path, capsys):
    src, root = tmp_path / "raw", tmp_path / "datasets"
    # COCO ids: 0 person -> 0, 11 (unused gap) -> 255, 12 stop sign -> 11, 91 banner -> 80, 181 wood -> 170,
    # 182 (beyond the table) -> 255, 255 unlabelled -> 255
    raw = np.array([[0, 11, 12, 91], [181, 182, 255, 0]], np.uint8)
    expect = np.array([[0, 255, 11, 80], [170, 255, 255, 0]], np.uint8)
    for split in ("train2017", "val2017"):
        (src / "annotations" / split).mkdir(parents=True)
        (src / "images" / split).mkdir(parents=True)
        save_palette_png(raw, src / "annotations" / split / "000000000001.png")
        for n in (1, 2):
            Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(src / "images" / split / f"00000000000{n}.jpg")
        save_palette_png(
            np.full((2, 4), 255), src / "annotations" / split / "000000000002.png"
        )  # all unlabelled: still written
    prepare_coco_stuff(src, root, progress=False)
    for split in ("train2017", "val2017"):
        out = Image.open(root / "coco-stuff/annotations_detectron2" / split / "000000000001.png")
        assert out.mode == "L" and (np.asarray(out) == expect).all()
        assert (
            np.asarray(Image.open(root / "coco-stuff/annotations_detectron2" / split / "000000000002.png")) == 255
        ).all()
        assert (root / "coco-stuff/images" / split).resolve() == (src / "images" / split).resolve()
    assert "2 written, 0 already done" in capsys.readouterr().out
    prepare_coco_stuff(src, root, progress=False)
    assert "0 written, 2 already done" in capsys.readouterr().out
    prepare_coco_stuff(src, root, progress=False, force=True, workers=2)
    assert "2 written, 0 already done" in capsys.readouterr().out
    label = build_dataset("coco_stuff_171_val", root=root)[0]["label"]
    assert label.tolist() == [[0, -1, 11, 80], [170, -1, -1, 0]]


def test_coco_stuff_missing_annotations(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError, match="no stuffthingmaps under .*annotations"):
        prepare_coco_stuff(tmp_path / "raw", tmp_path / "root", progress=False)


def test_a150_subtracts_one_with_wraparound(tmp_path):
    src, root = tmp_path / "ADEChallengeData2016", tmp_path / "root"
    (src / "annotations/validation").mkdir(parents=True)
    (src / "images/validation").mkdir(parents=True)
    Image.fromarray(np.array([[0, 1, 150, 75]], np.uint8)).save(src / "annotations/validation/ADE_val_00000001.png")
    Image.fromarray(np.zeros((1, 4, 3), np.uint8)).save(src / "images/validation/ADE_val_00000001.jpg")
    prepare_a150(src, root, progress=False)
    out = np.asarray(Image.open(root / "ADEChallengeData2016/annotations_detectron2/validation/ADE_val_00000001.png"))
    assert out.tolist() == [[255, 0, 149, 74]]
    assert build_dataset("a150", root=root)[0]["label"].tolist() == [[-1, 0, 149, 74]]
    with pytest.raises(DataError, match="ADEChallengeData2016 folder"):
        prepare_a150(tmp_path / "elsewhere", root, progress=False)


def test_a847_resize_rule_rounds_half_to_even():
    assert a847_size(1024, 1025) == (512, 512)  # 512.5 -> 512 (Python round)
    assert a847_size(1024, 1027) == (512, 514)  # 513.5 -> 514
    assert a847_size(512, 900) == (512, 900)  # exactly 512: kept
    assert a847_size(800, 600) == (683, 512)
    assert a847_size(300, 200) == (300, 200)


ADE_IDS = {2978: 0, 312: 1, 1831: 11, 5: 65535, 3148: 846}  # 3148 = last table entry; 5 is not one of the 847


def encode_seg(ids):
    """ADE full _seg.png: R = (id // 256) * 10 + noise in 0..9, G = id % 256 (B = instance channel, ignored)."""
    rng = np.random.default_rng(0)
    r = (ids // 256) * 10 + rng.integers(0, 10, ids.shape)
    return np.stack([r, ids % 256, rng.integers(0, 255, ids.shape)], -1).astype(np.uint8)


def make_ade_full(tmp_path, sizes):
    src = tmp_path / "ADE20K_2021_17_01"
    folders, names, truth = [], [], {}
    rng = np.random.default_rng(1)
    for i, (h, w, grey) in enumerate(sizes):
        sub = f"ADE20K_2021_17_01/images/ADE/validation/scene{i}"
        (tmp_path / sub).mkdir(parents=True)
        name = f"ADE_val_{i + 1:08d}.jpg"
        ids = rng.choice(list(ADE_IDS), size=(h, w))
        img = rng.integers(0, 255, (h, w) if grey else (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / sub / name, quality=95)
        Image.fromarray(encode_seg(ids)).save(tmp_path / sub / name.replace(".jpg", "_seg.png"))
        folders.append(sub)
        names.append(name)
        truth[name] = ids
    folders.append("ADE20K_2021_17_01/images/ADE/training/x")  # training entries are not converted
    names.append("ADE_train_00000001.jpg")
    with open(src / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"folder": np.array(folders), "filename": np.array(names)}, f)
    return src, truth


def test_a847_matches_the_peers_rules(tmp_path):
    src, truth = make_ade_full(tmp_path, [(1024, 1025, False), (300, 400, True)])
    root = tmp_path / "root"
    prepare_a847(src, root, progress=False)
    base = root / "ADE20K_2021_17_01"
    table = ADE_IDS
    # 1024x1025 -> 512x512; labels sampled with cv2's nearest rule floor(dst * src / dst_size) on the raw ids
    lab = Image.open(base / "annotations_detectron2/validation/ADE_val_00000001.tif")
    arr = np.asarray(lab)
    assert lab.format == "TIFF" and arr.dtype == np.uint16 and arr.shape == (512, 512)
    rows, cols = np.arange(512) * 1024 // 512, np.floor(np.arange(512) * (1025 / 512)).astype(int)
    expect = np.vectorize(table.get)(truth["ADE_val_00000001.jpg"][rows][:, cols])
    assert (arr == expect).all()
    img = Image.open(base / "images_detectron2/validation/ADE_val_00000001.jpg")
    assert img.format == "JPEG" and img.size == (512, 512)
    # the small greyscale image is not resized, but re-written as a single-channel JPEG
    small = Image.open(base / "images_detectron2/validation/ADE_val_00000002.jpg")
    assert small.format == "JPEG" and small.mode == "L" and small.size == (400, 300)
    lab2 = np.asarray(Image.open(base / "annotations_detectron2/validation/ADE_val_00000002.tif"))
    assert (lab2 == np.vectorize(table.get)(truth["ADE_val_00000002.jpg"])).all()
    assert not (base / "images_detectron2/validation/ADE_train_00000001.jpg").exists()
    item = build_dataset("a847", root=root)[1]
    assert item["label"].min() == -1 and item["label"].max() == 846 and item["image"].shape == (3, 300, 400)


def test_a847_errors(tmp_path):
    src, _ = make_ade_full(tmp_path, [(40, 50, False)])
    (tmp_path / "ADE20K_2021_17_01/images/ADE/validation/scene0/ADE_val_00000001.jpg").unlink()
    with pytest.raises(DataError, match="1 of 1 validation images listed in index_ade20k.pkl are missing"):
        prepare_a847(src, tmp_path / "root", progress=False)
    (src / "index_ade20k.pkl").unlink()
    with pytest.raises(DataError, match="index_ade20k.pkl not found"):
        prepare_a847(src, tmp_path / "root", progress=False)


def test_cv2_nearest_is_not_pil_nearest():
    """The reason the A-847 prep uses cv2: PIL's nearest samples pixel centres and picks other pixels."""
    ids = np.arange(7 * 9, dtype=np.int32).reshape(7, 9)
    via_cv2 = cv2.resize(ids, (4, 3), interpolation=cv2.INTER_NEAREST)
    via_pil = np.asarray(Image.fromarray(ids).resize((4, 3), Image.NEAREST))
    assert not (via_cv2 == via_pil).all()


# ------------------------------------------------------------------------ issue 17: trust the inputs less


class _RunsCode:
    """What a tampered index would hold: unpickling it calls ``fn(arg)``."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def official_like_index():
    """The value types of the official index_ade20k.pkl (ADE20K starter notebook): arrays of names, count
    matrices, lists of strings (some numpy strings), numpy scalars and the 'description' dict."""
    names = np.array(["ADE_train_00000001.jpg", "ADE_val_00000001.jpg"])
    return {
        "filename": names,
        "folder": np.array(
            ["ADE20K_2021_17_01/images/ADE/training/a", "ADE20K_2021_17_01/images/ADE/validation/b"], dtype=object
        ),
        "scene": np.array(["/street", "/kitchen"], dtype=object),
        "objectnames": np.array(["wall", "car, auto"]),
        "objectPresence": np.array([[1.0, 0.0], [2.0, 3.0]]),
        "objectIsPart": np.zeros((2, 2), np.uint8),
        "objectcounts": np.array([1, 5]),
        "proportionClassIsPart": np.array([0.0, 0.25], np.float32),
        "wordnet_found": np.array([True, False]),
        "wordnet_frequency": np.array([np.float64(2.0), 1.0]),
        "wordnet_synset": [np.str_("wall.n.01"), "car.n.01"],
        "wordnet_gloss": ["a vertical structure", ""],
        "wordnet_level1": [np.int64(3), np.float32(0.5)],
        "description": {"filename": "array of file names"},
    }


@pytest.mark.parametrize("protocol, numpy1", [(2, False), (3, False), (4, False), (5, False), (2, True), (3, True)])
def test_ade_index_reader_admits_what_the_official_index_holds(tmp_path, protocol, numpy1):
    from dpseg.data.prepare.ade20k import load_ade_index

    index = official_like_index()
    data = pickle.dumps(index, protocol=protocol)
    if numpy1:  # the 2021 file was written by numpy 1.x, whose module is numpy.core (text GLOBAL opcodes here)
        data = data.replace(b"numpy._core.", b"numpy.core.")
        assert b"numpy.core.multiarray" in data
    (tmp_path / "index_ade20k.pkl").write_bytes(data)
    loaded = load_ade_index(tmp_path / "index_ade20k.pkl")
    assert loaded.keys() == index.keys()
    for key, value in index.items():
        if isinstance(value, np.ndarray):
            assert loaded[key].dtype == value.dtype and (loaded[key] == value).all(), key
        else:
            assert loaded[key] == value, key


@pytest.mark.parametrize(
    "payload, name",
    [
        (lambda marker: _RunsCode(os.system, f"touch {marker}"), "posix.system"),
        (lambda marker: _RunsCode(exec, f"open({str(marker)!r}, 'w')"), "builtins.exec"),
        (lambda marker: _RunsCode(subprocess.call, ["touch", str(marker)]), "subprocess.call"),
    ],
)
def test_tampered_ade_index_runs_no_code(tmp_path, capsys, payload, name):
    src, _ = make_ade_full(tmp_path, [(40, 50, False)])
    marker = tmp_path / "pwned"
    index = {"filename": np.array(["ADE_val_00000001.jpg"]), "folder": [payload(marker)]}  # hidden inside a list
    (src / "index_ade20k.pkl").write_bytes(pickle.dumps(index, protocol=4))
    with pytest.raises(
        DataError,
        match=rf"index_ade20k.pkl refers to global '{name}', which the official ADE20K index "
        "never holds; refusing to load it",
    ):
        prepare_a847(src, tmp_path / "root", progress=False)
    assert not marker.exists()
    assert main(["prepare", "a847", "--src", str(src), "--root", str(tmp_path / "root"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and len(err.strip().splitlines()) == 1 and name in err and "Traceback" not in err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"folder,filename\nADE_val_1.jpg\n", "is truncated or not a pickle file"),
        (
            pickle.dumps({"folder": np.array(["a"]), "filename": np.array(["b"])})[:40],
            "is truncated or not a pickle file",
        ),
        (b"", "is truncated or not a pickle file"),
        (pickle.dumps(["not", "a", "dict"]), "holds a list, not the ADE20K index dict"),
    ],
)
def test_ade_index_that_is_not_the_index_is_a_one_line_error(tmp_path, content, message):
    src, _ = make_ade_full(tmp_path, [(40, 50, False)])
    (src / "index_ade20k.pkl").write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        prepare_a847(src, tmp_path / "root", progress=False)
    assert "index_ade20k.pkl" in str(err.value) and "\n" not in str(err.value)


def test_splits_with_nothing_to_convert_are_errors(tmp_path, capsys):
    """'0 written' and exit 0 was the old answer to an empty download (issue 17 #4)."""
    src = tmp_path / "ADEChallengeData2016"
    (src / "annotations/validation").mkdir(parents=True)
    with pytest.raises(
        DataError,
        match=r"a150 validation: nothing to convert; expected the label PNGs \(ADE_val_\*.png\) "
        r"of ADEChallengeData2016.zip in .*annotations/validation",
    ):
        prepare_a150(src, tmp_path / "root", progress=False)
    assert main(["prepare", "a150", "--src", str(src), "--root", str(tmp_path / "root"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nothing to convert" in err and len(err.strip().splitlines()) == 1
    full, _ = make_ade_full(tmp_path, [(40, 50, False)])
    index = {"folder": np.array(["ADE20K_2021_17_01/images/ADE/training/x"]), "filename": np.array(["ADE_train_1.jpg"])}
    (full / "index_ade20k.pkl").write_bytes(pickle.dumps(index))
    with pytest.raises(
        DataError, match=r"a847 validation: nothing to convert; .*index_ade20k.pkl lists no ADE_val_\* images"
    ):
        prepare_a847(full, tmp_path / "root", progress=False)
    coco = tmp_path / "coco"
    (coco / "annotations" / "val2017").mkdir(parents=True)
    with pytest.raises(
        DataError,
        match=r"coco-stuff val2017: nothing to convert; expected the stuffthingmaps PNGs of "
        r"val2017 in .*annotations/val2017",
    ):
        prepare_coco_stuff(coco, tmp_path / "root", progress=False)

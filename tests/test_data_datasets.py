"""Custom folders, the catalog over a detectron2-layout root, label decoding and the error messages."""

import numpy as np
import pytest
import torch
from PIL import Image

from dpseg.data.catalog import ENTRIES, build_dataset, describe_dataset, get_entry, list_datasets
from dpseg.errors import DataError, InputError
from dpseg.vocab import IGNORE_INDEX, builtin_class_names
from dpseg.vocab import read_class_list as load_class_names


def make_custom(root, split="val", n=3, classes=("cat", "sofa, couch", "lamp"), bits=8, size=(6, 8)):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    rng = np.random.default_rng(0)
    labels = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(
            root / "images" / split / f"im{i}.jpg"
        )
        lab = rng.integers(0, len(classes), size=size)
        lab[0, :] = 255 if bits == 8 else 65535
        Image.fromarray(lab.astype(np.uint8 if bits == 8 else np.uint16)).save(root / "labels" / split / f"im{i}.png")
        labels.append(lab)
    return labels


def test_custom_folder_item_contract(tmp_path):
    labels = make_custom(tmp_path / "ds")
    ds = build_dataset(tmp_path / "ds")
    assert len(ds) == 3 and ds.name == "ds:val" and ds.class_names == ["cat", "sofa, couch", "lamp"]
    item = ds[1]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 6, 8)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (6, 8)
    assert item["name"] == "im1"
    expect = torch.from_numpy(labels[1]).long()
    expect[0, :] = IGNORE_INDEX
    assert torch.equal(item["label"], expect)


def test_custom_folder_16bit_labels_keep_class_255(tmp_path):
    classes = [f"c{i}" for i in range(300)]
    root = tmp_path / "big"
    make_custom(root, classes=classes, bits=16, n=1)
    lab = np.full((6, 8), 255, np.uint16)  # class 255 is a real class in a 16-bit file
    lab[0, 0] = 65535
    lab[1, 1] = 299
    Image.fromarray(lab).save(root / "labels" / "val" / "im0.png")
    item = build_dataset(root)[0]
    assert item["label"][0, 0] == IGNORE_INDEX and item["label"][1, 1] == 299 and item["label"][2, 2] == 255


def test_custom_folder_split_syntax_and_errors(tmp_path):
    make_custom(tmp_path / "ds", split="train")
    assert len(build_dataset(f"{tmp_path / 'ds'}:train")) == 3
    assert len(build_dataset(tmp_path / "ds", split="train")) == 3
    with pytest.raises(DataError, match="no images folder for split 'val'.*splits present: train"):
        build_dataset(tmp_path / "ds")
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(tmp_path / "nope")
    (tmp_path / "ds" / "classes.txt").unlink()
    with pytest.raises(DataError, match="no classes.txt"):
        build_dataset(f"{tmp_path / 'ds'}:train")


def test_custom_folder_label_errors(tmp_path):
    root = tmp_path / "ds"
    make_custom(root)
    Image.fromarray(np.full((6, 8), 7, np.uint8)).save(root / "labels" / "val" / "im0.png")
    with pytest.raises(DataError, match=r"im0.png holds values \[7\] that are neither classes 0..2"):
        build_dataset(root)[0]
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(root / "labels" / "val" / "im0.png")
    with pytest.raises(DataError, match="is 8x6 but its label .* is 8x5"):
        build_dataset(root)[0]
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "labels" / "val" / "extra.png")
    with pytest.raises(DataError, match="1 label file.*have no image.*extra.png"):
        build_dataset(root)
    (root / "classes.txt").write_text("a\n\nb\n")
    with pytest.raises(DataError, match="line 2 is blank"):
        build_dataset(root)


def test_class_name_lists():
    assert builtin_class_names("ade150")[7] == "bed "  # the peers' trailing space is kept: same text, same numbers
    assert len(builtin_class_names("ade847")) == 847 and builtin_class_names("ade847")[1] == "building, edifice"
    assert builtin_class_names("voc20b")[:20] == builtin_class_names("voc20")
    with pytest.raises(DataError, match="unknown class-name list"):
        builtin_class_names("ade151")


def test_load_class_names_files(tmp_path):
    (tmp_path / "a.json").write_text('["x", "y, z"]')
    assert load_class_names(tmp_path / "a.json") == ["x", "y, z"]
    (tmp_path / "b.txt").write_text("x\nx\n")
    with pytest.raises(DataError, match="more than once"):
        load_class_names(tmp_path / "b.txt")
    (tmp_path / "d.txt").write_text("red solid square\nblue square\nRed  solid square\n")  # one class, two labels
    with pytest.raises(
        DataError,
        match=r"d.txt names 'red solid square' \(written 'red solid square', 'Red  solid "
        r"square': names that differ only in case or spacing are one class\) more than once",
    ):
        load_class_names(tmp_path / "d.txt")
    (tmp_path / "e.json").write_text('["x", " , "]')
    with pytest.raises(DataError, match=r"e.json: class name ' , ' is empty"):
        load_class_names(tmp_path / "e.json")
    (tmp_path / "c.json").write_text('{"x": 1}')
    with pytest.raises(DataError, match="JSON list of non-empty strings"):
        load_class_names(tmp_path / "c.json")
    with pytest.raises(DataError, match="not found"):
        load_class_names(tmp_path / "none.txt")


def _fake_benchmark(root, entry, n=2, bad_value=None):
    img_dir, lab_dir = root / entry.image_dir, root / entry.label_dir
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if entry.label_ext == ".tif" else np.uint8
    for i in range(n):
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(img_dir / f"x{i}.jpg")
        lab = np.zeros((4, 5), dtype)
        lab[0, 0] = entry.ignore_value
        lab[1, 1] = len(entry.class_names()) - 1 if bad_value is None else bad_value
        Image.fromarray(lab).save(lab_dir / f"x{i}{entry.label_ext}")


@pytest.mark.parametrize("name", [e.name for e in ENTRIES])
def test_catalog_reads_detectron2_layout(tmp_path, name):
    entry = get_entry(name)
    _fake_benchmark(tmp_path, entry)
    ds = build_dataset(name, root=tmp_path)
    item = ds[0]
    assert item["label"][0, 0] == IGNORE_INDEX and item["label"][1, 1] == ds.num_classes - 1
    assert len(ds.class_names) == {"coco": 171, "ade150": 150, "ade847": 847, "pc59": 59, "pc459": 459, "voc20": 20}[
        entry.class_list
    ] + (1 if entry.extra_class else 0)


def test_catalog_voc20b_vocabulary_and_aliases(tmp_path, monkeypatch):
    _fake_benchmark(tmp_path, get_entry("voc20b"))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    ds = build_dataset("pas20b")
    assert ds.name == "voc20b" and len(ds.vocabulary) == 59 and ds.class_names[-1] == "background"
    assert ds.merge_predictions_from == 20
    assert get_entry("coco_stuff_171", "train").name == "coco_stuff_171_train"
    assert get_entry("ade20k_full_sem_seg_freq_val_all").name == "a847"
    with pytest.raises(InputError, match="no 'train' split"):
        build_dataset("a150", split="train")


def test_catalog_missing_and_unprepared_messages(tmp_path):
    with pytest.raises(
        DataError, match=r"images folder .*ADEChallengeData2016/images/validation is missing.*dpseg prepare a150"
    ):
        build_dataset("a150", root=tmp_path)
    (tmp_path / "VOCdevkit/VOC2010/JPEGImages").mkdir(parents=True)
    with pytest.raises(
        DataError, match=r"'pc459' is not prepared: label folder .*pc459_val is missing; run: dpseg prepare pc459"
    ):
        build_dataset("pc459", root=tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'a151'"):
        build_dataset("a151", root=tmp_path)


def test_catalog_out_of_range_label_is_an_error(tmp_path):
    _fake_benchmark(tmp_path, get_entry("pc459"), bad_value=65535)  # a wrapped 0 from a 1-based LabelMap
    with pytest.raises(DataError, match=r"\[65535\] that are neither classes 0..458 nor ignore \[459\]"):
        build_dataset("pc459", root=tmp_path)[0]


def test_describe_and_list(tmp_path):
    _fake_benchmark(tmp_path, get_entry("a150"), n=3)
    info = describe_dataset("ade150", root=tmp_path)
    assert info["name"] == "a150" and info["labelled_images"] == 3 and info["status"].startswith("incomplete (3/2000")
    rows = {r["name"]: r for r in list_datasets(tmp_path)}
    assert rows["a847"]["status"] == "missing" and rows["a150"]["classes"] == 150
    with pytest.raises(DataError, match="not a catalog dataset"):
        describe_dataset("foo")

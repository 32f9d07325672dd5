"""``dpseg prepare --verify`` finds what is wrong with a prepared root; the prepare CLI end to end."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from dpseg.commands import main
from dpseg.data.catalog import get_entry
from dpseg.data.prepare.pascal import pc459_val_ids
from dpseg.data.prepare.verify import verify_entry

PC_IDS = pc459_val_ids()


def put(root, entry, stem, label, image_hw=None):
    img_dir, lab_dir = root / entry.image_dir, root / entry.label_dir
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    h, w = image_hw or label.shape
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(img_dir / f"{stem}.jpg")
    Image.fromarray(label).save(lab_dir / f"{stem}{entry.label_ext}")


def test_clean_dataset_passes_with_expected_count(tmp_path):
    entry = dataclasses.replace(get_entry("a150"), num_images=2)
    put(tmp_path, entry, "ADE_val_00000001", np.array([[0, 149], [255, 3]], np.uint8))
    put(tmp_path, entry, "ADE_val_00000002", np.array([[5, 5]], np.uint8))
    problems, info = verify_entry(entry, tmp_path, progress=False)
    assert problems == []
    assert "4 distinct classes in 0..149 (of 0..149), ignore 255 present" in info[0]
    assert "2 labels, fingerprint sha256" in info[1]
    _, again = verify_entry(entry, tmp_path, workers=2, progress=False)
    assert again[1] == info[1]  # the fingerprint is deterministic
    Image.fromarray(np.array([[0, 148], [255, 3]], np.uint8)).save(tmp_path / entry.label_dir / "ADE_val_00000001.png")
    assert verify_entry(entry, tmp_path, progress=False)[1][1] != info[1]


def test_count_values_size_and_split_problems(tmp_path):
    entry = get_entry("a150")
    put(tmp_path, entry, "ADE_val_00000001", np.array([[0, 150]], np.uint8))  # 150 is out of range
    put(tmp_path, entry, "ADE_val_00000002", np.array([[0, 1]], np.uint8), image_hw=(3, 2))
    put(tmp_path, entry, "ADE_train_00000001", np.array([[0, 1]], np.uint8))
    Image.fromarray(np.zeros((1, 2), np.uint8)).save(tmp_path / entry.label_dir / "ADE_val_00000009.png")  # no image
    problems, _ = verify_entry(entry, tmp_path, progress=False)
    text = "\n".join(problems)
    assert "4 labelled images, expected 2000" in text
    assert "1 label(s) have no image" in text and "ADE_val_00000009" in text
    assert "not ADE_val_* validation files (e.g. ADE_train_00000001)" in text
    assert "1 label(s) hold out-of-range values: ADE_val_00000001.png (e.g. ADE_val_00000001.png: values [150]" in text
    assert (
        "1 label(s) differ in size from their image: ADE_val_00000002.png "
        "(e.g. ADE_val_00000002.png: label 2x1, image 2x3)" in text
    )


def test_missing_folders_name_the_fix(tmp_path):
    problems, _ = verify_entry(get_entry("a847"), tmp_path, progress=False)
    assert len(problems) == 1 and "images folder" in problems[0] and "dpseg prepare a847 --src" in problems[0]
    (tmp_path / get_entry("a847").image_dir).mkdir(parents=True)
    problems, _ = verify_entry(get_entry("a847"), tmp_path, progress=False)
    assert "not prepared (run: dpseg prepare a847" in problems[0]


def test_pc459_trap_detection(tmp_path):
    pc459, pc59 = get_entry("pc459"), get_entry("pc59")
    one_based = np.array([[1, 459]], np.uint16)  # LabelMap saved without the -1 shift
    put(tmp_path, pc459, PC_IDS[0], one_based)
    put(tmp_path, pc459, "2007_000001", np.array([[0, 3]], np.uint16))  # not in the 5104-id val list
    put(tmp_path, pc459, PC_IDS[1], np.array([[0, 3]], np.uint8))  # 8-bit: the wrong file type
    Image.fromarray(np.zeros((1, 2), np.uint8)).save(tmp_path / pc459.label_dir / f"{PC_IDS[2]}.png")  # wrong extension
    put(tmp_path, pc59, PC_IDS[0], np.array([[0, 3]], np.uint8))
    problems, _ = verify_entry(pc459, tmp_path, progress=False)
    text = "\n".join(problems)
    assert "3 labelled images, expected 5010" in text
    assert "wrong split list: 1 label(s) are not in the PC-459 val list (5104 ids) (e.g. 2007_000001)" in text
    assert "PC-459 and PC-59 label sets differ: 2 only in pc459" in text
    assert "1 label(s) contain the value 459" in text and "not shifted by one" in text
    assert "1 label(s) have the wrong file type" in text
    assert "1 label file(s) with the wrong extension (expected .tif)" in text


def test_a847_unresized_images_are_flagged(tmp_path):
    entry = dataclasses.replace(get_entry("a847"), num_images=1)
    put(tmp_path, entry, "ADE_val_00000001", np.zeros((600, 700), np.uint16))
    problems, _ = verify_entry(entry, tmp_path, progress=False)
    assert (
        len(problems) == 1
        and "not resized as the A-847 prep does" in problems[0]
        and "short side 600 > 512" in problems[0]
    )


def test_cli_prepare_verify_and_list(tmp_path, capsys):
    src = tmp_path / "raw" / "ADEChallengeData2016"
    (src / "annotations/validation").mkdir(parents=True)
    (src / "images/validation").mkdir(parents=True)
    Image.fromarray(np.array([[0, 1]], np.uint8)).save(src / "annotations/validation/ADE_val_00000001.png")
    Image.fromarray(np.zeros((1, 2, 3), np.uint8)).save(src / "images/validation/ADE_val_00000001.jpg")
    root = tmp_path / "datasets"
    assert main(["prepare", "ade150", "--src", str(src), "--root", str(root), "--no-progress", "--workers", "1"]) == 0
    assert "dpseg prepare a150 --verify" in capsys.readouterr().out
    assert main(["prepare", "a150", "--verify", "--root", str(root), "--no-progress", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL a150") and "problem: 1 labelled images, expected 2000" in out
    assert main(["prepare", "--list", "--root", str(root)]) == 0
    listing = capsys.readouterr().out
    assert "a150" in listing and "incomplete (1/2000" in listing and "missing" in listing


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["prepare", "ade999"], "unknown dataset 'ade999'"),
        (["prepare"], "name a dataset to prepare or verify"),
        (
            ["prepare", "a150", "--src", "/nonexistent/x"],
            "is not a folder; point it at the unpacked official ADEChallengeData2016",
        ),
        (["prepare", "voc", "--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_cli_errors(argv, msg, capsys, tmp_path):
    assert main(argv + ["--root", str(tmp_path)]) == 2
    assert msg in capsys.readouterr().err


def test_pc459_full_list_conversion_is_named_as_the_known_gap(tmp_path, monkeypatch):
    import dpseg.data.prepare.verify as verify

    monkeypatch.setattr(verify, "id_table", lambda name: PC_IDS[:3])  # stand-in for the 5104-id list
    for stem in PC_IDS[:3]:
        put(tmp_path, get_entry("pc459"), stem, np.array([[0, 3]], np.uint16))
    problems, _ = verify_entry(get_entry("pc459"), tmp_path, progress=False)
    assert len(problems) == 1 and "3 labelled images, expected 5010 (every id of the 5104-id list" in problems[0]
    assert "CAT-Seg issue #24" in problems[0]

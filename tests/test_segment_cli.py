"""``dpseg segment``: inputs (files, folders, globs; RGBA, grayscale, palette, 16-bit, EXIF), outputs (label PNG,
overlay, JSON, summary), per-file errors with the batch going on, exit codes, class lists, checkpoint mismatch."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image
from segment_helpers import artifacts, scene

from dpseg.commands import main
from dpseg.image_io import MEAN_RGB
from dpseg.segmenter import Segmenter
from dpseg.visualize import colorize, palette


def segment(capsys, *args, bank=True, checkpoint=None):
    a = artifacts()
    argv = ["segment", *map(str, args), "--checkpoint", str(checkpoint or a.ckpt), "--quiet"]
    if bank and "--text-only" not in args:
        argv += ["--bank", str(a.bank)]
    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def seg():
    a = artifacts()
    return Segmenter.from_pretrained(a.ckpt, device="cpu", bank=str(a.bank)).set_vocabulary(["cat", "lamp", "floor"])


def image_kinds(folder):
    """Files of every kind and the RGB array each must be read as."""
    base = scene(40, 56, seed=11)
    gray = base[..., 1]
    rgba = np.dstack([base, np.where(np.arange(56)[None, :] < 20, 0, 255).repeat(40, 0).astype(np.uint8)])
    see_through = base.copy()
    see_through[:, :20] = MEAN_RGB
    pal = Image.fromarray(base).quantize(16)
    rotated = np.ascontiguousarray(np.rot90(base, k=-1))  # what a viewer shows for EXIF orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(base).save(folder / "exif.png", exif=exif)
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "gray16.png")
    cv2.imwrite(str(folder / "rgb16.png"), (base.astype(np.uint16) * 257)[..., ::-1])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    pal.save(folder / "palette.png")
    return {
        "exif": rotated,
        "gray": np.dstack([gray] * 3),
        "gray16": np.dstack([gray] * 3),
        "rgb16": base,
        "rgba": see_through,
        "palette": np.asarray(pal.convert("RGB")),
    }


def test_every_image_kind_is_read_as_a_viewer_shows_it(seg, tmp_path):
    expected = image_kinds(tmp_path)
    names = list(expected)
    ref = seg.segment(scene(40, 56, seed=11), refine=False)
    assert len(np.unique(ref.labels)) > 1
    # one batch each, so that both sides see identical numerics
    got = seg.segment([tmp_path / f"{n}.png" for n in names], refine=False, batch_size=len(names))
    want = seg.segment([expected[n] for n in names], refine=False, batch_size=len(names))
    for name, g, w in zip(names, got, want):
        assert g.size == expected[name].shape[:2], name
        assert np.array_equal(g.labels, w.labels), name
    assert got[names.index("exif")].size == (56, 40)
    assert not np.array_equal(got[names.index("rgba")].scores, ref.scores)  # the alpha channel mattered


def test_files_folders_and_globs_write_label_overlay_json(capsys, tmp_path):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(scene(seed=1)).save(src / "a.jpg")
    Image.fromarray(scene(30, 50, seed=2)[..., 0]).save(src / "b.png")
    Image.fromarray(scene(seed=3)).save(src / "sub" / "a.png")  # same stem as a.jpg
    (src / "notes.txt").write_text("not an image, ignored in folders")
    out = tmp_path / "out"
    umask = os.umask(0)
    os.umask(umask)
    rc, err = segment(
        capsys, src, str(src / "sub" / "*.png"), src / "a.jpg", "--classes", "cat, lamp, floor", "--out", out
    )
    assert rc == 0, err
    assert "prompts: bank" in err and "segmented 3 image(s)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [i["image"] for i in summary["images"]] == [
        str(src / "a.jpg"),
        str(src / "b.png"),
        str(src / "sub" / "a.png"),
    ]
    assert summary["failed"] == [] and summary["classes"] == ["cat", "lamp", "floor"]
    for stem, (h, w) in [("a", (72, 96)), ("b", (30, 50)), ("a-2", (72, 96))]:
        label = Image.open(out / f"{stem}.png")
        assert label.mode == "P" and label.size == (w, h) and np.asarray(label).max() < 3  # palette PNG, indices kept
        info = json.loads((out / f"{stem}.json").read_text())
        assert (
            info["size"] == [h, w]
            and info["label_bits"] == 8
            and [c["name"] for c in info["classes"]] == ["cat", "lamp", "floor"]
        )
        counts = np.bincount(np.asarray(label).ravel(), minlength=3)
        assert [c["pixels"] for c in info["classes"]] == counts.tolist()
        assert sum(c["area"] for c in info["classes"]) == pytest.approx(1.0, abs=1e-5)
        overlay = Image.open(out / f"{stem}_overlay.jpg")
        assert overlay.height >= h and overlay.width > w  # the legend panel sits on the right
        for suffix in (".png", "_overlay.jpg", ".json"):  # a new file's usual mode, not mkstemp's private 0600
            assert (out / f"{stem}{suffix}").stat().st_mode & 0o777 == 0o666 & ~umask
    rc, err = segment(capsys, out, "--classes", "cat, lamp", "--out", out)  # our own outputs are never inputs
    assert rc == 2 and "no images to segment" in err


def test_label_map_shows_the_overlay_colours_and_masks_and_scores_are_written(capsys, tmp_path):
    Image.fromarray(scene(seed=4)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    rc, err = segment(
        capsys,
        tmp_path / "x.png",
        "--classes",
        "cat; sofa, couch; lamp",
        "--no-refine",
        "--min-score",
        "0.5",
        "--save-masks",
        "--save-scores",
        "--out",
        out,
    )
    assert rc == 0, err
    info = json.loads((out / "x.json").read_text())
    label = Image.open(out / "x.png")
    indices = np.asarray(label)
    assert label.mode == "P" and info["label_format"] == "palette PNG"
    colours = np.asarray(label.convert("RGB"))  # what any viewer shows: the overlay's class colours, black = unlabelled
    assert np.array_equal(colours, colorize(indices, palette(3)))
    assert 0 < (indices == 255).sum() < indices.size  # threshold 0.5 on a random model: some pixels left unlabelled
    present = [c for c in info["classes"] if c["pixels"]]
    assert sorted(info["masks"]) == sorted(c["name"] for c in present) and present
    for c in present:
        mask = np.asarray(Image.open(out / info["masks"][c["name"]]))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, indices == c["index"])
    assert info["masks"].get("sofa, couch", "x_masks/1_sofa-couch.png") == "x_masks/1_sofa-couch.png"
    scores = np.asarray(Image.open(out / info["scores_png"]))
    assert scores.dtype == np.uint16 and info["scores_scale"] == 65535 and scores.shape == indices.shape
    assert np.all(scores[indices == 255] / 65535 < 0.5 + 1e-4) and np.all(scores[indices != 255] / 65535 >= 0.5 - 1e-4)
    assert [p.name for p in sorted(out.iterdir())] == [
        "summary.json",
        "x.json",
        "x.png",
        "x_masks",
        "x_overlay.jpg",
        "x_scores.png",
    ]


def test_bad_files_are_reported_and_the_batch_goes_on(capsys, tmp_path):
    Image.fromarray(scene()).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    rc, err = segment(
        capsys,
        tmp_path / "broken.png",
        tmp_path / "good.png",
        tmp_path / "missing.jpg",
        tmp_path / "empty.jpg",
        str(tmp_path / "*.webp"),
        "--classes",
        "cat; lamp",
        "--out",
        out,
    )
    assert rc == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 4, err
    for needle in (
        "broken.png: cannot read",
        "missing.jpg: no such file",
        "empty.jpg: cannot read",
        "*.webp: pattern matches no",
    ):
        assert any(needle in e for e in errors), (needle, errors)
    assert (out / "good.png").is_file() and (out / "good_overlay.jpg").is_file() and not (out / "broken.png").exists()
    assert len(json.loads((out / "summary.json").read_text())["failed"]) == 4
    assert "segmented 1 image(s)" in err and "4 input(s) failed" in err


@pytest.mark.parametrize(
    "classes, message",
    [
        ("", "the class list is empty"),
        (" ; ", "the class list is empty"),
        ("cat, lamp, cat", "'cat' more than once"),
        ("sofa, couch; cat; sofa ,couch", "'sofa, couch' more than once"),
        (
            "red solid square, red  solid square",
            "'red solid square' (written 'red solid square', 'red  solid square': "
            "names that differ only in case or spacing are one class) more than once",
        ),
        ("cat; Cat", "'cat' (written 'cat', 'Cat'"),
    ],
)
def test_bad_class_lists_stop_before_any_work(capsys, tmp_path, classes, message):
    Image.fromarray(scene()).save(tmp_path / "x.png")
    rc, err = segment(capsys, tmp_path / "x.png", "--classes", classes, "--out", tmp_path / "out")
    assert rc == 2 and err.strip().splitlines() == [f"error: {err.strip().split('error: ', 1)[1]}"] and message in err
    assert not (tmp_path / "out").exists()


def test_class_files_and_synonym_rules(capsys, tmp_path):
    Image.fromarray(scene()).save(tmp_path / "x.png")
    (tmp_path / "classes.txt").write_text("sofa,  couch \nfloor\n\n")  # trailing blank lines are fine
    rc, err = segment(
        capsys, tmp_path / "x.png", "--classes-file", tmp_path / "classes.txt", "--no-refine", "--out", tmp_path / "o1"
    )
    assert rc == 0, err
    assert [c["name"] for c in json.loads((tmp_path / "o1" / "x.json").read_text())["classes"]] == [
        "sofa, couch",
        "floor",
    ]
    rc, err = segment(
        capsys, tmp_path / "x.png", "--classes", "sofa, couch; floor", "--no-refine", "--out", tmp_path / "o2"
    )
    assert rc == 0 and (tmp_path / "o1" / "x.png").read_bytes() == (tmp_path / "o2" / "x.png").read_bytes()
    (tmp_path / "dup.txt").write_text("floor\nFloor\n")  # the same class: case and spacing do not make a new one
    rc, err = segment(capsys, tmp_path / "x.png", "--classes-file", tmp_path / "dup.txt", "--out", tmp_path / "o3")
    assert rc == 2 and "more than once" in err
    for text, message in (("floor\n\nsofa\n", "line 2 is blank"), ("# classes\nfloor\n", "line 1 starts with '#'")):
        (tmp_path / "bad.txt").write_text(text)  # the one class-list rule: line i is label i, no comments
        rc, err = segment(capsys, tmp_path / "x.png", "--classes-file", tmp_path / "bad.txt", "--out", tmp_path / "o4")
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_many_classes_give_16_bit_labels_and_text_only_is_explicit(capsys, tmp_path):
    Image.fromarray(scene()).save(tmp_path / "x.png")
    classes = "; ".join(f"thing {i}" for i in range(256))
    rc, err = segment(capsys, tmp_path / "x.png", "--classes", "cat, lamp", "--out", tmp_path / "o", bank=False)
    assert rc == 2 and "--text-only" in err and len(err.strip().splitlines()) == 1
    rc, err = segment(
        capsys,
        tmp_path / "x.png",
        "--classes",
        classes,
        "--text-only",
        "--no-refine",
        "--out",
        tmp_path / "o",
        checkpoint=artifacts().ckpt_unchunked,
    )
    assert rc == 0 and "DEGRADED" in err
    label = Image.open(tmp_path / "o" / "x.png")
    assert label.mode == "I;16" and np.asarray(label).max() < 256
    assert json.loads((tmp_path / "o" / "x.json").read_text())["label_bits"] == 16


def test_tiles_and_min_score_from_the_command_line(capsys, tmp_path):
    Image.fromarray(scene(100, 120, seed=9)).save(tmp_path / "big.png")
    rc, err = segment(
        capsys,
        tmp_path / "big.png",
        "--classes",
        "cat, lamp",
        "--tile",
        "64",
        "--min-score",
        "0.5",
        "--no-refine",
        "--out",
        tmp_path / "o",
    )
    assert rc == 0, err
    info = json.loads((tmp_path / "o" / "big.json").read_text())
    assert info["tile"] == 64 and info["size"] == [100, 120] and info["min_score"] == 0.5 and not info["refined"]
    label = np.asarray(Image.open(tmp_path / "o" / "big.png"))
    assert label.shape == (100, 120) and (label == 255).sum() == info["unlabelled_pixels"]
    rc, err = segment(capsys, tmp_path / "big.png", "--classes", "cat", "--tile", "100", "--out", tmp_path / "o")
    assert rc == 2 and "multiple of 32" in err  # an option error: checked up front, nothing ran (issue 17)


def test_mismatched_checkpoint_and_bank_are_one_line_errors(capsys, tmp_path):
    a = artifacts()
    Image.fromarray(scene()).save(tmp_path / "x.png")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(a.ckpt_text / "config.json", mixed / "config.json")  # text model's config, dual model's weights
    shutil.copy(a.ckpt / "model.safetensors", mixed / "model.safetensors")
    for ckpt, needle in [(mixed, "unexpected"), (tmp_path / "nowhere", "does not exist")]:
        rc = main(
            [
                "segment",
                str(tmp_path / "x.png"),
                "--classes",
                "cat",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:") and needle in err.lower(), (
            err
        )
    rc = main(
        [
            "segment",
            str(tmp_path / "x.png"),
            "--classes",
            "cat",
            "--checkpoint",
            str(a.ckpt_text),
            "--bank",
            str(a.bank),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "built with another" in err and len(err.strip().splitlines()) == 1
    rc, err = segment(capsys, tmp_path / "x.png", "--classes", "cat, giraffe", "--out", tmp_path / "o")
    assert rc == 2 and "lacks 1 of the 2 classes (giraffe)" in err


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t: ["--out", t / "x.png"], "--out {t}/x.png is an existing file; give a folder"),
        (
            lambda t: ["--out", t / "x.png" / "sub"],
            "--out {t}/x.png/sub: {t}/x.png is a file, so the folder cannot be created",
        ),
        (
            lambda t: ["--out", t / "o", "--tile", "100"],
            "--tile must be 0 (off) or a multiple of 32 (>= 32), e.g. 1024; got 100",
        ),
        (lambda t: ["--out", t / "o", "--tile", "16"], "--tile must be 0 (off) or a multiple of 32"),
        (lambda t: ["--out", t / "o", "--tile", "-64"], "--tile must be 0 (off) or a multiple of 32"),
        (lambda t: ["--out", t / "o", "--max-pixels", "-5"], "--max-pixels must be positive"),
        (lambda t: ["--out", t / "o", "--device", "gpu0"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu0'"),
        (lambda t: ["--out", t / "o", "--device", "meta"], "--device='meta' is not supported; use auto, cpu or cuda"),
    ],
)
def test_options_are_checked_before_the_model_loads(capsys, tmp_path, monkeypatch, make_args, message):
    """Issue 17 #5/#7: a bad --out or --tile used to surface after the model had loaded (a traceback, or exit 1 per
    image); now exit 2 with one line, and no model is loaded."""
    from dpseg.segmenter import Segmenter

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(Segmenter, "from_pretrained", never)
    Image.fromarray(scene()).save(tmp_path / "x.png")
    rc, err = segment(capsys, tmp_path / "x.png", "--classes", "cat, lamp", *make_args(tmp_path))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message.format(t=tmp_path)}"), err
    assert not (tmp_path / "o").exists()


def test_the_synthetic_worlds_toy_model_says_so_once_and_refuses_foreign_classes(capsys, tmp_path):
    toy = shutil.copytree(artifacts().ckpt, tmp_path / "toy")
    config = json.loads((toy / "config.json").read_text())
    (toy / "config.json").write_text(json.dumps({**config, "preset": "synthetic"}))  # as `dpseg quickstart` exports
    Image.fromarray(scene()).save(tmp_path / "x.png")
    for flags in ([], ["--text-only"]):  # no prompt source teaches the toy names outside its world
        rc, err = segment(
            capsys,
            tmp_path / "x.png",
            "--classes",
            "cat; red striped star; blue dotted sofa",
            *flags,
            "--no-refine",
            "--out",
            tmp_path / "o",
            checkpoint=toy,
        )
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, err
        assert lines[0].startswith("error: 'cat', 'blue dotted sofa' are not in the toy model's world")
        assert "--text-only" not in lines[0] and "prompts build" not in lines[0] and not (tmp_path / "o").exists()
    rc, err = segment(
        capsys,
        tmp_path / "x.png",
        "--classes",
        "red striped star",
        "--text-only",
        "--no-refine",
        "--out",
        tmp_path / "o",
        checkpoint=toy,
    )
    assert rc == 0 and err.count("note: this is the toy") == 1 and "not in the toy" not in err
    rc, err = segment(capsys, tmp_path / "x.png", "--classes", "cat", "--no-refine", "--out", tmp_path / "o")
    assert rc == 0 and "toy model" not in err  # a real model: nothing to say

"""`dpseg label`: a collection labelled in fixed batches over ranks, resumable and exact, with COCO output.

What is checked: the manifest (sorted, stable, unique names); every output against the label map (the COCO RLE masks
decode to it pixel for pixel, with the JSON's scores and areas, unlabelled pixels in no mask); bad images in the
failures file with exit status 1 while the others are labelled; a rerun skips finished images, and a rerun with
another vocabulary, setting or batch size is refused naming the change; batching (the `whole` protocol) gives the
maps of one image at a time up to near-ties, and the settings whose maps depend on the batch run one image at a
time; torn shard lines and lost shard records; and, through torchrun (2 CPU processes, gloo), a rank killed with
SIGKILL in the middle of the job and the same command run again giving the bytes of an uninterrupted 1-process run.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from segment_helpers import artifacts, scene

from dpseg.commands import main
from dpseg.labelling.coco import ShardWriter, merge
from dpseg.labelling.job import Layout
from dpseg.labelling.manifest import build_entries, expand, read_manifest
from dpseg.labelling.run import LabelOptions, batching, label_collection
from dpseg.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]
CLASSES = "cat; sofa, couch; lamp; floor"
# pycocotools' own decode under numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
RUN_ONLY = ("progress", "shards")  # what differs between runs by design: timings, tokens, shard line order


def make_folder(root: Path, n: int = 7, bad: bool = True) -> Path:
    """n scenes of a few sizes in root/ and root/sub/, plus a garbage file and a truncated PNG."""
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(scene(56 + 8 * (i % 3), 72 + 4 * (i % 2), seed=i)).save(
            root / ("sub" if i % 2 else "") / f"img{i:02d}.png"
        )
    if bad:
        (root / "garbage.jpg").write_bytes(b"this is not an image")
        data = (root / "img00.png").read_bytes()
        (root / "sub" / "truncated.png").write_bytes(data[: len(data) // 2])
    return root


def label(capsys, *args, out, ckpt=None, classes=CLASSES, bank=True):
    a = artifacts()
    argv = ["label", *map(str, args), "--classes", classes, "--checkpoint", str(ckpt or a.ckpt)]
    argv += ["--bank", str(a.bank)] if bank else ["--text-only"]
    rc = main([*argv, "--out", str(out), "--device", "cpu", "--workers", "0", "--quiet"])
    return rc, capsys.readouterr().err


def tree(folder: Path) -> dict:
    """Every file below ``folder`` but the run-specific ones -> its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] not in RUN_ONLY
    }


def test_manifest_is_sorted_stable_and_names_are_unique(tmp_path):
    root = tmp_path / "in"
    (root / "b" / ".hidden").mkdir(parents=True)
    (root / "a").mkdir()
    for rel in ["b/x.png", "a/y.jpg", "a/y.png", "a/Y.png", "top.png", "b/.hidden/h.png", "a/.dot.png", "a/notes.txt"]:
        (root / rel).write_bytes(b"")
    out = root / "a" / "out"  # an output folder inside the input is never read
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "z.png").write_bytes(b"")
    found, pairs = expand([str(root), str(root / "top.png")], [], out)
    assert found == root.resolve()
    assert [rel for _, rel in pairs] == ["a/Y.png", "a/y.jpg", "a/y.png", "b/x.png", "top.png"]  # sorted, once each
    names = [e.name for e in build_entries(pairs)]
    assert names == ["a/Y", "a/y-2", "a/y-3", "b/x", "top"]  # unique even on a case-insensitive filesystem
    assert expand([str(root)], [], out) == (found, pairs)  # stable
    listing = tmp_path / "list.txt"
    listing.write_text("# images\nin/b/x.png\n\nin/top.png\n")
    found, pairs = expand([], [str(listing)], tmp_path / "out")
    assert found == root.resolve() and [rel for _, rel in pairs] == ["b/x.png", "top.png"]
    with pytest.raises(Exception, match="no such file or folder"):
        expand([str(root / "missing")], [], out)
    with pytest.raises(Exception, match="pattern matches no image files"):
        expand([str(root / "*.webp")], [], out)


def test_outputs_coco_rle_equals_the_label_maps_and_bad_images_fail_alone(capsys, tmp_path):
    src = make_folder(tmp_path / "in")
    out = tmp_path / "out"
    rc, err = label(capsys, src, "--batch-size", "3", "--min-score", "0.505", out=out)
    assert rc == 1, err  # two bad images
    assert "garbage.jpg" in err and "truncated.png" in err and "labelled 7 of 9 images" in err
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [Path(f["image"]).name for f in failures] == ["garbage.jpg", "truncated.png"]
    assert "not an image file" in failures[0]["error"] and "truncated" in failures[1]["error"].lower()
    entries = read_manifest(out / "manifest.jsonl")
    assert [e.file_name for e in entries][:3] == ["garbage.jpg", "img00.png", "img02.png"]

    coco = COCO(str(out / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "sofa, couch", "lamp", "floor"]
    assert len(coco.getImgIds()) == 7
    unlabelled = 0
    for e in entries:
        if Path(e.image).name in ("garbage.jpg", "truncated.png"):
            assert e.index + 1 not in coco.imgs
            continue
        labels = np.asarray(Image.open(out / "labels" / f"{e.name}.png"))
        info = json.loads((out / "labels" / f"{e.name}.json").read_text())
        img = coco.imgs[e.index + 1]
        assert (img["file_name"], img["height"], img["width"]) == (e.file_name, *labels.shape)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[e.index + 1]))
        assert [a["category_id"] - 1 for a in anns] == [c["index"] for c in info["classes"]]
        covered = np.zeros(labels.shape, bool)
        for a, c in zip(anns, info["classes"]):
            decoded = mask_utils.decode(a["segmentation"]).astype(bool)  # the RLE as COCO tools read it
            np.testing.assert_array_equal(decoded, labels == c["index"])  # pixel for pixel
            np.testing.assert_array_equal(coco.annToMask(a).astype(bool), decoded)
            assert a["area"] == c["pixels"] == decoded.sum() and a["score"] == c["mean_score"]
            ys, xs = np.nonzero(decoded)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            covered |= decoded
        np.testing.assert_array_equal(~covered, labels == 255)  # unlabelled pixels are in no mask
        unlabelled += int((labels == 255).sum())
        assert info["unlabelled_pixels"] == int((labels == 255).sum())
    assert unlabelled > 0  # --min-score left some pixels out

    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 7 and summary["failed"] == 2 and summary["unlabelled_pixels"] == unlabelled
    for row in summary["classes"]:
        anns = coco.loadAnns(coco.getAnnIds(catIds=[row["id"]]))
        assert row["images"] == len(anns) and row["pixels"] == sum(a["area"] for a in anns)
    assert abs(sum(r["pixel_share"] for r in summary["classes"]) + summary["unlabelled_share"] - 1) < 1e-5
    header = (out / "summary.csv").read_text().splitlines()[0]
    assert header == "id,name,images,image_share,pixels,pixel_share,mean_score"


def test_rerun_skips_done_images_and_another_key_is_refused(capsys, tmp_path):
    src = make_folder(tmp_path / "in", n=4, bad=False)
    out = tmp_path / "out"
    assert label(capsys, src, "--batch-size", "2", out=out)[0] == 0
    first = tree(out)
    (out / "labels" / ".img00.png.abc123.tmp").write_bytes(b"left by a kill -9")
    (out / "labels" / "img02.json").unlink()  # half-written: the map is there, its JSON not
    rc, err = label(capsys, src, "--batch-size", "2", out=out)
    assert rc == 0 and "3 done before (1 temporary file(s) of an interrupted run removed); 1 to label" in err
    assert "(1 by this run)" in err
    assert tree(out) == first  # redone to the same bytes, the temporary file gone

    for args, classes, change in [
        ((), "cat; lamp; floor", "classes: 4 -> 3"),
        (("--no-refine",), CLASSES, "inference.two_pass: true -> false"),
        (("--batch-size", "3"), CLASSES, "batch_size: 2 -> 3"),
        (("--min-score", "0.2"), CLASSES, "min_score: 0.0 -> 0.2"),
        (("--overlays",), CLASSES, "outputs.overlays: false -> true"),
    ]:
        rc, err = label(capsys, src, "--batch-size", "2", *args, out=out, classes=classes)
        assert rc == 2 and f"holds labels made with other settings ({change}" in err, err
        assert "new --out, or pass --overwrite" in err and err.count("\n") == 2  # one line after the classes line
    rc, err = label(capsys, src, "--batch-size", "2", out=out, ckpt=artifacts().ckpt_unchunked)
    assert rc == 0 and "4 done before" in err  # another class_chunk, same weights: it changes no prediction
    rc, err = label(capsys, src, "--batch-size", "2", out=out, ckpt=artifacts().ckpt_text, bank=False)
    assert rc == 2 and "(model: " in err, err  # other weights
    assert label(capsys, src, "--no-refine", "--overwrite", "--overlays", out=out)[0] == 0
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["img00.jpg", "img02.jpg", "sub"]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    rc, err = label(capsys, src, out=foreign)
    assert rc == 2 and "not a dpseg label job (notes.txt)" in err


def test_batches_give_the_maps_of_single_images(tmp_path):
    """The `whole` protocol batches images of any size; float rounding may move a pixel at a near-tie, no more."""
    a = artifacts()
    seg = Segmenter.from_pretrained(a.ckpt, device="cpu").set_vocabulary(CLASSES, bank=str(a.bank))
    images = [torch.from_numpy(scene(56 + 8 * i, 72, seed=i)).permute(2, 0, 1).contiguous() for i in range(4)]
    together = seg.segment(images, batch_size=4)
    alone = [seg.segment(im) for im in images]
    differ = sum(int((t.labels != s.labels).sum()) for t, s in zip(together, alone))
    assert differ <= 0.001 * sum(s.labels.size for s in alone), differ
    for t, s in zip(together, alone):
        np.testing.assert_allclose(t.scores, s.scores, atol=1e-5)

    import dataclasses

    opts = LabelOptions(inputs=[], out=tmp_path, batch_size=4)
    assert batching(seg, opts) == (4, 4, None)
    seg.settings = dataclasses.replace(seg.settings, refine_scope="present")
    assert batching(seg, opts)[:2] == (1, 1)  # pass 2 re-decodes what any image of the batch detected
    assert batching(seg, dataclasses.replace(opts, refine=False)) == (4, 4, None)
    seg.settings = dataclasses.replace(seg.settings, refine_scope="all", protocol="slide")
    assert batching(seg, opts)[:2] == (4, 1)  # loaded together, predicted one by one: any batch size gives the same


def test_torn_and_lost_shard_records_merge_to_the_same_file(tmp_path):
    a = artifacts()
    src = make_folder(tmp_path / "in", n=5, bad=False)
    seg = Segmenter.from_pretrained(a.ckpt, device="cpu").set_vocabulary(CLASSES, bank=str(a.bank))
    out = tmp_path / "out"
    report = label_collection(seg, LabelOptions(inputs=[str(src)], out=out, batch_size=2, workers=0, progress=False))
    assert (report.images, report.labelled, report.new, report.exit_code) == (5, 5, 5, 0)
    layout = Layout(out)
    reference = layout.annotations.read_bytes()
    shard = next(layout.shards.iterdir())
    lines = shard.read_bytes().splitlines(keepends=True)
    shard.write_bytes(b"".join(lines[:2]) + lines[3][:40])  # records 3 and 4 lost, a torn line at the end
    entries = read_manifest(layout.manifest)
    merge(layout, entries, list(seg.class_names or []), str(src), failed=0)
    assert layout.annotations.read_bytes() == reference  # rebuilt from the label maps and JSON
    ShardWriter(shard).close()
    assert shard.read_bytes() == b"".join(lines[:2])  # the torn line is cut before anything is appended


def test_killed_rank_then_rerun_gives_the_uninterrupted_outputs(capsys, tmp_path):
    """torchrun, 2 CPU processes: rank 1 kills itself (SIGKILL) after the label map of its 3rd image, before that
    image's JSON; torchrun stops rank 0. The same command again finishes the job: every file equals a 1-process
    uninterrupted run's, byte for byte (no image lost, none twice in the COCO file), and rank 0's one progress line
    counts the images of both ranks."""
    a = artifacts()
    src = make_folder(tmp_path / "in", n=14)
    rc, err = label(capsys, src, "--batch-size", "2", out=tmp_path / "one")
    assert rc == 1, err  # the two bad images
    reference = tree(tmp_path / "one")

    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dpseg"]
    cmd += ["label", str(src), "--classes", CLASSES, "--checkpoint", str(a.ckpt), "--bank", str(a.bank)]
    cmd += ["--out", str(out), "--device", "cpu", "--batch-size", "2", "--workers", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    killed = subprocess.run(cmd, env={**env, "DPSEG_LABEL_TEST_KILL": "1:3"}, capture_output=True, text=True)
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-3000:]
    labels = out / "labels"
    half = [p for p in labels.rglob("*.png") if not p.with_suffix(".json").exists()]
    assert half, "the kill left an image with its map but no JSON"
    assert len(list(labels.rglob("*.json"))) < 14

    loud = [c for c in cmd if c != "--quiet"]  # the rerun shows its progress: one line for the job, from rank 0
    rerun = subprocess.run(loud, env={**env, "DPSEG_PROGRESS": "lines"}, capture_output=True, text=True)
    assert rerun.returncode == 1, rerun.stderr[-3000:]  # the bad images still fail; the others are done
    assert "labelled 14 of 16 images" in rerun.stderr and rerun.stderr.count("labelled 14") == 1  # rank 0 reports
    finals = [line for line in rerun.stderr.splitlines() if line.startswith("label: 16/16 img (100%)")]
    assert len(finals) == 1, rerun.stderr[-3000:]  # both ranks' images (and the failed ones) on rank 0's one line
    # torchrun's failure report: only rank 0 carries exit status 1 (another rank exiting 1 would make torchrun
    # terminate rank 0 while it merges the COCO file)
    exits = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", rerun.stderr)
    assert ("0", "1") in exits and all(rank == "0" for rank, code in exits if code == "1"), exits
    assert tree(out) == reference
    coco = json.loads((out / "annotations.json").read_text())
    assert [i["id"] for i in coco["images"]] == sorted({i["id"] for i in coco["images"]})  # each image once
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no images given"),
        (["IN", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["IN", "--workers", "-1"], "--workers must be >= 0"),
        (["IN", "--text-only", "--bank", "B"], "--text-only cannot be combined"),
        (["IN", "--min-score", "1"], "--min-score must be in [0, 1)"),
        (["IN", "--alpha", "2"], "--alpha must be between 0 and 1"),
        (["IN", "--tile", "100"], "--tile must be 0 (off) or a multiple of 32"),
        (["IN", "--max-pixels", "-1"], "--max-pixels must be positive"),
        (["IN", "--out", "FILE"], "is an existing file"),
    ],
)
def test_bad_options_are_refused_before_the_model_loads(capsys, tmp_path, monkeypatch, args, message):
    def never(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Segmenter, "from_pretrained", never)
    (tmp_path / "FILE").write_text("")
    argv = [str(tmp_path / a) if a in ("IN", "FILE") else a for a in args]
    argv += [] if "--out" in args else ["--out", str(tmp_path / "out")]
    rc = main(["label", *argv, "--classes", "cat, dog"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_bad_lists_and_inputs_are_named(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.png\n")
    with pytest.raises(Exception, match=r"list.txt names .*a.png, which is not a file"):
        expand([], [str(listing)], tmp_path / "out")
    with pytest.raises(Exception, match="cannot read the image list"):
        expand([], [str(tmp_path / "missing.txt")], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="empty: folder holds no image files"):
        expand([str(tmp_path / "empty")], [], tmp_path / "out")

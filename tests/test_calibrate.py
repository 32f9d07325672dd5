"""The score threshold a checkpoint carries (eval.min_score): chosen on a validation split by the documented
criterion, written into the checkpoint (hash intact), used by default by the Segmenter and `dpseg segment`, and
re-chosen by `dpseg calibrate`."""

import dataclasses
import json
import shutil

import pytest
import torch
from helpers import stub_inference
from PIL import Image
from segment_helpers import artifacts, scene
from test_train import make_dataset

from dpseg.checkpoint import load_model, save_model
from dpseg.commands import main
from dpseg.config import EvalConfig, build_config
from dpseg.errors import CheckpointError, ConfigError, DataError
from dpseg.evaluation.calibrate import THRESHOLDS, Calibration, calibrate, read_calibration, write_calibration
from dpseg.segmenter import Segmenter

EVAL_SETTINGS = {"input_size": 32, "short_side": 32, "class_chunk": 0, "num_workers": 0}


def halves(n=2, ignore_right=True, merge=None):
    """Images whose left half is class 0 and right half is ignore (-1) or class 1."""
    label = torch.zeros(32, 32, dtype=torch.long)
    label[:, 16:] = -1 if ignore_right else 1
    items = [{"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "label": label}] * n
    ds = type("Halves", (list,), {"class_names": ["a", "b"], "name": "halves"})(items)
    if merge is not None:
        ds.merge_predictions_from = merge
    return ds


def confident_left(images):
    """Logits at stride 4: class 0 at p=0.9 on the left half, class 1 at p=0.3 on the right (the best class there)."""
    b, _, s, _ = images.shape
    p = torch.full((b, 2, s // 4, s // 4), 0.1)
    p[:, 0, :, : s // 8] = 0.9
    p[:, 1, :, s // 8 :] = 0.3
    return torch.logit(p)


def stub(**settings):
    return stub_inference(confident_left, EvalConfig(**{**EVAL_SETTINGS, **settings}), 2)


def test_the_threshold_that_leaves_the_unnamed_half_unlabelled_wins():
    result = calibrate(stub(), halves(), progress=False)
    # at 0 the right half is painted "b"; above 0.3 (its best probability) it is unlabelled and the left half (0.9)
    # keeps its class, up to the blend of the two across the border (bilinear upsampling of the stride-4 maps)
    best, scores = result.min_score, result.scores
    assert 0.3 < best < 0.9 and result.background_class is False and scores[best] == max(scores.values())
    assert all(scores[t] < scores[best] for t in THRESHOLDS if t < best)  # ties go to the lowest threshold
    assert scores[0.0] < scores[0.35] < scores[best] and scores[0.95] < scores[0.9] < scores[best]
    assert list(scores) == list(THRESHOLDS) and result.ignore_fraction == 0.5 and result.num_images == 2
    assert f"{best:.2f}  {scores[best]:.2f}  <- chosen" in result.table() and "halves" in result.summary()


def test_a_vocabulary_that_covers_every_pixel_keeps_zero():
    assert calibrate(stub(), halves(), background_class=True).min_score == 0
    covered = calibrate(stub(), halves(ignore_right=False), progress=False)
    assert covered.min_score == 0 and covered.background_class is True and covered.ignore_fraction == 0
    merged = calibrate(stub(), halves(merge=1))  # PAS-20b: its own background class
    assert merged.min_score == 0 and merged.background_class is True


def test_bad_inputs():
    with pytest.raises(DataError, match="no pixels to calibrate"):
        calibrate(stub(), halves(n=0))
    with pytest.raises(Exception, match="thresholds must start at 0"):
        calibrate(stub(), halves(), thresholds=[0.1, 0.5])


def copy_checkpoint(tmp_path):
    return shutil.copytree(artifacts().ckpt, tmp_path / "ckpt")


def test_the_checkpoint_carries_it_and_the_segmenter_uses_it(tmp_path):
    from dpseg.commands import main as dpseg

    ckpt = copy_checkpoint(tmp_path)
    assert load_model(ckpt)[1].eval.min_score == 0.0 and read_calibration(ckpt) is None  # before: label everything
    write_calibration(ckpt, Calibration(0.55, False, "halves", 2, 0.5, "pass1", scores={0.0: 10.0, 0.55: 20.0}))
    cfg = load_model(ckpt)[1]
    assert cfg.eval.min_score == 0.55 and cfg.eval.background_class is False
    assert read_calibration(ckpt)["scores"] == {"0": 10.0, "0.55": 20.0}
    assert dpseg(["check", str(ckpt)]) == 0  # the weights and their content hash are untouched
    seg = Segmenter.from_pretrained(ckpt, device="cpu", bank=str(artifacts().bank)).set_vocabulary(["cat", "lamp"])
    image = scene(seed=5)
    default, everything = seg.segment(image, refine=False), seg.segment(image, refine=False, min_score=0)
    assert seg.min_score == 0.55 and default.min_score == 0.55 and everything.min_score == 0
    assert default.unlabelled_pixels == int((everything.scores < 0.55).sum()) and everything.unlabelled_pixels == 0
    model, cfg = load_model(ckpt)
    save_model(model, cfg, ckpt)  # exported again: config and calibration.json still agree
    assert read_calibration(ckpt)["min_score"] == 0.55
    cfg.eval.min_score = 0.2
    save_model(model, cfg, ckpt)  # a config that no longer holds the calibrated value: calibration.json is stale
    assert read_calibration(ckpt) is None


def test_segment_says_which_threshold_it_uses(capsys, tmp_path):
    ckpt = copy_checkpoint(tmp_path)
    write_calibration(ckpt, Calibration(0.5, False))
    Image.fromarray(scene(seed=6)).save(tmp_path / "x.png")
    base = [
        "segment",
        str(tmp_path / "x.png"),
        "--classes",
        "cat, lamp",
        "--checkpoint",
        str(ckpt),
        "--bank",
        str(artifacts().bank),
        "--no-refine",
        "--quiet",
    ]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert "pixels below probability 0.5 stay unlabelled (the checkpoint's eval.min_score)" in capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "x.json").read_text())["min_score"] == 0.5
    assert main([*base, "--min-score", "0", "--out", str(tmp_path / "b")]) == 0
    assert "every pixel gets its most probable class (threshold 0: --min-score)" in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "x.json").read_text())["unlabelled_pixels"] == 0


def test_old_configs_keep_todays_behaviour_and_bad_values_are_refused(tmp_path):
    ckpt = copy_checkpoint(tmp_path)
    data = json.loads((ckpt / "config.json").read_text())
    del data["eval"]["min_score"], data["eval"]["background_class"]  # a checkpoint from before calibration
    (ckpt / "config.json").write_text(json.dumps(data))
    cfg = load_model(ckpt)[1]
    assert cfg.eval.min_score == 0.0 and cfg.eval.background_class is None
    with pytest.raises(ConfigError, match="'eval.min_score' must be a finite number in \\[0, 1\\)"):
        build_config("dpseg-tiny", overrides=["eval.min_score=1"])
    with pytest.raises(ConfigError, match="'eval.background_class' expects bool or null"):
        build_config("dpseg-tiny", overrides=["eval.background_class=maybe"])
    data["eval"]["min_score"] = -0.5
    (ckpt / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="eval.min_score"):
        load_model(ckpt)


def test_dpseg_calibrate_rechooses_it_for_a_checkpoint(capsys, tmp_path):
    ckpt = copy_checkpoint(tmp_path)
    data = make_dataset(tmp_path / "data", n_val=2)  # squares on noise; everything else is ignore (255)
    (tmp_path / "data" / "classes.txt").write_text("cat\nlamp\nfloor\n")  # names the test bank holds
    args = ["calibrate", str(ckpt), "--dataset", str(data), "--bank", str(artifacts().bank), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    chosen = read_calibration(ckpt)
    assert chosen["dataset"] == str(data) and chosen["num_images"] == 2 and chosen["background_class"] is False
    assert chosen["min_score"] in THRESHOLDS and len(chosen["scores"]) == len(THRESHOLDS)
    assert f"eval.min_score = {chosen['min_score']:g}" in out and "mIoU (K + unlabelled)" in out
    assert load_model(ckpt)[1].eval.min_score == chosen["min_score"]
    assert main([*args, "--background-class", "yes"]) == 0  # a background class: every pixel gets one
    assert load_model(ckpt)[1].eval.min_score == 0 and read_calibration(ckpt)["background_class"] is True
    assert "every pixel gets a class" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t, c: [str(t / "nowhere"), "--dataset", str(t)], "is not a checkpoint folder on this machine"),
        (lambda t, c: ["org/model", "--dataset", str(t)], "is not a checkpoint folder on this machine"),
        (lambda t, c: [str(c), "--dataset", str(t / "no-data")], "custom dataset folder"),
        (lambda t, c: [str(c), "--dataset", "a150", "--root", str(t)], "images folder"),
        (lambda t, c: [str(c), "--dataset", str(t), "--max-images", "-1"], "--max-images must be >= 0"),
    ],
)
def test_dpseg_calibrate_bad_inputs_are_one_line_errors(capsys, tmp_path, monkeypatch, make_args, message):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("dpseg.evaluation.calibrate.load_model", never)
    ckpt = copy_checkpoint(tmp_path)
    assert main(["calibrate", *make_args(tmp_path, ckpt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err, err
    assert not (ckpt / "calibration.json").exists()


def threshold_scores(maps, labels, num_classes):
    """mIoU over the K classes + 'unlabelled' per threshold (the calibration criterion), from (labels, scores) maps."""
    from dpseg.evaluation.metrics import metrics_from_confusion

    k = num_classes
    out = {}
    for t in THRESHOLDS:
        conf = torch.zeros(k + 1, k + 1, dtype=torch.int64)
        for (pred, scores), gt in zip(maps, labels):
            gt = torch.where(gt < 0, k, gt).reshape(-1)
            p = torch.where(scores >= t, pred, k).reshape(-1) if t > 0 else pred.reshape(-1)
            conf += torch.bincount(gt * (k + 1) + p, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
        miou = metrics_from_confusion(conf)["mIoU"]
        out[t] = None if miou is None else round(miou, 4)
    return out


def test_calibration_thresholds_the_map_segment_makes_with_early_rejection(tmp_path):
    """SED-fast (eval.early_rejection_topk) changes the map: the threshold must be chosen on the map `dpseg segment`
    makes with it, not on the map without rejection (calibration once built its own forward without it)."""
    from dpseg.build import build_model
    from dpseg.data.catalog import build_dataset
    from dpseg.evaluation.calibrate import calibrate_checkpoint

    data = make_dataset(tmp_path / "data", n_train=0, n_val=2)
    overrides = ["model.prompt_type=text", "model.guidance=upsampled", "model.aux_heads=true", "eval.two_pass=false"]
    torch.manual_seed(0)
    cfg = build_config("dpseg-tiny", overrides=[*overrides, "eval.early_rejection_topk=1"])
    save_model(build_model(cfg), cfg, tmp_path / "ckpt")
    result = calibrate_checkpoint(tmp_path / "ckpt", str(data), device="cpu", progress=False)
    dataset = build_dataset(str(data), split="val")
    seg = Segmenter.from_pretrained(tmp_path / "ckpt", device="cpu").set_vocabulary(dataset.class_names)
    items = [dataset[i] for i in range(len(dataset))]
    labels = [it["label"] for it in items]

    def maps(topk):
        seg.settings = dataclasses.replace(seg.settings, early_rejection_topk=topk)
        runs = [seg.segment(it["image"].permute(1, 2, 0).numpy(), min_score=0) for it in items]
        return [(torch.from_numpy(r.labels).long(), torch.from_numpy(r.scores)) for r in runs]

    with_rejection = threshold_scores(maps(1), labels, len(dataset.class_names))
    without = threshold_scores(maps(0), labels, len(dataset.class_names))
    assert with_rejection != without  # rejection changes the map here, so the test can tell them apart
    assert result.scores == with_rejection

"""Confusion-matrix metrics against hand-computed cases and an independent numpy reference."""

import numpy as np
import pytest
import torch

from dpseg.errors import InputError
from dpseg.evaluation.evaluator import SemSegEvaluator
from dpseg.evaluation.metrics import ConfusionMatrix, metrics_from_confusion


def reference_metrics(preds, gts, k, ignore=-1):
    """From scratch, pixel loops over classes with boolean masks (no confusion matrix, no bincount)."""
    p = np.concatenate([x.ravel() for x in preds])
    g = np.concatenate([x.ravel() for x in gts])
    keep = g != ignore
    p, g = p[keep], g[keep]
    ious, accs, weights = [], [], []
    for c in range(k):
        gt_c, pr_c = g == c, p == c
        if gt_c.sum() == 0:
            continue  # absent from the ground truth: excluded even if predicted
        inter = np.logical_and(gt_c, pr_c).sum()
        union = np.logical_or(gt_c, pr_c).sum()
        ious.append(inter / union)
        accs.append(inter / gt_c.sum())
        weights.append(gt_c.sum() / len(g))
    return {
        "mIoU": 100 * np.mean(ious),
        "mAcc": 100 * np.mean(accs),
        "fwIoU": 100 * np.sum(np.array(ious) * np.array(weights)),
        "pAcc": 100 * np.mean(p == g),
    }


def test_hand_computed_confusion_matrix():
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, -1, -1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])  # predictions on the two ignored pixels must not count
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    m = metrics_from_confusion(cm.mat, ["a", "b", "c"])
    # IoU a = 1/(2+2-1) = 1/3, b = 2/(2+3-2) = 2/3, c = 1/(2+1-1) = 1/2
    assert m["per_class_IoU"] == pytest.approx({"a": 100 / 3, "b": 200 / 3, "c": 50})
    assert m["mIoU"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["pAcc"] == pytest.approx(100 * 4 / 6)
    assert m["mAcc"] == pytest.approx(100 * (0.5 + 1 + 0.5) / 3)
    assert m["fwIoU"] == pytest.approx(100 * (2 / 6) * (1 / 3 + 2 / 3 + 1 / 2))
    assert m["pixels"] == 6 and m["classes_present"] == 3


def test_class_absent_from_gt_is_excluded_even_if_predicted():
    gt = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])  # class 2 never in the GT but predicted once
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    m = metrics_from_confusion(cm.mat)
    assert m["per_class_IoU"]["2"] is None and m["per_class_IoU"]["3"] is None
    assert m["classes_present"] == 2
    assert m["mIoU"] == pytest.approx(100 * (0.5 + 1.0) / 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_maps_match_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    k = 12
    preds, gts = [], []
    cm = ConfusionMatrix(k)
    for _ in range(5):
        h, w = rng.integers(5, 40, size=2)
        gt = rng.integers(0, k - 3, size=(h, w))  # classes k-3..k-1 absent from the GT
        gt[rng.random((h, w)) < 0.2] = -1
        pred = np.where(rng.random((h, w)) < 0.6, gt.clip(min=0), rng.integers(0, k, size=(h, w)))
        preds.append(pred)
        gts.append(gt)
        cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
    got = metrics_from_confusion(cm.mat)
    ref = reference_metrics(preds, gts, k)
    for key in ("mIoU", "mAcc", "fwIoU", "pAcc"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12), key
    assert got["classes_present"] == len(np.unique(np.concatenate([g.ravel() for g in gts]))) - 1


def test_voc20b_background_mapping():
    ev = SemSegEvaluator(21, merge_predictions_from=20)
    gt = torch.tensor([0, 5, 20, 20, 20])
    pred = torch.tensor([0, 5, 20, 33, 58])  # 33 and 58 are background-like names of the 59-name vocabulary
    ev.process(pred, gt)
    m = ev.compute()
    assert m["mIoU"] == pytest.approx(100.0)
    with pytest.raises(InputError, match="last class"):
        SemSegEvaluator(21, merge_predictions_from=5)


def test_empty_ground_truth_gives_nan_not_crash():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([1, 2]), torch.tensor([-1, -1]))
    m = metrics_from_confusion(cm.mat)
    assert m["mIoU"] is None and m["pixels"] == 0


@pytest.mark.parametrize(
    "pred, gt, msg",
    [
        (torch.tensor([0, 1]), torch.tensor([0, 1, 2]), "differs from label shape"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), "integer class maps"),
        (torch.tensor([0, 3]), torch.tensor([0, 1]), "prediction values must be in 0..2"),
        (torch.tensor([0, 1]), torch.tensor([0, 7]), "label value 7 is out of range"),
    ],
)
def test_bad_inputs_are_rejected(pred, gt, msg):
    with pytest.raises(InputError, match=msg):
        ConfusionMatrix(3).update(pred, gt)


def test_metrics_input_checks():
    with pytest.raises(InputError, match="square"):
        metrics_from_confusion(np.zeros((2, 3)))
    with pytest.raises(InputError, match="2 class names for a 3-class"):
        metrics_from_confusion(np.eye(3), ["a", "b"])


def _dist_worker(rank, world, init_file, result_file):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rng = np.random.default_rng(0)
        gts = [rng.integers(-1, 5, size=(7, 9)) for _ in range(6)]
        preds = [rng.integers(0, 5, size=(7, 9)) for _ in range(6)]
        ev = SemSegEvaluator(5)
        for i in range(rank, 6, world):  # the evaluator's sharding: every world-th image
            ev.process(torch.from_numpy(preds[i]), torch.from_numpy(gts[i]))
        mat = ev.confusion()
        assert ev.conf.mat.sum() < mat.sum()  # the local matrix is not modified by the reduction
        if rank == 0:
            ref = SemSegEvaluator(5)
            for p, g in zip(preds, gts):
                ref.process(torch.from_numpy(p), torch.from_numpy(g))
            np.save(result_file, np.stack([mat.numpy(), ref.conf.mat.numpy()]))
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_all_reduce_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "res.npy"
    mp.start_processes(_dist_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, start_method="fork")
    reduced, single = np.load(out)
    assert reduced.sum() > 0 and (reduced == single).all()

"""The attribute diagnosis of benchmarks/diagnose_attributes.py (method study section 5) on hand-computed matrices."""

import numpy as np
import pytest
from helpers import load_benchmark

from dpseg.evaluation.metrics import metrics_from_confusion

diag = load_benchmark("diagnose_attributes")

CONF = np.array([[5, 1, 0], [2, 3, 0], [0, 1, 4]], float)  # rows: ground truth, columns: prediction


def miou(conf):
    return metrics_from_confusion(conf)["mIoU"]  # what the diagnosis reports, merged or not


def test_miou_matches_the_hand_computed_value():
    # IoU: 5 / (7 + 6 - 5), 3 / (5 + 5 - 3), 4 / (4 + 5 - 4)
    assert miou(CONF) == pytest.approx(100 * (5 / 8 + 3 / 7 + 4 / 5) / 3)


def test_classes_absent_from_the_ground_truth_are_not_averaged():
    conf = np.array([[4, 1], [0, 0]], float)  # class 1 never in the labels, predicted once
    assert miou(conf) == pytest.approx(100 * 4 / 5)


def test_merging_classes_sums_their_rows_and_columns():
    merged = diag.merged(CONF, np.array([7, 7, 3]))  # classes 0 and 1 are one; group ids sort: 3 -> 0, 7 -> 1
    np.testing.assert_array_equal(merged, [[4, 1], [0, 11]])
    assert miou(merged) == pytest.approx(100 * (4 / 5 + 11 / 12) / 2)

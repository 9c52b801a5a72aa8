"""Metrics against hand-counted examples (exact fractions)."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from pixelseg.metrics import BinaryMetrics, MulticlassMetrics, binary_counts

# --- Binary --------------------------------------------------------------------------------------

# 4x4 example. Counting by hand:
#   tp: (0,0) (0,1) (1,0)  -> 3
#   fp: (1,1) (3,3)        -> 2
#   fn: (0,2)              -> 1
#   tn: 16 - 6             -> 10
PRED = np.array(
    [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 1],
    ],
    dtype=bool,
)
TRUTH = np.array(
    [
        [1, 1, 1, 0],
        [1, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ],
    dtype=bool,
)


def approx(fraction: Fraction) -> object:
    return pytest.approx(float(fraction), rel=1e-12)


def test_binary_counts_hand_example():
    assert binary_counts(PRED, TRUTH) == (3, 2, 1, 10)
    # 0/1 integer arrays are the same masks.
    assert binary_counts(PRED.astype(np.uint8), TRUTH.astype(np.int64)) == (3, 2, 1, 10)
    assert all(type(c) is int for c in binary_counts(PRED, TRUTH))


def test_binary_metrics_hand_example():
    metrics = BinaryMetrics()
    image = metrics.update(PRED, TRUTH)
    assert (image["tp"], image["fp"], image["fn"], image["tn"]) == (3, 2, 1, 10)
    assert image["dice"] == approx(Fraction(2 * 3, 2 * 3 + 2 + 1))  # 2/3
    assert image["iou"] == approx(Fraction(3, 3 + 2 + 1))  # 1/2
    assert image["pixel_accuracy"] == approx(Fraction(13, 16))

    result = metrics.compute()
    assert result["n_images"] == 1
    assert result["dice"] == result["dice_micro"] == approx(Fraction(2, 3))
    assert result["iou"] == result["iou_micro"] == approx(Fraction(1, 2))
    assert result["pixel_accuracy"] == approx(Fraction(13, 16))
    assert result["precision"] == approx(Fraction(3, 5))
    assert result["recall"] == approx(Fraction(3, 4))
    assert result["specificity"] == approx(Fraction(10, 12))
    json.dumps(result)  # plain Python numbers only


def test_both_empty_scores_one():
    empty = np.zeros((4, 4), dtype=bool)
    metrics = BinaryMetrics()
    image = metrics.update(empty, empty)
    assert image["dice"] == 1.0
    assert image["iou"] == 1.0
    result = metrics.compute()
    # No positives anywhere: precision and recall agree there is nothing to find.
    assert result["dice_micro"] == result["iou_micro"] == 1.0
    assert result["precision"] == result["recall"] == 1.0
    assert result["specificity"] == 1.0


def test_mean_over_images_differs_from_micro():
    # Image A is the 4x4 example (dice 2/3, iou 1/2). Image B: one foreground pixel, missed.
    b_truth = np.zeros((4, 4), dtype=bool)
    b_truth[2, 2] = True
    b_pred = np.zeros((4, 4), dtype=bool)
    metrics = BinaryMetrics()
    metrics.update(PRED, TRUTH)
    image_b = metrics.update(b_pred, b_truth)
    assert image_b["dice"] == 0.0
    assert image_b["iou"] == 0.0

    result = metrics.compute()
    # Mean over images: (2/3 + 0) / 2 and (1/2 + 0) / 2.
    assert result["dice"] == approx(Fraction(1, 3))
    assert result["iou"] == approx(Fraction(1, 4))
    # Micro: summed tp=3, fp=2, fn=1+1=2, tn=10+15=25.
    assert result["dice_micro"] == approx(Fraction(6, 6 + 2 + 2))
    assert result["iou_micro"] == approx(Fraction(3, 3 + 2 + 2))
    assert result["pixel_accuracy"] == approx(Fraction(3 + 25, 32))
    assert result["precision"] == approx(Fraction(3, 5))
    assert result["recall"] == approx(Fraction(3, 5))
    assert result["specificity"] == approx(Fraction(25, 27))
    assert result["n_images"] == 2


def test_valid_mask_excludes_pixels():
    # Exclude the fp at (3,3) and the fn at (0,2): tp=3, fp=1, fn=0, tn=10 over 14 pixels.
    valid = np.ones((4, 4), dtype=bool)
    valid[3, 3] = valid[0, 2] = False
    assert binary_counts(PRED, TRUTH, valid) == (3, 1, 0, 10)
    metrics = BinaryMetrics()
    image = metrics.update(PRED, TRUTH, valid)
    assert image["dice"] == approx(Fraction(6, 7))
    assert image["iou"] == approx(Fraction(3, 4))
    assert image["pixel_accuracy"] == approx(Fraction(13, 14))
    result = metrics.compute()
    assert result["recall"] == 1.0
    assert result["specificity"] == approx(Fraction(10, 11))


def test_zero_division_conventions():
    truth = np.zeros((2, 2), dtype=bool)
    truth[0, 0] = True
    nothing = np.zeros((2, 2), dtype=bool)
    everything = np.ones((2, 2), dtype=bool)

    # Nothing predicted but there was something to find: precision 0/0 -> 0.0.
    metrics = BinaryMetrics()
    metrics.update(nothing, truth)
    result = metrics.compute()
    assert result["precision"] == 0.0
    assert result["recall"] == 0.0

    # Nothing to find but something predicted: recall 0/0 -> 0.0.
    metrics = BinaryMetrics()
    metrics.update(truth, nothing)
    result = metrics.compute()
    assert result["recall"] == 0.0
    assert result["precision"] == 0.0
    assert result["dice"] == 0.0

    # All foreground, all predicted: specificity 0/0 with no predicted negatives -> 1.0.
    metrics = BinaryMetrics()
    metrics.update(everything, everything)
    assert metrics.compute()["specificity"] == 1.0

    # All foreground, one pixel missed: specificity 0/0 but the prediction disagrees -> 0.0.
    missed = everything.copy()
    missed[0, 0] = False
    metrics = BinaryMetrics()
    metrics.update(missed, everything)
    assert metrics.compute()["specificity"] == 0.0


def test_binary_reset_and_empty_compute():
    metrics = BinaryMetrics()
    with pytest.raises(ValueError, match="before any update"):
        metrics.compute()
    metrics.update(PRED, TRUTH)
    metrics.reset()
    with pytest.raises(ValueError, match="before any update"):
        metrics.compute()


def test_binary_bad_input():
    metrics = BinaryMetrics()
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        metrics.update(PRED, np.zeros((4, 5), dtype=bool))
    with pytest.raises(ValueError, match=r"\(1, 4, 4\)"):
        metrics.update(PRED[None], TRUTH[None])
    with pytest.raises(
        ValueError, match=r"target must be a bool or 0/1 mask; found values \[255\]"
    ):
        metrics.update(PRED, TRUTH.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="valid shape"):
        metrics.update(PRED, TRUTH, np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="excludes every pixel"):
        metrics.update(PRED, TRUTH, np.zeros((4, 4), dtype=bool))
    assert metrics.n_images == 0  # failed updates add nothing


# --- Multi-class ---------------------------------------------------------------------------------

# 3-class 3x3 example.
MC_TRUTH = np.array(
    [
        [0, 0, 1],
        [1, 1, 2],
        [2, 2, 2],
    ]
)
MC_PRED = np.array(
    [
        [0, 1, 1],
        [1, 2, 2],
        [1, 2, 2],
    ]
)
# Rows = truth, columns = prediction, counted by hand pixel by pixel:
#   truth 0: (0,0)->0 (0,1)->1                -> [1, 1, 0]
#   truth 1: (0,2)->1 (1,0)->1 (1,1)->2       -> [0, 2, 1]
#   truth 2: (1,2)->2 (2,0)->1 (2,1)->2 (2,2)->2 -> [0, 1, 3]
MC_CONFUSION = [[1, 1, 0], [0, 2, 1], [0, 1, 3]]
# Truth counts 2, 3, 4; prediction counts 1, 4, 4.
MC_IOU = [Fraction(1, 2 + 1 - 1), Fraction(2, 3 + 4 - 2), Fraction(3, 4 + 4 - 3)]  # 1/2 2/5 3/5
MC_DICE = [Fraction(2, 2 + 1), Fraction(4, 3 + 4), Fraction(6, 4 + 4)]  # 2/3 4/7 3/4
MC_ACC = [Fraction(1, 2), Fraction(2, 3), Fraction(3, 4)]


def test_multiclass_hand_example():
    metrics = MulticlassMetrics(3, class_names=["bg", "skin", "lesion"])
    image = metrics.update(MC_PRED, MC_TRUTH)
    assert image["pixel_accuracy"] == approx(Fraction(6, 9))
    assert image["miou"] == approx(sum(MC_IOU) / 3)

    result = metrics.compute()
    assert result["confusion_matrix"] == MC_CONFUSION
    assert result["miou"] == approx(sum(MC_IOU) / 3)  # 1/2
    assert result["miou"] == approx(Fraction(1, 2))
    assert result["dice"] == approx(sum(MC_DICE) / 3)
    assert result["global_accuracy"] == approx(Fraction(6, 9))
    assert result["class_accuracy"] == approx(sum(MC_ACC) / 3)  # 23/36
    for c, name in enumerate(["bg", "skin", "lesion"]):
        per_class = result["per_class"][name]
        assert per_class["iou"] == approx(MC_IOU[c])
        assert per_class["dice"] == approx(MC_DICE[c])
        assert per_class["accuracy"] == approx(MC_ACC[c])
    assert [result["per_class"][n]["support"] for n in ["bg", "skin", "lesion"]] == [2, 3, 4]
    assert result["n_images"] == 1
    json.dumps(result)


def test_multiclass_accumulates_confusion_over_images():
    metrics = MulticlassMetrics(3)
    metrics.update(MC_PRED, MC_TRUTH)
    metrics.update(MC_TRUTH, MC_TRUTH)  # a perfect image adds 2, 3, 4 to the diagonal
    result = metrics.compute()
    assert result["confusion_matrix"] == [[3, 1, 0], [0, 5, 1], [0, 1, 7]]
    assert result["global_accuracy"] == approx(Fraction(15, 18))
    assert list(result["per_class"]) == ["0", "1", "2"]  # default names
    assert result["n_images"] == 2


def test_multiclass_ignore_index_excluded():
    # Add a column of ignored pixels whose predictions would all be wrong if counted.
    truth = np.concatenate([MC_TRUTH, np.full((3, 1), 255)], axis=1).astype(np.uint8)
    pred = np.concatenate([MC_PRED, np.array([[0], [1], [2]])], axis=1)
    metrics = MulticlassMetrics(3, ignore_index=255)
    image = metrics.update(pred, truth)
    assert image["pixel_accuracy"] == approx(Fraction(6, 9))
    result = metrics.compute()
    assert result["confusion_matrix"] == MC_CONFUSION
    assert result["miou"] == approx(Fraction(1, 2))


def test_multiclass_absent_class_is_nan_and_excluded():
    # Class 3 occurs in neither truth nor prediction: IoU/Dice/accuracy NaN, means unchanged.
    metrics = MulticlassMetrics(4)
    metrics.update(MC_PRED, MC_TRUTH)
    result = metrics.compute()
    absent = result["per_class"]["3"]
    assert math.isnan(absent["iou"])
    assert math.isnan(absent["dice"])
    assert math.isnan(absent["accuracy"])
    assert absent["support"] == 0
    assert result["miou"] == approx(Fraction(1, 2))
    assert result["dice"] == approx(sum(MC_DICE) / 3)
    assert result["class_accuracy"] == approx(sum(MC_ACC) / 3)
    for key in ("miou", "dice", "global_accuracy", "class_accuracy"):
        assert not math.isnan(result[key])


def test_multiclass_class_predicted_but_absent_from_truth_counts_as_zero_iou():
    # Predict class 3 at (0,0) (truth 0): class 3 IoU = 0/1, included; its accuracy is NaN.
    pred = MC_PRED.copy()
    pred[0, 0] = 3
    metrics = MulticlassMetrics(4)
    metrics.update(pred, MC_TRUTH)
    result = metrics.compute()
    assert result["per_class"]["3"]["iou"] == 0.0
    assert math.isnan(result["per_class"]["3"]["accuracy"])
    # Class 0 lost its only hit: IoU 0/(2+0-0) = 0. mIoU = (0 + 2/5 + 3/5 + 0) / 4.
    assert result["miou"] == approx(Fraction(1, 4))
    assert result["class_accuracy"] == approx((Fraction(0) + MC_ACC[1] + MC_ACC[2]) / 3)


def test_multiclass_bad_labels_are_named():
    metrics = MulticlassMetrics(3, ignore_index=255)
    truth = MC_TRUTH.copy()
    truth[0, 0], truth[2, 2] = 7, 5
    with pytest.raises(ValueError, match=r"target values must be in \[0, 3\).*found \[5, 7\]"):
        metrics.update(MC_PRED, truth)
    pred = MC_PRED.copy()
    pred[1, 1] = -1
    with pytest.raises(ValueError, match=r"pred values .*found \[-1\]"):
        metrics.update(pred, MC_TRUTH)
    with pytest.raises(ValueError, match="integer class indices"):
        metrics.update(MC_PRED.astype(float), MC_TRUTH)
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(3, 2\)"):
        metrics.update(MC_PRED, MC_TRUTH[:, :2])
    with pytest.raises(ValueError, match="ignore_index"):
        metrics.update(MC_PRED, np.full((3, 3), 255))
    assert metrics.n_images == 0
    with pytest.raises(ValueError, match="before any update"):
        metrics.compute()


def test_multiclass_constructor_errors():
    with pytest.raises(ValueError, match="num_classes"):
        MulticlassMetrics(1)
    with pytest.raises(ValueError, match="class_names"):
        MulticlassMetrics(3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        MulticlassMetrics(2, class_names=["a", "a"])


def test_multiclass_metrics_merged_from_shares_equal_one_pass() -> None:
    """What two processes of a distributed evaluation accumulate, merged, is one pass."""
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 3, (9, 7)), rng.integers(0, 4, (9, 7))) for _ in range(6)]
    whole, a, b = (MulticlassMetrics(3, ignore_index=3) for _ in range(3))
    for i, (pred, target) in enumerate(pairs):
        whole.update(pred, target)
        (a if i % 2 == 0 else b).update(pred, target)
    a.merge(b)
    assert a.compute() == whole.compute()

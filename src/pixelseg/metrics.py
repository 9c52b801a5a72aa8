"""Segmentation metrics on numpy masks, accumulated over a data set and reduced once.

Metrics are computed at each image's original size (the caller resizes predictions back), so
that they do not depend on the training resolution. Each ``update`` takes one image; pixel
counts are accumulated as int64 and ``compute`` reduces them once.

Conventions for ratios with a zero denominator (a 0/0 means there was nothing to measure):

* Binary Dice/IoU of an image (or of the whole set, for the micro scores) whose prediction and
  truth are both empty is 1.0 -- the PH2 literature's convention: the model correctly says
  "nothing here".
* Binary precision, recall and specificity follow the same idea: 1.0 when the prediction and
  the truth agree that the relevant set is empty, else 0.0. Precision with no predicted
  positives is 1.0 if there are no true positives to find either (fn == 0), else 0.0; recall
  with no true positives is 1.0 if nothing was predicted positive (fp == 0), else 0.0;
  specificity with no true negatives is 1.0 if nothing was predicted negative (fn == 0), else
  0.0.
* Multi-class: a class with no pixel in truth and none in prediction has an undefined IoU and
  Dice, and a class with no pixel in truth an undefined accuracy (recall). These are NaN in
  ``per_class`` and left out of the means (``nanmean``), as torchvision's references and
  mmsegmentation do.

An image with no valid pixel at all (everything masked or ignored) raises ValueError: it has
no defined score, and silently scoring it 1.0 or dropping it would skew the averages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["BinaryMetrics", "MulticlassMetrics", "binary_counts"]


def binary_counts(
    pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None
) -> tuple[int, int, int, int]:
    """Count ``(tp, fp, fn, tn)`` pixels of one binary prediction.

    Args:
        pred: ``(H, W)`` bool or 0/1 predicted foreground mask.
        target: ``(H, W)`` bool or 0/1 true foreground mask.
        valid: optional ``(H, W)`` bool or 0/1 mask of the pixels that count.

    Returns:
        Plain ints ``(tp, fp, fn, tn)`` over the valid pixels.

    Raises:
        ValueError: arrays that are not 2-D, differ in shape, or hold values other than 0/1.
    """
    pred_mask = _as_binary_mask(pred, "pred")
    target_mask = _as_binary_mask(target, "target")
    _check_same_2d_shape(pred_mask, target_mask)
    if valid is None:
        n_valid = pred_mask.size
    else:
        valid_mask = _as_binary_mask(valid, "valid")
        if valid_mask.shape != pred_mask.shape:
            raise ValueError(
                f"valid shape {valid_mask.shape} does not match pred/target shape {pred_mask.shape}"
            )
        pred_mask = pred_mask & valid_mask
        target_mask = target_mask & valid_mask
        n_valid = int(np.count_nonzero(valid_mask))
    tp = int(np.count_nonzero(pred_mask & target_mask))
    fp = int(np.count_nonzero(pred_mask & ~target_mask))
    fn = int(np.count_nonzero(~pred_mask & target_mask))
    return tp, fp, fn, n_valid - tp - fp - fn


class BinaryMetrics:
    """Dice, IoU and pixel-level scores of binary (foreground/background) segmentation.

    ``dice``/``iou`` from :meth:`compute` are means over images of per-image scores (each image
    counts the same, as in the PH2/ISIC literature); ``dice_micro``/``iou_micro`` and the other
    scores come from the pixel counts summed over the whole set (large lesions weigh more).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.counts = np.zeros(4, dtype=np.int64)  # tp, fp, fn, tn summed over images
        self.n_images = 0
        self._dice_sum = 0.0
        self._iou_sum = 0.0

    def update(
        self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None
    ) -> dict[str, float]:
        """Add one image and return its scores.

        Args:
            pred: ``(H, W)`` bool or 0/1 predicted mask at the image's original size.
            target: ``(H, W)`` bool or 0/1 true mask.
            valid: optional ``(H, W)`` bool mask of the pixels that count.

        Returns:
            ``{"dice", "iou", "pixel_accuracy"}`` as floats and ``{"tp", "fp", "fn", "tn"}`` as
            ints, for this image only.

        Raises:
            ValueError: bad shapes or values (see :func:`binary_counts`), or no valid pixel.
        """
        tp, fp, fn, tn = binary_counts(pred, target, valid)
        if tp + fp + fn + tn == 0:
            raise ValueError("the valid mask excludes every pixel of this image")
        return self.add_counts(tp, fp, fn, tn)

    def add_counts(self, tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
        """Add one image given its pixel counts (what :meth:`update` returns in its row).

        Replaying the rows of several processes in the images' order gives exactly the
        scores one process would have computed (the sums are taken in the same order).
        """
        n_valid = tp + fp + fn + tn
        dice, iou = _dice_iou(tp, fp, fn)
        self.counts += np.array([tp, fp, fn, tn], dtype=np.int64)
        self.n_images += 1
        self._dice_sum += dice
        self._iou_sum += iou
        return {
            "dice": dice,
            "iou": iou,
            "pixel_accuracy": (tp + tn) / n_valid,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
        }

    def compute(self) -> dict[str, float]:
        """Reduce everything added so far.

        Returns:
            ``dice``, ``iou`` (mean over images), ``dice_micro``, ``iou_micro``,
            ``pixel_accuracy``, ``precision``, ``recall``, ``specificity`` (from the summed
            counts) as floats, and ``n_images`` as an int.

        Raises:
            ValueError: no image was added.
        """
        if self.n_images == 0:
            raise ValueError("BinaryMetrics.compute() called before any update()")
        tp, fp, fn, tn = (int(c) for c in self.counts)
        dice_micro, iou_micro = _dice_iou(tp, fp, fn)
        return {
            "dice": self._dice_sum / self.n_images,
            "iou": self._iou_sum / self.n_images,
            "dice_micro": dice_micro,
            "iou_micro": iou_micro,
            "pixel_accuracy": (tp + tn) / (tp + fp + fn + tn),
            "precision": _ratio(tp, tp + fp, both_empty=fn == 0),
            "recall": _ratio(tp, tp + fn, both_empty=fp == 0),
            "specificity": _ratio(tn, tn + fp, both_empty=fn == 0),
            "n_images": self.n_images,
        }


class MulticlassMetrics:
    """Confusion-matrix metrics of multi-class segmentation (torchvision-references style).

    The ``(C, C)`` confusion matrix has rows = true class and columns = predicted class, and
    counts only pixels whose target is not ``ignore_index``.

    Args:
        num_classes: number of classes C >= 2.
        ignore_index: target value of pixels to leave out, or None.
        class_names: C distinct names, the keys of ``per_class``; default ``"0"``, ``"1"``, ...

    Raises:
        ValueError: bad ``num_classes`` or ``class_names``.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        names = [str(c) for c in range(num_classes)] if class_names is None else list(class_names)
        if len(names) != num_classes:
            raise ValueError(f"got {len(names)} class_names for num_classes={num_classes}")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be distinct, got {names}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = names
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.n_images = 0

    def merge(self, other: MulticlassMetrics) -> None:
        """Add what ``other`` accumulated (another process's share of the images)."""
        self.confusion += other.confusion
        self.n_images += other.n_images

    def update(self, pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """Add one image and return its ``{"pixel_accuracy", "miou"}``.

        Args:
            pred: ``(H, W)`` integer predicted classes in ``[0, C)``.
            target: ``(H, W)`` integer true classes in ``[0, C)`` or ``ignore_index``.

        Returns:
            This image's pixel accuracy and mean IoU over the classes that occur in its truth
            or prediction.

        Raises:
            ValueError: shapes differ or are not 2-D, non-integer arrays, labels out of range,
                or every pixel ignored.
        """
        pred = np.asarray(pred)
        target = np.asarray(target)
        _check_same_2d_shape(pred, target)
        for name, array in (("pred", pred), ("target", target)):
            if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
                raise ValueError(f"{name} must hold integer class indices, got {array.dtype}")

        valid = (
            np.ones(target.shape, bool)
            if self.ignore_index is None
            else target != self.ignore_index
        )
        # int64 before arithmetic: ``C * target + pred`` overflows uint8 masks.
        truth = target[valid].astype(np.int64)
        predicted = pred[valid].astype(np.int64)
        self._check_labels(truth, "target")
        self._check_labels(predicted, "pred")
        if truth.size == 0:
            raise ValueError(
                f"every target pixel of this image is ignore_index={self.ignore_index}"
            )

        c = self.num_classes
        confusion = np.bincount(c * truth + predicted, minlength=c * c).reshape(c, c)
        self.confusion += confusion
        self.n_images += 1
        iou, _, _ = _per_class_scores(confusion)
        return {
            "pixel_accuracy": float(np.trace(confusion) / truth.size),
            "miou": float(np.nanmean(iou)),
        }

    def compute(self) -> dict[str, Any]:
        """Reduce everything added so far.

        Returns:
            ``miou``, ``dice`` (mean per-class Dice), ``global_accuracy``, ``class_accuracy``
            (mean per-class recall) as floats; ``per_class`` ``{name: {"iou", "dice",
            "accuracy", "support"}}`` (support = true pixel count; NaN marks undefined
            scores); ``confusion_matrix`` as a list of lists of ints; ``n_images``.

        Raises:
            ValueError: no image was added.
        """
        if self.n_images == 0:
            raise ValueError("MulticlassMetrics.compute() called before any update()")
        confusion = self.confusion
        iou, dice, accuracy = _per_class_scores(confusion)
        support = confusion.sum(axis=1)
        # Every image had a valid pixel, so some class has support and no mean below is empty.
        return {
            "miou": float(np.nanmean(iou)),
            "dice": float(np.nanmean(dice)),
            "global_accuracy": float(np.trace(confusion) / confusion.sum()),
            "class_accuracy": float(np.nanmean(accuracy)),
            "per_class": {
                name: {
                    "iou": float(iou[c]),
                    "dice": float(dice[c]),
                    "accuracy": float(accuracy[c]),
                    "support": int(support[c]),
                }
                for c, name in enumerate(self.class_names)
            },
            "confusion_matrix": confusion.tolist(),
            "n_images": self.n_images,
        }

    def _check_labels(self, labels: np.ndarray, name: str) -> None:
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            values = np.unique(labels[bad])[:10].tolist()
            ignore = "" if self.ignore_index is None else f" or ignore_index={self.ignore_index}"
            allowed = f"[0, {self.num_classes})" + (ignore if name == "target" else "")
            raise ValueError(f"{name} values must be in {allowed}; found {values}")


def _per_class_scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class IoU, Dice and accuracy (recall) of a confusion matrix; NaN where 0/0."""
    hits = np.diag(confusion).astype(np.float64)
    truth = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    union = truth + predicted - hits
    return (
        _nan_divide(hits, union),
        _nan_divide(2 * hits, truth + predicted),
        _nan_divide(hits, truth),
    )


def _nan_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _dice_iou(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """Dice and IoU from counts; both 1.0 when prediction and truth are both empty."""
    return (
        _ratio(2 * tp, 2 * tp + fp + fn, both_empty=True),
        _ratio(tp, tp + fp + fn, both_empty=True),
    )


def _ratio(num: int, den: int, both_empty: bool) -> float:
    """``num / den``; for 0/0, 1.0 if prediction and truth agree the set is empty, else 0.0."""
    if den:
        return num / den
    return 1.0 if both_empty else 0.0


def _as_binary_mask(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must be a bool or 0/1 mask, got dtype {array.dtype}")
    bad = (array != 0) & (array != 1)
    if bad.any():
        values = np.unique(array[bad])[:10].tolist()
        raise ValueError(f"{name} must be a bool or 0/1 mask; found values {values}")
    return array.astype(bool)


def _check_same_2d_shape(pred: np.ndarray, target: np.ndarray) -> None:
    # 2-D only: a stacked (N, H, W) batch would silently be scored as one image.
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(
            f"pred and target must be (H, W) arrays of the same shape, got pred {pred.shape} "
            f"and target {target.shape}"
        )

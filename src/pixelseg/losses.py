"""Segmentation losses that take logits and honour an ignore index.

The mode follows ``num_classes``:

* binary (``num_classes == 1``): logits ``(N, 1, H, W)``; target ``(N, H, W)`` of any integer,
  float or bool dtype with values in ``{0, 1}`` or ``ignore_index``.
* multi-class (``num_classes >= 2``): logits ``(N, C, H, W)``; target ``(N, H, W)`` of an
  integer dtype with values in ``[0, C)`` or ``ignore_index``.

Ignored pixels take part in no term. Cross-entropy terms are (weighted) means over the valid
pixels only, and a batch without a single valid pixel gives a loss of exactly 0 that still has a
``grad_fn``: a training step on it is a harmless no-op instead of a NaN that poisons the weights.

Dice (:class:`DiceLoss`) follows segmentation_models_pytorch: a soft Dice per class, summed
over the whole batch (not per image), with probabilities from a sigmoid (binary: foreground
only) or a softmax (multi-class), and ``smooth = 0``. Classes absent from the batch's valid
target pixels are left out of the mean over classes, because their Dice would be 0 (loss 1)
however good the prediction is; false positives of such classes are left to the BCE/CE term,
which is why the combined losses are the usual choice.

Losses are computed in float32 even for half-precision logits, since batch-wide Dice sums
overflow float16. Use :func:`build_loss` to get a loss by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixelseg.config import LOSS_NAMES  # defined with the settings, so the CLI needs no torch
from pixelseg.errors import SettingsError

# Which name to suggest when a loss is asked for in the wrong mode.
_MULTICLASS_EQUIVALENT = {"bce": "ce", "bce+dice": "ce+dice"}
_BINARY_EQUIVALENT = {v: k for k, v in _MULTICLASS_EQUIVALENT.items()}

# Denominators are clamped to at least this, so a sum over zero pixels (or zero weights) gives
# 0 / _EPS == 0 rather than 0 / 0 == NaN.
_EPS = 1e-7


def build_loss(
    name: str,
    num_classes: int,
    ignore_index: int | None = None,
    class_weights: torch.Tensor | None = None,
) -> nn.Module:
    """Build the loss called ``name`` (one of :data:`LOSS_NAMES`).

    Args:
        name: ``"bce"``, ``"bce+dice"`` (binary only), ``"ce"``, ``"ce+dice"`` (multi-class
            only) or ``"dice"`` (both). Combined losses are the plain sum of the two terms.
        num_classes: 1 for binary segmentation, C >= 2 for multi-class.
        ignore_index: target value of pixels that count in no term, or None.
        class_weights: multi-class: shape ``(C,)``, as ``F.cross_entropy(weight=...)`` for CE
            and a weighted mean over classes for Dice. Binary: shape ``(2,)``, ``[w_background,
            w_foreground]`` per-pixel weights for BCE (they do not affect binary Dice, which has
            a single foreground term).

    Returns:
        A module called as ``loss(logits, target)`` that returns a scalar tensor.

    Raises:
        ValueError: unknown name, a loss for the other mode, or bad ``class_weights``.
    """
    if name not in LOSS_NAMES:
        raise SettingsError(f"unknown loss {name!r}; valid names: {', '.join(LOSS_NAMES)}")
    _check_num_classes(num_classes)
    if num_classes == 1 and name in _BINARY_EQUIVALENT:
        raise SettingsError(
            f"loss {name!r} is for multi-class segmentation (num_classes >= 2); "
            f"for binary segmentation (num_classes=1) use {_BINARY_EQUIVALENT[name]!r}"
        )
    if num_classes >= 2 and name in _MULTICLASS_EQUIVALENT:
        raise SettingsError(
            f"loss {name!r} is for binary segmentation (num_classes=1); "
            f"for num_classes={num_classes} use {_MULTICLASS_EQUIVALENT[name]!r}"
        )
    term_classes = {"bce": BCEWithLogitsLoss, "ce": CrossEntropyLoss, "dice": DiceLoss}
    terms = [
        term_classes[part](num_classes, ignore_index=ignore_index, class_weights=class_weights)
        for part in name.split("+")
    ]
    return terms[0] if len(terms) == 1 else CombinedLoss(*terms)


class SegmentationLoss(nn.Module):
    """Base of the losses here: ``forward`` validates the inputs, then calls :meth:`compute`.

    Subclasses implement :meth:`compute`, which receives already-checked tensors, so that
    :class:`CombinedLoss` validates a batch once for all of its terms.
    """

    class_weights: torch.Tensor | None

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        if ignore_index is not None and (
            not isinstance(ignore_index, int) or isinstance(ignore_index, bool)
        ):
            raise SettingsError(f"ignore_index must be an int or None, got {ignore_index!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # A buffer, so that ``loss.to(device)`` moves the weights with it; not persistent
        # because the weights are configuration, not state worth saving in a checkpoint.
        self.register_buffer(
            "class_weights", _check_class_weights(class_weights, num_classes), persistent=False
        )

    @property
    def binary(self) -> bool:
        return self.num_classes == 1

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` ``(N, C, H, W)`` against ``target`` ``(N, H, W)``; a scalar."""
        clean_target, valid = prepare_target(logits, target, self.num_classes, self.ignore_index)
        return self.compute(_at_least_float32(logits), clean_target, valid)

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Loss from checked inputs (see :func:`prepare_target` for ``target`` and ``valid``)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}"


class BCEWithLogitsLoss(SegmentationLoss):
    """Binary cross-entropy of the foreground logit, averaged over valid pixels.

    With ``class_weights = [w_bg, w_fg]`` each pixel is weighted by the weight of its true
    class and the result is the weighted mean ``sum(w_i * l_i) / sum(w_i)``, the same
    normalisation as ``F.cross_entropy(weight=...)``.
    """

    def __init__(
        self,
        num_classes: int = 1,
        ignore_index: int | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        if num_classes != 1:
            raise ValueError(
                f"BCE is for binary segmentation (num_classes=1); "
                f"for num_classes={num_classes} use cross-entropy ('ce')"
            )
        super().__init__(num_classes, ignore_index, class_weights)

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        weights = valid.to(per_pixel.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights.to(per_pixel)[target.long()]
        return _weighted_mean(per_pixel, weights)


class CrossEntropyLoss(SegmentationLoss):
    """Softmax cross-entropy averaged over valid pixels, like ``F.cross_entropy``.

    Equals ``F.cross_entropy(logits, target, weight=class_weights, ignore_index=...)`` except
    that a batch with no valid pixel gives 0 instead of NaN.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        if num_classes < 2:
            raise ValueError(
                "cross-entropy is for multi-class segmentation (num_classes >= 2); "
                "for binary segmentation (num_classes=1) use 'bce'"
            )
        super().__init__(num_classes, ignore_index, class_weights)

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        # Ignored pixels hold class 0 in ``target`` (a safe index); their weight 0 drops them.
        per_pixel = F.cross_entropy(logits, target, reduction="none")
        weights = valid.to(per_pixel.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights.to(per_pixel)[target]
        return _weighted_mean(per_pixel, weights)


class DiceLoss(SegmentationLoss):
    """Soft Dice loss per class over the whole batch, averaged over the classes present.

    For class c, with p the predicted probabilities and t the one-hot target over the batch's
    valid pixels: ``loss_c = 1 - (2 * sum(p*t) + smooth) / max(sum(p) + sum(t) + smooth, eps)``.
    Binary mode has the single foreground class. The result is the (``class_weights``-weighted)
    mean of ``loss_c`` over the classes with at least one valid target pixel in the batch; a
    batch where no class is present gives 0.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        class_weights: torch.Tensor | None = None,
        smooth: float = 0.0,
        eps: float = _EPS,
    ) -> None:
        super().__init__(num_classes, ignore_index, class_weights)
        self.smooth = smooth
        self.eps = eps

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        if self.binary:
            probs = torch.sigmoid(logits)  # (N, 1, H, W): foreground only
            truth = target[:, None]
        else:
            probs = logits.softmax(dim=1)  # (N, C, H, W)
            truth = F.one_hot(target, self.num_classes).permute(0, 3, 1, 2).to(probs.dtype)
        mask = valid[:, None].to(probs.dtype)
        probs, truth = probs * mask, truth * mask

        dims = (0, 2, 3)  # sum over batch and pixels: one score per class
        intersection = (probs * truth).sum(dims)
        truth_sum = truth.sum(dims)
        cardinality = probs.sum(dims) + truth_sum
        score = (2 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(self.eps)

        weights = (truth_sum > 0).to(score.dtype)
        if self.class_weights is not None and not self.binary:
            weights = weights * self.class_weights.to(score)
        return _weighted_mean(1 - score, weights)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, smooth={self.smooth}, eps={self.eps}"


class CombinedLoss(SegmentationLoss):
    """Sum of several losses (equal weights) for the same mode, validating inputs once."""

    def __init__(self, *terms: SegmentationLoss) -> None:
        if not terms:
            raise ValueError("CombinedLoss needs at least one term")
        first = terms[0]
        for term in terms[1:]:
            if (term.num_classes, term.ignore_index) != (first.num_classes, first.ignore_index):
                raise ValueError(
                    "all terms of a CombinedLoss need the same num_classes and ignore_index, "
                    f"got {first!r} and {term!r}"
                )
        super().__init__(first.num_classes, first.ignore_index)
        self.terms = nn.ModuleList(terms)

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        total = self.terms[0].compute(logits, target, valid)
        for term in self.terms[1:]:
            total = total + term.compute(logits, target, valid)
        return total


def prepare_target(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``logits``/``target`` and split the target into clean labels and a valid mask.

    Args:
        logits: ``(N, num_classes, H, W)`` floating point.
        target: ``(N, H, W)``; see the module docstring for the allowed values per mode.
        num_classes: 1 for binary, C >= 2 for multi-class.
        ignore_index: target value to ignore, or None.

    Returns:
        ``(target, valid)``: target ``(N, H, W)`` with ignored pixels set to 0 (a safe index)
        as float32/float64 (binary) or long (multi-class), and the bool mask ``(N, H, W)`` of
        valid pixels.

    Raises:
        ValueError: wrong shapes or dtypes, or target values outside the allowed set.
    """
    if logits.ndim != 4 or logits.shape[1] != num_classes:
        raise ValueError(
            f"logits must have shape (N, {num_classes}, H, W) for num_classes={num_classes}, "
            f"got {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)}: expected (N, H, W) = {expected}"
        )
    if num_classes == 1:
        allowed = (target == 0) | (target == 1)
    else:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(
                f"multi-class target must hold integer class indices, got dtype {target.dtype}"
            )
        allowed = (target >= 0) & (target < num_classes)
    valid = torch.ones_like(allowed) if ignore_index is None else target != ignore_index

    # One device sync per batch; worth it, because an out-of-range label on a GPU otherwise
    # surfaces as an opaque device-side assert (CE) or a silently wrong loss (BCE/Dice).
    bad = valid & ~allowed
    if bad.any():
        values = torch.unique(target[bad])[:10].tolist()
        expected_values = "0 or 1" if num_classes == 1 else f"in [0, {num_classes})"
        ignore = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(f"target values must be {expected_values}{ignore}; found {values}")

    clean = target.masked_fill(~valid, 0)
    # Binary targets take the dtype the losses compute in (see _at_least_float32).
    binary_dtype = torch.promote_types(logits.dtype, torch.float32)
    clean = clean.to(binary_dtype if num_classes == 1 else torch.long)
    return clean, valid


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")


def _check_class_weights(
    class_weights: torch.Tensor | None, num_classes: int
) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weights = torch.as_tensor(class_weights, dtype=torch.float32)
    # Binary mode weighs background and foreground pixels, hence two weights for one logit.
    expected = 2 if num_classes == 1 else num_classes
    if weights.shape != (expected,):
        what = "[w_background, w_foreground]" if num_classes == 1 else "one weight per class"
        raise SettingsError(
            f"class_weights must have shape ({expected},) ({what}) for "
            f"num_classes={num_classes}, got shape {tuple(weights.shape)}"
        )
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise SettingsError(f"class_weights must be finite and >= 0, got {weights.tolist()}")
    return weights


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    # float64 stays float64 (exact tests); float16/bfloat16 go up so batch sums cannot overflow.
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # With all weights 0 the numerator is an exact 0 whose gradient is 0: no NaN anywhere.
    return (values * weights).sum() / weights.sum().clamp_min(_EPS)

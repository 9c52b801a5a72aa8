"""Losses against values computed by hand (formulas written out with math.log / math.exp)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pixelseg.losses import LOSS_NAMES, CombinedLoss, DiceLoss, build_loss

IGNORE = 255


def softplus(x: float) -> float:
    """log(1 + e^x): BCE of logit x is softplus(-x) for target 1 and softplus(x) for target 0."""
    return math.log(1 + math.exp(x))


# One 2x2 image, binary mode; logits (1, 1, 2, 2) and target (1, 2, 2).
LOGITS = [[2.0, -1.0], [0.5, -3.0]]
TARGET = [[1, 0], [0, 1]]
# Per-pixel BCE by hand, in the same order.
BCE_PIXELS = [softplus(-2.0), softplus(-1.0), softplus(0.5), softplus(3.0)]


def binary_batch(target=TARGET, logits=LOGITS, dtype=torch.float64):
    return torch.tensor([[logits]], dtype=dtype), torch.tensor([target])


# --- BCE -----------------------------------------------------------------------------------------


def test_bce_matches_hand_computed_value():
    logits, target = binary_batch()
    loss = build_loss("bce", num_classes=1)(logits, target)
    assert loss.item() == pytest.approx(sum(BCE_PIXELS) / 4, rel=1e-12)


def test_bce_accepts_float_and_bool_targets():
    logits, target = binary_batch()
    loss = build_loss("bce", 1)
    expected = sum(BCE_PIXELS) / 4
    assert loss(logits, target.float()).item() == pytest.approx(expected, rel=1e-12)
    assert loss(logits, target.bool()).item() == pytest.approx(expected, rel=1e-12)


def test_bce_ignored_pixels_do_not_count():
    # Ignore the bottom-right pixel: the mean is over the three others only.
    logits, target = binary_batch(target=[[1, 0], [0, IGNORE]])
    loss_fn = build_loss("bce", 1, ignore_index=IGNORE)
    expected = sum(BCE_PIXELS[:3]) / 3
    logits.requires_grad_(True)
    loss = loss_fn(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-12)

    # Whatever the logit at the ignored pixel, the loss is the same and its gradient is 0.
    loss.backward()
    assert logits.grad[0, 0, 1, 1].item() == 0.0
    other = torch.tensor([[[[2.0, -1.0], [0.5, 40.0]]]], dtype=torch.float64)
    assert loss_fn(other, target).item() == pytest.approx(expected, rel=1e-12)


def test_bce_class_weights_are_a_weighted_mean():
    w_bg, w_fg = 0.25, 2.0
    logits, target = binary_batch()
    loss = build_loss("bce", 1, class_weights=torch.tensor([w_bg, w_fg]))(logits, target)
    weights = [w_fg, w_bg, w_bg, w_fg]  # weight of each pixel's true class
    expected = sum(w * b for w, b in zip(weights, BCE_PIXELS, strict=True)) / sum(weights)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() != pytest.approx(sum(BCE_PIXELS) / 4, rel=1e-3)


def test_bce_class_weights_with_ignore():
    logits, target = binary_batch(target=[[1, IGNORE], [0, 1]])
    loss = build_loss("bce", 1, ignore_index=IGNORE, class_weights=torch.tensor([0.5, 3.0]))
    weights = [3.0, 0.5, 3.0]
    pixels = [BCE_PIXELS[0], BCE_PIXELS[2], BCE_PIXELS[3]]
    expected = sum(w * b for w, b in zip(weights, pixels, strict=True)) / sum(weights)
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


# --- Cross-entropy -------------------------------------------------------------------------------


def test_ce_matches_hand_computed_value():
    # Two pixels, three classes: logits [1, 2, 3] with target 2 and [0, 0, 0] with target 0.
    logits = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 0.0]]]], dtype=torch.float64)
    target = torch.tensor([[[2, 0]]])
    first = -math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3)))
    second = -math.log(1 / 3)
    loss = build_loss("ce", 3)(logits, target)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-12)


@pytest.mark.parametrize("use_weights", [False, True])
def test_ce_matches_torch_cross_entropy(use_weights):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    target[0, 0, :3] = IGNORE
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0]) if use_weights else None
    ours = build_loss("ce", 4, ignore_index=IGNORE, class_weights=weights)(logits, target)
    reference = F.cross_entropy(
        logits,
        target,
        weight=None if weights is None else weights.double(),
        ignore_index=IGNORE,
    )
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)


def test_ce_class_weights_hand_computed():
    # Same two pixels as above, weights [w0, w1, w2]: (w2 * first + w0 * second) / (w2 + w0).
    logits = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 0.0]]]], dtype=torch.float64)
    target = torch.tensor([[[2, 0]]])
    first = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3
    second = math.log(3)
    loss = build_loss("ce", 3, class_weights=torch.tensor([1.0, 7.0, 3.0]))(logits, target)
    assert loss.item() == pytest.approx((3 * first + 1 * second) / 4, rel=1e-6)


# --- Dice ----------------------------------------------------------------------------------------


def test_binary_dice_hand_computed():
    # Logits 0 -> p = 0.5 everywhere; target [1, 1, 0, 0]:
    # sum(p*t) = 1, sum(p) = 2, sum(t) = 2 -> dice = 2 / 4, loss = 0.5.
    logits = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    target = torch.tensor([[[1, 1], [0, 0]]])
    assert build_loss("dice", 1)(logits, target).item() == pytest.approx(0.5, abs=1e-6)


def test_multiclass_dice_hand_computed_skips_absent_class():
    # Three classes, logits 0 -> p = 1/3 each; target [0, 0, 0, 1], class 2 absent.
    # class 0: sum(p*t) = 1,   sum(p) = 4/3, sum(t) = 3 -> dice = 2 / (13/3) = 6/13
    # class 1: sum(p*t) = 1/3, sum(p) = 4/3, sum(t) = 1 -> dice = (2/3) / (7/3) = 2/7
    # class 2: absent from the target -> left out of the mean.
    logits = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    target = torch.tensor([[[0, 0], [0, 1]]])
    loss_0, loss_1 = 1 - 6 / 13, 1 - 2 / 7
    assert build_loss("dice", 3)(logits, target).item() == pytest.approx(
        (loss_0 + loss_1) / 2, abs=1e-6
    )
    # Weights [1, 3, 100]: the absent class's weight does not matter.
    weighted = build_loss("dice", 3, class_weights=torch.tensor([1.0, 3.0, 100.0]))
    assert weighted(logits, target).item() == pytest.approx((1 * loss_0 + 3 * loss_1) / 4, abs=1e-6)


def test_dice_aggregates_over_the_whole_batch():
    # Image 1 all foreground, image 2 all background, p = 0.5 everywhere (2 pixels each):
    # batch-wide sum(p*t) = 1, sum(p) = 2, sum(t) = 2 -> loss 0.5 (a per-image mean would differ).
    logits = torch.zeros(2, 1, 1, 2, dtype=torch.float64)
    target = torch.tensor([[[1, 1]], [[0, 0]]])
    assert build_loss("dice", 1)(logits, target).item() == pytest.approx(0.5, abs=1e-6)


def test_binary_dice_perfect_and_completely_wrong():
    target = torch.tensor([[[0, 1, 1], [1, 0, 0]]])
    right = target[:, None].double() * 40 - 20  # +20 on foreground, -20 on background
    loss = build_loss("dice", 1)
    assert loss(right, target).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(-right, target).item() == pytest.approx(1.0, abs=1e-6)


def test_multiclass_dice_perfect_and_completely_wrong():
    target = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    right = F.one_hot(target, 3).permute(0, 3, 1, 2).double() * 40 - 20
    wrong = right.roll(1, dims=1)  # every pixel confidently predicts the next class
    loss = build_loss("dice", 3)
    assert loss(right, target).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(wrong, target).item() == pytest.approx(1.0, abs=1e-6)


def test_dice_ignores_ignored_pixels():
    # The ignored pixel is confidently wrong; the rest are right, so the loss stays ~0.
    logits = torch.tensor([[[[20.0, -20.0], [-20.0, -20.0]]]])
    target = torch.tensor([[[1, 0], [0, IGNORE]]])
    logits[0, 0, 1, 1] = 20.0
    assert build_loss("dice", 1, ignore_index=IGNORE)(logits, target).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_dice_smooth_parameter():
    # smooth = 1 on the binary example above: (2 * 1 + 1) / (4 + 1) = 3/5 -> loss 2/5.
    logits = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    target = torch.tensor([[[1, 1], [0, 0]]])
    assert DiceLoss(1, smooth=1.0)(logits, target).item() == pytest.approx(0.4, abs=1e-6)


# --- Combined losses -----------------------------------------------------------------------------


def test_bce_plus_dice_is_the_sum():
    # Logits 0: BCE = log 2 on every pixel; Dice loss 0.5 (see test_binary_dice_hand_computed).
    logits = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    target = torch.tensor([[[1, 1], [0, 0]]])
    loss = build_loss("bce+dice", 1)
    assert isinstance(loss, CombinedLoss)
    assert loss(logits, target).item() == pytest.approx(math.log(2) + 0.5, abs=1e-6)


def test_ce_plus_dice_is_the_sum():
    # Two classes, logits 0: CE = log 2; Dice per class on target [0, 0, 0, 1], p = 1/2:
    # class 0: 2 * 1.5 / (2 + 3) = 3/5; class 1: 2 * 0.5 / (2 + 1) = 1/3.
    logits = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    target = torch.tensor([[[0, 0], [0, 1]]])
    dice = ((1 - 3 / 5) + (1 - 1 / 3)) / 2
    loss = build_loss("ce+dice", 2)(logits, target)
    assert loss.item() == pytest.approx(math.log(2) + dice, abs=1e-6)


# --- Nothing valid, dtypes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "num_classes"),
    [("bce", 1), ("dice", 1), ("bce+dice", 1), ("ce", 3), ("dice", 3), ("ce+dice", 3)],
)
def test_all_ignored_gives_zero_with_finite_grad(name, num_classes):
    logits = torch.randn(2, num_classes, 3, 3, requires_grad=True)
    target = torch.full((2, 3, 3), IGNORE)
    weights = torch.ones(2 if num_classes == 1 else num_classes)
    loss = build_loss(name, num_classes, ignore_index=IGNORE, class_weights=weights)(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_half_precision_logits_give_float32_loss():
    logits = torch.zeros(1, 2, 2, 2, dtype=torch.float16)
    target = torch.tensor([[[0, 0], [0, 1]]])
    loss = build_loss("ce+dice", 2)(logits, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(math.log(2) + ((1 - 3 / 5) + (1 - 1 / 3)) / 2, abs=1e-5)


def test_uint8_target_is_accepted():
    logits = torch.zeros(1, 3, 1, 2)
    target = torch.tensor([[[2, IGNORE]]], dtype=torch.uint8)
    loss = build_loss("ce", 3, ignore_index=IGNORE)(logits, target)
    assert loss.item() == pytest.approx(math.log(3), abs=1e-6)


# --- Errors --------------------------------------------------------------------------------------


def test_loss_names():
    assert LOSS_NAMES == ("bce", "dice", "bce+dice", "ce", "ce+dice")
    for name in LOSS_NAMES:
        num_classes = 1 if name.startswith("bce") else 3
        build_loss(name, num_classes)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown loss 'focal'") as excinfo:
        build_loss("focal", 2)
    for name in LOSS_NAMES:
        assert name in str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "num_classes", "suggestion"),
    [
        ("bce", 3, "'ce'"),
        ("bce+dice", 2, "'ce\\+dice'"),
        ("ce", 1, "'bce'"),
        ("ce+dice", 1, "'bce\\+dice'"),
    ],
)
def test_wrong_mode_suggests_the_right_loss(name, num_classes, suggestion):
    with pytest.raises(ValueError, match=f"use {suggestion}"):
        build_loss(name, num_classes)


@pytest.mark.parametrize("num_classes", [0, -1, 1.0, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build_loss("dice", num_classes)


@pytest.mark.parametrize(
    ("num_classes", "weights"),
    [(1, [1.0]), (1, [1.0, 2.0, 3.0]), (3, [1.0, 2.0]), (3, [[1.0, 2.0, 3.0]]), (2, [1.0, -1.0])],
)
def test_bad_class_weights(num_classes, weights):
    name = "bce" if num_classes == 1 else "ce"
    with pytest.raises(ValueError, match="class_weights"):
        build_loss(name, num_classes, class_weights=torch.tensor(weights))


def test_shape_mismatch_names_the_shapes():
    loss = build_loss("ce", 3)
    with pytest.raises(ValueError, match=r"target shape \(2, 4, 5\).*\(2, 3, 4, 4\)"):
        loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(2, 2, 4, 4\)"):
        loss(torch.zeros(2, 2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    # The classic binary mistake: a (N, 1, H, W) target.
    with pytest.raises(ValueError, match=r"target shape \(2, 1, 4, 4\)"):
        build_loss("bce", 1)(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))


def test_bad_target_values_are_named():
    with pytest.raises(ValueError, match=r"found \[3, 7\]"):
        build_loss("ce", 3)(torch.zeros(1, 3, 1, 3), torch.tensor([[[0, 7, 3]]]))
    # Without ignore_index, 255 is just a bad value.
    with pytest.raises(ValueError, match=r"0 or 1.*found \[255\]"):
        build_loss("bce", 1)(torch.zeros(1, 1, 1, 2), torch.tensor([[[1, 255]]]))
    with pytest.raises(ValueError, match="integer class indices"):
        build_loss("ce", 3)(torch.zeros(1, 3, 1, 2), torch.tensor([[[0.0, 1.0]]]))

"""Tests of SegmentationDataset and the joint image + mask Augment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelseg.data.dataset import (
    SegmentationDataset,
    resize_image,
    resize_mask,
    to_uint8_tensor,
)
from pixelseg.data.io import read_image, read_mask
from pixelseg.data.layouts import Sample, find_samples
from pixelseg.data.transforms import Augment, BatchTransform, normalize
from pixelseg.errors import DataError

NO_AUG = {"hflip": False, "vflip": False, "rotate_degrees": 0.0, "scale": 0.0, "color": 0.0}


def _pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> Sample:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}.png")
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return Sample(stem, root / "images" / f"{stem}.png", root / "masks" / f"{stem}.png")


def _class_map(h: int, w: int) -> np.ndarray:
    """An asymmetric multi-class mask: classes 1, 2, 3 in different corners/blobs."""
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w), np.uint8)
    m[: h // 3, : w // 4] = 1
    m[h // 2 :, w // 2 : w - 3] = 2
    m[(yy - h * 0.3) ** 2 + (xx - w * 0.7) ** 2 < (h / 8) ** 2] = 3
    return m


def _encoded(mask: torch.Tensor, n: int = 3) -> torch.Tensor:
    """A 3-channel image whose first channel is the mask's class / n (so alignment is checkable)."""
    h, w = mask.shape
    first = mask.float() / n
    ramp = torch.linspace(0, 1, w).expand(h, w)
    return torch.stack([first, ramp, torch.full((h, w), 0.5)])


# ---- resize helpers ----------------------------------------------------------------------------


def test_resize_mask_nearest_keeps_values():
    mask = _class_map(37, 53) * 2  # values {0, 2, 4, 6}
    out = resize_mask(mask, (20, 31))
    assert out.shape == (20, 31) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 2, 4, 6}
    big = resize_mask(mask, (111, 97))
    assert big.shape == (111, 97) and set(np.unique(big)) == {0, 2, 4, 6}


def test_resize_image_bilinear_blends_and_orients():
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, 10:] = 200  # a vertical step edge
    out = resize_image(image, (6, 7))
    assert out.shape == (6, 7, 3) and out.dtype == np.uint8
    values = set(np.unique(out))
    assert 0 in values and 200 in values
    assert any(0 < v < 200 for v in values)  # interpolated, not nearest
    assert out[:, 0].max() == 0 and out[:, -1].min() == 200  # (height, width), not transposed


def test_resize_same_size_is_identity():
    image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_image(image, (5, 6)), image)
    mask = _class_map(5, 6)
    np.testing.assert_array_equal(resize_mask(mask, (5, 6)), mask)


def test_to_uint8_tensor_and_normalize():
    image = np.array([[[0, 51, 255]]], np.uint8)
    image.flags.writeable = False  # like a PIL array
    t = to_uint8_tensor(image)
    assert t.shape == (3, 1, 1) and t.dtype == torch.uint8
    assert t.flatten().tolist() == [0, 51, 255]
    x = torch.ones(3, 2, 2)
    torch.testing.assert_close(
        normalize(x, [1, 0, 0.5], [1, 2, 0.25]),
        torch.tensor([0.0, 0.5, 2.0]).view(3, 1, 1).expand(3, 2, 2),
    )


# ---- SegmentationDataset -----------------------------------------------------------------------


def test_dataset_items(tiny_folders):
    _, samples = find_samples(tiny_folders)
    ds = SegmentationDataset(samples, (32, 24))
    assert len(ds) == 12
    item = ds[5]
    assert item["index"] == 5
    assert item["image"].shape == (3, 32, 24) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (32, 24) and item["mask"].dtype == torch.uint8
    assert set(item["mask"].unique().tolist()) == {0, 1}
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (12, 3, 32, 24)


def test_dataset_image_matches_manual_pipeline(tiny_folders):
    _, samples = find_samples(tiny_folders)
    ds = SegmentationDataset(samples[:3], (20, 30))
    for i in range(3):
        expected = to_uint8_tensor(resize_image(read_image(samples[i].image), (20, 30)))
        assert torch.equal(ds[i]["image"], expected)
        mask = resize_mask(read_mask(samples[i].mask), (20, 30))
        np.testing.assert_array_equal(ds[i]["mask"].numpy(), mask)


def test_batch_transform_normalises_without_augment(tiny_folders):
    _, samples = find_samples(tiny_folders)
    ds = SegmentationDataset(samples[:4], (20, 30))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    images, masks = BatchTransform(mean, std)(batch, torch.device("cpu"))
    assert images.dtype == torch.float32 and masks.dtype == torch.int64
    for i in range(4):
        by_hand = (ds.images[i].float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(
            std
        ).view(3, 1, 1)
        torch.testing.assert_close(images[i], by_hand)
        assert torch.equal(masks[i], ds.masks[i].long())


def test_dataset_image_and_mask_aligned_after_resize(tmp_path):
    # a non-square image whose bright pixels are exactly the mask
    mask = _class_map(45, 70) > 0
    image = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    sample = _pair(tmp_path, "enc", image, (mask * 255).astype(np.uint8))
    ds = SegmentationDataset([sample], (30, 50))
    img, m = ds[0]["image"][0], ds[0]["mask"]
    assert m.shape == (30, 50)
    agree = ((img > 127) == (m == 1)).float().mean().item()
    assert agree > 0.95


def test_dataset_multiclass_mask_values_stay_in_original_set(tmp_path):
    mask = _class_map(41, 59) * 3  # values {0, 3, 6, 9}
    image = np.random.default_rng(1).integers(0, 256, (41, 59, 3), dtype=np.uint8)
    sample = _pair(tmp_path, "mc", image, mask)
    ds = SegmentationDataset([sample], (17, 23), num_classes=10)
    assert set(ds[0]["mask"].unique().tolist()) == {0, 3, 6, 9}


def test_dataset_keep_original(tmp_path):
    samples = [
        _pair(tmp_path, stem, np.zeros((h, w, 3), np.uint8), (_class_map(h, w) > 0) * np.uint8(255))
        for stem, (h, w) in [("a", (30, 40)), ("b", (22, 18))]
    ]
    ds = SegmentationDataset(samples, (16, 16), keep_original=True)
    assert [m.shape for m in ds.original_masks] == [(30, 40), (22, 18)]
    for sample, original in zip(samples, ds.original_masks, strict=True):
        np.testing.assert_array_equal(original, read_mask(sample.mask))
    assert ds[1]["mask"].shape == (16, 16)
    assert SegmentationDataset(samples, (16, 16)).original_masks == []


def test_dataset_caches_decoded_pairs(tiny_folders):
    _, samples = find_samples(tiny_folders)
    ds = SegmentationDataset(samples[:4], (24, 24))
    before = [ds[i] for i in range(4)]
    for s in samples[:4]:  # the files are gone; items come from memory
        s.image.unlink()
        s.mask.unlink()
    for i in range(4):
        torch.testing.assert_close(ds[i]["image"], before[i]["image"])
        assert torch.equal(ds[i]["mask"], before[i]["mask"])


def test_augmented_batches_leave_the_cache_alone(tiny_folders):
    _, samples = find_samples(tiny_folders)
    ds = SegmentationDataset(samples[:2], (24, 24))
    images, masks = ds.images.clone(), ds.masks.clone()
    transform = BatchTransform((0.5,) * 3, (0.25,) * 3, Augment(color=0.5))
    torch.manual_seed(0)
    for _ in range(5):
        transform({"image": ds.images, "mask": ds.masks}, torch.device("cpu"))
    assert torch.equal(ds.images, images) and torch.equal(ds.masks, masks)


def test_augmented_batches_deterministic_under_seed(tiny_folders):
    _, samples = find_samples(tiny_folders)
    ds = SegmentationDataset(samples[:3], (24, 32))
    transform = BatchTransform((0.5,) * 3, (0.25,) * 3, Augment())
    batch = {"image": ds.images, "mask": ds.masks}

    def draw(seed):
        torch.manual_seed(seed)
        return transform(batch, torch.device("cpu"))

    a, b, c = draw(11), draw(11), draw(12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert set(a[1].unique().tolist()) <= {0, 1}


def test_dataset_channel_stats(tmp_path):
    samples = [
        _pair(
            tmp_path,
            "a",
            np.tile(np.array([51, 102, 153], np.uint8), (8, 8, 1)),
            np.zeros((8, 8), np.uint8),
        ),
        _pair(
            tmp_path,
            "b",
            np.tile(np.array([153, 102, 255], np.uint8), (8, 8, 1)),
            np.zeros((8, 8), np.uint8),
        ),
    ]
    mean, std = SegmentationDataset(samples, (8, 8)).channel_stats()
    np.testing.assert_allclose(mean, [0.4, 0.4, 0.8], atol=1e-5)
    # channel 1 is constant: std is clamped to 1e-3 so normalising never divides by zero
    expected_std = np.array([0.2, 0.0, 0.2]) * np.sqrt(128 / 127)
    np.testing.assert_allclose(std, np.maximum(expected_std, 1e-3), atol=1e-5)


def test_dataset_error_lists_all_bad_files(tmp_path):
    good = _pair(tmp_path, "good", np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8))
    wrong = _pair(
        tmp_path, "wrongsize", np.zeros((10, 10, 3), np.uint8), np.zeros((12, 10), np.uint8)
    )
    corrupt = _pair(
        tmp_path, "corrupt", np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8)
    )
    corrupt.image.write_bytes(b"garbage")
    lonely = Sample("lonely", good.image, None)
    missing = Sample("missing", tmp_path / "images" / "missing.png", good.mask)
    with pytest.raises(DataError) as info:
        SegmentationDataset([good, wrong, corrupt, lonely, missing], (8, 8))
    problems = info.value.problems
    assert len(problems) == 4
    assert any("wrongsize.png" in p for p in problems)
    assert any("corrupt.png" in p for p in problems)
    assert any("no mask" in p for p in problems)
    assert any("missing.png" in p for p in problems)


def test_dataset_needs_samples():
    with pytest.raises(ValueError):
        SegmentationDataset([], (8, 8))


def test_dataset_works_with_dataloader(tiny_folders):
    _, samples = find_samples(tiny_folders)
    ds = SegmentationDataset(samples[:5], (16, 16))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["mask"].shape == (4, 16, 16)
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_real_ph2_dataset_small(real_data):
    _, samples = find_samples(real_data / "ph2")
    chosen = [s for s in samples if s.stem in ("IMD002", "IMD003")]
    ds = SegmentationDataset(chosen, (48, 64), keep_original=True)
    for i, sample in enumerate(chosen):
        h, w = read_image(sample.image).shape[:2]
        assert ds.original_masks[i].shape == (h, w)
        mask = ds[i]["mask"]
        assert mask.shape == (48, 64) and set(mask.unique().tolist()) == {0, 1}


# ---- Augment -----------------------------------------------------------------------------------


def test_augment_disabled_is_identity():
    mask = torch.from_numpy(_class_map(20, 30)).long()
    image = _encoded(mask)
    out_image, out_mask = Augment(**NO_AUG)(image, mask)
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


def test_augment_flips_keep_image_and_mask_aligned():
    mask = torch.from_numpy(_class_map(20, 30)).long()
    image = _encoded(mask)
    aug = Augment(**{**NO_AUG, "hflip": True, "vflip": True})
    flips = [(), (-1,), (-2,), (-1, -2)]
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_mask = aug(image, mask)
        assert torch.equal((out_image[0] * 3).round().long(), out_mask)  # aligned
        # the result is exactly one of the four flips, applied to image and mask alike
        match = [f for f in flips if torch.equal(out_mask, mask.flip(f) if f else mask)]
        assert len(match) == 1
        dims = match[0]
        assert torch.equal(out_image, image.flip(dims) if dims else image)
        seen.add(dims)
    assert len(seen) >= 3  # flips really happen, both ways


def test_augment_geometry_keeps_alignment_and_values():
    mask = torch.from_numpy(_class_map(40, 56)).long()
    image = _encoded(mask)
    aug = Augment(hflip=True, vflip=True, rotate_degrees=25, scale=0.2, color=0.0)
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, out_mask = aug(image, mask)
        assert out_mask.dtype == torch.int64 and out_mask.shape == mask.shape
        assert out_image.shape == image.shape
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, 3}
        agree = ((out_image[0] * 3).round().long() == out_mask).float().mean().item()
        assert agree > 0.9, (seed, agree)
        changed += not torch.equal(out_mask, mask)
    assert changed >= 8


def test_augment_flips_inside_the_affine_grid_are_exact_flips():
    """With rotation and zoom on, the flips are signs in the sampling grid; at a
    vanishing angle and zoom that grid must flip image and mask exactly as ``flip`` does."""
    mask = torch.from_numpy(_class_map(20, 30)).long()
    image = _encoded(mask) + torch.rand(3, 20, 30) * 0.1  # not constant within a class
    aug = Augment(hflip=True, vflip=True, rotate_degrees=1e-9, scale=1e-12, color=0.0)
    flips = [(), (-1,), (-2,), (-1, -2)]
    seen = set()
    for seed in range(16):
        torch.manual_seed(seed)
        out_image, out_mask = aug(image, mask)
        torch.manual_seed(seed)  # the same draws without the affine part: explicit flips
        expected = Augment(**{**NO_AUG, "hflip": True, "vflip": True})(image, mask)
        assert torch.equal(out_mask, expected[1])
        torch.testing.assert_close(out_image, expected[0], rtol=0, atol=1e-5)
        seen.add(next(f for f in flips if torch.equal(out_mask, mask.flip(f) if f else mask)))
    assert seen == set(flips)


def test_augment_colour_jitter_is_brightness_then_contrast_then_saturation():
    """The one-pass jitter equals the three steps done one after the other."""
    images = torch.rand(4, 3, 10, 12)
    aug = Augment(**{**NO_AUG, "color": 0.4})
    torch.manual_seed(5)
    got = aug(images, torch.zeros(4, 10, 12, dtype=torch.long))[0]
    torch.manual_seed(5)
    b, c, s = (aug._uniform(4, 0.4, 1.0).float().view(4, 1, 1, 1) for _ in range(3))
    x = images * b
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    grey = x.mean(1, keepdim=True)
    expected = ((x - grey) * s + grey).clamp(0, 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (got - images).abs().max() > 0.05  # it did change the colours


def test_augment_preserves_sparse_mask_values_including_ignore():
    mask = torch.from_numpy(_class_map(32, 32)).long()
    mask[mask == 2] = 255  # an ignore label
    mask[mask == 3] = 7
    image = torch.rand(3, 32, 32)
    aug = Augment(rotate_degrees=40, scale=0.3, color=0.3)
    for seed in range(8):
        torch.manual_seed(seed)
        _, out_mask = aug(image, mask)
        assert set(out_mask.unique().tolist()) <= {0, 1, 7, 255}


def test_augment_rotation_respects_aspect_ratio():
    # a centred disc on a wide image must stay a disc under rotation (no shearing)
    h, w = 48, 112
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disc = (((yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2) < 12**2).long()
    image = disc[None].float().repeat(3, 1, 1)
    aug = Augment(**{**NO_AUG, "rotate_degrees": 30.0})
    for seed in range(10):
        torch.manual_seed(seed)
        _, out = aug(image, disc)
        iou = ((out & disc).sum() / (out | disc).sum()).item()
        assert iou > 0.9, (seed, iou)


def test_augment_color_touches_image_only():
    mask = torch.from_numpy(_class_map(20, 30)).long()
    image = torch.rand(3, 20, 30)
    torch.manual_seed(0)
    out_image, out_mask = Augment(**{**NO_AUG, "color": 0.4})(image, mask)
    assert torch.equal(out_mask, mask)
    assert not torch.allclose(out_image, image)
    assert out_image.min() >= 0 and out_image.max() <= 1


def test_augment_deterministic_under_manual_seed():
    mask = torch.from_numpy(_class_map(24, 36)).long()
    image = torch.rand(3, 24, 36)
    aug = Augment()
    torch.manual_seed(123)
    a = aug(image, mask)
    torch.manual_seed(123)
    b = aug(image, mask)
    torch.manual_seed(124)
    c = aug(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_augment_does_not_modify_inputs():
    mask = torch.from_numpy(_class_map(24, 36)).long()
    image = torch.rand(3, 24, 36)
    image_copy, mask_copy = image.clone(), mask.clone()
    torch.manual_seed(0)
    Augment(color=0.5)(image, mask)
    assert torch.equal(image, image_copy) and torch.equal(mask, mask_copy)


def test_augment_batch_transforms_each_sample_independently_and_aligned():
    mask = torch.from_numpy(_class_map(40, 56)).long()
    masks = mask.expand(6, -1, -1).clone()
    images = torch.stack([_encoded(m) for m in masks])
    torch.manual_seed(3)
    out_images, out_masks = Augment(rotate_degrees=30, scale=0.2, color=0.0)(images, masks)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    for i in range(6):
        agree = ((out_images[i, 0] * 3).round().long() == out_masks[i]).float().mean().item()
        assert agree > 0.9, (i, agree)
    # one batch, different random transforms per sample
    assert len({out_masks[i].sum().item() for i in range(6)} | {0}) > 2
    assert not all(torch.equal(out_masks[0], out_masks[i]) for i in range(1, 6))


def test_normalize_batched_and_single():
    x = torch.rand(2, 3, 4, 5)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.5, 2.0)
    out = normalize(x, mean, std)
    torch.testing.assert_close(out[1], normalize(x[1], mean, std))
    torch.testing.assert_close(out[0, 2], (x[0, 2] - 0.3) / 2.0)


def _window_of(out: torch.Tensor, full: torch.Tensor) -> list[tuple[int, int]]:
    """Where ``out`` (h, w) lies in ``full`` (H, W) as an exact copy."""
    h, w = out.shape[-2:]
    return [(i, j) for i in range(full.shape[-2] - h + 1) for j in range(full.shape[-1] - w + 1)
            if torch.equal(out, full[..., i : i + h, j : j + w])]  # fmt: skip


def test_a_crop_without_other_augmentation_copies_a_random_window_exactly():
    mask = torch.arange(11 * 10).view(11, 10)
    image = (mask.float() / 110)[None].repeat(3, 1, 1)
    aug = Augment.crop_only((4, 7))
    places = set()
    for seed in range(60):
        torch.manual_seed(seed)
        out_image, out_mask = aug(image, mask)
        assert out_image.shape == (3, 4, 7) and out_mask.shape == (4, 7)
        where = _window_of(out_mask, mask)
        assert len(where) == 1  # a window of the mask, not a resampled one
        i, j = where[0]
        torch.testing.assert_close(out_image, image[:, i : i + 4, j : j + 7], rtol=0, atol=1e-6)
        places.add(where[0])
    # every row and column offset is reached, the borders included
    assert {i for i, _ in places} == set(range(8)) and {j for _, j in places} == set(range(4))


def test_a_crop_with_augmentation_keeps_image_and_mask_aligned():
    mask = torch.from_numpy(_class_map(40, 56)).long()
    image = _encoded(mask)
    aug = Augment(hflip=True, vflip=True, rotate_degrees=25, scale=0.2, color=0.0, crop=(16, 24))
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, out_mask = aug(image[None].repeat(2, 1, 1, 1), mask[None].repeat(2, 1, 1))
        assert out_image.shape == (2, 3, 16, 24) and out_mask.shape == (2, 16, 24)
        agree = ((out_image[:, 0] * 3).round().long() == out_mask).float().mean().item()
        assert agree > 0.9, (seed, agree)
    # a crop the size of the image is the whole image: the usual draws, nothing more
    torch.manual_seed(3)
    same = Augment(crop=(40, 56))(image, mask)
    torch.manual_seed(3)
    whole = Augment()(image, mask)
    assert torch.equal(same[1], whole[1]) and torch.equal(same[0], whole[0])


def test_rotated_and_zoomed_windows_stay_inside_the_image(monkeypatch):
    """Where the window fits, its sampling grid never reaches past the image's border (so no
    reflected pixels enter a patch)."""
    import torch.nn.functional as F

    grids = []
    real = F.affine_grid

    def recording(theta, size, align_corners=False):
        grid = real(theta, size, align_corners=align_corners)
        grids.append(grid)
        return grid

    monkeypatch.setattr(F, "affine_grid", recording)
    aug = Augment(hflip=True, vflip=True, rotate_degrees=20, scale=0.15, color=0.0, crop=(24, 32))
    torch.manual_seed(0)
    aug(torch.rand(64, 3, 96, 128), torch.zeros(64, 96, 128, dtype=torch.long))
    (grid,) = grids
    # normalised pixel centres lie within [-1 + 1/side, 1 - 1/side]
    assert grid.abs().amax().item() <= 1.0
    assert grid[..., 0].amin() < -0.5 and grid[..., 0].amax() > 0.5  # windows do move

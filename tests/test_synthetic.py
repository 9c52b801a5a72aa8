"""Tests of the synthetic dermoscopy generator that backs the offline demo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixelseg.data.synthetic import make_sample, write_synthetic_dataset

# Small frames keep the statistical tests fast; the generator scales every length with size.
SMALL = (96, 128)


def _read(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    # Shared by the statistical tests, so 50 samples are drawn only once.
    return [make_sample(seed, SMALL) for seed in range(50)]


def test_same_seed_gives_identical_arrays():
    image_a, mask_a = make_sample(7)
    image_b, mask_b = make_sample(7)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)


def test_different_seeds_differ():
    image_a, mask_a = make_sample(1, SMALL)
    image_b, mask_b = make_sample(2, SMALL)
    assert not np.array_equal(image_a, image_b)
    assert not np.array_equal(mask_a, mask_b)


def test_does_not_touch_global_rng():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    make_sample(3, SMALL)
    assert np.random.random() == expected


@pytest.mark.parametrize("size", [(192, 256), (64, 64), (50, 90), (16, 16)])
def test_shapes_and_dtypes(size):
    image, mask = make_sample(0, size)
    assert image.shape == (*size, 3)
    assert image.dtype == np.uint8
    assert mask.shape == size
    assert mask.dtype == np.uint8


def test_default_size_is_height_by_width():
    image, mask = make_sample(0)
    assert image.shape == (192, 256, 3)
    assert mask.shape == (192, 256)


def test_mask_is_binary_with_foreground_and_background(samples):
    for image, mask in samples:
        assert set(np.unique(mask).tolist()) == {0, 1}
        assert image.std() > 5  # not a flat frame


def test_foreground_fraction_spans_a_reasonable_range(samples):
    fractions = np.array([mask.mean() for _, mask in samples])
    assert fractions.min() > 0.005
    assert fractions.max() < 0.8
    assert fractions.min() < 0.15
    assert fractions.max() > 0.3


def test_lesion_is_darker_than_skin_for_most_seeds(samples):
    darker = 0
    for image, mask in samples:
        grey = image.astype(np.float64).mean(axis=2)
        if grey[mask == 1].mean() < grey[mask == 0].mean():
            darker += 1
    assert darker >= 0.9 * len(samples)


@pytest.mark.parametrize("bad", [(0, 10), (10,), "big", (10.5, 20), (8, 64), None])
def test_bad_size_raises(bad):
    with pytest.raises(ValueError):
        make_sample(0, bad)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_bad_seed_raises(bad):
    with pytest.raises(ValueError):
        make_sample(bad, SMALL)


def test_write_dataset_writes_matching_pairs(tmp_path):
    root = write_synthetic_dataset(tmp_path / "synth", n=4, size=(48, 64), seed=3)
    assert root == tmp_path / "synth"
    images = sorted(p.name for p in (root / "images").iterdir())
    masks = sorted(p.name for p in (root / "masks").iterdir())
    assert images == masks == [f"synth_{i:04d}.png" for i in range(4)]
    for name in images:
        with Image.open(root / "images" / name) as img:
            assert img.mode == "RGB"
            assert img.size == (64, 48)
        with Image.open(root / "masks" / name) as msk:
            assert msk.mode == "L"
            assert msk.size == (64, 48)
            values = set(np.unique(np.asarray(msk)).tolist())
        assert values == {0, 255}


def test_write_dataset_matches_make_sample_and_differs_by_seed(tmp_path):
    root_a = write_synthetic_dataset(tmp_path / "a", n=2, size=(48, 64), seed=0)
    root_b = write_synthetic_dataset(str(tmp_path / "b"), n=2, size=(48, 64), seed=1)
    image, mask = make_sample(1, (48, 64))  # sample 1 of the seed-0 set
    np.testing.assert_array_equal(_read(root_a / "images" / "synth_0001.png"), image)
    np.testing.assert_array_equal(_read(root_a / "masks" / "synth_0001.png"), mask * 255)
    a = _read(root_a / "images" / "synth_0000.png")
    b = _read(root_b / "images" / "synth_0000.png")
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_write_dataset_bad_n_raises(tmp_path, bad):
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path, n=bad)
    assert not (tmp_path / "images").exists()

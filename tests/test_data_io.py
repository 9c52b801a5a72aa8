"""Tests of pixelseg.data.io: reading images and masks in the encodings people actually have."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelseg.data.io import is_image_file, read_image, read_mask
from pixelseg.errors import DataError, PixelsegError

PH2_IMAGES = Path("ph2") / "PH2Dataset" / "PH2 Dataset images"


def _save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    img.save(path)
    return path


def _rgb(h=6, w=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _square_mask(h=8, w=10) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[2:5, 3:8] = True
    return m


# ---- read_image ------------------------------------------------------------------------------


def test_read_image_rgb_png_roundtrip(tmp_path):
    rgb = _rgb()
    out = read_image(_save(rgb, tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out, rgb)


def test_read_image_accepts_str_path(tmp_path):
    rgb = _rgb()
    path = _save(rgb, tmp_path / "a.bmp")
    np.testing.assert_array_equal(read_image(str(path)), rgb)


def test_read_image_grey_becomes_three_equal_channels(tmp_path):
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    out = read_image(_save(grey, tmp_path / "g.png"))
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_read_image_rgba_drops_alpha_with_warning_naming_file(tmp_path):
    rgb = _rgb()
    alpha = np.full(rgb.shape[:2] + (1,), 7, dtype=np.uint8)  # nearly transparent
    path = _save(np.concatenate([rgb, alpha], axis=2), tmp_path / "with_alpha.png")
    with pytest.warns(UserWarning, match="with_alpha.png.*alpha"):
        out = read_image(path)
    assert out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out, rgb)  # colours kept as they are, not premultiplied


def test_read_image_rgb_does_not_warn(tmp_path):
    path = _save(_rgb(), tmp_path / "plain.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(path)


def test_read_image_16bit_grey_scaled_to_8bit(tmp_path):
    values = np.array([[0, 32768], [65535, 16384]], dtype=np.uint16)
    path = _save(values, tmp_path / "deep.png")
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 128], [255, 64]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_read_image_16bit_scaling_does_not_depend_on_image_max(tmp_path):
    # Two 16-bit files of one data set: the same stored value must give the same 8-bit value,
    # scaled from the 16-bit range (0..65535) as documented, whatever the file's maximum is.
    dark = _save(np.array([[0, 200, 255]], dtype=np.uint16), tmp_path / "dark.png")
    brighter = _save(np.array([[0, 200, 256]], dtype=np.uint16), tmp_path / "brighter.png")
    a, b = read_image(dark)[0, :, 0], read_image(brighter)[0, :, 0]
    assert a[1] == b[1], (a, b)
    assert a[1] == round(200 / 65535 * 255)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_read_image_formats(tmp_path, ext):
    rgb = _rgb(seed=3)
    np.testing.assert_array_equal(read_image(_save(rgb, tmp_path / f"x{ext}")), rgb)


# ---- errors name the file --------------------------------------------------------------------


def test_missing_file_is_data_error_naming_file(tmp_path):
    path = tmp_path / "nowhere.png"
    with pytest.raises(DataError, match="nowhere.png.*not found"):
        read_image(path)
    with pytest.raises(DataError, match="nowhere.png"):
        read_mask(path)


def test_unreadable_file_is_data_error_naming_file(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"this is not a PNG at all" * 10)
    with pytest.raises(DataError, match="garbage.png.*cannot read"):
        read_image(path)
    with pytest.raises(DataError, match="garbage.png"):
        read_mask(path)


def test_truncated_png_is_data_error_naming_file(tmp_path):
    full = _save(_rgb(64, 64, seed=1), tmp_path / "full.png").read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="truncated.png"):
        read_image(path)


@pytest.mark.parametrize("ext", [".bmp", ".jpg", ".tif"])
def test_truncated_other_formats_are_data_errors(tmp_path, ext):
    full = _save(_rgb(64, 64, seed=2), tmp_path / f"full{ext}").read_bytes()
    path = tmp_path / f"cut{ext}"
    path.write_bytes(full[: int(len(full) * 0.6)])
    with pytest.raises(DataError, match=f"cut\\{ext}"):
        read_image(path)


def test_data_error_is_value_error_and_pixelseg_error(tmp_path):
    with pytest.raises(ValueError):
        read_image(tmp_path / "missing.png")
    assert issubclass(DataError, PixelsegError)


def test_data_error_lists_problems():
    err = DataError("bad set:", ["a.png: broken", "b.png: too small"])
    assert err.problems == ["a.png: broken", "b.png: too small"]
    assert "a.png: broken" in str(err) and "b.png: too small" in str(err)


# ---- read_mask, binary -------------------------------------------------------------------------


def test_read_mask_1bit(tmp_path):
    m = _square_mask()
    path = _save(m, tmp_path / "m.png")
    with Image.open(path) as im:
        assert im.mode == "1"
    out = read_mask(path)
    assert out.dtype == np.uint8 and out.shape == m.shape
    np.testing.assert_array_equal(out, m.astype(np.uint8))


def test_read_mask_1bit_bmp(tmp_path):
    m = _square_mask()
    path = _save(m, tmp_path / "m_lesion.bmp")
    with Image.open(path) as im:
        assert im.mode == "1"
    np.testing.assert_array_equal(read_mask(path), m.astype(np.uint8))


def test_read_mask_zero_one_grey(tmp_path):
    m = _square_mask().astype(np.uint8)
    np.testing.assert_array_equal(read_mask(_save(m, tmp_path / "m.png")), m)


def test_read_mask_zero_255_grey(tmp_path):
    m = _square_mask()
    out = read_mask(_save((m * 255).astype(np.uint8), tmp_path / "m.png"))
    assert set(np.unique(out)) == {0, 1}
    np.testing.assert_array_equal(out, m.astype(np.uint8))


def test_read_mask_rgb_white_on_black(tmp_path):
    m = _square_mask()
    rgb = np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=2)
    out = read_mask(_save(rgb, tmp_path / "m.bmp"))
    assert out.shape == m.shape
    np.testing.assert_array_equal(out, m.astype(np.uint8))


def test_read_mask_noisy_grey_thresholds_at_half(tmp_path):
    # e.g. a mask that went through JPEG: values near 0 and near 255
    m = _square_mask()
    noisy = np.where(m, 240, 12).astype(np.uint8)
    noisy[0, 0], noisy[3, 4] = 100, 200
    out = read_mask(_save(noisy, tmp_path / "m.png"))
    expected = m.astype(np.uint8)
    expected[0, 0], expected[3, 4] = 0, 1
    np.testing.assert_array_equal(out, expected)


def test_read_mask_all_background_and_all_foreground(tmp_path):
    zeros = np.zeros((4, 4), np.uint8)
    full = np.full((4, 4), 255, np.uint8)
    assert read_mask(_save(zeros, tmp_path / "z.png")).max() == 0
    assert read_mask(_save(full, tmp_path / "f.png")).min() == 1


# ---- read_mask, multi-class ------------------------------------------------------------------


def test_read_mask_multiclass_grey_indices_kept(tmp_path):
    m = np.array([[0, 1, 2], [3, 11, 0]], dtype=np.uint8)
    out = read_mask(_save(m, tmp_path / "m.png"), num_classes=12)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, m)


def test_read_mask_multiclass_palette_gives_indices_not_colours(tmp_path):
    m = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    img = Image.new("P", (m.shape[1], m.shape[0]))
    img.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9))
    img.putdata(m.flatten().tolist())
    path = tmp_path / "palette.png"
    img.save(path)
    with Image.open(path) as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(read_mask(path, num_classes=3), m)


def test_read_mask_multiclass_rejects_rgb_naming_file(tmp_path):
    path = _save(_rgb(), tmp_path / "colour_mask.png")
    with pytest.raises(DataError, match="colour_mask.png"):
        read_mask(path, num_classes=4)


# ---- helpers ---------------------------------------------------------------------------------


def test_is_image_file(tmp_path):
    (tmp_path / "a.PNG").write_bytes(b"x")
    (tmp_path / "b.jpeg").write_bytes(b"x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    assert is_image_file(tmp_path / "a.PNG")
    assert is_image_file(tmp_path / "b.jpeg")
    assert not is_image_file(tmp_path / ".hidden.png")
    assert not is_image_file(tmp_path / "notes.txt")
    assert not is_image_file(tmp_path / "folder.png")
    assert not is_image_file(tmp_path / "missing.png")


# ---- real data -------------------------------------------------------------------------------


def test_real_ph2_imd002_rgb_mask_reads_binary_with_foreground(real_data):
    case = real_data / PH2_IMAGES / "IMD002"
    mask_path = case / "IMD002_lesion" / "IMD002_lesion.bmp"
    with Image.open(mask_path) as im:
        assert im.mode == "RGB"  # the documented quirk
    mask = read_mask(mask_path)
    image = read_image(case / "IMD002_Dermoscopic_Image" / "IMD002.bmp")
    assert mask.dtype == np.uint8 and mask.ndim == 2
    assert mask.shape == image.shape[:2]
    assert set(np.unique(mask)) == {0, 1}
    assert 0.01 < mask.mean() < 0.99


def test_real_ph2_1bit_mask_reads_binary(real_data):
    mask_path = real_data / PH2_IMAGES / "IMD003" / "IMD003_lesion" / "IMD003_lesion.bmp"
    with Image.open(mask_path) as im:
        assert im.mode == "1"
        expected = (np.asarray(im.convert("L")) > 0).astype(np.uint8)
    mask = read_mask(mask_path)
    assert set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(mask, expected)


def test_real_membrane_grey_image_becomes_rgb(real_data):
    path = real_data / "membrane" / "train" / "image" / "0.png"
    image = read_image(path)
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    mask = read_mask(real_data / "membrane" / "train" / "label" / "0.png")
    assert mask.shape == (512, 512) and set(np.unique(mask)) == {0, 1}

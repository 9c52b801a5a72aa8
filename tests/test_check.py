"""Tests of pixelseg.data.check: every problem in a data set is reported, each naming its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_pair
from pixelseg.data.check import check_dataset, check_samples, inspect_sample
from pixelseg.data.layouts import Sample, find_samples
from pixelseg.errors import DataError


def _broken_folder(root: Path) -> Path:
    """3 good pairs + a corrupt image, a truncated PNG, a wrong-size mask and a lonely image."""
    images, masks = root / "images", root / "masks"
    for i in range(3):
        write_pair(images, masks, f"good{i}", seed=i)
    # corrupt: not an image at all, with a valid mask
    write_pair(images, masks, "corrupt")
    (images / "corrupt.png").write_bytes(b"\x89PNG but then nothing sensible" * 4)
    # truncated: a real PNG cut in half
    write_pair(images, masks, "truncated", size=(64, 64))
    noisy = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(images / "truncated.png")
    data = (images / "truncated.png").read_bytes()
    (images / "truncated.png").write_bytes(data[: len(data) // 2])
    # wrong size: the mask is smaller than its image
    write_pair(images, masks, "wrongsize")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(masks / "wrongsize.png")
    # an image without a mask
    write_pair(images, root / "elsewhere", "nomask")
    return root


def test_broken_folder_reports_all_four_files(tmp_path):
    root = _broken_folder(tmp_path / "broken")
    report = check_dataset(root)
    assert report.problems
    assert report.format == "folders"
    assert len(report.samples) == 7
    assert len(report.problems) == 4, report.problems
    for name in ("corrupt.png", "truncated.png", "wrongsize.png", "nomask.png"):
        hits = [p for p in report.problems if name in p]
        assert len(hits) == 1, (name, report.problems)
    assert any(
        "truncated.png" in p and "truncated" in p.split("truncated.png", 1)[1]
        for p in report.problems
    )
    assert any("wrongsize.png" in p and "30x20" in p and "48x40" in p for p in report.problems)
    assert any("nomask.png" in p and "no mask" in p for p in report.problems)
    # the good pairs are still counted
    assert sorted(i.stem for i in report.infos) == ["good0", "good1", "good2"]


def test_broken_folder_raise_if_problems_lists_every_file(tmp_path):
    report = check_dataset(_broken_folder(tmp_path / "broken"))
    with pytest.raises(DataError) as info:
        report.raise_if_problems()
    assert len(info.value.problems) == 4
    message = str(info.value)
    assert "4 problem" in message
    for name in ("corrupt.png", "truncated.png", "wrongsize.png", "nomask.png"):
        assert name in message


def test_broken_folder_summary(tmp_path):
    summary = check_dataset(_broken_folder(tmp_path / "broken")).summary()
    assert summary["n_samples"] == 7
    assert summary["n_valid"] == 3
    assert len(summary["problems"]) == 4
    assert summary["height"] == {"min": 40, "median": 40, "max": 40}
    assert summary["width"] == {"min": 48, "median": 48, "max": 48}


def test_clean_dataset_ok_and_summary(tiny_folders):
    report = check_dataset(tiny_folders)
    assert report.problems == []
    report.raise_if_problems()  # does not raise
    s = report.summary()
    assert s["format"] == "folders" and s["root"] == str(tiny_folders)
    assert s["n_samples"] == s["n_valid"] == 12
    assert set(s["mask_values"]) == {"0", "1"}
    assert sum(s["mask_values"].values()) == 12 * 40 * 48
    fg = s["foreground_fraction"]
    assert 0 < fg["min"] <= fg["median"] <= fg["max"] < 1


def test_summary_foreground_and_sizes_are_exact(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for stem, (h, w), n_fg in [("a", (10, 10), 10), ("b", (20, 10), 100), ("c", (10, 30), 0)]:
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(images / f"{stem}.png")
        m = np.zeros((h, w), np.uint8)
        m.flat[:n_fg] = 255
        Image.fromarray(m).save(masks / f"{stem}.png")
    s = check_dataset(tmp_path).summary()
    assert s["height"] == {"min": 10, "median": 10, "max": 20}
    assert s["width"] == {"min": 10, "median": 10, "max": 30}
    assert s["foreground_fraction"] == {"min": 0.0, "median": 0.1, "max": 0.5}
    assert s["mask_values"] == {"0": 100 + 200 + 300 - 110, "1": 110}


def test_summary_of_all_bad_set_has_no_stats(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(b"nope")
    report = check_dataset(tmp_path)
    s = report.summary()
    assert s["n_valid"] == 0 and "height" not in s
    # the corrupt image and its missing mask are both reported
    assert len(report.problems) == 2
    assert all("x.png" in p for p in report.problems)


def test_multiclass_values_out_of_range_reported(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    good = np.array([[0, 1, 2, 2]] * 4, np.uint8)
    bad = np.array([[0, 1, 3, 7]] * 4, np.uint8)
    for stem, m in [("fine", good), ("outside", bad)]:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / f"{stem}.png")
        Image.fromarray(m).save(masks / f"{stem}.png")
    report = check_dataset(tmp_path, num_classes=3)
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert "outside.png" in problem and "3" in problem and "7" in problem and "0..2" in problem
    assert report.mask_values == {0: 8, 1: 8, 2: 8, 3: 4, 7: 4}


def test_binary_0_255_masks_checked_as_two_classes_are_reported(tmp_path):
    # A common mistake: 0/255 lesion masks with num_classes=2. Value 255 is outside 0..1 and
    # training then fails on the first batch ("target values must be in [0, 2)"), so the
    # check, whose job is to fail early and name the files, must report it.
    write_pair(tmp_path / "images", tmp_path / "masks", "lesion")
    report = check_dataset(tmp_path, num_classes=2)
    assert report.mask_values.keys() == {0, 255}
    assert report.problems
    assert any("lesion.png" in p and "255" in p for p in report.problems)


def test_multiclass_values_not_flagged_when_binary(tmp_path):
    # the same 0/1/3/7 mask read as binary is just thresholded, no class-range problem
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "m.png")
    Image.fromarray(np.array([[0, 255, 255, 0]] * 4, np.uint8)).save(tmp_path / "masks" / "m.png")
    report = check_dataset(tmp_path, num_classes=1)
    assert not report.problems and report.mask_values == {0: 8, 1: 8}


def test_inspect_sample_missing_files_named(tmp_path):
    sample = Sample("s", tmp_path / "img_missing.png", tmp_path / "mask_missing.png")
    info, problems, hist = inspect_sample(sample)
    assert info is None and not hist
    assert len(problems) == 2
    assert "img_missing.png" in problems[0] and "mask_missing.png" in problems[1]


def test_check_samples_on_subset(tiny_folders):
    _, samples = find_samples(tiny_folders)
    report = check_samples(tiny_folders, "folders", samples[:4])
    assert not report.problems and len(report.infos) == 4 and len(report.samples) == 4


def test_check_pairs_csv_with_missing_files(tmp_path):
    write_pair(tmp_path / "i", tmp_path / "m", "ok")
    csv = tmp_path / "list.csv"
    csv.write_text("i/ok.png,m/ok.png\ni/ghost.png,m/ghost_mask.png\n")
    report = check_dataset(csv)
    assert report.format == "pairs"
    assert len(report.infos) == 1
    assert len(report.problems) == 2
    assert any("ghost.png" in p for p in report.problems)
    assert any("ghost_mask.png" in p for p in report.problems)


@pytest.fixture(scope="module")
def ph2_report(real_data):
    return check_dataset(real_data / "ph2")


def test_real_ph2_checks_clean(ph2_report):
    assert not ph2_report.problems, ph2_report.problems[:5]
    s = ph2_report.summary()
    assert s["format"] == "ph2" and s["n_valid"] == 100
    assert set(s["mask_values"]) == {"0", "1"}  # incl. IMD002's 24-bit RGB mask
    assert 550 <= s["height"]["min"] <= s["height"]["max"] <= 580
    assert 760 <= s["width"]["min"] <= s["width"]["max"] <= 770
    # README: lesions cover 3%-98% of the image
    assert 0.02 < s["foreground_fraction"]["min"] < s["foreground_fraction"]["max"] < 0.99


def test_real_camvid_multiclass_pairs(real_data, tmp_path):
    train = real_data / "camvid" / "train"
    names = sorted(p.name for p in train.iterdir())[:3]
    csv = tmp_path / "camvid.csv"
    csv.write_text("".join(f"{train / n},{train.parent / 'trainannot' / n}\n" for n in names))
    report = check_dataset(csv, num_classes=12)
    assert not report.problems, report.problems
    assert report.summary()["height"]["max"] == 360
    assert set(report.mask_values) <= set(range(12)) and len(report.mask_values) > 3


def test_real_membrane_checks_clean(real_data):
    report = check_dataset(real_data / "membrane" / "train", "folders")
    assert not report.problems
    s = report.summary()
    assert s["n_valid"] == 30
    assert s["height"] == {"min": 512, "median": 512, "max": 512}
    assert set(s["mask_values"]) == {"0", "1"}

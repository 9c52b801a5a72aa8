"""Tests of pixelseg.data.layouts: finding (image, mask) pairs in PH2, folders and pairs layouts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_pair
from pixelseg.data.io import read_mask
from pixelseg.data.layouts import Sample, detect_format, find_samples, list_images
from pixelseg.errors import DataError

PH2_IMAGES = "PH2 Dataset images"


def _img(path: Path, size=(6, 8), value=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size + (3,), value, np.uint8)).save(path)
    return path


def _mask(path: Path, size=(6, 8), n_fg=1) -> Path:
    """A 0/255 mask whose number of foreground pixels identifies it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(size, np.uint8)
    m.flat[:n_fg] = 255
    Image.fromarray(m).save(path)
    return path


def _fake_ph2(root: Path, cases=("IMD001", "IMD002", "IMD010"), csv=True) -> Path:
    """A tiny copy of PH2's own layout, with its _roi folders and a BOM'd CSV."""
    images = root / "PH2Dataset" / PH2_IMAGES
    for name in cases:
        case = images / name
        _img(case / f"{name}_Dermoscopic_Image" / f"{name}.bmp")
        _mask(case / f"{name}_lesion" / f"{name}_lesion.bmp")
        _mask(case / f"{name}_roi" / f"{name}_R1_Label4.bmp")
    if csv:
        rows = [f"{n},{i % 3},0" for i, n in enumerate(cases)]
        lines = ["Name,Clinical Diagnosis,Asymmetry", *rows]
        (root / "PH2Dataset" / "PH2_dataset.csv").write_bytes(
            ("\r\n".join(lines) + "\r\n").encode("utf-8-sig")
        )
    return root


# ---- ph2 -------------------------------------------------------------------------------------


def test_fake_ph2_layout(tmp_path):
    root = _fake_ph2(tmp_path / "ph2")
    fmt, samples = find_samples(root)
    assert fmt == "ph2"
    assert [s.stem for s in samples] == ["IMD001", "IMD002", "IMD010"]
    for s in samples:
        assert s.image.name == f"{s.stem}.bmp"
        assert s.mask is not None and s.mask.name == f"{s.stem}_lesion.bmp"
        assert "_roi" not in str(s.mask)
    assert [s.group for s in samples] == ["0", "1", "2"]  # BOM and \r\n stripped


def test_fake_ph2_without_csv_has_no_groups(tmp_path):
    root = _fake_ph2(tmp_path / "ph2", csv=False)
    _, samples = find_samples(root, "ph2")
    assert len(samples) == 3 and all(s.group is None for s in samples)


def test_fake_ph2_missing_lesion_gives_none_mask_and_skips_non_cases(tmp_path):
    root = _fake_ph2(tmp_path / "ph2")
    images = root / "PH2Dataset" / PH2_IMAGES
    _img(images / "IMD020" / "IMD020_Dermoscopic_Image" / "IMD020.bmp")  # no lesion folder
    (images / "notes").mkdir()  # not a case folder
    _img(images / "IMD001" / "IMD001_Dermoscopic_Image" / "IMD001.jpg")  # a JPEG copy: ignored
    _, samples = find_samples(root / "PH2Dataset")  # the inner folder works too
    by_stem = {s.stem: s for s in samples}
    assert set(by_stem) == {"IMD001", "IMD002", "IMD010", "IMD020"}
    assert by_stem["IMD020"].mask is None
    assert by_stem["IMD001"].image.suffix == ".bmp"


def test_real_ph2_layout(real_data):
    fmt, samples = find_samples(real_data / "ph2")
    assert fmt == "ph2"
    assert len(samples) == 100
    stems = [s.stem for s in samples]
    assert stems == sorted(stems) and len(set(stems)) == 100
    for s in samples:
        assert s.image.is_file() and s.image.name == f"{s.stem}.bmp"
        assert s.image.parent.name == f"{s.stem}_Dermoscopic_Image"
        assert s.mask is not None and s.mask.is_file()
        assert s.mask.name == f"{s.stem}_lesion.bmp"
        assert "_roi" not in s.mask.parent.name
    # groups come from PH2_dataset.csv: 40 common nevi, 40 atypical nevi, 20 melanomas
    assert Counter(s.group for s in samples) == {"0": 40, "1": 40, "2": 20}


def test_real_ph2_imd002_sample_reads_as_binary_mask(real_data):
    _, samples = find_samples(real_data / "ph2", "ph2")
    imd002 = next(s for s in samples if s.stem == "IMD002")
    mask = read_mask(imd002.mask)
    assert set(np.unique(mask)) == {0, 1}


def test_real_membrane_folders_layout(real_data):
    fmt, samples = find_samples(real_data / "membrane" / "train", "folders")
    assert fmt == "folders"
    assert len(samples) == 30
    assert {s.stem for s in samples} == {str(i) for i in range(30)}
    for s in samples:
        assert s.image.parent.name == "image" and s.mask.parent.name == "label"
        assert s.image.name == s.mask.name == f"{s.stem}.png"


def test_real_membrane_detected_one_folder_down(real_data):
    fmt, samples = find_samples(real_data / "membrane")
    assert fmt == "folders" and len(samples) == 30


# ---- folders -----------------------------------------------------------------------------------


def test_tiny_folders(tiny_folders):
    fmt, samples = find_samples(tiny_folders)
    assert fmt == "folders"
    assert [s.stem for s in samples] == [f"img{i:02d}" for i in range(12)]
    assert all(s.mask == tiny_folders / "masks" / f"{s.stem}.png" for s in samples)
    assert all(s.group is None for s in samples)


def test_folders_mask_extension_may_differ(tmp_path):
    write_pair(tmp_path / "images", tmp_path / "masks", "a", image_ext=".jpg", mask_ext=".png")
    write_pair(tmp_path / "images", tmp_path / "masks", "b", image_ext=".jpg", mask_ext=".bmp")
    _, samples = find_samples(tmp_path)
    pairs = [(s.image.name, s.mask.name) for s in samples]
    assert pairs == [("a.jpg", "a.png"), ("b.jpg", "b.bmp")]


@pytest.mark.parametrize(
    "suffix", ["_mask", "_segmentation", "_lesion", "_label", "-mask", "_Mask"]
)
def test_folders_mask_suffixes(tmp_path, suffix):
    for i, stem in enumerate(["ISIC_01", "ISIC_02"]):
        _img(tmp_path / "images" / f"{stem}.jpg")
        _mask(tmp_path / "masks" / f"{stem}{suffix}.png", n_fg=i + 1)
    _, samples = find_samples(tmp_path, "folders")
    assert [s.stem for s in samples] == ["ISIC_01", "ISIC_02"]
    assert [s.mask.name for s in samples] == [f"ISIC_01{suffix}.png", f"ISIC_02{suffix}.png"]


def test_folders_pairing_is_by_name_not_order(tmp_path, monkeypatch):
    # sorted image names: "a.png" < "a_b.png"; sorted mask names: "a_b_mask" < "a_mask",
    # so pairing by position would swap them.
    for n_fg, stem in enumerate(["a", "a_b", "zz", "b"], start=1):
        _img(tmp_path / "images" / f"{stem}.png")
        _mask(tmp_path / "masks" / f"{stem}_mask.png", n_fg=n_fg)
    real_iterdir = Path.iterdir
    monkeypatch.setattr(
        Path, "iterdir", lambda self: iter(sorted(real_iterdir(self), reverse=True))
    )
    _, samples = find_samples(tmp_path)
    assert [s.stem for s in samples] == ["a", "a_b", "b", "zz"]
    expected_fg = {"a": 1, "a_b": 2, "zz": 3, "b": 4}
    for s in samples:
        assert s.mask.name == f"{s.stem}_mask.png"
        assert int(read_mask(s.mask).sum()) == expected_fg[s.stem]


def test_folders_case_insensitive_folder_names(tmp_path):
    write_pair(tmp_path / "Images", tmp_path / "Masks", "x")
    fmt, samples = find_samples(tmp_path)
    assert fmt == "folders"
    assert samples[0].image.parent.name == "Images" and samples[0].mask.parent.name == "Masks"


def test_folders_image_label_names(tmp_path):
    write_pair(tmp_path / "image", tmp_path / "label", "0")
    write_pair(tmp_path / "image", tmp_path / "label", "1")
    assert detect_format(tmp_path) == "folders"
    _, samples = find_samples(tmp_path)
    assert [s.mask.parent.name for s in samples] == ["label", "label"]


def test_folders_one_folder_down(tmp_path):
    write_pair(tmp_path / "kaggle_zip" / "images", tmp_path / "kaggle_zip" / "masks", "p")
    fmt, samples = find_samples(tmp_path)
    assert fmt == "folders"
    assert samples[0].image == tmp_path / "kaggle_zip" / "images" / "p.png"


def test_folders_missing_mask_is_none(tmp_path):
    write_pair(tmp_path / "images", tmp_path / "masks", "has")
    _img(tmp_path / "images" / "lonely.png")
    _, samples = find_samples(tmp_path)
    by_stem = {s.stem: s for s in samples}
    assert by_stem["has"].mask is not None and by_stem["lonely"].mask is None


def test_folders_ignore_hidden_and_non_image_files(tmp_path):
    write_pair(tmp_path / "images", tmp_path / "masks", "a")
    (tmp_path / "images" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "images" / "._a.png").write_bytes(b"junk")
    (tmp_path / "images" / "readme.txt").write_text("hi")
    (tmp_path / "masks" / "Thumbs.db").write_bytes(b"junk")
    _, samples = find_samples(tmp_path)
    assert [s.stem for s in samples] == ["a"]


def test_folders_duplicate_image_stems_are_an_error(tmp_path):
    write_pair(tmp_path / "images", tmp_path / "masks", "dup")
    _img(tmp_path / "images" / "dup.jpg")
    with pytest.raises(DataError, match="dup") as info:
        find_samples(tmp_path)
    assert len(info.value.problems) == 1
    assert "dup.png" in info.value.problems[0] and "dup.jpg" in info.value.problems[0]


def test_folders_duplicate_mask_stems_after_suffix_are_an_error(tmp_path):
    _img(tmp_path / "images" / "a.png")
    _mask(tmp_path / "masks" / "a_mask.png")
    _mask(tmp_path / "masks" / "a_label.png")
    with pytest.raises(DataError) as info:
        find_samples(tmp_path)
    assert any("a_mask.png" in p and "a_label.png" in p for p in info.value.problems)


def test_folders_without_masks_folder(tmp_path):
    _img(tmp_path / "images" / "a.png")
    with pytest.raises(DataError, match="masks"):
        find_samples(tmp_path, "folders")


def test_folders_with_no_images_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no images"):
        find_samples(tmp_path)


# ---- pairs -------------------------------------------------------------------------------------


def test_pairs_csv(tmp_path):
    _img(tmp_path / "data" / "x" / "one.png")
    _mask(tmp_path / "data" / "y" / "one_gt.png")
    _img(tmp_path / "data" / "x" / "two.png")
    abs_mask = _mask(tmp_path / "elsewhere" / "m2.png")
    csv = tmp_path / "data" / "list.csv"
    csv.write_text(
        "image,mask\n"
        "# a comment\n"
        "\n"
        f"x/two.png, {abs_mask}\n"
        " x/one.png , y/one_gt.png \n"
        "x/three.png\n"
    )
    assert detect_format(csv) == "pairs"
    fmt, samples = find_samples(csv)
    assert fmt == "pairs"
    assert [s.stem for s in samples] == ["one", "three", "two"]
    one, three, two = samples
    assert one.image == tmp_path / "data" / "x" / "one.png"
    assert one.mask == tmp_path / "data" / "y" / "one_gt.png"
    assert two.mask == abs_mask
    assert three.mask is None


def test_pairs_duplicate_stems_kept_apart(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("a/img.png,a/m.png\nb/img.png,b/m.png\n")
    _, samples = find_samples(csv, "pairs")
    assert len(samples) == 2
    assert len({s.stem for s in samples}) == 2
    assert {s.image.parent.name for s in samples} == {"a", "b"}


def test_pairs_given_an_image_file_is_data_error_naming_it(tmp_path):
    # e.g. `pixelseg check photo.png`: a file root is read as a pairs CSV; a binary file
    # must give a DataError that names it, not a bare UnicodeDecodeError
    path = _img(tmp_path / "photo.png", size=(16, 16), value=200)
    with pytest.raises(DataError, match="photo.png"):
        find_samples(path)


def test_pairs_needs_a_file(tmp_path):
    with pytest.raises(DataError, match="pairs"):
        find_samples(tmp_path, "pairs")


# ---- detect_format / find_samples errors ------------------------------------------------------


def test_detect_format_ph2(tmp_path):
    root = _fake_ph2(tmp_path / "p")
    assert detect_format(root) == "ph2"
    assert detect_format(root / "PH2Dataset") == "ph2"


def test_detect_format_unknown_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    _img(tmp_path / "stuff" / "a.png")
    with pytest.raises(DataError, match="cannot tell the data layout"):
        detect_format(tmp_path)
    with pytest.raises(DataError):
        find_samples(tmp_path)


def test_find_samples_unknown_format(tiny_folders):
    with pytest.raises(ValueError, match="Unknown data format"):
        find_samples(tiny_folders, "voc")


def test_find_samples_missing_root(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        find_samples(tmp_path / "absent")


def test_sample_is_frozen():
    s = Sample("a", Path("a.png"), None)
    with pytest.raises(AttributeError):
        s.stem = "b"  # type: ignore[misc]


# ---- list_images -------------------------------------------------------------------------------


def test_list_images_recursive_sorted(tmp_path):
    _img(tmp_path / "in" / "b.png")
    _img(tmp_path / "in" / "a.jpg")
    _img(tmp_path / "in" / "sub" / "c.bmp")
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "in" / ".hidden.png").write_bytes(b"x")
    single = _img(tmp_path / "single.png")
    paths = list_images([tmp_path / "in", str(single)])
    assert paths == [
        tmp_path / "in" / "a.jpg",
        tmp_path / "in" / "b.png",
        tmp_path / "in" / "sub" / "c.bmp",
        single,
    ]


def test_list_images_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="no images"):
        list_images([tmp_path / "empty"])
    with pytest.raises(DataError, match="ghost.png"):
        list_images([tmp_path / "ghost.png"])

"""The on-disk cache of decoded pairs: the same items as in memory, reused while the data is
unchanged, rebuilt when it changes, and never handing damaged bytes to training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelseg.config import TrainConfig
from pixelseg.data.cache import cache_root
from pixelseg.data.dataset import SegmentationDataset
from pixelseg.data.layouts import find_samples
from pixelseg.engine.train import fit
from settings import FAST


def _pairs(root: Path):
    return find_samples(root)[1]


def _disk(samples, **kw) -> SegmentationDataset:
    return SegmentationDataset(samples, (24, 32), keep_original=True, cache="disk", **kw)


def _folders(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if not p.name.startswith(".")}


def test_disk_items_equal_memory_items(tiny_data: Path) -> None:
    samples = _pairs(tiny_data)
    memory = SegmentationDataset(samples, (24, 32), keep_original=True)
    disk = _disk(samples)
    assert disk.disk is not None and memory.disk is None and len(disk) == len(memory) == 12
    for i in range(len(memory)):
        a, b = memory[i], disk[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert np.array_equal(memory.original_masks[i], disk.original_masks[i])
    assert disk.median_original_size() == memory.median_original_size()
    np.testing.assert_allclose(disk.channel_stats(), memory.channel_stats(), rtol=1e-6)


def test_the_cache_is_reused_until_a_file_changes(tiny_folders: Path) -> None:
    samples = _pairs(tiny_folders)
    first = _disk(samples)
    meta = first.disk.folder / "meta.json"
    written = meta.stat().st_mtime_ns
    again = _disk(samples)
    assert again.disk.folder == first.disk.folder and meta.stat().st_mtime_ns == written
    # a changed image (new content, new size on disk) is a new cache with the new pixels
    image = samples[3].image
    Image.new("RGB", Image.open(image).size, (255, 0, 0)).save(image)
    changed = _disk(_pairs(tiny_folders))
    assert changed.disk.folder != first.disk.folder
    assert changed[3]["image"][0].min() == 255 and changed[3]["image"][1].max() == 0
    assert torch.equal(changed[4]["image"], first[4]["image"])
    # other sizes or settings are caches of their own
    other = SegmentationDataset(samples, (16, 16), cache="disk")
    assert other.disk.folder not in {first.disk.folder, changed.disk.folder}


@pytest.mark.parametrize("damage", ["truncated", "garbage-meta", "missing-file"])
def test_a_damaged_cache_is_rebuilt(tiny_data: Path, damage: str) -> None:
    samples = _pairs(tiny_data)
    good = _disk(samples)
    expected = [good[i]["image"].clone() for i in range(len(good))]
    folder = good.disk.folder
    del good
    if damage == "truncated":
        data = (folder / "images.bin").read_bytes()
        (folder / "images.bin").write_bytes(data[: len(data) // 2])
    elif damage == "garbage-meta":
        (folder / "meta.json").write_text("{not json")
    else:
        (folder / "masks.bin").unlink()
    rebuilt = _disk(samples)
    assert rebuilt.disk.folder == folder
    assert all(torch.equal(rebuilt[i]["image"], expected[i]) for i in range(len(expected)))
    assert json.loads((folder / "meta.json").read_text())["key"]["size"] == [24, 32]


def test_a_damaged_record_is_decoded_again_not_read_as_data(tiny_data: Path) -> None:
    samples = _pairs(tiny_data)
    dataset = _disk(samples)
    expected_image, expected_mask = dataset[5]["image"].clone(), dataset[5]["mask"].clone()
    n = 3 * 24 * 32
    fd = os.open(dataset.disk.folder / "images.bin", os.O_WRONLY)
    os.pwrite(fd, bytes(n), 5 * n)  # record 5 zeroed: same length, wrong bytes
    os.close(fd)
    fresh = _disk(samples)  # the files' lengths are right: the damage shows when read
    with pytest.warns(UserWarning, match="was damaged; decoding it again"):
        item = fresh[5]
    assert torch.equal(item["image"], expected_image) and torch.equal(item["mask"], expected_mask)
    assert torch.equal(_disk(samples)[5]["image"], expected_image)  # repaired on disk too


def test_bad_pairs_are_all_named_and_leave_no_cache(tiny_folders: Path) -> None:
    from pixelseg.errors import DataError

    (tiny_folders / "images" / "img02.png").write_bytes(b"not an image")
    Image.new("L", (5, 5)).save(tiny_folders / "masks" / "img07.png")
    before = _folders(cache_root())
    with pytest.raises(DataError) as info:
        _disk(_pairs(tiny_folders))
    assert "img02.png" in str(info.value) and "img07.png" in str(info.value)
    assert _folders(cache_root()) == before
    assert not [p for p in cache_root().iterdir() if p.name.startswith(".")]  # no partial


def test_training_from_the_disk_cache_equals_training_from_memory(
    tiny_data: Path, tmp_path: Path
) -> None:
    runs = {}
    for cache in ("memory", "disk"):
        cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / cache), epochs=2, cache=cache,
                          **FAST)  # fmt: skip
        runs[cache] = fit(cfg)
    assert runs["memory"].history[-1]["train_loss"] == runs["disk"].history[-1]["train_loss"]
    assert runs["memory"].best_score == runs["disk"].best_score


def test_a_remembered_check_decodes_only_what_changed(
    tiny_folders: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixelseg.data import check

    samples = _pairs(tiny_folders)
    first = check.check_samples(tiny_folders, "folders", samples, remember=True)
    decoded: list[str] = []
    real = check.inspect_sample
    monkeypatch.setattr(check, "inspect_sample",
                        lambda s, *a: decoded.append(s.stem) or real(s, *a))  # fmt: skip
    again = check.check_samples(tiny_folders, "folders", samples, remember=True)
    assert decoded == [] and again.infos == first.infos and again.mask_values == first.mask_values
    (tiny_folders / "masks" / "img05.png").write_bytes(b"broken now")
    changed = check.check_samples(tiny_folders, "folders", samples, remember=True)
    assert decoded == ["img05"] and any("img05.png" in p for p in changed.problems)
    other = check.check_samples(tiny_folders, "folders", samples, num_classes=3, remember=True)
    assert len(decoded) == 1 + 12 and other.infos  # other settings: checked afresh


def test_only_evaluation_sets_keep_full_size_masks(tiny_data: Path) -> None:
    samples = _pairs(tiny_data)
    training = SegmentationDataset(samples, (24, 32), cache="disk")
    assert (training.disk.folder / "originals.bin").stat().st_size == 0
    assert training.original_masks == [] and training.median_original_size() == (40, 48)
    assert (_disk(samples).disk.folder / "originals.bin").stat().st_size == 12 * 40 * 48


def test_a_damaged_check_memory_is_checked_again(tiny_folders: Path) -> None:
    from pixelseg.data import check

    samples = _pairs(tiny_folders)
    first = check.check_samples(tiny_folders, "folders", samples, remember=True)
    settings = {"num_classes": 1, "ignore_index": None, "colors": None}
    memo = check._Memo(tiny_folders, "folders", settings).path
    entries = json.loads(memo.read_text())["entries"]
    memo.write_text(json.dumps({"entries": {k: [{"no": 1}, 5, None] for k in entries}}))
    again = check.check_samples(tiny_folders, "folders", samples, remember=True)
    assert again.infos == first.infos

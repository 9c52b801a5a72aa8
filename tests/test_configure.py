"""Settings pixelseg derives from the data and the machine: the batch size."""

from __future__ import annotations

import pytest
import torch

from pixelseg.config import TrainConfig
from pixelseg.engine.configure import choose_batch_size, training_bytes_per_image
from pixelseg.errors import PixelsegError

CPU = torch.device("cpu")
PLENTY = 64 * 2**30


def _cfg(**kw) -> TrainConfig:
    kw.setdefault("model", "unet")
    return TrainConfig(data="unused", size=kw.pop("size", 32), num_classes=1, **kw).with_defaults()


def test_the_users_batch_size_wins() -> None:
    cfg = _cfg(batch_size=3)
    assert choose_batch_size(cfg, 1000, 3, CPU, free_bytes=1) is cfg


def test_device_preference_and_small_data_sets(logs: list[str]) -> None:
    assert choose_batch_size(_cfg(), 1000, 3, CPU, PLENTY).batch_size == 8
    assert "batch size: 8" in logs[-1] and "MiB an image" in logs[-1]
    cuda = torch.device("cuda")  # only its type is used here: no GPU needed
    assert choose_batch_size(_cfg(), 1000, 3, cuda, PLENTY).batch_size == 32
    # 20 images: at least 8 steps an epoch, so batches of 2
    assert choose_batch_size(_cfg(), 20, 3, CPU, PLENTY).batch_size == 2
    # never below 2 (BatchNorm), unless there is a single image
    assert choose_batch_size(_cfg(), 3, 3, CPU, PLENTY).batch_size == 2
    assert choose_batch_size(_cfg(), 1, 3, CPU, PLENTY).batch_size == 1


def test_batch_is_halved_until_it_fits_memory() -> None:
    cfg = _cfg()
    per_image = training_bytes_per_image(cfg, 3)
    # half of the free memory holds 2.5 images: 8 -> 4 -> 2
    chosen = choose_batch_size(cfg, 1000, 3, CPU, free_bytes=5 * per_image)
    assert chosen.batch_size == 2
    with pytest.raises(PixelsegError, match="smaller --size"):
        choose_batch_size(cfg, 1000, 3, CPU, free_bytes=per_image)


def test_memory_estimate_grows_with_pixels_and_width() -> None:
    small = training_bytes_per_image(_cfg(size=32), 3)
    assert training_bytes_per_image(_cfg(size=64), 3) == pytest.approx(4 * small, rel=0.05)
    narrow = _cfg(model_kwargs={"base_channels": 8})
    assert training_bytes_per_image(narrow, 3) < 0.5 * small


def test_time_budget_picks_size_and_width(logs: list[str]) -> None:
    from pixelseg.engine.configure import choose_for_budget

    shapes = ([480] * 3, [640] * 3)  # median image 480x640
    roomy = choose_for_budget(_cfg(size=None), *shapes, 16, 1e6, 16, 3, CPU)
    assert roomy.size == (192, 256) and roomy.model_kwargs == {"base_channels": 32}
    tight = choose_for_budget(_cfg(size=None), *shapes, 16, 1e-3, 16, 3, CPU)
    assert tight.size == (96, 128) and tight.model_kwargs == {"base_channels": 8}
    assert "the cheapest" in logs[-1]
    assert "size 96x128 and model width base_channels=8" in logs[-1]
    assert "steps in the budget" in logs[-1]
    # what the user chose stays: only the width is left to pick here
    sized = choose_for_budget(_cfg(size=64), *shapes, 16, 1e-3, 16, 3, CPU)
    assert sized.size == (64, 64) and sized.model_kwargs == {"base_channels": 8}
    fixed = _cfg(size=64, model="lesson-unet")
    assert choose_for_budget(fixed, *shapes, 16, 1e-3, 16, 3, CPU) is fixed


def test_small_images_are_never_enlarged_or_timed_twice(logs: list[str]) -> None:
    from pixelseg.engine.configure import choose_for_budget

    small = choose_for_budget(_cfg(size=None), [48] * 3, [64] * 3, 16, 1e-3, 16, 3, CPU)
    assert small.size == (48, 64) and small.model_kwargs == {"base_channels": 8}
    assert "none of the candidates" in logs[-1]

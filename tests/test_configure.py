"""Settings pixelseg derives from the data and the machine: batch size, size, patches."""

from __future__ import annotations

import dataclasses

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


def _fake_timer(cfg: TrainConfig) -> tuple[float, str]:
    """Milliseconds that grow with the pixels: 65.5 at 256x256, 36.9 at 192x192."""
    return cfg.size[0] * cfg.size[1] / 1000, "a fake engine"


def test_a_latency_picks_the_largest_size_within_it(logs: list[str]) -> None:
    from pixelseg.engine.configure import choose_size_for_latency

    shapes = ([480] * 3, [480] * 3)  # square images, larger than every candidate
    cfg = _cfg(size=None, model="lite-unet-fast", latency="40ms")
    assert choose_size_for_latency(cfg, *shapes, 32, _fake_timer).size == (192, 192)
    assert "size: 192x192 for --latency 40ms" in logs[-1] and "36.9 ms" in logs[-1]
    assert choose_size_for_latency(_cfg(size=None, latency="0.07s"), *shapes, 32,
                                   _fake_timer).size == (256, 256)  # fmt: skip
    # a target nothing meets: the smallest size tried, with a warning that says so
    tight = choose_size_for_latency(_cfg(size=None, latency="1ms"), *shapes, 32, _fake_timer)
    assert tight.size == (64, 64) and "over --latency 1ms even at the smallest" in logs[-1]
    # the user's size is kept, and checked
    given = _cfg(size=256, latency="10ms")
    assert choose_size_for_latency(given, *shapes, 32, _fake_timer) is given
    assert "takes 65.5 ms an image on a fake engine, over --latency 10ms" in logs[-1]
    assert choose_size_for_latency(_cfg(size=None), *shapes, 32, _fake_timer).size is None


def test_latency_settings_are_read_or_refused() -> None:
    from pixelseg.config import parse_milliseconds

    assert [parse_milliseconds(t) for t in ("10ms", "0.01s", "7.5", 3)] == [10, 10, 7.5, 3]
    for bad in ("fast", "-3ms", "0"):
        with pytest.raises(ValueError, match="latency"):
            TrainConfig(data="d", latency=bad)


def test_inference_time_is_measured_on_onnx_runtime_when_installed() -> None:
    from pixelseg.engine.configure import inference_ms

    pytest.importorskip("onnxruntime")
    ms, engine = inference_ms(_cfg(size=64, model="lite-unet-fast"), runs=3)
    assert 0 < ms < 5000 and engine == "ONNX Runtime"


def test_a_given_crop_is_checked_against_the_size() -> None:
    from pixelseg.engine.configure import choose_size

    cfg = TrainConfig(data="d", model="unet", num_classes=1, crop="64x96").with_defaults()
    assert cfg.crop == (64, 96) and cfg.to_dict()["crop"] == [64, 96]
    assert TrainConfig(data="d", crop="None").with_defaults().crop is None
    # the size left open: the images up to the patches' source size (never enlarged)
    sized = choose_size(cfg, [360] * 3, [480] * 3, 16)
    assert sized.size == (352, 480) and sized.train_size == (64, 96)
    with pytest.raises(PixelsegError, match="crop 64x96 is larger than the size 48x64"):
        choose_size(cfg, [48] * 3, [64] * 3, 16)  # images smaller than the patch
    with pytest.raises(ValueError, match="crop .none or HEIGHTxWIDTH. must look like"):
        TrainConfig(data="d", crop="wide")
    # a step's memory is counted at the patch's size, not the images'
    whole_image = dataclasses.replace(cfg, crop=None, size=(64, 96))
    assert training_bytes_per_image(sized, 3) == training_bytes_per_image(whole_image, 3)


def test_a_time_budget_times_steps_on_the_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    from pixelseg.engine import configure

    timed: list[tuple[tuple[int, int], int]] = []

    def step_seconds(cfg: TrainConfig, *args, **kwargs) -> float:
        timed.append((cfg.train_size, cfg.model_kwargs["base_channels"]))
        return 1.0

    monkeypatch.setattr(configure, "_step_seconds", step_seconds)
    patched = _cfg(size=None, crop="48x64")
    chosen = configure.choose_for_budget(patched, [480] * 3, [640] * 3, 16, 1e-3, 16, 3, CPU)
    # the size is not the budget's to pick (the patch fixes a step's cost); the width is
    assert chosen.size is None and chosen.model_kwargs == {"base_channels": 8}
    assert {size for size, _ in timed} == {(48, 64)}
    assert {width for _, width in timed} == {32, 16, 8}
    with pytest.raises(ValueError, match="crop 64x96 is larger than the size 48x64"):
        TrainConfig(data="d", size="48x64", crop="64x96")
    with pytest.raises(ValueError, match="crop with latency needs a size"):
        TrainConfig(data="d", latency="8ms", crop="64x96")

"""Mixed precision and channels_last in training (pixelseg.engine.precision)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pixelseg.cli import main
from pixelseg.config import TrainConfig
from pixelseg.engine.precision import Precision, choose_precision
from pixelseg.engine.train import train_one_epoch
from pixelseg.models import create_model

FAST = ["--model-arg", "base_channels=8", "--model-arg", "depth=2", "--size", "32",
        "--batch-size", "4", "--device", "cpu", "--epochs", "2"]  # fmt: skip
CPU = torch.device("cpu")


def test_auto_on_a_cpu_is_bf16_only_where_the_cpu_computes_in_bf16_and_it_is_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pixelseg.engine import precision as module

    assert module.cpu_has_native_bf16() in (True, False)  # this machine's answer, no error
    monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(module, "cpu_bf16_speedup", lambda: 2.0)
    assert choose_precision("auto", "auto", CPU) == Precision("fp32", False, "cpu")
    monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: True)
    assert choose_precision("auto", "auto", CPU) == Precision("bf16", True, "cpu")
    assert choose_precision("auto", "off", CPU) == Precision("bf16", False, "cpu")
    # native bf16 that measures slower than float32 (an AVX512-BF16 CPU without AMX)
    monkeypatch.setattr(module, "cpu_bf16_speedup", lambda: 0.75)
    assert choose_precision("auto", "auto", CPU) == Precision("fp32", False, "cpu")
    assert choose_precision("bf16", "auto", CPU) == Precision("bf16", True, "cpu")  # as asked
    # float32 takes channels_last from the model, an explicit setting overrides it
    assert choose_precision("auto", "auto", CPU, True) == Precision("fp32", True, "cpu")
    assert choose_precision("auto", "off", CPU, True) == Precision("fp32", False, "cpu")


def test_pixelsegs_own_models_train_in_channels_last_on_a_cpu_and_the_zoos_do_not() -> None:
    from pixelseg.models import ModelError, prefers_channels_last

    assert all(prefers_channels_last(n) for n in ("unet", "lesson-unet", "lesson-segnet"))
    assert not prefers_channels_last("smp-unet")  # float32 NHWC slowed its ResNet-34
    with pytest.raises(ModelError, match="Unknown model 'unt'. Valid models: .*unet"):
        prefers_channels_last("unt")


def test_a_float32_cpu_run_of_unet_saves_channels_last_as_auto_chose_it(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    from pixelseg.engine import precision as module

    monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: True)  # as on an AVX512-BF16
    monkeypatch.setattr(module, "cpu_bf16_speedup", lambda: 0.7)  # Xeon without AMX
    run = tmp_path / "run"
    assert main(["train", str(tiny_data), "--out", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    assert "float32, channels_last: bf16 ran 0.70x float32 on this CPU" in out
    assert "; float32, channels_last;" in out
    saved = json.loads((run / "config.json").read_text())["train"]
    assert (saved["precision"], saved["channels_last"]) == ("fp32", "on")


def test_the_bf16_probe_measures_without_touching_the_random_state() -> None:
    from pixelseg.engine.precision import cpu_bf16_speedup

    cpu_bf16_speedup.cache_clear()
    before = torch.random.get_rng_state()
    speedup = cpu_bf16_speedup()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert 0.05 < speedup < 20  # a ratio of two timings of the same work, not a placeholder
    assert cpu_bf16_speedup() == speedup  # measured once per process


def test_explicit_settings_are_obeyed() -> None:
    assert choose_precision("bf16", "on", CPU) == Precision("bf16", True, "cpu")
    assert choose_precision("fp32", "on", CPU).describe() == "float32, channels_last"
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        choose_precision("fp16", "auto", CPU)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        TrainConfig(data="d", precision="fp8")
    with pytest.raises(ValueError, match="channels_last must be auto, on or off"):
        TrainConfig(data="d", channels_last="yes")


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_float32_weights() -> None:
    precision = Precision("bf16", True, "cpu")
    model = precision.prepare_model(create_model("unet", base_channels=8, depth=2))
    seen = []
    model.head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    x = precision.prepare_batch(torch.randn(2, 3, 32, 32))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with precision.autocast():
        model(x).float().mean().backward()
    assert seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in model.parameters())  # fmt: skip
    conv = next(
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    )
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_training_in_bf16_channels_last_learns_saves_and_reloads(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    args = ["train", str(tiny_data), "--out", str(run), "--precision", "bf16",
            "--channels-last", "on", *FAST]  # fmt: skip
    assert main(args) == 0
    assert "bf16 autocast, channels_last" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "bf16"
    # the saved weights are ordinary (contiguous) float32 and evaluate in float32
    assert main(["evaluate", str(run), str(tiny_data), "--out", str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0 and metrics["n_images"] > 0


def test_an_epoch_in_each_precision_and_layout_gives_about_the_same_loss(tiny_data: Path) -> None:
    """Autocast and layout change speed, not what is learnt: one epoch from the same start
    gives the float32 loss within 1e-4 (channels_last) and 2% (bf16)."""
    from pixelseg.data.dataset import SegmentationDataset
    from pixelseg.data.layouts import find_samples
    from pixelseg.data.transforms import BatchTransform
    from pixelseg.losses import build_loss

    dataset = SegmentationDataset(find_samples(tiny_data)[1], (32, 32))
    transform = BatchTransform(*dataset.channel_stats())
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    losses = {}
    for name, layout in (("fp32", False), ("fp32", True), ("bf16", False)):
        torch.manual_seed(0)
        precision = Precision(name, layout, "cpu")
        model = precision.prepare_model(create_model("unet", base_channels=8, depth=2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        losses[name, layout] = train_one_epoch(
            model, loader, transform, build_loss("bce+dice", 1), optimizer, scheduler, CPU,
            precision=precision,
        )  # fmt: skip
    base = losses["fp32", False]
    assert losses["fp32", True] == pytest.approx(base, rel=1e-4)
    assert losses["bf16", False] == pytest.approx(base, rel=0.02)
    assert losses["bf16", False] != base  # it did run in bf16


def test_the_loss_is_summed_on_the_device_exactly_as_in_python() -> None:
    """Progress sums the loss without reading it each step; the sum equals the float64
    sum of ``loss.item() * n`` in step order, and a settled Progress saves as before."""
    from dataclasses import asdict

    from pixelseg.engine.state import Progress

    losses = [torch.tensor(v, dtype=torch.float32) for v in (0.7, 1 / 3, 2.5e-4, 0.91)]
    progress, expected = Progress(step=2, loss_sum=1.25, count=8), 1.25
    for loss in losses:
        progress.add_loss(loss, 4)
        expected += loss.item() * 4
    assert progress.loss_sum == 1.25  # not read yet: no host sync happened
    assert progress.settle().loss_sum == expected
    assert asdict(progress) == {"step": 6, "loss_sum": expected, "count": 24}
    assert Progress(**asdict(progress)).settle().loss_sum == expected


def test_compile_trains_a_run_whose_checkpoint_is_the_plain_models(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``--compile`` compiles the module in place: same state_dict keys, same run folder."""
    run = tmp_path / "run"
    args = ["train", str(tiny_data), "--out", str(run), "--compile", "--precision", "fp32",
            *FAST[:-2], "--epochs", "1"]  # fmt: skip
    assert main(args) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["finished"] and not any("_orig_mod" in k for k in state["model"])
    assert json.loads((run / "config.json").read_text())["train"]["compile"] is True
    assert main(["evaluate", str(run), str(tiny_data), "--out", str(tmp_path / "e")]) == 0


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "fp16"), ((8, 0), "bf16")])
def test_auto_on_a_gpu_is_bf16_from_ampere_on_else_fp16(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: str
) -> None:
    """Older GPUs say yes to torch.cuda.is_bf16_supported() but only emulate bf16: the
    choice goes by compute capability (of the run's own GPU)."""
    asked = []
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda d: asked.append(d) or capability
    )
    gpu = torch.device("cuda", 1)
    assert choose_precision("auto", "auto", gpu) == Precision(expected, True, "cuda")
    assert asked == [gpu]


def test_a_skipped_fp16_step_does_not_advance_the_schedule(tiny_data: Path) -> None:
    """GradScaler skips the optimizer step when the scaled gradients overflow; the
    learning-rate schedule must not move on without an update."""
    from pixelseg.data.dataset import SegmentationDataset
    from pixelseg.data.layouts import find_samples
    from pixelseg.data.transforms import BatchTransform
    from pixelseg.losses import build_loss

    dataset = SegmentationDataset(find_samples(tiny_data)[1], (32, 32))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(4)), batch_size=4)
    model = create_model("unet", base_channels=8, depth=2)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)

    def huge_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return build_loss("bce", 1)(logits, masks) * 1e10  # x 2**100: gradients overflow

    train_one_epoch(model, loader, BatchTransform(*dataset.channel_stats()), huge_loss,
                    optimizer, scheduler, CPU, scaler=scaler)  # fmt: skip
    assert scaler.get_scale() == 2.0**99  # the overflow was seen and the scale halved
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scheduler.last_epoch == 0


def test_the_decided_precision_is_saved_and_kept_on_resume(tiny_data: Path, tmp_path: Path) -> None:
    """auto is decided when a run starts and saved; a rerun continues with it, and a run
    saved before the setting existed continues in float32 NCHW, as it was trained."""
    from pixelseg.engine import checkpoint
    from pixelseg.engine.train import fit

    run = tmp_path / "run"
    cfg = dict(data=str(tiny_data), out=str(run), model_kwargs={"base_channels": 8, "depth": 2},
               size=(32, 32), batch_size=4, epochs=2, device="cpu", progress=False)  # fmt: skip

    def crash(row: dict) -> None:
        raise RuntimeError("stop after epoch 1")

    with pytest.raises(RuntimeError):
        fit(TrainConfig(**cfg), on_epoch_end=crash)
    auto = choose_precision("auto", "auto", CPU)
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["config"]["precision"] == auto.name  # decided, not "auto"
    # as if saved by an older pixelseg: no precision settings in the checkpoint
    for key in ("precision", "channels_last"):
        del state["config"][key]
    checkpoint.save_state(run, state)
    fit(TrainConfig(**cfg))  # the same command again: resumes
    saved = torch.load(run / "last.pt", weights_only=False)
    assert saved["finished"] and saved["epoch"] == 2
    assert (saved["config"]["precision"], saved["config"]["channels_last"]) == ("fp32", "off")


def test_compile_and_a_time_budget_are_refused_together() -> None:
    with pytest.raises(ValueError, match="compile cannot be combined with time_budget"):
        TrainConfig(data="d", compile=True, time_budget="5m")

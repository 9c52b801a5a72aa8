"""Mixed precision and memory layout of a training run.

Two settings, both ``auto`` by default:

- ``precision``: ``fp32``, ``bf16`` or ``fp16``: the dtype ``torch.autocast`` runs the
  forward pass and loss in (weights, optimizer and gradients stay float32). ``fp16``
  needs a gradient scaler (float16's range is too narrow for small gradients), which is
  saved with the checkpoint; ``bf16`` has float32's range and needs none.
- ``channels_last``: ``on`` keeps the model's weights and each batch in NHWC order, the
  layout that GPU tensor cores and oneDNN's CPU convolutions work in natively.

``auto`` on CUDA: bf16 where the GPU has it (Ampere and newer), else fp16; channels_last
on. ``auto`` on a CPU: bf16 with channels_last where the CPU computes in bf16 itself
(AVX512-BF16 or AMX) *and* a short probe finds it faster there; else float32, in
channels_last for the models that are faster in it (``prefers_channels_last`` in the model
registry: pixelseg's own) and NCHW for the others. The CPU flag alone does not tell: on a
2-core AMD EPYC with AVX512-BF16, bf16 with channels_last trained the native U-Nets 2.6-2.7x
faster than float32 at 256x256, while on a 2-core Intel Xeon with AVX512-BF16 but no AMX it
ran them at 0.78-1.13x of float32, and float32 with channels_last at 1.12-1.34x was the
fastest (``benchmarks/precision.py``; figures and a PH2 quality check in
docs/benchmarks.md).
Validation, evaluation and prediction always run in float32, so scores and exported models
do not depend on it.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field

import torch

from pixelseg.errors import SettingsError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# ``auto`` picks bf16 on a CPU only when the probe runs at least this much faster in it:
# float32 is the exact default, and a probe of a fraction of a second is noisy.
MIN_CPU_BF16_SPEEDUP = 1.2


@dataclass(frozen=True)
class Precision:
    """What a run's training steps use; see the module's docstring."""

    name: str  # fp32 | bf16 | fp16
    channels_last: bool
    device_type: str
    # what ``auto`` measured to decide, for the training log ("" when nothing was measured)
    measured: str = field(default="", compare=False)

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler for fp16 (None otherwise)."""
        if self.name != "fp16":
            return None
        return torch.amp.GradScaler(self.device_type)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_batch(self, images: torch.Tensor) -> torch.Tensor:
        return (
            images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        )

    def describe(self) -> str:
        text = "float32" if self.name == "fp32" else f"{self.name} autocast"
        return text + (", channels_last" if self.channels_last else "")


def choose_precision(
    precision: str, channels_last: str, device: torch.device, prefers_channels_last: bool = False
) -> Precision:
    """Resolve the ``auto`` settings (validated by TrainConfig) for ``device``.

    ``prefers_channels_last``: the model's own preference for float32 on a CPU
    (:func:`pixelseg.models.prefers_channels_last`).
    """
    cuda = device.type == "cuda"
    measured = ""
    if precision == "auto":
        if cuda:  # bf16 keeps float32's range (no scaler); GPUs before Ampere only have fp16
            precision = "bf16" if gpu_has_native_bf16(device) else "fp16"
        elif cpu_has_native_bf16():
            speedup = cpu_bf16_speedup()
            measured = f"bf16 ran {speedup:.2f}x float32 on this CPU"
            precision = "bf16" if speedup >= MIN_CPU_BF16_SPEEDUP else "fp32"
        else:
            precision = "fp32"
    if precision == "fp16" and not cuda:
        raise SettingsError("precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    # auto: with bf16, oneDNN's NHWC kernels were the faster ones on the CPUs measured; in
    # float32 it depends on the model
    auto = cuda or precision == "bf16" or prefers_channels_last
    layout = auto if channels_last == "auto" else channels_last == "on"
    return Precision(precision, layout, device.type, measured)


def gpu_has_native_bf16(device: torch.device) -> bool:
    """Ampere (compute capability 8) and newer, or ROCm. ``torch.cuda.is_bf16_supported()``
    also says yes to older GPUs that only emulate bf16, slowly and without cuDNN kernels."""
    if torch.version.hip:
        return True
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bf16 itself (AVX512-BF16 or AMX), rather than emulating
    it, which is slower than float32. torch's own checks (private, hence the care)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name)() for name in checks if hasattr(torch.cpu, name))
    except RuntimeError:
        return False


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How many times faster a training step of a small convolution block runs in bf16
    autocast with channels_last than in float32 NCHW on this CPU, with torch's current
    thread count (measured once per process, in about half a second).

    The block (two 3x3 convolutions of 64 channels with batch norm and ReLU, 4 images of
    64x64) has the shape of a U-Net's middle layers; its ratio followed the whole models'
    on the CPUs measured. The two variants alternate for 5 rounds after a warm-up and the
    ratio of their fastest rounds is returned. The global random state is left as it was.
    """

    def block() -> torch.nn.Module:
        conv = functools.partial(torch.nn.Conv2d, 64, 64, 3, padding=1)
        return torch.nn.Sequential(conv(), torch.nn.BatchNorm2d(64), torch.nn.ReLU(), conv())

    def step_seconds(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model(x)
        y.float().square().mean().backward()
        return time.perf_counter() - start

    with torch.random.fork_rng(devices=[]):
        fp32, bf16 = block(), block().to(memory_format=torch.channels_last)
        x = torch.randn(4, 64, 64, 64)
        x_last = x.contiguous(memory_format=torch.channels_last)
        times = [(step_seconds(fp32, x, False), step_seconds(bf16, x_last, True))
                 for _ in range(6)]  # fmt: skip
    # The first round warms both up. Each variant's fastest round is the one least disturbed
    # by other work on the machine: a median of ratios still chose float32 on a busy CPU
    # where bf16 trains several times faster.
    fp32_best, bf16_best = (min(column) for column in zip(*times[1:], strict=True))
    return fp32_best / bf16_best

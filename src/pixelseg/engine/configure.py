"""Settings derived from the data set (nnU-Net style), each one printed with its reason.

What the user gives always wins; these fill in what was left to pixelseg.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from pixelseg.config import TrainConfig, parse_milliseconds
from pixelseg.data.classes import median_frequency_weights, resolve_classes
from pixelseg.data.dataset import SegmentationDataset
from pixelseg.data.layouts import detect_format
from pixelseg.data.orientation import mask_asymmetry
from pixelseg.engine.finetune import resolve_encoder_weights
from pixelseg.engine.optimizer import adamw
from pixelseg.engine.precision import choose_precision
from pixelseg.errors import PixelsegError
from pixelseg.models import create_model
from pixelseg.models.efficientnet import ENCODERS
from pixelseg.models.lite_unet import DEFAULT_ENCODER
from pixelseg.models.registry import ModelError
from pixelseg.models.weights import WEIGHTS_HINT, find_imagenet_weights

log = logging.getLogger(__name__)


def resolve_class_settings(cfg: TrainConfig) -> TrainConfig:
    """Fill in the number of classes, their names and the ignore index from the data."""
    fmt = cfg.format if cfg.format != "auto" else detect_format(Path(cfg.data))
    c = resolve_classes(fmt, cfg.data, cfg.num_classes, cfg.class_names, cfg.ignore_index)
    log.info(
        f"classes: {c.why}"
        + (f"; ignore index {c.ignore_index}" if c.ignore_index is not None else "")
    )
    return replace(
        cfg, num_classes=c.num_classes, class_names=c.names, ignore_index=c.ignore_index,
        class_colors=cfg.class_colors or c.colors,
    )  # fmt: skip


def choose_model(cfg: TrainConfig, in_channels: int) -> TrainConfig:
    """``model auto``: the model to train, and ``encoder_weights auto``: its start.

    Colour images get ``lite-unet`` from ImageNet weights when they are on this machine (the
    ``weights`` extra): on photos it learns from 200 images what a U-Net from scratch does
    not (people: Dice 0.74 -> 0.9+, docs/benchmarks.md). Without the weights, or for
    greyscale images, the U-Net from scratch; the log says which and why.
    """
    if cfg.model != "auto":
        chosen = resolve_encoder_weights(cfg)
        if cfg.encoder_weights == "auto" and chosen.encoder_weights != "none":
            log.info(f"encoder weights: {chosen.encoder_weights} (installed on this machine)")
        return chosen
    if cfg.model_kwargs:  # e.g. --model-arg base_channels=16: options of unet, as ever
        log.info("model: unet (model options given without --model are the U-Net's)")
        return resolve_encoder_weights(replace(cfg, model="unet"))
    pretrained = cfg.encoder_weights not in ("auto", "none")  # the user gave weights
    source = find_imagenet_weights(DEFAULT_ENCODER) if cfg.encoder_weights == "auto" else None
    # fine-tuning options ask for a pretrained encoder, on greyscale images too
    finetuning = cfg.freeze_encoder_epochs > 0 or cfg.encoder_lr_scale is not None
    if finetuning and not pretrained and source is None:
        raise ModelError(
            "--freeze-encoder-epochs and --encoder-lr-scale fine-tune a pretrained encoder, "
            + ("but --encoder-weights is none" if cfg.encoder_weights == "none"
               else f"and there are no ImageNet weights on this machine: {WEIGHTS_HINT}")
        )  # fmt: skip
    # a latency target asks for the light decoder, from ImageNet weights when there are some
    name = "lite-unet-fast" if cfg.latency else "lite-unet"
    if pretrained or ((in_channels == 3 or finetuning or cfg.latency) and source is not None):
        weights = cfg.encoder_weights if pretrained else "imagenet"
        log.info(
            f"model: {name}, {ENCODERS[DEFAULT_ENCODER].title} encoder from {weights} weights"
            + (f" ({source})" if source and not pretrained else "")
            + " (colour images)" * (in_channels == 3 and not cfg.latency)
            + f" (--latency {cfg.latency})" * bool(cfg.latency)
        )
        return replace(cfg, model=name, model_kwargs={"encoder": DEFAULT_ENCODER},
                       encoder_weights=weights)  # fmt: skip
    if cfg.latency:
        why = "--encoder-weights none" if cfg.encoder_weights == "none" else WEIGHTS_HINT
        log.info(f"model: {name} from scratch (--latency {cfg.latency}; {why})")
        return replace(cfg, model=name, model_kwargs={"encoder": DEFAULT_ENCODER},
                       encoder_weights="none")  # fmt: skip
    if cfg.encoder_weights == "none":
        why = "--encoder-weights none"
    elif in_channels != 3:
        why = "greyscale images"
    else:
        why = f"no ImageNet weights on this machine; {WEIGHTS_HINT}"
    log.info(f"model: unet from scratch ({why})")
    return replace(cfg, model="unet", encoder_weights="none")


def choose_class_weights(cfg: TrainConfig, train_set: SegmentationDataset) -> list[float] | None:
    """Loss weights per class from the training masks, as ``cfg.class_weights`` asks.

    ``auto`` uses median-frequency balancing when the rarest class is over 10x rarer than
    the most common one (then an unweighted loss mostly learns the common classes).
    """
    if cfg.class_weights == "none":
        return None
    n = max(cfg.num_classes, 2)  # binary: [background, foreground]
    weights = median_frequency_weights(train_set.iter_masks(), n, cfg.ignore_index)
    present = [w for w in weights if w > 0]
    imbalance = max(present) / min(present) if present else 1.0
    if cfg.class_weights == "auto" and imbalance <= 10:
        log.info(f"class weights: none (class frequencies within {imbalance:.1f}x of each other)")
        return None
    log.info(f"class weights (median frequency): {', '.join(f'{w:.2f}' for w in weights)}")
    return weights


def choose_flips(cfg: TrainConfig, train_set: SegmentationDataset) -> TrainConfig:
    """Settle ``flips: auto``: left-right only when the training masks show that the images
    have an up (data/orientation.py), both axes otherwise."""
    if cfg.flips != "auto":
        return cfg
    asymmetry = mask_asymmetry(train_set.iter_masks(), cfg.num_classes, cfg.ignore_index)
    if asymmetry.upright:
        log.info(f"flips: left-right only (the images have an up: {asymmetry.describe()})")
        return replace(cfg, flips="horizontal")
    log.info(f"flips: both axes (no up in the masks: {asymmetry.describe()})")
    return replace(cfg, flips="both")


AUTO_LONG_SIDE = 256  # pixels on the longer side when the size is left to pixelseg
# With --crop and no --size, the images are kept at up to this longer side: a step sees
# a patch of them, so its cost depends on the patch alone (docs/data.md).
CROP_LONG_SIDE = 512


def choose_size(
    cfg: TrainConfig, heights: list[int], widths: list[int], stride: int,
) -> TrainConfig:  # fmt: skip
    """Pick ``cfg.size`` from the images when the user gave none.

    The median image shape is scaled so its longer side is ``AUTO_LONG_SIDE`` (with a
    ``--crop``, ``CROP_LONG_SIDE``; never up), keeping the aspect ratio, and each side is
    rounded to a multiple of the network's stride, so no padding is needed and nothing is
    squashed.
    """
    if cfg.size is not None:
        return cfg
    side = AUTO_LONG_SIDE if cfg.crop_size is None else CROP_LONG_SIDE
    size = _scaled_size(heights, widths, stride, side)
    h, w = _median(heights), _median(widths)
    log.info(
        f"size: {size[0]}x{size[1]} (median image {h}x{w}, longer side to at most "
        f"{side}, aspect ratio kept, multiples of the model's stride {stride})"
    )
    return replace(cfg, size=size)


# longer sides tried for --latency, largest first: a latency caps the cost, so never
# beyond what choose_size would pick without one
LATENCY_SIDES = (256, 224, 192, 160, 128, 96, 64)


def choose_size_for_latency(
    cfg: TrainConfig, heights: list[int], widths: list[int], stride: int,
    timer: Callable[[TrainConfig], tuple[float, str]] | None = None,
) -> TrainConfig:  # fmt: skip
    """With ``latency``, the largest training size (the images' aspect ratio kept) at which
    the model segments one image within it on this machine's CPU, measured with random
    weights through ONNX Runtime when installed (else PyTorch). A size the user gave is
    only checked. ``timer`` (for tests) maps settings to (ms, engine)."""
    if cfg.latency is None:
        return cfg
    target = parse_milliseconds(cfg.latency)
    timer = timer or inference_ms
    if cfg.size is not None:
        ms, engine = timer(cfg)
        if ms > target:
            log.warning(
                f"size {cfg.size[0]}x{cfg.size[1]}: {cfg.model} takes {ms:.1f} ms an image on "
                f"{engine}, over --latency {cfg.latency}; a smaller --size would meet it"
            )
        return cfg
    sizes = list(dict.fromkeys(_scaled_size(heights, widths, stride, s) for s in LATENCY_SIDES))
    for size in sizes:
        ms, engine = timer(replace(cfg, size=size))
        if ms <= target:
            log.info(
                f"size: {size[0]}x{size[1]} for --latency {cfg.latency} ({cfg.model} takes "
                f"{ms:.1f} ms an image on {engine} here, measured; the largest size within it)"
            )
            return replace(cfg, size=size)
    log.warning(
        f"{cfg.model} takes {ms:.1f} ms an image at {size[0]}x{size[1]} on {engine}, over "
        f"--latency {cfg.latency} even at the smallest size tried; training at that size"
    )
    return replace(cfg, size=size)


def inference_ms(cfg: TrainConfig, runs: int = 30) -> tuple[float, str]:
    """Median milliseconds for one image at ``cfg.size`` on this machine's CPU (random
    weights), through ONNX Runtime as ``pixelseg predict --engine onnx`` runs it when the
    onnx extra is installed, else through PyTorch; and which of the two."""
    model = create_model(
        cfg.model, in_channels=cfg.in_channels or 3, num_classes=cfg.num_classes or 1,
        **cfg.model_kwargs,
    ).eval()  # fmt: skip
    image = torch.rand(1, cfg.in_channels or 3, *cfg.size)
    try:
        from pixelseg.inference.export import onnx_bytes
        from pixelseg.inference.onnx import open_session

        session = open_session(onnx_bytes(model, tuple(image.shape)))
        array = image.numpy()
        run, engine = (lambda: session.run(None, {"image": array})), "ONNX Runtime"
    except (ImportError, PixelsegError):  # no onnx extra: PyTorch's time instead

        def run() -> None:
            with torch.no_grad():
                model(image)

        engine = "PyTorch (install pixelseg[onnx] to measure ONNX Runtime)"
    for _ in range(5):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * _median(times), engine


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _scaled_size(
    heights: list[int], widths: list[int], stride: int, long_side: int
) -> tuple[int, int]:
    h, w = _median(heights), _median(widths)
    scale = min(1.0, long_side / max(h, w))
    return (
        max(stride, round(h * scale / stride) * stride),
        max(stride, round(w * scale / stride) * stride),
    )


# Under a time budget: the input sizes (longer side) and default U-Net widths to choose from,
# and the number of optimizer steps a run needs to converge. On a PH2 cross-validation fold
# with a 5-minute budget on a 2-core CPU, a width-8 U-Net at 96x128 given ~2,800 steps
# scored a test Dice of 0.933 where the widest U-Net at 192x256 leaving room for 25 short
# epochs scored 0.876 (see docs/benchmarks.md).
LONG_SIDES = (256, 192, 128)
WIDTHS = (32, 16, 8)
MIN_STEPS = 1500
# A pretrained encoder starts from features rather than noise and needs fewer steps: a
# U-Net on ImageNet EfficientNet-Lite0 weights reached Dice 0.92 on held-out people photos
# in about 900 steps at 256x256, where from scratch it stayed at 0.71.
PRETRAINED_MIN_STEPS = 800
TRAIN_SHARE = 0.85  # of the budget, for training steps (the rest: validation, checkpoints)


def choose_for_budget(
    cfg: TrainConfig, heights: list[int], widths: list[int], stride: int, budget: float,
    n_train: int, in_channels: int, device: torch.device,
) -> TrainConfig:  # fmt: skip
    """Under a time budget, the largest input size and default-U-Net width that still give
    ``MIN_STEPS`` training steps, judged by timing a few steps of each candidate (most
    expensive first). Only what the user left to pixelseg is chosen; if nothing is fast
    enough, the cheapest candidate.
    """
    # (a given crop fixes a step's cost whatever the size: the images are cut to it)
    sides = LONG_SIDES if cfg.size is None and cfg.crop_size is None else (None,)
    free_width = cfg.model == "unet" and "base_channels" not in cfg.model_kwargs
    options = WIDTHS if free_width else (None,)
    if len(sides) == 1 and len(options) == 1:
        return cfg
    trials = _candidates(cfg, sides, options, heights, widths, stride)
    pretrained = cfg.encoder_weights not in ("none", "auto")
    min_steps = PRETRAINED_MIN_STEPS if pretrained else MIN_STEPS
    allowed = TRAIN_SHARE * budget / min_steps  # seconds a step may take
    batch = cfg.batch_size or preferred_batch(device, n_train)
    _step_seconds(trials[-1], batch, in_channels, device)  # one-off start-up costs (e.g. CUDA)
    for rank, chosen in enumerate(trials):
        seconds = _step_seconds(chosen, batch, in_channels, device, give_up_after=4 * allowed)
        if seconds <= allowed:
            why = "the largest candidate" if rank == 0 else "larger ones give fewer"
            break
    else:
        why = "none of the candidates gives that many, so the cheapest"
    steps = int(TRAIN_SHARE * max(0.0, budget) / seconds) if seconds > 0 else 0
    what = []
    if len(sides) > 1:
        what.append(f"size {chosen.size[0]}x{chosen.size[1]}")
    if free_width:
        what.append(f"model width base_channels={chosen.model_kwargs['base_channels']}")
    log.info(
        f"{' and '.join(what)} for the time budget: a step of {batch} images takes "
        f"about {seconds:.2f} s, {steps:,} steps in the budget (a run "
        f"{'from a pretrained encoder ' * pretrained}needs about {min_steps:,} to converge; "
        f"{why})"
    )
    return chosen


def _candidates(
    cfg: TrainConfig, sides: tuple, options: tuple, heights: list[int], widths: list[int],
    stride: int,
) -> list[TrainConfig]:  # fmt: skip
    """The settings to time, most expensive first, without duplicates (small images give
    the same size for several longer sides)."""
    pairs = sorted(
        ((side, width) for side in sides for width in options),
        key=lambda c: (c[0] or 1) ** 2 * (c[1] or 1) ** 1.5,  # rough cost; timing decides
        reverse=True,
    )
    trials: list[TrainConfig] = []
    for side, width in pairs:
        trial = _with(cfg, side, width, heights, widths, stride)
        if all((t.size, t.model_kwargs) != (trial.size, trial.model_kwargs) for t in trials):
            trials.append(trial)
    return trials


def _with(
    cfg: TrainConfig, side: int | None, width: int | None, heights: list[int],
    widths: list[int], stride: int,
) -> TrainConfig:  # fmt: skip
    if side is not None:
        cfg = replace(cfg, size=_scaled_size(heights, widths, stride, side))
    if width is not None:
        cfg = replace(cfg, model_kwargs={**cfg.model_kwargs, "base_channels": width})
    return cfg


def _step_seconds(
    cfg: TrainConfig, batch: int, in_channels: int, device: torch.device,
    give_up_after: float = math.inf,
) -> float:  # fmt: skip
    """Seconds for one training step of ``cfg.model`` (the faster of two, after a warm-up
    step; just the warm-up step when that alone took over ``give_up_after``; infinite when
    the step does not fit in the GPU's memory).

    The global random state is left as it was, so timing does not change the run's
    initial weights.
    """
    cuda = device.type == "cuda"
    precision = choose_precision(cfg.precision, cfg.channels_last, device)  # as training will
    with torch.random.fork_rng(devices=[device] if cuda else []):
        model = create_model(
            cfg.model, in_channels=in_channels, num_classes=cfg.num_classes, **cfg.model_kwargs
        )
        model = precision.prepare_model(model.to(device))
        optimizer = adamw(model.parameters())  # as training will
        x = torch.randn(batch, in_channels, *cfg.train_size, device=device)
        x = precision.prepare_batch(x)
        times: list[float] = []
        try:
            for _ in range(3):
                start = time.perf_counter()
                with precision.autocast():
                    loss = model(x).float().square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if cuda:
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
                if times[0] > give_up_after:
                    break
        except torch.cuda.OutOfMemoryError:
            return math.inf
        finally:
            del model, optimizer, x
            if cuda:  # give back what the trial reserved, so free memory is measured right
                torch.cuda.empty_cache()
    return min(times[1:]) if len(times) == 3 else times[0]


PREFERRED_BATCH = {"cpu": 8, "cuda": 32}  # a CPU gains nothing from bigger batches; a GPU does
MEMORY_SHARE = 0.5  # of the memory free now, what one training batch may take
MIN_STEPS_PER_EPOCH = 8  # a small data set gets smaller batches rather than 2 steps an epoch


def choose_batch_size(
    cfg: TrainConfig, n_train: int, in_channels: int, device: torch.device,
    free_bytes: int | None = None,
) -> TrainConfig:  # fmt: skip
    """Pick ``cfg.batch_size`` when the user gave none: the device's preferred batch (8 on a
    CPU, 32 on a GPU), at most an eighth of the training images, halved until one training
    step's activations fit in half of the memory that is free now.

    The memory a step needs is estimated from the model's layer outputs for one image (what
    autograd keeps for the backward pass, times three for gradients and workspace).
    """
    if cfg.batch_size is not None:
        return cfg
    per_image = training_bytes_per_image(cfg, in_channels)
    free = free_memory(device) if free_bytes is None else free_bytes
    batch = preferred_batch(device, n_train)
    while batch > 1 and batch * per_image > MEMORY_SHARE * free:
        batch //= 2
    if per_image > MEMORY_SHARE * free:
        h, w = cfg.train_size
        raise PixelsegError(
            f"one {h}x{w} image needs about {per_image / 2**20:,.0f} MiB to "
            f"train {cfg.model}, more than half of the {free / 2**20:,.0f} MiB free on {device}; "
            f"use a smaller --{'crop' if cfg.crop_size else 'size'} or a smaller model"
        )
    log.info(
        f"batch size: {batch} (about {per_image / 2**20:,.0f} MiB an image in training, "
        f"{free / 2**30:.1f} GiB free on {device}; {n_train} training images)"
    )
    return replace(cfg, batch_size=batch)


def preferred_batch(device: torch.device, n_train: int) -> int:
    """The batch size to start from, before any memory limit."""
    preferred = PREFERRED_BATCH.get(device.type, 8)
    # at least 2 (BatchNorm needs more than one value per channel), if there are 2 images
    return max(min(2, n_train), min(preferred, n_train // MIN_STEPS_PER_EPOCH))


def training_bytes_per_image(cfg: TrainConfig, in_channels: int) -> int:
    """Rough memory one image costs in a training step: 3x the bytes of all layer outputs."""
    with torch.random.fork_rng(devices=[]):  # leave the run's random state as it was
        model = create_model(
            cfg.model, in_channels=in_channels, num_classes=cfg.num_classes, **cfg.model_kwargs
        )
    total = 0

    def count(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, *cfg.train_size))
    finally:
        for h in hooks:
            h.remove()
    return 3 * total


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now (the GPU's, or the machine's available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30  # unknown (e.g. Windows): assume a modest machine

"""Training settings as one dataclass (the CLI, the Python API and ``config.json`` share it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pixelseg.errors import SettingsError

POSTPROCESS = ("auto", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # see engine/precision.py
SWITCHES = ("auto", "on", "off")
CACHES = ("auto", "memory", "disk")  # see data/cache.py
CLASS_WEIGHTS = ("none", "median-frequency", "auto")
# training flips: both axes, left-right only (images with an up: photos, street scenes), or
# auto (left-right only when the masks show an up; data/orientation.py)
FLIPS = ("auto", "both", "horizontal")
LOSS_NAMES: tuple[str, ...] = ("bce", "dice", "bce+dice", "ce", "ce+dice")  # see losses.py
MAX_BUDGET_EPOCHS = 1000
DEFAULT_EPOCHS = 40  # without a time budget
DEFAULT_PATIENCE = 10  # without a time budget (whose schedule is planned to end with it)
ZOO_DEFAULT_ENCODER = "resnet34"  # smp-* models without an "encoder" in model_kwargs
LITE_DEFAULT_ENCODER = "tf_efficientnet_lite0"  # lite-unet's (the weights extra's weights)


def parse_duration(text: str | float) -> float:
    """Seconds in ``"15m"``, ``"900s"``, ``"1h30m"``, ``"2h"`` or a plain number of seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        units = {"h": 3600.0, "m": 60.0, "s": 1.0}
        seconds, number = 0.0, ""
        for char in str(text).strip().lower():
            if char.isdigit() or char == ".":
                number += char
            elif char in units and number:
                seconds += float(number) * units[char]
                number = ""
            else:
                raise SettingsError(
                    f"cannot read the duration {text!r}; use e.g. 15m, 900s or 1h30m"
                )
        if number:
            seconds += float(number)
    if seconds <= 0:
        raise SettingsError(f"a duration must be positive, got {text!r}")
    return seconds


def parse_milliseconds(text: str | float) -> float:
    """Milliseconds in ``"10ms"``, ``"0.01s"`` or a plain number of milliseconds."""
    value = str(text).strip().lower()
    scale = 1.0
    if value.endswith("ms"):
        value = value[:-2]
    elif value.endswith("s"):
        value, scale = value[:-1], 1000.0
    try:
        ms = float(value) * scale
    except ValueError:
        raise SettingsError(f"cannot read the latency {text!r}; use e.g. 10ms or 0.01s") from None
    if not ms > 0:
        raise SettingsError(f"a latency must be positive, got {text!r}")
    return ms


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``pixelseg train`` can be told. Defaults suit a small binary data set.

    A None (or "auto") is a setting left to pixelseg. Constructing one only checks it; the
    run decides what is left once, when it starts (:func:`pixelseg.engine.resolve.resolve`),
    and saves the decided settings in ``config.json``. Frozen: a change is a new copy
    (``dataclasses.replace``).
    """

    data: str
    out: str = "runs/pixelseg"
    format: str = "auto"  # data layout: auto | ph2 | folders | pairs
    # auto: lite-unet from ImageNet weights for colour images when the weights are installed,
    # else unet from scratch (engine/configure.py: choose_model)
    model: str = "auto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # smp-*: {"encoder": "resnet18"}
    # models with an encoder: auto (what it has without a download) | none | imagenet (or
    # another weight set of the encoder) | a file path
    encoder_weights: str = "auto"
    freeze_encoder_epochs: int = 0  # the pretrained encoder stays as loaded for N epochs
    encoder_lr_scale: float | None = None  # encoder LR = lr x this; None: 0.1 if pretrained
    num_classes: int | None = None  # None: from the data (a class table), else 1 = binary
    in_channels: int | None = None  # None: 1 if every image is greyscale, else 3
    size: tuple[int, int] | None = None  # training (height, width); None: from the images
    # train on random (height, width) patches of the images at `size` and predict on whole
    # images (docs/data.md); None: whole images
    crop: str | tuple[int, int] | None = None
    epochs: int | None = None  # None: DEFAULT_EPOCHS, or as many as fit in time_budget
    time_budget: str | None = None  # wall-clock limit for the whole run: "15m", "900s", "1h"
    # time the model may take for one image at inference, "10ms": picks lite-unet-fast (with
    # model auto) and the largest size that runs within it (engine/configure.py)
    latency: str | None = None
    batch_size: int | None = None  # None: from the device's memory and the data set's size
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    # validate and keep an exponential moving average of the weights with this decay per
    # step (0 = the raw weights; engine/ema.py)
    ema: float = 0.0
    loss: str | None = None  # None: bce+dice (binary) or ce+dice (multi-class)
    seed: int = 0
    # the seed of the train/val/test split (None: seed): runs with other seeds and one split
    # score on the same test images (an ensemble's members, a comparison of seeds)
    split_seed: int | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    val_fraction: float = 0.15
    # the validation images train too (all labelled images but the test ones): the last
    # epoch's weights are kept, and validation scores are scores on seen images
    train_on_val: bool = False
    test_fraction: float = 0.15
    # early stopping: epochs without a better val score (0 = never); None: 10, or never under
    # a time budget, whose learning-rate schedule is planned to end with the budget
    patience: int | None = None
    augment: bool = True
    flips: str = "auto"  # auto | both | horizontal (see FLIPS)
    precision: str = "auto"  # training autocast: auto | fp32 | bf16 | fp16 (engine/precision.py)
    channels_last: str = "auto"  # NHWC weights and batches: auto | on | off
    compile: bool = False  # torch.compile the model in place (for GPUs; see docs/usage.md)
    workers: int = 0  # DataLoader worker processes (the data is cached decoded already)
    # where the decoded pairs are kept: memory | disk (data/cache.py, reused by later runs)
    # | auto (disk past data/cache.py's MEMORY_LIMIT, 2 GiB of pairs at training size)
    cache: str = "auto"
    save_every: int = 0  # also checkpoint every N training steps (0: after each epoch only)
    sync_batchnorm: bool = False  # torchrun: batch-norm statistics over all processes' batches
    threshold: float | None = None  # binary: foreground above it; None = calibrate on val
    postprocess: str = "auto"  # binary: auto (clean-up steps that help on val) | none
    ignore_index: int | None = None  # mask value that counts in no loss and no metric
    class_names: list[str] | None = None
    class_colors: list[list[int]] | None = None  # RGB per class, for colour-coded mask files
    class_weights: str = "auto"  # none | median-frequency | auto (median-frequency if imbalanced)
    progress: bool = True

    def __post_init__(self) -> None:
        """Refuse impossible settings at once (a typo fails before any data is read)."""
        if self.size is not None:
            _parse_size(self.size)
        crop = self.crop_size  # parsed here: a typo fails at once
        if crop is not None and self.size is not None:
            h, w = _parse_size(self.size)
            if crop[0] > h or crop[1] > w:
                raise SettingsError(
                    f"crop {crop[0]}x{crop[1]} is larger than the size {h}x{w} it is cut from "
                    "(images are never enlarged for patches): give a smaller --crop"
                )
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        if self.latency is not None:
            parse_milliseconds(self.latency)
        epochs = self.epochs if self.epochs is not None else DEFAULT_EPOCHS
        checks = [
            (
                self.model != "auto" or "encoder" not in self.model_kwargs,
                "--encoder needs a model (--model lite-unet, smp-unet...): with model auto "
                "pixelseg picks the model and its encoder itself",
            ),
            (self.epochs is None or self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size is None or self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.num_classes is None or self.num_classes >= 1, "num_classes must be >= 1"),
            (
                self.class_weights in CLASS_WEIGHTS,
                f"class_weights must be one of {', '.join(CLASS_WEIGHTS)}",
            ),
            (self.flips in FLIPS, f"flips must be one of {', '.join(FLIPS)}"),
            (
                self.threshold is None or 0 <= self.threshold <= 1,
                "threshold must be a probability between 0 and 1",
            ),
            (
                0 <= self.val_fraction < 1
                and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1,
                "val_fraction and test_fraction must be in [0, 1) and sum to less than 1",
            ),
            (self.workers >= 0, "workers must be >= 0"),
            (self.cache in CACHES, f"cache must be one of {', '.join(CACHES)}"),
            (0 <= self.ema < 1, "ema must be in [0, 1): 0 = off, e.g. 0.99"),
            (self.save_every >= 0, "save_every must be >= 0"),
            (
                isinstance(self.encoder_weights, str),
                "encoder_weights must be auto, none, imagenet or a file path",
            ),  # fmt: skip
            (self.freeze_encoder_epochs >= 0, "freeze_encoder_epochs must be >= 0"),
            (
                self.crop_size is None or self.size is not None or self.latency is None,
                "crop with latency needs a size: the latency fixes the size predictions are "
                "made at, which the patches are cut from (give --size)",
            ),
            (
                not (self.compile and self.time_budget is not None),
                "compile cannot be combined with time_budget: the budget is planned from the "
                "first epoch's time, which compiling inflates",
            ),
            (
                self.time_budget is not None or self.freeze_encoder_epochs < epochs,
                "freeze_encoder_epochs must be fewer than epochs (else the encoder never learns)",
            ),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.channels_last in SWITCHES, "channels_last must be auto, on or off"),
            (
                self.encoder_lr_scale is None or self.encoder_lr_scale >= 0,
                "encoder_lr_scale must be >= 0",
            ),
            (self.postprocess in POSTPROCESS, f"postprocess must be one of {POSTPROCESS}"),
            (self.in_channels in (None, 1, 3), "in_channels must be 1 or 3"),
            (
                self.warmup_epochs >= 0 and (self.patience or 0) >= 0,
                "warmup_epochs/patience must be >= 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)

    def with_defaults(self) -> TrainConfig:
        """These settings with every default that needs no data filled in: the epochs and
        patience, the loss once the number of classes is known, the model's default encoder
        (recorded, so a saved run never depends on what the default is later), the split's
        seed and the size as (height, width)."""
        budget = self.time_budget is not None
        # with a time budget the epochs are only a ceiling; the run plans its real length,
        # and its schedule ends with the budget (no early stopping)
        epochs = MAX_BUDGET_EPOCHS if budget else DEFAULT_EPOCHS
        patience = 0 if budget else DEFAULT_PATIENCE
        loss = self.loss
        if loss is None and self.num_classes is not None:
            loss = "bce+dice" if self.num_classes == 1 else "ce+dice"
        kwargs = self.model_kwargs
        encoder = None
        if self.model.startswith("lite-unet"):
            encoder = LITE_DEFAULT_ENCODER
        elif self.model.startswith("smp-"):
            encoder = ZOO_DEFAULT_ENCODER
        if encoder and "encoder" not in kwargs:
            kwargs = {**kwargs, "encoder": encoder}
        return replace(
            self,
            epochs=self.epochs if self.epochs is not None else epochs,
            patience=self.patience if self.patience is not None else patience,
            loss=loss,
            model_kwargs=kwargs,
            split_seed=self.seed if self.split_seed is None else self.split_seed,
            size=None if self.size is None else _parse_size(self.size),
            crop=self.crop_size,
        )

    @property
    def crop_size(self) -> tuple[int, int] | None:
        """The training patch (height, width); None for whole images."""
        if self.crop is None or (isinstance(self.crop, str) and self.crop.lower() == "none"):
            return None
        return _parse_size(self.crop, "crop (none or HEIGHTxWIDTH)")

    @property
    def train_size(self) -> tuple[int, int]:
        """(height, width) of what a training step sees: the patch, else the whole image."""
        return self.crop_size or _parse_size(self.size)

    @property
    def score_name(self) -> str:
        """The validation metric that picks the best checkpoint."""
        return "dice" if self.num_classes == 1 else "miou"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(_parse_size(self.size)) if self.size is not None else None
        crop = self.crop_size
        d["crop"] = list(crop) if crop is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _parse_size(size: Any, what: str = "size") -> tuple[int, int]:
    """``256`` or ``"256"`` → (256, 256); ``"192x256"`` or (192, 256) → (192, 256) as (h, w)."""
    if isinstance(size, str):
        parts = size.lower().replace(",", "x").split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise SettingsError(
                f"{what} must look like 256 or 192x256 (height x width), got {size!r}"
            ) from None
    elif isinstance(size, int):
        values = [size]
    else:
        values = [int(v) for v in size]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 8:
        raise SettingsError(f"{what} must be one or two integers >= 8, got {size!r}")
    return values[0], values[1]

"""``config.json``, a run folder's description of its model: one typed object over the file.

Training writes it (and rewrites it when the best weights, the threshold or the clean-up
steps change); evaluation, every predictor, export and the service read it. All of them go
through :class:`RunConfig`, which owns the file's name, its keys and their defaults, so a
default is stated once and a damaged file is refused in one place, naming the file.

The keys fall in three groups: the model (what rebuilds it and its preprocessing), how its
outputs become masks (chosen on the validation images), and where it came from (the
training settings under ``train``, kept apart from the model's, as nanoGPT keeps its model
config). A key this version does not know (a newer pixelseg's) is ignored with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelseg.errors import PixelsegError
from pixelseg.files import write_json

CONFIG_FILE = "config.json"
# what every reader of a run folder needs (the rest have defaults)
REQUIRED_KEYS = ("model", "in_channels", "num_classes", "size", "mean", "std")
DAMAGED = "the run folder is damaged, or was not written by pixelseg train"
# fields kept as tuples in Python and written as JSON lists
_TUPLES = ("size", "mean", "std", "postprocess", "source_size")

__all__ = ["CONFIG_FILE", "DAMAGED", "RunConfig"]


@dataclass(frozen=True)
class RunConfig:
    """What a trained run is: its model, how its outputs become masks, where it came from."""

    # the model: enough to rebuild it and prepare its input
    model: str
    in_channels: int
    num_classes: int  # 1: binary (one logit), else one logit per class
    size: tuple[int, int]  # (height, width) the model sees
    mean: tuple[float, ...]  # per input channel, on [0, 1] pixels
    std: tuple[float, ...]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # how its outputs become masks
    threshold: float = 0.5  # binary: calibrated on the validation images
    postprocess: tuple[str, ...] = ()  # binary clean-up steps chosen on them
    ignore_index: int | None = None
    class_names: list[str] | None = None
    class_colors: list[list[int]] | None = None
    source_size: tuple[int, int] | None = None  # the training images' median size
    score_name: str = "dice"  # the validation metric that chose the best weights
    # where it came from
    pixelseg_version: str | None = None
    encoder_weights_source: str | None = None
    class_weights: list[float] | None = None
    best: dict[str, Any] | None = None  # {"epoch": N, score_name: value}
    train: dict[str, Any] = field(default_factory=dict)  # the TrainConfig, as a dict

    @property
    def upright(self) -> bool:
        """Trained on images with an up, with left-right flips only (data/orientation.py):
        test-time augmentation then shows no upside-down views."""
        return self.train.get("flips") == "horizontal"

    def __post_init__(self) -> None:  # JSON lists become tuples; nothing else changes
        for name in _TUPLES:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = CONFIG_FILE) -> RunConfig:
        """A config from a dict like the file's; ``source`` names it in errors."""
        if not isinstance(data, dict):
            raise PixelsegError(f"{source}: a JSON object was expected; {DAMAGED}")
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise PixelsegError(f"{source}: no {', '.join(missing)}; {DAMAGED}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(
                f"{source}: ignoring key(s) this pixelseg does not know: {', '.join(unknown)} "
                "(written by a newer version?)",
                stacklevel=3,
            )
        values = {k: v for k, v in data.items() if k in known}
        if values.get("postprocess") is None:  # runs written before the steps were chosen
            values.pop("postprocess", None)
        try:
            return cls(**values)
        except TypeError as exc:  # e.g. a number where a list belongs
            raise PixelsegError(f"{source}: {exc}; {DAMAGED}") from None

    @classmethod
    def read(cls, run_dir: str | Path) -> RunConfig:
        """The ``config.json`` of ``run_dir``; a missing or damaged one is a PixelsegError
        naming the file."""
        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            raise PixelsegError(f"{run_dir}: not a pixelseg run folder (no {CONFIG_FILE})")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PixelsegError(f"{path}: invalid JSON ({exc})") from None
        return cls.from_dict(data, path)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in _TUPLES:
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    def write(self, run_dir: str | Path) -> Path:
        """Write (atomically) ``run_dir/config.json``."""
        return write_json(Path(run_dir) / CONFIG_FILE, self.to_dict())

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

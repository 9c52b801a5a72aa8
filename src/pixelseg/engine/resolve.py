"""Every setting left to pixelseg, decided once when a run starts.

:func:`resolve` reads and checks the data, then fills in, in order, what the user left
open (None or "auto"): the classes, the input channels, the model and its starting
weights, the precision, the split, the training size (fitted to a latency target and a
time budget), the batch size. Each choice is logged with its reason
(:mod:`pixelseg.engine.configure`). The result is a :class:`Plan`, frozen like its
settings; training only reads it. A resumed run starts from its saved, already decided
settings, so nothing is decided again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pixelseg.config import TrainConfig
from pixelseg.data.check import DatasetReport, check_samples
from pixelseg.data.layouts import Sample, find_samples
from pixelseg.data.split import (
    SPLITS,
    foreground_strata,
    load_split,
    make_sequence_split,
    make_split,
    save_split,
    sequences,
)
from pixelseg.engine import finetune
from pixelseg.engine.configure import (
    choose_batch_size,
    choose_for_budget,
    choose_model,
    choose_size,
    choose_size_for_latency,
    resolve_class_settings,
)
from pixelseg.engine.distributed import World
from pixelseg.engine.precision import choose_precision
from pixelseg.errors import DataError
from pixelseg.losses import build_loss
from pixelseg.models import create_model, prefers_channels_last
from pixelseg.models.complexity import meta_first

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What a run starts from: every setting decided, the checked data and its split."""

    cfg: TrainConfig
    data: CheckedData
    split: dict[str, list[str]]
    stride: int  # what the model's input sides must be multiples of
    weights_source: str | None  # where the pretrained encoder's weights were found


def resolve(
    cfg: TrainConfig, device: torch.device, world: World, run_dir: Path, state: dict | None,
    deadline: float | None = None,
) -> Plan:  # fmt: skip
    """Decide every setting ``cfg`` leaves open, for a run in ``run_dir``.

    ``state``: a resumed run's ``last.pt`` (its settings were decided when it started);
    ``deadline``: a time budget's end (a ``time.perf_counter()`` value), to which the size
    and the default U-Net's width are fitted. A model the user named is checked, and its
    weights file fetched, before the data is read. Under torchrun, choices that depend on
    the machine (weights found, memory, speed) are rank 0's for every process.
    """
    cfg = resolve_class_settings(cfg).with_defaults()
    fetch = state is None and world.is_main  # only rank 0 loads weights: DDP copies its own
    early = cfg.model != "auto" and cfg.encoder_weights != "auto"
    if cfg.model != "auto":  # a bad name or option fails before the data is read
        stride, source = check_settings(cfg, fetch=fetch and early)
    data = CheckedData.read(cfg)
    cfg = data.input_channels(cfg)
    if state is None:
        cfg = choose_model(cfg, cfg.in_channels).with_defaults()
        # before the weights are fetched: another machine may lack them
        model, kwargs, weights = world.broadcast((cfg.model, cfg.model_kwargs, cfg.encoder_weights))
        cfg = replace(cfg, model=model, model_kwargs=kwargs, encoder_weights=weights)
        chosen = choose_precision(
            cfg.precision, cfg.channels_last, device, prefers_channels_last(cfg.model)
        )
        if chosen.measured:
            log.info(f"{chosen.describe()}: {chosen.measured}")
        layout = "on" if chosen.channels_last else "off"
        cfg = replace(cfg, precision=chosen.name, channels_last=layout)
    if not early:
        stride, source = check_settings(cfg, fetch=fetch)
    split = _split(cfg, data, run_dir, state is not None, world.is_main)
    heights = [i.height for i in data.report.infos]
    widths = [i.width for i in data.report.infos]
    n_train = len(split["train"])
    # (a resumed run's size was decided when it started; under torchrun rank 0 times it
    # alone, as the others would slow its measurement down, and its choice is broadcast)
    if state is None and world.is_main:
        cfg = choose_size_for_latency(cfg, heights, widths, stride)
    if deadline is not None:
        left = deadline - time.perf_counter()
        cfg = choose_for_budget(cfg, heights, widths, stride, left, n_train, cfg.in_channels,
                                device)  # fmt: skip
    cfg = choose_size(cfg, heights, widths, stride)
    cfg = choose_batch_size(cfg, n_train, cfg.in_channels, device)
    # Settings chosen from measurements (memory, step times) can differ between processes:
    # rank 0's hold for all.
    cfg = replace(world.broadcast(cfg), progress=cfg.progress)
    return Plan(cfg, data, split, stride, source)


def _split(
    cfg: TrainConfig, data: CheckedData, run_dir: Path, resuming: bool, write: bool
) -> dict[str, list[str]]:
    fractions = [info.foreground for info in data.report.infos]
    split = prepare_split(cfg, data.samples, fractions, run_dir, resuming, write)
    missing = sorted(set().union(*split.values()) - {s.stem for s in data.samples})
    if resuming and missing:
        raise DataError(
            f"{cfg.data} lacks {len(missing)} image(s) of the run's split (e.g. {missing[0]}); "
            "resume with the data the run was started on"
        )
    return split


@dataclass
class CheckedData:
    """The data set's samples and the check's report on them (read once per run)."""

    fmt: str
    samples: list[Sample]
    report: DatasetReport

    @classmethod
    def read(cls, cfg: TrainConfig) -> CheckedData:
        """Find and check every pair; refuse to train on a broken data set."""
        fmt, samples = find_samples(cfg.data, cfg.format)
        # Large data sets (cached on disk) remember each pair's check, so that a rerun only
        # decodes what changed; small ones check in seconds and leave no files behind.
        remember = cfg.cache == "disk" or (cfg.cache == "auto" and len(samples) >= 2000)
        report = check_samples(
            cfg.data, fmt, samples, cfg.num_classes, cfg.progress, cfg.ignore_index,
            cfg.class_colors, remember,
        )  # fmt: skip
        report.raise_if_problems()
        return cls(fmt, samples, report)

    def input_channels(self, cfg: TrainConfig) -> TrainConfig:
        """``in_channels`` when left to pixelseg: 1 when every image is greyscale (EM
        slices, X-rays), else 3."""
        if cfg.in_channels is not None:
            return cfg
        channels = self.report.channels
        log.info(
            f"input channels: {channels} ({'greyscale' if channels == 1 else 'colour'} images)"
        )
        return replace(cfg, in_channels=channels)


def prepare_split(
    cfg: TrainConfig, samples: list[Sample], fractions: list[float], run_dir: Path,
    resuming: bool, write: bool = True,
) -> dict[str, list[str]]:  # fmt: skip
    """Reuse the run's ``split.json`` when resuming, else make (and, with ``write``, save) a
    split: the data set's own, whole sequences apart when the file names show sequences
    (``0016E5_07959``), else stratified. It depends on the split seed (``split_seed``, else
    ``seed``) alone, so every process draws the same one."""
    path = run_dir / "split.json"
    if resuming:
        return load_split(path)
    if all(s.subset is not None for s in samples):  # keep the data set's own split (CamVid)
        split = {k: sorted(s.stem for s in samples if s.subset == k) for k in SPLITS}
        if not split["train"]:
            present = ", ".join(f"{k}/" for k in SPLITS if split[k])
            raise DataError(
                f"{cfg.data}: the data set's own split has no training images (it holds "
                f"{present} only); training needs train/ + trainannot/"
            )
        shared = _shared_sequences(split)
        if shared:
            log.info(f"note: the data set's own validation images come from sequences that "
                f"training shows too ({', '.join(shared)}): validation scores will flatter "
                "what images of new sequences get")  # fmt: skip
        if write:
            save_split(path, split)
        return split
    stems = [s.stem for s in samples]
    seqs = sequences(stems)
    split = None
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    if seqs is not None:  # whole sequences (or patients) apart: no near-copy on both sides
        split = make_sequence_split(stems, seqs, cfg.val_fraction, cfg.test_fraction, split_seed)
        if split is None:
            log.info(f"{len(set(seqs))} sequences in the file names, but none small enough to hold "
                "out without starving training: a split of single images")  # fmt: skip
    if split is not None:
        parts = {part: set(split[part]) for part in ("val", "test")}
        held = {part: sorted({q for q, t in zip(seqs, stems, strict=True) if t in members})
                for part, members in parts.items()}  # fmt: skip
        log.info(f"split by sequence ({len(set(seqs))} in the file names): val "
                 f"{', '.join(held['val'])}; test {', '.join(held['test'])}")  # fmt: skip
    else:
        if all(s.group is not None for s in samples):
            strata = [s.group for s in samples]  # e.g. PH2's diagnosis
        else:
            strata = foreground_strata(fractions)  # small / medium / large objects
        split = make_split(stems, cfg.val_fraction, cfg.test_fraction, split_seed, strata)
    if write:
        save_split(path, split)
    return split


def _shared_sequences(split: dict[str, list[str]]) -> list[str]:
    """The sequences (read from the file names) that both training and validation hold."""
    stems = split["train"] + split["val"]
    seqs = sequences(stems)
    if seqs is None:
        return []
    train = set(seqs[: len(split["train"])])
    return sorted(train.intersection(seqs[len(split["train"]) :]))


def check_settings(cfg: TrainConfig, fetch: bool) -> tuple[int, str | None]:
    """Fail on a bad model name/option, loss or encoder weights before spending time on
    training; with ``fetch``, get the pretrained weights now (a resumed run has its own).

    Returns the model's stride (what input sides must be multiples of) and where the
    pretrained encoder weights were found (None: none loaded).
    """
    build_loss(cfg.loss, cfg.num_classes, ignore_index=cfg.ignore_index)

    model = meta_first(  # the meta device: no weights allocated (some need real tensors)
        lambda: create_model(
            cfg.model, in_channels=cfg.in_channels or 3, num_classes=cfg.num_classes,
            **cfg.model_kwargs,
        )
    )  # fmt: skip
    source = finetune.check_finetune_settings(cfg, model, fetch=fetch)
    return int(getattr(model, "stride", 1)), source

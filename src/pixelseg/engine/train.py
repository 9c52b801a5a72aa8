"""Training: ``fit(config)`` runs the whole job, ``train_one_epoch`` one pass.

Shaped after torchvision's references/segmentation/train.py: a short epoch function, an
evaluation at the original resolution after each epoch, and the best checkpoint kept by
validation score (Dice for binary, mIoU for multi-class), with early stopping.
"""

from __future__ import annotations

import logging
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pixelseg.config import TrainConfig, parse_duration
from pixelseg.data.check import DatasetReport, check_samples
from pixelseg.data.dataset import SegmentationDataset
from pixelseg.data.layouts import Sample, find_samples
from pixelseg.data.split import (
    SPLITS,
    foreground_strata,
    load_split,
    make_sequence_split,
    make_split,
    save_split,
    select,
    sequences,
)
from pixelseg.data.transforms import Augment, BatchTransform
from pixelseg.engine import checkpoint, distributed, finetune
from pixelseg.engine.budget import EPOCH_STEPS, Clock, plan_epochs, planned_epochs
from pixelseg.engine.configure import (
    choose_batch_size,
    choose_class_weights,
    choose_for_budget,
    choose_model,
    choose_size,
    resolve_class_settings,
)
from pixelseg.engine.console import console
from pixelseg.engine.device import seed_everything
from pixelseg.engine.distributed import World
from pixelseg.engine.ema import WeightAverage
from pixelseg.engine.evaluate import calibrate_threshold, choose_postprocess, evaluate_model
from pixelseg.engine.interrupt import StopSignals, TrainingInterrupted
from pixelseg.engine.optimizer import adamw
from pixelseg.engine.precision import Precision, choose_precision
from pixelseg.engine.sampling import EpochSampler
from pixelseg.engine.schedule import Schedule
from pixelseg.engine.state import Progress, TrainingState, random_state, unwrap
from pixelseg.errors import DataError, PixelsegError, SettingsError
from pixelseg.losses import build_loss
from pixelseg.models import count_parameters, create_model, prefers_channels_last
from pixelseg.models.complexity import meta_first
from pixelseg.models.saved import load_model, save_weights
from pixelseg.report import plot_curves, write_csv
from pixelseg.runconfig import RunConfig
from pixelseg.version import __version__

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_score: float
    score_name: str
    history: list[dict]


LOSS_DISPLAY_EVERY = 10  # steps between updates of the progress bar's running loss


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    bar: tqdm | None = None,
    progress: Progress | None = None,
    after_step: Callable[[Progress], None] | None = None,
    precision: Precision | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ema: WeightAverage | None = None,
) -> float:
    """One pass over ``loader``; returns the mean training loss of the epoch.

    ``progress`` holds the steps and loss of the part of the epoch done before (a run
    resumed mid-epoch) and is updated in place; ``after_step(progress)`` runs after every
    step (mid-epoch checkpoints, stop requests). ``precision``: autocast dtype and memory
    layout (float32 NCHW when None); ``scaler``: fp16's gradient scaler; ``ema``: a weight
    average to update after each optimizer step.
    """
    model.train()
    progress = progress if progress is not None else Progress()
    precision = precision or Precision("fp32", False, device.type)
    for batch in loader:
        images, masks = transform(batch, device)
        images = precision.prepare_batch(images)
        with precision.autocast():
            loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        stepped = True
        if scaler is not None:  # fp16: scale the loss so small gradients do not vanish
            scale = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skipped when the gradients overflowed
            scaler.update()
            stepped = scaler.get_scale() >= scale  # a lowered scale marks a skipped step
        else:
            loss.backward()
            optimizer.step()
        if stepped:
            scheduler.step()
            if ema is not None:
                ema.update(unwrap(model))
        progress.add_loss(loss, len(images))  # summed on the device: no wait for the GPU
        if bar is not None and not bar.disable:
            bar.update(1)
            if progress.step % LOSS_DISPLAY_EVERY == 0:  # reading the loss is a host sync
                mean = progress.settle().loss_sum / progress.count
                bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
        if after_step is not None:
            after_step(progress)
    progress.settle()
    return progress.loss_sum / max(progress.count, 1)


def prepare_split(
    cfg: TrainConfig, samples: list[Sample], fractions: list[float], run_dir: Path,
    resuming: bool, write: bool = True,
) -> dict[str, list[str]]:  # fmt: skip
    """Reuse the run's ``split.json`` when resuming, else make (and, with ``write``, save) a
    split: the data set's own, whole sequences apart when the file names show sequences
    (``0016E5_07959``), else stratified. It depends on the seed alone, so every process
    draws the same one."""
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
    if seqs is not None:  # whole sequences (or patients) apart: no near-copy on both sides
        split = make_sequence_split(stems, seqs, cfg.val_fraction, cfg.test_fraction, cfg.seed)
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
        split = make_split(stems, cfg.val_fraction, cfg.test_fraction, cfg.seed, strata)
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


def run_config(
    cfg: TrainConfig, mean: list[float], std: list[float], in_channels: int,
    source_size: tuple[int, int] | None = None,
) -> RunConfig:  # fmt: skip
    """The run's description of its model: enough to rebuild it and its preprocessing.

    ``source_size``: the training images' median (height, width) before resizing to
    ``size``, so tiled prediction can look at new images at the scale training did.
    """
    return RunConfig(
        model=cfg.model, model_kwargs=cfg.model_kwargs, in_channels=in_channels,
        num_classes=cfg.num_classes, size=cfg.size, source_size=source_size, mean=mean,
        std=std, threshold=RunConfig.threshold if cfg.threshold is None else cfg.threshold,
        ignore_index=cfg.ignore_index, class_names=cfg.class_names,
        class_colors=cfg.class_colors, score_name=cfg.score_name,
        pixelseg_version=__version__, train=cfg.to_dict(),
    )  # fmt: skip


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


def build_datasets(
    cfg: TrainConfig,
    data: CheckedData,
    run_dir: Path,
    resuming: bool,
    stride: int,
    deadline: float | None = None,
    device: torch.device | None = None,
    write: bool = True,
) -> tuple[SegmentationDataset, SegmentationDataset, TrainConfig]:
    """Split the checked data (or reuse the run's split) and cache train/val.

    Settings left to the data are filled in and returned with the data sets: the training
    size (see :func:`choose_size`); with a ``deadline`` (a ``time.perf_counter()`` value: a
    time budget's end) the size and the default U-Net's width are fitted to the time left
    (see :func:`choose_for_budget`). Only with ``write`` is ``split.json`` saved (in a
    distributed run, by rank 0).
    """
    samples, report = data.samples, data.report
    fractions = [info.foreground for info in report.infos]
    split = prepare_split(cfg, samples, fractions, run_dir, resuming, write)
    missing = sorted(set().union(*split.values()) - {s.stem for s in samples})
    if resuming and missing:
        raise DataError(
            f"{cfg.data} lacks {len(missing)} image(s) of the run's split (e.g. {missing[0]}); "
            "resume with the data the run was started on"
        )
    channels = cfg.in_channels
    heights, widths = [i.height for i in report.infos], [i.width for i in report.infos]
    if deadline is not None:
        left = deadline - time.perf_counter()
        cfg = choose_for_budget(cfg, heights, widths, stride, left, len(split["train"]),
                                channels, device or torch.device("cpu"))  # fmt: skip
    cfg = choose_size(cfg, heights, widths, stride)
    train_set = SegmentationDataset(
        select(samples, split["train"]), cfg.size, cfg.num_classes, channels=channels,
        colors=cfg.class_colors, ignore_index=cfg.ignore_index, cache=cfg.cache,
    )  # fmt: skip
    val_samples = select(samples, split["val"])
    if not val_samples:
        warnings.warn(
            f"no image held out for validation ({len(samples)} in all): the validation scores "
            "are measured on the training images",
            stacklevel=3,
        )
        val_samples = select(samples, split["train"])
    val_set = SegmentationDataset(
        val_samples, cfg.size, cfg.num_classes, keep_original=True, channels=channels,
        colors=cfg.class_colors, ignore_index=cfg.ignore_index, cache=cfg.cache,
    )  # fmt: skip
    return train_set, val_set, cfg


RESUME_OVERRIDES = (
    "data", "epochs", "patience", "workers", "device", "progress", "postprocess", "save_every",
    "compile", "cache",
)  # fmt: skip
AUTO_RESUME_OVERRIDES = ("workers", "device", "progress", "save_every", "compile", "cache")
# settings whose "auto" is decided when a run starts and saved as decided: a rerun that
# leaves them to pixelseg again continues with the saved choice (like a None size)
DECIDED_AT_START = ("precision", "channels_last", "model", "encoder_weights")


def resume_config(run_dir: str | Path, **overrides) -> TrainConfig:
    """The saved settings of the run in ``run_dir``, with the few that may change on resume.

    Everything that shapes the model, the data or the optimisation (model, size, batch size,
    learning rate, loss, split...) stays as it was: changing it would not be a continuation.
    """
    state = _saved_state(run_dir)
    unknown = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
    # Anything else that differs from the saved settings is refused by fit (see _open_run).
    kept = {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig.from_dict({**state["config"], **kept, "out": str(run_dir)})


def resume(run_dir: str | Path, **overrides) -> TrainResult:
    """Continue the run in ``run_dir`` (see :func:`resume_config` for what may change)."""
    return fit(resume_config(run_dir, **overrides), resume=True)


def _saved_state(run_dir: str | Path) -> dict:
    state = checkpoint.load_state(run_dir)
    if state is None:
        raise PixelsegError(f"{run_dir}: nothing to resume (no {checkpoint.STATE_FILE})")
    return state


def _open_run(cfg: TrainConfig, resuming: bool) -> tuple[TrainConfig, Path, dict | None]:
    """Check the run folder: a new run must not overwrite one, a resumed run must match.

    A folder holding an unfinished run (killed, crashed, pre-empted, or restarted by
    torchrun) is resumed without asking when the settings match. Returns the settings to
    use: for a resumed run the saved ones, with what may change (``RESUME_OVERRIDES``) taken
    from ``cfg``; settings left to the data (None) are kept.
    """
    run_dir = Path(cfg.out)
    state = _saved_state(run_dir) if resuming else checkpoint.load_state(run_dir)
    if state is None:
        return cfg, run_dir, None
    if not resuming:
        if state.get("finished", True):
            raise PixelsegError(
                f"{run_dir} already holds a finished run; use --resume (with more --epochs) to "
                "continue it or choose another --out"
            )
        log.info(f"{run_dir} holds an unfinished run: resuming it")
    # runs saved before these settings existed trained in float32 NCHW
    saved = {"precision": "fp32", "channels_last": "off", **state["config"]}
    now = cfg.to_dict()
    # Asked to resume, the run may change RESUME_OVERRIDES; picked up by rerunning the same
    # command, it continues as it was (a time budget's planned epochs included).
    free = RESUME_OVERRIDES if resuming else AUTO_RESUME_OVERRIDES
    planned = ("epochs", "patience") if saved.get("time_budget") and not resuming else ()
    changed = sorted(
        k
        for k in saved
        if k not in (*free, *planned, "out")
        and now[k] is not None
        and saved[k] != now[k]
        and not (k in DECIDED_AT_START and now[k] == "auto")
        # chosen with the model (options given without a model are unet's: compared)
        and not (k == "model_kwargs" and now["model"] == "auto" and not now["model_kwargs"])
    )
    if changed:
        raise SettingsError(
            f"cannot change {', '.join(changed)} when resuming {run_dir}; a resumed run may "
            f"only change {', '.join(free)}"
            + ("" if resuming else " (or choose another --out for a new run)")
        )
    merged = {**saved, **{k: now[k] for k in free}, "out": str(run_dir)}
    return TrainConfig.from_dict(merged), run_dir, state


def _calibrate(
    cfg: TrainConfig, run_dir: Path, val_set: SegmentationDataset, transform: BatchTransform,
    device: torch.device,
) -> None:  # fmt: skip
    """Binary runs: store in the run's config the threshold that maximises validation Dice for
    the best weights (unless one was given) and the clean-up steps that raise it."""
    model, config = load_model(run_dir, device)
    threshold = cfg.threshold
    if threshold is None:
        threshold, dice = calibrate_threshold(model, val_set, transform, device, cfg.batch_size)
        log.info(f"threshold {threshold:.2f} (validation dice {dice:.4f} with the best weights)")
    steps: list[str] = []
    if cfg.postprocess == "auto":
        steps, scores = choose_postprocess(
            model, val_set, transform, device, threshold, cfg.batch_size
        )
        tried = ", ".join(f"{name} {dice:.4f}" for name, dice in scores.items())
        log.info(f"post-processing: {'+'.join(steps) or 'none'} (validation dice: {tried})")
    config.replace(threshold=threshold, postprocess=steps).write(run_dir)


def _check_settings(cfg: TrainConfig, fetch: bool) -> tuple[int, str | None]:
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


def _schedule(cfg: TrainConfig, steps: int, state: dict | None) -> Schedule:
    """A fresh warm-up + cosine, the saved one, or a continuation to a new epoch count."""
    if state is None:
        return Schedule(cfg.epochs * steps, cfg.warmup_epochs * steps)
    saved = Schedule(**state["schedule"])
    if cfg.epochs == state["config"]["epochs"]:
        return saved
    done = state["epoch"] * steps
    return Schedule(cfg.epochs * steps, begin=done, start=saved(done))  # the rate reached


def _setup(
    cfg: TrainConfig, train_set: SegmentationDataset, device: torch.device, state: dict | None,
    world: World,
) -> tuple[TrainingState, DataLoader, EpochSampler]:  # fmt: skip
    model = create_model(
        cfg.model, in_channels=train_set.channels, num_classes=cfg.num_classes,
        **cfg.model_kwargs,
    )  # fmt: skip
    if state is None and world.is_main:  # a resumed run has its own; DDP copies rank 0's
        finetune.load_pretrained(model, cfg)
    precision = choose_precision(cfg.precision, cfg.channels_last, device)
    model = precision.prepare_model(model.to(device))
    # a copy of the model as it starts (a resumed run's average is restored from last.pt)
    ema = WeightAverage(model, cfg.ema) if cfg.ema else None
    if cfg.sync_batchnorm and device.type != "cuda":
        raise SettingsError("sync_batchnorm needs CUDA GPUs (SyncBatchNorm has no CPU version)")
    if world.distributed:
        if cfg.sync_batchnorm:  # batch statistics over all processes' batches
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # averages the gradients over the processes; starts from rank 0's weights
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:  # in place (state_dict keys unchanged), around DDP so its hooks overlap
        model.compile()
    # Under a time budget an epoch is at least EPOCH_STEPS steps (several passes over a
    # small data set), so validating and saving after each one stays a small part of it.
    passes = len(train_set)
    if cfg.time_budget is not None:
        passes = max(passes, EPOCH_STEPS * cfg.batch_size * world.size)
    sampler = EpochSampler(len(train_set), passes, cfg.seed, world.rank, world.size)
    # The loader gets a generator of its own: starting an iteration draws a worker seed from
    # it, which from the global one would shift the augmentation of a run resumed mid-epoch.
    loader = DataLoader(
        train_set, batch_size=cfg.batch_size, sampler=sampler,
        drop_last=sampler.per_rank > cfg.batch_size, num_workers=cfg.workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    groups = finetune.param_groups(unwrap(model), cfg)
    optimizer = adamw(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = _schedule(cfg, len(loader), state)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, finetune.group_schedules(schedule, optimizer, cfg, len(loader))
    )
    t = TrainingState(model, optimizer, scheduler, schedule, history=[], precision=precision,
                      scaler=precision.scaler(), ema=ema)  # fmt: skip
    return t, loader, sampler


@dataclass
class _Session:
    """One training session's fixed parts, so the epoch loop reads as a loop."""

    cfg: TrainConfig
    run_dir: Path
    config: RunConfig  # the run's description of its model
    mean: list[float]
    std: list[float]
    t: TrainingState
    loader: DataLoader
    sampler: EpochSampler
    train_tf: BatchTransform
    eval_tf: BatchTransform
    loss_fn: torch.nn.Module
    val_set: SegmentationDataset
    device: torch.device
    world: World
    steps: int  # training steps per epoch in each process
    clock: Clock | None = None  # a time budget's

    def save(self, epoch: int, progress: Progress | None = None, finished: bool = False) -> None:
        """Write ``last.pt`` (rank 0). Every process must call it: their random states and
        progress are gathered, so each one resumes with its own. A finished run's last save
        is rank 0's alone (nothing is resumed from it but the weights)."""
        mine = (random_state(), asdict(progress.settle()) if progress else None)
        parts = [mine] if finished else self.world.gather(mine)
        if self.world.is_main:
            state = self.t.state(epoch, self.cfg, self.mean, self.std, progress, finished)
            ranks = {"random_ranks": [r for r, _ in parts], "progress_ranks": [p for _, p in parts],
                     "world_size": self.world.size}  # fmt: skip
            extra = {
                "clock": self.clock.to_state() if self.clock else None,
                "encoder_weights_source": self.config.encoder_weights_source,
            }
            checkpoint.save_state(self.run_dir, {**state, **ranks, **extra})


def fit(
    cfg: TrainConfig, resume: bool = False, on_epoch_end: Callable[[dict], None] | None = None
) -> TrainResult:
    """Train a model as ``cfg`` says and write the run folder ``cfg.out``.

    With ``resume`` (or when ``cfg.out`` holds an unfinished run with the same settings),
    continue from the run folder's ``last.pt`` exactly where it stopped, up to
    ``cfg.epochs``; use :func:`resume` to load the saved settings. ``on_epoch_end`` is called
    with each epoch's history row after its checkpoint is written (raise to stop). SIGINT or
    SIGTERM saves a checkpoint at the current step and raises :class:`TrainingInterrupted`.
    Launched by torchrun, each process trains its share (:mod:`pixelseg.engine.distributed`);
    ``on_epoch_end`` then runs in every process (let one raise, and all must).
    """
    started = time.perf_counter()
    world, device, joined = distributed.start(cfg.device)
    try:
        with console(cfg.progress and world.is_main):  # one process speaks: rank 0
            return _fit(cfg, resume, on_epoch_end, world, device, started)
    finally:
        distributed.stop(joined)


def _fit(
    cfg: TrainConfig, resume: bool, on_epoch_end: Callable[[dict], None] | None, world: World,
    device: torch.device, started: float,
) -> TrainResult:  # fmt: skip
    run, start_epoch, progress = _prepare(cfg, resume, world, device, started)
    with StopSignals() as stop:
        epoch = _train_epochs(run, start_epoch, progress, stop, on_epoch_end)
    cfg, t = run.cfg, run.t  # a time budget may have re-planned the epochs
    if world.is_main:  # rank 0 finishes alone; the others wait for it below
        if cfg.num_classes == 1 and t.best_epoch:
            _calibrate(cfg, run.run_dir, run.val_set, run.eval_tf, device)
        plot_curves(t.history, run.run_dir / "curves.png", cfg.score_name)
        run.save(epoch, finished=True)
    # No process leaves (and tears down its connections) while another still works: an
    # early exit has crashed gloo's peers. The group's timeout allows a long calibration.
    world.barrier()
    return TrainResult(run.run_dir, t.best_epoch, t.best_score, cfg.score_name, t.history)


def _settle_model(
    cfg: TrainConfig, state: dict | None, world: World, device: torch.device,
) -> tuple[TrainConfig, CheckedData, int, str | None]:  # fmt: skip
    """Check the data, then decide the model, its starting weights and its precision (once,
    when a run starts; rank 0's choice holds for every process: another machine may lack
    the weights). A model the user named is checked, and its weights file fetched, before
    the data is read. Returns the settings, the checked data, the model's stride and where
    the pretrained weights were found (only rank 0 loads them: DDP copies its weights)."""
    fetch = state is None and world.is_main
    early = cfg.model != "auto" and cfg.encoder_weights != "auto"
    if cfg.model != "auto":  # a bad model name, option or weights file fails before the data
        stride, source = _check_settings(cfg, fetch=fetch and early)
    data = CheckedData.read(cfg)
    cfg = data.input_channels(cfg)
    if state is None:  # decided once, saved, and kept by a resumed run (on any device)
        cfg = choose_model(cfg, cfg.in_channels)
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
        stride, source = _check_settings(cfg, fetch=fetch)
    return cfg, data, stride, source


def _prepare(
    cfg: TrainConfig, resume: bool, world: World, device: torch.device, started: float
) -> tuple[_Session, int, Progress | None]:
    """Everything before the first step: the run folder, the data, the settings left to
    pixelseg, the model, and the saved state of a resumed run."""
    if not world.is_main:
        cfg = replace(cfg, progress=False)  # one progress bar, rank 0's
    cfg, run_dir, state = _open_run(cfg, resume)
    if state is not None and state.get("world_size", 1) != world.size:
        n = state.get("world_size", 1)
        raise SettingsError(
            f"{run_dir} was trained with {n} process(es) and must resume with as many "
            f"(pixelseg train --nproc {n}, or torchrun --nproc-per-node {n}): its learning-rate "
            "schedule, data order and random states are per process"
        )
    cfg = resolve_class_settings(cfg)  # a no-op for a resumed run's saved (resolved) settings
    cfg, data, stride, source = _settle_model(cfg, state, world, device)
    seed_everything(cfg.seed + world.rank)  # each process its own augmentation
    budget = parse_duration(cfg.time_budget) if cfg.time_budget and state is None else None
    deadline = started + budget if budget else None
    resuming = state is not None
    # A disk cache is decoded by rank 0 alone; the others wait, then open what it wrote
    # (each decoding its own copy would cost N times the CPU and the disk).
    shared_cache = world.distributed and cfg.cache != "memory"
    if shared_cache and not world.is_main:
        world.barrier()
    train_set, val_set, mine = build_datasets(
        cfg, data, run_dir, resuming, stride, deadline, device, write=world.is_main
    )
    if shared_cache and world.is_main:
        world.barrier()
    mine = choose_batch_size(mine, len(train_set), train_set.channels, device)
    # Settings chosen from measurements (memory, step times) can differ between processes:
    # rank 0's hold for all.
    agreed = replace(world.broadcast(mine), progress=mine.progress)
    if (agreed.size, agreed.in_channels) != (mine.size, mine.in_channels):
        train_set, val_set, _ = build_datasets(agreed, data, run_dir, True, stride, None, device)
    cfg = agreed
    # Normalise as the pretrained encoder expects, else with the training images' own
    # statistics (either kept from the first session).
    if state:
        mean, std = state["mean"], state["std"]
    else:
        in_channels = train_set.channels
        mean, std = finetune.input_normalization(cfg, in_channels) or train_set.channel_stats()
    config = run_config(cfg, mean, std, train_set.channels, train_set.median_original_size())
    # where the pretrained encoder's weights came from (kept from a resumed run's first start)
    source = state.get("encoder_weights_source") if state else source
    weights = state.get("class_weights") if state else choose_class_weights(cfg, train_set)
    config = config.replace(encoder_weights_source=source, class_weights=weights)
    loss_fn = build_loss(
        cfg.loss, cfg.num_classes, ignore_index=cfg.ignore_index,
        class_weights=torch.tensor(weights, dtype=torch.float32) if weights else None,
    ).to(device)  # fmt: skip
    t, loader, sampler = _setup(cfg, train_set, device, state, world)
    t.class_weights = weights
    start_epoch, progress = t.restore(state, world.rank, world.size) if state else (1, None)
    if state is not None and cfg.epochs != state["config"]["epochs"]:
        t.patience_start = start_epoch - 1  # more epochs: patience counts from here
    run = _Session(
        cfg, run_dir, config, mean, std, t, loader, sampler,
        BatchTransform(mean, std, Augment() if cfg.augment else None), BatchTransform(mean, std),
        loss_fn, val_set, device, world, len(loader),
    )  # fmt: skip
    epochs = f"{cfg.epochs} epoch" + "s" * (cfg.epochs > 1)
    processes = f" x {world.size} processes" if world.distributed else ""
    log.info(
        f"pixelseg: {cfg.model} ({count_parameters(t.model):,} parameters) on {device}"
        f"{processes}; {len(train_set)} train / {len(val_set)} val images at "
        f"{cfg.size[0]}x{cfg.size[1]}; loss {cfg.loss}; {t.precision.describe()}; "
        f"{f'up to {cfg.time_budget}' if budget else epochs}"
    )
    # A time budget plans the number of epochs from the time the first epochs take; a
    # resumed run gets what is left of it (an older last.pt without a clock: no budget).
    if budget:
        run.clock = Clock(budget, started, ceiling=cfg.epochs)
    elif state is not None and state.get("clock") and cfg.time_budget:
        run.clock = Clock.from_state(state["clock"])
    return run, start_epoch, progress


def _train_epochs(
    run: _Session, start_epoch: int, progress: Progress | None, stop: StopSignals,
    on_epoch_end: Callable[[dict], None] | None,
) -> int:  # fmt: skip
    """Train from ``start_epoch`` (``progress`` steps into it) until the epochs, the time
    budget or the patience run out; returns the last epoch finished."""
    t, clock = run.t, run.clock
    epoch = start_epoch - 1
    while epoch < run.cfg.epochs:
        if clock is not None and progress is None:  # (a resumed epoch was begun already)
            # rank 0's clock decides for every process (their clocks need not agree)
            stop_now, plan = run.world.broadcast(_budget_decision(clock, epoch, run.cfg.epochs))
            if stop_now:
                log.info(f"time budget {run.cfg.time_budget} reached after {epoch} epochs")
                break
            if plan is not None:
                run.cfg = plan_epochs(run.cfg, plan[0], t, run.steps, plan[1])
                run.config = run.config.replace(train=run.cfg.to_dict())
        row = _one_epoch(run, epoch + 1, progress or Progress(), stop)
        progress, epoch = None, epoch + 1
        if on_epoch_end is not None:
            on_epoch_end(row)
        if run.world.any(stop.requested is not None):  # arrived during validation
            raise _interrupted(run, stop.requested, epoch, Progress())
        # Patience counts from the last improvement (or from where more epochs were given).
        patience = run.cfg.patience
        if patience and epoch - max(t.best_epoch, t.patience_start) >= patience:
            log.info(f"early stopping: no better val_{run.cfg.score_name} for {patience} epochs")
            break
    return epoch


def _budget_decision(
    clock: Clock, done: int, planned: int
) -> tuple[bool, tuple[int, float] | None]:
    """(stop now, (epochs, seconds per epoch) of a new plan or None) after ``done`` epochs."""
    clock.tops.append(time.perf_counter())
    if done > 0 and not clock.room_for_an_epoch():
        return True, None
    if clock.replan(done + 1, planned):
        return False, (planned_epochs(clock, done), clock.per_epoch)
    return False, None


def _one_epoch(run: _Session, epoch: int, progress: Progress, stop: StopSignals) -> dict:
    """Train epoch ``epoch`` from ``progress``, validate, save; returns its history row."""
    cfg, t, name, world = run.cfg, run.t, run.cfg.score_name, run.world
    t0 = time.perf_counter()
    run.sampler.set_epoch(epoch, start=min(progress.step * cfg.batch_size, run.sampler.per_rank))
    steps = progress.step + len(run.loader)

    def after_step(p: Progress) -> None:
        stopping = world.any(stop.requested is not None)  # all processes stop at one step
        # every save_every steps, but not at the epoch's end: its own checkpoint follows
        every = cfg.save_every and p.step % cfg.save_every == 0 and p.step < steps
        if stopping or every:
            run.save(epoch - 1, p)
        if stopping:
            raise _interrupted(run, stop.requested, epoch - 1, p)

    last = f" (last val_{name} {t.history[-1][f'val_{name}']:.3f})" if t.history else ""
    with tqdm(total=steps, initial=progress.step, unit="batch",
              desc=f"epoch {epoch}/{cfg.epochs}{last}", leave=False,
              disable=None if cfg.progress else True) as bar:  # fmt: skip
        train_one_epoch(
            t.model, run.loader, run.train_tf, run.loss_fn, t.optimizer, t.scheduler,
            run.device, bar, progress, after_step, t.precision, t.scaler, t.ema,
        )  # fmt: skip
    parts = world.gather((progress.loss_sum, progress.count))  # the loss over all processes
    train_loss = sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)
    # every process evaluates rank 0's model (the one saved), outside DDP: a process with no
    # validation image of its own must not be waited for inside a forward pass
    evaluated = t.evaluated_model()
    world.broadcast_buffers(evaluated)
    metrics, _, _ = evaluate_model(
        evaluated, run.val_set, run.eval_tf, run.device, cfg.threshold or 0.5,
        cfg.ignore_index, cfg.class_names, cfg.batch_size, loss_fn=run.loss_fn, world=world,
    )  # fmt: skip
    score = metrics[name]
    row = {
        "epoch": epoch, "train_loss": round(train_loss, 6),
        "val_loss": round(metrics["loss"], 6), f"val_{name}": round(score, 6),
        "lr": t.optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
    t.history.append(row)
    improved = score > t.best_score
    if improved:  # the best weights so far: these are what predict/evaluate use
        t.best_score, t.best_epoch = score, epoch
        if world.is_main:
            save_weights(run.run_dir, evaluated)
            best = {"best": {"epoch": epoch, name: score}}
            run.config.replace(**best).write(run.run_dir)
    run.save(epoch)
    if world.is_main:
        write_csv(run.run_dir / "history.csv", t.history)
    log.info(
        f"epoch {epoch:3d}/{cfg.epochs}  train_loss {train_loss:.4f}  "
        f"val_loss {metrics['loss']:.4f}  val_{name} {score:.4f}" + "  *best*" * improved
    )
    return row


def _interrupted(run: _Session, signum: int | None, epoch: int, p: Progress) -> TrainingInterrupted:
    signum = signum or signal.SIGTERM  # another process got it: torchrun sends SIGTERM
    where = f"epoch {epoch}" + (f" and {p.step} steps of epoch {epoch + 1}" if p.step else "")
    return TrainingInterrupted(
        f"stopped by {signal.Signals(signum).name}; checkpoint saved after {where}: continue "
        f"with pixelseg train --resume {run.run_dir}",
        signum,
    )

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
from pixelseg.data.dataset import SegmentationDataset
from pixelseg.data.split import select
from pixelseg.data.transforms import Augment, BatchTransform
from pixelseg.engine import checkpoint, distributed, finetune
from pixelseg.engine.budget import EPOCH_STEPS, Clock, plan_epochs, planned_epochs
from pixelseg.engine.configure import choose_class_weights, choose_flips
from pixelseg.engine.console import console
from pixelseg.engine.device import seed_everything
from pixelseg.engine.distributed import World
from pixelseg.engine.ema import WeightAverage
from pixelseg.engine.evaluate import calibrate_threshold, choose_postprocess, evaluate_model
from pixelseg.engine.interrupt import StopSignals, TrainingInterrupted
from pixelseg.engine.optimizer import adamw
from pixelseg.engine.precision import Precision, choose_precision
from pixelseg.engine.resolve import Plan, resolve
from pixelseg.engine.sampling import EpochSampler
from pixelseg.engine.schedule import Schedule
from pixelseg.engine.state import Progress, TrainingState, random_state, unwrap
from pixelseg.errors import PixelsegError, SettingsError
from pixelseg.losses import build_loss
from pixelseg.models import count_parameters, create_model
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


def training_augment(cfg: TrainConfig) -> Augment | None:
    """The training batches' random transforms: the default ones, or with augmentation off
    only the random patch (when training on patches)."""
    crop = cfg.crop_size
    if cfg.augment:
        return Augment(vflip=cfg.flips != "horizontal", crop=crop)
    return Augment.crop_only(crop) if crop else None


def build_datasets(plan: Plan) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The plan's training and validation sets, decoded and cached at its size."""
    cfg, samples = plan.cfg, plan.data.samples
    kwargs = {"channels": cfg.in_channels, "colors": cfg.class_colors,
              "ignore_index": cfg.ignore_index, "cache": cfg.cache}  # fmt: skip
    trained = plan.split["train"] + (plan.split["val"] if cfg.train_on_val else [])
    train_set = SegmentationDataset(select(samples, trained), cfg.size, cfg.num_classes, **kwargs)
    val_samples = select(samples, plan.split["val"])
    if not val_samples:
        warnings.warn(
            f"no image held out for validation ({len(samples)} in all): the validation scores "
            "are measured on the training images",
            stacklevel=3,
        )
        val_samples = select(samples, plan.split["train"])
    val_set = SegmentationDataset(
        val_samples, cfg.size, cfg.num_classes, keep_original=True, **kwargs
    )
    return train_set, val_set


RESUME_OVERRIDES = (
    "data", "epochs", "patience", "workers", "device", "progress", "postprocess", "save_every",
    "compile", "cache",
)  # fmt: skip
AUTO_RESUME_OVERRIDES = ("workers", "device", "progress", "save_every", "compile", "cache")
# settings whose "auto" is decided when a run starts and saved as decided: a rerun that
# leaves them to pixelseg again continues with the saved choice (like a None size)
DECIDED_AT_START = ("precision", "channels_last", "model", "encoder_weights", "flips")


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
    saved = {"precision": "fp32", "channels_last": "off", "flips": "both", **state["config"]}
    now = cfg.with_defaults().to_dict()  # compared as a new run would start
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
        # (images the model trained on would choose a threshold that flatters it)
        if cfg.num_classes == 1 and t.best_epoch and not cfg.train_on_val:
            _calibrate(cfg, run.run_dir, run.val_set, run.eval_tf, device)
        plot_curves(t.history, run.run_dir / "curves.png", cfg.score_name)
        run.save(epoch, finished=True)
    # No process leaves (and tears down its connections) while another still works: an
    # early exit has crashed gloo's peers. The group's timeout allows a long calibration.
    world.barrier()
    return TrainResult(run.run_dir, t.best_epoch, t.best_score, cfg.score_name, t.history)


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
    budget = parse_duration(cfg.time_budget) if cfg.time_budget and state is None else None
    deadline = started + budget if budget else None
    plan = resolve(cfg, device, world, run_dir, state, deadline)
    cfg = plan.cfg
    seed_everything(cfg.seed + world.rank)  # each process its own augmentation
    # A disk cache is decoded by rank 0 alone; the others wait, then open what it wrote
    # (each decoding its own copy would cost N times the CPU and the disk).
    shared_cache = world.distributed and cfg.cache != "memory"
    if shared_cache and not world.is_main:
        world.barrier()
    train_set, val_set = build_datasets(plan)
    if shared_cache and world.is_main:
        world.barrier()
    cfg = choose_flips(cfg, train_set)  # (a resumed run's settings have it settled)
    # Normalise as the pretrained encoder expects, else with the training images' own
    # statistics (either kept from the first session).
    if state:
        mean, std = state["mean"], state["std"]
    else:
        in_channels = train_set.channels
        mean, std = finetune.input_normalization(cfg, in_channels) or train_set.channel_stats()
    config = run_config(cfg, mean, std, train_set.channels, train_set.median_original_size())
    # where the pretrained encoder's weights came from (kept from a resumed run's first start)
    source = state.get("encoder_weights_source") if state else plan.weights_source
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
        BatchTransform(mean, std, training_augment(cfg)), BatchTransform(mean, std),
        loss_fn, val_set, device, world, len(loader),
    )  # fmt: skip
    epochs = f"{cfg.epochs} epoch" + "s" * (cfg.epochs > 1)
    processes = f" x {world.size} processes" if world.distributed else ""
    crop = cfg.crop_size
    patches = f" (trained on {crop[0]}x{crop[1]} patches)" if crop else ""
    log.info(
        f"pixelseg: {cfg.model} ({count_parameters(t.model):,} parameters) on {device}"
        f"{processes}; {len(train_set)} train / {len(val_set)} val images at "
        f"{cfg.size[0]}x{cfg.size[1]}{patches}; loss {cfg.loss}; {t.precision.describe()}; "
        f"{f'up to {cfg.time_budget}' if budget else epochs}"
    )
    if cfg.train_on_val:
        log.info("the validation images train too (--train-on-val): their scores are scores on "
                 "seen images, the last epoch's weights are kept and binary runs keep threshold "
                 f"{config.threshold} with no clean-up steps")  # fmt: skip
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
    # the best weights so far are what predict/evaluate use; with the validation images in
    # training their score cannot choose an epoch, and the last one is kept
    improved = score > t.best_score or cfg.train_on_val
    if improved:
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

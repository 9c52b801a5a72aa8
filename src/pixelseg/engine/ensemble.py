"""``pixelseg ensemble RUN RUN ... --out DIR``: trained runs combined into one run folder.

The new run's model is an :class:`~pixelseg.models.ensemble.Ensemble` of the members'
weights; ``evaluate``, ``predict``, ``export`` and ``serve`` take it as any run. Its split
keeps its scores honest: the test images are those that are test images of every member
(so that no member trained or validated on them), the validation images likewise, and the
training images are all that any member trained on. Members trained with one
``--split-seed`` (and different ``--seed``) share their whole split.

A binary ensemble's threshold is the mean of its members' and its clean-up steps those that
every member chose: nothing is calibrated on images a member may have seen.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pixelseg.data.split import load_split, save_split
from pixelseg.errors import PixelsegError
from pixelseg.models.ensemble import ENSEMBLE, Ensemble
from pixelseg.models.saved import load_model, save_weights
from pixelseg.runconfig import RunConfig

__all__ = ["make_ensemble"]

log = logging.getLogger(__name__)

# what every member must agree on, for one model and one meaning of its outputs
SAME = ("in_channels", "num_classes", "size", "ignore_index", "class_names")


def make_ensemble(runs: list[str | Path], out: str | Path) -> Path:
    """Write the run folder ``out`` whose model averages the probabilities of ``runs``.

    Raises PixelsegError when fewer than two runs are given, a run is unreadable, the runs
    disagree on what the model sees or predicts (naming the run and the setting), or
    ``out`` is a folder that holds anything.
    """
    paths = [Path(r) for r in runs]
    if len(paths) < 2:
        raise PixelsegError("an ensemble needs two or more runs")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PixelsegError(f"{out}: exists and is not an empty folder; choose another --out")
    configs = [RunConfig.read(p) for p in paths]  # the cheap checks before any weights
    _check_agree(paths, configs)
    split = _shared_split(paths, configs)
    if not split["test"]:
        log.warning(f"{out}: no image is a test image of every run (were they trained with "
                    "one --split-seed?): evaluate it on other images (--split all)")  # fmt: skip
    model = Ensemble(
        [load_model(p, "cpu")[0] for p in paths],
        [c.mean for c in configs], [c.std for c in configs],
    )  # fmt: skip
    first = configs[0]
    members = [
        {"run": str(p), "model": c.model, "model_kwargs": c.model_kwargs,
         "mean": list(c.mean), "std": list(c.std)}
        for p, c in zip(paths, configs, strict=True)
    ]  # fmt: skip
    steps = [s for s in first.postprocess if all(s in c.postprocess for c in configs)]
    # test-time augmentation shows no upside-down views if any member never saw one
    upright = any(c.upright for c in configs)
    config = first.replace(
        model=ENSEMBLE,
        model_kwargs={"members": members},
        threshold=round(sum(c.threshold for c in configs) / len(configs), 4),
        postprocess=tuple(steps),
        encoder_weights_source=None,
        class_weights=None,
        best=None,
        train={**first.train, "flips": "horizontal" if upright else "both",
               "train_on_val": any(c.train.get("train_on_val") for c in configs),
               "ensemble_of": [str(p) for p in paths]},
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    save_split(out / "split.json", split)
    save_weights(out, model)
    config.write(out)  # last: a folder without config.json is no run
    log.info(
        f"ensemble of {len(paths)} runs in {out}: {len(split['test'])} test and "
        f"{len(split['val'])} validation images that no member trained on"
    )
    return out


def _check_agree(paths: list[Path], configs: list[RunConfig]) -> None:
    for path, config in zip(paths, configs, strict=True):
        if config.model == ENSEMBLE:
            raise PixelsegError(f"{path}: already an ensemble; give its runs instead")
        for name in SAME:
            mine, theirs = getattr(config, name), getattr(configs[0], name)
            if mine != theirs:
                raise PixelsegError(
                    f"{path}: {name} {mine!r}, but {paths[0]} has {theirs!r}; an ensemble's "
                    "runs must see the same images and predict the same classes"
                )


def _shared_split(paths: list[Path], configs: list[RunConfig]) -> dict[str, list[str]]:
    """Test (and val) images: those of every member; train: those any member trained on
    (a member trained with --train-on-val trained on its val images too)."""
    splits = []
    for path in paths:
        file = path / "split.json"
        if not file.is_file():
            raise PixelsegError(f"{path}: no split.json, so its test images are unknown")
        splits.append(load_split(file))
    trained = set()
    for split, config in zip(splits, configs, strict=True):
        trained |= set(split["train"])
        if config.train.get("train_on_val"):
            trained |= set(split["val"])
    held = {part: set.intersection(*(set(s[part]) for s in splits)) - trained
            for part in ("val", "test")}  # fmt: skip
    return {"train": sorted(trained), **{part: sorted(stems) for part, stems in held.items()}}

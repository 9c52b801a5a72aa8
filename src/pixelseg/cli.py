"""The ``pixelseg`` command: models, check, train, evaluate, predict, demo."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

from pixelseg.errors import PixelsegError, SettingsError


def _model_kwargs(pairs: list[str] | None) -> dict:
    """``--model-arg base_channels=16`` → {"base_channels": 16} (values parsed as JSON)."""
    kwargs = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SettingsError(f"--model-arg expects KEY=VALUE, got {pair!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def cmd_models(args: argparse.Namespace) -> int:
    from pixelseg.models import create_model, list_models, model_description
    from pixelseg.models.complexity import measure
    from pixelseg.models.registry import ModelError
    from pixelseg.models.zoo import DEFAULT_ENCODER, INSTALL_HINT, import_smp

    size = args.size
    print(f"{'name':<20}{'parameters':>12}{'GFLOPs':>8}  description (3 input channels, "
          f"1 output, GFLOPs of one {size}x{size} image)")  # fmt: skip
    native = [n for n in list_models() if not n.startswith("smp-")]
    zoo = [n for n in list_models() if n.startswith("smp-")]
    for name in native:
        n, gflops = measure(lambda name=name: create_model(name), size)
        print(f"{name:<20}{n:>12,}{gflops:>8.1f}  {model_description(name)}")
    try:
        import_smp()
    except ModelError:
        print(f"\nzoo models ({', '.join(zoo)}): not installed; {INSTALL_HINT}")
        return 0
    encoder = args.encoder or DEFAULT_ENCODER
    print(f"\nzoo models (segmentation-models-pytorch), with encoder {encoder} (--encoder):")
    for name in zoo:
        try:
            n, gflops = measure(lambda name=name: create_model(name, encoder=encoder), size)
        except ModelError as error:  # an architecture that cannot take this encoder
            print(f"{name:<20}{'n/a':>12}{'':>8}  {error}")
            continue
        print(f"{name:<20}{n:>12,}{gflops:>8.1f}")
    _print_encoder_families(size, args.all_encoders)
    return 0


def _print_encoder_families(size: int, every: bool) -> None:
    """Encoder families, with the parameters and GFLOPs of the encoder alone (smallest and
    largest member; every member with ``every``)."""
    import timm

    from pixelseg.models.complexity import measure
    from pixelseg.models.encoders import encoder_families
    from pixelseg.models.zoo import import_smp

    smp_get_encoder = import_smp().encoders.get_encoder

    def get_encoder(name: str, **kwargs: object) -> object:
        with warnings.catch_warnings():  # smp deprecates its timm- names; listing is no use
            warnings.simplefilter("ignore", DeprecationWarning)
            return smp_get_encoder(name, **kwargs)

    what = "every encoder" if every else "smallest..largest"
    print(f"\nencoders (train --encoder NAME); parameters and GFLOPs of the encoder alone, {what}:")
    for family, names in encoder_families().items():
        shown = names if every else sorted({names[0], names[-1]}, key=names.index)
        sizes = [measure(lambda n=n: get_encoder(n, weights=None), size) for n in shown]
        if every:
            for name, (n, gflops) in zip(shown, sizes, strict=True):
                print(f"  {name:<28}{n / 1e6:>7.1f}M {gflops:>7.1f}")
            continue
        params = "..".join(f"{n / 1e6:.1f}" for n in sorted({n for n, _ in sizes})) + "M"
        gflops = "..".join(f"{g:.1f}" for g in sorted({g for _, g in sizes}))
        print(f"  {family:<24}{params:>14} {gflops:>11}  {', '.join(names)}")
    n_timm = len(timm.list_models())
    print(f"  {'tu-<name>':<24}{'':>14} {'':>11}  any of timm's {n_timm} models with feature "
          "maps, e.g. tu-convnext_tiny, tu-regnety_004")  # fmt: skip


def cmd_check(args: argparse.Namespace) -> int:
    from pixelseg.data.check import check_dataset
    from pixelseg.data.classes import resolve_classes
    from pixelseg.data.layouts import detect_format
    from pixelseg.files import write_json

    fmt = args.format if args.format != "auto" else detect_format(Path(args.data))
    classes = resolve_classes(fmt, args.data, args.num_classes, None, args.ignore_index)
    num_classes, names, ignore, why = (
        classes.num_classes,
        classes.names,
        classes.ignore_index,
        classes.why,
    )
    report = check_dataset(
        args.data, fmt, num_classes, progress=True, ignore_index=ignore, colors=classes.colors
    )
    summary = {
        **report.summary(),
        "classes": {"num_classes": num_classes, "names": names, "ignore_index": ignore},
    }
    print(f"data: {summary['root']}  (layout: {summary['format']})")
    print(f"pairs: {summary['n_samples']}  readable: {summary['n_valid']}")
    if report.infos:
        h, w, fg = summary["height"], summary["width"], summary["foreground_fraction"]
        print(
            f"height: {h['min']}..{h['max']} (median {h['median']})  "
            f"width: {w['min']}..{w['max']} (median {w['median']})"
        )
        print(f"foreground fraction: {fg['min']:.3f}..{fg['max']:.3f} (median {fg['median']:.3f})")
        grey = summary["channels"] == 1
        print(f"channels: {summary['channels']} ({'greyscale' if grey else 'colour'} images)")
        print(f"classes: {why}")
        _print_class_frequencies(report.mask_values, names, ignore)
    if args.json:
        write_json(args.json, summary)
        print(f"wrote {args.json}")
    if report.problems:
        print(f"\n{len(report.problems)} problem(s):", file=sys.stderr)
        for problem in report.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print("no problems found")
    return 0


def _print_class_frequencies(
    counts: dict[int, int], names: list[str] | None, ignore: int | None
) -> None:
    """One line per mask value: its name, pixel count and share of all pixels."""
    total = sum(counts.values()) or 1
    for value in sorted(counts):
        if value == ignore:
            name = "(ignored)"
        elif names is not None and value < len(names):
            name = names[value]
        else:
            name = ""
        print(
            f"  {value:>3} {name:<14}{counts[value]:>12,} px  {100 * counts[value] / total:6.2f}%"
        )


# Options of `train` that map one-to-one onto TrainConfig fields: (field, type, help).
# The default shown in --help is read from TrainConfig, so the two cannot drift apart.
_TRAIN_OPTIONS = [
    ("out", str, "run folder to create"),
    ("format", str, "data layout"),
    (
        "model",
        str,
        "model name (see `pixelseg models`); auto: lite-unet from ImageNet weights for colour "
        "images when they are installed, else unet",
    ),
    (
        "encoder_weights",
        str,
        "models with an encoder (lite-unet, smp-*): its starting weights: auto (imagenet if "
        "installed, for lite-unet), none, imagenet or a local file",
    ),
    (
        "freeze_encoder_epochs",
        int,
        "keep the pretrained encoder unchanged for the first N epochs",
    ),
    (
        "encoder_lr_scale",
        float,
        "encoder learning rate = lr x this (default 0.1 when pretrained, else 1)",
    ),
    (
        "num_classes",
        int,
        "1 = binary masks, else the number of classes (default: from a class "
        "table in the data, else 1)",
    ),
    ("in_channels", int, "input channels, 1 or 3 (default: 1 if every image is greyscale)"),
    ("ignore_index", int, "mask value that counts in no loss and no metric (e.g. void)"),
    ("class_weights", str, "loss weights per class"),
    (
        "flips",
        str,
        "training flips: both axes, or horizontal only for images with an up (photos); "
        "auto decides from the masks",
    ),
    (
        "size",
        str,
        "training size: 256 or HEIGHTxWIDTH (default: the median image scaled to a "
        "longer side of 256, aspect ratio kept)",
    ),
    (
        "crop",
        str,
        "train on random HEIGHTxWIDTH patches of the images at --size (default without "
        "--size: the images up to 512 pixels on the longer side) and predict on whole images",
    ),
    ("epochs", int, "training epochs (default 40; with --time-budget, as many as fit)"),
    (
        "time_budget",
        str,
        "wall-clock limit for the whole run, e.g. 15m, 900s or 1h: pixelseg "
        "times the first epoch and plans as many as fit",
    ),
    (
        "latency",
        str,
        "time the model may take per image at inference, e.g. 10ms: picks lite-unet-fast "
        "(unless --model is given) and the largest size that runs within it on this CPU "
        "(ONNX Runtime when installed)",
    ),
    (
        "batch_size",
        int,
        "images per step (default: 8 on a CPU, 32 on a GPU, at most an eighth of the "
        "training images, fitted to memory)",
    ),
    ("lr", float, "AdamW learning rate"),
    (
        "ema",
        float,
        "validate and keep an exponential moving average of the weights with this decay "
        "per step, e.g. 0.99 (0 = the raw weights)",
    ),
    ("weight_decay", float, "AdamW weight decay"),
    ("loss", str, "loss on logits (default bce+dice; ce+dice for classes)"),
    ("seed", int, "random seed: same seed, same result on a CPU"),
    (
        "split_seed",
        int,
        "seed of the train/val/test split (default: --seed): other seeds, same test images",
    ),
    ("device", str, "auto | cpu | cuda | cuda:N"),
    (
        "precision",
        str,
        "training autocast dtype: auto = bf16 on CUDA (fp16 before Ampere) and on CPUs "
        "with native bf16 (AVX512-BF16, AMX) where a probe finds it faster, else fp32",
    ),
    (
        "channels_last",
        str,
        "NHWC weights and batches: auto = on with CUDA or bf16, and for pixelseg's own models "
        "in float32 on a CPU",
    ),
    ("val_fraction", float, "share of images held out for validation"),
    ("test_fraction", float, "share of images held out for the final test"),
    (
        "patience",
        int,
        "early stopping after this many epochs without improvement (0 = off; "
        "default 10, off with --time-budget)",
    ),
    ("workers", int, "data loader processes"),
    (
        "cache",
        str,
        "where the decoded images are kept: memory, disk (decoded once into $PIXELSEG_CACHE, "
        "reused by later runs; memory does not grow with the data), auto (disk past 2 GiB)",
    ),
    (
        "save_every",
        int,
        "also save a resumable checkpoint every N training steps (default 0: after each "
        "epoch only)",
    ),
    (
        "threshold",
        float,
        "binary decision threshold on the foreground probability (default: "
        "the one with the best validation Dice)",
    ),
    (
        "postprocess",
        str,
        "binary masks: auto keeps the clean-up steps (largest object, filled holes) "
        "that raise the validation Dice; none skips them",
    ),
]


NO_POSTPROCESS = "binary runs: skip the clean-up steps training chose (see config.json)"
TTA_HELP = (
    "test-time augmentation: average over flipped copies (4x slower; 2x, left-right only, "
    "for a model trained with --flips horizontal)"
)
TTA_ROTATIONS_HELP = "with --tta: also the 90-degree rotations (8 views, 8x slower)"
TTA_SCALES_HELP = (
    "average views of each image at these multiples of the training size, e.g. 1,1.25,1.5 "
    "(with --tta: flipped at each; costs the sum of the scales squared)"
)


def _scales(text: str) -> tuple[float, ...]:
    """``--tta-scales 1,1.25,1.5`` as floats (checked further by PredictOptions)."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 1,1.25,1.5, got {text!r}"
        ) from None


def _choices() -> dict[str, tuple[str, ...]]:
    from pixelseg.config import (
        CACHES,
        CLASS_WEIGHTS,
        FLIPS,
        LOSS_NAMES,
        POSTPROCESS,
        PRECISIONS,
        SWITCHES,
    )  # fmt: skip
    from pixelseg.data.layouts import FORMATS

    return {
        "format": FORMATS,
        "loss": LOSS_NAMES,
        "class_weights": CLASS_WEIGHTS,
        "flips": FLIPS,
        "postprocess": POSTPROCESS,
        "precision": PRECISIONS,
        "channels_last": SWITCHES,
        "cache": CACHES,
    }


def _default(field: str) -> str:
    from pixelseg.config import TrainConfig

    value = TrainConfig.__dataclass_fields__[field].default
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def cmd_train(args: argparse.Namespace) -> int:
    from pixelseg.config import TrainConfig
    from pixelseg.data.classes import parse_class_names
    from pixelseg.engine.distributed import world_from_env
    from pixelseg.engine.train import fit, resume

    given = {k: getattr(args, k) for k, _, _ in _TRAIN_OPTIONS if getattr(args, k) is not None}
    if args.model_arg or args.encoder:
        given["model_kwargs"] = _model_kwargs(args.model_arg)
    if args.encoder:
        given["model_kwargs"]["encoder"] = args.encoder
    if args.no_augment:
        given["augment"] = False
    if args.compile:
        given["compile"] = True
    if args.classes:
        given["class_names"] = list(parse_class_names(args.classes))
    if args.sync_batchnorm:
        given["sync_batchnorm"] = True
    if args.train_on_val:
        given["train_on_val"] = True
    if args.nproc is not None:
        return _launch_torchrun(args.nproc, args.argv)
    if args.resume:
        out = given.pop("out", args.resume)
        if Path(out).resolve() != Path(args.resume).resolve():
            raise SettingsError("--resume continues a run in its own folder; drop --out")
        result = resume(args.resume, data=args.data, **given)
    elif not args.data:
        raise PixelsegError("train needs a DATA folder (or --resume RUN)")
    else:
        result = fit(TrainConfig(data=args.data, **given))
    if world_from_env().is_main:
        print(
            f"best val_{result.score_name} {result.best_score:.4f} at epoch "
            f"{result.best_epoch}; run folder: {result.run_dir}"
        )
    return 0


def _launch_torchrun(nproc: int, argv: list[str]) -> int:
    """``pixelseg train --nproc N ...``: the same command under ``torchrun --standalone
    --nproc-per-node N`` (PyTorch's launcher, one machine; see docs/distributed.md)."""
    from pixelseg.engine.distributed import world_from_env

    if nproc < 1:
        raise SettingsError(f"--nproc must be >= 1, got {nproc}")
    if world_from_env().distributed:
        raise SettingsError("--nproc starts torchrun; under torchrun leave it out")
    rest, skip = [], False
    for arg in argv:  # the command without --nproc N / --nproc=N
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "pixelseg", *rest]  # fmt: skip
    # torchrun runs in its own session, so a Ctrl-C reaches it once, from here: it then
    # stops its processes, which save a checkpoint first.
    child = subprocess.Popen(command, start_new_session=True)
    forward = lambda signum, frame: child.send_signal(signum)  # noqa: E731
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_metrics(metrics: dict) -> None:
    skip = {"per_class", "confusion_matrix", "data", "split"}
    for key, value in metrics.items():
        if key not in skip:
            if key == "postprocess":
                value = ", ".join(value) or "none"
            print(f"  {key:<16}{value:.4f}" if isinstance(value, float) else f"  {key:<16}{value}")
    for name, row in (metrics.get("per_class") or {}).items():
        print(f"  {name:<16}iou {row['iou']:.4f}  dice {row['dice']:.4f}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pixelseg.engine.distributed import world_from_env
    from pixelseg.engine.evaluate import evaluate_run

    metrics = evaluate_run(
        args.run, args.data, args.split, args.format, args.threshold, args.out, args.device,
        apply_postprocess=not args.no_postprocess, tta=args.tta, tta_rotations=args.tta_rotations,
        tta_scales=args.tta_scales,
    )  # fmt: skip
    if world_from_env().is_main:  # under torchrun every process has the same metrics
        out = Path(args.out or args.run)
        print(f"{args.split} split of {args.data}:")
        _print_metrics(metrics)
        print(f"wrote {out / 'metrics.json'}, {out / 'per_image.csv'}, {out / 'worst.png'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pixelseg.data.layouts import check_inputs
    from pixelseg.engine import distributed
    from pixelseg.inference import load
    from pixelseg.inference.cutout import parse_background
    from pixelseg.inference.options import Outputs

    outputs = Outputs(
        probabilities=args.probabilities, uncertainty=args.uncertainty,
        instances=args.instances, cutout=args.cutout, feather=args.feather,
        background=parse_background(args.background) if args.background else None,
    )  # fmt: skip
    options = _predict_options(args)
    check_inputs(args.inputs, exclude=args.out)  # a mistyped path: before the model loads
    # Under torchrun each process predicts every world.size-th input, under the names and
    # ids one process would give them.
    if args.engine == "torch":
        world, device, joined = distributed.start(args.device)
    else:  # ONNX Runtime runs in one process, on the CPU
        world, device, joined = distributed.World(), "cpu", False
    try:
        predictor = load(args.run, args.engine, str(device), **options)
        shard = (world.rank, world.size)
        done = predictor.predict_folder(args.inputs, args.out, outputs, shard, world.is_main,
                                        args.resume, keep_files=False)  # fmt: skip
        counts = world.gather((done.written, done.skipped))
        total, skipped = (sum(column) for column in zip(*counts, strict=True))
    finally:
        distributed.stop(joined)
    if world.is_main:
        print(f"{done.summary(total, skipped)} to {args.out}")
    return 0


def _predict_options(args: argparse.Namespace) -> dict:
    """``predict``'s flags as :class:`pixelseg.inference.PredictOptions` keywords."""
    from pixelseg.inference.postprocess import STEPS

    if args.tile is None and (args.overlap is not None or args.scale is not None):
        raise SettingsError("--overlap and --scale apply to tiled prediction; add --tile N")
    chosen = [step for step in STEPS if getattr(args, step)]  # replace the run's steps
    options = {
        "threshold": args.threshold, "min_area": args.min_area, "tta": args.tta,
        "tta_rotations": args.tta_rotations, "tta_scales": args.tta_scales,
        "tile": args.tile, "scale": args.scale,
        "batch_size": args.batch_size, "connectivity": args.connectivity,
        "smooth": args.smooth,
        "postprocess": chosen or (() if args.no_postprocess else None),
    }  # fmt: skip
    if args.overlap is not None:
        options["overlap"] = args.overlap
    return options


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from pixelseg.serve.app import ServeSettings, create_app, settings_to_env
    except ImportError as exc:
        raise PixelsegError(
            f"serving needs FastAPI and uvicorn ({exc.name} is missing): "
            "pip install 'pixelseg[serve]'"
        ) from None
    from pixelseg.serve.app import stop_server

    key = _api_key(args)
    settings = ServeSettings(
        run=str(args.run), device=args.device, engine=args.engine,
        max_bytes=int(args.max_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6),
        max_queue=args.max_queue, batch_size=args.batch_size, api_key=key,
        model_timeout=args.model_timeout, host=args.host,
        render_memory=int(args.render_memory_mb * 2**20), upload_timeout=args.upload_timeout,
        upload_memory=int(args.upload_memory_mb * 2**20), max_cameras=args.max_cameras,
        allowed_hosts=tuple(_listed(args.allowed_hosts)),
        cors_origins=tuple(_listed(args.cors_origins)),
    )  # fmt: skip
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can use the "
            "model" + ("" if key else "; consider --api-key-file"),
            file=sys.stderr,
        )
    if args.host in ("0.0.0.0", "::") and not settings.allowed_hosts:
        print(
            "warning: on every interface any Host name is answered, so web pages can reach "
            "the service by DNS rebinding; name this machine with --allowed-hosts",
            file=sys.stderr,
        )
    # a stop (Ctrl-C, SIGTERM) waits at most this long for requests in progress
    # (no uvicorn limit_concurrency: it answers 503 without reading the upload, and a client
    # still sending its body then hangs; pixelseg bounds the bytes it buffers instead)
    # A camera's WebSocket messages: at most one frame of --max-mb each, and two waiting to
    # be read (uvicorn's defaults, 16 MiB x 32, would let each connection hold 512 MiB).
    options = {"host": args.host, "port": args.port, "timeout_graceful_shutdown": 10,
               "timeout_keep_alive": 5, "ws_max_size": settings.max_bytes,
               "ws_max_queue": 2}  # fmt: skip
    if args.workers > 1:  # each worker process loads the model from the settings
        settings_to_env(settings)
        uvicorn.run("pixelseg.serve.app:create_app_from_env", factory=True,
                    workers=args.workers, **options)  # fmt: skip
    else:
        uvicorn.run(create_app(settings, stop_server), **options)
    return 0


API_KEY_ENV = "PIXELSEG_API_KEY"


def _api_key(args: argparse.Namespace) -> str | None:
    """The service's key: --api-key-file, else $PIXELSEG_API_KEY, else --api-key (which
    other users of the machine can read in ps), else none."""
    if args.api_key_file:
        path = Path(args.api_key_file)
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise PixelsegError(f"{path}: cannot read the API key ({exc})") from None
        key = lines[0].strip() if lines else ""  # the first line, as the help says
        if not key:
            raise PixelsegError(f"{path}: the API key file is empty")
        return key
    if API_KEY_ENV in os.environ:
        if not os.environ[API_KEY_ENV].strip():
            raise PixelsegError(f"{API_KEY_ENV} is set but empty: give a key, or unset it")
        return os.environ[API_KEY_ENV].strip()
    if args.api_key is not None:
        print(
            "warning: a key given with --api-key is visible to other users of this machine "
            f"(ps); prefer --api-key-file or {API_KEY_ENV}",
            file=sys.stderr,
        )
    return args.api_key


def _listed(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def cmd_export(args: argparse.Namespace) -> int:
    from pixelseg.inference.export import export_onnx

    result = export_onnx(args.run, args.out, args.opset, args.dynamic, int8=args.int8,
                         data=args.data)  # fmt: skip
    shapes = ", ".join("x".join(map(str, s)) for s in result.shapes)
    print(
        f"wrote {result.path}{' (int8)' * args.int8}; ONNX Runtime vs PyTorch on random "
        f"inputs ({shapes}): largest difference {result.max_abs_diff:.2e} (logits up to "
        f"{result.max_abs_logit:.1f})"
    )
    if result.int8:
        print(result.int8.summary())
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from pixelseg.engine.ensemble import make_ensemble
    from pixelseg.runconfig import RunConfig

    out = make_ensemble(args.runs, args.out)
    config = RunConfig.read(out)
    split = json.loads((out / "split.json").read_text())
    print(f"wrote {out}: the mean probability of {len(args.runs)} runs; "
          f"{len(split['test'])} test and {len(split['val'])} validation images that no "
          f"member trained on (pixelseg evaluate {out} DATA scores it)")  # fmt: skip
    if config.num_classes == 1:
        steps = "+".join(config.postprocess) or "none"
        print(f"threshold {config.threshold:.2f} (the members' mean), clean-up: {steps}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pixelseg.demo import run_demo

    run_demo(args.out, epochs=args.epochs, n_images=args.images, device=args.device)
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models", help="list the models and encoders with parameter counts and GFLOPs"
    )
    p.add_argument("--size", type=int, default=256, help="image side for GFLOPs (default 256)")
    p.add_argument("--encoder", help="encoder of the zoo models' rows (default resnet34)")
    p.add_argument(
        "--all-encoders", action="store_true", help="a row for every encoder, not per family"
    )
    p.set_defaults(func=cmd_models)


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a data set and report every bad file")
    p.add_argument("data", help="data folder (PH2 layout, images/+masks/) or a CSV of pairs")
    p.add_argument("--format", default="auto", choices=_choices()["format"], help="data layout")
    p.add_argument(
        "--num-classes", type=int, help="1 for binary masks (default: from a class table, else 1)"
    )
    p.add_argument("--ignore-index", type=int, help="mask value to ignore (e.g. void)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.set_defaults(func=cmd_check)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model; writes a run folder")
    p.add_argument("data", nargs="?", help="data folder or CSV of pairs")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder")
    p.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help="model option, e.g. base_channels=16 (repeatable)",
    )
    p.add_argument(
        "--encoder", metavar="NAME",
        help="the encoder: lite-unet's tf_efficientnet_lite0 (default) or efficientnet_lite0; "
        "smp-* models' resnet34 (default), efficientnet-b0, mit_b0 or tu-<any timm model>; "
        "see `pixelseg models`",
    )  # fmt: skip
    choices = _choices()
    for field, kind, text in _TRAIN_OPTIONS:
        flag = "--" + field.replace("_", "-")
        default = _default(field)
        p.add_argument(
            flag,
            type=kind,
            choices=choices.get(field),
            help=text if default == "None" else f"{text} (default {default})",
        )
    p.add_argument("--classes", help="class names: a,b,c or a classes.json/classes.csv file")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument(
        "--train-on-val", action="store_true",
        help="train on the validation images too and keep the last epoch (validation scores "
        "are then scores on seen images; binary runs keep threshold 0.5, no clean-up)",
    )  # fmt: skip
    p.add_argument(
        "--compile", action="store_true",
        help="torch.compile the model (a minute of compiling; meant for GPUs: on a 2-core CPU "
        "it made epochs slower; needs a C++ compiler on CPUs)",
    )  # fmt: skip
    p.add_argument(
        "--nproc", type=int, metavar="N",
        help="train with N processes on this machine (torchrun; one per GPU, or CPU processes "
        "with gloo); see docs/distributed.md",
    )  # fmt: skip
    p.add_argument(
        "--sync-batchnorm", action="store_true",
        help="with several processes: batch-norm statistics over all of their batches",
    )  # fmt: skip
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score a run; writes metrics.json, per_image.csv, worst.png"
    )
    p.add_argument("run", help="run folder")
    p.add_argument("data", help="data folder")
    p.add_argument("--split", default="test", choices=["test", "val", "train", "all"])
    p.add_argument("--format", default="auto", choices=_choices()["format"], help="data layout")
    p.add_argument("--threshold", type=float, help="override the run's threshold")
    p.add_argument("--no-postprocess", action="store_true", help=NO_POSTPROCESS)
    p.add_argument("--tta", action="store_true", help=TTA_HELP)
    p.add_argument("--tta-rotations", action="store_true", help=TTA_ROTATIONS_HELP)
    p.add_argument("--tta-scales", type=_scales, metavar="S,S,...", help=TTA_SCALES_HELP)
    p.add_argument("--out", help="folder for the outputs (default: the run folder)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="write masks and overlays for new images")
    p.add_argument("run", help="run folder")
    p.add_argument(
        "inputs", nargs="+",
        help="image files, folders of images, or video files (needs pixelseg[video])",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--resume", action="store_true",
        help="skip the inputs whose outputs are all in --out already (continue a stopped run)",
    )  # fmt: skip
    p.add_argument("--threshold", type=float, help="override the run's threshold")
    p.add_argument("--no-postprocess", action="store_true", help=NO_POSTPROCESS)
    p.add_argument(
        "--keep-largest", action="store_true", help="binary: keep only the largest object"
    )
    p.add_argument("--fill-holes", action="store_true", help="binary: fill holes in objects")
    p.add_argument(
        "--min-area", type=int, default=0, metavar="N",
        help="binary: drop objects smaller than N pixels (default 0: keep all)",
    )  # fmt: skip
    p.add_argument("--probabilities", action="store_true", help="also write <stem>_prob.png")
    p.add_argument("--tta", action="store_true", help=TTA_HELP)
    p.add_argument("--tta-rotations", action="store_true", help=TTA_ROTATIONS_HELP)
    p.add_argument("--tta-scales", type=_scales, metavar="S,S,...", help=TTA_SCALES_HELP)
    p.add_argument(
        "--tile", type=int, metavar="N",
        help="sliding-window prediction in NxN tiles with Gaussian blending, for images "
        "larger than the training size (memory bounded by --batch-size tiles)",
    )  # fmt: skip
    p.add_argument(
        "--overlap", type=float, metavar="F",
        help="with --tile: fraction of a tile that neighbouring tiles share (default 0.25)",
    )  # fmt: skip
    p.add_argument(
        "--scale", type=float, metavar="S",
        help="with --tile: resize images by S first (default: the factor training resized "
        "its images by; 1 = the image's own resolution)",
    )  # fmt: skip
    p.add_argument(
        "--uncertainty", action="store_true",
        help="also write <stem>_uncertainty.png: per-pixel entropy (use with --tta)",
    )  # fmt: skip
    p.add_argument(
        "--instances", action="store_true",
        help="also write the separate objects (connected components) as <stem>_instances.json "
        "(COCO results, RLE), <stem>_instances.csv and <stem>_instances.png",
    )  # fmt: skip
    p.add_argument(
        "--connectivity", type=int, choices=(4, 8), default=4,
        help="instances: 4 (objects touching at a corner are two; default) or 8",
    )  # fmt: skip
    p.add_argument(
        "--smooth", type=float, default=0.0, metavar="W",
        help="videos: average the logits over frames, W of the frames before and 1 - W of "
        "this one, so masks do not flicker (e.g. 0.6; default 0, off)",
    )  # fmt: skip
    p.add_argument(
        "--cutout", action="store_true",
        help="also write <stem>_cutout.png: the image as RGBA, the foreground as alpha",
    )  # fmt: skip
    p.add_argument(
        "--background", metavar="COLOR|IMAGE",
        help="also write <stem>_composite.png: the foreground over a colour (green, #00b140, "
        "0,177,64) or a picture",
    )  # fmt: skip
    p.add_argument(
        "--feather", type=float, default=0.0, metavar="PX",
        help="soften the cut-out's edge by a blur of PX pixels (default 0)",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", type=int, default=4,
        help="images (with --tile: tiles) per forward pass (default 4)",
    )  # fmt: skip
    p.add_argument(
        "--engine", default="torch", choices=["torch", "onnx"],
        help="torch, or onnx: the run's model.onnx (pixelseg export) with ONNX Runtime, "
        "without loading PyTorch (whole images; no --tta, --tta-scales or --tile)",
    )  # fmt: skip
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and evaluate on built-in synthetic data (offline)")
    p.add_argument("--out", default="pixelseg-demo", help="output folder (default pixelseg-demo)")
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    p.add_argument("--images", type=int, default=None, help="override the number of images")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's model (ONNX), checked against PyTorch")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", help="file to write (default RUN/model.onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17)")
    p.add_argument(
        "--dynamic", action="store_true",
        help="let batch, height and width vary (default: batch 1 at the training size)",
    )  # fmt: skip
    p.add_argument(
        "--int8", action="store_true",
        help="write the graph quantized to int8 (static, calibrated on the run's training "
        "images), with its validation score and speed beside float32's",
    )  # fmt: skip
    p.add_argument("--data", help="with --int8: the run's data folder, if it has moved")
    p.set_defaults(func=cmd_export)


def _add_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble", help="combine trained runs into one run that averages their probabilities"
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run folders")
    p.add_argument("--out", required=True, help="the ensemble's run folder (must not be a run)")
    p.set_defaults(func=cmd_ensemble)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a run over HTTP, with a web page (pixelseg[serve])")
    p.add_argument("run", help="run folder")
    p.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens the "
        "service to the network, see docs/serve.md)",
    )  # fmt: skip
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes, each with the model")
    p.add_argument(
        "--engine", default="torch", choices=["torch", "onnx"],
        help="torch, or onnx: the run's model.onnx (pixelseg export) with ONNX Runtime",
    )  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--api-key-file",
        help="require the key in this file (first line) in the X-API-Key header; or set "
        "PIXELSEG_API_KEY",
    )
    p.add_argument("--api-key", help="the key itself (visible in ps: prefer --api-key-file)")
    p.add_argument(
        "--allowed-hosts",
        help="comma-separated Host names to answer to besides localhost, 127.0.0.1, ::1 and "
        "the --host address; * for any (listening on 0.0.0.0 without it: any)",
    )
    p.add_argument(
        "--cors-origins",
        help="comma-separated origins (https://app.example) whose pages may call the service",
    )
    p.add_argument(
        "--model-timeout", type=float, default=120.0,
        help="seconds a request waits for the model before a 503 (120); a batch running "
        "longer marks the service unhealthy",
    )  # fmt: skip
    p.add_argument("--max-mb", type=float, default=20.0, help="largest upload in MB (20)")
    p.add_argument(
        "--max-megapixels", type=float, default=25.0, help="largest image in megapixels (25)"
    )
    p.add_argument(
        "--max-queue", type=int, default=64,
        help="requests in progress (being read, waiting for the model, answered) before "
        "more get 503 with Retry-After (64)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (4)")
    p.add_argument(
        "--render-memory-mb", type=float, default=2048.0,
        help="memory that decoding and answering at full size may hold at once, MB (2048); "
        "requests beyond it wait their turn",
    )  # fmt: skip
    p.add_argument(
        "--upload-timeout", type=float, default=60.0,
        help="seconds an upload may take to arrive; slower ones get 408 (60)",
    )  # fmt: skip
    p.add_argument(
        "--upload-memory-mb", type=float, default=512.0,
        help="bytes of uploads still arriving that may be held at once, MB (512); more: 503",
    )  # fmt: skip
    p.add_argument(
        "--max-cameras", type=int, default=8,
        help="camera-mode connections (the page's live camera) at a time (8)",
    )  # fmt: skip
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelseg",
        description="Segment images: train on a folder of images and masks, "
        "evaluate honestly, predict masks for new images.",
    )
    from pixelseg.version import __version__

    parser.add_argument("--version", action="version", version=f"pixelseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_models(sub)
    _add_check(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_export(sub)
    _add_ensemble(sub)
    _add_serve(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pixelseg.engine.distributed import world_from_env
    from pixelseg.engine.interrupt import TrainingInterrupted

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for --nproc's relaunch
    try:
        return args.func(args)
    except TrainingInterrupted as exc:  # a checkpoint was saved; the usual signal exit code
        if world_from_env().is_main:
            print(f"pixelseg {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except PixelsegError as exc:  # anything else is a bug in pixelseg and keeps its traceback
        print(f"pixelseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an output folder that cannot be created
        print(f"pixelseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Speed in one run: training through pixelseg's loop against a bare loop, the share of step
time spent waiting for data, inference eager and with ONNX Runtime, FLOPs against a
matmul roofline measured here, and peak memory.

    python benchmarks/speed.py --quick --json speed.json     # under 5 minutes on 2 cores
    python benchmarks/speed.py --size 256 --batch-size 8     # the issue's setting

Per model (``--models``, default the native ``unet`` and ``lesson-unet``, and the zoo's
``smp-unet`` (ResNet-34) when the zoo extra is installed), in the training precision
``--precision`` (``auto``: what ``pixelseg train`` would use here, e.g. bf16 with
channels_last on a CPU where bf16 is native and measures faster; ``fp32`` for float32 NCHW):

- train img/s of pixelseg's ``train_one_epoch`` (cached dataset, augmentation on the
  device, normalisation, fused AdamW) and of a bare loop on pre-stacked tensors with the
  same model, loss (bce+dice) and batch, and AdamW as a user writes it
  (``torch.optim.AdamW(model.parameters())``); ``train_loop_overhead`` is pixelseg's time
  per image over the bare loop's;
- ``data_wait_fraction``: the share of a pixelseg step spent getting the next batch from
  the DataLoader (and, separately, augmenting it);
- inference img/s at batch 8 and latency at batch 1, eager and ONNX Runtime (a dynamic
  export of the same weights, in the session ``pixelseg predict --engine onnx`` opens),
  and the largest logit difference between them;
- forward GFLOPs per image (``torch.utils.flop_counter``) and achieved GFLOP/s in training
  (3 x forward FLOPs per image, the usual estimate for forward + backward) as a fraction
  of a 2048x2048 matmul's GFLOP/s measured in the same run, in the same dtype (bf16 for a
  bf16 run); and batch-1 inference's (float32) share of the float32 matmul's rate, which
  shows how much room an inference engine has left.

Every timing is the median of ``--repeats`` runs after a warm-up; machines are noisy. The
two training loops alternate run by run, eager and ORT inference block by block (10 runs
at batch 1, 3 at batch 8, with a pause after each block so that neither engine's idle
threads spin during the other's runs), and each ratio is the median of the rounds' own
ratios, so a machine that slows down for a while slows both sides of a ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from train_speed import (
    apply_quick,
    bare_loop,
    pixelseg_loop,
    sync,
    synthetic_dataset,
    timing_arguments,
)

from pixelseg.data.transforms import Augment, BatchTransform, normalize
from pixelseg.engine.device import resolve_device
from pixelseg.engine.optimizer import adamw
from pixelseg.engine.precision import choose_precision
from pixelseg.errors import PixelsegError
from pixelseg.models import ModelError, count_parameters, create_model, prefers_channels_last
from pixelseg.models.complexity import forward_gflops


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(
    device: torch.device, repeats: int, n: int = 2048, dtype: torch.dtype = torch.float32
) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run() -> None:
        for _ in range(4):
            a @ b
        sync(device)

    return 4 * 2 * n**3 / median_time(run, repeats) / 1e9


def data_wait(
    model, dataset, transform, batch_size, steps, device, precision
) -> tuple[float, float]:
    """(share of step time in the DataLoader, share in augmentation) of a pixelseg step."""
    from pixelseg.losses import build_loss

    loss_fn = build_loss("bce+dice", 1)
    optimizer = adamw(model.parameters(), lr=1e-3)  # as pixelseg train makes it
    subset = torch.utils.data.Subset(dataset, range(min(len(dataset), steps * batch_size)))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=True, drop_last=True)
    model.train()
    fetch = augment = total = 0.0
    iterator = iter(loader)
    for _ in range(len(loader)):
        t0 = time.perf_counter()
        batch = next(iterator)
        t1 = time.perf_counter()
        images, masks = transform(batch, device)
        images = precision.prepare_batch(images)
        sync(device)
        t2 = time.perf_counter()
        with precision.autocast():
            loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        t3 = time.perf_counter()
        fetch, augment, total = fetch + t1 - t0, augment + t2 - t1, total + t3 - t0
    return fetch / total, augment / total


def onnx_session(model: torch.nn.Module, size: int):
    """ONNX Runtime on a dynamic export of ``model``, made as ``pixelseg export`` makes it."""
    from pixelseg.inference.export import onnx_bytes
    from pixelseg.inference.onnx import open_session

    return open_session(onnx_bytes(model, (1, 3, size, size), dynamic=True))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# Both engines leave worker threads spinning for a while after a run (PyTorch's OpenMP
# pool, ORT's own unless told not to); a run of the other engine during that time loses a
# core. Each engine is therefore timed in a block of runs followed by a pause.
PAUSE_S = 0.5


def block_time(fn, runs: int) -> float:
    """Median seconds of ``runs`` calls after one warm-up call, then a pause."""
    fn()
    times = [timed(fn) for _ in range(runs)]
    time.sleep(PAUSE_S)
    return statistics.median(times)


def inference(model, session, size: int, repeats: int) -> dict:
    """Eager and ONNX Runtime at batch 8 and 1, blocks of each alternating ``repeats``
    times so that both see the same machine (a noisy one drifts); the ORT/eager ratios
    are the medians of each round's ratio."""
    model.eval()
    rng = np.random.default_rng(0)
    x8 = rng.normal(size=(8, 3, size, size)).astype(np.float32)
    out = {}
    with torch.no_grad():
        expected = model(torch.from_numpy(x8)).numpy()
        if session is not None:
            got = session.run(None, {"image": x8})[0]
            out["onnx_max_abs_diff"] = float(np.abs(got - expected).max())
            out["max_abs_logit"] = float(np.abs(expected).max())
        for batch, runs in ((8, 3), (1, 10)):
            x = x8[:batch]
            t = torch.from_numpy(x)
            eager, onnx = [], []
            for _ in range(repeats):
                eager.append(block_time(lambda: model(t), runs))  # noqa: B023 (called at once)
                if session is not None:
                    onnx.append(block_time(lambda: session.run(None, {"image": x}), runs))  # noqa: B023
            out[f"eager_b{batch}_img_s"] = batch / statistics.median(eager)
            if session is not None:
                out[f"onnx_b{batch}_img_s"] = batch / statistics.median(onnx)
                ratios = [e / o for e, o in zip(eager, onnx, strict=True)]
                out[f"onnx_vs_eager_b{batch}"] = statistics.median(ratios)
    return out


def measure(name: str, args, dataset, images, masks, device, peaks, precision) -> dict:
    """One model's row; ``peaks``: matmul GFLOP/s in the training dtype and in float32."""
    torch.manual_seed(0)
    transform = BatchTransform(*dataset.channel_stats(), Augment())
    model = precision.prepare_model(create_model(name).to(device))
    steps, bs = args.steps, args.batch_size
    pix, bare = [], []
    for round_ in range(args.repeats + 1):  # round 0 warms up both loops; then interleaved
        p = pixelseg_loop(
            model, dataset, transform, bs, steps, device, 0, precision, precision.scaler()
        )  # fmt: skip
        b = bare_loop(model, images, masks, bs, steps, device, precision)
        if round_:
            pix.append(p)
            bare.append(b)
    wait, aug = data_wait(model, dataset, transform, bs, steps, device, precision)
    gflops = forward_gflops(create_model(name), args.size)
    model_cpu = create_model(name).eval()  # the trained weights, for eager and ONNX alike
    model_cpu.load_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})
    try:
        session = onnx_session(model_cpu, args.size)
    except PixelsegError:  # onnxruntime is not installed
        session = None
    train, fp32 = peaks
    row = {
        "model": name, "parameters": count_parameters(model),
        "train_pixelseg_img_s": statistics.median(pix),
        "train_bare_img_s": statistics.median(bare),
        # each round's own ratio: both loops ran back to back on the same machine state
        "train_loop_overhead": statistics.median(b / p for b, p in zip(bare, pix, strict=True)),
        "data_wait_fraction": wait, "augment_fraction": aug, "forward_gflops": gflops,
    }  # fmt: skip
    row["train_gflop_s"] = 3 * gflops * row["train_pixelseg_img_s"]
    row["roofline_fraction_train"] = row["train_gflop_s"] / train
    row.update(inference(model_cpu, session, args.size, args.repeats))
    # inference runs in float32: its share of the float32 matmul's rate
    row["eager_b1_roofline_fraction"] = gflops * row["eager_b1_img_s"] / fp32
    if session is not None:
        row["onnx_b1_roofline_fraction"] = gflops * row["onnx_b1_img_s"] / fp32
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="unet,lesson-unet,smp-unet")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
        help="training precision (auto: as pixelseg train chooses; channels_last follows)",
    )  # fmt: skip
    timing_arguments(parser, steps=8)
    args = apply_quick(parser.parse_args())
    device = resolve_device(args.device)
    layout = "auto" if args.precision == "auto" else "off"  # an explicit dtype: NCHW
    precision = choose_precision(args.precision, layout, device)  # its dtype is every model's
    peak = matmul_gflops(device, args.repeats, dtype=precision.dtype or torch.float32)
    fp32_peak = peak if precision.dtype is None else matmul_gflops(device, args.repeats)
    dataset = synthetic_dataset(args.steps * args.batch_size, args.size)
    mean, std = dataset.channel_stats()
    images = normalize(dataset.images.float() / 255, mean, std)  # as train_speed.py does
    masks = dataset.masks.long()
    rows = []
    for name in args.models.split(","):
        try:
            create_model(name)
        except ModelError as error:  # smp-unet without the zoo extra
            print(f"{name}: skipped ({error})")
            continue
        # the layout can differ per model (pixelseg.models.prefers_channels_last)
        chosen = choose_precision(args.precision, layout, device, prefers_channels_last(name))
        row = measure(name, args, dataset, images, masks, device, (peak, fp32_peak), chosen)
        rows.append({"model": name, "precision": chosen.describe(), **row})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{device}, {torch.get_num_threads()} threads, {args.size}x{args.size}, batch "
        f"{args.batch_size}; training in {precision.name}; {precision.name} matmul "
        f"roofline {peak:.1f} GFLOP/s (float32 {fp32_peak:.1f}); peak RSS {rss:.0f} MiB"
    )
    for row in rows:
        print("\n" + row["model"])
        for key, value in row.items():
            if key != "model":
                print(f"  {key:>24}: {value:.4g}" if isinstance(value, float) else
                      f"  {key:>24}: {value}")  # fmt: skip
    first = rows[0]
    summary = {
        "device": str(device), "threads": torch.get_num_threads(), "size": args.size,
        "batch_size": args.batch_size, "precision": first["precision"],
        "matmul_gflop_s": peak, "matmul_fp32_gflop_s": fp32_peak, "peak_rss_mib": rss,
        "train_loop_overhead": first["train_loop_overhead"],
        "data_wait_fraction": first["data_wait_fraction"],
        "roofline_fraction_train": first["roofline_fraction_train"],
        "onnx_vs_eager_b1": first.get("onnx_vs_eager_b1"),
        "onnx_max_abs_diff": first.get("onnx_max_abs_diff"), "models": rows,
    }  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

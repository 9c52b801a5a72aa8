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
  of the machine's matmul peak, in the same dtype (bf16 for a bf16 run); and batch-1
  inference's (float32) share of the float32 peak, which shows how much room an inference
  engine has left. The peak is the best rate of square matmuls of 1024 to 4096, each size
  timed ``--repeats`` times after a warm-up, before the models and again after them (the
  best, not the median: other processes only ever slow a run down). A fraction is a share
  of a rate reached here, so it lies in (0, 1]: a model that still outruns the peak has it
  measured over more sizes, and only then is the fraction clamped to 1, with a warning.
  Beside the measured peak, an estimate of the theoretical one from the CPU's flags
  (threads x clock x FLOPs per cycle per core).

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

# The sizes of the square matmuls whose best rate is the peak. One size's median is not a
# peak: the size a BLAS runs fastest differs by CPU, library and even run (1024 in one run,
# 4096 in the next on a 2-core Xeon), and a median takes in other processes' interference.
PEAK_SIZES = (1024, 2048, 3072, 4096)
# also tried, with twice the repeats, when a model outran the peak over PEAK_SIZES
MORE_PEAK_SIZES = (1536, 2560, 5120, 6144)


def matmul_peak(
    device: torch.device, dtype: torch.dtype, repeats: int, sizes: tuple[int, ...] = PEAK_SIZES
) -> tuple[float, int]:
    """(GFLOP/s, n) of the fastest n x n matmul over ``sizes``, each timed ``repeats`` times
    after a warm-up that wakes torch's threads."""
    best = (0.0, 0)
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)  # no allocation in the timings
        torch.matmul(a, b, out=out)
        sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=out)
            sync(device)
            best = max(best, (2 * n**3 / (time.perf_counter() - t0) / 1e9, n))
    return best


# FLOPs per cycle per core of the widest unit a CPU flag names, first match wins: (flag,
# FLOPs, how). bf16 on a CPU without bf16 units runs through float32's.
FLOPS_PER_CYCLE = {
    torch.float32: (
        ("avx512f", 64, "AVX-512: 2 FMA units x 16 lanes x 2"),
        ("fma", 32, "AVX2: 2 FMA units x 8 lanes x 2"),
    ),
    torch.bfloat16: (
        ("amx_bf16", 1024, "AMX: a 16x32 by 32x16 bf16 tile product every 16 cycles"),
        ("avx512_bf16", 128, "AVX512-BF16: 2 units x 16 lanes x 2 products x 2"),
    ),
}


def cpu_flags_and_clock() -> tuple[set[str], float | None, str]:
    """The CPU's flags, clock in GHz and where the clock came from, on Linux: cpufreq's
    maximum where there is one, else the highest ``cpu MHz`` of /proc/cpuinfo (under a
    hypervisor the nominal clock, which turbo exceeds)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set(), None, ""
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return set(flags), int(khz) / 1e6, "cpufreq's maximum"
    except (OSError, ValueError):
        mhz = [float(line.split(":", 1)[1]) for line in lines if line.startswith("cpu MHz")]
        return set(flags), max(mhz) / 1e3 if mhz else None, "cpu MHz of /proc/cpuinfo"


def theoretical_peak(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    """An estimate of the peak GFLOP/s in ``dtype`` from the CPU's flags, and its
    assumptions; (None, why not) where there is none. The clock is not the one under load
    (turbo raises it, AVX-512 and AMX lower it), so a measured rate can come out above it."""
    if device.type != "cpu":
        return None, f"no estimate for {device.type}"
    flags, ghz, clock = cpu_flags_and_clock()
    units = FLOPS_PER_CYCLE[torch.float32]
    if dtype == torch.bfloat16:
        units = FLOPS_PER_CYCLE[torch.bfloat16] + units
    unit = next(((flops, how) for flag, flops, how in units if flag in flags), None)
    if unit is None or ghz is None:
        return None, "CPU flags or clock unknown"
    threads = torch.get_num_threads()
    return threads * ghz * unit[0], (
        f"{threads} threads (one core each) x {ghz:.2f} GHz ({clock}) x {unit[0]} FLOPs/cycle "
        f"({unit[1]})"
    )


def fraction_inputs(row: dict, train_dtype: torch.dtype):
    """(fraction key, achieved GFLOP/s, dtype of the peak it is a share of) of one row."""
    yield "roofline_fraction_train", row["train_gflop_s"], train_dtype
    for engine in ("eager", "onnx"):  # inference runs in float32
        if f"{engine}_b1_gflop_s" in row:
            yield f"{engine}_b1_roofline_fraction", row[f"{engine}_b1_gflop_s"], torch.float32


def add_fractions(rows, peaks, train_dtype, device, repeats) -> list[str]:
    """Add each row's rates as shares of ``peaks`` (dtype: (GFLOP/s, n), updated here) and
    return the warnings for the shares clamped to 1.

    The peaks are measured again first: other processes may have slowed the first
    measurement. A peak that a model's rate still exceeds was not found, so it is measured
    over more sizes with twice the repeats; a share that then still exceeds 1 is clamped,
    since above 1 it is a share of nothing, and warned about."""
    for dtype in peaks:
        peaks[dtype] = max(peaks[dtype], matmul_peak(device, dtype, repeats))
    inputs = [(row, *entry) for row in rows for entry in fraction_inputs(row, train_dtype)]
    for dtype in peaks:
        if any(rate > peaks[dtype][0] for _, _, rate, d in inputs if d == dtype):
            more = matmul_peak(device, dtype, 2 * repeats, PEAK_SIZES + MORE_PEAK_SIZES)
            peaks[dtype] = max(peaks[dtype], more)
    warnings = []
    for row, key, rate, dtype in inputs:
        peak = peaks[dtype][0]
        if rate > peak:
            warnings.append(
                f"{row['model']}: {key} clamped from {rate / peak:.3f} to 1: {rate:.1f} GFLOP/s "
                f"beat the best {dtype_name(dtype)} matmul measured, {peak:.1f}"
            )
        row[key] = min(rate / peak, 1.0)
    return warnings


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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


def measure(name: str, args, dataset, images, masks, device, precision) -> dict:
    """One model's row, with its achieved GFLOP/s (the fractions are added later)."""
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
    row = {
        "model": name, "parameters": count_parameters(model),
        "train_pixelseg_img_s": statistics.median(pix),
        "train_bare_img_s": statistics.median(bare),
        # each round's own ratio: both loops ran back to back on the same machine state
        "train_loop_overhead": statistics.median(b / p for b, p in zip(bare, pix, strict=True)),
        "data_wait_fraction": wait, "augment_fraction": aug, "forward_gflops": gflops,
    }  # fmt: skip
    row["train_gflop_s"] = 3 * gflops * row["train_pixelseg_img_s"]
    row.update(inference(model_cpu, session, args.size, args.repeats))
    for engine in ("eager", "onnx"):
        if f"{engine}_b1_img_s" in row:
            row[f"{engine}_b1_gflop_s"] = gflops * row[f"{engine}_b1_img_s"]
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
    train_dtype = precision.dtype or torch.float32
    dtypes = dict.fromkeys((train_dtype, torch.float32))  # one of each, in this order
    peaks = {dtype: matmul_peak(device, dtype, args.repeats) for dtype in dtypes}
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
        row = measure(name, args, dataset, images, masks, device, chosen)
        rows.append({"model": name, "precision": chosen.describe(), **row})
    warnings = add_fractions(rows, peaks, train_dtype, device, args.repeats)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{device}, {torch.get_num_threads()} threads, {args.size}x{args.size}, batch "
        f"{args.batch_size}; training in {precision.name}; peak RSS {rss:.0f} MiB"
    )
    peak_summary = {}
    for dtype, (gflops, n) in peaks.items():
        theory, assumptions = theoretical_peak(device, dtype)
        peak_summary[dtype_name(dtype)] = {
            "matmul_gflop_s": gflops, "matmul_n": n,
            "theoretical_gflop_s": theory, "theoretical_assumptions": assumptions,
        }  # fmt: skip
        line = f"{dtype_name(dtype)} matmul peak {gflops:.1f} GFLOP/s (best at n={n}); theoretical "
        if theory is not None:
            line += f"{theory:.1f} GFLOP/s ({gflops / theory:.0%} of it reached), "
        print(f"{line}an estimate: {assumptions}")
        if theory is not None and gflops > theory:
            print("  (above the estimate: the clock under load exceeds the one assumed)")
    for warning in warnings:
        print(f"warning: {warning}")
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
        "matmul_gflop_s": peaks[train_dtype][0], "matmul_dtype": dtype_name(train_dtype),
        "matmul_fp32_gflop_s": peaks[torch.float32][0], "peaks": peak_summary,
        "roofline_warnings": warnings, "peak_rss_mib": rss,
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

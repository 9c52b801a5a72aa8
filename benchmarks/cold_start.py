"""Cold start: ``pixelseg predict`` on one image in a fresh process, torch vs ONNX engine.

What a user waits for when a script or a job predicts one image: starting Python,
importing the engine, loading the run, reading, predicting and writing. Each repeat runs
both engines, alternating, as separate processes; the figures are the medians of the wall
time and of each process's own peak RSS, and the masks of the two engines are compared.

    pixelseg export RUN --format onnx            # once: RUN/model.onnx
    python benchmarks/cold_start.py RUN IMAGE --repeats 5 [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ENGINES = ("torch", "onnx")


def predict_once(run: Path, image: Path, out: Path, engine: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one ``pixelseg predict`` process."""
    command = [sys.executable, "-m", "pixelseg", "predict", str(run), str(image),
               "--out", str(out), "--engine", engine]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if not (args.run / "model.onnx").is_file():
        sys.exit(f"{args.run}: no model.onnx; run pixelseg export {args.run} --format onnx")
    times = {e: [] for e in ENGINES}
    rss = {e: [] for e in ENGINES}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats + 1):  # round 0 warms the disk cache
            for engine in ENGINES:
                wall, peak = predict_once(args.run, args.image, Path(tmp) / engine, engine)
                if round_:
                    times[engine].append(wall)
                    rss[engine].append(peak)
        masks = {
            e: np.asarray(Image.open(Path(tmp) / e / f"{args.image.stem}_mask.png"))
            for e in ENGINES
        }
    differ = int((masks["torch"] != masks["onnx"]).sum())
    with Image.open(args.image) as im:
        size = f"{im.width}x{im.height}"
    result = {
        "image": str(args.image), "size": size, "repeats": args.repeats,
        **{f"{e}_wall_s": statistics.median(times[e]) for e in ENGINES},
        **{f"{e}_peak_rss_mib": statistics.median(rss[e]) for e in ENGINES},
        "mask_pixels_differing": differ, "mask_pixels": int(masks["torch"].size),
    }  # fmt: skip
    result["onnx_vs_torch_wall"] = result["onnx_wall_s"] / result["torch_wall_s"]
    print(f"{args.image.name} ({size}), median of {args.repeats} fresh processes each:")
    for engine in ENGINES:
        print(f"  --engine {engine:<5}  {result[f'{engine}_wall_s']:.2f} s  "
              f"{result[f'{engine}_peak_rss_mib']:.0f} MiB peak RSS")  # fmt: skip
    print(f"  onnx / torch wall time: {result['onnx_vs_torch_wall']:.2f}; masks differ on "
          f"{differ} of {masks['torch'].size} pixels")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

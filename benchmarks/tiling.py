"""Peak memory and time of ``pixelseg predict --tile`` on large images.

A large test picture is made as a mosaic of a data set's images at their own resolution
(e.g. 5x5 PH2 dermoscopy images for 4000x3000), so every lesion in it appears at the scale
the run was trained on. Each configuration runs ``pixelseg predict`` in a fresh process
under ``/usr/bin/time -v`` and reports its peak RSS, next to a baseline process that only
loads the run and reads the image (what no inference can avoid):

    python benchmarks/tiling.py --run RUN --data ../shared/data/ph2 --sizes 2000x1500,4000x3000

Modes: ``whole`` (no --tile: resized to the training size, as by default), ``tiled``
(``--tile 512 --overlap 0.25`` at the training scale), ``tiled-native`` (the same at
``--scale 1``, the image's own resolution: many more windows), and ``one-window-native``
(a tile larger than the image at ``--scale 1``: the whole image in one forward pass, what
tiling avoids; only up to ``--one-window-max`` pixels).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pixelseg.data.io import read_image
from pixelseg.data.layouts import find_samples

BASELINE = """
import sys
from pixelseg.predict import load
from pixelseg.data.io import read_image
load(sys.argv[1], "cpu"); read_image(sys.argv[2])
"""


def mosaic(data: str, width: int, height: int) -> np.ndarray:
    """A ``height`` x ``width`` RGB picture tiled with the data set's images, unscaled."""
    _, samples = find_samples(data)
    canvas = np.zeros((height, width, 3), np.uint8)
    y = x = row_height = 0
    i = 0
    while y < height:
        image = read_image(samples[i % len(samples)].image)
        i += 1
        h, w = image.shape[:2]
        canvas[y : y + h, x : x + w] = image[: height - y, : width - x]
        row_height = max(row_height, h)
        x += w
        if x >= width:
            x, y, row_height = 0, y + row_height, 0
    return canvas


def peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of ``command`` run under /usr/bin/time -v."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return kib / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("--data", required=True, help="a data set to make the mosaic from")
    parser.add_argument("--sizes", default="2000x1500,4000x3000", help="WxH,WxH,...")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--modes", default="whole,tiled,tiled-native,one-window-native")
    parser.add_argument("--one-window-max", type=float, default=4e6, help="pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", help="copy the tiled overlays to this folder")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    tile = ["--tile", str(args.tile), "--overlap", str(args.overlap)]
    flags = {
        "whole": [],
        "tiled": tile,
        "tiled-native": [*tile, "--scale", "1"],
        "one-window-native": ["--tile", "100000", "--scale", "1"],
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.lower().split("x"))
            path = Path(tmp) / f"mosaic_{width}x{height}.png"
            Image.fromarray(mosaic(args.data, width, height)).save(path)
            rss, _ = peak_rss_mib([sys.executable, "-c", BASELINE, args.run, str(path)])
            rows.append({"size": size, "mode": "load only", "rss_mib": rss, "seconds": None})
            for mode in args.modes.split(","):
                if mode == "one-window-native" and width * height > args.one_window_max:
                    continue
                out = Path(tmp) / mode
                command = [
                    sys.executable, "-m", "pixelseg", "predict", args.run, str(path),
                    "--out", str(out), "--device", args.device, *flags[mode],
                ]  # fmt: skip
                rss, seconds = peak_rss_mib(command)
                rows.append({"size": size, "mode": mode, "rss_mib": rss, "seconds": seconds})
                print(f"{size:>10} {mode:>18}: peak RSS {rss:7.0f} MiB, {seconds:6.1f} s")
                if args.keep and mode.startswith("tiled"):
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    overlay = out / f"{path.stem}_overlay.png"
                    overlay.replace(Path(args.keep) / f"{path.stem}_{mode}_overlay.png")
    print(f"\n{'size':>10} {'mode':>18} {'peak RSS MiB':>13} {'seconds':>8}")
    for r in rows:
        seconds = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        print(f"{r['size']:>10} {r['mode']:>18} {r['rss_mib']:13.0f} {seconds:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Peak memory and time of ``pixelseg predict --tile`` on large images.

A large test picture is made as a mosaic of a data set's images at their own resolution
(e.g. 5x5 PH2 dermoscopy images for 4000x3000), so every lesion in it appears at the scale
the run was trained on. Each configuration runs ``pixelseg predict`` in a fresh process
and reports its peak RSS (``getrusage``, what ``/usr/bin/time -v`` calls the maximum
resident set size) and, on a GPU, its peak CUDA memory, next to a baseline process that
only loads the run and reads the image (what no inference can avoid):

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
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pixelseg.data.io import read_image
from pixelseg.data.layouts import find_samples

# Each measurement runs in a fresh interpreter, which reports its own peaks as JSON.
CHILD = """
import json, resource, sys, time
import torch
from pixelseg.cli import main
start = time.perf_counter()
if sys.argv[1] == "load-only":
    from pixelseg.data.io import read_image
    from pixelseg.inference import load
    load(sys.argv[2], device=sys.argv[4]); read_image(sys.argv[3]); code = 0
else:
    code = main(sys.argv[1:])
cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"code": code, "rss_mib": rss, "cuda_mib": cuda,
                  "seconds": time.perf_counter() - start}))
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


def measure(args: list[str]) -> dict:
    """Peak RSS, peak CUDA memory (MiB) and seconds of one ``pixelseg`` command (or of
    ``load-only RUN IMAGE DEVICE``) in a fresh process."""
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {result['code']}:\n{done.stderr[-2000:]}")
    return result


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
    parser.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--keep", help="copy the tiled overlays to this folder")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    tile = ["--tile", str(args.tile), "--overlap", str(args.overlap),
            "--batch-size", str(args.tile_batch)]  # fmt: skip
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
            base = measure(["load-only", args.run, str(path), args.device])
            rows.append({"size": size, "mode": "load only", **base, "seconds": None})
            for mode in args.modes.split(","):
                if mode == "one-window-native" and width * height > args.one_window_max:
                    continue
                out = Path(tmp) / mode
                command = ["predict", args.run, str(path), "--out", str(out),
                           "--device", args.device, *flags[mode]]  # fmt: skip
                result = measure(command)
                rows.append({"size": size, "mode": mode, **result})
                cuda = f", CUDA {result['cuda_mib']:.0f} MiB" if result["cuda_mib"] else ""
                print(f"{size:>10} {mode:>18}: peak RSS {result['rss_mib']:6.0f} MiB{cuda}, "
                      f"{result['seconds']:6.1f} s", flush=True)  # fmt: skip
                if args.keep and mode.startswith("tiled"):
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    overlay = out / f"{path.stem}_overlay.png"
                    overlay.replace(Path(args.keep) / f"{path.stem}_{mode}_overlay.png")
    print(f"\n{'size':>10} {'mode':>18} {'peak RSS MiB':>13} {'CUDA MiB':>9} {'seconds':>8}")
    for r in rows:
        seconds = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        cuda = f"{r['cuda_mib']:.0f}" if r["cuda_mib"] is not None else "-"
        print(f"{r['size']:>10} {r['mode']:>18} {r['rss_mib']:13.0f} {cuda:>9} {seconds:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

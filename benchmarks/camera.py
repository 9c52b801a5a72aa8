"""The page's camera mode, timed: headless Chromium with a fake camera against ``pixelseg serve``.

Makes a clip of people photos at the camera's size (each photo held for a few frames, a
Y4M file that Chromium's fake camera plays in a loop at 30 fps), starts ``pixelseg
serve RUN`` in its own process, opens the page in Debian's Chromium, starts the camera with
the chosen background, and after a warm-up counts for ``--seconds`` the frames the page
drew with a fresh matte. Prints frames per second (median of ``--repeats`` windows), the
ratio to the camera's own rate (the most the page can show: each camera picture is sent
once), and the latency: the page's median time from taking a frame to drawing it.
``--shot FILE`` saves a screenshot of the page.

    python benchmarks/camera.py --run RUN --data ../shared/data/people --engine onnx \\
        --size 320x240 --background blur --seconds 10 --shot /tmp/camera.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import free_port  # noqa: E402


def write_clip(photos: list[Path], path: Path, size: tuple[int, int], hold: int) -> int:
    """A Y4M (4:2:0, full-range BT.601, what Chromium reads) of ``photos`` cropped to
    ``size`` = (h, w), each held for ``hold`` frames. Returns the number of frames."""
    h, w = size
    frames = 0
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode())
        for photo in photos:
            image = Image.open(photo).convert("RGB")
            scale = max(w / image.width, h / image.height)
            image = image.resize((round(image.width * scale), round(image.height * scale)))
            left, top = (image.width - w) // 2, (image.height - h) // 2
            rgb = np.asarray(image.crop((left, top, left + w, top + h)), np.float32)
            y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
            u = 128 - 0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2]
            v = 128 + 0.5 * rgb[..., 0] - 0.418688 * rgb[..., 1] - 0.081312 * rgb[..., 2]
            planes = [y] + [c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (u, v)]
            data = b"".join(np.clip(p, 0, 255).round().astype(np.uint8).tobytes() for p in planes)
            for _ in range(hold):
                out.write(b"FRAME\n" + data)
                frames += 1
    return frames


def serve(run: str, engine: str, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "pixelseg", "serve", run, "--port", str(port),
               "--engine", engine, "--device", "cpu"]  # fmt: skip
    # the server's log goes to a file: a pipe nobody reads would stall it once full
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
        if server.poll() is not None:
            raise SystemExit(f"pixelseg serve stopped: {log.read_text()}")
    raise SystemExit("pixelseg serve did not start within a minute")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", default="../shared/data/people", help="images/ of photos")
    parser.add_argument("--engine", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--size", default="320x240", help="the camera's width x height")
    parser.add_argument("--background", default="blur", choices=("blur", "colour", "picture"))
    parser.add_argument("--smooth", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=10.0, help="one counting window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--shot", help="save a screenshot of the page here")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    width, height = (int(v) for v in args.size.lower().split("x"))
    photos = sorted((Path(args.data) / "images").iterdir())[-args.photos :]
    work = Path(tempfile.mkdtemp(prefix="pixelseg-camera-"))
    clip = work / "clip.y4m"
    n = write_clip(photos, clip, (height, width), hold=15)
    print(f"clip: {len(photos)} photos, {n} frames at {width}x{height}, 30 fps, looped")
    port = free_port()
    server = serve(args.run, args.engine, port, work / "serve.log")
    flags = ["--no-sandbox", "--use-fake-device-for-media-stream",
             "--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={clip}",
             "--disable-background-networking", "--disable-component-update"]  # fmt: skip
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=flags)
            page = browser.new_page(viewport={"width": 800, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('model').textContent.includes(':')")
            page.evaluate(f"document.getElementById('smooth').value = {args.smooth}")
            page.click("#camera-start")
            page.select_option("#background", args.background)
            page.wait_for_function("window.pixelsegCamera.frames >= 20", timeout=120_000)
            rates = []
            for _ in range(args.repeats):
                first = page.evaluate("[window.pixelsegCamera.frames, performance.now()]")
                time.sleep(args.seconds)
                last = page.evaluate("[window.pixelsegCamera.frames, performance.now()]")
                rates.append((last[0] - first[0]) / ((last[1] - first[1]) / 1000))
            errors = page.evaluate("window.pixelsegCamera.errors")
            latency = page.evaluate("window.pixelsegCamera.latency")
            shown = page.evaluate("document.getElementById('fps').textContent")
            if args.shot:
                page.locator("#camera").screenshot(path=args.shot)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    fps = statistics.median(rates)
    report = {
        "engine": args.engine, "camera": f"{width}x{height}", "background": args.background,
        "fps_median": round(fps, 1), "fps_windows": [round(r, 1) for r in rates],
        "of_camera_rate": round(fps / 30, 2), "latency_ms": round(latency, 1),
        "page_readout": shown, "frame_errors": errors,
    }  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""The web page in a real browser: headless Chromium (Debian's) driven by Playwright uploads
a PH2 image and gets an overlay of the image's size and a mask download.

Needs /usr/bin/chromium and the playwright package; skipped without them unless
PIXELSEG_REQUIRE_BROWSER=1 (as in CI, where ``.ci/run`` installs Chromium)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelseg.config import TrainConfig
from pixelseg.data.layouts import find_samples
from pixelseg.engine.train import fit
from settings import FAST

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _need_browser():
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package")
        sync_playwright = None
    if not Path(CHROMIUM).exists():
        missing.append("Chromium (apt-get install chromium)")
    if missing:
        message = f"browser test needs {' and '.join(missing)}"
        if os.environ.get("PIXELSEG_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


@contextlib.contextmanager
def _serving(run: Path):
    """``pixelseg serve`` of ``run`` on a free port of 127.0.0.1, in a thread of this process."""
    pytest.importorskip("fastapi")
    import uvicorn

    from pixelseg.serve.app import ServeSettings, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServeSettings(run=str(run), device="cpu"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server(tiny_data: Path, tmp_path: Path):
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=2, **FAST))
    with _serving(run) as url:
        yield url


def test_page_shows_the_overlay_and_downloads_the_mask(
    server: str, real_data: Path, tmp_path: Path
) -> None:
    sync_playwright = _need_browser()
    _, samples = find_samples(real_data / "ph2")
    image = samples[0].image  # a PH2 BMP, about 765x572
    width, height = Image.open(image).size
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's screen
        page.goto(server)
        page.wait_for_function("document.getElementById('model').textContent.includes('unet')")
        page.set_input_files("#file", str(image))
        page.wait_for_function("document.getElementById('result').naturalWidth > 0", timeout=60_000)
        size = page.evaluate(
            "[document.getElementById('result').naturalWidth,"
            " document.getElementById('result').naturalHeight]"
        )
        assert size == [width, height]
        assert page.evaluate("document.getElementById('result-caption').textContent") == "overlay"
        # the page fits a phone's width: no horizontal scrolling
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        with page.expect_download() as download:
            page.click("#download")
        saved = tmp_path / "mask.png"
        download.value.save_as(saved)
        mask = Image.open(saved)
        assert mask.size == (width, height) and mask.mode == "L"
        page.check("#cutout")
        page.wait_for_function("document.getElementById('result-caption').textContent === 'cutout'")
        assert page.evaluate("document.getElementById('status').textContent") == ""
        browser.close()


def _y4m_clip(path: Path, frames: int = 20, size: tuple[int, int] = (240, 320)) -> np.ndarray:
    """A Y4M clip (what Chromium's fake camera plays, in a loop) of the tiny data set's kind
    of picture: a bright disc on dark noise, new noise each frame. Returns the disc."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3.5) ** 2
    rng = np.random.default_rng(0)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F15:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            grey = rng.integers(0, 80, (h, w)).astype(np.uint8)  # grey: Y is the picture
            grey[disc] += 150
            chroma = np.full((h // 2) * (w // 2) * 2, 128, np.uint8)  # no colour
            out.write(b"FRAME\n" + grey.tobytes() + chroma.tobytes())
    return disc


def test_camera_mode_replaces_the_background(tiny_data: Path, tmp_path: Path) -> None:
    """Chromium's fake camera plays a clip; the page sends its frames over the WebSocket and
    draws the disc (the 'person') over a plain green background."""
    sync_playwright = _need_browser()
    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=12, patience=0, **FAST))
    disc = _y4m_clip(tmp_path / "clip.y4m")
    camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              f"--use-file-for-fake-video-capture={tmp_path / 'clip.y4m'}"]  # fmt: skip
    with _serving(run) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", *camera])
        page = browser.new_page()
        page.goto(url)
        page.click("#camera-start")
        page.select_option("#background", "colour")  # shown once the camera is open
        page.fill("#bg-colour", "#00ff00")
        seen = page.evaluate("window.pixelsegCamera.frames")
        page.wait_for_function(f"window.pixelsegCamera.frames >= {seen + 10}", timeout=60_000)
        rgba = page.evaluate(
            "(() => { const c = document.getElementById('live');"
            " return [c.width, c.height, Array.from(c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data)]; })()"
        )
        fps = page.evaluate("document.getElementById('fps').textContent")
        status = page.evaluate("document.getElementById('status').textContent")
        errors = page.evaluate("window.pixelsegCamera.errors")
        browser.close()
    width, height, data = rgba
    assert (height, width) == disc.shape
    pixels = np.array(data, np.uint8).reshape(height, width, 4)[..., :3].astype(int)
    green = (pixels[..., 0] < 30) & (pixels[..., 1] > 225) & (pixels[..., 2] < 30)
    assert green[~disc].mean() > 0.9  # the background is replaced
    assert green[disc].mean() < 0.1  # the disc is the camera's own (bright) pixels
    assert pixels[disc].mean() > 120
    assert status == "" and errors == 0
    assert float(fps.split()[0]) > 0 and fps.endswith(" fps")

"""The web page in a real browser: headless Chromium (Debian's) driven by Playwright uploads
a PH2 image and gets an overlay of the image's size and a mask download.

Needs /usr/bin/chromium and the playwright package; skipped without them unless
PIXELSEG_REQUIRE_BROWSER=1 (as in CI, where ``.ci/run`` installs Chromium)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

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


@pytest.fixture
def server(tiny_data: Path, tmp_path: Path):
    """``pixelseg serve`` on a free port of 127.0.0.1, in a thread of this process."""
    pytest.importorskip("fastapi")
    import uvicorn

    from pixelseg.serve.app import ServeSettings, create_app

    run = tmp_path / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(run), epochs=2, **FAST))
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
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


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

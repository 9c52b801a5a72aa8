"""Shared fixtures: the real data sets (``../shared/data``) and tiny generated data sets."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real data sets (env PIXELSEG_DATA, default ../shared/data).

    Skips when absent, unless PIXELSEG_REQUIRE_DATA=1 (as in CI), where that is a failure.
    """
    root = Path(os.environ.get("PIXELSEG_DATA", REPO.parent / "shared" / "data"))
    if not (root / "ph2").is_dir():
        if os.environ.get("PIXELSEG_REQUIRE_DATA") == "1":
            pytest.fail(f"real data required (PIXELSEG_REQUIRE_DATA=1) but {root} has no ph2/")
        pytest.skip(f"real data not found at {root} (set PIXELSEG_DATA)")
    return root


def write_pair(
    images: Path, masks: Path, stem: str, size=(40, 48), seed=0, image_ext=".png", mask_ext=".png"
) -> None:
    """A random image and a mask with a bright disc (0/255), ``size`` = (height, width)."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3.5) ** 2
    image[disc] += 150
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(images / f"{stem}{image_ext}")
    Image.fromarray((disc * 255).astype(np.uint8)).save(masks / f"{stem}{mask_ext}")


def _make_tiny(root: Path) -> Path:
    for i in range(12):
        write_pair(root / "images", root / "masks", f"img{i:02d}", seed=i)
    return root


@pytest.fixture
def tiny_folders(tmp_path: Path) -> Path:
    """A MADS-style images/ + masks/ folder of 12 easy pairs (PNG), private to the test."""
    return _make_tiny(tmp_path / "tiny")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same 12 pairs, shared by the whole session: tests must not modify it."""
    return _make_tiny(tmp_path_factory.mktemp("tiny-shared"))


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """The messages pixelseg's module loggers send at INFO and above during the test."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("pixelseg"), Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="session", autouse=True)
def disk_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Data sets cached on disk go to a temporary folder, never to the user's cache (in CI
    the shared data is read-only and nothing may be left behind)."""
    from pixelseg.data.cache import CACHE_ENV

    folder = tmp_path_factory.mktemp("pixelseg-cache")
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if before is None:
        del os.environ[CACHE_ENV]
    else:
        os.environ[CACHE_ENV] = before

"""A data set decoded once, at training size, into files on disk: for data larger than memory.

The in-memory cache of :class:`~pixelseg.data.dataset.SegmentationDataset` holds every
image at training size (50,000 photos at 512x512 are 39 GB). Past a size (see
:func:`use_disk`) the pairs go instead into three flat files in a cache folder:

- ``images.bin``: (N, C, H, W) uint8, one fixed-size record per image;
- ``masks.bin``: (N, H, W) uint8;
- ``originals.bin``: for evaluation sets (``keep_original``), the original-size masks
  (evaluation scores at the image's own size), one after another, with their offsets in
  ``meta.json`` (which has every pair's original shape);
- ``meta.json``: what the cache was built from (each file's path, size and modification
  time, the training size, channels, classes), and a CRC-32 of every record.

Records are read with ``os.pread`` into fresh buffers rather than memory-mapped: the
kernel's page cache holds the file, not the process, so a process's memory does not grow
with the data set however many epochs read it. A cache is reused by any run whose data
and settings match ``meta.json`` exactly (a changed file changes its size or time, and the
cache is rebuilt); one that does not match, or whose files have the wrong length, is
rebuilt. Each record's CRC is checked when it is read: a damaged record is decoded again
from its image and mask and rewritten, never handed to training as data.

Caches live in ``$PIXELSEG_CACHE`` (default ``~/.cache/pixelseg``), one folder per data set
and settings, built under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixelseg.data.layouts import Sample
from pixelseg.errors import DataError

CACHE_ENV = "PIXELSEG_CACHE"
VERSION = 1
# Past this many bytes of images and masks at training size a data set is cached on disk.
MEMORY_LIMIT = 2 * 2**30

__all__ = ["DiskArrays", "cache_root", "use_disk"]

# (image at training size HxWxC, mask at training size HxW, original mask) of one sample
Loader = Callable[[Sample], tuple[np.ndarray, np.ndarray, np.ndarray]]


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pixelseg"


def use_disk(mode: str, n: int, size: tuple[int, int], channels: int) -> bool:
    """``cache`` ``disk`` or ``memory`` as asked; ``auto``: disk past :data:`MEMORY_LIMIT`."""
    if mode != "auto":
        return mode == "disk"
    return n * (channels + 1) * size[0] * size[1] > MEMORY_LIMIT


@dataclass(frozen=True)
class _Layout:
    n: int
    channels: int
    size: tuple[int, int]

    @property
    def image_bytes(self) -> int:
        return self.channels * self.size[0] * self.size[1]

    @property
    def mask_bytes(self) -> int:
        return self.size[0] * self.size[1]


class DiskArrays:
    """The cached records of one data set at one training size (see the module's notes)."""

    def __init__(self, folder: Path, meta: dict, load: Loader, samples: Sequence[Sample]) -> None:
        self.folder, self.meta, self.load, self.samples = folder, meta, load, list(samples)
        key = meta["key"]
        self.layout = _Layout(len(self.samples), key["channels"], tuple(key["size"]))
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    # -- opening and building --------------------------------------------------------------

    @classmethod
    def open(
        cls, samples: Sequence[Sample], size: tuple[int, int], channels: int, settings: dict,
        load: Loader, progress: bool = False, root: Path | None = None,
    ) -> DiskArrays:  # fmt: skip
        """The cache of ``samples`` at ``size``, reused when it matches, else built now.
        ``settings``: whatever else changes the decoded pairs (classes, colours, void)."""
        key = _key(samples, size, channels, settings)  # settings hold keep_original
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        folder = (root or cache_root()) / digest
        meta = _read_meta(folder, key)
        if meta is None:
            meta = _build(folder, key, samples, _Layout(len(samples), channels, size), load,
                          progress)  # fmt: skip
        return cls(folder, meta, load, samples)

    # -- reading ----------------------------------------------------------------------------

    def image(self, index: int) -> np.ndarray:
        """(C, H, W) uint8."""
        n = self.layout.image_bytes
        data = self._read("images.bin", index, n, index * n, "images")
        return np.frombuffer(data, np.uint8).reshape(self.layout.channels, *self.layout.size)

    def mask(self, index: int) -> np.ndarray:
        """(H, W) uint8 at training size."""
        n = self.layout.mask_bytes
        data = self._read("masks.bin", index, n, index * n, "masks")
        return np.frombuffer(data, np.uint8).reshape(self.layout.size)

    def original_mask(self, index: int) -> np.ndarray:
        offset, height, width = self.meta["originals"][index]
        data = self._read("originals.bin", index, height * width, offset, "originals")
        return np.frombuffer(data, np.uint8).reshape(height, width)

    def original_size(self, index: int) -> tuple[int, int]:
        _, height, width = self.meta["originals"][index]
        return height, width

    def _read(self, name: str, index: int, n: int, offset: int, kind: str) -> bytes:
        data = os.pread(self._fd(name), n, offset)
        if len(data) == n and zlib.crc32(data) == self.meta["crc"][kind][index]:
            return data
        self._repair(index)  # damaged on disk since it was written: decode it again
        return os.pread(self._fd(name), n, offset)

    def _repair(self, index: int) -> None:
        sample = self.samples[index]
        warnings.warn(f"{self.folder}: the cached copy of {sample.image} was damaged; "
                      "decoding it again", stacklevel=4)  # fmt: skip
        image, mask, original = self.load(sample)
        records = _records(image, mask, original, self.meta["key"].get("keep_original", True))
        offsets = {"images": index * self.layout.image_bytes,
                   "masks": index * self.layout.mask_bytes,
                   "originals": self.meta["originals"][index][0]}  # fmt: skip
        for kind, data in records.items():
            if zlib.crc32(data) != self.meta["crc"][kind][index]:
                raise OSError(f"{sample.image} decodes differently from when {self.folder} "
                              "was built; delete that folder")  # fmt: skip
            fd = os.open(self.folder / f"{kind}.bin", os.O_WRONLY)
            try:
                os.pwrite(fd, data, offsets[kind])
            finally:
                os.close(fd)

    def _fd(self, name: str) -> int:
        if self._pid != os.getpid():  # a forked DataLoader worker opens its own
            self._fds, self._pid = {}, os.getpid()
        if name not in self._fds:
            self._fds[name] = os.open(self.folder / name, os.O_RDONLY)
        return self._fds[name]

    def __getstate__(self) -> dict[str, Any]:  # spawned workers reopen the files
        return {**self.__dict__, "_fds": {}}

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._fds.values():
                os.close(fd)


def _key(samples: Sequence[Sample], size: tuple[int, int], channels: int, settings: dict) -> dict:
    def stat(path: Path | None) -> list:
        if path is None:
            return [None, 0, 0]
        info = os.stat(path)
        return [str(Path(path).resolve()), info.st_size, info.st_mtime_ns]

    files = [stat(s.image) + stat(s.mask) for s in samples]
    return {"version": VERSION, "size": list(size), "channels": channels, **settings,
            "files": files}  # fmt: skip


def _read_meta(folder: Path, key: dict) -> dict | None:
    """The folder's ``meta.json`` when it was built from ``key`` and its files are whole."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key:
        return None
    layout = _Layout(len(key["files"]), key["channels"], tuple(key["size"]))
    originals = meta.get("originals", [])
    kept = sum(h * w for _, h, w in originals) if key.get("keep_original") else 0
    expected = {
        "images.bin": layout.n * layout.image_bytes,
        "masks.bin": layout.n * layout.mask_bytes,
        "originals.bin": kept,
    }
    for name, length in expected.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != length:
            return None
    return meta


def _records(
    image: np.ndarray, mask: np.ndarray, original: np.ndarray, keep_original: bool
) -> dict[str, bytes]:
    return {
        "images": np.ascontiguousarray(image.transpose(2, 0, 1), np.uint8).tobytes(),
        "masks": np.ascontiguousarray(mask, np.uint8).tobytes(),
        # a training set's full-size masks would outweigh its images: evaluation sets only
        "originals": np.ascontiguousarray(original, np.uint8).tobytes() if keep_original else b"",
    }


def _build(
    folder: Path, key: dict, samples: Sequence[Sample], layout: _Layout, load: Loader,
    progress: bool,
) -> dict:  # fmt: skip
    """Decode every pair once into a new folder, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        meta = _fill(partial, key, samples, load, progress)
        _replace_folder(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return meta


def _fill(partial: Path, key: dict, samples: Sequence[Sample], load: Loader,
          progress: bool) -> dict:  # fmt: skip
    from tqdm.auto import tqdm

    crc: dict[str, list[int]] = {"images": [], "masks": [], "originals": []}
    originals, offset, problems = [], 0, []
    files = {kind: open(partial / f"{kind}.bin", "wb") for kind in crc}  # noqa: SIM115
    try:
        for sample in tqdm(samples, desc="caching", unit="img", leave=False,
                           disable=None if progress else True):  # fmt: skip
            try:
                image, mask, original = load(sample)
            except DataError as exc:  # every bad pair is named, as the in-memory cache does
                problems.append(str(exc))
                continue
            for kind, data in _records(image, mask, original, key["keep_original"]).items():
                files[kind].write(data)
                crc[kind].append(zlib.crc32(data))
            originals.append([offset, *original.shape])
            offset += original.size if key["keep_original"] else 0
    finally:
        for f in files.values():
            f.close()
    if problems:
        raise DataError("Cannot load the data set:", problems)
    meta = {"key": key, "crc": crc, "originals": originals}
    (partial / "meta.json").write_text(json.dumps(meta))  # last: its presence means whole
    return meta


def _replace_folder(partial: Path, folder: Path) -> None:
    """Rename the finished cache into place (a damaged one there is moved aside first; a
    complete one that another process just finished is kept)."""
    if folder.exists():
        if _read_meta(folder, json.loads((partial / "meta.json").read_text())["key"]):
            shutil.rmtree(partial, ignore_errors=True)
            return
        stale = folder.with_name(f".{folder.name}.stale-{os.getpid()}")
        os.replace(folder, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(partial, folder)
    except OSError:  # another process renamed its own copy into place first
        if not folder.is_dir():
            raise
        shutil.rmtree(partial, ignore_errors=True)

"""Synthetic dermoscopy-like images with exact lesion masks.

pixelseg ships no real medical images, yet its offline demo and its tests need a data set
that looks like the real task (skin lesion segmentation, as in ISIC / MADS / Kaggle dumps)
and that a small U-Net can learn in minutes on a CPU. This module draws one:

* a textured skin-tone background (light to medium-dark tones, low-frequency illumination,
  skin furrows, pores and sensor grain);
* one irregular pigmented lesion: a star-shaped blob whose radius is a random Fourier series
  of the angle (plus a little fine noise for a ragged edge), at a random position, size and
  orientation, covering about 3%-60% of the frame and sometimes running off its edge;
* colour inside the lesion from a melanin-like absorption model (dark brown centre, lighter
  rim, a faint pigment network, darker dots/globules, sometimes a blue-grey zone);
* nuisances a real data set has: dark hairs across skin and lesion (in about half of the
  images), dermoscope vignetting (dark circular corners), and a few faint or tiny lesions.

The mask is the exact lesion region: a threshold of the same shape field that shades the
image. The image border is only slightly softened around that threshold, so the label stays
learnable, while hairs and vignetting are drawn on the image alone, as in real photographs.

Everything is deterministic in the seed (``numpy.random.default_rng(seed)``, no global state)
and vectorised: about 10-20 ms per 192x256 sample on a laptop-class CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pixelseg.errors import SettingsError

__all__ = ["make_sample", "write_synthetic_dataset"]

# Sample i of a data set with seed s uses seed s * _SEED_STRIDE + i: a prime stride keeps the
# seeds of different data sets from overlapping for any realistic n.
_SEED_STRIDE = 100_003

# Skin tones as they look under a dermoscope's white LEDs, light to medium-dark (sRGB).
_SKIN_TONES = np.array(
    [
        [240, 208, 192],
        [228, 184, 160],
        [212, 160, 128],
        [186, 132, 98],
        [150, 102, 72],
    ],
    dtype=np.float32,
)

# Relative absorption of melanin in R, G, B: it absorbs blue and green more than red, which is
# what makes pigment look brown on any skin tone when applied as a transmittance.
_MELANIN = np.array([0.85, 1.2, 1.45], dtype=np.float32)

_MIN_SIZE = 16


def make_sample(seed: int, size: tuple[int, int] = (192, 256)) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic dermoscopy image and its lesion mask.

    ``size`` is (height, width). Returns ``(image, mask)``: an HxWx3 uint8 RGB image and an
    HxW uint8 mask with values 0 (skin) and 1 (lesion); the mask always has some of both.
    The same seed always gives identical arrays.
    """
    height, width = _check_size(size)
    rng = np.random.default_rng(_check_seed(seed))
    # One pixel at 192 px height is the reference scale of every length below, so a sample
    # drawn at another size looks like the same photograph resampled.
    scale = min(height, width) / 192.0

    skin = _skin(rng, height, width, scale)
    faint = rng.random() < 0.05
    field, threshold = _lesion_shape(rng, height, width, faint)
    mask = field <= threshold

    image = _pigment(rng, skin, field, threshold, scale, faint)
    if rng.random() < 0.5:
        image = _hairs(rng, image, scale)
    if rng.random() < 0.35:
        image = _vignette(rng, image)
    image = _finish(rng, image, scale)
    return image, mask.astype(np.uint8)


def write_synthetic_dataset(
    root: str | Path,
    n: int = 160,
    size: tuple[int, int] = (192, 256),
    seed: int = 0,
) -> Path:
    """Write ``n`` samples as ``root/images/synth_0000.png`` and ``root/masks/synth_0000.png``.

    This is the MADS/Kaggle layout that pixelseg's folder loader reads: RGB images and 8-bit
    greyscale masks with values 0 and 255, paired by file name. Sample ``i`` comes from seed
    ``seed * 100003 + i``, so data sets with different seeds differ. Returns ``root``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SettingsError(f"n must be a positive integer, got {n!r}")
    _check_seed(seed)
    _check_size(size)
    root = Path(root)
    image_dir = root / "images"
    mask_dir = root / "masks"
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    # Four digits match the demo's naming; more samples simply get wider numbers.
    digits = max(4, len(str(n - 1)))
    for i in range(n):
        image, mask = make_sample(int(seed) * _SEED_STRIDE + i, size)
        name = f"synth_{i:0{digits}d}.png"
        Image.fromarray(image).save(image_dir / name)
        Image.fromarray(mask * 255).save(mask_dir / name)
    return root


# --------------------------------------------------------------------------- arguments


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SettingsError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = size
    except (TypeError, ValueError):
        raise SettingsError(f"size must be a (height, width) pair, got {size!r}") from None
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise SettingsError(f"size must hold two integers, got {size!r}")
        if value < _MIN_SIZE:
            raise SettingsError(f"size must be at least {_MIN_SIZE} pixels each way, got {size!r}")
    return int(height), int(width)


# --------------------------------------------------------------------------- noise helpers


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: float) -> np.ndarray:
    """Zero-mean, unit-ish noise with about ``cells`` features across the longer side.

    A small random grid upsampled bicubically by Pillow is far cheaper than filtering
    full-size white noise, and smooth enough for illumination and pigment variation.
    """
    longer = max(height, width)
    grid_h = max(2, round(cells * height / longer) + 2)
    grid_w = max(2, round(cells * width / longer) + 2)
    grid = rng.standard_normal((grid_h, grid_w)).astype(np.float32)
    up = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32)


def _fractal_noise(
    rng: np.random.Generator, height: int, width: int, cells: float, octaves: int
) -> np.ndarray:
    """Sum of smooth noises at doubling frequencies and halving amplitudes (fBm)."""
    total = np.zeros((height, width), dtype=np.float32)
    amplitude = 1.0
    for _ in range(octaves):
        total += amplitude * _smooth_noise(rng, height, width, cells)
        cells *= 2.0
        amplitude *= 0.5
    return total / np.float32(np.sqrt(sum(0.25**k for k in range(octaves))))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _blur(array: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a float array in [0, 1] (through an 8-bit Pillow image)."""
    img = Image.fromarray(np.clip(array * 255.0, 0, 255).astype(np.uint8))
    out = img.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(out, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------- skin


def _skin(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Skin background as float RGB in 0..255."""
    # Favour lighter tones (as public dermoscopy archives do) but reach medium-dark ones.
    t = rng.beta(1.3, 1.8) * (len(_SKIN_TONES) - 1)
    low = int(min(np.floor(t), len(_SKIN_TONES) - 2))
    tone = _SKIN_TONES[low] + (t - low) * (_SKIN_TONES[low + 1] - _SKIN_TONES[low])
    # Jitter each channel, but keep R >= G >= B: skin is never green or blue.
    tone = np.sort(tone + rng.normal(0.0, 5.0, size=3).astype(np.float32))[::-1]

    # Illumination: a tilted plane plus broad blotches, the uneven light of a hand-held scope.
    yy, xx = _unit_grid(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(0.0, 0.12)
    light = 1.0 + tilt * (np.cos(angle) * xx + np.sin(angle) * yy)
    light = light + rng.uniform(0.02, 0.06) * _smooth_noise(rng, height, width, 3)
    skin = tone[None, None, :] * light[..., None]

    # Redness (erythema) varies slowly and mostly lowers green and blue.
    red = rng.uniform(0.0, 0.08) * np.clip(_fractal_noise(rng, height, width, 4, 2) + 0.5, 0, None)
    skin = skin * (1.0 - red[..., None] * np.array([0.0, 0.6, 0.45], dtype=np.float32))

    # Furrows: thin ridges where mid-frequency noise crosses zero form the polygonal pattern
    # of the skin surface.
    furrow_noise = _smooth_noise(rng, height, width, rng.uniform(28, 40))
    furrows = np.exp(-((furrow_noise / 0.15) ** 2))
    skin = skin * (1.0 - rng.uniform(0.015, 0.04) * furrows)[..., None]

    # Pores: sparse dots softened to a pixel or two (as many per area at any resolution).
    pores = (rng.random((height, width)) < 0.002 / scale**2).astype(np.float32)
    pores = _blur(pores, 0.8 * scale) * 4.0
    skin = skin * (1.0 - rng.uniform(0.08, 0.2) * np.clip(pores, 0, 1))[..., None]

    # Fine grain: luminance mottling of the epidermis.
    grain = _fractal_noise(rng, height, width, 40, 2)
    skin = skin * (1.0 + 0.025 * grain)[..., None]
    return skin.astype(np.float32)


def _unit_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates scaled so the longer side spans [-1, 1]."""
    longer = max(height, width)
    ys = (np.arange(height, dtype=np.float32) - (height - 1) / 2) * (2.0 / longer)
    xs = (np.arange(width, dtype=np.float32) - (width - 1) / 2) * (2.0 / longer)
    return np.meshgrid(ys, xs, indexing="ij")


# --------------------------------------------------------------------------- lesion shape


def _lesion_shape(
    rng: np.random.Generator, height: int, width: int, faint: bool
) -> tuple[np.ndarray, float]:
    """A star-shaped field and the threshold at which it is the lesion.

    The field is ``distance / r(angle)`` in a rotated, stretched frame around the lesion
    centre, with ``r`` a random Fourier series of the angle; its level sets are scaled copies
    of one irregular blob. The threshold is picked as a quantile of the field so the lesion
    covers exactly the drawn fraction of the *frame*, also when it runs off the image.
    """
    # Lesions in dermoscopy photos are mostly near the middle, sometimes off to a side.
    spread = 0.12 if rng.random() < 0.85 else 0.3
    cy = height * (0.5 + np.clip(rng.normal(0.0, spread), -0.4, 0.4))
    cx = width * (0.5 + np.clip(rng.normal(0.0, spread), -0.4, 0.4))
    ys = np.arange(height, dtype=np.float32)[:, None] - np.float32(cy)
    xs = np.arange(width, dtype=np.float32)[None, :] - np.float32(cx)

    orientation = rng.uniform(0, np.pi)
    aspect = rng.uniform(1.0, 1.6)
    cos_o, sin_o = np.float32(np.cos(orientation)), np.float32(np.sin(orientation))
    u = (xs * cos_o + ys * sin_o) / np.float32(np.sqrt(aspect))
    v = (-xs * sin_o + ys * cos_o) * np.float32(np.sqrt(aspect))
    angle = np.arctan2(v, u)
    distance = np.hypot(u, v)

    radius = np.ones_like(angle)
    # Strong low harmonics make the overall irregular outline; weaker high ones add lobes
    # and notches. The floor keeps the radius positive when the harmonics pile up.
    irregularity = rng.uniform(0.15, 0.6)
    for k in range(2, 9):
        amp = irregularity * rng.uniform(0.3, 1.0) / k**1.1
        radius = radius + amp * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    radius = np.maximum(radius, 0.25)

    # Fine multiplicative noise gives a ragged edge no finite Fourier series would.
    ragged = 1.0 + rng.uniform(0.01, 0.05) * _fractal_noise(rng, height, width, 12, 3)
    field = distance / radius * ragged

    if faint:
        fraction = rng.uniform(0.008, 0.025)
    else:
        # Log-uniform: small and large lesions are both common.
        fraction = float(np.exp(rng.uniform(np.log(0.03), np.log(0.6))))
    flat = field.ravel()
    k = max(1, int(round(fraction * flat.size))) - 1
    threshold = float(np.partition(flat, k)[k])
    return field.astype(np.float32), threshold


# --------------------------------------------------------------------------- lesion colour


def _pigment(
    rng: np.random.Generator,
    skin: np.ndarray,
    field: np.ndarray,
    threshold: float,
    scale: float,
    faint: bool,
) -> np.ndarray:
    """Shade the lesion onto the skin; returns float RGB in 0..255."""
    height, width = field.shape
    depth = field / threshold  # 0 at the centre, 1 on the border

    # Soft border: a smoothstep over a couple of pixels, centred on the mask border so the
    # label sits where a person would draw it. The field's gradient turns field units into
    # pixels.
    grad_y, grad_x = np.gradient(field)
    per_pixel = np.maximum(np.hypot(grad_y, grad_x), 1e-6)
    signed_px = (field - threshold) / per_pixel
    softness = rng.uniform(1.0, 3.5) * scale
    inside = 1.0 - _smoothstep(signed_px / (2 * softness) + 0.5)

    # Pigment density: darker centre, lighter rim, broad blotches.
    strength = rng.uniform(0.25, 0.45) if faint else rng.uniform(0.55, 1.5)
    rim = rng.uniform(0.35, 0.75)
    density = strength * (1.0 - rim * np.clip(depth, 0, 1) ** 1.5)
    density = density * (1.0 + 0.3 * _fractal_noise(rng, height, width, 6, 3))

    # An off-centre dark blotch: real lesions are rarely symmetric.
    blotch = _smooth_noise(rng, height, width, 2.5)
    density = density + strength * 0.4 * np.clip(blotch, 0, None) * (depth < 1)

    if not faint:
        density = density + _network(rng, height, width, scale) * strength * rng.uniform(0.1, 0.25)
        density = density + _globules(rng, depth, scale) * strength * 0.8
    # Granular mottling at a few pixels' scale keeps the pigment from looking painted on.
    density = density * (1.0 + 0.12 * _smooth_noise(rng, height, width, 60))
    density = np.clip(density, 0.0, None) * inside

    absorb = _MELANIN * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    image = skin * np.exp(-density[..., None] * absorb)

    if not faint and rng.random() < 0.2:
        image = _blue_grey(rng, image, depth, inside)
    return image


def _network(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """A reticular pigment network: a honeycomb of brown lines around lighter holes."""
    cell = rng.uniform(6.0, 10.0) * scale
    # Cell boundaries of Worley noise (where the nearest and second-nearest feature points
    # are equally far) form the polygonal mesh that rete ridges draw in a naevus.
    f1, f2 = _worley(rng, height, width, cell)
    # Broad, fuzzy lines (a third of a cell) with uneven strength read as pigment, not cracks.
    lines = np.exp(-(((f2 - f1) / (0.3 * cell)) ** 2))
    lines = lines * np.clip(1.0 + 0.5 * _smooth_noise(rng, height, width, 20), 0, None)
    # Fade the network in and out across the lesion, as it is patchy in real naevi.
    patchy = _smoothstep(_smooth_noise(rng, height, width, 3) + 0.3)
    return lines * patchy


def _worley(
    rng: np.random.Generator, height: int, width: int, cell: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest of one jittered point per grid cell.

    Each pixel only needs the points of its own and the eight neighbouring cells, so this
    is nine vectorised passes rather than a pixels-by-points distance matrix.
    """
    rows = int(np.ceil(height / cell)) + 2
    cols = int(np.ceil(width / cell)) + 2
    # Points of cell (i, j) (shifted by one for a border of padding cells), in pixels.
    py = ((np.arange(rows)[:, None] - 1 + rng.random((rows, cols))) * cell).astype(np.float32)
    px = ((np.arange(cols)[None, :] - 1 + rng.random((rows, cols))) * cell).astype(np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None] + np.float32(0.5)
    xs = np.arange(width, dtype=np.float32)[None, :] + np.float32(0.5)
    ci = (ys // cell).astype(np.intp) + 1
    cj = (xs // cell).astype(np.intp) + 1
    # Squared distances until the end: one square root per pixel instead of nine.
    f1 = np.full((height, width), np.inf, dtype=np.float32)
    f2 = np.full((height, width), np.inf, dtype=np.float32)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            i, j = ci + di, cj + dj
            d = np.square(py[i, j] - ys) + np.square(px[i, j] - xs)
            np.minimum(f2, np.maximum(f1, d), out=f2)
            np.minimum(f1, d, out=f1)
    return np.sqrt(f1), np.sqrt(f2)


def _globules(rng: np.random.Generator, depth: np.ndarray, scale: float) -> np.ndarray:
    """Darker dots and globules scattered inside the lesion."""
    height, width = depth.shape
    # Globules cluster: draw them around one random spot of the lesion, not uniformly.
    spot = _smooth_noise(rng, height, width, 3)
    candidates = np.flatnonzero((depth.ravel() < 0.85) & (spot.ravel() > 0.3))
    count = int(rng.integers(0, 16))
    if count == 0 or candidates.size == 0:
        return np.zeros_like(depth)
    picks = rng.choice(candidates, size=min(count, candidates.size), replace=False)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for index in picks:
        y, x = divmod(int(index), width)
        r = rng.uniform(0.6, 2.2) * scale
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(80, 256)))
    blurred = canvas.filter(ImageFilter.GaussianBlur(1.0 * scale))
    return np.asarray(blurred, dtype=np.float32) / 255.0


def _blue_grey(
    rng: np.random.Generator, image: np.ndarray, depth: np.ndarray, inside: np.ndarray
) -> np.ndarray:
    """Blend a blue-grey veil into part of the lesion (deep dermal melanin)."""
    height, width = depth.shape
    zone = _smoothstep(_smooth_noise(rng, height, width, 3) * 1.5 - 0.3)
    zone = zone * inside * (1.0 - 0.5 * np.clip(depth, 0, 1))
    veil = np.array([96, 104, 124], dtype=np.float32) * rng.uniform(0.8, 1.1)
    weight = (rng.uniform(0.3, 0.6) * zone)[..., None]
    return image * (1.0 - weight) + veil * weight


# --------------------------------------------------------------------------- nuisances


def _hairs(rng: np.random.Generator, image: np.ndarray, scale: float) -> np.ndarray:
    """Draw a few dark, thin, curved hairs (on the image only; they are not lesion)."""
    height, width = image.shape[:2]
    # Drawn at twice the size and shrunk, so hairs are anti-aliased and sub-pixel thin.
    factor = 2
    canvas = Image.new("L", (width * factor, height * factor), 0)
    draw = ImageDraw.Draw(canvas)
    diagonal = np.hypot(height, width) * factor
    for _ in range(int(rng.integers(2, 18))):
        x, y = rng.uniform(-0.1, 1.1) * width * factor, rng.uniform(-0.1, 1.1) * height * factor
        heading = rng.uniform(0, 2 * np.pi)
        bend = rng.normal(0.0, 0.05)
        steps = 24
        step = rng.uniform(0.3, 1.0) * diagonal / steps
        points = [(x, y)]
        for _ in range(steps):
            heading += bend + rng.normal(0.0, 0.03)
            x += step * np.cos(heading)
            y += step * np.sin(heading)
            points.append((x, y))
        hair_width = max(1, int(round(rng.uniform(1.0, 3.5) * scale)))
        draw.line(points, fill=int(rng.integers(170, 256)), width=hair_width, joint="curve")
    small = canvas.resize((width, height), Image.Resampling.BOX)
    alpha = (np.asarray(small, dtype=np.float32) / 255.0)[..., None]
    colour = np.array([38, 28, 22], dtype=np.float32) * rng.uniform(0.6, 1.4)
    return image * (1.0 - alpha) + colour * alpha


def _vignette(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Dark corners outside the round field of view of a contact dermoscope."""
    height, width = image.shape[:2]
    yy, xx = _unit_grid(height, width)
    radius = np.hypot(yy, xx)
    # Radius of the lit disc relative to the half-width; beyond ~1.2 only corners darken.
    edge = rng.uniform(0.95, 1.2)
    soft = rng.uniform(0.04, 0.12)
    dark = _smoothstep((radius - edge) / soft + 0.5)
    # A gentle fall-off towards the rim of the disc, as lenses do.
    falloff = 1.0 - 0.15 * np.clip(radius / edge, 0, 1) ** 2
    keep = falloff * (1.0 - 0.93 * dark)
    return image * keep[..., None]


def _finish(rng: np.random.Generator, image: np.ndarray, scale: float) -> np.ndarray:
    """Camera look: white-balance cast, exposure, sensor noise, slight blur; to uint8."""
    cast = rng.normal(1.0, 0.02, size=3).astype(np.float32)
    exposure = rng.uniform(0.92, 1.06)
    image = image * (cast * exposure)
    image = image + rng.normal(0.0, 2.0, size=image.shape).astype(np.float32)
    out = np.clip(image, 0, 255).astype(np.uint8)
    # Lenses are never perfectly sharp; a mild blur also softens the hair edges.
    return np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(0.5 * scale)))

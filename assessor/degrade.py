"""Synthetic distortions at graded strengths, globally or inside a region.

One recipe shared by the benchmarks, the tests and the training of learned critics, so that a
"level 3 blur" means the same thing everywhere. Levels run 1 (barely visible) .. 5 (severe).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Parameter per level 1..5 for each synthesizable distortion type.
LEVELS: dict[str, tuple[float, ...]] = {
    "blur": (0.8, 1.5, 2.5, 4.0, 6.0),  # Gaussian sigma, pixels
    "noise": (4.0, 8.0, 14.0, 22.0, 35.0),  # Gaussian sigma on the 0..255 scale
    "jpeg": (50, 30, 18, 10, 5),  # JPEG quality
    "overexposure": (1.3, 1.6, 2.0, 2.6, 3.4),  # gain in linear light, clipped
    "underexposure": (0.6, 0.4, 0.25, 0.15, 0.08),  # gain in linear light
    "low_contrast": (0.75, 0.55, 0.4, 0.28, 0.18),  # contrast kept around the mean
    "color_cast": (0.07, 0.13, 0.2, 0.3, 0.42),  # channel gain shift in linear light
    "artifact": (40, 24, 14, 8, 5),  # posterization: levels per channel (banding)
}
SYNTHETIC_TYPES: tuple[str, ...] = tuple(LEVELS)

CAST_DIRECTIONS = {
    "warm": (1.0, 0.35, -1.0),
    "cool": (-1.0, 0.1, 1.0),
    "green": (-0.5, 1.0, -0.5),
    "magenta": (1.0, -1.0, 1.0),
}


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), 2.2)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), 1.0 / 2.2)


def _param(distortion: str, level: float) -> float:
    """Parameter for a level; fractional levels interpolate (used by training for graded strengths)."""
    table = LEVELS[distortion]
    level = float(np.clip(level, 1.0, 5.0))
    return float(np.interp(level, np.arange(1, 6), table))


def apply_distortion(
    image: np.ndarray,
    distortion: str,
    level: float,
    rng: np.random.Generator | None = None,
    cast: str | None = None,
) -> np.ndarray:
    """Return ``image`` (H x W x 3 uint8) with ``distortion`` at ``level`` (1..5) applied everywhere."""
    if distortion not in LEVELS:
        raise ValueError(f"cannot synthesize {distortion!r}; known: {', '.join(LEVELS)}")
    rng = rng if rng is not None else np.random.default_rng(0)
    p = _param(distortion, level)
    img = np.ascontiguousarray(image)
    if distortion == "blur":
        return cv2.GaussianBlur(img, (0, 0), sigmaX=p, sigmaY=p, borderType=cv2.BORDER_REFLECT)
    if distortion == "noise":
        noise = rng.normal(0.0, p, size=img.shape)
        return np.clip(img.astype(np.float64) + noise + 0.5, 0, 255).astype(np.uint8)
    if distortion == "jpeg":
        ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(round(p))])
        assert ok
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    if distortion == "artifact":
        q = 255.0 / (max(2.0, p) - 1.0)
        return np.clip(np.round(img.astype(np.float64) / q) * q + 0.5, 0, 255).astype(np.uint8)
    x = img.astype(np.float64) / 255.0
    if distortion in ("overexposure", "underexposure"):
        y = linear_to_srgb(srgb_to_linear(x) * p)
    elif distortion == "low_contrast":
        mean = x.mean(axis=(0, 1), keepdims=True)
        y = mean + (x - mean) * p
    else:  # color_cast
        name = cast or ("warm", "cool", "green", "magenta")[int(rng.integers(0, 4))]
        direction = np.array(CAST_DIRECTIONS[name])
        gains = 1.0 + p * direction
        y = linear_to_srgb(srgb_to_linear(x) * gains[None, None, :])
    return np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8)


@dataclass
class LocalDefect:
    image: np.ndarray  # the degraded image
    mask: np.ndarray  # H x W float 0..1, where the distortion was applied
    box: tuple[int, int, int, int]  # bounding box of the mask, x1/y1 exclusive
    distortion: str
    level: float


def region_mask(
    size: tuple[int, int], box: tuple[int, int, int, int], *, shape: str = "rect", feather: float = 0.0
) -> np.ndarray:
    """A 0..1 mask (H x W float32) of a rectangle or ellipse, optionally with soft edges."""
    w, h = size
    x0, y0, x1, y1 = box
    mask = np.zeros((h, w), np.float32)
    if shape == "ellipse":
        rect = (((x0 + x1) / 2.0, (y0 + y1) / 2.0), (float(x1 - x0), float(y1 - y0)), 0.0)
        cv2.ellipse(mask, rect, 1.0, thickness=-1)
    else:
        mask[y0:y1, x0:x1] = 1.0
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=feather)
    return mask


def random_box(
    size: tuple[int, int], rng: np.random.Generator, frac: tuple[float, float] = (0.2, 0.4)
) -> tuple[int, int, int, int]:
    w, h = size
    bw = int(round(w * rng.uniform(*frac)))
    bh = int(round(h * rng.uniform(*frac)))
    x0 = int(rng.integers(0, w - bw + 1))
    y0 = int(rng.integers(0, h - bh + 1))
    return (x0, y0, x0 + bw, y0 + bh)


def degrade_region(
    image: np.ndarray,
    distortion: str,
    level: float,
    box: tuple[int, int, int, int],
    rng: np.random.Generator | None = None,
    *,
    shape: str = "rect",
    feather: float = 0.0,
) -> LocalDefect:
    """Apply ``distortion`` inside ``box`` only (hard or feathered edge, rectangle or ellipse)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    h, w = image.shape[:2]
    mask = region_mask((w, h), box, shape=shape, feather=feather)
    degraded = apply_distortion(image, distortion, level, rng)
    m = mask[:, :, None]
    out = np.clip(image.astype(np.float32) * (1 - m) + degraded.astype(np.float32) * m + 0.5, 0, 255)
    ys, xs = np.nonzero(mask > 0.5)
    tight = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else box
    return LocalDefect(out.astype(np.uint8), mask, tight, distortion, float(level))

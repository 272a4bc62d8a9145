"""Crop-around-the-mask geometry and exact paste-back.

Shared by the sdxl refiner and ComfyUI's sampler refiner: both work on a padded crop around the
mask at the model's working size, then paste the result back through the soft mask so that every
pixel where the mask is 0 stays exactly what it was (no seams, no drift outside the region).
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]


def mask_bbox(mask: np.ndarray, threshold: float = 0.0) -> Box | None:
    """Tight box (x0, y0, x1, y1), x1/y1 exclusive, of the pixels where ``mask > threshold``."""
    m = np.asarray(mask) > threshold
    if m.ndim != 2:
        raise ValueError(f"a mask is H x W, got shape {np.asarray(mask).shape}")
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _grow(lo: int, hi: int, target: int, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) to ``target`` length around its centre, shifted to stay inside [0, limit)."""
    target = min(target, limit)
    extra = target - (hi - lo)
    if extra <= 0:
        return lo, hi
    lo -= extra // 2
    hi += extra - extra // 2
    if lo < 0:
        hi, lo = hi - lo, 0
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return max(0, lo), min(limit, hi)


def crop_box_for_mask(
    mask: np.ndarray,
    *,
    padding: int = 32,
    multiple: int = 8,
    min_size: int = 64,
    align: int = 1,
    threshold: float = 0.0,
) -> Box:
    """The crop that holds the mask plus ``padding`` pixels of context on every side.

    Its sides are multiples of ``multiple`` where the image allows (latent sizes), at least
    ``min_size``, its origin a multiple of ``align`` (16 keeps a JPEG grid aligned, colour planes
    included), and it never leaves the image. Raises ValueError for an empty mask.
    """
    mask = np.asarray(mask)
    h, w = mask.shape[:2]
    tight = mask_bbox(mask, threshold)
    if tight is None:
        raise ValueError("the mask is empty: nothing to crop around")
    x0, y0, x1, y1 = tight
    x0, y0 = max(0, x0 - padding), max(0, y0 - padding)
    x1, y1 = min(w, x1 + padding), min(h, y1 + padding)
    if align > 1:
        x0, y0 = x0 - x0 % align, y0 - y0 % align
    out = []
    for lo, hi, limit in ((x0, x1, w), (y0, y1, h)):
        size = max(hi - lo, min_size)
        if multiple > 1:
            size = -(-size // multiple) * multiple
        if align > 1:  # grow to the right / bottom only, to keep the origin aligned
            hi = min(limit, lo + size)
            if hi - lo < min(size, limit):
                lo, hi = _grow(lo, hi, size, limit)
        else:
            lo, hi = _grow(lo, hi, size, limit)
        out.append((lo, hi))
    (x0, x1), (y0, y1) = out
    return (int(x0), int(y0), int(x1), int(y1))


def paste_masked(original: np.ndarray, patch: np.ndarray, mask: np.ndarray, box: Box) -> np.ndarray:
    """Blend ``patch`` (the refined crop at ``box``) into a copy of ``original`` through ``mask``.

    ``mask`` is the full-image H x W mask (0..1) or the crop's own. Where the mask is 0 the result
    is ``original`` bit for bit; where it is 1 it is ``patch`` bit for bit.
    """
    original = np.asarray(original)
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = original.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"box {[x0, y0, x1, y1]} is not inside the {w}x{h} image")
    patch = np.asarray(patch)
    if patch.shape[:2] != (y1 - y0, x1 - x0):
        raise ValueError(f"patch is {patch.shape[1]}x{patch.shape[0]}, the box is {x1 - x0}x{y1 - y0}")
    mask = np.asarray(mask, np.float32)
    m = mask[y0:y1, x0:x1] if mask.shape[:2] == (h, w) else mask
    if m.shape[:2] != (y1 - y0, x1 - x0):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}; expected the image's or the box's size")
    m = np.clip(m, 0.0, 1.0)
    if m.ndim == 2 and original.ndim == 3:
        m = m[:, :, None]
    region = original[y0:y1, x0:x1]
    blended = region.astype(np.float32) * (1.0 - m) + patch.astype(np.float32) * m
    if np.issubdtype(original.dtype, np.integer):
        info = np.iinfo(original.dtype)
        blended = np.clip(np.floor(blended + 0.5), info.min, info.max)
    blended = blended.astype(original.dtype)
    blended = np.where(m <= 0.0, region, np.where(m >= 1.0, patch.astype(original.dtype), blended))
    out = original.copy()
    out[y0:y1, x0:x1] = blended
    return out


def working_size(
    width: int, height: int, *, guide_size: int = 768, max_size: int = 1024, multiple: int = 8
) -> tuple[int, int]:
    """The size a crop is processed at: its short side brought up to ``guide_size`` (detailer
    semantics: small regions get the model's full attention), its long side at most ``max_size``,
    both multiples of ``multiple``."""
    scale = guide_size / float(min(width, height))
    scale = min(scale, max_size / float(max(width, height)))
    out = []
    for side in (width, height):
        s = max(multiple, int(round(side * scale / multiple)) * multiple)
        out.append(min(s, max(multiple, max_size // multiple * multiple)))
    return out[0], out[1]


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (w, h): area averaging to shrink, Lanczos to enlarge."""
    h, w = image.shape[:2]
    if (w, h) == tuple(size):
        return image.copy()
    interp = cv2.INTER_AREA if size[0] * size[1] < w * h else cv2.INTER_LANCZOS4
    return cv2.resize(image, tuple(int(v) for v in size), interpolation=interp)

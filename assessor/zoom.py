"""The crop-and-zoom tool: the one way any backend looks closer at part of an image.

The classical critic calls it at native resolution to confirm a suspicion; the VLM backend calls
it with a zoom so that a small region fills the model's view. Both need the same guarantees: the
box is clamped to the image, tiny boxes are enlarged, some context is kept (a crop without
context reads every soft background as blur), and every coordinate maps back exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


class ZoomError(ValueError):
    """A box that cannot be looked at (not four numbers, or entirely outside the image)."""


@dataclass(frozen=True)
class Zoom:
    """A zoomed crop and the geometry to map coordinates between it and the source image."""

    image: np.ndarray
    box: tuple[int, int, int, int]  # crop in source pixels (x0, y0, x1, y1), x1/y1 exclusive
    requested: tuple[int, int, int, int]  # the asked-for box after clamping, before context
    scale_x: float  # zoom pixels per source pixel
    scale_y: float

    def to_source(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Map a box in zoom pixels to source pixels."""
        x0, y0, x1, y1 = (float(v) for v in box)
        bx, by = self.box[0], self.box[1]
        return (
            bx + x0 / self.scale_x,
            by + y0 / self.scale_y,
            bx + x1 / self.scale_x,
            by + y1 / self.scale_y,
        )

    def to_zoom(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Map a box in source pixels to zoom pixels."""
        x0, y0, x1, y1 = (float(v) for v in box)
        bx, by = self.box[0], self.box[1]
        return (
            (x0 - bx) * self.scale_x,
            (y0 - by) * self.scale_y,
            (x1 - bx) * self.scale_x,
            (y1 - by) * self.scale_y,
        )

    def requested_in_zoom(self) -> tuple[int, int, int, int]:
        """The asked-for box inside the zoomed crop (integer zoom pixels), to separate it from context."""
        x0, y0, x1, y1 = self.to_zoom(self.requested)
        h, w = self.image.shape[:2]
        x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
        return (x0, y0, min(w, max(x0 + 1, int(round(x1)))), min(h, max(y0 + 1, int(round(y1)))))


def looks_normalized(bbox: Sequence[float]) -> bool:
    """Boxes whose coordinates all lie in [0, 1] are read as fractions of the image (a box of at
    most one pixel is never what a caller means)."""
    return all(0.0 <= float(v) <= 1.0 for v in bbox)


def to_pixel_box(
    bbox: Sequence[float],
    image_size: tuple[int, int],
    *,
    normalized: bool | None = None,
    frame_size: tuple[int, int] | None = None,
) -> tuple[float, float, float, float]:
    """Read a box given in pixels, in fractions (0-1), or in the pixels of a resized frame."""
    if len(bbox) != 4:
        raise ZoomError(f"a box needs 4 numbers [x0, y0, x1, y1], got {list(bbox)!r}")
    try:
        x0, y0, x1, y1 = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ZoomError(f"a box needs 4 numbers [x0, y0, x1, y1], got {list(bbox)!r}") from None
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise ZoomError(f"box has non-finite coordinates: {list(bbox)!r}")
    w, h = image_size
    if normalized is None:
        normalized = looks_normalized((x0, y0, x1, y1))
    if normalized:
        x0, x1, y0, y1 = x0 * w, x1 * w, y0 * h, y1 * h
    elif frame_size is not None:
        fw, fh = frame_size
        x0, x1, y0, y1 = x0 * w / fw, x1 * w / fw, y0 * h / fh, y1 * h / fh
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _grow(lo: float, hi: float, side: float, limit: int) -> tuple[float, float]:
    """Widen [lo, hi) around its centre to at least ``side``, shifted to stay inside [0, limit)."""
    side = min(float(limit), side)
    if hi - lo >= side:
        return lo, hi
    centre = (lo + hi) / 2.0
    lo, hi = centre - side / 2.0, centre + side / 2.0
    if lo < 0:
        lo, hi = 0.0, side
    if hi > limit:
        lo, hi = limit - side, float(limit)
    return lo, hi


def crop_zoom(
    image: np.ndarray,
    bbox: Sequence[float],
    *,
    normalized: bool | None = None,
    frame_size: tuple[int, int] | None = None,
    context: float = 0.15,
    min_side: int = 32,
    target_size: int | None = 448,
    max_upscale: float = 4.0,
) -> Zoom:
    """Crop ``bbox`` from ``image`` (H x W [x C]) with some context and zoom it.

    ``bbox`` is ``[x0, y0, x1, y1]`` in pixels, in fractions of the image (``normalized=True``, or
    auto-detected when all values lie in [0, 1] and are not whole pixels), or in pixels of a resized
    frame of ``frame_size`` (what a VLM saw). The box is clamped to the image, enlarged to at least
    ``min_side`` pixels per side, and widened by ``context`` (a fraction of its size) on each side.
    ``target_size`` is the longer side of the result (upscaling at most ``max_upscale`` times);
    ``None`` keeps native resolution, which is what measuring noise or JPEG blocks needs.
    """
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ZoomError(f"expected an H x W [x C] image, got shape {image.shape}")
    h, w = image.shape[:2]
    x0, y0, x1, y1 = to_pixel_box(bbox, (w, h), normalized=normalized, frame_size=frame_size)
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise ZoomError(f"box {[round(v, 2) for v in (x0, y0, x1, y1)]} lies outside the {w}x{h} image")
    x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
    x0, x1 = _grow(x0, x1, min_side, w)
    y0, y1 = _grow(y0, y1, min_side, h)
    requested = (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))
    cx, cy = context * (x1 - x0), context * (y1 - y0)
    box = (
        max(0, int(np.floor(x0 - cx))),
        max(0, int(np.floor(y0 - cy))),
        min(w, int(np.ceil(x1 + cx))),
        min(h, int(np.ceil(y1 + cy))),
    )
    crop = image[box[1] : box[3], box[0] : box[2]]
    ch, cw = crop.shape[:2]
    if target_size is None:
        out = np.ascontiguousarray(crop)
    else:
        scale = min(float(target_size) / max(cw, ch), float(max_upscale))
        ow, oh = max(1, int(round(cw * scale))), max(1, int(round(ch * scale)))
        if (ow, oh) == (cw, ch):
            out = np.ascontiguousarray(crop)
        else:
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            out = cv2.resize(np.ascontiguousarray(crop), (ow, oh), interpolation=interp)
            if crop.ndim == 3 and out.ndim == 2:
                out = out[:, :, None]
    return Zoom(
        image=out,
        box=box,
        requested=requested,
        scale_x=out.shape[1] / float(cw),
        scale_y=out.shape[0] / float(ch),
    )


def box_intersection(a: Sequence[float], b: Sequence[float]) -> float:
    """Area shared by two boxes (x0, y0, x1, y1); 0 when they do not overlap."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy


def share_inside(a: Sequence[float], b: Sequence[float]) -> float:
    """The share of box ``a``'s area that lies inside box ``b`` (1: wholly inside); 0 for an empty a."""
    area = (a[2] - a[0]) * (a[3] - a[1])
    return box_intersection(a, b) / area if area > 0 else 0.0


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1); 0 when both are empty."""
    inter = box_intersection(a, b)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0

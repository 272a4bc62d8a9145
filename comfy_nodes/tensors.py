"""Conversions between ComfyUI's tensors and the arrays ``assessor``/``pig`` work on.

ComfyUI: IMAGE is ``[B, H, W, C]`` float32 in 0..1, MASK is ``[B, H, W]`` (sometimes ``[H, W]``) with
1 = selected. ``assessor``/``pig``: one ``H x W x 3`` uint8 RGB image at a time, masks ``H x W``
float32 in 0..1. Everything here is pure and small so that it can be tested without ComfyUI.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # assessor (and OpenCV) load when a node runs, not when ComfyUI starts
    from assessor.schema import Diagnosis


class TensorLayoutError(ValueError):
    """A tensor that is not laid out the way a ComfyUI IMAGE or MASK is; the message says what was seen."""


def image_batch_to_rgb8(images: torch.Tensor) -> list[np.ndarray]:
    """``[B,H,W,C]`` (or one ``[H,W,C]``) float 0..1 -> list of ``H x W x 3`` uint8 (C may be 1, 3 or 4)."""
    if not isinstance(images, torch.Tensor):
        raise TensorLayoutError(f"expected an IMAGE tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise TensorLayoutError(
            f"expected an IMAGE tensor [batch, height, width, channels] with 1, 3 or 4 channels; "
            f"got shape {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise TensorLayoutError("the IMAGE batch is empty")
    arr = images.detach().to("cpu", torch.float32).numpy()
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    out = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if out.shape[-1] == 4:
        out = out[..., :3]
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return [np.ascontiguousarray(img) for img in out]


def rgb8_to_image_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """List of ``H x W x 3`` uint8 of one size -> ``[B,H,W,3]`` float32 0..1."""
    if len(images) == 0:
        raise TensorLayoutError("no images to batch")
    shapes = {np.asarray(img).shape for img in images}
    if len(shapes) != 1:
        raise TensorLayoutError(f"images of one batch must have one size; got {sorted(shapes)}")
    stacked = np.stack([np.asarray(img, dtype=np.uint8) for img in images]).astype(np.float32) / 255.0
    return torch.from_numpy(stacked)


def masks_for_batch(
    mask: torch.Tensor | None, batch: int, height: int, width: int
) -> list[np.ndarray | None]:
    """A MASK as one ``H x W`` float32 array per image of the batch (``None`` for no mask).

    Accepts ``[H,W]``, ``[B,H,W]`` and ``[B,1,H,W]``; a single mask applies to every image; a mask of
    another size is resized to the image (bilinear), as ComfyUI's own mask nodes do.
    """
    if mask is None:
        return [None] * batch
    if not isinstance(mask, torch.Tensor):
        raise TensorLayoutError(f"expected a MASK tensor, got {type(mask).__name__}")
    m = mask.detach().to("cpu", torch.float32)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if m.ndim != 3:
        raise TensorLayoutError(
            f"expected a MASK [height, width] or [batch, height, width]; got {tuple(mask.shape)}"
        )
    if m.shape[0] not in (1, batch):
        raise TensorLayoutError(
            f"the MASK batch has {m.shape[0]} masks for {batch} images; give one mask, or one per image"
        )
    if tuple(m.shape[1:]) != (height, width):
        m = torch.nn.functional.interpolate(m.unsqueeze(1), size=(height, width), mode="bilinear")[:, 0]
    m = torch.nan_to_num(m, nan=0.0).clamp(0.0, 1.0)
    if m.shape[0] == 1:
        m = m.expand(batch, height, width)
    return [np.ascontiguousarray(x) for x in m.numpy()]


def is_empty_mask(mask: torch.Tensor | None) -> bool:
    """ComfyUI's LoadImage gives an all-zero 64x64 MASK when nothing was painted: that means 'no mask'."""
    return mask is None or not bool((mask > 0).any())


def user_masks(mask: torch.Tensor | None, batch: int, height: int, width: int) -> list[np.ndarray | None]:
    """The user's optional MASK input as one mask per image (:func:`masks_for_batch`), or ``batch``
    times ``None`` when it is missing or empty (see :func:`is_empty_mask`)."""
    return [None] * batch if is_empty_mask(mask) else masks_for_batch(mask, batch, height, width)


def masks_to_tensor(masks: Sequence[np.ndarray]) -> torch.Tensor:
    """List of ``H x W`` arrays -> MASK ``[B,H,W]`` float32 0..1."""
    if len(masks) == 0:
        raise TensorLayoutError("no masks to batch")
    stacked = np.stack([np.asarray(m, dtype=np.float32) for m in masks])
    return torch.from_numpy(np.clip(stacked, 0.0, 1.0))


def keep_untouched(
    original: torch.Tensor, original_rgb8: np.ndarray, refined_rgb8: np.ndarray
) -> torch.Tensor:
    """The refined image as ``[H,W,3]`` float, with every pixel the refiner did not change taken
    bit-exactly from the float original (the uint8 round trip would otherwise nudge all of them)."""
    refined = torch.from_numpy(np.asarray(refined_rgb8, dtype=np.float32) / 255.0)
    changed = torch.from_numpy(np.any(np.asarray(refined_rgb8) != np.asarray(original_rgb8), axis=-1))
    base = original[..., :3].detach().to("cpu", torch.float32)
    if base.shape[-1] == 1:
        base = base.expand(*base.shape[:-1], 3)
    return torch.where(changed.unsqueeze(-1), refined, base)


def regions_mask(diagnosis: Diagnosis, height: int, width: int, *, min_severity: float = 0.0) -> np.ndarray:
    """``H x W`` float32 mask, 1 inside every diagnosed box whose severity reaches ``min_severity``.

    Boxes are scaled when the diagnosis was made on an image of another size."""
    mask = np.zeros((height, width), np.float32)
    size = diagnosis.image_size or (width, height)
    sx, sy = width / size[0], height / size[1]
    for region in diagnosis.regions:
        if region.severity < min_severity:
            continue
        x0, y0, x1, y1 = region.bbox
        xa, ya = int(np.floor(x0 * sx)), int(np.floor(y0 * sy))
        xb, yb = int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy))
        mask[max(0, ya) : min(height, yb), max(0, xa) : min(width, xb)] = 1.0
    return mask


def dump_diagnoses(diagnoses: Sequence[Diagnosis]) -> str:
    """One diagnosis as a JSON object; a batch as a JSON list, in batch order."""
    if len(diagnoses) == 1:
        return diagnoses[0].to_json(indent=2)
    return json.dumps([d.to_dict() for d in diagnoses], indent=2)


def parse_diagnoses(text: str) -> list[Diagnosis]:
    """The inverse of :func:`dump_diagnoses` (an object or a list of objects)."""
    from assessor.schema import Diagnosis

    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"diagnosis: not valid JSON ({exc}); connect the diagnosis output of Assess Image Quality"
        ) from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ValueError("diagnosis: the JSON list is empty")
    return [Diagnosis.from_dict(item) for item in items]

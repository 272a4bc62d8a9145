"""From a diagnosis to a refinement plan: where to change (soft masks), how (operation and
strength) and what to ask a generator for (prompt edits per distortion, per region).

Pure numpy/OpenCV: the ComfyUI nodes and both refiners build on the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from assessor.schema import DISTORTIONS, Diagnosis, Region
from assessor.zoom import box_intersection

from .paste import mask_bbox

OPERATIONS = ("inpaint", "img2img", "global_fix")
MASK_SHAPES = ("rect", "ellipse")
USER_MASK_MODES = ("narrow", "replace")

# What to ask for, and what to steer away from, when a region suffers from a distortion.
PROMPT_EDITS: dict[str, tuple[str, str]] = {
    "blur": ("sharp focus, crisp fine detail", "blurry, out of focus, soft, smeared"),
    "noise": ("clean, smooth surfaces, noise-free", "noise, grain, speckles"),
    "jpeg": ("clean detail, smooth gradients", "jpeg artifacts, compression artifacts, blocky"),
    "overexposure": (
        "balanced exposure, detailed highlights",
        "overexposed, blown out highlights, washed out",
    ),
    "underexposure": ("well lit, visible shadow detail", "underexposed, too dark, crushed shadows"),
    "low_contrast": ("good contrast, rich tones", "low contrast, washed out, hazy, flat"),
    "color_cast": ("natural colors, neutral white balance", "color cast, tinted, discolored"),
    "artifact": ("smooth gradients, coherent detail", "banding, posterization, artifacts, distorted"),
    "other": ("high quality, detailed", "artifacts, low quality, distorted"),
}
assert set(PROMPT_EDITS) == set(DISTORTIONS)

# Strength bounds per operation (denoise strength for diffusion, amount for classical fixes):
# severity 0 maps to the low end, severity 1 to the high end.
DEFAULT_STRENGTHS: dict[str, tuple[float, float]] = {
    "inpaint": (0.3, 0.65),
    "img2img": (0.15, 0.4),
    "global_fix": (0.5, 1.0),
}


def merge_prompts(*parts: str) -> str:
    """Join comma-separated prompt parts, dropping empty and repeated terms (case-insensitive)."""
    seen: set[str] = set()
    terms: list[str] = []
    for part in parts:
        for term in (part or "").split(","):
            term = term.strip()
            if term and term.lower() not in seen:
                seen.add(term.lower())
                terms.append(term)
    return ", ".join(terms)


def soft_mask(
    size: tuple[int, int],
    box: tuple[int, int, int, int] | list[int],
    *,
    shape: str = "rect",
    dilation: int = 8,
    feather: int = 8,
) -> np.ndarray:
    """H x W float32 mask: the box (or its inscribed ellipse, enlarged so it still covers the box's
    corners) grown by ``dilation`` pixels, edges softened over about ``feather`` pixels outward.

    The whole box stays at 1; values below 1/512 are exactly 0 so paste-back is exact there."""
    if shape not in MASK_SHAPES:
        raise ValueError(f"mask shape {shape!r}: choose one of {', '.join(MASK_SHAPES)}")
    w, h = size
    x0, y0, x1, y1 = (int(v) for v in box)
    mask = np.zeros((h, w), np.float32)
    grow = max(0, int(dilation)) + max(0, int(feather)) // 2
    if shape == "ellipse":
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        ax, ay = (x1 - x0) / np.sqrt(2.0) + grow, (y1 - y0) / np.sqrt(2.0) + grow
        cv2.ellipse(mask, ((cx, cy), (2 * ax, 2 * ay), 0.0), 1.0, thickness=-1)
    else:
        mask[max(0, y0 - grow) : min(h, y1 + grow), max(0, x0 - grow) : min(w, x1 + grow)] = 1.0
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=feather / 3.0, borderType=cv2.BORDER_REPLICATE)
    mask[mask < 1.0 / 512] = 0.0
    if shape == "rect":
        mask[y0:y1, x0:x1] = 1.0
    return mask


def normalize_user_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A user's mask (bool, uint8 0..255, float 0..1, H x W or H x W x C) as H x W float32 0..1."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[:, :, -1] if m.shape[2] in (2, 4) else m.max(axis=2)
    if m.ndim != 2:
        raise ValueError(f"a mask is H x W, got shape {np.asarray(mask).shape}")
    w, h = size
    if m.shape != (h, w):
        raise ValueError(f"the mask is {m.shape[1]}x{m.shape[0]} but the image is {w}x{h}")
    if m.dtype == bool:
        return m.astype(np.float32)
    if np.issubdtype(m.dtype, np.integer):
        return (m.astype(np.float32) / (255.0 if m.max() > 1 else 1.0)).clip(0.0, 1.0)
    return np.nan_to_num(m.astype(np.float32)).clip(0.0, 1.0)


@dataclass
class RegionPlan:
    region: Region  # the diagnosed region (bbox in image pixels)
    mask: np.ndarray  # H x W float32 0..1, soft; 1 = change here
    operation: str  # "inpaint" | "img2img" | "global_fix"
    strength: float  # denoise strength for diffusion / amount for classical fixes
    positive: str  # the user's prompt merged with the distortion's additions
    negative: str  # the user's negative merged with the distortion's terms
    index: int = -1  # the region's index in the diagnosis (-1: the user's own mask)

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "bbox": list(self.region.bbox),
            "distortion": self.region.distortion,
            "severity": round(float(self.region.severity), 4),
            "reason": self.region.reason,
            "operation": self.operation,
            "strength": round(float(self.strength), 4),
            "positive": self.positive,
            "negative": self.negative,
            "mask_area": round(float(self.mask.mean()), 4),
        }


@dataclass
class RefinePlan:
    image_size: tuple[int, int]  # (w, h)
    regions: list[RegionPlan] = field(default_factory=list)

    def mask(self) -> np.ndarray:
        """Union (max) of the region masks, H x W float32."""
        w, h = self.image_size
        out = np.zeros((h, w), np.float32)
        for rp in self.regions:
            np.maximum(out, rp.mask, out=out)
        return out

    def to_dict(self) -> dict:
        return {"image_size": list(self.image_size), "regions": [rp.to_dict() for rp in self.regions]}

    def __len__(self) -> int:
        return len(self.regions)


def strength_for(
    severity: float, operation: str, ranges: dict[str, tuple[float, float]] | None = None
) -> float:
    lo, hi = (ranges or DEFAULT_STRENGTHS).get(operation, DEFAULT_STRENGTHS[operation])
    return float(np.clip(lo + (hi - lo) * float(severity), min(lo, hi), max(lo, hi)))


def make_plan(
    diagnosis: Diagnosis,
    *,
    prompt: str = "",
    negative_prompt: str = "",
    region_prompts: dict[int, str] | None = None,
    user_mask: np.ndarray | None = None,
    user_mask_mode: str = "narrow",
    min_severity: float = 0.15,
    max_regions: int = 8,
    global_operation: str = "global_fix",
    strengths: dict[str, tuple[float, float]] | None = None,
    mask_shape: str = "rect",
    dilation: int | None = None,
    feather: int = 8,
    image_size: tuple[int, int] | None = None,
) -> RefinePlan:
    """Turn a diagnosis into a plan.

    ``region_prompts`` maps a region's index in ``diagnosis.regions`` to its own prompt (it replaces
    ``prompt`` for that region). ``user_mask`` either narrows every diagnosed mask to itself
    ("narrow") or becomes the only region ("replace"). ``global_operation`` is what whole-image
    defects become: "img2img" for a diffusion refiner, "global_fix" for the classical one.
    ``dilation`` defaults to 8 px plus 5% of the box's short side.
    """
    if global_operation not in ("img2img", "global_fix"):
        raise ValueError(f"global_operation must be img2img or global_fix, not {global_operation!r}")
    if user_mask_mode not in USER_MASK_MODES:
        raise ValueError(f"user_mask_mode {user_mask_mode!r}: choose one of {', '.join(USER_MASK_MODES)}")
    size = image_size or diagnosis.image_size
    if size is None:
        if user_mask is None:
            raise ValueError("the diagnosis has no image_size; pass image_size=(w, h)")
        size = (np.asarray(user_mask).shape[1], np.asarray(user_mask).shape[0])
    w, h = int(size[0]), int(size[1])
    region_prompts = region_prompts or {}
    umask = None if user_mask is None else normalize_user_mask(user_mask, (w, h))

    def prompts_for(index: int, distortion: str) -> tuple[str, str]:
        add_pos, add_neg = PROMPT_EDITS.get(distortion, PROMPT_EDITS["other"])
        base = region_prompts.get(index, prompt)
        return merge_prompts(base, add_pos), merge_prompts(negative_prompt, add_neg)

    if umask is not None and user_mask_mode == "replace":
        box = mask_bbox(umask, 0.01)
        if box is None:
            return RefinePlan((w, h), [])
        inside = [
            (i, r)
            for i, r in enumerate(diagnosis.regions)
            if box_intersection(r.bbox, box) > 0 and not r.is_global((w, h))
        ] or [(i, r) for i, r in enumerate(diagnosis.regions) if box_intersection(r.bbox, box) > 0]
        if inside:
            _, worst = max(inside, key=lambda ir: ir[1].severity)
            distortion, sev = worst.distortion, max(worst.severity, min_severity)
            reason = f"user mask; the worst diagnosed defect under it: {worst.reason}".strip()
        else:
            distortion, sev, reason = "other", 0.5, "user mask"
        region = Region(list(box), distortion, float(np.clip(sev, 0, 1)), reason)
        pos, neg = prompts_for(-1, distortion)
        whole = region.is_global((w, h))
        op = global_operation if whole and umask.min() >= 0.999 else "inpaint"
        return RefinePlan(
            (w, h), [RegionPlan(region, umask, op, strength_for(sev, op, strengths), pos, neg, index=-1)]
        )

    chosen = [(i, r) for i, r in enumerate(diagnosis.regions) if r.severity >= min_severity]
    chosen.sort(key=lambda ir: -ir[1].severity)
    plans: list[RegionPlan] = []
    for i, region in chosen[:max_regions]:
        whole = region.is_global((w, h))
        if whole:
            mask = np.ones((h, w), np.float32)
            op = global_operation
        else:
            bw, bh = region.bbox[2] - region.bbox[0], region.bbox[3] - region.bbox[1]
            d = dilation if dilation is not None else 8 + int(round(0.05 * min(bw, bh)))
            mask = soft_mask((w, h), region.bbox, shape=mask_shape, dilation=d, feather=feather)
            op = "inpaint"
        if umask is not None:  # narrow
            mask = mask * umask
            if float(mask.max()) < 0.01:
                continue
            if whole:  # a whole-image defect restricted to the user's area is a local job now
                op = "inpaint" if umask.min() < 0.999 else op
        pos, neg = prompts_for(i, region.distortion)
        plans.append(
            RegionPlan(region, mask, op, strength_for(region.severity, op, strengths), pos, neg, index=i)
        )
    return RefinePlan((w, h), plans)

"""The weight-free refiner: one measured classical fix per diagnosed region, inside its mask only."""

from __future__ import annotations

import numpy as np

from assessor.imageio import as_rgb8

from .. import fixes
from ..paste import crop_box_for_mask, paste_masked
from ..plan import RefinePlan, RegionPlan
from .base import Refiner


def _ssim_small(a: np.ndarray, b: np.ndarray) -> float:
    from assessor.metrics import ssim

    h, w = a.shape[:2]
    step = max(1, int(max(h, w) // 512))
    return ssim(a[::step, ::step], b[::step, ::step])


# Whole-image contrast and white balance are partly taste: a low-key photo or a warm scene reads
# like a defect to a critic. These change gently (SSIM budget per round).
GENTLE_GLOBAL = ("low_contrast", "color_cast")


def limit_change(
    image: np.ndarray,
    fixed: np.ndarray,
    amount: float,
    min_ssim: float,
    reference: np.ndarray | None = None,
    min_psnr: float = 0.0,
) -> tuple[np.ndarray, float]:
    """Blend ``fixed`` into ``image`` with the largest amount (at most ``amount``) whose result
    keeps SSIM >= ``min_ssim`` and PSNR >= ``min_psnr`` to ``reference`` (default ``image``)."""
    from assessor.metrics import psnr

    reference = image if reference is None else reference

    def ok(candidate: np.ndarray) -> bool:
        return (min_ssim <= 0 or _ssim_small(candidate, reference) >= min_ssim) and (
            min_psnr <= 0 or psnr(candidate, reference) >= min_psnr
        )

    out = fixes.blend(image, fixed, amount)
    if ok(out):
        return out, amount
    lo, hi = 0.0, amount
    for _ in range(6):
        mid = (lo + hi) / 2
        if ok(fixes.blend(image, fixed, mid)):
            lo = mid
        else:
            hi = mid
    return fixes.blend(image, fixed, lo), lo


class ClassicalRefiner(Refiner):
    """Denoise, deblock, deconvolve, deband, and match exposure / contrast / colour to the
    surroundings, each inside the region's soft mask; pixels outside stay bit for bit."""

    name = "classical"
    global_operation = "global_fix"
    # a measured fix changes only the defect's pixels, deterministically: a rise of 0.02 is the
    # critic's judgment (at 0.05, deconvolved blur and undone banding that gained PSNR were rolled
    # back: PiG benchmark 72.7% -> 75.0% improved, none fell)
    margin = 0.02
    strengths = {"inpaint": (0.8, 1.0), "img2img": (0.6, 1.0), "global_fix": (0.6, 1.0)}

    def __init__(
        self,
        padding: int = 32,
        context: float = 0.25,
        global_min_ssim: float = 0.99,
        global_min_psnr: float = 40.0,
    ):
        self.padding = int(padding)  # context kept around a region, pixels ...
        self.context = float(context)  # ... plus this fraction of the region's short side
        # A whole-image tone change (exposure, contrast, white balance) per round keeps at least
        # this SSIM to its input: a natural low-key photo or a warm scene the critic mistook for a
        # defect changes only mildly, a real defect is corrected over a few rounds.
        self.global_min_ssim = float(global_min_ssim)
        # SSIM barely sees a colour shift; PSNR does. At 35 dB, the contrast stretch a critic asks
        # for on the cat photo (read slightly flat, clean) cost a repaired patch 4 dB to the original
        self.global_min_psnr = float(global_min_psnr)
        self.last_info: list[dict] = []

    def refine(self, image: np.ndarray, plan: RefinePlan, *, seed: int = 0) -> np.ndarray:
        out = as_rgb8(image).copy()
        self._round_input = out.copy()
        self.last_info = []
        for rp in plan.regions:
            out, info = self.refine_region(out, rp)
            self.last_info.append({"index": rp.index, "distortion": rp.region.distortion, **info})
        return out

    def refine_region(self, image: np.ndarray, rp: RegionPlan) -> tuple[np.ndarray, dict]:
        kind = rp.region.distortion
        amount = float(np.clip(rp.strength, 0.0, 1.0))
        if kind not in fixes.LOCAL_FIXES and kind not in fixes.TONE_KINDS:
            return image, {"skipped": f"no classical fix for {kind}"}
        if float(rp.mask.max()) <= 0.0:
            return image, {"skipped": "empty mask"}
        h, w = image.shape[:2]
        if rp.operation in ("global_fix", "img2img"):
            if kind in GENTLE_GLOBAL:
                fix = fixes.fix_tones_global(image, kind, 1.0)
                if "skipped" not in fix.info:
                    ref = getattr(self, "_round_input", image)
                    fix.image, used = limit_change(
                        image, fix.image, amount, self.global_min_ssim, ref, self.global_min_psnr
                    )
                    fix.info["amount"] = round(used, 3)
            elif kind in fixes.TONE_KINDS:
                fix = fixes.fix_tones_global(image, kind, amount)
            else:
                fix = fixes.LOCAL_FIXES[kind](image, None, amount)
            return paste_masked(image, fix.image, rp.mask, (0, 0, w, h)), fix.info
        x0, y0, x1, y1 = rp.region.bbox
        pad = self.padding + int(self.context * min(x1 - x0, y1 - y0))
        # origin on 16: JPEG's colour planes are halved, their 8x8 blocks span 16 pixels (at 8, the
        # ghost of a motorcycle patch saved at quality 18 dipped 0.12 instead of 0.95)
        box = crop_box_for_mask(rp.mask, padding=pad, multiple=1, min_size=48, align=16)
        cx0, cy0, cx1, cy1 = box
        crop = image[cy0:cy1, cx0:cx1]
        cmask = rp.mask[cy0:cy1, cx0:cx1]
        rbox = (max(0, x0 - cx0), max(0, y0 - cy0), min(cx1 - cx0, x1 - cx0), min(cy1 - cy0, y1 - cy0))
        if kind in fixes.TONE_KINDS:
            fix = fixes.fix_tones(crop, cmask, kind, amount, box=rbox)
        else:
            fix = fixes.LOCAL_FIXES[kind](crop, cmask, amount, box=rbox)
        mask = cmask if fix.mask is None else np.minimum(fix.mask, np.where(cmask > 0, 1.0, 0.0))
        return paste_masked(image, fix.image, mask.astype(np.float32), box), {"crop": list(box), **fix.info}

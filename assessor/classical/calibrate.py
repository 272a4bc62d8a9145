"""Derive the severity anchors of ``severity.CURVES`` from data: ``python -m assessor.classical.calibrate``.

For each synthesizable distortion and level, the global cue the critic uses is measured on the
shipped photos (the benchmark's photos: SSIM damage per level depends on content, and photos are
what users bring; dead-leaves scenes lose more to blur than photos do), and paired with a target
severity derived from the damage SSIM sees at that level (``target_severity``). Each row is one
monotone curve of six points per type, so little can be over-fitted; the benchmark's local,
clean and hard-negative cases play no part in it. The printed anchor tables are what ``severity.CURVES`` holds. Colour
casts are the exception: SSIM is nearly blind to them while viewers are not, so their targets
follow the level directly.
"""

from __future__ import annotations

import numpy as np

from .. import benchdata
from ..degrade import SYNTHETIC_TYPES, apply_distortion
from ..metrics import ssim
from .critic import ClassicalAssessor
from .severity import target_severity

CALIBRATION_PHOTOS = benchdata.PHOTOS


def calibration_images() -> dict[str, np.ndarray]:
    images = {name: benchdata.load_photo(name) for name in CALIBRATION_PHOTOS}
    return images


# severity curves and the distortion whose levels calibrate them
CALIBRATED = {kind: kind for kind in SYNTHETIC_TYPES} | {"jpeg_quality": "jpeg"}


def global_cue(critic: ClassicalAssessor, rgb: np.ndarray, curve: str) -> float:
    look = critic._global_look(rgb)
    e = look.exposure
    return {
        "blur": look.sharp_ref,
        "noise": look.noise_floor,
        "jpeg": look.block_global,
        "jpeg_quality": look.jpeg_quality,
        "overexposure": e.clipped_hi,
        "underexposure": e.p999,
        "low_contrast": e.tone_range,
        "color_cast": look.cast,
        "artifact": look.occupancy_global,
    }[curve]


def main() -> None:
    critic = ClassicalAssessor()
    images = calibration_images()
    print("anchors (cue value, severity) per type; cue medians over calibration images (nan: not measurable)")
    for curve, kind in CALIBRATED.items():
        ti = SYNTHETIC_TYPES.index(kind)
        rows = []
        for level in range(0, 6):
            cue, sev = [], []
            for ii, img in enumerate(images.values()):
                x = img if level == 0 else apply_distortion(img, kind, level, np.random.default_rng([ii, ti]))
                cue.append(global_cue(critic, x, curve))
                sev.append(0.0 if level == 0 else target_severity(ssim(x, img)))
            target = 0.1 * level if kind == "color_cast" else float(np.median(sev))
            rows.append((float(np.nanmedian(cue)) if np.isfinite(cue).any() else float("nan"), target))
        print(f"  {curve:<14} " + ", ".join(f"({c:.3f}, {s:.2f})" for c, s in rows))


if __name__ == "__main__":
    main()

"""From measured cue values to severities (0..1) and from findings to a score (1..5).

Anchors are in the cues' physical units (edge sigma in pixels, noise sigma on the 0..255 luma
scale, ...) and were set so that the five levels of ``assessor.degrade`` land at roughly the
same severities as their damage measured by SSIM against the clean photo, except colour casts,
which SSIM barely sees but people do.
"""

from __future__ import annotations

import numpy as np

# (cue value, severity) anchors; interpolated linearly, clamped at the ends. The middle anchors are
# the output of ``python -m assessor.classical.calibrate`` (cue medians at levels 1..5 on the shipped
# photos, paired with the severity their SSIM damage deserves); the first anchor sits just above
# what clean photos measure, the last extends the scale to severe damage.
# fmt: off
CURVES: dict[str, tuple[tuple[float, float], ...]] = {
    # edge blur sigma, native pixels (a level-1 blur of a photo is not measurable: no anchor for it)
    "blur": ((0.55, 0.0), (1.13, 0.45), (2.14, 0.63), (3.38, 0.71), (4.84, 0.76), (8.0, 0.85)),
    # white-noise sigma in luma (0..255); luma sigma is ~0.67 x per-channel sigma
    "noise": ((1.2, 0.0), (2.32, 0.37), (4.2, 0.65), (6.94, 0.84), (10.3, 0.94), (15.5, 0.98), (25.0, 1.0)),
    # 8x8 blockiness ratio, where the quantization cannot be read
    "jpeg": ((0.08, 0.0), (0.27, 0.33), (0.44, 0.39), (0.59, 0.47), (0.98, 0.56), (1.5, 0.69), (3.0, 0.85)),
    # JPEG quality read from the quantization steps (libjpeg's 1..100 scale); falls as damage grows.
    # Levels 1..5 are saved at exactly 50, 30, 18, 10, 5; at 90 and above nothing shows.
    "jpeg_quality": ((90.0, 0.0), (50.0, 0.33), (30.0, 0.39), (18.2, 0.47), (10.0, 0.56), (5.0, 0.69), (1.0, 0.85)),
    # blown-out pixel fraction
    "overexposure": ((0.02, 0.0), (0.04, 0.09), (0.14, 0.19), (0.26, 0.31), (0.38, 0.46), (0.5, 0.56), (0.8, 0.8)),
    # 99.9th luma percentile (the brightest lights); falls as the image darkens
    "underexposure": ((0.9, 0.0), (0.78, 0.19), (0.65, 0.38), (0.52, 0.57), (0.42, 0.74), (0.31, 0.86), (0.15, 1.0)),
    # tonal range used (p99 - p1 of luma, or 0.7 of p99.9 - p0.1 where wider: ExposureStats.tone_range),
    # counted only with lifted blacks; softer than the photo calibration (0.65 -> 0.29) so that
    # naturally soft-toned content (fog, stone) is not condemned
    "low_contrast": ((0.72, 0.0), (0.6, 0.2), (0.46, 0.38), (0.34, 0.52), (0.24, 0.65), (0.15, 0.77), (0.06, 0.92)),
    # light colour: max/min channel ratio - 1 (median of three estimates, see cues.cast_estimate);
    # SSIM barely sees casts, viewers do: targets follow the level (0.1 per level)
    "color_cast": ((0.13, 0.0), (0.23, 0.2), (0.33, 0.3), (0.5, 0.4), (0.78, 0.5), (1.5, 0.62), (3.0, 0.75)),
    # lightness, the mean of mean luma and its 5th percentile (ExposureStats.lightness): a whole
    # image pushed bright even where nothing clips; its shadows rise with it
    "lightness": ((0.45, 0.0), (0.55, 0.25), (0.65, 0.45), (0.75, 0.6), (0.85, 0.72)),
    # grey-level occupancy (banding / posterization); falls as levels disappear
    "artifact": ((0.7, 0.0), (0.157, 0.14), (0.094, 0.24), (0.056, 0.38), (0.032, 0.52), (0.021, 0.71), (0.01, 0.85)),
}
# fmt: on


def severity(distortion: str, value: float) -> float:
    """Severity 0..1 of a measured cue value; nan (nothing measurable) is 0."""
    if value is None or not np.isfinite(value):
        return 0.0
    xs, ys = zip(*CURVES[distortion])
    if xs[0] > xs[-1]:  # decreasing cue: flip for np.interp
        xs, ys = xs[::-1], ys[::-1]
    return float(np.clip(np.interp(value, xs, ys), 0.0, 1.0))


def cue_value(distortion: str, sev: float) -> float:
    """Inverse of ``severity``: the cue value at which a distortion reaches ``sev``."""
    xs, ys = zip(*CURVES[distortion])
    return float(np.interp(sev, ys, xs))


def target_severity(ssim_value: float) -> float:
    """The severity whose score (1 + 4 (1 - s^1.5)) matches the score an SSIM value deserves:
    score = 1 + 4 * SSIM^2.2, i.e. about 4.6 at SSIM 0.95, 3.7 at 0.85, 2.8 at 0.7, 1.9 at 0.5."""
    score = 1.0 + 4.0 * float(np.clip(ssim_value, 0.0, 1.0)) ** 2.2
    return float((1.0 - (score - 1.0) / 4.0) ** (2.0 / 3.0))


def area_weight(area_fraction: float) -> float:
    """How much a local defect counts toward the global score: a defect over 4% of the image weighs
    about 0.4 of the same defect everywhere, over 25% about 0.65."""
    return float(min(1.0, 0.25 + 0.8 * np.sqrt(max(area_fraction, 0.0))))


def score_from(findings: list[tuple[float, float]]) -> float:
    """Global score 1..5 from (severity, weight) findings: each removes its share of what is left.

    Damage grows faster than severity (power 1.5): a few mild flaws make a good image, not a bad
    one, while one severe flaw alone ruins it."""
    intact = 1.0
    for sev, weight in findings:
        intact *= 1.0 - float(np.clip(sev * weight, 0.0, 1.0)) ** 1.5
    return float(np.clip(1.0 + 4.0 * intact, 1.0, 5.0))

"""From measured cue values to severities (0..1) and from findings to a score (1..5).

Anchors are in the cues' physical units (edge sigma in pixels, noise sigma on the 0..255 luma
scale, ...) and were set so that the five levels of ``assessor.degrade`` land at roughly the
same severities as their damage measured by SSIM against the clean photo, except colour casts,
which SSIM barely sees but people do.
"""

from __future__ import annotations

import numpy as np

# (cue value, severity) anchors; interpolated linearly, clamped at the ends.
CURVES: dict[str, tuple[tuple[float, float], ...]] = {
    # edge blur sigma, native pixels
    "blur": ((0.75, 0.0), (1.0, 0.12), (1.5, 0.25), (2.4, 0.42), (3.6, 0.58), (5.3, 0.72), (8.0, 0.9)),
    # white-noise sigma in luma (0..255); luma sigma is ~0.67 x per-channel sigma
    "noise": ((1.6, 0.0), (2.7, 0.22), (5.2, 0.45), (8.8, 0.64), (13.5, 0.8), (20.0, 0.9), (30.0, 1.0)),
    # 8x8 blockiness ratio
    "jpeg": ((0.14, 0.0), (0.3, 0.2), (0.5, 0.33), (0.8, 0.45), (1.3, 0.58), (2.2, 0.72), (3.5, 0.85)),
    # blown-out pixel fraction
    "overexposure": (
        (0.03, 0.0),
        (0.12, 0.2),
        (0.25, 0.35),
        (0.4, 0.5),
        (0.55, 0.62),
        (0.7, 0.75),
        (0.9, 0.9),
    ),
    # 99.9th luma percentile (the brightest lights); falls as the image darkens
    "underexposure": (
        (0.88, 0.0),
        (0.78, 0.15),
        (0.65, 0.32),
        (0.53, 0.5),
        (0.42, 0.66),
        (0.32, 0.8),
        (0.2, 0.95),
    ),
    # dynamic range used (p99 - p1 of luma); falls as blacks are lifted and whites dimmed
    "low_contrast": (
        (0.8, 0.0),
        (0.7, 0.18),
        (0.54, 0.36),
        (0.4, 0.5),
        (0.28, 0.62),
        (0.18, 0.72),
        (0.08, 0.88),
    ),
    # light colour: max/min channel ratio - 1
    "color_cast": ((0.3, 0.0), (0.42, 0.15), (0.6, 0.28), (0.85, 0.4), (1.2, 0.52), (1.8, 0.64), (2.8, 0.8)),
    # grey-level occupancy (banding / posterization); falls as levels disappear
    "artifact": ((0.7, 0.0), (0.4, 0.1), (0.16, 0.22), (0.09, 0.36), (0.06, 0.5), (0.035, 0.64), (0.02, 0.8)),
}


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


def area_weight(area_fraction: float) -> float:
    """How much a local defect counts toward the global score: a defect over 4% of the image weighs
    about 0.4 of the same defect everywhere, over 25% about 0.65."""
    return float(min(1.0, 0.25 + 0.8 * np.sqrt(max(area_fraction, 0.0))))


def score_from(findings: list[tuple[float, float]]) -> float:
    """Global score 1..5 from (severity, weight) findings: each removes its share of what is left."""
    intact = 1.0
    for sev, weight in findings:
        intact *= 1.0 - float(np.clip(sev * weight, 0.0, 1.0))
    return float(np.clip(1.0 + 4.0 * intact, 1.0, 5.0))

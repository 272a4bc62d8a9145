"""A BRISQUE-style baseline (Mittal et al. 2012), to put the learned critic's figures in context.

36 natural-scene statistics (generalized Gaussian fits of mean-subtracted contrast-normalized
coefficients and of their products with four neighbours, at two scales), mapped to the score by
ridge regression fitted on the learned critic's own training data (the same synthetic scenes and
degradations, never a benchmark image). It gives a global score only: no regions, no zooms.
``python -m assessor.benchmark --backend brisque`` runs it.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..backends import AssessorBackend
from ..imageio import as_rgb8, check_image_size
from ..schema import Diagnosis, TraceStep

DEFAULT_FIT = Path(__file__).resolve().parent / "weights" / "critic.brisque.json"

_ALPHAS = np.arange(0.2, 10.0, 0.001)
_GGD_RATIO = np.array([math.gamma(2 / a) ** 2 / (math.gamma(1 / a) * math.gamma(3 / a)) for a in _ALPHAS])


def _fit_ggd(x: np.ndarray) -> tuple[float, float]:
    """Shape and variance of a zero-mean generalized Gaussian, by moment matching."""
    x = x.ravel()
    var = float(np.mean(x * x))
    e_abs = float(np.mean(np.abs(x)))
    rho = e_abs * e_abs / max(var, 1e-12)
    alpha = float(_ALPHAS[int(np.argmin(np.abs(_GGD_RATIO - rho)))])
    return alpha, var


def _fit_aggd(x: np.ndarray) -> tuple[float, float, float, float]:
    """Shape, mean and left/right variances of an asymmetric generalized Gaussian (Lasmar et al.)."""
    x = x.ravel()
    left, right = x[x < 0], x[x >= 0]
    sl = math.sqrt(float(np.mean(left * left))) if left.size else 1e-6
    sr = math.sqrt(float(np.mean(right * right))) if right.size else 1e-6
    gam = sl / max(sr, 1e-6)
    r_hat = float(np.mean(np.abs(x))) ** 2 / max(float(np.mean(x * x)), 1e-12)
    big_r = r_hat * (gam**3 + 1) * (gam + 1) / max((gam**2 + 1) ** 2, 1e-12)
    alpha = float(_ALPHAS[int(np.argmin(np.abs(_GGD_RATIO - big_r)))])
    g1, g2, g3 = math.gamma(1 / alpha), math.gamma(2 / alpha), math.gamma(3 / alpha)
    mean = (sr - sl) * (g2 / g1) * math.sqrt(g1 / g3)
    return alpha, mean, sl * sl, sr * sr


def mscn(grey: np.ndarray) -> np.ndarray:
    mu = cv2.GaussianBlur(grey, (7, 7), 7.0 / 6.0)
    var = cv2.GaussianBlur(grey * grey, (7, 7), 7.0 / 6.0) - mu * mu
    return (grey - mu) / (np.sqrt(np.maximum(var, 0.0)) + 1.0)


def brisque_features(rgb: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of an RGB uint8 image (luma, two scales)."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float64)
    feats: list[float] = []
    for _ in range(2):
        m = mscn(grey)
        feats.extend(_fit_ggd(m))
        for a, b in (
            (m[:, :-1], m[:, 1:]),
            (m[:-1, :], m[1:, :]),
            (m[:-1, :-1], m[1:, 1:]),
            (m[:-1, 1:], m[1:, :-1]),
        ):
            feats.extend(_fit_aggd(a * b))
        grey = cv2.resize(
            grey, (max(8, grey.shape[1] // 2), max(8, grey.shape[0] // 2)), interpolation=cv2.INTER_AREA
        )
    return np.asarray(feats, np.float64)


@dataclass
class RidgeFit:
    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    intercept: float

    def predict(self, features: np.ndarray) -> float:
        z = (np.asarray(features, np.float64) - self.mean) / self.std
        z = np.concatenate([z, z * z])
        return float(z @ self.coef + self.intercept)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean.round(8).tolist(),
            "std": self.std.round(8).tolist(),
            "coef": self.coef.round(8).tolist(),
            "intercept": round(self.intercept, 8),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RidgeFit:
        return cls(np.asarray(d["mean"]), np.asarray(d["std"]), np.asarray(d["coef"]), float(d["intercept"]))


def fit_ridge(features: np.ndarray, scores: np.ndarray, alpha: float = 1.0) -> RidgeFit:
    """Ridge regression of the score on standardized features and their squares."""
    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    z = (features - mean) / std
    z = np.concatenate([z, z * z], axis=1)
    zm = z.mean(axis=0)
    ym = float(scores.mean())
    zc = z - zm
    coef = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ (scores - ym))
    return RidgeFit(mean, std, coef, ym - float(zm @ coef))


class BrisqueAssessor(AssessorBackend):
    """Global score from natural-scene statistics; no regions (a baseline, not a critic)."""

    name = "brisque"

    def __init__(self, fit: str | os.PathLike | None = None, **_ignored):
        path = Path(fit or DEFAULT_FIT)
        if not path.exists():
            raise RuntimeError(
                f"BRISQUE-style fit not found at {path}; retrain with `python -m assessor.train_embedded`"
            )
        try:
            self.fit = RidgeFit.from_dict(json.loads(path.read_text())["ridge"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(
                f"cannot read the BRISQUE-style fit {path} ({exc}); retrain with `python -m assessor.train_embedded`"
            ) from None

    def assess(self, image: np.ndarray) -> Diagnosis:
        t0 = time.perf_counter()
        rgb = as_rgb8(image)
        check_image_size(rgb)
        h, w = rgb.shape[:2]
        score = float(np.clip(self.fit.predict(brisque_features(rgb)), 1.0, 5.0))
        step = TraceStep(
            thought="Natural-scene statistics of the whole image (BRISQUE-style), no zoom.",
            observation=f"score {score:.2f}",
            view=[0, 0, w, h],
        )
        return Diagnosis(
            score=round(score, 4),
            regions=[],
            trace=[step],
            backend=self.name,
            image_size=(w, h),
            timings={"total_s": round(time.perf_counter() - t0, 4)},
        )

"""Correlation and full-reference measures used by benchmarks and evaluation (numpy + OpenCV only)."""

from __future__ import annotations

import cv2
import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties get their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x, np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def pearson(x, y) -> float:
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x, y) -> float:
    return pearson(rankdata(x), rankdata(y))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window sigma 1.5) averaged over channels, 0..255 data."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if a.ndim == 2:
        a, b = a[:, :, None], b[:, :, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for c in range(a.shape[2]):
        x, y = a[:, :, c], b[:, :, c]

        def blur(z):
            return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

        mx, my = blur(x), blur(y)
        sxx = blur(x * x) - mx * mx
        syy = blur(y * y) - my * my
        sxy = blur(x * y) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(m[5:-5, 5:-5].mean() if min(m.shape) > 10 else m.mean())
    return float(np.mean(vals))


# --------------------------------------------------------------------------------------------
# PLCC after the usual 4-parameter logistic mapping (VQEG): objective scores are first mapped
# monotonically onto the MOS scale, so PLCC measures accuracy, not the shape of the scale.


def logistic4(x, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """f(x) = b2 + (b1 - b2) / (1 + exp(-(x - b3) / b4))."""
    z = np.clip(-(np.asarray(x, np.float64) - b3) / b4, -60.0, 60.0)
    return b2 + (b1 - b2) / (1.0 + np.exp(z))


def fit_logistic4(x, y, iterations: int = 200) -> tuple[float, float, float, float]:
    """Least-squares fit of :func:`logistic4` (Levenberg-Marquardt, numpy only)."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if len(x) < 4 or x.std() == 0:
        raise ValueError("the logistic fit needs at least 4 points and scores that vary")
    hi, lo = float(y.max()), float(y.min())
    if pearson(x, y) < 0:
        hi, lo = lo, hi
    p = np.array([hi, lo, float(np.mean(x)), float(np.std(x)) / 2 or 1.0])

    def residual(q):
        return logistic4(x, *q) - y

    def jacobian(q):
        b1, b2, b3, b4 = q
        z = np.clip(-(x - b3) / b4, -60.0, 60.0)
        s = 1.0 / (1.0 + np.exp(z))  # sigmoid((x - b3) / b4)
        ds = s * (1.0 - s)
        return np.stack(
            [s, 1.0 - s, (b1 - b2) * ds * (-1.0 / b4), (b1 - b2) * ds * (-(x - b3) / b4**2)], axis=1
        )

    sse = float(np.sum(residual(p) ** 2))
    lam = 1e-3
    for _ in range(iterations):
        j = jacobian(p)
        r = residual(p)
        a = j.T @ j
        g = j.T @ r
        try:
            step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-12), -g)
        except np.linalg.LinAlgError:
            lam *= 10
            continue
        candidate = p + step
        if candidate[3] == 0 or not np.all(np.isfinite(candidate)):
            lam *= 10
            continue
        new = float(np.sum(residual(candidate) ** 2))
        if new < sse:
            converged = sse - new < 1e-12 * max(1.0, sse)
            p, sse, lam = candidate, new, max(lam / 3, 1e-12)
            if converged:
                break
        else:
            lam *= 3
            if lam > 1e12:
                break
    return tuple(float(v) for v in p)


def plcc_logistic(pred, mos) -> float:
    """PLCC between the MOS and the predictions mapped by a fitted 4-parameter logistic."""
    try:
        params = fit_logistic4(pred, mos)
    except ValueError:
        return float("nan")
    return pearson(logistic4(pred, *params), mos)

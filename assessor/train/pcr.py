"""Perceptual Curriculum Reward (PCR): our definition (the paper publishes no formula).

For trajectory j of image i with true MOS s_i (1..5) and written score s_hat_ij, at training
progress p in [0, 1]:

    R_ij = w_score * r_score + w_format * r_format + w_tool * r_tool + w_rank * r_rank

* r_score = clip(1 - |s_hat - s| / tau(p), 0, 1), 0 without an answer. The tolerance tau(p)
  tightens from ``tau_start`` to ``tau_end`` by ``tau_until`` of training (constant, linear or
  cosine): early on a roughly right score earns most of the reward (coarse), at the end only
  answers within ``tau_end`` (0.35: Q-Insight's threshold) earn any (fine).
* r_format = 1 for an answer in one of the prompt style's ``answer_formats`` with no repair or
  correction along the way, ``format_partial`` for an answer that needed one, 0 for no answer.
* r_tool = 1 when the trajectory zoomed, its answer earned r_score >= ``tool_min_score``, and at
  least one zoom *helped*: its evidence gain (see :mod:`assessor.train.egf`) exceeded
  ``egf.min_gain``. Zooming is paid only when the crop moved the model toward the truth, not for
  calling the tool (DeepEyes pays any zoom that ends in a right answer; that teaches
  decorative zooms).
* r_rank (optional, VisualQuality-R1's Thurstone fidelity term): against every other image z of
  the step, p = Phi((s_hat_ij - mu_z) / sqrt(var_i + var_z + eps)), g = 1, 0 or 1/2 as s_i is
  above, below or equal to s_z, r = sqrt(p g + eps) + sqrt((1 - p)(1 - g) + eps), averaged over z
  (mu, var: mean and variance of each image's answered scores in its group).

The curriculum's second half orders the data from coarse quality differences to fine ones
(:func:`curriculum_batch`): a step's images are one from each of B equal-count strata of a
random window of the MOS-sorted data; the window covers a fraction w(p) of the data, shrinking
linearly from ``window_start`` (1.0: the whole range, so the images of a step differ clearly in
quality) to ``window_end`` by ``window_until`` of training (close qualities: the fine
differences the ranking term and the tight tau have to resolve). Over many steps the windows
still cover the whole range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import PCRConfig


def schedule(start: float, end: float, progress: float, until: float, kind: str) -> float:
    """A value going from ``start`` (progress 0) to ``end`` (progress >= ``until``)."""
    if kind == "constant":
        return float(start)
    t = float(np.clip(progress / until, 0.0, 1.0))
    if kind == "cosine":
        t = 0.5 - 0.5 * math.cos(math.pi * t)
    return float(start + (end - start) * t)


def tau_at(config: PCRConfig, progress: float) -> float:
    return schedule(config.tau_start, config.tau_end, progress, config.tau_until, config.tau_schedule)


def window_at(config: PCRConfig, progress: float) -> float:
    return schedule(config.window_start, config.window_end, progress, config.window_until, "linear")


def score_reward(pred: float | None, mos: float, tau: float) -> float:
    if pred is None or not math.isfinite(pred):
        return 0.0
    return float(np.clip(1.0 - abs(float(np.clip(pred, 1.0, 5.0)) - mos) / tau, 0.0, 1.0))


def format_reward(answered: bool, clean: bool, partial: float) -> float:
    if not answered:
        return 0.0
    return 1.0 if clean else float(partial)


def tool_reward(
    zooms: int, r_score: float, best_gain: float | None, config: PCRConfig, min_gain: float
) -> float:
    if zooms < 1 or best_gain is None:
        return 0.0
    return 1.0 if (r_score >= config.tool_min_score and best_gain > min_gain) else 0.0


def _phi(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def ranking_rewards(
    preds: list[list[float | None]], mos: list[float], eps: float = 1e-6
) -> list[list[float]]:
    """VisualQuality-R1's in-batch Thurstone fidelity reward for every rollout (0 without an answer
    or without another image to compare with)."""
    n = len(preds)
    stats = []
    for group in preds:
        vals = np.array([v for v in group if v is not None and math.isfinite(v)], dtype=np.float64)
        stats.append((float(vals.mean()), float(vals.var())) if len(vals) else None)
    out = []
    for i, group in enumerate(preds):
        others = [z for z in range(n) if z != i and stats[z] is not None]
        row = []
        for pred in group:
            if pred is None or not math.isfinite(pred) or not others or stats[i] is None:
                row.append(0.0)
                continue
            mu = np.array([stats[z][0] for z in others])
            var = np.array([stats[z][1] for z in others])
            p = _phi((pred - mu) / np.sqrt(stats[i][1] + var + eps))
            g = np.array([1.0 if mos[i] > mos[z] else 0.0 if mos[i] < mos[z] else 0.5 for z in others])
            r = np.sqrt(p * g + eps) + np.sqrt((1.0 - p) * (1.0 - g) + eps)
            row.append(float(r.mean()))
        out.append(row)
    return out


@dataclass
class RewardParts:
    """One trajectory's reward, by term (each in [0, 1]) and in total."""

    score: float
    format: float
    tool: float
    rank: float
    total: float


def combine(config: PCRConfig, score: float, fmt: float, tool: float, rank: float) -> RewardParts:
    total = config.w_score * score + config.w_format * fmt + config.w_tool * tool + config.w_rank * rank
    return RewardParts(score, fmt, tool, rank, float(total))


# --------------------------------------------------------------------------------------------
# coarse-to-fine batches


def curriculum_batch(mos: np.ndarray, size: int, window: float, rng: np.random.Generator) -> list[int]:
    """``size`` distinct indices, one from each of ``size`` equal-count strata of a random window
    covering ``window`` of the MOS-sorted data (1.0: all of it, so the images of a batch differ
    coarsely in quality; small: close qualities, fine differences). Random order."""
    mos = np.asarray(mos, dtype=np.float64)
    n = len(mos)
    if n == 0:
        raise ValueError("no samples to draw from")
    if n <= size:  # fewer samples than a batch (toy data): all of them, then repeats
        picked = [int(k) for k in rng.permutation(n)]
        while len(picked) < size:
            picked += [int(k) for k in rng.permutation(n)][: size - len(picked)]
        return picked
    order = np.argsort(mos, kind="stable")
    width = min(n, max(size, int(round(window * n))))
    start = int(rng.integers(0, n - width + 1))
    strata = np.array_split(order[start : start + width], size)
    picked = [int(rng.choice(s)) for s in strata]
    return [picked[k] for k in rng.permutation(size)]


def batch_spread(values) -> float:
    """The mean gap between neighbouring qualities of a batch (coarse: large, fine: small)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    return float(np.mean(np.diff(v))) if len(v) > 1 else math.inf

"""Evidence Gradient Filtering (EGF): our definition (the paper publishes no formula).

What a turn of reasoning did for the answer is read from the model itself. At the start of every
model turn t we *probe* the policy: append the prompt style's ``probe_prefix`` (for ours
``<answer>\\n{"score": ``) to the trajectory so far and read P(rating digit k), k = 1..5; its
expectation E_t = sum_k k P(k) is what the model would answer now. After the last turn,
E_ans is the same expectation at the score the model actually wrote (recorded during the
rollout). With the true MOS s, the *evidence gain* of turn t is

    g_t = |E_t - s| - |E_next - s|,     E_next = E_{t+1}, or E_ans for the answering turn

so for a zoom turn it measures how far its reasoning plus the crop it asked for moved the
model's belief toward the truth; for the answering turn, how far its final reasoning did. g is on
the 1..5 scale; g_t > ``min_gain`` means the turn helped.

The policy-gradient term of each token is weighted by w in [floor, 1]:

* the answer itself (from ``<answer>`` to the end of the turn) always has w = 1: the score is what
  the reward judges;
* the tokens of turn t (its reasoning and its tool call) have, with hard filtering,
  w = 1 if sign(A) agrees with the evidence (A > 0 and g_t > min_gain, or A < 0 and
  g_t <= min_gain) and w = ``floor`` otherwise; soft filtering uses
  w = floor + (1 - floor) sigmoid(sign(A) (g_t - min_gain) / temperature).

So a rewarded trajectory reinforces only the turns whose evidence helped: a lucky guess (a right
score after zooms that did not move the belief toward it) and a decorative zoom (g ~ 0) are not
reinforced, only the answer is. A penalised trajectory is not penalised for a zoom that helped
(the later turns threw the evidence away; those keep their negative gradient).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..vlm.loop import RATING_DIGITS, Trajectory, token_at
from .config import EGFConfig


def expected_score(probs: Sequence[float]) -> float:
    p = np.asarray(probs, dtype=np.float64)
    return float(np.dot(p / p.sum(), RATING_DIGITS))


@dataclass
class ModelTurn:
    turn: int
    start: int  # first token of the turn (token index in the trajectory)
    end: int
    zoomed: bool  # the turn's tool call was executed (a crop came back)


def model_turns(traj: Trajectory) -> list[ModelTurn]:
    """The model's turns in order, with their token spans."""
    out = []
    for span in traj.spans:
        if span.kind != "model":
            continue
        step = traj.steps[span.turn] if span.turn < len(traj.steps) else None
        zoomed = step is not None and "zoom_box" in step.data
        out.append(ModelTurn(span.turn, span.start, span.end, zoomed))
    return out


def answer_token_start(
    traj: Trajectory, turn: ModelTurn, decode: Callable[[int], str] | None = None
) -> int | None:
    """Token index (in the trajectory) where ``<answer>`` begins in ``turn``, if it has one."""
    if turn.turn >= len(traj.generations):
        return None
    gen = traj.generations[turn.turn]
    char = gen.text.find("<answer>")
    if char < 0:
        return None
    offsets = gen.token_offsets
    if offsets is None:
        if decode is None or gen.token_ids is None:
            return None
        offsets, pos = [], 0
        for tid in gen.token_ids:
            offsets.append(pos)
            pos += len(decode(tid))
    return turn.start + token_at(offsets, char)


@dataclass
class Evidence:
    beliefs: list[float]  # E_t at the start of each model turn
    answer_belief: float | None  # E_ans at the written score (None without an answer)
    gains: list[float | None]  # g_t per model turn (None: nothing after it to compare with)
    zoomed: list[bool]

    @property
    def zoom_gains(self) -> list[float]:
        return [g for g, z in zip(self.gains, self.zoomed) if z and g is not None]

    @property
    def best_zoom_gain(self) -> float | None:
        gains = self.zoom_gains
        return max(gains) if gains else None


def answer_belief(traj: Trajectory) -> float | None:
    """E_ans: the expected rating at the written score, as recorded by the rollout."""
    if traj.diagnosis is None or not traj.steps:
        return None
    value = traj.steps[-1].data.get("score_expected")
    return float(value) if value is not None else None


def turn_gains(beliefs: Sequence[float], final: float | None, mos: float) -> list[float | None]:
    """g_t = |E_t - s| - |E_{t+1} - s| (E_ans after the last turn)."""
    after = list(beliefs[1:]) + [final]
    return [None if b is None or a is None else abs(b - mos) - abs(a - mos) for b, a in zip(beliefs, after)]


def evidence(traj: Trajectory, beliefs: Sequence[float], mos: float) -> Evidence:
    turns = model_turns(traj)
    if len(beliefs) != len(turns):
        raise ValueError(f"{len(beliefs)} beliefs for {len(turns)} model turns")
    final = answer_belief(traj)
    return Evidence(list(beliefs), final, turn_gains(beliefs, final, mos), [t.zoomed for t in turns])


def turn_weight(gain: float | None, advantage: float, config: EGFConfig) -> float:
    if advantage == 0:
        return 1.0
    g = 0.0 if gain is None else gain
    sign = 1.0 if advantage > 0 else -1.0
    if config.mode == "soft":
        z = sign * (g - config.min_gain) / config.temperature
        return config.floor + (1.0 - config.floor) / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
    helped = g > config.min_gain
    agrees = helped if advantage > 0 else not helped
    return 1.0 if agrees else config.floor


def token_weights(
    traj: Trajectory,
    ev: Evidence | None,
    advantage: float,
    config: EGFConfig,
    decode: Callable[[int], str] | None = None,
) -> np.ndarray:
    """Per-token weights over the whole trajectory: 0 outside the policy's tokens, EGF inside."""
    weights = np.zeros(len(traj.token_ids), dtype=np.float64)
    turns = model_turns(traj)
    for k, turn in enumerate(turns):
        if ev is None or not config.enabled:
            weights[turn.start : turn.end] = 1.0
            continue
        weights[turn.start : turn.end] = turn_weight(ev.gains[k], advantage, config)
        answer = answer_token_start(traj, turn, decode)
        if answer is not None:
            weights[answer : turn.end] = 1.0
    return weights

"""The PiG loop: assess -> plan -> refine -> re-assess, keeping a change only if the critic's
score rises by at least a margin, so the returned image is never worse by the critic's own
measure. Deterministic given a seed; progress and cancel hooks for tqdm and ComfyUI."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from assessor.backends import AssessorBackend
from assessor.imageio import as_rgb8
from assessor.schema import Diagnosis, Region

from .plan import RefinePlan, make_plan
from .refiners.base import Refiner

STOP_REASONS = ("plateau", "max_iters", "nothing_to_fix", "cancelled", "perfect")


@dataclass
class RoundRecord:
    index: int  # 1-based round number
    score_before: float
    score_after: float  # the candidate's score (whether kept or not)
    accepted: bool
    regions: list[Region]  # the regions this round tried to fix
    plan: dict  # RefinePlan.to_dict(), plus what the refiner measured ("refiner")
    seconds: float
    seed: int = 0

    @property
    def gain(self) -> float:
        return self.score_after - self.score_before

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "score_before": round(self.score_before, 4),
            "score_after": round(self.score_after, 4),
            "gain": round(self.gain, 4),
            "accepted": self.accepted,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "regions": [
                {"bbox": list(r.bbox), "distortion": r.distortion, "severity": r.severity, "reason": r.reason}
                for r in self.regions
            ],
            "plan": self.plan,
        }


@dataclass
class RefineResult:
    image: np.ndarray  # the best image found (the input when nothing helped)
    initial: Diagnosis
    final: Diagnosis  # the diagnosis of ``image``
    history: list[RoundRecord] = field(default_factory=list)
    stop_reason: str = ""
    seconds: float = 0.0

    @property
    def initial_score(self) -> float:
        return float(self.initial.score)

    @property
    def final_score(self) -> float:
        return float(self.final.score)

    @property
    def accepted_rounds(self) -> int:
        return sum(r.accepted for r in self.history)

    def to_report(self) -> dict:
        return {
            "initial_score": round(self.initial_score, 4),
            "final_score": round(self.final_score, 4),
            "improvement": round(self.final_score - self.initial_score, 4),
            "iterations": len(self.history),
            "accepted": self.accepted_rounds,
            "stop_reason": self.stop_reason,
            "seconds": round(self.seconds, 3),
            "initial": self.initial.to_dict(),
            "final": self.final.to_dict(),
            "history": [r.to_dict() for r in self.history],
        }


def refine_image(
    image: np.ndarray,
    assessor: AssessorBackend,
    refiner: Refiner,
    *,
    max_iters: int = 4,
    patience: int = 1,
    margin: float | None = None,
    seed: int = 0,
    prompt: str = "",
    negative_prompt: str = "",
    user_mask: np.ndarray | None = None,
    user_mask_mode: str = "narrow",
    region_prompts: dict[int, str] | None = None,
    min_severity: float = 0.15,
    progress: Callable[[int, int, RoundRecord | None], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    plan_options: dict | None = None,
) -> RefineResult:
    """Refine ``image`` (RGB uint8 H x W x 3) until the critic's score stops improving.

    A round plans from the current best image's diagnosis, refines with seed ``seed + round - 1``,
    and re-assesses; the candidate replaces the best image only if its score is at least
    ``margin`` higher (None: the refiner's own, ``refiner.margin``). The loop stops after
    ``patience`` rounds in a row without that, after ``max_iters`` rounds, when the plan is empty,
    when the score is 5, or when ``should_cancel`` returns True (checked before each refine; the
    best image so far is returned).
    ``progress(done, total, record)`` is called with (0, max_iters, None) first, then after each
    round.
    """
    if max_iters < 0:
        raise ValueError(f"max_iters must be >= 0, got {max_iters}")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    margin = float(refiner.margin if margin is None else margin)
    t_start = time.perf_counter()
    best = as_rgb8(image).copy()
    best_diag = assessor.assess(best)
    initial = best_diag
    history: list[RoundRecord] = []
    fixed_globally: set[str] = set()  # whole-image defects already fixed in a kept round
    stale = 0
    stop = "max_iters"
    plan_options = dict(plan_options or {})
    if progress:
        progress(0, max_iters, None)
    for k in range(1, max_iters + 1):
        if should_cancel is not None and should_cancel():
            stop = "cancelled"
            break
        if best_diag.score >= 5.0:
            stop = "perfect"
            break
        t0 = time.perf_counter()
        plan: RefinePlan = make_plan(
            best_diag,
            prompt=prompt,
            negative_prompt=negative_prompt,
            region_prompts=region_prompts,
            user_mask=user_mask,
            user_mask_mode=user_mask_mode,
            min_severity=min_severity,
            global_operation=refiner.global_operation,
            strengths=refiner.strengths,
            image_size=(best.shape[1], best.shape[0]),
            **plan_options,
        )
        # a whole-image pass is kept at most once per distortion: repeating it drifts the whole
        # image (img2img) or compounds a correction a critic may have asked for by mistake
        plan.regions = [
            rp
            for rp in plan.regions
            if rp.operation == "inpaint" or rp.region.distortion not in fixed_globally
        ]
        if not plan.regions:
            stop = "nothing_to_fix"
            break
        round_seed = int(seed) + k - 1
        candidate = as_rgb8(refiner.refine(best, plan, seed=round_seed))
        if candidate.shape != best.shape:
            raise RuntimeError(
                f"the {refiner.name} refiner returned a {candidate.shape} image for a {best.shape} input"
            )
        cand_diag = assessor.assess(candidate)
        accepted = cand_diag.score >= best_diag.score + margin
        plan_dict = plan.to_dict()
        info = getattr(refiner, "last_info", None)
        if info:
            plan_dict["refiner"] = info
        record = RoundRecord(
            index=k,
            score_before=float(best_diag.score),
            score_after=float(cand_diag.score),
            accepted=bool(accepted),
            regions=[rp.region for rp in plan.regions],
            plan=plan_dict,
            seconds=time.perf_counter() - t0,
            seed=round_seed,
        )
        history.append(record)
        if accepted:
            best, best_diag = candidate, cand_diag
            fixed_globally.update(rp.region.distortion for rp in plan.regions if rp.operation != "inpaint")
            stale = 0
        else:
            stale += 1
        if progress:
            progress(k, max_iters, record)
        if stale >= patience:
            stop = "plateau"
            break
    return RefineResult(
        image=best,
        initial=initial,
        final=best_diag,
        history=history,
        stop_reason=stop,
        seconds=time.perf_counter() - t_start,
    )

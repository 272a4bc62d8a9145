"""The loop's accept / rollback / plateau / cancel logic, with critics whose scores are known."""

import numpy as np
import pytest

from assessor.backends import AssessorBackend
from assessor.schema import Diagnosis, Region
from pig.controller import refine_image
from pig.refiners.base import Refiner

H, W = 48, 64


class ScriptedCritic(AssessorBackend):
    """Scores an image by its brightness marker: the value of pixel (0, 0) indexes ``scores``."""

    name = "scripted"

    def __init__(self, scores, regions=True):
        self.scores = scores
        self.regions = regions
        self.seen = []

    def assess(self, image):
        k = int(image[0, 0, 0])
        self.seen.append(k)
        score = self.scores[k] if k < len(self.scores) else self.scores[-1]
        regions = [Region([8, 8, 40, 30], "noise", 0.6, "grain")] if self.regions else []
        return Diagnosis(score, regions, image_size=(W, H), backend=self.name)


class CountingRefiner(Refiner):
    """Each call writes the next marker into pixel (0, 0) (and keeps the rest), recording the seed."""

    name = "counting"

    def __init__(self):
        self.calls = 0
        self.seeds = []

    def refine(self, image, plan, *, seed=0):
        self.calls += 1
        self.seeds.append(seed)
        out = image.copy()
        out[0, 0, :] = self.calls
        return out


def blank():
    return np.zeros((H, W, 3), np.uint8)


def test_improving_rounds_are_kept_until_max_iters():
    critic = ScriptedCritic([2.0, 2.5, 3.0, 3.5, 4.0])
    refiner = CountingRefiner()
    res = refine_image(blank(), critic, refiner, max_iters=3, seed=7)
    assert res.initial_score == 2.0 and res.final_score == 3.5
    assert [r.accepted for r in res.history] == [True, True, True]
    assert res.stop_reason == "max_iters" and int(res.image[0, 0, 0]) == 3
    assert refiner.seeds == [7, 8, 9]
    assert [r.score_before for r in res.history] == [2.0, 2.5, 3.0]


def test_a_worse_candidate_is_rolled_back_and_patience_stops():
    # round 1 improves (marker 1: 3.0), round 2 worsens (marker 2: 2.0) -> rollback and stop
    critic = ScriptedCritic([2.5, 3.0, 2.0, 4.5])
    res = refine_image(blank(), critic, CountingRefiner(), max_iters=5, patience=1)
    assert [r.accepted for r in res.history] == [True, False]
    assert res.stop_reason == "plateau"
    assert res.final_score == 3.0 and int(res.image[0, 0, 0]) == 1  # the kept image, not the last one
    assert res.history[1].score_after == 2.0


def test_never_returns_an_image_scored_below_the_input():
    critic = ScriptedCritic([3.0, 2.0, 1.5, 1.0])
    original = blank()
    res = refine_image(original, critic, CountingRefiner(), max_iters=3, patience=3)
    assert res.final_score == 3.0 and np.array_equal(res.image, original)
    assert not any(r.accepted for r in res.history) and res.stop_reason == "plateau"


def test_margin_rejects_gains_that_are_too_small():
    critic = ScriptedCritic([3.0, 3.03, 3.5])
    res = refine_image(blank(), critic, CountingRefiner(), max_iters=4, margin=0.05, patience=2)
    # round 1 (+0.03) rejected; round 2 starts again from the input and its candidate (marker 2) gains 0.5
    assert [r.accepted for r in res.history][:2] == [False, True]
    assert res.final_score == 3.5


def test_without_a_margin_the_refiners_own_is_used():
    # a measured classical fix keeps a rise of 0.03 (its margin is 0.02); a refiner of unknown
    # kind, a diffusion pass, needs 0.05
    from pig.refiners import load_refiner

    class MeasuredRefiner(CountingRefiner):
        margin = load_refiner("classical").margin

    assert MeasuredRefiner.margin == 0.02 and CountingRefiner.margin == 0.05
    kept = refine_image(blank(), ScriptedCritic([3.0, 3.03]), MeasuredRefiner(), max_iters=1)
    rolled_back = refine_image(blank(), ScriptedCritic([3.0, 3.03]), CountingRefiner(), max_iters=1)
    assert kept.history[0].accepted and not rolled_back.history[0].accepted


def test_patience_allows_more_tries():
    critic = ScriptedCritic([3.0, 2.9, 2.8, 3.6])
    res = refine_image(blank(), critic, CountingRefiner(), max_iters=5, patience=3)
    assert [r.accepted for r in res.history][:3] == [False, False, True]


def test_nothing_to_fix_and_perfect_stop_early():
    refiner = CountingRefiner()
    res = refine_image(blank(), ScriptedCritic([4.0], regions=False), refiner)
    assert res.stop_reason == "nothing_to_fix" and res.history == [] and refiner.calls == 0
    res = refine_image(blank(), ScriptedCritic([5.0]), refiner)
    assert res.stop_reason == "perfect" and refiner.calls == 0


def test_cancel_and_progress_hooks():
    calls = []
    state = {"n": 0}

    def should_cancel():
        state["n"] += 1
        return state["n"] > 2  # allow two rounds

    res = refine_image(
        blank(),
        ScriptedCritic([1.0, 2.0, 3.0, 4.0]),
        CountingRefiner(),
        max_iters=4,
        progress=lambda done, total, rec: calls.append((done, total, None if rec is None else rec.index)),
        should_cancel=should_cancel,
    )
    assert res.stop_reason == "cancelled" and len(res.history) == 2 and res.final_score == 3.0
    assert calls == [(0, 4, None), (1, 4, 1), (2, 4, 2)]


def test_report_and_determinism():
    def run():
        return refine_image(blank(), ScriptedCritic([2.0, 2.6, 2.4]), CountingRefiner(), max_iters=3, seed=3)

    a, b = run(), run()
    assert np.array_equal(a.image, b.image)
    rep = a.to_report()
    assert rep["initial_score"] == 2.0 and rep["final_score"] == 2.6 and rep["iterations"] == 2
    assert rep["stop_reason"] == "plateau"
    h = rep["history"][0]
    assert h["accepted"] is True and h["regions"][0]["distortion"] == "noise"
    assert h["plan"]["regions"][0]["operation"] == "inpaint" and h["seconds"] >= 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        refine_image(blank(), ScriptedCritic([1.0]), CountingRefiner(), patience=0)
    with pytest.raises(ValueError):
        refine_image(blank(), ScriptedCritic([1.0]), CountingRefiner(), max_iters=-1)


def test_a_refiner_that_changes_the_shape_is_an_error():
    class Cropper(CountingRefiner):
        def refine(self, image, plan, *, seed=0):
            return image[:-1]

    with pytest.raises(RuntimeError, match="returned"):
        refine_image(blank(), ScriptedCritic([2.0, 3.0]), Cropper())


def test_a_whole_image_pass_is_kept_at_most_once_per_distortion():
    class GlobalCritic(ScriptedCritic):
        def assess(self, image):
            d = super().assess(image)
            d.regions = [Region([0, 0, W, H], "low_contrast", 0.5, "flat")]
            return d

    refiner = CountingRefiner()
    res = refine_image(blank(), GlobalCritic([2.0, 3.0, 4.0]), refiner, max_iters=4)
    assert refiner.calls == 1 and res.stop_reason == "nothing_to_fix" and res.final_score == 3.0
    assert res.history[0].plan["regions"][0]["operation"] == "global_fix"

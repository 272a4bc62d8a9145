"""The iMCoT loop with a scripted transport: tool execution, crops as new turns, coordinate
mapping, limits, repairs, failures that never stop a batch, self-consistency, token masks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from assessor.vlm.loop import (
    AssessmentError,
    BatchAssessmentError,
    Generation,
    LoopAssessor,
    LoopConfig,
    Trajectory,
    expected_rating,
    loop_config,
    smart_resize,
)


class FakeTransport:
    """Answers each row with the next scripted text; the frame is the image at half size."""

    name = "fake"

    def __init__(self, scripts, fail_rows=(), raise_on_rows=()):
        self.scripts = scripts  # image index -> list of turn texts (or Generation)
        self.fail_rows = set(fail_rows)
        self.raise_on_rows = set(raise_on_rows)
        self.calls: list[list[tuple[int, int]]] = []
        self.seen: dict[int, list] = {}

    def open(self, trajectories):
        transport = self

        class Batch:
            def generate(self, rows):
                transport.calls.append([(trajectories[r].index, trajectories[r].sample) for r in rows])
                out = []
                for r in rows:
                    traj = trajectories[r]
                    if traj.index in transport.raise_on_rows:
                        raise RuntimeError("CUDA out of memory (simulated)")
                    transport.seen.setdefault(traj.index, []).append(list(traj.messages))
                    if traj.index in transport.fail_rows:
                        out.append(Generation("", finish_reason="error", error="HTTP 503 (simulated)"))
                        continue
                    turns = transport.scripts[traj.index]
                    item = turns[min(traj.turns, len(turns) - 1)]
                    if callable(item):
                        item = item(traj)
                    out.append(item if isinstance(item, Generation) else Generation(item))
                return out

            def close(self):
                pass

        return Batch()


class FakeAssessor(LoopAssessor):
    name = "fake"

    def frame_size(self, image):
        return (image.shape[1] // 2, image.shape[0] // 2)


def image(w=400, h=200, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def tool(box, name="crop_zoom"):
    return f'<think>look closer</think><tool_call>{{"name": "{name}", "arguments": {{"bbox_2d": {box}}}}}</tool_call>'


def final(score=3.5, regions=()):
    return (
        "<think>done</think><answer>" + json.dumps({"score": score, "regions": list(regions)}) + "</answer>"
    )


def run(scripts, images=None, **options):
    transport = FakeTransport(scripts)
    config = loop_config(None, options, "fake")
    assessor = FakeAssessor(transport, config)
    images = images if images is not None else [image(seed=i) for i in range(len(scripts))]
    return assessor.assess_results(images), transport


def test_tool_call_runs_crop_zoom_and_the_crop_comes_back_as_a_user_turn():
    region = {"bbox_2d": [50, 25, 100, 50], "distortion": "noise", "severity": 0.7, "reason": "sky"}
    results, transport = run([[tool([20, 10, 60, 40]), final(2.5, [region])]])
    r = results[0]
    assert r.error is None
    d = r.diagnosis
    assert d.score == 2.5 and d.backend == "fake" and d.image_size == (400, 200)
    # frame 200x100 -> source 400x200: boxes double
    assert d.regions[0].bbox == [100, 50, 200, 100]
    assert d.regions[0].distortion == "noise" and d.regions[0].reason == "sky"
    traj = r.trajectories[0]
    assert [m.kind for m in traj.messages] == ["prompt", "prompt", "model", "tool", "model"]
    tool_turn = traj.messages[3]
    assert tool_turn.role == "user"
    crop = tool_turn.images[0]
    zoom = traj.zooms[0]
    assert zoom.requested == (40, 20, 120, 80)  # the asked-for box in source pixels
    assert zoom.box == (28, 11, 132, 89)  # with 15% context on each side
    assert crop.shape == (312, 416, 3)  # zoomed 4x (the upscale cap; 448 px is the target)
    assert "<tool_response>" in tool_turn.text() and "[" in tool_turn.text()
    # the trace: what was looked at, the tool call, what came back
    s0, s1 = d.trace
    assert s0.view == [0, 0, 400, 200] and s0.tool_call.name == "crop_zoom"
    assert s0.data["zoom_box"] == list(zoom.box) and s0.observation.startswith("zoomed")
    assert s1.view == list(zoom.box) and s1.observation == "final answer"
    # the second model call saw the crop
    assert len(transport.seen[0][1]) == 4 and transport.seen[0][1][-1].images


def test_rows_finish_at_different_turns_and_only_active_rows_are_asked():
    scripts = [[final(4.0)], [tool([0, 0, 50, 50]), tool([50, 0, 100, 50]), final(2.0)]]
    results, transport = run(scripts)
    assert [r.diagnosis.score for r in results] == [4.0, 2.0]
    assert transport.calls == [[(0, 0), (1, 0)], [(1, 0)], [(1, 0)]]


def test_bad_json_gets_a_correction_and_a_second_chance():
    results, transport = run([["<answer>{score: 3,, regions</answer>", final(3.0)]])
    r = results[0]
    assert r.diagnosis.score == 3.0
    step = r.diagnosis.trace[0]
    assert step.observation.startswith("error:") and "could not be read" in step.data["errors"][0]
    feedback = r.trajectories[0].messages[3]
    assert feedback.kind == "feedback" and "no usable score" in feedback.text()


def test_box_outside_the_image_is_reported_back_to_the_model():
    results, _ = run([[tool([500, 300, 600, 400]), final(3.0)]])
    r = results[0]
    assert r.error is None
    step = r.diagnosis.trace[0]
    assert "outside" in step.observation
    feedback = r.trajectories[0].messages[3]
    assert feedback.kind == "feedback" and "inside the 200x100 image" in feedback.text()


def test_normalised_boxes_and_deepeyes_tool_name():
    region = {"bbox_2d": [0.5, 0.5, 1.0, 1.0], "distortion": "jpeg", "severity": 0.3}
    results, _ = run([[tool([0.0, 0.0, 0.25, 0.5], name="image_zoom_in_tool"), final(3.0, [region])]])
    d = results[0].diagnosis
    assert results[0].trajectories[0].zooms[0].requested == (0, 0, 100, 100)
    assert d.regions[0].bbox == [200, 100, 400, 200]


def test_too_many_turns_fails_with_a_clear_error_and_others_continue():
    scripts = [[tool([0, 0, 50, 50])], [final(4.5)], ["I like it."]]
    results, _ = run(scripts, max_turns=3, max_crops=5)
    assert "no answer within max_turns=3" in results[0].error
    assert results[1].diagnosis.score == 4.5
    assert "no answer within max_turns=3" in results[2].error
    # the last turn told the model to answer now
    assert "last turn" in results[0].trajectories[0].messages[-2].text()


def test_crop_limit_is_enforced():
    results, _ = run([[tool([0, 0, 50, 50]), tool([0, 0, 60, 60]), final(3.0)]], max_crops=1)
    r = results[0]
    assert len(r.trajectories[0].zooms) == 1
    assert r.diagnosis.trace[1].observation == "refused: all 1 zooms are used"
    assert r.diagnosis.score == 3.0


def test_transport_failure_fails_that_image_only():
    transport = FakeTransport([[final(3.0)], [final(4.0)]], fail_rows={0})
    assessor = FakeAssessor(transport, LoopConfig())
    results = assessor.assess_results([image(seed=0), image(seed=1)])
    assert "HTTP 503" in results[0].error
    assert results[1].diagnosis.score == 4.0
    with pytest.raises(BatchAssessmentError) as info:
        assessor.assess_batch([image(seed=0), image(seed=1)])
    assert "1 of 2 images could not be assessed" in str(info.value)
    assert info.value.results[1].diagnosis.score == 4.0
    with pytest.raises(AssessmentError, match="HTTP 503"):
        assessor.assess(image(seed=0))


def test_a_crashing_batch_is_retried_image_by_image():
    transport = FakeTransport([[final(3.0)], [final(4.0)], [final(2.0)]], raise_on_rows={1})
    results = FakeAssessor(transport, LoopConfig()).assess_results([image(seed=i) for i in range(3)])
    assert results[0].diagnosis.score == 3.0 and results[2].diagnosis.score == 2.0
    assert results[1].error == "RuntimeError: CUDA out of memory (simulated)"


def test_bad_images_are_errors_not_crashes():
    transport = FakeTransport([[final(3.0)], [final(3.0)]])
    results = FakeAssessor(transport, LoopConfig()).assess_results([np.zeros((4, 4, 3), np.uint8), image()])
    assert "too small" in results[0].error
    assert results[1].diagnosis.score == 3.0


def test_public_checkpoint_answer_formats():
    scripts = [
        ['<think>ok</think><answer>{"rating": 3.9}</answer>'],
        ["<think>ok</think><answer>2.45</answer>"],
    ]
    results, _ = run(scripts, prompt_style="qinsight")
    assert [r.diagnosis.score for r in results] == [3.9, 2.45]
    assert results[0].diagnosis.trace[-1].data["answer_format"] == "rating"
    assert results[0].trajectories[0].messages[0].kind == "prompt"
    assert '{"rating"' in results[0].trajectories[0].messages[0].text()  # no system prompt in this style


def test_expected_score_from_rating_probabilities():
    text = '<answer>{"score": 4.0}</answer>'
    offsets = list(range(len(text)))  # one character per token
    probs = [[0.0] * 5 for _ in text]
    probs[text.index("4.0")] = [0.0, 0.0, 0.2, 0.6, 0.2]  # P(3)=.2 P(4)=.6 P(5)=.2 -> 4.0
    probs[text.index("4.0")] = [0.1, 0.1, 0.2, 0.4, 0.2]
    gen = Generation(text, rating_probs=probs, token_offsets=offsets)
    results, _ = run([[gen]], score_mode="expected")
    d = results[0].diagnosis
    expected = 0.1 * 1 + 0.1 * 2 + 0.2 * 3 + 0.4 * 4 + 0.2 * 5
    assert d.score == pytest.approx(expected)
    assert d.trace[-1].data["score_written"] == 4.0
    assert d.trace[-1].data["rating_probs"] == [0.1, 0.1, 0.2, 0.4, 0.2]
    assert expected_rating([1, 1, 1, 1, 1]) == pytest.approx(3.0)


def test_self_consistency_averages_samples_and_keeps_a_real_trajectory():
    def by_sample(traj):
        return final(
            [2.0, 3.0, 4.5][traj.sample],
            [{"bbox_2d": [0, 0, 10, 10], "distortion": "blur", "severity": traj.sample / 4}],
        )

    results, transport = run([[by_sample]], samples=3)
    d = results[0].diagnosis
    assert d.score == pytest.approx((2.0 + 3.0 + 4.5) / 3)
    assert d.regions[0].severity == 0.25  # from sample 1 (score 3.0, the closest to the mean)
    assert d.trace[-1].data["sample_scores"] == [2.0, 3.0, 4.5]
    assert transport.calls == [[(0, 0), (0, 1), (0, 2)]]
    assert len(results[0].trajectories) == 3


def test_token_masks_separate_policy_tokens():
    traj = Trajectory(image=image(), config=LoopConfig(), image_token_id=9)
    traj.add_tokens("prompt", [1, 2, 9, 9, 3])
    traj.add_tokens("model", [4, 5])
    traj.generations.append(Generation("x"))
    traj.add_tokens("tool", [6, 9, 9, 7])
    traj.add_tokens("model", [8])
    masks = traj.token_masks()
    assert masks.policy.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1]
    assert masks.image.tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0]
    assert masks.tool.tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert masks.prompt.sum() == 5 and masks.feedback.sum() == 0
    assert [(s.kind, s.start, s.end, s.turn) for s in traj.spans] == [
        ("prompt", 0, 5, 0), ("model", 5, 7, 0), ("tool", 7, 11, 1), ("model", 11, 12, 1),
    ]  # fmt: skip


def test_config_validation_and_unknown_options():
    with pytest.raises(ValueError, match="score_mode"):
        LoopConfig(score_mode="mean")
    with pytest.raises(ValueError, match="max_turns"):
        LoopConfig(max_turns=0)
    with pytest.raises(TypeError, match="unknown vlm option"):
        loop_config(None, {"max_turn": 3}, "vlm")
    assert loop_config(LoopConfig(max_crops=1), {"samples": 2}, "vlm").max_crops == 1


def test_smart_resize_matches_qwen():
    assert smart_resize(1024, 1024, max_pixels=1280 * 28 * 28) == (980, 980)
    h, w = smart_resize(90, 160, min_pixels=28 * 28, max_pixels=112 * 112)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 112 * 112

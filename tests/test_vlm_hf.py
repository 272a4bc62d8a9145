"""The vlm backend on a tiny random Qwen2.5-VL, through the real processor and ``generate``.

A logits processor forces a scripted text (tool call, then answer), so everything else is real:
chat template, image processor, prefill, KV cache kept across turns, stop strings, crop_zoom,
the crop as a new turn, parsing and the mapping of boxes back to source pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_qwen import critic_script, save_tiny_qwen, scripted, tiny_qwen_parts

from assessor import cli
from assessor.vlm.hf import (
    VLMAssessor,
    build_model_inputs,
    policy_logits,
    rating_distribution,
)
from assessor.vlm.loop import expected_rating

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts():
    return tiny_qwen_parts(seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen"), seed=0)


def photo(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def assessor_for(parts, scripts=None, **options):
    tokenizer, processor, model = parts
    a = VLMAssessor(model, processor=processor, **options)
    if scripts is not None:
        a.transport.logits_processors = [scripted(tokenizer, scripts)]
    return a


def source_box(box, image, frame):
    sx, sy = image.shape[1] / frame[0], image.shape[0] / frame[1]
    return [
        int(np.floor(box[0] * sx)),
        int(np.floor(box[1] * sy)),
        int(np.ceil(box[2] * sx)),
        int(np.ceil(box[3] * sy)),
    ]


def test_forced_trajectory_end_to_end(parts):
    tokenizer, processor, model = parts
    img = photo(200, 90)
    a = assessor_for(parts)
    frame = a.frame_size(img)
    assert frame[0] % 28 == 0 and frame[1] % 28 == 0 and frame[0] * frame[1] <= 112 * 112
    script = critic_script(frame, crops=1, score=2.75)
    a.transport.logits_processors = [scripted(tokenizer, script)]
    result = a.assess_results([img])[0]
    assert result.error is None
    d = result.diagnosis
    traj = result.trajectories[0]
    assert traj.frame_size == frame  # what the processor really produced
    # the score and the region, mapped from the frame to source pixels
    call = json.loads(script[0].split("<tool_call>\n")[1].split("\n</tool_call>")[0])
    tool_box = call["arguments"]["bbox_2d"]
    assert d.score == 2.75 and d.backend == "vlm" and d.image_size == (200, 90)
    assert len(d.regions) == 1
    assert d.regions[0].bbox == source_box(tool_box, img, frame)
    assert d.regions[0].distortion == "blur" and d.regions[0].severity == 0.5
    # generation stopped exactly at the end of the tool call and of the answer
    assert [g.text for g in traj.generations] == script
    assert [g.finish_reason for g in traj.generations] == ["stop", "stop"]
    # the crop went back as a user turn with the image, and the model saw its image tokens
    assert [s.kind for s in traj.spans] == ["prompt", "model", "tool", "model"]
    masks = traj.token_masks()
    tool_span = traj.spans[2]
    crop_tokens = masks.image[tool_span.start : tool_span.end].sum()
    h, w = traj.zooms[0].image.shape[:2]
    grid = processor.image_processor(images=[traj.zooms[0].image], return_tensors="pt")["image_grid_thw"][0]
    assert crop_tokens == int(grid.prod()) // 4 > 0
    assert masks.image[: traj.spans[0].end].sum() > 0  # the input image in the prompt
    policy_text = tokenizer.decode(np.asarray(traj.token_ids)[masks.policy].tolist())
    assert policy_text == "".join(script)  # the policy's own tokens are exactly what it wrote
    # the trace: the zoom box in source pixels, what came back
    step0, step1 = d.trace
    assert step0.tool_call.arguments["bbox_2d"] == [float(v) for v in tool_box]
    assert step0.data["zoom_box"] == list(traj.zooms[0].box)
    assert step0.observation == f"zoomed {list(traj.zooms[0].box)} (source pixels) to {w}x{h}"
    assert step1.view == list(traj.zooms[0].box) and step1.observation == "final answer"
    assert d.timings["total_s"] > 0 and d.timings["decode_s"] > 0


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_kv_cache_reuse_matches_full_reencoding(parts, cache):
    """Rows that zoom 2, 0 and 1 times in one batch: every generated token's rating
    probabilities equal those of one forward pass over the finished trajectory alone, and each
    column of the batch was fed to the model exactly once."""
    tokenizer, processor, model = parts
    images = [photo(160, 90, 1), photo(120, 120, 2), photo(200, 64, 3)]
    a = assessor_for(parts, cache_implementation=cache, record_rating_probs=True, prompt_style="plain")
    zoom = '<tool_call>{"name":"crop_zoom","arguments":{"bbox_2d":[%d,4,40,30]}}</tool_call>'
    done = '<answer>{"score":%d}</answer>'
    scripts = [[zoom % 2, zoom % 9, done % 2], [done % 4], ["Hmm. " + zoom % 5, done % 3]]
    a.transport.logits_processors = [scripted(tokenizer, scripts)]
    fed = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: fed.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        results = a.assess_results(images)
    finally:
        hook.remove()
    assert [r.error for r in results] == [None, None, None]
    assert [r.trajectories[0].turns for r in results] == [3, 1, 2]
    assert sum(fed) == a.transport.stats["columns"] - 1  # nothing re-encoded
    digits = a.transport.rating_ids()
    for r in results:
        traj = r.trajectories[0]
        probs = torch.softmax(policy_logits(a.transport, traj)[0].float(), -1)[:, digits]
        model_spans = [s for s in traj.spans if s.kind == "model"]
        for span, gen in zip(model_spans, traj.generations):
            recorded = torch.tensor(gen.rating_probs)
            assert recorded.shape == (span.end - span.start, 5)
            torch.testing.assert_close(recorded, probs[span.start - 1 : span.end - 1], atol=1e-5, rtol=1e-4)


def test_expected_score_and_rating_distribution(parts):
    tokenizer, processor, model = parts
    img = photo(160, 90, 4)
    a = assessor_for(parts, score_mode="expected")
    a.transport.logits_processors = [scripted(tokenizer, critic_script(a.frame_size(img), crops=1))]
    result = a.assess_results([img])[0]
    d = result.diagnosis
    data = d.trace[-1].data
    assert data["score_written"] == 3.25
    assert d.score == pytest.approx(expected_rating(data["rating_probs"]), abs=1e-4)
    assert 1.0 <= d.score <= 5.0 and d.score != 3.25
    # what a trainer needs: P(rating) if the model answered before vs after the crop
    traj = result.trajectories[0]
    before = rating_distribution(a.transport, traj, upto=traj.spans[1].start)
    after = rating_distribution(a.transport, traj, upto=traj.spans[2].end)
    assert before.shape == (5,) and before.sum() == pytest.approx(1.0) and after.sum() == pytest.approx(1.0)
    assert not np.allclose(before, after)  # the crop changed what the model would say
    inputs = build_model_inputs(a.transport, traj, upto=traj.spans[2].end)
    assert inputs["input_ids"].shape[1] == traj.spans[2].end
    assert inputs["position_ids"].shape == (3, 1, traj.spans[2].end)
    assert inputs["image_grid_thw"].shape == (2, 3)  # the input image and the crop
    inside_crop = traj.spans[2].start + int(np.argmax(traj.token_masks().image[traj.spans[2].start :])) + 1
    with pytest.raises(ValueError, match="cuts through an image"):
        build_model_inputs(a.transport, traj, upto=inside_crop)


def test_bad_outputs_through_real_generation(parts):
    tokenizer, processor, model = parts
    img = photo(140, 84, 5)
    script = [
        "<answer>{score: oops</answer>",
        '<tool_call>{"name": "crop_zoom", "arguments": {"bbox_2d": [500, 500, 600, 600]}}</tool_call>',
        '<tool_call>{"name": "zoom_in", "arguments": {"bbox_2d": [0.0, 0.0, 0.5, 0.5]}}</tool_call>',
        '<answer>{"score": 4.5, "regions": [{"bbox_2d": [0, 0, 9999, 40], "distortion": "noisy", "severity": 3}]}</answer>',
    ]
    a = assessor_for(parts, script, prompt_style="plain", max_turns=4)
    result = a.assess_results([img])[0]
    assert result.error is None
    d = result.diagnosis
    assert d.score == 4.5
    assert d.regions[0].distortion == "noise" and d.regions[0].severity == pytest.approx(0.3)
    assert d.regions[0].bbox[2] == 140  # clipped to the image
    assert "could not be read" in d.trace[0].data["errors"][0]
    assert "outside" in d.trace[1].observation
    assert d.trace[2].observation.startswith("zoomed")
    kinds = [m.kind for m in result.trajectories[0].messages]
    assert kinds == ["prompt", "model", "feedback", "model", "feedback", "model", "tool", "model"]


def test_no_answer_and_truncation_are_errors(parts):
    tokenizer, processor, model = parts
    images = [photo(100, 100, 6), photo(100, 100, 7)]
    scripts = [["I am thinking about it."], ["<answer>" + "9" * 80]]
    a = assessor_for(parts, scripts, prompt_style="plain", max_turns=2, max_new_tokens=40)
    r0, r1 = a.assess_results(images)
    assert r0.error.startswith("no answer within max_turns=2")
    assert r0.trajectories[0].generations[0].finish_reason == "stop"
    assert r1.trajectories[0].generations[0].finish_reason == "length"
    assert "outside 1-5" in r1.error or "no usable score" in r1.error


def test_sampling_is_reproducible_with_a_seed(parts):
    img = photo(100, 100, 8)

    def texts(seed):
        a = assessor_for(parts, prompt_style="plain", samples=2, seed=seed, max_turns=1, max_new_tokens=12)
        result = a.assess_results([img])[0]
        assert result.error is not None  # a random model does not answer
        return [t.generations[0].text for t in result.trajectories]

    first, again, other = texts(0), texts(0), texts(1)
    assert first == again
    assert first[0] != first[1]  # two samples, two different looks
    assert first != other


def test_loading_from_a_folder_and_clear_errors(tiny_dir, tmp_path):
    a = VLMAssessor(
        str(tiny_dir), device="cpu", local_files_only=True, min_pixels=28 * 28, max_pixels=56 * 56
    )
    assert a.model.dtype == torch.float32 and a.model.device.type == "cpu"
    for w, h in [(300, 300), (300, 120), (50, 400)]:  # the frame predicted = the processor's resize
        grid = a.processor.image_processor(images=[photo(w, h)], return_tensors="pt")["image_grid_thw"][0]
        frame = a.frame_size(photo(w, h))
        assert frame == (int(grid[2]) * 14, int(grid[1]) * 14)
    assert a.transport.gqa_decode  # tiny model: 4 query heads share 2 key/value heads
    with pytest.raises(RuntimeError, match="model folder '.*nowhere' does not exist"):
        VLMAssessor(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="no config.json"):
        VLMAssessor(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="needs a model"):
        VLMAssessor()
    with pytest.raises(TypeError, match="unknown vlm option"):
        VLMAssessor(str(tiny_dir), max_turn=3)


def _cli_env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    return env


def test_cli_vlm_backend_reports_every_image(tiny_dir, tmp_path):
    """A random model never answers: every image gets its error line, the run goes on, exit 1."""
    paths = []
    for i in range(2):
        from PIL import Image

        p = tmp_path / f"img{i}.png"
        Image.fromarray(photo(64, 48, i)).save(p)
        paths.append(str(p))
    paths.append(str(tmp_path / "missing.png"))
    cmd = [sys.executable, "-m", "assessor", *paths, "--backend", "vlm", "--model", str(tiny_dir), "--json"]
    cmd += ["--device", "cpu", "--max-turns", "1", "--max-new-tokens", "8", "--prompt-style", "plain"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_cli_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["image"] for line in lines] == paths
    assert all("no answer within max_turns=1" in line["error"] for line in lines[:2])
    assert "no such file" in lines[2]["error"]
    bad = subprocess.run(
        [sys.executable, "-m", "assessor", paths[0], "--backend", "vlm", "--model", str(tmp_path / "nope")],
        capture_output=True, text=True, env=_cli_env(), cwd=REPO, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_vlm_backend_json_with_a_scripted_model(tiny_dir, tmp_path, monkeypatch, capsys):
    """The CLI path with the real loader and options, the model forced to zoom once and answer."""
    from PIL import Image

    import assessor.backends as backends

    img = photo(300, 150, 9)
    path = tmp_path / "photo.png"
    Image.fromarray(img).save(path)
    seen = {}
    real = backends.load_assessor

    def load_scripted(backend, **options):
        seen.update(options)
        a = real(backend, **options)
        frame = a.frame_size(img)
        a.transport.logits_processors = [
            scripted(a.processor.tokenizer, critic_script(frame, crops=1, score=3.5))
        ]
        seen["frame"] = frame
        return a

    monkeypatch.setattr(backends, "load_assessor", load_scripted)
    code = cli.main(
        [str(path), "--backend", "vlm", "--model", str(tiny_dir), "--json", "--device", "cpu", "--max-crops", "2",
         "--score-mode", "greedy", "--annotate", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert seen["max_crops"] == 2 and seen["device"] == "cpu" and seen["score_mode"] == "greedy"
    assert out["score"] == 3.5 and out["backend"] == "vlm" and out["image_size"] == [300, 150]
    frame = seen["frame"]
    box = critic_script(frame, crops=1)[0].split('"bbox_2d": ')[1].split("]")[0] + "]"
    assert out["regions"][0]["bbox"] == source_box(json.loads(box), img, frame)
    assert [s["tool_call"]["name"] if s["tool_call"] else None for s in out["trace"]] == ["crop_zoom", None]
    assert (tmp_path / "out" / "photo.annotated.png").exists()


def test_bench_gpu_tiny_path(capsys):
    from assessor.vlm import bench_gpu

    code = bench_gpu.main(["--tiny", "--batch-sizes", "2", "--fast-batch-sizes", "1", "--crops", "1"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.startswith(("eager", "fast"))]
    assert [(r[0], r[1]) for r in rows] == [("eager", "2"), ("fast", "1")]
    for r in rows:
        s_per_image, images_per_s, tokens, stream, total = map(float, r[2:7])
        assert s_per_image > 0 and images_per_s > 0 and tokens > 100 and stream > 0 and total >= stream

"""The think-with-images loop (iMCoT), independent of how tokens are produced.

Per image: the model looks at the whole image and either calls ``crop_zoom`` (the crop comes
back as a new user turn with the image) or answers. The loop runs turn-synchronously over a
batch of trajectories, so a transport can batch the model calls (transformers with one KV cache
per batch) or run them concurrently (an OpenAI-compatible server).

A :class:`Trajectory` keeps everything a trainer needs to reuse the loop for rollouts: the
messages, the token ids of every turn and who wrote them (``spans``/``token_masks``), the
per-token rating probabilities when asked for, the trace and the final diagnosis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..backends import AssessorBackend
from ..imageio import ImageError, as_rgb8, check_image_size
from ..schema import Diagnosis, TraceStep
from ..zoom import Zoom, ZoomError, crop_zoom
from . import prompts
from .parse import COORDINATES, ParsedAnswer, format_list, parse_answer, parse_output, regions_to_source

SCORE_MODES = ("greedy", "expected")
DEFAULT_MAX_PIXELS = 1280 * 28 * 28  # ~1 MP: the largest an image is shown to the model, by default
RATING_DIGITS = (1, 2, 3, 4, 5)


class AssessmentError(ValueError):
    """An image the critic could not assess; the message says why (the CLI prints it)."""


class BatchAssessmentError(AssessmentError):
    """Some images of a batch failed. ``results`` holds every image's result, in order."""

    def __init__(self, results: list[AssessResult]):
        self.results = results
        failed = [(i, r.error) for i, r in enumerate(results) if r.error]
        lines = "; ".join(f"image {i}: {e}" for i, e in failed[:5])
        more = f"; +{len(failed) - 5} more" if len(failed) > 5 else ""
        super().__init__(f"{len(failed)} of {len(results)} images could not be assessed: {lines}{more}")


@dataclass
class LoopConfig:
    """How the critic looks and answers. Greedy decoding unless ``samples`` > 1 or ``do_sample``."""

    prompt_style: str = "qdeepsight"
    max_turns: int = 4  # model turns per image, the final answer included
    max_crops: int = 3
    max_new_tokens: int = 512  # per turn
    crop_size: int = 448  # longer side of a zoomed crop, in pixels
    crop_context: float = 0.15
    coordinates: str = "auto"  # how boxes are written: auto, pixels, normalized, thousandths
    score_mode: str = "greedy"  # greedy: the written score; expected: sum_k k * P(rating digit k)
    samples: int = 1  # > 1: self-consistency over that many sampled trajectories
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    record_rating_probs: bool = False  # keep P("1".."5") for every generated token (rollouts)

    def __post_init__(self) -> None:
        prompts.get_prompt_style(self.prompt_style)
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {self.max_turns}")
        if self.max_crops < 0:
            raise ValueError(f"max_crops must be 0 or more, got {self.max_crops}")
        if self.max_new_tokens < 8:
            raise ValueError(f"max_new_tokens must be at least 8, got {self.max_new_tokens}")
        if self.coordinates not in COORDINATES:
            raise ValueError(f"coordinates must be one of {', '.join(COORDINATES)}, got {self.coordinates!r}")
        if self.score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {', '.join(SCORE_MODES)}, got {self.score_mode!r}")
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    @property
    def sampling(self) -> bool:
        return self.do_sample or self.samples > 1

    @property
    def wants_rating_probs(self) -> bool:
        return self.record_rating_probs or self.score_mode == "expected"

    @property
    def style(self) -> prompts.PromptStyle:
        return prompts.get_prompt_style(self.prompt_style)


def loop_config(config: LoopConfig | None, options: dict[str, Any], backend: str) -> LoopConfig:
    """``config`` with ``options`` (LoopConfig fields given as backend keyword options) applied."""
    fields = set(LoopConfig.__dataclass_fields__)
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"unknown {backend} option(s): {', '.join(unknown)}")
    if config is None:
        return LoopConfig(**options)
    values = {k: getattr(config, k) for k in fields}
    values.update(options)
    return LoopConfig(**values)


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """Qwen2-VL's resize rule: (height, width) as multiples of ``factor`` with the area within
    [min_pixels, max_pixels]; this is the frame a Qwen-VL model sees and writes boxes in."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# --------------------------------------------------------------------------------------------
# conversation and trajectory


@dataclass
class ImagePart:
    """An image inside a message, exactly as sent to the model (the input, or a zoomed crop)."""

    image: np.ndarray  # H x W x 3 uint8


@dataclass
class Message:
    role: str  # "system", "user" or "assistant"
    content: list[str | ImagePart]
    kind: str  # "prompt", "model", "tool" (a tool response) or "feedback" (a correction)

    @property
    def images(self) -> list[np.ndarray]:
        return [p.image for p in self.content if isinstance(p, ImagePart)]

    def text(self) -> str:
        return "".join(p for p in self.content if isinstance(p, str))


@dataclass
class Generation:
    """One model turn as a transport returns it."""

    text: str  # without a trailing end-of-turn token
    token_ids: list[int] | None = None  # the tokens the model produced (None for remote servers)
    finish_reason: str = "stop"  # "stop" (stop string or end of turn), "length" or "error"
    rating_probs: list[list[float]] | None = None  # per generated token: P("1"), ..., P("5")
    token_offsets: list[int] | None = None  # per generated token: where its text starts in ``text``
    error: str | None = None  # the transport failed (timeout, HTTP error, ...)


@dataclass
class TokenSpan:
    """A stretch of a trajectory's tokens with one origin: ``model`` tokens are the policy's own."""

    kind: str  # "prompt", "model", "tool", "feedback"
    start: int
    end: int
    turn: int  # index of the model turn it belongs to (or precedes)


@dataclass
class TokenMasks:
    policy: np.ndarray  # bool per token: written by the model (the only tokens that carry gradient)
    image: np.ndarray  # bool: image placeholder tokens
    tool: np.ndarray  # bool: tool-response turns (text and images)
    prompt: np.ndarray  # bool: system prompt and first user turn
    feedback: np.ndarray  # bool: corrections sent by the loop


@dataclass
class Trajectory:
    """One image's conversation with the critic, from the first look to the answer (or failure)."""

    image: np.ndarray
    config: LoopConfig
    index: int = 0  # which input image
    sample: int = 0  # which self-consistency sample
    frame_size: tuple[int, int] | None = None  # the size of the image as the model saw it
    messages: list[Message] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    steps: list[TraceStep] = field(default_factory=list)
    zooms: list[Zoom] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # filled by token-level transports
    spans: list[TokenSpan] = field(default_factory=list)
    image_token_id: int | None = None
    answer: ParsedAnswer | None = None
    diagnosis: Diagnosis | None = None
    error: str | None = None
    done: bool = False
    view: list[int] | None = None  # what the next model turn looks at (source pixels)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.image.shape[1]), int(self.image.shape[0]))

    @property
    def turns(self) -> int:
        return len(self.generations)

    def shown_images(self) -> list[np.ndarray]:
        """Every image the model was shown, in order (the input first, then the crops)."""
        return [img for m in self.messages for img in m.images]

    def add_tokens(self, kind: str, ids: Sequence[int]) -> None:
        start = len(self.token_ids)
        self.token_ids.extend(int(i) for i in ids)
        if self.spans and self.spans[-1].kind == kind and self.spans[-1].end == start:
            self.spans[-1].end = len(self.token_ids)
        else:
            self.spans.append(TokenSpan(kind, start, len(self.token_ids), self.turns))

    def token_masks(self) -> TokenMasks:
        n = len(self.token_ids)
        masks = {k: np.zeros(n, dtype=bool) for k in ("model", "tool", "prompt", "feedback")}
        for span in self.spans:
            masks[span.kind][span.start : span.end] = True
        ids = np.asarray(self.token_ids, dtype=np.int64)
        image = ids == self.image_token_id if self.image_token_id is not None else np.zeros(n, dtype=bool)
        return TokenMasks(masks["model"], image, masks["tool"], masks["prompt"], masks["feedback"])

    def fail(self, reason: str) -> None:
        self.error = reason
        self.done = True


class TransportBatch(Protocol):
    """A batch of trajectories held open by a transport (e.g. with one KV cache for the batch)."""

    def generate(self, rows: list[int]) -> list[Generation]:
        """Encode whatever messages were added to these rows since the last call and produce the
        next model turn for each of them (in the order of ``rows``)."""

    def close(self) -> None: ...


class Transport(Protocol):
    name: str

    def open(self, trajectories: list[Trajectory]) -> TransportBatch:
        """Start a batch; must set ``frame_size`` on each trajectory (what its model will see)."""

    def frame_size(self, image: np.ndarray) -> tuple[int, int]:
        """The size of ``image`` as the model will see it (its processor's resize)."""


# --------------------------------------------------------------------------------------------
# the loop


def start_trajectory(
    image: np.ndarray, config: LoopConfig, frame_size: tuple[int, int], **kw: Any
) -> Trajectory:
    """The first turn: system prompt (if the style has one) and the image with the question."""
    traj = Trajectory(image=image, config=config, frame_size=frame_size, **kw)
    style = config.style
    if style.system is not None:
        traj.messages.append(Message("system", [style.system], "prompt"))
    traj.messages.append(Message("user", [ImagePart(image), style.user_text(frame_size)], "prompt"))
    traj.view = [0, 0, *traj.image_size]
    return traj


def run_loop(trajectories: list[Trajectory], transport: Transport) -> list[Trajectory]:
    """Drive a batch of started trajectories to their answers. Never raises for one bad output:
    failures end up in ``trajectory.error``; a transport failure fails the rows it concerned."""
    if not trajectories:
        return trajectories
    config = trajectories[0].config
    t0 = time.perf_counter()
    batch = transport.open(trajectories)
    try:
        for turn in range(config.max_turns):
            rows = [k for k, t in enumerate(trajectories) if not t.done]
            if not rows:
                break
            generations = batch.generate(rows)
            for k, gen in zip(rows, generations):
                advance(trajectories[k], gen, turn)
    finally:
        batch.close()
    seconds = time.perf_counter() - t0
    for traj in trajectories:
        if not traj.done:
            traj.fail(f"no answer within max_turns={config.max_turns}")
        traj.timings["batch_s"] = round(seconds, 4)
        traj.timings["batch_size"] = float(len(trajectories))
        finalize(traj)
    return trajectories


def _feedback(traj: Trajectory, text: str, turn: int) -> None:
    if turn + 1 == traj.config.max_turns - 1:
        text = f"{text}\n{prompts.final_answer_now(traj.config.style)}"
    traj.messages.append(Message("user", [text], "feedback"))


def advance(traj: Trajectory, gen: Generation, turn: int) -> None:
    """Read one model turn and act on it: run the tool, accept the answer, or ask for a fix."""
    config = traj.config
    traj.generations.append(gen)
    if gen.error is not None:
        traj.steps.append(TraceStep(observation=f"error: {gen.error}", view=traj.view, data={"turn": turn}))
        traj.fail(f"the model call failed: {gen.error}")
        return
    traj.messages.append(Message("assistant", [gen.text], "model"))
    parsed = parse_output(gen.text)
    data: dict[str, Any] = {"turn": turn, "finish": gen.finish_reason}
    if gen.token_ids is not None:
        data["tokens"] = len(gen.token_ids)
    step = TraceStep(thought=parsed.thought, view=traj.view, data=data)
    traj.steps.append(step)
    errors, repairs = list(parsed.errors), list(parsed.repairs)
    last_turn = turn >= config.max_turns - 1
    if gen.finish_reason == "length":
        repairs.append(f"the turn hit max_new_tokens={config.max_new_tokens}")

    if parsed.kind == "answer":
        answer = parse_answer(parsed, gen.text)
        errors += answer.errors
        repairs += answer.repairs
        if answer.score is not None:
            traj.answer = answer
            step.observation = "final answer"
            traj.done = True
        elif last_turn:
            step.observation = "error: " + "; ".join(answer.errors)
            traj.fail("the answer has no usable score: " + "; ".join(answer.errors))
        else:
            step.observation = "error: " + "; ".join(answer.errors)
            _feedback(
                traj,
                prompts.correction(
                    "Your answer has no usable score (" + "; ".join(answer.errors) + ").", config.style
                ),
                turn,
            )
    elif parsed.kind == "tool_call":
        step.tool_call = parsed.tool_call
        box = parsed.tool_call.arguments["bbox_2d"]
        if last_turn:
            step.observation = "error: a zoom was asked for in the last allowed turn"
            traj.fail(f"no answer within max_turns={config.max_turns} (the last turn asked for another zoom)")
        elif len(traj.zooms) >= config.max_crops:
            step.observation = f"refused: all {config.max_crops} zooms are used"
            errors.append(step.observation)
            _feedback(
                traj,
                f"You have used all {config.max_crops} zooms. {prompts.final_answer_now(config.style)}",
                turn,
            )
        else:
            try:
                zoom = _zoom(traj, box)
            except ZoomError as exc:
                step.observation = f"error: {exc}"
                errors.append(str(exc))
                w, h = traj.frame_size or traj.image_size
                _feedback(
                    traj,
                    prompts.correction(
                        f"The zoom failed: {exc}. Boxes are [x0, y0, x1, y1] inside the {w}x{h} image.",
                        config.style,
                    ),
                    turn,
                )
            else:
                _tool_response(traj, zoom, turn)
                step.observation = (
                    f"zoomed {format_list(list(zoom.box))} (source pixels) to "
                    f"{zoom.image.shape[1]}x{zoom.image.shape[0]}"
                )
                step.data["zoom_box"] = list(zoom.box)
                step.data["requested_box"] = list(zoom.requested)
    else:
        reason = "; ".join(parsed.errors) or "no tool call and no answer"
        step.observation = f"error: {reason}"
        if last_turn:
            traj.fail(f"no answer within max_turns={config.max_turns} (last turn: {reason})")
        else:
            _feedback(
                traj, prompts.correction(f"I could not read your reply ({reason}).", config.style), turn
            )
    if errors:
        step.data["errors"] = errors
    if repairs:
        step.data["repairs"] = repairs


def _zoom(traj: Trajectory, box: list[float]) -> Zoom:
    config = traj.config
    if config.coordinates == "thousandths":
        box, normalized = [v / 1000.0 for v in box], True
    else:
        normalized = {"auto": None, "pixels": False, "normalized": True}[config.coordinates]
    return crop_zoom(
        traj.image,
        box,
        normalized=normalized,
        frame_size=traj.frame_size,
        context=config.crop_context,
        target_size=config.crop_size,
    )


def _tool_response(traj: Trajectory, zoom: Zoom, turn: int) -> None:
    config = traj.config
    traj.zooms.append(zoom)
    frame_box = _to_frame(list(zoom.box), traj.image_size, traj.frame_size)
    zooms_left = config.max_crops - len(traj.zooms)
    before, after = prompts.tool_response_texts(
        frame_box, (zoom.image.shape[1], zoom.image.shape[0]), zooms_left
    )
    if turn + 1 == config.max_turns - 1:
        after = f"{after}\n{prompts.final_answer_now(config.style)}"
    image = np.ascontiguousarray(
        zoom.image if zoom.image.ndim == 3 else np.repeat(zoom.image[:, :, None], 3, 2)
    )
    traj.messages.append(Message("user", [before, ImagePart(image), after], "tool"))
    traj.view = list(zoom.box)


def _to_frame(box: list[int], image_size: tuple[int, int], frame_size: tuple[int, int] | None) -> list[float]:
    if frame_size is None:
        return [float(v) for v in box]
    sx, sy = frame_size[0] / image_size[0], frame_size[1] / image_size[1]
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def expected_rating(probs: Sequence[float]) -> float:
    """The score as the expectation over the rating digits 1..5 (probabilities renormalised)."""
    p = np.asarray(probs, dtype=np.float64)
    total = float(p.sum())
    if not math.isfinite(total) or total <= 0:
        raise ValueError("rating probabilities sum to zero")
    return float(np.dot(p / total, RATING_DIGITS))


def token_at(offsets: Sequence[int], char: int) -> int:
    """Index of the token whose text contains character ``char``."""
    index = 0
    for i, start in enumerate(offsets):
        if start <= char:
            index = i
        else:
            break
    return index


def finalize(traj: Trajectory) -> None:
    """Turn the answer into a Diagnosis with boxes in source pixels (or keep the error)."""
    if traj.answer is None or traj.answer.score is None:
        if traj.error is None:
            traj.error = "no answer"
        return
    config = traj.config
    answer = traj.answer
    regions, errors, repairs = regions_to_source(
        answer.raw_regions, traj.image_size, traj.frame_size, config.coordinates
    )
    last = traj.steps[-1]
    if errors:
        last.data.setdefault("errors", []).extend(errors)
    if repairs:
        last.data.setdefault("repairs", []).extend(repairs)
    last.data["answer_format"] = answer.format
    score = float(answer.score)
    last.data["score_written"] = score
    gen = traj.generations[-1]
    probs = _rating_probs_at_score(gen, answer)
    if probs is not None:
        last.data["rating_probs"] = [round(p, 6) for p in probs]
        last.data["score_expected"] = round(expected_rating(probs), 6)
    if config.score_mode == "expected":
        if probs is not None:
            score = last.data["score_expected"]
        else:
            last.data.setdefault("repairs", []).append(
                "no rating probabilities at the score; used the written score"
            )
    traj.diagnosis = Diagnosis(
        score=min(5.0, max(1.0, score)),
        regions=regions,
        trace=traj.steps,
        backend="",
        image_size=traj.image_size,
        timings=dict(traj.timings),
    )


def _rating_probs_at_score(gen: Generation, answer: ParsedAnswer) -> list[float] | None:
    if gen.rating_probs is None or gen.token_offsets is None or answer.score_offset is None:
        return None
    if not gen.rating_probs:
        return None
    index = token_at(gen.token_offsets, answer.score_offset)
    if index >= len(gen.rating_probs):
        return None
    probs = [float(p) for p in gen.rating_probs[index]]
    return probs if sum(probs) > 0 else None


# --------------------------------------------------------------------------------------------
# self-consistency and results


@dataclass
class AssessResult:
    """One image's outcome: a diagnosis, or an error that says why not; the trajectories behind it."""

    diagnosis: Diagnosis | None
    error: str | None
    trajectories: list[Trajectory] = field(default_factory=list)


def aggregate(trajectories: list[Trajectory], backend: str) -> AssessResult:
    """Merge an image's sampled trajectories: the score is the mean of the valid samples; the
    regions and trace come from the sample closest to that mean (a real look, not a blend)."""
    valid = [t for t in trajectories if t.diagnosis is not None]
    if not valid:
        errors = sorted({t.error or "no answer" for t in trajectories})
        return AssessResult(None, "; ".join(errors), trajectories)
    if len(trajectories) == 1:
        diagnosis = valid[0].diagnosis
        diagnosis.backend = backend
        return AssessResult(diagnosis, None, trajectories)
    scores = np.array([t.diagnosis.score for t in valid])
    mean = float(scores.mean())
    best = min(valid, key=lambda t: (abs(t.diagnosis.score - mean), t.sample))
    d = best.diagnosis
    summary = TraceStep(
        thought="",
        observation=(
            f"self-consistency over {len(trajectories)} samples ({len(valid)} answered): "
            f"mean {mean:.3f}, std {float(scores.std()):.3f}; regions from sample {best.sample}"
        ),
        view=[0, 0, *best.image_size],
        data={
            "sample_scores": [round(float(s), 4) for s in scores],
            "failed_samples": len(trajectories) - len(valid),
        },
    )
    diagnosis = Diagnosis(
        score=mean,
        regions=d.regions,
        trace=[*d.trace, summary],
        backend=backend,
        image_size=d.image_size,
        timings=dict(d.timings),
    )
    return AssessResult(diagnosis, None, trajectories)


class LoopAssessor(AssessorBackend):
    """An AssessorBackend that runs the iMCoT loop over a transport, in batches."""

    name = "loop"

    def __init__(self, transport: Transport, config: LoopConfig, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.transport = transport
        self.config = config
        self.batch_size = batch_size

    def frame_size(self, image: np.ndarray) -> tuple[int, int]:
        """The size of ``image`` as the model will see it (its processor's resize)."""
        return self.transport.frame_size(image)

    def assess(self, image: np.ndarray) -> Diagnosis:
        result = self.assess_results([image])[0]
        if result.error is not None:
            raise AssessmentError(result.error)
        return result.diagnosis

    def assess_batch(self, images: Sequence[np.ndarray]) -> list[Diagnosis]:
        """All images are assessed; if any failed, BatchAssessmentError carries every result."""
        results = self.assess_results(images)
        if any(r.error for r in results):
            raise BatchAssessmentError(results)
        return [r.diagnosis for r in results]

    def assess_results(
        self, images: Sequence[np.ndarray], config: LoopConfig | None = None
    ) -> list[AssessResult]:
        """Assess every image; a bad image or a failed batch never stops the others."""
        config = config or self.config
        results: list[AssessResult | None] = [None] * len(images)
        pending: list[tuple[int, np.ndarray]] = []
        for i, image in enumerate(images):
            try:
                rgb = as_rgb8(image)
                check_image_size(rgb, f"image {i}")
            except ImageError as exc:
                results[i] = AssessResult(None, str(exc))
                continue
            pending.append((i, rgb))
        per_batch = max(1, self.batch_size // config.samples)
        for b in range(0, len(pending), per_batch):
            chunk = pending[b : b + per_batch]
            for i, result in zip([i for i, _ in chunk], self._run_chunk(chunk, config)):
                results[i] = result
        return results

    def _run_chunk(self, chunk: list[tuple[int, np.ndarray]], config: LoopConfig) -> list[AssessResult]:
        t0 = time.perf_counter()
        try:
            trajectories = [
                start_trajectory(rgb, config, self.frame_size(rgb), index=i, sample=s)
                for i, rgb in chunk
                for s in range(config.samples)
            ]
            run_loop(trajectories, self.transport)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a failed batch must not take the other images down with it
            if len(chunk) > 1:
                return [r for item in chunk for r in self._run_chunk([item], config)]
            return [AssessResult(None, f"{type(exc).__name__}: {exc}")]
        seconds = time.perf_counter() - t0
        out = []
        for k in range(len(chunk)):
            group = trajectories[k * config.samples : (k + 1) * config.samples]
            result = aggregate(group, self.name)
            if result.diagnosis is not None:
                result.diagnosis.timings["total_s"] = round(seconds / len(chunk), 4)
            out.append(result)
        return out

"""Reading what a VLM wrote: tool calls, answers, scores and regions, with safe repairs.

Models write almost-JSON (single quotes, trailing commas, a missing brace), call the tool by
another name (DeepEyes' ``image_zoom_in_tool``), give boxes as fractions, name distortions
in their own words, and put scores in several formats (ours, Q-Insight's ``{"rating": x}``,
VisualQuality-R1's bare number, ``\\boxed{x}``, "Score: 3.5/5"). Everything that can be read
without guessing is read, and every repair is written down; what cannot be read is an error
with a message that says what was wrong. Nothing here raises on model output.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..schema import DISTORTIONS, SCORE_MAX, SCORE_MIN, Region, ToolCall
from ..zoom import ZoomError, to_pixel_box
from .prompts import TOOL_NAME

TOOL_ALIASES = frozenset(
    {TOOL_NAME, "image_zoom_in_tool", "zoom_in", "zoom", "crop", "crop_image", "image_crop", "zoom_in_tool"}
)
BOX_KEYS = ("bbox_2d", "bbox", "box", "region", "bbox2d")
SCORE_KEYS = ("score", "rating", "quality", "overall", "quality_score", "final_score", "mos")
REGION_LIST_KEYS = ("regions", "distortions", "defects", "issues")
COORDINATES = ("auto", "pixels", "normalized", "thousandths")

DISTORTION_WORDS: dict[str, tuple[str, ...]] = {
    "blur": ("blur", "focus", "defocus", "soft", "unsharp", "sharpness", "smear"),
    "noise": ("noise", "noisy", "grain"),
    "jpeg": ("jpeg", "jpg", "compression", "block"),
    "overexposure": ("overexpos", "over_expos", "blown", "highlight", "too_bright", "clipped_white"),
    "underexposure": ("underexpos", "under_expos", "too_dark", "crushed", "dark"),
    "low_contrast": ("contrast", "haze", "hazy", "washed", "flat"),
    "color_cast": ("color", "colour", "white_balance", "tint", "cast", "hue"),
    "artifact": (
        "artifact",
        "artefact",
        "deform",
        "malform",
        "distort",
        "finger",
        "hand",
        "anatom",
        "ghost",
        "halo",
        "alias",
        "seam",
        "banding",
        "glitch",
    ),
}
SEVERITY_WORDS = {
    "none": 0.0,
    "negligible": 0.1,
    "slight": 0.3,
    "mild": 0.3,
    "minor": 0.3,
    "low": 0.3,
    "medium": 0.6,
    "moderate": 0.6,
    "noticeable": 0.6,
    "high": 0.9,
    "strong": 0.9,
    "severe": 0.9,
    "major": 0.9,
    "critical": 1.0,
}

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S)
_ANSWER = re.compile(r"<answer>(.*?)(</answer>|$)", re.S)
_TOOL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.S)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{\s*([-+]?\d+(?:\.\d+)?)\s*\}")
_SCORE_PHRASE = re.compile(
    r"\b(?:score|rating|quality score|overall rating)\b\s*(?:is|of|=|:)?\s*\**\s*([-+]?\d+(?:\.\d+)?)", re.I
)


@dataclass
class ParsedOutput:
    """One model turn, read: reasoning, and either a tool call, an answer, or nothing usable."""

    kind: str  # "tool_call", "answer" or "none"
    thought: str = ""
    tool_call: ToolCall | None = None
    answer_text: str = ""
    answer_offset: int = 0  # where answer_text starts in the turn's text
    errors: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)


@dataclass
class ParsedAnswer:
    """The content of an answer: the score, the raw regions, and where the score was written."""

    score: float | None
    raw_regions: list[Any] = field(default_factory=list)
    format: str = ""  # "json", "rating", "number", "boxed", "text"
    score_offset: int | None = None  # character of the score's first digit, in the turn's text
    errors: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# lenient JSON


def _strip_fences(text: str) -> str:
    text = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*(?:```)?$", text, re.S)
    return fence.group(1) if fence else text


def _close_brackets(text: str) -> str:
    """Append the closing brackets/braces a truncated JSON value is missing (outside strings)."""
    stack: list[str] = []
    in_string = escape = False
    for ch in text:
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    tail = '"' if in_string else ""
    return text + tail + "".join(reversed(stack))


def loads_lenient(text: str) -> tuple[Any, list[str]]:
    """Parse JSON the way models write it; returns (value, repairs) or raises ValueError."""
    repairs: list[str] = []
    body = _strip_fences(text)
    if body != text.strip():
        repairs.append("removed a code fence around the JSON")
    start = min((i for i in (body.find("{"), body.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("no JSON object found")
    if body[:start].strip():
        repairs.append("ignored text before the JSON")
    body = body[start:]
    try:
        value, end = json.JSONDecoder().raw_decode(body)
        if body[end:].strip():
            repairs.append("ignored text after the JSON")
        return value, repairs
    except json.JSONDecodeError:
        pass
    fixed = body
    if "'" in fixed and '"' not in fixed:
        fixed = fixed.replace("'", '"')
        repairs.append("replaced single quotes by double quotes")
    candidate = re.sub(r",\s*([}\]])", r"\1", fixed)
    if candidate != fixed:
        repairs.append("removed trailing commas")
        fixed = candidate
    candidate = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", fixed)))
    if candidate != fixed:
        repairs.append("replaced Python literals")
        fixed = candidate
    for attempt in (fixed, _close_brackets(fixed.rstrip().rstrip(","))):
        try:
            value, end = json.JSONDecoder().raw_decode(attempt)
        except json.JSONDecodeError:
            continue
        if attempt is not fixed:
            repairs.append("closed unbalanced brackets")
        if attempt[end:].strip():
            repairs.append("ignored text after the JSON")
        return value, repairs
    raise ValueError("not valid JSON, even after repairs")


# --------------------------------------------------------------------------------------------
# turns


def _thought(text: str, end: int) -> str:
    think = _THINK.search(text[:end])
    if think:
        return think.group(1).strip()
    return text[:end].strip()


def parse_output(text: str) -> ParsedOutput:
    """Read one model turn. The earlier of a tool call and an answer wins (generation stops at the
    end of either, so a second one is not expected)."""
    tool = _TOOL.search(text)
    answer = _ANSWER.search(text)
    if tool and (not answer or tool.start() < answer.start()):
        out = ParsedOutput("tool_call", thought=_thought(text, tool.start()))
        if not tool.group(2):
            out.repairs.append("closed an unterminated <tool_call>")
        out.tool_call = _read_tool_call(tool.group(1), out)
        if out.tool_call is None:
            out.kind = "none"
        return out
    if answer:
        out = ParsedOutput("answer", thought=_thought(text, answer.start()))
        if not answer.group(2):
            out.repairs.append("closed an unterminated <answer>")
        out.answer_text = answer.group(1)
        out.answer_offset = answer.start(1)
        return out
    # No tags: a bare JSON answer, a \boxed{} score or a "Score: x" sentence is still an answer.
    out = ParsedOutput("none", thought=text.strip())
    brace = text.find("{")
    if brace >= 0:
        try:
            value, _ = loads_lenient(text[brace:])
        except ValueError:
            value = None
        if isinstance(value, dict) and any(k in value for k in SCORE_KEYS):
            out.kind, out.answer_text, out.answer_offset = "answer", text[brace:], brace
            out.thought = text[:brace].strip()
            out.repairs.append("read an answer written without <answer> tags")
            return out
        if isinstance(value, dict) and (
            value.get("name") in TOOL_ALIASES or any(k in value for k in BOX_KEYS)
        ):
            call = _read_tool_call(text[brace:], out)
            if call is not None:
                out.kind, out.tool_call, out.thought = "tool_call", call, text[:brace].strip()
                out.repairs.append("read a tool call written without <tool_call> tags")
                return out
    for pattern in (_BOXED, _SCORE_PHRASE):
        matches = list(pattern.finditer(text))
        if matches:
            last = matches[-1]
            out.kind, out.answer_text, out.answer_offset = "answer", last.group(0), last.start(0)
            out.thought = text[: last.start()].strip()
            out.repairs.append("read a score written without <answer> tags")
            return out
    out.errors.append("found neither a <tool_call> nor an <answer>")
    return out


def _numbers(value: Any) -> list[float] | None:
    """Four finite numbers from [x0, y0, x1, y1], ["1", "2", ...] or [[x0, y0], [x1, y1]]."""
    if isinstance(value, str):
        value = _NUMBER.findall(value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (list, tuple)) for v in value)
    ):
        value = [*value[0], *value[1]]
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _read_tool_call(body: str, out: ParsedOutput) -> ToolCall | None:
    try:
        value, repairs = loads_lenient(body)
    except ValueError as exc:
        out.errors.append(f"the tool call could not be read ({exc}): {body.strip()[:120]!r}")
        return None
    out.repairs.extend(repairs)
    if not isinstance(value, dict):
        out.errors.append(f"the tool call must be a JSON object, got {type(value).__name__}")
        return None
    name = value.get("name")
    args = value.get("arguments", value.get("parameters"))
    if args is None and any(k in value for k in BOX_KEYS):
        args = value  # {"bbox_2d": [...], "tool": "crop"} (Zoom-IQA) or a bare box object
    if isinstance(args, str):
        try:
            args, repairs = loads_lenient(args)
            out.repairs.extend(repairs)
        except ValueError:
            args = None
    if name is None:
        name = TOOL_NAME
        out.repairs.append(f"assumed the tool {TOOL_NAME} (no name given)")
    if not isinstance(name, str) or name.strip().lower() not in TOOL_ALIASES:
        out.errors.append(f"unknown tool {name!r}; the only tool is {TOOL_NAME}")
        return None
    if name != TOOL_NAME:
        out.repairs.append(f"read the tool name {name!r} as {TOOL_NAME}")
    if not isinstance(args, dict):
        out.errors.append("the tool call has no arguments object")
        return None
    key = next((k for k in BOX_KEYS if k in args), None)
    box = _numbers(args[key]) if key else None
    if box is None:
        shown = args.get(key) if key else None
        out.errors.append(f"the tool call needs bbox_2d = [x0, y0, x1, y1] (four numbers), got {shown!r}")
        return None
    if key != "bbox_2d":
        out.repairs.append(f"read {key!r} as bbox_2d")
    arguments: dict[str, Any] = {"bbox_2d": box}
    if isinstance(args.get("label"), str):
        arguments["label"] = args["label"]
    return ToolCall(TOOL_NAME, arguments)


# --------------------------------------------------------------------------------------------
# answers


def _number_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        match = _NUMBER.search(value)
        return float(match.group()) if match else None
    return None


def normalize_score(value: float, text_after: str = "") -> tuple[float | None, str | None, str | None]:
    """Map a written score onto 1..5: returns (score, repair, error). "7/10" and "80/100" are read
    on their scale; values a little outside 1..5 are clipped; nonsense is an error."""
    scale = re.match(r"\s*(?:/|out of)\s*(\d+)", text_after)
    if scale:
        top = float(scale.group(1))
        if top in (10.0, 100.0) and 0 <= value <= top:
            return (
                SCORE_MIN + (SCORE_MAX - SCORE_MIN) * value / top,
                f"read {value:g}/{top:g} on the 1-5 scale",
                None,
            )
        if top == 5.0 and 0 <= value <= 5:
            pass
        else:
            return None, None, f"score {value:g}/{top:g} is on an unknown scale"
    if SCORE_MIN <= value <= SCORE_MAX:
        return value, None, None
    if 0.0 <= value < SCORE_MIN:
        return SCORE_MIN, f"clipped the score {value:g} to {SCORE_MIN:g}", None
    if SCORE_MAX < value <= 5.5:
        return SCORE_MAX, f"clipped the score {value:g} to {SCORE_MAX:g}", None
    return None, None, f"score {value:g} is outside 1-5"


def parse_answer(output: ParsedOutput, text: str) -> ParsedAnswer:
    """Read the score and raw regions from an answer (any of the supported formats)."""
    body = output.answer_text
    base = output.answer_offset
    stripped = body.strip()
    if not stripped:
        return ParsedAnswer(None, errors=["the <answer> is empty"])
    if stripped[0] in "{[" or stripped.startswith("```"):
        try:
            value, repairs = loads_lenient(body)
        except ValueError as exc:
            return ParsedAnswer(None, errors=[f"the answer could not be read ({exc}): {stripped[:120]!r}"])
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0]
            repairs.append("read the first object of a list")
        if not isinstance(value, dict):
            return ParsedAnswer(
                None, errors=[f"the answer must be a JSON object, got {type(value).__name__}"]
            )
        key = next((k for k in SCORE_KEYS if k in value), None)
        ans = ParsedAnswer(None, format="rating" if key == "rating" else "json", repairs=repairs)
        if key is None:
            ans.errors.append(f"the answer has no score (expected one of {', '.join(SCORE_KEYS[:2])})")
        else:
            raw = _number_value(value[key])
            if raw is None:
                ans.errors.append(f"the {key} {value[key]!r} is not a number")
            else:
                ans.score_offset = _score_offset(text, base, key)
                ans.score, repair, error = normalize_score(raw)
                ans.repairs += [repair] if repair else []
                ans.errors += [error] if error else []
        regions = next((value[k] for k in REGION_LIST_KEYS if k in value), [])
        if regions is None:
            regions = []
        if not isinstance(regions, list):
            ans.errors.append("regions must be a list")
            regions = []
        ans.raw_regions = regions
        return ans
    boxed = _BOXED.search(body)
    match = boxed or _NUMBER.search(body)
    if match is None:
        return ParsedAnswer(None, errors=[f"the answer has no score: {stripped[:120]!r}"])
    group = 1 if boxed else 0
    raw = float(match.group(group))
    fmt = "boxed" if boxed else ("number" if _NUMBER.fullmatch(stripped) else "text")
    score, repair, error = normalize_score(raw, body[match.end(group) :])
    ans = ParsedAnswer(score, format=fmt, score_offset=base + match.start(group))
    if fmt == "text":
        ans.repairs.append("read the first number of a free-text answer")
    ans.repairs += [repair] if repair else []
    ans.errors += [error] if error else []
    return ans


def _score_offset(text: str, base: int, key: str) -> int | None:
    match = re.compile(r'["\']?' + re.escape(key) + r'["\']?\s*:\s*"?\s*(\d)').search(text, base)
    return match.start(1) if match else None


# --------------------------------------------------------------------------------------------
# regions


def normalize_distortion(label: Any) -> tuple[str, str | None]:
    """A distortion name from the vocabulary, and a repair note when it had to be mapped."""
    if not isinstance(label, str) or not label.strip():
        return "other", f"no distortion type given ({label!r}); used 'other'"
    key = re.sub(r"[\s\-]+", "_", label.strip().lower())
    if key in DISTORTIONS:
        return key, None
    for name, words in DISTORTION_WORDS.items():
        if any(word in key for word in words):
            return name, f"read the distortion {label!r} as {name!r}"
    return "other", f"unknown distortion {label!r}; used 'other'"


def normalize_severity(value: Any) -> tuple[float, str | None]:
    if isinstance(value, str) and value.strip().lower() in SEVERITY_WORDS:
        return SEVERITY_WORDS[value.strip().lower()], f"read the severity {value!r} as a number"
    number = _number_value(value)
    if number is None:
        return 0.5, f"no usable severity ({value!r}); used 0.5"
    if 0.0 <= number <= 1.0:
        return number, None
    if 1.0 < number <= 10.0:
        return number / 10.0, f"read the severity {number:g} on a 0-10 scale"
    if 10.0 < number <= 100.0:
        return number / 100.0, f"read the severity {number:g} as a percentage"
    return min(1.0, max(0.0, number)), f"clipped the severity {number:g} to [0, 1]"


def box_to_source(
    box: list[float],
    image_size: tuple[int, int],
    frame_size: tuple[int, int] | None,
    coordinates: str = "auto",
) -> list[int]:
    """Map a box the model wrote (pixels of the frame it saw, fractions, or thousandths) to integer
    source pixels, clamped to the image. Raises ZoomError for a box with nothing inside the image."""
    if coordinates not in COORDINATES:
        raise ValueError(f"coordinates must be one of {', '.join(COORDINATES)}, got {coordinates!r}")
    normalized: bool | None = None  # "auto": fractions when all values lie in [0, 1]
    if coordinates == "thousandths":
        box, normalized = [v / 1000.0 for v in box], True
    elif coordinates == "normalized":
        normalized = True
    elif coordinates == "pixels":
        normalized = False
    x0, y0, x1, y1 = to_pixel_box(box, image_size, normalized=normalized, frame_size=frame_size)
    w, h = image_size
    x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    x1, y1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))
    if x1 <= x0 or y1 <= y0:
        raise ZoomError(f"box {format_list(box)} has no area inside the {w}x{h} image")
    return [x0, y0, x1, y1]


def format_list(values) -> str:
    return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + "]"


def regions_to_source(
    raw_regions: list[Any],
    image_size: tuple[int, int],
    frame_size: tuple[int, int] | None,
    coordinates: str = "auto",
) -> tuple[list[Region], list[str], list[str]]:
    """Turn the answer's regions into validated Regions in source pixels: (regions, errors, repairs).
    A region that cannot be placed is dropped with an error; the others are kept."""
    regions: list[Region] = []
    errors: list[str] = []
    repairs: list[str] = []
    w, h = image_size
    for i, raw in enumerate(raw_regions):
        where = f"regions[{i}]"
        if not isinstance(raw, dict):
            errors.append(f"{where}: expected an object, got {type(raw).__name__}; dropped")
            continue
        distortion, note = normalize_distortion(raw.get("distortion", raw.get("type", raw.get("label"))))
        repairs += [f"{where}: {note}"] if note else []
        severity, note = normalize_severity(raw.get("severity", raw.get("level")))
        repairs += [f"{where}: {note}"] if note else []
        reason = raw.get("reason", raw.get("description", ""))
        reason = reason if isinstance(reason, str) else json.dumps(reason)
        key = next((k for k in BOX_KEYS if k in raw), None)
        if key is None:
            box = [0, 0, w, h]
            repairs.append(f"{where}: no box; the region is the whole image")
        else:
            numbers = _numbers(raw[key])
            if numbers is None:
                errors.append(f"{where}: bbox_2d must be four numbers, got {raw[key]!r}; dropped")
                continue
            try:
                box = box_to_source(numbers, image_size, frame_size, coordinates)
            except ZoomError as exc:
                errors.append(f"{where}: {exc}; dropped")
                continue
            if any(v < 0 for v in numbers) or _outside_frame(numbers, frame_size, coordinates):
                repairs.append(f"{where}: clipped a box reaching outside the image")
        regions.append(Region(box, distortion, severity, reason))
    return regions, errors, repairs


def _outside_frame(box: list[float], frame_size: tuple[int, int] | None, coordinates: str) -> bool:
    if frame_size is None or coordinates in ("normalized", "thousandths"):
        return False
    if coordinates == "auto" and all(0.0 <= v <= 1.0 for v in box):
        return False
    return box[2] > frame_size[0] or box[3] > frame_size[1]

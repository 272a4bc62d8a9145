"""What a critic says about an image: a score, where quality drops and why, and how it looked.

These dataclasses are the boundary between the assessor backends, the PiG controller, the
ComfyUI nodes and the JSON the CLI prints, so they validate on construction and round-trip
through JSON exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

DISTORTIONS: tuple[str, ...] = (
    "blur",
    "noise",
    "jpeg",
    "overexposure",
    "underexposure",
    "low_contrast",
    "color_cast",
    "artifact",
    "other",
)

SCORE_MIN = 1.0
SCORE_MAX = 5.0


class SchemaError(ValueError):
    """A diagnosis (or part of one) that does not follow the schema; the message names the field."""


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise SchemaError(f"{where}: expected a finite number, got {value}")
    return value


@dataclass
class Region:
    """A place where quality drops: box ``[x0, y0, x1, y1]`` in input-image pixels (x1, y1 exclusive)."""

    bbox: list[int]
    distortion: str
    severity: float
    reason: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, image_size: tuple[int, int] | None = None, where: str = "region") -> None:
        if not isinstance(self.bbox, (list, tuple)) or len(self.bbox) != 4:
            raise SchemaError(f"{where}.bbox: expected [x0, y0, x1, y1], got {self.bbox!r}")
        coords = [_number(v, f"{where}.bbox[{i}]") for i, v in enumerate(self.bbox)]
        if any(c != round(c) for c in coords):
            raise SchemaError(f"{where}.bbox: expected integer pixel coordinates, got {self.bbox!r}")
        x0, y0, x1, y1 = (int(c) for c in coords)
        if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
            raise SchemaError(f"{where}.bbox: need 0 <= x0 < x1 and 0 <= y0 < y1, got {[x0, y0, x1, y1]}")
        if image_size is not None:
            w, h = image_size
            if x1 > w or y1 > h:
                raise SchemaError(f"{where}.bbox: {[x0, y0, x1, y1]} reaches outside the {w}x{h} image")
        self.bbox = [x0, y0, x1, y1]
        if self.distortion not in DISTORTIONS:
            raise SchemaError(
                f"{where}.distortion: {self.distortion!r} is not one of {', '.join(DISTORTIONS)}"
            )
        self.severity = _number(self.severity, f"{where}.severity")
        if not 0.0 <= self.severity <= 1.0:
            raise SchemaError(f"{where}.severity: {self.severity} is not in [0, 1]")
        if not isinstance(self.reason, str):
            raise SchemaError(f"{where}.reason: expected a string, got {type(self.reason).__name__}")

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.bbox
        return (x1 - x0) * (y1 - y0)

    def area_fraction(self, image_size: tuple[int, int]) -> float:
        w, h = image_size
        return self.area / float(w * h)

    def is_global(self, image_size: tuple[int, int], threshold: float = 0.8) -> bool:
        """A region covering most of the image is a whole-image defect (img2img / global fix)."""
        return self.area_fraction(image_size) >= threshold

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "region") -> Region:
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected an object, got {type(data).__name__}")
        missing = [k for k in ("bbox", "distortion", "severity") if k not in data]
        if missing:
            raise SchemaError(f"{where}: missing field(s) {', '.join(missing)}")
        region = cls.__new__(cls)
        region.bbox = data["bbox"]
        region.distortion = data["distortion"]
        region.severity = data["severity"]
        region.reason = data.get("reason", "")
        region.validate(where=where)
        return region


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class TraceStep:
    """One turn of the think-with-images loop: what was thought, the tool called, what came back.

    ``view`` is the part of the input image (pixels) that the turn looked at: the whole image for a
    global look, the crop box for a zoom. ``data`` holds the measured numbers behind the words.
    """

    thought: str = ""
    tool_call: ToolCall | None = None
    observation: str = ""
    view: list[int] | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "trace step") -> TraceStep:
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected an object, got {type(data).__name__}")
        call = data.get("tool_call")
        if call is not None:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise SchemaError(f"{where}.tool_call: expected {{'name': str, 'arguments': {{}}}}")
            call = ToolCall(call["name"], dict(call.get("arguments") or {}))
        view = data.get("view")
        if view is not None and (not isinstance(view, (list, tuple)) or len(view) != 4):
            raise SchemaError(f"{where}.view: expected [x0, y0, x1, y1], got {view!r}")
        return cls(
            thought=str(data.get("thought", "")),
            tool_call=call,
            observation=str(data.get("observation", "")),
            view=None if view is None else [int(v) for v in view],
            data=dict(data.get("data") or {}),
        )


@dataclass
class Diagnosis:
    """A critic's verdict: global score (1 = bad .. 5 = excellent), localized regions, and the trace."""

    score: float
    regions: list[Region] = field(default_factory=list)
    trace: list[TraceStep] = field(default_factory=list)
    backend: str = ""
    image_size: tuple[int, int] | None = None  # (width, height) of the assessed image
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.score = _number(self.score, "score")
        if not SCORE_MIN <= self.score <= SCORE_MAX:
            raise SchemaError(f"score: {self.score} is not in [{SCORE_MIN:g}, {SCORE_MAX:g}]")
        if self.image_size is not None:
            if len(self.image_size) != 2 or min(int(v) for v in self.image_size) < 1:
                raise SchemaError(f"image_size: expected (width, height), got {self.image_size!r}")
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        for i, region in enumerate(self.regions):
            if not isinstance(region, Region):
                raise SchemaError(f"regions[{i}]: expected a Region, got {type(region).__name__}")
            region.validate(self.image_size, where=f"regions[{i}]")
        for key, value in self.timings.items():
            self.timings[key] = _number(value, f"timings.{key}")

    @property
    def worst(self) -> Region | None:
        return max(self.regions, key=lambda r: r.severity, default=None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["image_size"] = list(self.image_size) if self.image_size else None
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Diagnosis:
        if not isinstance(data, dict):
            raise SchemaError(f"diagnosis: expected an object, got {type(data).__name__}")
        if "score" not in data:
            raise SchemaError("diagnosis: missing field score")
        regions = data.get("regions") or []
        trace = data.get("trace") or []
        if not isinstance(regions, list):
            raise SchemaError("regions: expected a list")
        if not isinstance(trace, list):
            raise SchemaError("trace: expected a list")
        size = data.get("image_size")
        return cls(
            score=data["score"],
            regions=[Region.from_dict(r, where=f"regions[{i}]") for i, r in enumerate(regions)],
            trace=[TraceStep.from_dict(t, where=f"trace[{i}]") for i, t in enumerate(trace)],
            backend=str(data.get("backend", "")),
            image_size=None if size is None else tuple(size),
            timings=dict(data.get("timings") or {}),
        )

    @classmethod
    def from_json(cls, text: str) -> Diagnosis:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"diagnosis: not valid JSON ({exc})") from None
        return cls.from_dict(data)

"""The one interface every critic implements, and the explicit list of critics there are.

The default critic is ``learned`` (a small trained network whose weights ship in the repo; CPU is
enough). Backends are imported lazily: ``classical`` must not pay for torch at start-up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .schema import Diagnosis, Region, TraceStep

BACKENDS: tuple[str, ...] = ("learned", "classical", "vlm", "openai", "brisque")
DEFAULT_BACKEND = "learned"  # ahead of classical on the benchmark figures (README, issue 7)


class AssessorBackend:
    """Look at an RGB uint8 image (H x W x 3) and return a Diagnosis in its pixel coordinates."""

    name = "base"

    def assess(self, image: np.ndarray) -> Diagnosis:
        raise NotImplementedError

    def assess_batch(self, images: Sequence[np.ndarray]) -> list[Diagnosis]:
        """Backends that can batch (the VLM) override this; the default looks at one at a time."""
        return [self.assess(image) for image in images]

    def close(self) -> None:
        """Free models and connections (no-op for weight-free backends)."""

    def conclude(
        self,
        score: float,
        regions: list[Region],
        trace: list[TraceStep],
        image_size: tuple[int, int],
        thought: str,
        t0: float,
        t_look: float,
    ) -> Diagnosis:
        """The think-with-images critics' last step: worst regions first, the verdict as the trace's
        last step, and the time spent looking at the whole image (``t0`` .. ``t_look``) and zooming."""
        regions.sort(key=lambda r: -r.severity)
        worst = ", ".join(f"{r.distortion} {r.severity:.2f}" for r in regions[:3]) or "nothing significant"
        w, h = image_size
        trace.append(
            TraceStep(thought=thought, observation=f"score {score:.2f}; {worst}.", view=[0, 0, w, h])
        )
        t_end = time.perf_counter()
        return Diagnosis(
            score=round(score, 4),
            regions=regions,
            trace=trace,
            backend=self.name,
            image_size=(w, h),
            timings={
                "look_s": round(t_look - t0, 4),
                "zoom_s": round(t_end - t_look, 4),
                "total_s": round(t_end - t0, 4),
            },
        )


def load_assessor(backend: str = DEFAULT_BACKEND, **options: Any) -> AssessorBackend:
    """Build a critic by name (default: learned). Options go to the backend's constructor (model
    path, device, ...)."""
    if backend == "classical":
        from .classical import ClassicalAssessor

        return ClassicalAssessor(**options)
    if backend == "learned":
        try:
            from .learned.critic import LearnedAssessor
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(f"the learned backend needs torch and safetensors: {exc}") from exc
        return LearnedAssessor(**options)
    if backend == "brisque":  # a baseline for the benchmark, fitted with the learned critic's data
        from .learned.baselines import BrisqueAssessor

        return BrisqueAssessor(**options)
    if backend == "vlm":
        try:
            from .vlm import VLMAssessor
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(f"the vlm backend needs torch and transformers: {exc}") from exc
        return VLMAssessor(**options)
    if backend == "openai":
        from .vlm.remote import OpenAIAssessor

        return OpenAIAssessor(**options)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")

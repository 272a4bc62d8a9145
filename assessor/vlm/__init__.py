"""The VLM backends: the think-with-images loop on transformers (``vlm``) or on an
OpenAI-compatible server (``openai``). Importing this package loads no torch; the classes load
lazily on first use."""

from __future__ import annotations

from typing import Any

__all__ = ["VLMAssessor", "OpenAIAssessor", "LoopConfig", "Trajectory", "AssessResult", "AssessmentError"]


def __getattr__(name: str) -> Any:
    if name == "VLMAssessor":
        from .hf import VLMAssessor

        return VLMAssessor
    if name == "OpenAIAssessor":
        from .remote import OpenAIAssessor

        return OpenAIAssessor
    if name in ("LoopConfig", "Trajectory", "AssessResult", "AssessmentError"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

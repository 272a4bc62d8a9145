"""Refiners: ``classical`` (OpenCV, no weights, the default) and ``sdxl`` (diffusers).

The sdxl refiner is imported only when asked for, so the classical path never loads torch.
"""

from __future__ import annotations

from typing import Any

from .base import Refiner, RefinerError
from .classical import ClassicalRefiner

REFINERS: tuple[str, ...] = ("classical", "sdxl")


def load_refiner(name: str = "classical", **options: Any) -> Refiner:
    """Build a refiner by name; options go to its constructor (model path, device, steps, ...)."""
    if name == "classical":
        return ClassicalRefiner(**options)
    if name == "sdxl":
        try:
            from .sdxl import SDXLRefiner
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RefinerError(f"the sdxl refiner needs torch and diffusers: {exc}") from exc
        return SDXLRefiner(**options)
    raise ValueError(f"unknown refiner {name!r}; choose one of {', '.join(REFINERS)}")


__all__ = ["REFINERS", "ClassicalRefiner", "Refiner", "RefinerError", "load_refiner"]

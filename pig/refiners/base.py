"""The one small interface every refiner implements."""

from __future__ import annotations

import numpy as np

from ..plan import DEFAULT_STRENGTHS, RefinePlan


class RefinerError(RuntimeError):
    """A refiner that cannot be built or run; the message is one line that says what to do."""


class Refiner:
    """Change an RGB uint8 image (H x W x 3) where a plan says, and nowhere else.

    ``global_operation`` tells the planner what whole-image defects become for this refiner and
    ``strengths`` the bounds of its strength per operation."""

    name = "base"
    global_operation = "global_fix"
    strengths: dict[str, tuple[float, float]] = DEFAULT_STRENGTHS
    # the score gain a round must reach to be kept, unless the caller says: a diffusion pass
    # changes every pixel of its crop a little, and a small rise may be the critic's noise
    margin: float = 0.05

    def refine(self, image: np.ndarray, plan: RefinePlan, *, seed: int = 0) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Free models (no-op for weight-free refiners)."""

    def __enter__(self) -> Refiner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""PiG, Perceptual-in-Generation: diagnoses -> masks and prompt edits -> refinement -> re-assessment,
until the score stops improving.

Importing ``pig`` is cheap (numpy and OpenCV only): the sdxl refiner loads torch and diffusers
when it is built.
"""

from .controller import RefineResult, RoundRecord, refine_image
from .paste import crop_box_for_mask, paste_masked
from .plan import PROMPT_EDITS, RefinePlan, RegionPlan, make_plan, soft_mask
from .refiners import REFINERS, Refiner, RefinerError, load_refiner

__all__ = [
    "PROMPT_EDITS",
    "REFINERS",
    "RefinePlan",
    "RefineResult",
    "Refiner",
    "RefinerError",
    "RegionPlan",
    "RoundRecord",
    "crop_box_for_mask",
    "load_refiner",
    "make_plan",
    "paste_masked",
    "refine_image",
    "soft_mask",
]

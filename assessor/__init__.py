"""Q-DeepSight assessor: a think-with-images image-quality critic.

It looks at the whole image, zooms into suspicious regions with ``crop_zoom``, and answers with a
global score (1-5, higher is better) and localized, typed diagnoses plus the trace of what it
looked at. Importing this package is cheap: backends load lazily.
"""

from .backends import BACKENDS, AssessorBackend, load_assessor
from .schema import DISTORTIONS, Diagnosis, Region, SchemaError, ToolCall, TraceStep
from .zoom import Zoom, ZoomError, crop_zoom

__all__ = [
    "BACKENDS",
    "DISTORTIONS",
    "AssessorBackend",
    "Diagnosis",
    "Region",
    "SchemaError",
    "ToolCall",
    "TraceStep",
    "Zoom",
    "ZoomError",
    "crop_zoom",
    "load_assessor",
]
__version__ = "0.1.0"

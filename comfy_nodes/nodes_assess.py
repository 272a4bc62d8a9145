"""Q-DeepSight in ComfyUI: load a critic once, then score and diagnose every image of a batch."""

from __future__ import annotations

from typing import Any

from . import model_paths
from .tensors import dump_diagnoses, image_batch_to_rgb8, masks_to_tensor, regions_mask, rgb8_to_image_batch

CATEGORY = "Q-DeepSight"
ASSESSOR = "QDS_ASSESSOR"  # an assessor.AssessorBackend, shared by the assess and refine nodes

BACKEND_NAMES = ["learned", "classical", "vlm", "openai"]  # the first is the default
DEVICES = ["auto", "cuda", "cpu", "mps"]
DTYPES = ["auto", "bfloat16", "float16", "float32"]


def assessor_options(
    backend: str, model: str | None, device: str, dtype: str, base_url: str
) -> dict[str, Any]:
    """Keyword options for ``assessor.load_assessor``; only what the backend uses, 'auto' left out."""
    if backend == "classical":
        return {}
    if backend == "learned":  # the shipped weights unless a .safetensors file is named
        options = {"weights": model} if model else {}
        if device != "auto":
            options["device"] = device
        return options
    if not model:
        raise ValueError(
            f"the {backend} backend needs a model: pick a folder from models/qdeepsight or type a path or hub id"
        )
    if backend == "vlm":
        options: dict[str, Any] = {"model": model}
        if device != "auto":
            options["device"] = device
        if dtype != "auto":
            options["dtype"] = dtype
        return options
    if backend == "openai":
        if not base_url.strip():
            raise ValueError(
                "the openai backend needs base_url, e.g. http://127.0.0.1:8000/v1 (a vLLM server)"
            )
        return {"model": model, "base_url": base_url.strip()}
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}")


class LoadQDeepSightAssessor:
    """Builds a critic once; ComfyUI caches it, so the model stays loaded between runs."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "backend": (
                    BACKEND_NAMES,
                    {
                        "default": BACKEND_NAMES[0],
                        "tooltip": "learned (default): a small trained network as the critic's eyes, with "
                        "the classical cues' votes (weights ship with the pack; runs on CPU or GPU). "
                        "classical: hand-made cues only, no weights, no torch, about twice as fast. vlm: "
                        "the Q-DeepSight vision-language critic (needs a model). openai: the same critic "
                        "served by vLLM/SGLang at base_url.",
                    },
                ),
                "model": (
                    model_paths.vlm_model_choices(),
                    {
                        "tooltip": "A model folder from models/qdeepsight (or models/LLM, models/VLM), for "
                        "vlm and openai. Ignored by learned and classical."
                    },
                ),
                "model_path_or_id": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "A local folder or hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct); overrides model. "
                        "For openai: the model name the server serves. For learned: a retrained "
                        ".safetensors file (empty: the shipped weights).",
                    },
                ),
                "device": (
                    DEVICES,
                    {
                        "default": "auto",
                        "tooltip": "Where the vlm and learned backends run; auto picks the GPU.",
                    },
                ),
                "dtype": (
                    DTYPES,
                    {
                        "default": "auto",
                        "tooltip": "Weight precision of the vlm backend; auto picks bfloat16 on GPUs.",
                    },
                ),
                "base_url": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "openai backend only: the server's OpenAI-compatible URL, e.g. http://127.0.0.1:8000/v1",
                    },
                ),
            }
        }

    RETURN_TYPES = (ASSESSOR,)
    RETURN_NAMES = ("assessor",)
    OUTPUT_TOOLTIPS = ("The critic, for Assess Image Quality and the PiG Refine nodes.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a Q-DeepSight image-quality critic."

    def load(self, backend, model, model_path_or_id, device, dtype, base_url):
        from assessor import load_assessor

        if backend == "classical":
            path = None
        elif backend == "learned":
            path = model_path_or_id.strip() or None
        else:
            path = model_paths.resolve_vlm_model(model, model_path_or_id)
        return (load_assessor(backend, **assessor_options(backend, path, device, dtype, base_url)),)


class AssessImageQuality:
    """Scores every image of a batch and says where quality drops and why."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "assessor": (ASSESSOR, {"tooltip": "From Load Q-DeepSight Assessor."}),
                "image": (
                    "IMAGE",
                    {"tooltip": "The image(s) to assess; every image of a batch is assessed."},
                ),
                "mask_min_severity": (
                    "FLOAT",
                    {
                        "default": 0.15,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Regions at least this severe (0..1) go into the output mask.",
                    },
                ),
            }
        }

    RETURN_TYPES = ("FLOAT", "STRING", "MASK", "IMAGE")
    RETURN_NAMES = ("score", "diagnosis", "mask", "preview")
    OUTPUT_TOOLTIPS = (
        "Quality score 1 (bad) .. 5 (excellent); the mean over a batch.",
        "The diagnosis as JSON: score, regions (bbox, distortion, severity, reason), trace. A list for a batch.",
        "1 inside the diagnosed regions, one mask per image.",
        "The image with the regions drawn on it.",
    )
    FUNCTION = "assess"
    CATEGORY = CATEGORY
    DESCRIPTION = "Q-DeepSight: global score plus localized, typed diagnoses, the way a careful critic looks."

    def assess(self, assessor, image, mask_min_severity):
        from assessor.annotate import annotate

        rgbs = image_batch_to_rgb8(image)
        diagnoses = assessor.assess_batch(rgbs)
        height, width = rgbs[0].shape[:2]
        masks = [regions_mask(d, height, width, min_severity=mask_min_severity) for d in diagnoses]
        previews = [annotate(rgb, d) for rgb, d in zip(rgbs, diagnoses)]
        score = float(sum(d.score for d in diagnoses) / len(diagnoses))
        return (score, dump_diagnoses(diagnoses), masks_to_tensor(masks), rgb8_to_image_batch(previews))


NODE_CLASS_MAPPINGS = {
    "QDeepSightLoadAssessor": LoadQDeepSightAssessor,
    "QDeepSightAssessImage": AssessImageQuality,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "QDeepSightLoadAssessor": "Load Q-DeepSight Assessor",
    "QDeepSightAssessImage": "Assess Image Quality",
}

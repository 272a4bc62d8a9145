"""PiG in ComfyUI: plan from a diagnosis, then refine exactly the diagnosed places until the score
stops rising, with ComfyUI's MODEL/CLIP/VAE, with the weight-free classical fixes, or with a
diffusers SDXL pipeline."""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from . import model_paths
from .hooks import RoundProgress, interrupt_check
from .nodes_assess import ASSESSOR, CATEGORY, DEVICES, DTYPES
from .tensors import (
    image_batch_to_rgb8,
    keep_untouched,
    masks_to_tensor,
    parse_diagnoses,
    user_masks,
)

SDXL_PIPELINE = "PIG_SDXL_REFINER"  # a loaded pig.refiners "sdxl" refiner
MASK_MODES = ["narrow", "replace"]


def _sampler_names() -> tuple[list[str], list[str]]:
    try:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)
    except ImportError:  # outside ComfyUI
        return ["euler"], ["normal"]


def parse_region_prompts(text: str, diagnosis) -> dict[int, str]:
    """Per-region prompts from lines ``INDEX: prompt`` (region index in the diagnosis) or
    ``DISTORTION: prompt`` (every region of that type); blank lines and ``#`` comments are skipped."""
    prompts: dict[int, str] = {}
    for number, line in enumerate((text or "").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([\w-]+)\s*:\s*(.*)", line)
        if not match:
            raise ValueError(
                f"region prompts, line {number}: expected 'INDEX: prompt' or 'DISTORTION: prompt', got {line!r}"
            )
        key, prompt = match.group(1), match.group(2).strip()
        if key.isdigit():
            index = int(key)
            if index >= len(diagnosis.regions):
                raise ValueError(
                    f"region prompts, line {number}: there is no region {index} "
                    f"(the diagnosis has {len(diagnosis.regions)})"
                )
            prompts[index] = prompt
        else:
            matched = [i for i, r in enumerate(diagnosis.regions) if r.distortion == key]
            from assessor.schema import DISTORTIONS

            if key not in DISTORTIONS:
                raise ValueError(
                    f"region prompts, line {number}: {key!r} is neither a region index nor one of {', '.join(DISTORTIONS)}"
                )
            for i in matched:
                prompts.setdefault(i, prompt)
    return prompts


class PiGPlan:
    """Shows (and lets you edit) what PiG would change: where, and which prompt edits it would add."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "diagnosis": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "The diagnosis JSON: connect Assess Image Quality's diagnosis output (or paste one).",
                    },
                ),
                "prompt": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "Your prompt; each region's quality terms are added to it.",
                    },
                ),
                "negative_prompt": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "Your negative prompt; each region's defect terms are added to it.",
                    },
                ),
                "min_severity": (
                    "FLOAT",
                    {
                        "default": 0.15,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Regions less severe than this (0..1) are left alone.",
                    },
                ),
                "for_refiner": (
                    ["diffusion", "classical"],
                    {
                        "default": "diffusion",
                        "tooltip": "Whole-image defects become img2img for a diffusion refiner, a global fix for the classical one.",
                    },
                ),
            },
            "optional": {
                "mask": (
                    "MASK",
                    {
                        "tooltip": "Your own mask: it narrows every region to itself, or replaces them (mask_mode). An empty mask counts as none."
                    },
                ),
                "mask_mode": (
                    MASK_MODES,
                    {
                        "default": "narrow",
                        "tooltip": "narrow: only change diagnosed places inside your mask. replace: change your mask only.",
                    },
                ),
                "region_prompts": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "One per line: 'INDEX: prompt' (region index in the diagnosis) or 'DISTORTION: prompt' (e.g. 'blur: a sharp portrait'); replaces the prompt for those regions.",
                    },
                ),
            },
        }

    RETURN_TYPES = ("MASK", "STRING", "STRING", "STRING")
    RETURN_NAMES = ("mask", "positive", "negative", "plan")
    OUTPUT_TOOLTIPS = (
        "Where PiG would change the image (soft, 1 = change), one mask per image.",
        "The prompt with every planned region's additions (feed it to a refine node's prompt, edited or not).",
        "The negative prompt with every planned region's defect terms.",
        "The plan as JSON: per region its box, distortion, severity, operation, strength and prompts.",
    )
    FUNCTION = "plan"
    CATEGORY = CATEGORY
    DESCRIPTION = "PiG: from a diagnosis to masks and prompt edits."

    def plan(
        self,
        diagnosis,
        prompt,
        negative_prompt,
        min_severity,
        for_refiner,
        mask=None,
        mask_mode="narrow",
        region_prompts="",
    ):
        from pig.plan import make_plan, merge_prompts

        diagnoses = parse_diagnoses(diagnosis)
        sizes = {d.image_size for d in diagnoses}
        if None in sizes or len(sizes) != 1:
            raise ValueError(
                "the diagnoses must carry one image_size; connect Assess Image Quality's diagnosis output"
            )
        width, height = sizes.pop()
        masks = user_masks(mask, len(diagnoses), height, width)
        plans = [
            make_plan(
                d,
                prompt=prompt,
                negative_prompt=negative_prompt,
                region_prompts=parse_region_prompts(region_prompts, d),
                user_mask=masks[i],
                user_mask_mode=mask_mode,
                min_severity=min_severity,
                global_operation="img2img" if for_refiner == "diffusion" else "global_fix",
            )
            for i, d in enumerate(diagnoses)
        ]
        positive = merge_prompts(prompt, *(rp.positive for p in plans for rp in p.regions))
        negative = merge_prompts(negative_prompt, *(rp.negative for p in plans for rp in p.regions))
        dicts = [p.to_dict() for p in plans]
        plan_json = json.dumps(dicts[0] if len(dicts) == 1 else dicts, indent=2)
        return (masks_to_tensor([p.mask() for p in plans]), positive, negative, plan_json)


def format_history(result) -> str:
    """'3.10 -> 3.42 kept -> 3.40 rolled back; stop: plateau' for one refined image."""
    parts = [f"{result.initial_score:.2f}"]
    for record in result.history:
        parts.append(f"{record.score_after:.2f} {'kept' if record.accepted else 'rolled back'}")
    return " -> ".join(parts) + f"; final {result.final_score:.2f} ({result.stop_reason})"


def refine_batch(
    image: torch.Tensor,
    assessor,
    refiner,
    *,
    mask: torch.Tensor | None = None,
    mask_mode: str = "narrow",
    max_iterations: int = 4,
    patience: int = 1,
    min_gain: float | None = None,
    min_severity: float = 0.15,
    seed: int = 0,
    prompt: str = "",
    negative_prompt: str = "",
) -> tuple[torch.Tensor, float, str, str]:
    """Refine every image of a batch with ``pig.controller.refine_image`` (same seed for each, so an
    image refines the same alone or in a batch); untouched pixels keep their exact float values."""
    from pig.controller import refine_image

    if image.ndim == 3:
        image = image.unsqueeze(0)
    rgbs = image_batch_to_rgb8(image)
    height, width = rgbs[0].shape[:2]
    masks = user_masks(mask, len(rgbs), height, width)
    progress = RoundProgress(len(rgbs), max_iterations)
    should_cancel = interrupt_check()
    outputs, results = [], []
    for i, rgb in enumerate(rgbs):
        should_cancel()
        progress.start_image(i)
        result = refine_image(
            rgb,
            assessor,
            refiner,
            max_iters=int(max_iterations),
            patience=int(patience),
            margin=None if min_gain is None else float(min_gain),
            seed=int(seed),
            prompt=prompt,
            negative_prompt=negative_prompt,
            user_mask=masks[i],
            user_mask_mode=mask_mode,
            min_severity=float(min_severity),
            progress=progress,
            should_cancel=should_cancel,
        )
        progress.finish_image()
        outputs.append(keep_untouched(image[i], rgb, result.image))
        results.append(result)
    final = float(sum(r.final_score for r in results) / len(results))
    history = "\n".join(
        format_history(r) if len(results) == 1 else f"image {i}: {format_history(r)}"
        for i, r in enumerate(results)
    )
    reports = [r.to_report() for r in results]
    report = json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, default=_json_default)
    return torch.stack(outputs), final, history, report


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


class _RefineNode:
    """The outputs every refine node shares; each subclass adds INPUT_TYPES, DESCRIPTION and ``refine``."""

    RETURN_TYPES = ("IMAGE", "FLOAT", "STRING", "STRING")
    RETURN_NAMES = ("image", "score", "score_history", "report")
    OUTPUT_TOOLTIPS = (
        "The refined image(s): only diagnosed places change, and only changes that raised the score are kept.",
        "The final score 1..5 (mean over a batch).",
        "Score per round, kept or rolled back, and why it stopped.",
        "The full report as JSON: initial/final score, every round's plan, regions and timing.",
    )
    FUNCTION = "refine"
    CATEGORY = CATEGORY


def target_inputs() -> dict[str, tuple]:
    """The image to refine and the critic, the first inputs of every refine node."""
    return {
        "image": ("IMAGE", {"tooltip": "The image(s) to refine; every image of a batch is refined."}),
        "assessor": (
            ASSESSOR,
            {"tooltip": "The critic that finds the regions and judges every round."},
        ),
    }


def crop_size_inputs() -> dict[str, tuple]:
    """Detailer crop sizes shared by the diffusion refine nodes."""
    return {
        "guide_size": (
            "INT",
            {
                "default": 768,
                "min": 64,
                "max": 4096,
                "step": 8,
                "tooltip": "A region's crop is enlarged until its short side reaches this many pixels (detailer guide size).",
            },
        ),
        "max_size": (
            "INT",
            {
                "default": 1024,
                "min": 64,
                "max": 4096,
                "step": 8,
                "tooltip": "The enlarged crop's long side stays within this many pixels.",
            },
        ),
    }


def loop_inputs(min_gain: float | None = None) -> dict[str, tuple]:
    """The loop's own settings, shared by every refine node (ordered as they appear in the UI);
    ``min_gain``: the node's refiner's own margin (None: a diffusion refiner's, ``Refiner.margin``)."""
    if min_gain is None:
        from pig.refiners import Refiner

        min_gain = Refiner.margin
    return {
        "max_iterations": (
            "INT",
            {"default": 4, "min": 1, "max": 20, "tooltip": "At most this many assess-refine rounds."},
        ),
        "patience": (
            "INT",
            {
                "default": 1,
                "min": 1,
                "max": 10,
                "tooltip": "Stop after this many rounds without a kept improvement.",
            },
        ),
        "min_gain": (
            "FLOAT",
            {
                "default": min_gain,
                "min": 0.0,
                "max": 1.0,
                "step": 0.01,
                "tooltip": "A round is kept only if the score rises by at least this much; otherwise it is rolled back.",
            },
        ),
        "min_severity": (
            "FLOAT",
            {
                "default": 0.15,
                "min": 0.0,
                "max": 1.0,
                "step": 0.01,
                "tooltip": "Diagnosed regions less severe than this (0..1) are left alone.",
            },
        ),
    }


def mask_inputs() -> dict[str, tuple]:
    return {
        "mask": (
            "MASK",
            {
                "tooltip": "Optional: only refine here (narrow) or exactly here (replace). An empty mask counts as none."
            },
        ),
        "mask_mode": (
            MASK_MODES,
            {
                "default": "narrow",
                "tooltip": "narrow: diagnosed places inside your mask. replace: your mask is the only region.",
            },
        ),
    }


def prompt_inputs() -> dict[str, tuple]:
    return {
        "positive": (
            "STRING",
            {
                "default": "",
                "multiline": True,
                "tooltip": "What the image shows; each region's quality terms are added (PiG Plan's positive output fits here).",
            },
        ),
        "negative": (
            "STRING",
            {
                "default": "",
                "multiline": True,
                "tooltip": "What to avoid; each region's defect terms are added.",
            },
        ),
    }


def seed_input() -> dict[str, tuple]:
    return {
        "seed": (
            "INT",
            {
                "default": 0,
                "min": 0,
                "max": 0xFFFFFFFFFFFFFFFF,
                "control_after_generate": True,
                "tooltip": "Noise seed; a run is deterministic given the seed.",
            },
        ),
    }


class PiGRefine(_RefineNode):
    """PiG with ComfyUI's own checkpoint: a detailer pass on each diagnosed region, re-assessed each round."""

    @classmethod
    def INPUT_TYPES(cls):
        samplers, schedulers = _sampler_names()
        return {
            "required": {
                **target_inputs(),
                "model": (
                    "MODEL",
                    {"tooltip": "The diffusion model (an SDXL checkpoint or an SDXL inpainting checkpoint)."},
                ),
                "clip": ("CLIP", {"tooltip": "The text encoder of the checkpoint."}),
                "vae": ("VAE", {"tooltip": "The VAE of the checkpoint."}),
                **prompt_inputs(),
                **seed_input(),
                "steps": (
                    "INT",
                    {"default": 20, "min": 1, "max": 10000, "tooltip": "Sampling steps per region."},
                ),
                "cfg": (
                    "FLOAT",
                    {
                        "default": 7.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.1,
                        "round": 0.01,
                        "tooltip": "Classifier-free guidance scale.",
                    },
                ),
                "sampler_name": (
                    samplers,
                    {
                        "default": "euler" if "euler" in samplers else samplers[0],
                        "tooltip": "ComfyUI sampler.",
                    },
                ),
                "scheduler": (
                    schedulers,
                    {
                        "default": "normal" if "normal" in schedulers else schedulers[0],
                        "tooltip": "ComfyUI scheduler.",
                    },
                ),
                "denoise": (
                    "FLOAT",
                    {
                        "default": 0.5,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "The strongest denoise a region gets; milder defects get less (see strength_from_severity).",
                    },
                ),
                "strength_from_severity": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "On: each region's denoise follows its severity, capped by denoise. Off: every region gets denoise.",
                    },
                ),
                **crop_size_inputs(),
                **loop_inputs(),
            },
            "optional": mask_inputs(),
        }

    DESCRIPTION = "PiG: assess, fix exactly the diagnosed places with your checkpoint, re-assess, keep only improvements."

    def refine(
        self,
        image,
        assessor,
        model,
        clip,
        vae,
        positive,
        negative,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        denoise,
        strength_from_severity,
        guide_size,
        max_size,
        max_iterations,
        patience,
        min_gain,
        min_severity,
        mask=None,
        mask_mode="narrow",
    ):
        from .comfy_refiner import ComfySamplerRefiner, SamplerSettings

        settings = SamplerSettings(
            steps=steps,
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler=scheduler,
            denoise=denoise,
            strength_from_severity=strength_from_severity,
            guide_size=guide_size,
            max_size=max_size,
        )
        refiner = ComfySamplerRefiner(model, clip, vae, settings)
        return refine_batch(
            image,
            assessor,
            refiner,
            mask=mask,
            mask_mode=mask_mode,
            max_iterations=max_iterations,
            patience=patience,
            min_gain=min_gain,
            min_severity=min_severity,
            seed=seed,
            prompt=positive,
            negative_prompt=negative,
        )


class PiGRefineClassical(_RefineNode):
    """PiG with the weight-free OpenCV fixes (denoise, sharpen, deblock, exposure/contrast/colour)."""

    @classmethod
    def INPUT_TYPES(cls):
        from pig.refiners import ClassicalRefiner

        return {
            "required": {
                **target_inputs(),
                **seed_input(),
                **loop_inputs(min_gain=ClassicalRefiner.margin),
            },
            "optional": mask_inputs(),
        }

    DESCRIPTION = "PiG without a diffusion model: classical fixes inside the diagnosed regions, kept only if the score rises."

    def refine(
        self,
        image,
        assessor,
        seed,
        max_iterations,
        patience,
        min_gain,
        min_severity,
        mask=None,
        mask_mode="narrow",
    ):
        from pig.refiners import load_refiner

        return refine_batch(
            image,
            assessor,
            load_refiner("classical"),
            mask=mask,
            mask_mode=mask_mode,
            max_iterations=max_iterations,
            patience=patience,
            min_gain=min_gain,
            min_severity=min_severity,
            seed=seed,
        )


class PiGLoadDiffusersSDXL:
    """Loads PiG's diffusers SDXL refiner (inpaint + img2img sharing one set of weights)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "checkpoint": (
                    model_paths.sdxl_choices(),
                    {
                        "tooltip": "An SDXL .safetensors from models/checkpoints, or a diffusers folder from models/diffusers."
                    },
                ),
                "path_or_id": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "A local .safetensors file, a diffusers folder or a hub id; overrides checkpoint.",
                    },
                ),
                "config": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "Single-file checkpoints only: a diffusers SDXL folder or hub id that describes it (empty: diffusers' default, which needs the hub or its cache).",
                    },
                ),
                "device": (
                    DEVICES,
                    {"default": "auto", "tooltip": "Where the pipeline runs; auto picks the GPU."},
                ),
                "dtype": (
                    DTYPES,
                    {"default": "auto", "tooltip": "Weight precision; auto picks float16 on GPUs."},
                ),
                "cpu_offload": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Keep weights in RAM and move each part to the GPU when needed (slower, much less VRAM).",
                    },
                ),
            }
        }

    RETURN_TYPES = (SDXL_PIPELINE,)
    RETURN_NAMES = ("sdxl_refiner",)
    OUTPUT_TOOLTIPS = ("For PiG Refine (diffusers SDXL).",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads an SDXL checkpoint the diffusers way, for PiG Refine (diffusers SDXL)."

    def load(self, checkpoint, path_or_id, config, device, dtype, cpu_offload):
        from pig.refiners import load_refiner

        source = model_paths.resolve_sdxl(checkpoint, path_or_id)
        if source is None:
            raise ValueError("pick an SDXL checkpoint or type a path or hub id")
        options: dict[str, Any] = {"model": source, "cpu_offload": bool(cpu_offload)}
        if config.strip():
            options["config"] = config.strip()
        if device != "auto":
            options["device"] = device
        if dtype != "auto":
            options["dtype"] = dtype
        return (load_refiner("sdxl", **options),)


class PiGRefineDiffusersSDXL(_RefineNode):
    """PiG with a diffusers SDXL pipeline (for workflows that load models the diffusers way)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **target_inputs(),
                "sdxl_refiner": (SDXL_PIPELINE, {"tooltip": "From Load PiG SDXL (diffusers)."}),
                **prompt_inputs(),
                **seed_input(),
                "steps": (
                    "INT",
                    {
                        "default": 30,
                        "min": 1,
                        "max": 1000,
                        "tooltip": "Denoising steps per region (before strength).",
                    },
                ),
                "cfg": (
                    "FLOAT",
                    {"default": 5.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "Guidance scale."},
                ),
                **crop_size_inputs(),
                **loop_inputs(),
            },
            "optional": mask_inputs(),
        }

    DESCRIPTION = "PiG with a diffusers SDXL pipeline: crop-inpaint the diagnosed places, img2img for whole-image defects."

    def refine(
        self,
        image,
        assessor,
        sdxl_refiner,
        positive,
        negative,
        seed,
        steps,
        cfg,
        guide_size,
        max_size,
        max_iterations,
        patience,
        min_gain,
        min_severity,
        mask=None,
        mask_mode="narrow",
    ):
        configure_sdxl(
            sdxl_refiner, steps=steps, guidance_scale=cfg, guide_size=guide_size, max_size=max_size
        )
        return refine_batch(
            image,
            assessor,
            sdxl_refiner,
            mask=mask,
            mask_mode=mask_mode,
            max_iterations=max_iterations,
            patience=patience,
            min_gain=min_gain,
            min_severity=min_severity,
            seed=seed,
            prompt=positive,
            negative_prompt=negative,
        )


def configure_sdxl(refiner, **settings) -> None:
    """Set per-run settings (steps, guidance_scale, guide_size, max_size) on a loaded sdxl refiner
    without reloading its weights."""
    for name, value in settings.items():
        if not hasattr(refiner, name):
            raise AttributeError(f"the sdxl refiner has no setting {name!r}; update pig")
        setattr(refiner, name, type(getattr(refiner, name))(value))


NODE_CLASS_MAPPINGS = {
    "PiGPlan": PiGPlan,
    "PiGRefine": PiGRefine,
    "PiGRefineClassical": PiGRefineClassical,
    "PiGLoadDiffusersSDXL": PiGLoadDiffusersSDXL,
    "PiGRefineDiffusersSDXL": PiGRefineDiffusersSDXL,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PiGPlan": "PiG Plan",
    "PiGRefine": "PiG Refine",
    "PiGRefineClassical": "PiG Refine (classical)",
    "PiGLoadDiffusersSDXL": "Load PiG SDXL (diffusers)",
    "PiGRefineDiffusersSDXL": "PiG Refine (diffusers SDXL)",
}

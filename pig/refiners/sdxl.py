"""The diffusion refiner: SDXL inpainting on a crop around each region, img2img for whole-image passes.

A region is cropped with padding, enlarged so its short side reaches ``guide_size`` (the model
then spends its resolution on the defect), inpainted, shrunk back and pasted through the soft
mask, so pixels outside the mask stay exactly as they were. The img2img pipeline shares the
inpainting pipeline's components (``from_pipe``): one model in memory.

Loads a diffusers folder or hub id (``from_pretrained``) or one ``.safetensors`` checkpoint
(``from_single_file``), base or dedicated inpainting model (9-channel UNet, detected from the
weights). torch and diffusers are imported here only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from assessor.imageio import as_rgb8

from ..paste import crop_box_for_mask, paste_masked, resize, working_size
from ..plan import RefinePlan, RegionPlan
from .base import Refiner, RefinerError

SCHEDULERS = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc")
DEFAULT_CONFIGS = {  # what diffusers itself uses for a single file without a config
    False: "stabilityai/stable-diffusion-xl-base-1.0",
    True: "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin", ".sft")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def inspect_single_file(path: str | os.PathLike) -> dict:
    """What a single-file checkpoint is, from its key names and one tensor shape (no full load)."""
    path = str(path)
    if not path.lower().endswith(".safetensors") and not path.lower().endswith(".sft"):
        raise RefinerError(
            f"{path}: only .safetensors checkpoints are loaded (pickled .ckpt files can run code); "
            "convert it or use a .safetensors download"
        )
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            conv_in = "model.diffusion_model.input_blocks.0.0.weight"
            in_channels = int(f.get_slice(conv_in).get_shape()[1]) if conv_in in keys else None
    except (OSError, ValueError, RuntimeError) as exc:
        raise RefinerError(f"{path}: not a readable safetensors file ({_one_line(exc)})") from None
    has_unet = any(k.startswith("model.diffusion_model.") for k in keys)
    sdxl = has_unet and any(k.startswith("conditioner.embedders.1.model.") for k in keys)
    if not sdxl:
        if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
            kind = "an SDXL refiner checkpoint (it cannot inpaint from a text prompt alone)"
        elif any(k.startswith("cond_stage_model.") for k in keys):
            kind = "a Stable Diffusion 1.x/2.x checkpoint"
        elif any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
            kind = "a Flux checkpoint"
        elif not has_unet:
            kind = "not a full model checkpoint (no UNet: a LoRA, VAE or text encoder?)"
        else:
            kind = "not SDXL"
        raise RefinerError(f"{path}: {kind}; the sdxl refiner needs an SDXL base or inpainting checkpoint")
    return {"inpaint": in_channels == 9, "in_channels": in_channels}


def _check_folder(path: Path) -> None:
    index = path / "model_index.json"
    if not index.is_file():
        raise RefinerError(f"{path}: a folder without model_index.json is not a diffusers pipeline")
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError) as exc:
        raise RefinerError(f"{index}: unreadable ({_one_line(exc)})") from None
    if "StableDiffusionXL" not in name or "Refiner" in name:
        raise RefinerError(f"{path}: a {name or 'unknown'} model, not SDXL; the sdxl refiner needs SDXL")
    if not (path / "text_encoder_2").is_dir():
        raise RefinerError(f"{path}: no text_encoder_2: an SDXL refiner-only model cannot be used")


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RefinerError(
                f"device {device} was asked for but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu or fix the driver"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise RefinerError(f"device {device}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    elif device == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise RefinerError(
                "device mps was asked for but this torch has no Metal backend; use --device cpu"
            )
    elif device != "cpu":
        raise RefinerError(f"unknown device {device!r}; use cuda, cuda:N, mps or cpu")
    return device


def resolve_dtype(dtype: Any, device: str):
    import torch

    if dtype is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    table.update({"float32": torch.float32, "fp32": torch.float32})
    if str(dtype) not in table:
        raise RefinerError(f"unknown dtype {dtype!r}; use float16, bfloat16 or float32")
    return table[str(dtype)]


def _dtype_keyword() -> str:
    """``dtype`` where diffusers takes it (it deprecates ``torch_dtype``); older ones, which ComfyUI
    installs may carry, know only ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def make_scheduler(name: str, config: Any):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(config)
    if name == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    raise RefinerError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


class SDXLRefiner(Refiner):
    """SDXL inpainting around each diagnosed region (and img2img for whole-image defects)."""

    name = "sdxl"
    global_operation = "img2img"
    strengths = {"inpaint": (0.3, 0.65), "img2img": (0.15, 0.4), "global_fix": (0.15, 0.4)}

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        pipe: Any = None,
        config: str | os.PathLike | None = None,
        device: str | None = None,
        dtype: Any = None,
        cpu_offload: bool = False,
        steps: int = 30,
        guidance_scale: float = 5.0,
        scheduler: str | None = None,
        guide_size: int = 768,
        max_size: int = 1024,
        padding: int = 32,
        crop: bool = True,
        local_files_only: bool | None = None,
        variant: str | None = None,
        progress_bar: bool = False,
    ):
        if model is None and pipe is None:
            raise RefinerError(
                "the sdxl refiner needs a model: a diffusers folder, a hub id or a .safetensors file"
            )
        if steps < 1:
            raise RefinerError(f"steps must be >= 1, got {steps}")
        try:
            import torch  # noqa: F401
            from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline
        except ImportError as exc:
            raise RefinerError(f"the sdxl refiner needs torch and diffusers installed ({exc})") from None
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.guide_size = int(guide_size)
        self.max_size = int(max_size)
        self.padding = int(padding)
        self.crop = bool(crop)  # False: inpaint the whole image with the mask (slower, for comparison)
        self.cpu_offload = bool(cpu_offload)
        self.last_info: list[dict] = []
        if pipe is not None:
            self.inpaint_pipe = pipe
            self.device = str(getattr(pipe, "device", "cpu"))
        else:
            self.device = resolve_device(device)
            self.dtype = resolve_dtype(dtype, self.device)
            if self.cpu_offload and not self.device.startswith("cuda"):
                raise RefinerError("--cpu-offload needs a CUDA GPU (it moves each model to the GPU in turn)")
            self.inpaint_pipe = self._load(
                StableDiffusionXLInpaintPipeline, str(model), config, local_files_only, variant
            )
            if self.cpu_offload:
                self.inpaint_pipe.enable_model_cpu_offload(device=self.device)
            else:
                self.inpaint_pipe.to(self.device)
        if scheduler:
            self.inpaint_pipe.scheduler = make_scheduler(scheduler, self.inpaint_pipe.scheduler.config)
        self.inpaint_pipe.set_progress_bar_config(disable=not progress_bar)
        self.is_inpaint_model = int(self.inpaint_pipe.unet.config.in_channels) == 9
        # a 9-channel inpainting UNet cannot run img2img: whole-image passes use a full mask instead
        self.img2img_pipe = (
            None if self.is_inpaint_model else StableDiffusionXLImg2ImgPipeline.from_pipe(self.inpaint_pipe)
        )
        if self.img2img_pipe is not None:
            self.img2img_pipe.set_progress_bar_config(disable=not progress_bar)

    # ------------------------------------------------------------------ loading
    def _load(self, cls, model: str, config, local_files_only, variant):
        path = Path(os.path.expanduser(model))
        kwargs: dict = {_dtype_keyword(): self.dtype}
        if path.is_file() or path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            if not path.is_file():
                raise RefinerError(f"{model}: no such checkpoint file")
            info = inspect_single_file(path)
            cfg = str(os.path.expanduser(str(config))) if config else DEFAULT_CONFIGS[info["inpaint"]]
            if config and Path(cfg).is_dir():
                _check_folder(Path(cfg))
                try:
                    unet_cfg = json.loads((Path(cfg) / "unet" / "config.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    unet_cfg = {}
                want = info["in_channels"]
                if unet_cfg.get("in_channels") not in (None, want):
                    raise RefinerError(
                        f"{model} has a {want}-channel UNet but the config {cfg} describes a "
                        f"{unet_cfg.get('in_channels')}-channel one; use an "
                        f"{'inpainting' if want == 9 else 'SDXL base'} config"
                    )
            lfo = bool(local_files_only) if local_files_only is not None else Path(cfg).is_dir()
            try:
                return cls.from_single_file(str(path), config=cfg, local_files_only=lfo, **kwargs)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                hint = (
                    f"the diffusers config {cfg} is not available offline; pass --sdxl-config DIR "
                    "(a diffusers SDXL folder, or its hub id once online)"
                    if not Path(cfg).is_dir()
                    else f"{_one_line(exc)}"
                )
                raise RefinerError(f"cannot load {model}: {hint}") from None
        if path.is_dir():
            _check_folder(path)
            source = str(path)
            lfo = True if local_files_only is None else bool(local_files_only)
        elif _HUB_ID.match(model):
            source, lfo = model, bool(local_files_only)
        else:
            raise RefinerError(f"{model}: no such file or folder (and not a hub id like owner/name)")
        if variant:
            kwargs["variant"] = variant
        try:
            return cls.from_pretrained(source, local_files_only=lfo, use_safetensors=True, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            why = "not found locally and the hub is offline (HF_HUB_OFFLINE)" if offline else _one_line(exc)
            raise RefinerError(f"cannot load {model}: {why}") from None

    # ------------------------------------------------------------------ refining
    def _generator(self, seed: int):
        import torch

        device = "cpu" if self.cpu_offload or str(self.device).startswith("mps") else self.device
        return torch.Generator(device=device).manual_seed(int(seed))

    def _steps_for(self, strength: float) -> int:
        """Steps such that ``steps * strength`` runs at least one denoising step."""
        return max(self.steps, int(np.ceil(1.0 / float(np.clip(strength, 0.01, 1.0)))))

    def _run_inpaint(self, image: np.ndarray, mask: np.ndarray, rp: RegionPlan, seed: int) -> np.ndarray:
        from PIL import Image

        h, w = image.shape[:2]
        out = self.inpaint_pipe(
            prompt=rp.positive,
            negative_prompt=rp.negative or None,
            image=Image.fromarray(image),
            mask_image=Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8)),
            strength=float(np.clip(rp.strength, 0.01, 1.0)),
            num_inference_steps=self._steps_for(rp.strength),
            guidance_scale=self.guidance_scale,
            width=w,
            height=h,
            generator=self._generator(seed),
            output_type="np",
        ).images[0]
        return as_rgb8(out)

    def _run_img2img(self, image: np.ndarray, rp: RegionPlan, seed: int) -> np.ndarray:
        from PIL import Image

        out = self.img2img_pipe(
            prompt=rp.positive,
            negative_prompt=rp.negative or None,
            image=Image.fromarray(image),
            strength=float(np.clip(rp.strength, 0.01, 1.0)),
            num_inference_steps=self._steps_for(rp.strength),
            guidance_scale=self.guidance_scale,
            generator=self._generator(seed),
            output_type="np",
        ).images[0]
        return as_rgb8(out)

    def refine_region(self, image: np.ndarray, rp: RegionPlan, seed: int) -> tuple[np.ndarray, dict]:
        h, w = image.shape[:2]
        whole = rp.operation in ("img2img", "global_fix")
        if whole or not self.crop:
            box = (0, 0, w, h)
        else:
            box = crop_box_for_mask(rp.mask, padding=self.padding, multiple=8, min_size=64)
        x0, y0, x1, y1 = box
        crop = image[y0:y1, x0:x1]
        cmask = rp.mask[y0:y1, x0:x1]
        if whole or not self.crop:  # the whole image at the model's size: long side max_size
            s = min(1.0, self.max_size / float(max(w, h)))
            size = (max(8, int(round(w * s / 8)) * 8), max(8, int(round(h * s / 8)) * 8))
        else:
            size = working_size(x1 - x0, y1 - y0, guide_size=self.guide_size, max_size=self.max_size)
        work = resize(crop, size)
        if whole and self.img2img_pipe is not None:
            result = self._run_img2img(work, rp, seed)
        else:
            work_mask = np.ones(size[::-1], np.float32) if whole else resize(cmask.astype(np.float32), size)
            result = self._run_inpaint(work, work_mask, rp, seed)
        patch = resize(result, (x1 - x0, y1 - y0))
        info = {"crop": list(box), "work_size": list(size), "strength": round(float(rp.strength), 3)}
        return paste_masked(image, patch, cmask, box), info

    def refine(self, image: np.ndarray, plan: RefinePlan, *, seed: int = 0) -> np.ndarray:
        out = as_rgb8(image).copy()
        self.last_info = []
        for i, rp in enumerate(plan.regions):
            if float(rp.mask.max()) <= 0.0:
                continue
            out, info = self.refine_region(out, rp, seed * 1000 + i)
            self.last_info.append({"index": rp.index, "distortion": rp.region.distortion, **info})
        return out

    def close(self) -> None:
        self.img2img_pipe = None
        self.inpaint_pipe = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

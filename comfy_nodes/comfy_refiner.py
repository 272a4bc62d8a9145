"""PiG's refiner on ComfyUI's own MODEL/CLIP/VAE: a detailer pass per planned region.

Per region: crop around its soft mask with context, enlarge the crop so its short side reaches
``guide_size`` (small regions get the model's full attention), encode the region's prompts with the
CLIP, VAE-encode the crop, restrict the noise to the mask (``noise_mask``) or, for inpainting
models, condition with ``InpaintModelConditioning``, sample with ``nodes.common_ksampler``, decode,
shrink back and paste through the soft mask in pixel space (latent compositing leaves seams).
Pixels where the mask is 0 never change. ComfyUI modules are imported when a refine runs, so this
file can be imported anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pig.paste import crop_box_for_mask, paste_masked, resize, working_size
from pig.refiners import Refiner


@dataclass
class SamplerSettings:
    steps: int = 20
    cfg: float = 7.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    denoise: float = 0.5  # the strongest denoise a region may get
    strength_from_severity: bool = True  # else every region gets ``denoise``
    guide_size: int = 768
    max_size: int = 1024
    padding: int = 32


def is_inpaint_model(model) -> bool:
    """True for inpainting checkpoints (9-channel UNet input), across ComfyUI versions."""
    base = getattr(model, "model", None)
    config = getattr(base, "model_config", None)
    if config is not None and callable(getattr(config, "inpaint_model", None)):
        try:
            return bool(config.inpaint_model())
        except (KeyError, TypeError):
            pass
    return bool(getattr(base, "inpaint_model", False))


def region_denoise(strength: float, settings: SamplerSettings) -> float:
    """The plan's severity-based strength, capped by the node's denoise (or the denoise itself)."""
    if not settings.strength_from_severity:
        return float(settings.denoise)
    return float(min(max(strength, 0.01), settings.denoise))


class ComfySamplerRefiner(Refiner):
    """A ``pig`` Refiner that samples with ComfyUI's MODEL, CLIP and VAE."""

    name = "comfyui"
    global_operation = "img2img"

    def __init__(self, model, clip, vae, settings: SamplerSettings | None = None):
        self.model, self.clip, self.vae = model, clip, vae
        self.settings = settings or SamplerSettings()
        self._conditioning: dict[str, list] = {}
        self.last_info: dict = {}  # what the last refine did per region; pig.controller puts it in the report

    def encode(self, text: str) -> list:
        """CLIPTextEncode, cached per text (the same prompts come back every round)."""
        if text not in self._conditioning:
            tokens = self.clip.tokenize(text)
            cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
            self._conditioning[text] = [[cond, {"pooled_output": pooled}]]
        return self._conditioning[text]

    def refine(self, image: np.ndarray, plan, *, seed: int = 0) -> np.ndarray:
        out = np.asarray(image, np.uint8).copy()
        self.last_info = {"refiner": self.name, "inpaint_model": is_inpaint_model(self.model), "regions": []}
        for k, rp in enumerate(plan.regions):
            if float(rp.mask.max()) <= 0.0:
                continue
            out = self.refine_region(out, rp, seed=seed + k)
        return out

    def refine_region(self, image: np.ndarray, rp, *, seed: int) -> np.ndarray:
        import nodes  # ComfyUI

        s = self.settings
        box = crop_box_for_mask(rp.mask, padding=s.padding, multiple=8)
        x0, y0, x1, y1 = box
        crop = image[y0:y1, x0:x1]
        crop_mask = np.ascontiguousarray(rp.mask[y0:y1, x0:x1], np.float32)
        size = working_size(x1 - x0, y1 - y0, guide_size=s.guide_size, max_size=s.max_size)
        pixels = torch.from_numpy(resize(crop, size).astype(np.float32) / 255.0).unsqueeze(0)
        mask = torch.from_numpy(np.clip(resize(crop_mask, size), 0.0, 1.0)).unsqueeze(0)

        positive, negative = self.encode(rp.positive), self.encode(rp.negative)
        inpaint_model = is_inpaint_model(self.model)
        if inpaint_model:
            positive, negative, latent = nodes.InpaintModelConditioning().encode(
                positive, negative, pixels, self.vae, mask
            )
        else:
            latent = {"samples": self.vae.encode(pixels[:, :, :, :3])}
            if rp.operation == "inpaint":  # SetLatentNoiseMask
                latent["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
        denoise = region_denoise(rp.strength, s)
        self.last_info.setdefault("regions", []).append(
            {
                "crop": [int(v) for v in box],
                "working_size": list(size),
                "denoise": round(denoise, 4),
                "conditioning": "InpaintModelConditioning"
                if inpaint_model
                else ("noise_mask" if rp.operation == "inpaint" else "img2img"),
                "seed": int(seed),
            }
        )
        (sampled,) = nodes.common_ksampler(
            self.model,
            int(seed),
            int(s.steps),
            float(s.cfg),
            s.sampler_name,
            s.scheduler,
            positive,
            negative,
            latent,
            denoise=denoise,
        )
        decoded = self.vae.decode(sampled["samples"])
        if decoded.ndim == 5:  # video VAEs in newer ComfyUI: [B, T, H, W, C]
            decoded = decoded.reshape(-1, *decoded.shape[-3:])
        patch = (decoded[0, :, :, :3].float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        patch = resize(patch, (x1 - x0, y1 - y0))
        return paste_masked(image, patch, rp.mask, box)

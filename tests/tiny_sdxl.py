"""Tiny random SDXL models built offline, for tests (nothing is downloaded).

    build_tiny_sdxl(dir, inpaint=False)        -> a diffusers folder (model_index.json, unet/, vae/, ...)
    write_tiny_single_file(path, dir)          -> one .safetensors in the original (LDM) key layout
    tiny_sdxl_components(inpaint=False)        -> the components as objects (unet, vae, text encoders, ...)

The configs and builders live in ``pig.refiners.sdxl_random`` (the GPU timing script builds the
real size from them); SDXL's topology at a few channels, so that diffusers' single-file loader
accepts the checkpoint. The converters to the original key layout are test-only and stay here.
"""

from __future__ import annotations

import os
from pathlib import Path

from pig.refiners import sdxl_random
from pig.refiners.sdxl_random import TINY, assemble_pipeline, build_components, write_clip_tokenizer

TE1_WIDTH = sdxl_random.TINY_TE1_WIDTH
TE2_WIDTH = sdxl_random.TINY_TE2_WIDTH
TE2_LAYERS = sdxl_random.TINY_TE2_LAYERS
TIME_DIM = sdxl_random.TINY_TIME_DIM

__all__ = [
    "TE1_WIDTH",
    "TE2_LAYERS",
    "TE2_WIDTH",
    "TIME_DIM",
    "build_tiny_sdxl",
    "tiny_sdxl_components",
    "tiny_sdxl_pipeline",
    "unet_config",
    "vae_config",
    "write_clip_tokenizer",
    "write_tiny_single_file",
]


def unet_config(inpaint: bool = False) -> dict:
    return sdxl_random.unet_config(TINY, inpaint)


def vae_config() -> dict:
    return dict(TINY.vae)


def tiny_sdxl_components(inpaint: bool = False, seed: int = 0, tokenizer_dir: str | None = None) -> dict:
    """The seven components of an SDXL pipeline, tiny and randomly initialised (deterministic)."""
    return build_components(TINY, inpaint=inpaint, seed=seed, tokenizer_dir=tokenizer_dir)


def tiny_sdxl_pipeline(inpaint: bool = False, seed: int = 0):
    """A StableDiffusionXLInpaintPipeline over tiny components (in memory)."""
    return assemble_pipeline(tiny_sdxl_components(inpaint, seed), "inpaint", progress_bar=False)


def build_tiny_sdxl(directory: str | os.PathLike, inpaint: bool = False, seed: int = 0) -> Path:
    """Save a tiny SDXL (base, or inpainting with a 9-channel UNet) as a diffusers folder."""
    directory = Path(directory)
    pipe = assemble_pipeline(tiny_sdxl_components(inpaint, seed), "inpaint" if inpaint else "text2img")
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


# ----------------------------------------------------------------------------- single-file (LDM) layout
_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)


def _resnet_suffix(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_to_ldm(state: dict, config: dict) -> dict:
    """diffusers UNet2DConditionModel keys -> ``model.diffusion_model.*`` (the inverse of diffusers'
    ``convert_ldm_unet_checkpoint``)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = {
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"],
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"],
    }
    layers = config["layers_per_block"]
    has_attn_up = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}
    for key, value in state.items():
        if key in fixed:
            new = fixed[key]
        else:
            parts = key.split(".")
            if parts[0] == "down_blocks":
                b, kind = int(parts[1]), parts[2]
                if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.X
                    new = f"input_blocks.{(b + 1) * (layers + 1)}.0.op." + ".".join(parts[5:])
                else:
                    j = int(parts[3])
                    idx = 1 + b * (layers + 1) + j
                    rest = ".".join(parts[4:])
                    new = (
                        f"input_blocks.{idx}.0." + _resnet_suffix(rest)
                        if kind == "resnets"
                        else f"input_blocks.{idx}.1." + rest
                    )
            elif parts[0] == "mid_block":
                kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
                new = (
                    f"middle_block.{2 * j}." + _resnet_suffix(rest)
                    if kind == "resnets"
                    else "middle_block.1." + rest
                )
            elif parts[0] == "up_blocks":
                b, kind = int(parts[1]), parts[2]
                if kind == "upsamplers":  # up_blocks.b.upsamplers.0.conv.X
                    idx = b * (layers + 1) + layers
                    new = f"output_blocks.{idx}.{2 if has_attn_up[b] else 1}.conv." + ".".join(parts[5:])
                else:
                    j = int(parts[3])
                    idx = b * (layers + 1) + j
                    rest = ".".join(parts[4:])
                    new = (
                        f"output_blocks.{idx}.0." + _resnet_suffix(rest)
                        if kind == "resnets"
                        else f"output_blocks.{idx}.1." + rest
                    )
            else:
                raise KeyError(f"unexpected UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict, config: dict) -> dict:
    """diffusers AutoencoderKL keys -> ``first_stage_model.*``."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    n_up = len(config["up_block_types"])
    attn = {
        "group_norm": "norm",
        "to_q": "q",
        "to_k": "k",
        "to_v": "v",
        "to_out.0": "proj_out",
    }
    out = {}
    for key, value in state.items():
        if key in fixed:
            out["first_stage_model." + fixed[key]] = value
            continue
        coder, rest = key.split(".", 1)
        parts = rest.split(".")
        if parts[0] == "down_blocks":
            i = int(parts[1])
            if parts[2] == "downsamplers":
                new = f"down.{i}.downsample.conv." + ".".join(parts[5:])
            else:
                new = f"down.{i}.block.{parts[3]}." + ".".join(parts[4:]).replace(
                    "conv_shortcut", "nin_shortcut"
                )
        elif parts[0] == "up_blocks":
            i = int(parts[1])
            block = n_up - 1 - i
            if parts[2] == "upsamplers":
                new = f"up.{block}.upsample.conv." + ".".join(parts[5:])
            else:
                new = f"up.{block}.block.{parts[3]}." + ".".join(parts[4:]).replace(
                    "conv_shortcut", "nin_shortcut"
                )
        elif parts[0] == "mid_block":
            if parts[1] == "resnets":
                new = f"mid.block_{int(parts[2]) + 1}." + ".".join(parts[3:]).replace(
                    "conv_shortcut", "nin_shortcut"
                )
            else:
                tail = ".".join(parts[3:])
                for d, ldm in attn.items():
                    if tail.startswith(d + "."):
                        tail = ldm + tail[len(d) :]
                        break
                new = "mid.attn_1." + tail
                if value.ndim == 2:  # linear -> 1x1 conv
                    value = value[:, :, None, None]
        else:
            raise KeyError(f"unexpected VAE key {key}")
        out[f"first_stage_model.{coder}.{new}"] = value
    return out


def clip_to_ldm(state: dict) -> dict:
    """Text encoder 1 (CLIPTextModel) -> ``conditioner.embedders.0.transformer.text_model.*``."""
    out = {}
    for key, value in state.items():
        if key.startswith("text_projection"):
            continue
        k = key if key.startswith("text_model.") else "text_model." + key
        out["conditioner.embedders.0.transformer." + k] = value
    return out


def open_clip_to_ldm(state: dict) -> dict:
    """Text encoder 2 (CLIPTextModelWithProjection) -> OpenCLIP keys under ``conditioner.embedders.1.model``."""
    import torch

    prefix = "conditioner.embedders.1.model."
    state = {
        (k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
        for k, v in state.items()
    }
    out = {
        prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
        prefix + "text_projection": state["text_projection.weight"].T.contiguous(),
    }
    n = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers."))
    for i in range(n):
        src = f"text_model.encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[dst + f"attn.in_proj_{part}"] = torch.cat(
                [state[src + f"self_attn.{p}_proj.{part}"] for p in ("q", "k", "v")], dim=0
            )
            out[dst + f"attn.out_proj.{part}"] = state[src + f"self_attn.out_proj.{part}"]
            out[dst + f"ln_1.{part}"] = state[src + f"layer_norm1.{part}"]
            out[dst + f"ln_2.{part}"] = state[src + f"layer_norm2.{part}"]
            out[dst + f"mlp.c_fc.{part}"] = state[src + f"mlp.fc1.{part}"]
            out[dst + f"mlp.c_proj.{part}"] = state[src + f"mlp.fc2.{part}"]
    return out


def write_tiny_single_file(
    path: str | os.PathLike, source: str | os.PathLike | None = None, inpaint: bool = False, seed: int = 0
) -> Path:
    """Write an SDXL checkpoint in the original single-file layout (what ComfyUI users have).

    ``source`` is a diffusers folder from ``build_tiny_sdxl`` (its weights are written, so a test
    can compare them after loading); without it fresh tiny components are made."""
    from safetensors.torch import save_file

    if source is not None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        source = Path(source)
        comps = {
            "unet": UNet2DConditionModel.from_pretrained(source / "unet", local_files_only=True),
            "vae": AutoencoderKL.from_pretrained(source / "vae", local_files_only=True),
            "text_encoder": CLIPTextModel.from_pretrained(source / "text_encoder", local_files_only=True),
            "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
                source / "text_encoder_2", local_files_only=True
            ),
        }
    else:
        comps = tiny_sdxl_components(inpaint, seed)
    sd: dict = {}
    sd.update(unet_to_ldm(comps["unet"].state_dict(), dict(comps["unet"].config)))
    sd.update(vae_to_ldm(comps["vae"].state_dict(), dict(comps["vae"].config)))
    sd.update(clip_to_ldm(comps["text_encoder"].state_dict()))
    sd.update(open_clip_to_ldm(comps["text_encoder_2"].state_dict()))
    sd = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path

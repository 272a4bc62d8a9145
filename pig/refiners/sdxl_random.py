"""Random-init SDXL components built offline, at a tiny test size or at SDXL's real size.

The tests need a working SDXL pipeline without downloads and the GPU timing script needs SDXL's
real architecture without its weights; both build it here, from the same configs. The topology
is SDXL's own (UNet: 3 levels, 2 layers each, plain first level, text-time conditioning; VAE:
4 levels, latents 1/8 of the image; two CLIP text encoders of different widths, the second with
a projection); only the widths and depths change with the size. The CLIP tokenizer is a
byte-level vocabulary written on the spot, so any prompt tokenizes. Like ``sdxl``, torch,
diffusers and transformers are imported inside the builders only.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- real SDXL sizes
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE: dict[str, Any] = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=False,
)
SDXL_TE1: dict[str, Any] = dict(  # CLIP ViT-L
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
    projection_dim=768,
)
SDXL_TE2: dict[str, Any] = dict(  # OpenCLIP bigG
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)

# ----------------------------------------------------------------------------- tiny sizes (tests)
TINY_TE1_WIDTH = 32  # text encoder 1 (768 in the real model)
TINY_TE2_WIDTH = 48  # text encoder 2 (1280); must differ from TINY_TE1_WIDTH
TINY_TE2_LAYERS = 10  # the single-file loader recognises SDXL by text encoder 2's 10th block
TINY_TIME_DIM = 8  # addition_time_embed_dim (256 in the real model)


def _tiny_text(width: int, layers: int) -> dict[str, Any]:
    return dict(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        hidden_act="gelu",
        projection_dim=width,
    )


TINY_UNET: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=SDXL_UNET["down_block_types"],
    up_block_types=SDXL_UNET["up_block_types"],
    block_out_channels=(32, 32, 64),
    layers_per_block=2,
    attention_head_dim=(2, 4, 4),
    transformer_layers_per_block=(1, 1, 1),
    cross_attention_dim=TINY_TE1_WIDTH + TINY_TE2_WIDTH,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TINY_TIME_DIM,
    projection_class_embeddings_input_dim=6 * TINY_TIME_DIM + TINY_TE2_WIDTH,
    norm_num_groups=16,
)
TINY_VAE: dict[str, Any] = dict(  # SDXL's VAE (4 levels: latents 1/8 of the image) at a few channels
    SDXL_VAE,
    block_out_channels=(16, 16, 32, 32),
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    norm_num_groups=16,
    sample_size=64,
)
TINY_TE1: dict[str, Any] = _tiny_text(TINY_TE1_WIDTH, 2)
TINY_TE2: dict[str, Any] = _tiny_text(TINY_TE2_WIDTH, TINY_TE2_LAYERS)


@dataclass(frozen=True)
class SDXLSizes:
    """Constructor arguments of the four SDXL models at one size (the UNet's are the base model's:
    ``inpaint`` widens its input to 9 channels); text encoders get the vocabulary's ids on top."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]


SDXL = SDXLSizes(SDXL_UNET, SDXL_VAE, SDXL_TE1, SDXL_TE2)
TINY = SDXLSizes(TINY_UNET, TINY_VAE, TINY_TE1, TINY_TE2)


def unet_config(sizes: SDXLSizes = TINY, inpaint: bool = False) -> dict[str, Any]:
    """UNet2DConditionModel arguments; an inpainting UNet also reads the mask and masked latents."""
    config = dict(sizes.unet)
    if inpaint:
        config["in_channels"] = 9
    return config


def text_config(spec: dict[str, Any], vocab_size: int):
    """A CLIPTextConfig over the byte-level vocabulary (its last two ids are BOS and EOS)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **spec,
        max_position_embeddings=77,
        vocab_size=vocab_size,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def write_clip_tokenizer(directory: str | os.PathLike) -> Path:
    """A byte-level CLIP vocabulary: 256 byte symbols, the same with ``</w>``, BOS and EOS; no merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in alphabet:
        vocab[symbol] = len(vocab)
    for symbol in alphabet:
        vocab[symbol + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return directory


def build_components(
    sizes: SDXLSizes = TINY,
    *,
    inpaint: bool = False,
    seed: int = 0,
    seed_each: bool = True,
    device: str = "cpu",
    dtype=None,
    tokenizer_dir: str | os.PathLike | None = None,
) -> dict:
    """The seven components of an SDXL pipeline, randomly initialised and in eval mode.

    ``seed_each`` seeds the UNet, VAE and text encoders with seed, seed+1, ... (one model's size
    then does not shift the next one's weights); without it one seed precedes all four (the GPU
    timing script's weights). The models are created on ``device`` directly: on a GPU that takes
    seconds where a CPU init of the real size takes minutes."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tok_dir = write_clip_tokenizer(tokenizer_dir or tempfile.mkdtemp(prefix="sdxl-clip-tok-"))
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True, model_max_length=77)
    vocab = len(tokenizer)
    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config(sizes, inpaint))
        if seed_each:
            torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**sizes.vae)
        if seed_each:
            torch.manual_seed(seed + 2)
        te1 = CLIPTextModel(text_config(sizes.text_encoder, vocab))
        if seed_each:
            torch.manual_seed(seed + 3)
        te2 = CLIPTextModelWithProjection(text_config(sizes.text_encoder_2, vocab))
    for model in (unet, vae, te1, te2):
        if dtype is not None:
            model.to(dtype=dtype)
        model.eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": te1,
        "text_encoder_2": te2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "scheduler": scheduler,
    }


def assemble_pipeline(components: dict, task: str = "inpaint", *, progress_bar: bool | None = None):
    """Components -> an SDXL pipeline: "inpaint" or "img2img" (what the refiner runs), or
    "text2img" (what a saved base model folder holds). ``progress_bar`` None leaves diffusers'
    default (the refiner sets its own); False keeps test output quiet."""
    from diffusers import (
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )

    if task == "inpaint":
        pipe = StableDiffusionXLInpaintPipeline(**components, requires_aesthetics_score=False)
    elif task == "img2img":
        pipe = StableDiffusionXLImg2ImgPipeline(**components, requires_aesthetics_score=False)
    elif task == "text2img":
        pipe = StableDiffusionXLPipeline(**components)
    else:
        raise ValueError(f"unknown task {task!r}; choose inpaint, img2img or text2img")
    if progress_bar is not None:
        pipe.set_progress_bar_config(disable=not progress_bar)
    return pipe

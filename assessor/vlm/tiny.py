"""Tiny random Qwen2.5-VL models built offline, for tests, CPU benchmarks and training toys.

Nothing here downloads anything. The tokenizer is byte-level (every UTF-8 byte is one token,
no merges) plus Qwen's special tokens and a Qwen2.5-VL-style chat template, so any text,
including tool calls and JSON answers, tokenizes exactly and decodes back unchanged. The same
builders, with the real sizes, give the random-init 7B architecture the GPU benchmark times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2.5-VL's template, reduced to what the assessor uses (text and image parts, optional
# system message). An image part renders as <|vision_start|><|image_pad|><|vision_end|>; the
# processor then expands <|image_pad|> to one token per merged 28x28 patch.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Sizes of the real Qwen2.5-VL-7B-Instruct (config.json on the hub), for random-init benchmarks.
QWEN25_VL_7B_TEXT: dict[str, Any] = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "vocab_size": 152064,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN25_VL_7B_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}

TINY_TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    # head_dim 16 -> mrope_section must sum to 8
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
}
TINY_VISION: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 56,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}

# Image resolution bounds of the tiny processor: small images, a handful of vision tokens.
TINY_MIN_PIXELS = 28 * 28
TINY_MAX_PIXELS = 112 * 112


def build_tokenizer():
    """A byte-level Qwen2 tokenizer: 256 byte tokens, no merges, Qwen's special tokens, ChatML."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer=None, *, min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS):
    """A Qwen2.5-VL processor over ``tokenizer`` with the given image resolution bounds."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer, *, text: dict[str, Any] | None = None, vision: dict[str, Any] | None = None):
    """A Qwen2.5-VL config whose special-token ids are the tokenizer's (tiny sizes by default)."""
    from transformers import Qwen2_5_VLConfig

    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    text_config = dict(TINY_TEXT if text is None else text)
    text_config["vocab_size"] = max(int(text_config.get("vocab_size", len(tokenizer))), len(tokenizer))
    text_config.update(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
    )
    vision_config = dict(TINY_VISION if vision is None else vision)
    vision_config["out_hidden_size"] = text_config["hidden_size"]
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_model(tokenizer=None, *, seed: int = 0, dtype=None):
    """A random-init tiny Qwen2.5-VL (~0.2 M parameters) in eval mode; same seed, same weights."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    config = build_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def save_tiny_qwen(
    folder: str | Path,
    *,
    seed: int = 0,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
) -> Path:
    """Write a tiny random Qwen2.5-VL (safetensors weights, processor, chat template) to ``folder``.

    The folder loads with ``AutoModelForImageTextToText.from_pretrained(folder)`` and
    ``AutoProcessor.from_pretrained(folder)`` like any hub checkpoint, without network.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels)
    model = build_tiny_model(tokenizer, seed=seed)
    model.generation_config.eos_token_id = [
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    ]
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder

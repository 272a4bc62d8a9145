"""A tiny random Qwen2.5-VL for tests, built offline (no hub, no weights to download).

Reusable by any test that needs a real vision-language model:

    from tiny_qwen import save_tiny_qwen, tiny_qwen_parts, scripted

    folder = save_tiny_qwen(tmp_path / "tiny")          # loads like a hub checkpoint
    tokenizer, processor, model = tiny_qwen_parts()     # in memory, same weights for a seed
    processor_list = [scripted(tokenizer, ["<answer>3</answer>"])]  # force what it writes

The builders live in ``assessor.vlm.tiny`` (the GPU benchmark uses them too); the forcing
processor in ``assessor.vlm.scripted``.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from assessor.vlm.scripted import ScriptedLogitsProcessor, critic_script  # noqa: E402
from assessor.vlm.tiny import (  # noqa: E402
    TINY_MAX_PIXELS,
    TINY_MIN_PIXELS,
    build_config,
    build_processor,
    build_tiny_model,
    build_tokenizer,
)
from assessor.vlm.tiny import save_tiny_qwen as _save  # noqa: E402

__all__ = [
    "TINY_MAX_PIXELS",
    "TINY_MIN_PIXELS",
    "build_config",
    "build_processor",
    "build_tiny_model",
    "build_tokenizer",
    "critic_script",
    "save_tiny_qwen",
    "scripted",
    "tiny_qwen_parts",
]


def save_tiny_qwen(folder: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny model (safetensors), processor and chat template to ``folder``."""
    return _save(folder, seed=seed)


def tiny_qwen_parts(*, seed: int = 0):
    """(tokenizer, processor, model) in memory, model in eval mode on the CPU."""
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_tiny_model(tokenizer, seed=seed)
    return tokenizer, processor, model


def scripted(tokenizer, scripts) -> ScriptedLogitsProcessor:
    """A logits processor that makes the model write ``scripts`` (per row, per assistant turn)."""
    return ScriptedLogitsProcessor(tokenizer, scripts)

"""The ``vlm`` backend: the iMCoT loop on a transformers vision-language model (Qwen2.5-VL family).

Each batch keeps one KV cache across turns: a new turn (a zoomed crop, a correction) is encoded
and appended to the cache, never the whole conversation again. Rows of a batch grow at different
speeds, so the batch is a grid of columns with an attention mask that has holes (padding before
each row's new segment, and after a row's end of turn); the multimodal rotary positions are
computed over the real tokens only, so every row sees exactly the positions it would see alone.
Decoding is the real ``model.generate`` with stop strings; ``fast=True`` uses a static cache,
which ``generate`` compiles on CUDA.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from .loop import (
    DEFAULT_MAX_PIXELS,
    RATING_DIGITS,
    Generation,
    LoopAssessor,
    LoopConfig,
    Message,
    Trajectory,
    loop_config,
    smart_resize,
)
from .prompts import STOP_STRINGS

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------------------------
# loading


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available; use --device cpu")
    return str(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose bfloat16, float16 or float32") from None


def set_pixel_bounds(processor, min_pixels: int | None, max_pixels: int | None) -> None:
    """Bound the resolution at which images are shown to the model (pixels after resizing)."""
    ip = processor.image_processor
    size = dict(getattr(ip, "size", None) or {})
    size = {k: v for k, v in size.items() if v is not None}
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if size.get("shortest_edge", 0) > size.get("longest_edge", math.inf):
        raise ValueError(
            f"min_pixels {size['shortest_edge']} is larger than max_pixels {size['longest_edge']}"
        )
    ip.size = size
    for attr, key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        if hasattr(ip, attr) and key in size:
            setattr(ip, attr, size[key])


def _looks_local(name: str) -> bool:
    return os.path.exists(name) or not _HUB_ID.match(name) or name.startswith((".", "~", "/"))


def load_model_and_processor(
    model: str,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    local_files_only: bool | None = None,
):
    """Load a vision-language model and its processor from a local folder or a hub id.

    Safetensors only; remote code only when asked for. Errors are one line that says what to do.
    """
    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = os.path.expanduser(str(model))
    if _looks_local(name) and not os.path.isdir(name):
        raise RuntimeError(
            f"model folder {model!r} does not exist; pass --model a folder with config.json and "
            "*.safetensors, or a hub id such as Qwen/Qwen2.5-VL-7B-Instruct"
        )
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "config.json")):
        raise RuntimeError(f"{model!r} is not a model folder (no config.json in it)")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        common["revision"] = revision
    if local_files_only is not None:
        common["local_files_only"] = local_files_only
    kwargs: dict[str, Any] = dict(common, use_safetensors=True, device_map=device_map or device)
    major = int(transformers.__version__.split(".")[0])
    kwargs["dtype" if major >= 5 else "torch_dtype"] = torch_dtype
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        net = AutoModelForImageTextToText.from_pretrained(name, **kwargs)
        processor = AutoProcessor.from_pretrained(name, **common)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (
            "convert the checkpoint to safetensors"
            if "safetensors" in str(exc).lower()
            else "download it first (huggingface-cli download <id>) or pass a local folder"
        )
        raise RuntimeError(f"cannot load model {model!r}: {first} ({hint})") from exc
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise RuntimeError(
            f"{model!r}: AutoProcessor returned {type(processor).__name__} without an image processor; "
            "install torchvision (the Qwen2.5-VL processor needs it)"
        )
    return net.eval(), processor


# --------------------------------------------------------------------------------------------
# logits processors


class RatingProbe(LogitsProcessor):
    """Records P("1") .. P("5") at every generated step; changes nothing."""

    def __init__(self, token_ids: Sequence[int]):
        self.token_ids = list(token_ids)
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = torch.as_tensor(self.token_ids, device=scores.device)
        self.steps.append(torch.softmax(scores.float(), dim=-1)[:, ids])
        return scores

    def table(self) -> torch.Tensor:
        """(batch, steps, 5) on the CPU."""
        return torch.stack(self.steps, dim=1).cpu() if self.steps else torch.zeros(0)


class FinishRows(LogitsProcessor):
    """Makes rows that have nothing to say end at once (they ride along in the batch)."""

    def __init__(self, rows: Sequence[int], token_id: int):
        self.rows = list(rows)
        self.token_id = int(token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.rows:
            rows = torch.as_tensor(self.rows, device=scores.device)
            scores[rows] = torch.finfo(scores.dtype).min
            scores[rows, self.token_id] = 0.0
        return scores


def rating_token_ids(tokenizer) -> list[int]:
    """The token ids of the digits 1..5 (each must be one token, as in Qwen's vocabulary)."""
    ids = []
    for digit in RATING_DIGITS:
        encoded = tokenizer.encode(str(digit), add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"the digit {digit} is not a single token in this tokenizer; use score_mode='greedy'"
            )
        ids.append(int(encoded[0]))
    return ids


# --------------------------------------------------------------------------------------------
# attention for batched decoding

GQA_ATTENTION = "qds_sdpa_gqa"


def sdpa_gqa_decode(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' sdpa attention, except for one-token decoding with grouped-query attention:
    the query heads that share a key/value head are run as that head's queries. transformers'
    sdpa path instead copies every key/value head per query head whenever there is a mask (and
    the loop always has one), which at batch 32 and a few thousand tokens costs more memory
    traffic per step than the weights themselves."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bsz, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or heads == kv_heads or module.training:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    grouped = query.reshape(bsz, kv_heads, heads // kv_heads, dim)
    mask = attention_mask[:, :, :, : key.shape[-2]] if attention_mask is not None else None
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(bsz, heads, 1, dim).transpose(1, 2).contiguous(), None


def use_gqa_decode(model) -> bool:
    """Switch a model's text decoder from sdpa to :func:`sdpa_gqa_decode` (same results)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    text = model.config.get_text_config()
    heads = getattr(text, "num_attention_heads", None)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    if getattr(text, "_attn_implementation", None) != "sdpa" or not heads or kv_heads == heads:
        return False
    AttentionInterface.register(GQA_ATTENTION, sdpa_gqa_decode)
    AttentionMaskInterface.register(GQA_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    text._attn_implementation = GQA_ATTENTION
    return True


# --------------------------------------------------------------------------------------------
# the transport


def _message_dict(message: Message) -> dict[str, Any]:
    if all(isinstance(p, str) for p in message.content):
        return {"role": message.role, "content": message.text()}
    parts = [
        {"type": "text", "text": p} if isinstance(p, str) else {"type": "image"} for p in message.content
    ]
    return {"role": message.role, "content": parts}


def rope_positions(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw):
    """3D rotary positions of every column and each row's delta (next position minus token count),
    computed by the model's own ``get_rope_index`` over the real (mask 1) tokens only."""
    inner = getattr(model, "model", model)
    fn = inner.get_rope_index
    kwargs: dict[str, Any] = {"image_grid_thw": image_grid_thw, "attention_mask": attention_mask}
    if "mm_token_type_ids" in inspect.signature(fn).parameters:
        config = model.config
        types = (input_ids == config.image_token_id).int()
        types = types + 2 * (input_ids == config.video_token_id).int()
        kwargs["mm_token_type_ids"] = types
    return fn(input_ids, **kwargs)


class HFTransport:
    """Produces model turns with transformers: batched, with the KV cache kept across turns."""

    name = "vlm"

    def __init__(
        self,
        model,
        processor,
        *,
        fast: bool = False,
        cache_implementation: str | None = None,
        compile: bool | None = None,
        logits_processors: Sequence[LogitsProcessor] = (),
        gqa_decode: bool = True,
    ):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.cache_implementation = cache_implementation or ("static" if fast else "dynamic")
        if self.cache_implementation not in ("dynamic", "static"):
            raise ValueError(
                f"cache_implementation must be dynamic or static, got {self.cache_implementation!r}"
            )
        self.compile = bool(compile if compile is not None else (fast and self.device.type == "cuda"))
        self.logits_processors = list(logits_processors)
        self.gqa_decode = gqa_decode and use_gqa_decode(model)
        forward = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in forward else "past_key_values"
        tok = self.tokenizer
        gen_eos = model.generation_config.eos_token_id
        gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
        self.end_of_turn_id = tok.convert_tokens_to_ids("<|im_end|>")
        if self.end_of_turn_id is None or self.end_of_turn_id == tok.unk_token_id:
            self.end_of_turn_id = tok.eos_token_id
        self.eos_ids = sorted(
            {int(i) for i in [*gen_eos, tok.eos_token_id, self.end_of_turn_id] if i is not None}
        )
        pad = model.generation_config.pad_token_id
        self.pad_id = int(
            pad if pad is not None else tok.pad_token_id if tok.pad_token_id is not None else self.eos_ids[0]
        )
        self.image_token_id = int(model.config.image_token_id)
        ip = processor.image_processor
        self.patch_size = int(getattr(ip, "patch_size", 14))
        self.merge_size = int(getattr(ip, "merge_size", 2))
        self._rating_ids: list[int] | None = None
        self._static_cache: tuple[int, int, Any] | None = None  # (batch, length, cache), reused
        self.stats: dict[str, float] = {}
        self.reset_stats()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def reset_stats(self) -> None:
        self.stats = dict(
            prefill_s=0.0,
            decode_s=0.0,
            generate_calls=0,
            decode_steps=0,
            generated_tokens=0,
            rows=0,
            batches=0,
            columns=0,
        )

    def rating_ids(self) -> list[int]:
        if self._rating_ids is None:
            self._rating_ids = rating_token_ids(self.tokenizer)
        return self._rating_ids

    def frame_size(self, image: np.ndarray) -> tuple[int, int]:
        size = self.processor.image_processor.size
        get = size.get if isinstance(size, dict) else lambda k, d=None: getattr(size, k, d)
        min_pixels = get("shortest_edge", None) or 56 * 56
        max_pixels = get("longest_edge", None) or 28 * 28 * 1280
        factor = self.patch_size * self.merge_size
        h, w = smart_resize(image.shape[0], image.shape[1], factor, int(min_pixels), int(max_pixels))
        return (w, h)

    def segment_token_budget(self, config: LoopConfig) -> int:
        """An upper bound on the tokens of one tool-response turn (crop image + text)."""
        factor = self.patch_size * self.merge_size
        side = math.ceil(config.crop_size / factor) + 1
        return side * side + 256

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return self.processor.apply_chat_template(
            [_message_dict(m) for m in messages], add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def encode(self, text: str, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
        pil = [Image.fromarray(img) for img in images] or None
        return self.processor(text=[text], images=pil, return_tensors="pt")

    def open(self, trajectories: list[Trajectory]) -> HFBatch:
        return HFBatch(self, trajectories)


class HFBatch:
    """One batch in flight: the column grid of token ids, its attention mask and the KV cache."""

    def __init__(self, transport: HFTransport, trajectories: list[Trajectory]):
        self.t = transport
        self.trajs = trajectories
        n = len(trajectories)
        self.input_ids: torch.Tensor | None = None  # (batch, columns), every column ever written
        self.mask: torch.Tensor | None = None  # (batch, columns), 1 where a real token sits
        self.cache = None
        self.cached = 0  # columns whose keys/values are in the cache
        self.grids: list[list[torch.Tensor]] = [[] for _ in range(n)]  # image grids per row, in order
        self.encoded = [0] * n  # messages of each row already in the grid
        self.rendered = [""] * n  # chat-template text of what each row holds
        self.max_len = 0
        self.turn = 0
        for traj in trajectories:
            traj.image_token_id = transport.image_token_id
        transport.stats["batches"] += 1
        transport.stats["rows"] += n

    def close(self) -> None:
        if self.input_ids is not None:
            self.t.stats["columns"] += int(self.input_ids.shape[1])
        self.cache = None
        self.input_ids = self.mask = None

    # -- encoding new turns -------------------------------------------------------------------

    def _segment(self, row: int) -> tuple[str, list[np.ndarray], str]:
        """The chat-template text of the row's messages not yet encoded, their images, their kind."""
        traj = self.trajs[row]
        new = traj.messages[self.encoded[row] :]
        while new and new[0].kind == "model":  # the model's own turns are in the grid already
            new = new[1:]
        if not new:
            return "", [], "feedback"
        full = self.t.render(traj.messages)
        if full.startswith(self.rendered[row]):
            text = full[len(self.rendered[row]) :]
        else:  # a template that rewrites earlier turns: fall back to plain ChatML for the new turn
            text = "<|im_end|>\n" if not self.rendered[row].endswith("<|im_end|>") else ""
            text += "".join(
                f"<|im_start|>{m['role']}\n" + _chatml_content(m) + "<|im_end|>\n"
                for m in map(_message_dict, new)
            )
            text += "<|im_start|>assistant\n"
            full = self.rendered[row] + text
        self.rendered[row] = full
        self.encoded[row] = len(traj.messages)
        images = [img for m in new for img in m.images]
        kind = "prompt" if new[0].kind == "prompt" else new[-1].kind
        return text, images, kind

    def _append_segments(self, rows: list[int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Encode the pending turn of each active row, append them as new columns (left-padded),
        and return the pixel values and grids of the new images, in row order."""
        n = len(self.trajs)
        seg_ids: list[list[int]] = [[] for _ in range(n)]
        pixel_values, grids = [], []
        for row in rows:
            text, images, kind = self._segment(row)
            if not text:
                continue
            enc = self.t.encode(text, images)
            ids = enc["input_ids"][0].tolist()
            seg_ids[row] = ids
            traj = self.trajs[row]
            traj.add_tokens(kind, ids)
            if images:
                pixel_values.append(enc["pixel_values"])
                grid = enc["image_grid_thw"]
                grids.append(grid)
                self.grids[row].extend(grid)
                if kind == "prompt":  # what the model saw of the input image
                    g = grid[0].tolist()
                    traj.frame_size = (int(g[2]) * self.t.patch_size, int(g[1]) * self.t.patch_size)
        width = max(len(ids) for ids in seg_ids)
        device = self.t.device
        cols = torch.full((n, width), self.t.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for row, ids in enumerate(seg_ids):
            if ids:
                cols[row, width - len(ids) :] = torch.as_tensor(ids)
                mask[row, width - len(ids) :] = 1
        cols, mask = cols.to(device), mask.to(device)
        if self.input_ids is None:
            self.input_ids, self.mask = cols, mask
        else:
            self.input_ids = torch.cat([self.input_ids, cols], dim=1)
            self.mask = torch.cat([self.mask, mask], dim=1)
        if not pixel_values:
            return None, None
        return torch.cat(pixel_values, dim=0), torch.cat(grids, dim=0)

    def _new_cache(self, config: LoopConfig):
        if self.t.cache_implementation == "dynamic":
            from transformers import DynamicCache

            try:
                return DynamicCache(config=self.t.model.config)
            except TypeError:  # older transformers
                return DynamicCache()
        from transformers import StaticCache

        budget = config.max_turns * (config.max_new_tokens + self.t.segment_token_budget(config))
        needed = -(-int(self.input_ids.shape[1] + budget) // 512) * 512  # buckets: fewer recompiles
        batch = len(self.trajs)
        kept = self.t._static_cache
        if kept is not None and kept[0] == batch and kept[1] >= needed:
            kept[2].reset()  # same shapes: the compiled decode step is reused as it is
            self.max_len = kept[1]
            return kept[2]
        cache = StaticCache(config=self.t.model.config, max_cache_len=needed)
        self.t._static_cache = (batch, needed, cache)
        self.max_len = needed
        return cache

    def _prefill(self, pixel_values, grid_thw) -> torch.Tensor:
        """Run the new columns (all but the last) through the model into the cache; return the
        rotary deltas generate needs to continue each row at the right position."""
        model = self.t.model
        all_grids = [g for row in self.grids for g in row]
        grid_all = torch.stack(all_grids).to(self.input_ids.device) if all_grids else None
        positions, deltas = rope_positions(model, self.input_ids, self.mask, grid_all)
        end = self.input_ids.shape[1] - 1
        if end > self.cached:
            kwargs: dict[str, Any] = {
                "input_ids": self.input_ids[:, self.cached : end],
                "attention_mask": self.mask[:, :end],
                "position_ids": positions[:, :, self.cached : end],
                "use_cache": True,
                self.t.cache_kw: self.cache,
            }
            if pixel_values is not None:
                kwargs["pixel_values"] = pixel_values.to(self.t.device)
                kwargs["image_grid_thw"] = grid_thw.to(self.t.device)
            model(**kwargs, logits_to_keep=1)
            self.cached = end
        return deltas

    # -- one turn -------------------------------------------------------------------------------

    def generate(self, rows: list[int]) -> list[Generation]:
        t = self.t
        config = self.trajs[rows[0]].config
        t0 = time.perf_counter()
        with torch.inference_mode():
            pixel_values, grid_thw = self._append_segments(rows)
            if self.cache is None:
                self.cache = self._new_cache(config)
            deltas = self._prefill(pixel_values, grid_thw)
            if t.device.type == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            columns = self.input_ids.shape[1]
            max_new = config.max_new_tokens
            if self.max_len:
                max_new = min(max_new, self.max_len - columns)
                if max_new < 8:
                    return [
                        Generation("", finish_reason="error", error="the static cache is full") for _ in rows
                    ]
            inactive = [r for r in range(len(self.trajs)) if r not in set(rows)]
            probe = RatingProbe(t.rating_ids()) if config.wants_rating_probs else None
            processors = LogitsProcessorList(
                ([probe] if probe is not None else [])
                + t.logits_processors
                + [FinishRows(inactive, t.end_of_turn_id)]
            )
            getattr(t.model, "model", t.model).rope_deltas = deltas
            if config.sampling:  # reproducible: the same seed gives the same looks, turn after turn
                torch.manual_seed(config.seed + 1000 * self.turn)
            self.turn += 1
            with _quiet_padding_warning():
                out = t.model.generate(
                    input_ids=self.input_ids,
                    attention_mask=self.mask,
                    generation_config=self._generation_config(config, max_new),
                    logits_processor=processors,
                    tokenizer=t.tokenizer,
                    **{t.cache_kw: self.cache},
                )
            if t.device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            results = self._collect(out, rows, probe)
        steps = out.shape[1] - columns
        t.stats["prefill_s"] += t1 - t0
        t.stats["decode_s"] += t2 - t1
        t.stats["generate_calls"] += 1
        t.stats["decode_steps"] += steps
        t.stats["generated_tokens"] += sum(len(g.token_ids or []) for g in results)
        for row in rows:
            timings = self.trajs[row].timings
            timings["prefill_s"] = round(timings.get("prefill_s", 0.0) + t1 - t0, 4)
            timings["decode_s"] = round(timings.get("decode_s", 0.0) + t2 - t1, 4)
        return results

    def _generation_config(self, config: LoopConfig, max_new: int):
        from transformers import GenerationConfig

        t = self.t
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new,
            do_sample=config.sampling,
            num_beams=1,
            repetition_penalty=1.0,
            eos_token_id=t.eos_ids,
            pad_token_id=t.pad_id,
            stop_strings=list(STOP_STRINGS),
            use_cache=True,
            disable_compile=not t.compile,
        )
        if config.sampling:
            kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=0)
        return GenerationConfig(**kwargs)

    def _collect(self, out: torch.Tensor, rows: list[int], probe: RatingProbe | None) -> list[Generation]:
        """Cut each row's new tokens at its end (stop string or end-of-turn), record them, and
        mask everything after so later turns never attend to it."""
        t = self.t
        columns = self.input_ids.shape[1]
        new = out[:, columns:].cpu()
        steps = new.shape[1]
        table = probe.table() if probe is not None else None
        new_mask = torch.zeros((len(self.trajs), steps), dtype=torch.long)
        results = []
        eos = set(t.eos_ids)
        for row in rows:
            ids = new[row].tolist()
            pieces = t.tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
            keep, finish = len(ids), "length"
            text = ""
            for i, (tok, piece) in enumerate(zip(ids, pieces)):
                if tok in eos:
                    keep, finish = i + 1, "stop"
                    break
                text += piece
                if any(stop in text[-(len(piece) + 16) :] for stop in STOP_STRINGS):
                    keep, finish = i + 1, "stop"
                    break
            kept = ids[:keep]
            new_mask[row, :keep] = 1
            body = kept[:-1] if kept and kept[-1] in eos else kept
            text = t.tokenizer.decode(body, skip_special_tokens=False)
            traj = self.trajs[row]
            traj.add_tokens("model", kept)
            self.rendered[row] += t.tokenizer.decode(kept, skip_special_tokens=False)
            gen = Generation(text=text, token_ids=kept, finish_reason=finish)
            if table is not None:
                gen.rating_probs = table[row, :keep].tolist()
                offsets, pos = [], 0
                for piece in pieces[: len(body)]:
                    offsets.append(pos)
                    pos += len(piece)
                gen.token_offsets = offsets
            results.append(gen)
        self.input_ids = out
        self.mask = torch.cat([self.mask, new_mask.to(self.mask.device)], dim=1)
        self.cached = out.shape[1] - 1  # generate feeds every token but the last
        return results


class _DropPaddingWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "right-padding was detected" not in record.getMessage()


@contextlib.contextmanager
def _quiet_padding_warning():
    """generate warns about a padded last column; here that column is a finished row's padding,
    masked on purpose, so the warning would only confuse users."""
    logger = logging.getLogger("transformers.generation.utils")
    drop = _DropPaddingWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _chatml_content(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(
        p["text"] if p["type"] == "text" else "<|vision_start|><|image_pad|><|vision_end|>" for p in content
    )


# --------------------------------------------------------------------------------------------
# full re-encoding, for checks and for training


def build_model_inputs(
    transport: HFTransport, trajectory: Trajectory, upto: int | None = None, extra_text: str = ""
):
    """Model inputs for a trajectory's tokens (``token_ids[:upto]`` + ``extra_text``) in one
    sequence, without a cache: what a trainer needs to recompute log-probabilities, with the same
    positions the loop used. Returns a dict with input_ids, attention_mask, position_ids,
    pixel_values and image_grid_thw (batch of one)."""
    ids = list(trajectory.token_ids[: len(trajectory.token_ids) if upto is None else upto])
    if extra_text:
        ids += transport.tokenizer.encode(extra_text, add_special_tokens=False)
    input_ids = torch.as_tensor([ids], dtype=torch.long, device=transport.device)
    mask = torch.ones_like(input_ids)
    # images whose placeholder runs lie inside the kept tokens
    arr = np.asarray(ids) == transport.image_token_id
    runs = int(np.sum(arr[1:] & ~arr[:-1]) + (1 if arr.size and arr[0] else 0))
    images = trajectory.shown_images()[:runs]
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
    grid = None
    if images:
        enc = transport.processor.image_processor(
            images=[Image.fromarray(i) for i in images], return_tensors="pt"
        )
        inputs["pixel_values"] = enc["pixel_values"].to(transport.device)
        grid = enc["image_grid_thw"].to(transport.device)
        inputs["image_grid_thw"] = grid
        expected = int(grid.prod(-1).sum()) // transport.merge_size**2
        if expected != int(arr.sum()):
            raise ValueError(f"upto={upto} cuts through an image's placeholder tokens")
    positions, _ = rope_positions(transport.model, input_ids, mask, grid)
    inputs["position_ids"] = positions
    return inputs


def rating_distribution(
    transport: HFTransport,
    trajectory: Trajectory,
    upto: int | None = None,
    prefix: str = '<answer>\n{"score": ',
) -> np.ndarray:
    """P(rating digit 1..5), renormalised, if the model answered right after ``token_ids[:upto]``
    with ``prefix``: the expected score before and after a crop is what evidence filtering needs."""
    inputs = build_model_inputs(transport, trajectory, upto, prefix)
    with torch.inference_mode():
        logits = transport.model(**inputs, use_cache=False, logits_to_keep=1).logits[0, -1].float()
    probs = torch.softmax(logits, dim=-1)[transport.rating_ids()].cpu().numpy().astype(np.float64)
    return probs / probs.sum()


def policy_logits(transport: HFTransport, trajectory: Trajectory) -> torch.Tensor:
    """Logits at every position of the trajectory, recomputed in one forward pass (1, L, vocab)."""
    inputs = build_model_inputs(transport, trajectory)
    with torch.inference_mode():
        return transport.model(**inputs, use_cache=False).logits


# --------------------------------------------------------------------------------------------
# the backend


class VLMAssessor(LoopAssessor):
    """The Q-DeepSight critic on a local transformers model (Qwen2.5-VL family).

    ``model`` is a local folder or a hub id, or an already loaded model (then pass ``processor``).
    Loop options (``max_turns``, ``score_mode``, ``samples``, ``prompt_style``, ...) are those of
    :class:`LoopConfig`.
    """

    name = "vlm"

    def __init__(
        self,
        model: Any = None,
        *,
        processor: Any = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        device_map: str | dict | None = None,
        attn_implementation: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        local_files_only: bool | None = None,
        fast: bool = False,
        cache_implementation: str | None = None,
        compile: bool | None = None,
        batch_size: int = 8,
        logits_processors: Sequence[LogitsProcessor] = (),
        gqa_decode: bool = True,
        config: LoopConfig | None = None,
        **loop_options: Any,
    ):
        config = loop_config(config, loop_options, "vlm")
        if model is None:
            raise ValueError(
                "the vlm backend needs a model: --model PATH_OR_ID (e.g. Qwen/Qwen2.5-VL-7B-Instruct or a local folder)"
            )
        if isinstance(model, (str, os.PathLike)):
            net, processor = load_model_and_processor(
                str(model),
                device=device,
                dtype=dtype,
                device_map=device_map,
                attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code,
                revision=revision,
                local_files_only=local_files_only,
            )
        else:
            if processor is None:
                raise ValueError("pass the processor together with a loaded model")
            net = model
        current = processor.image_processor.size
        current_max = (
            current.get("longest_edge")
            if isinstance(current, dict)
            else getattr(current, "longest_edge", None)
        )
        if max_pixels is None and (current_max is None or current_max > DEFAULT_MAX_PIXELS):
            max_pixels = DEFAULT_MAX_PIXELS
        set_pixel_bounds(processor, min_pixels, max_pixels)
        transport = HFTransport(
            net,
            processor,
            fast=fast,
            cache_implementation=cache_implementation,
            compile=compile,
            logits_processors=logits_processors,
            gqa_decode=gqa_decode,
        )
        if config.wants_rating_probs:
            transport.rating_ids()  # fail now, not mid-batch, when the digits are not single tokens
        super().__init__(transport, config, batch_size)

    @property
    def model(self):
        return self.transport.model

    @property
    def processor(self):
        return self.transport.processor

    def close(self) -> None:
        self.transport.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

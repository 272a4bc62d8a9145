"""Speed of the vlm backend on one GPU: the real Qwen2.5-VL-7B architecture with random weights,
driven through a forced 2-crop trajectory by the real loop (processor, prefill, generate with stop
strings, tool execution, KV cache kept across turns).

    python -m assessor.vlm.bench_gpu                 # one H100/H200, about 3 minutes
    python -m assessor.vlm.bench_gpu --tiny          # the same code path on the CPU, seconds

Prints, per decode mode (eager: dynamic cache; fast: static cache + torch.compile) and batch size:
seconds per image, images per second, decode tokens/s per stream and aggregate, prefill time,
and the peak GPU memory. The weights are random, so only speed means anything here; the
tokenizer is byte-level (one token per character), so prompts have more tokens than with Qwen's.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def synthetic_photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour field with some texture: stands in for a generated image."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.random((max(2, height // 64), max(2, width // 64), 3)).astype(np.float32)
    base = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    texture = rng.normal(0.0, 0.03, (height, width, 3)).astype(np.float32)
    return (np.clip(base + texture, 0, 1) * 255).astype(np.uint8)


def build(tiny: bool, device: str, attn: str | None):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .loop import DEFAULT_MAX_PIXELS
    from .tiny import (
        QWEN25_VL_7B_TEXT,
        QWEN25_VL_7B_VISION,
        build_config,
        build_processor,
        build_tokenizer,
    )

    tokenizer = build_tokenizer()
    if tiny:
        processor = build_processor(tokenizer)
        config = build_config(tokenizer)
        dtype = torch.float32
    else:
        processor = build_processor(tokenizer, min_pixels=56 * 56, max_pixels=DEFAULT_MAX_PIXELS)
        config = build_config(tokenizer, text=QWEN25_VL_7B_TEXT, vision=QWEN25_VL_7B_VISION)
        dtype = torch.bfloat16
    if attn:
        config._attn_implementation = attn
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):  # random init directly on the GPU: no 7B detour through the CPU
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    for module in model.modules():  # random weights: keep activations tame in bf16
        if isinstance(module, torch.nn.Linear):
            module.weight.data.mul_(0.5)
    if device == "cuda":
        torch.cuda.synchronize()
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {params / 1e9:.2f} B parameters, {dtype}, built in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return model, processor, tokenizer


def run_case(
    model,
    processor,
    tokenizer,
    *,
    fast: bool,
    batch: int,
    image_size: int,
    crops: int,
    tiny: bool,
    warm_up: bool,
):
    import torch

    from .hf import VLMAssessor
    from .scripted import ScriptedLogitsProcessor, critic_script

    assessor = VLMAssessor(
        model, processor=processor, fast=fast, batch_size=batch, max_new_tokens=256, max_turns=crops + 1
    )
    height = image_size * 3 // 4 if tiny else image_size
    images = [synthetic_photo(image_size, height, seed=i) for i in range(batch)]
    scripts = [critic_script(assessor.frame_size(img), crops=crops, thought_words=0) for img in images]
    assessor.transport.logits_processors = [ScriptedLogitsProcessor(tokenizer, scripts)]

    def once():
        assessor.transport.reset_stats()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        results = assessor.assess_results(images)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        failed = [r.error for r in results if r.error]
        if failed:
            raise RuntimeError(f"the forced trajectory failed: {failed[0]}")
        return time.perf_counter() - t0, dict(assessor.transport.stats), results

    warm = once()[0] if warm_up else 0.0  # allocation, cuBLAS plans, and for fast the compile
    wall, stats, results = once()
    tokens_per_image = stats["generated_tokens"] / batch
    turns = results[0].trajectories[0].turns
    return {
        "mode": "fast" if fast else "eager",
        "batch": batch,
        "warmup_s": warm,
        "s_per_image": wall / batch,
        "images_per_s": batch / wall,
        "tokens_per_image": tokens_per_image,
        "turns": turns,
        "decode_tok_s_stream": stats["decode_steps"] / stats["decode_s"],
        "decode_tok_s_total": stats["generated_tokens"] / stats["decode_s"],
        "prefill_s": stats["prefill_s"],
        "decode_s": stats["decode_s"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m assessor.vlm.bench_gpu",
        description="Time the vlm backend's forced 2-crop trajectory on the random-init Qwen2.5-VL-7B "
        "architecture (one GPU), or on a tiny model on the CPU with --tiny.",
    )
    p.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (tests the script)")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="batch sizes (default: 1 16, tiny: 1 2)")
    p.add_argument(
        "--fast-batch-sizes", type=int, nargs="+", help="batch sizes for the fast mode (default: 1 32)"
    )
    p.add_argument("--modes", nargs="+", choices=("eager", "fast"), default=("eager", "fast"))
    p.add_argument("--image-size", type=int, help="width of the square test image (default 1024, tiny 128)")
    p.add_argument("--crops", type=int, default=2, help="zooms in the forced trajectory (default 2)")
    p.add_argument("--attn", help="attention implementation (default: the model's, sdpa)")
    p.add_argument("--budget-s", type=float, default=170.0, help="skip the remaining cases after this long")
    args = p.parse_args(argv)

    import torch
    import transformers

    if not args.tiny and not torch.cuda.is_available():
        print("error: no CUDA GPU; run with --tiny to check the script on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.tiny else "cuda"
    t_start = time.perf_counter()
    model, processor, tokenizer = build(args.tiny, device, args.attn)
    image_size = args.image_size or (128 if args.tiny else 1024)
    eager_sizes = args.batch_sizes or ([1, 2] if args.tiny else [1, 16])
    fast_sizes = args.fast_batch_sizes or ([1] if args.tiny else [1, 32])
    cases = [(False, b) for b in eager_sizes if "eager" in args.modes]
    cases += [(True, b) for b in fast_sizes if "fast" in args.modes]
    print(
        f"trajectory: {args.crops} crops + answer, image {image_size}x{image_size if not args.tiny else image_size * 3 // 4}, "
        f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        flush=True,
    )
    header = f"{'mode':<6}{'batch':>6}{'s/image':>10}{'img/s':>8}{'tok/img':>9}{'tok/s/stream':>14}{'tok/s total':>13}{'prefill s':>11}{'warm-up s':>11}"
    print(header, flush=True)
    rows = []
    for n, (fast, batch) in enumerate(cases):
        if time.perf_counter() - t_start > args.budget_s:
            print(
                f"{'fast' if fast else 'eager':<6}{batch:>6}  skipped (over --budget-s {args.budget_s:g})",
                flush=True,
            )
            continue
        if device == "cuda":
            torch.cuda.empty_cache()
        r = run_case(
            model,
            processor,
            tokenizer,
            fast=fast,
            batch=batch,
            image_size=image_size,
            crops=args.crops,
            tiny=args.tiny,
            # eager needs one warm-up overall, fast one per batch size (compile); --tiny none
            warm_up=(fast or n == 0) and not args.tiny,
        )
        rows.append(r)
        print(
            f"{r['mode']:<6}{r['batch']:>6}{r['s_per_image']:>10.3f}{r['images_per_s']:>8.2f}{r['tokens_per_image']:>9.0f}"
            f"{r['decode_tok_s_stream']:>14.1f}{r['decode_tok_s_total']:>13.1f}{r['prefill_s']:>11.2f}{r['warmup_s']:>11.1f}",
            flush=True,
        )
    if device == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
    print(f"total: {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())

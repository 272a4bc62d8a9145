"""A few GRPO steps on one GPU with the real Qwen2.5-VL-7B architecture (random weights, LoRA,
gradient checkpointing): seconds per step, split into rollout / EGF probes / update, and peak
GPU memory. The full trainer runs: images on disk, rollouts through the iMCoT loop with real
crop_zoom calls (a scripted logits processor makes the random model write a 2-crop trajectory
with a different score per sample), EGF probes, PCR, KL to the adapters-off reference, the
clipped token-level loss, AdamW on the adapters.

    python -m assessor.train.bench_gpu            # one H100/H200, about 2-3 minutes
    python -m assessor.train.bench_gpu --tiny     # the same path on the CPU with a tiny model

The tokenizer is byte-level (one token per character), so the prompt has ~4x the tokens Qwen's
tokenizer would give it: the sequences here are longer, and slower, than real ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_images(folder: Path, n: int, width: int, height: int) -> None:
    from PIL import Image

    from ..vlm.bench_gpu import synthetic_photo

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image,mos"]
    for i in range(n):
        Image.fromarray(synthetic_photo(width, height, seed=i)).save(folder / f"img{i:03d}.png")
        lines.append(f"img{i:03d}.png,{1.0 + 4.0 * i / max(1, n - 1):.3f}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m assessor.train.bench_gpu",
        description="Time GRPO steps (rollouts with 2 crops, EGF probes, LoRA update) on the random-init "
        "Qwen2.5-VL-7B architecture on one GPU, or on a tiny model on the CPU with --tiny.",
    )
    p.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (tests the script)")
    p.add_argument(
        "--steps", type=int, default=None, help="GRPO steps; the first is warm-up (default 3, tiny 2)"
    )
    p.add_argument("--group-size", type=int, default=None, help="rollouts per image, G (default 8, tiny 2)")
    p.add_argument("--images", type=int, default=2, help="images per step (default 2)")
    p.add_argument("--image-size", type=int, default=None, help="image width (default 896; tiny 112)")
    p.add_argument("--crops", type=int, default=2, help="zooms per forced trajectory (default 2)")
    p.add_argument("--lora-r", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=4, help="trajectories per forward/backward (default 4)")
    p.add_argument("--kl", type=float, default=0.04, help="KL coefficient (0: no reference pass)")
    p.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    p.add_argument("--attn", default=None, help="attention implementation (default: sdpa)")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = p.parse_args(argv)

    import torch
    import transformers

    from ..vlm.bench_gpu import build
    from ..vlm.scripted import ScriptedLogitsProcessor, critic_script
    from .config import load_config
    from .data import load_dataset
    from .trainer import GRPOTrainer

    if not args.tiny and not torch.cuda.is_available():
        print("error: no CUDA GPU; run with --tiny to check the script on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.tiny else "cuda"
    args.steps = args.steps or (2 if args.tiny else 3)
    args.group_size = args.group_size or (2 if args.tiny else 8)
    if args.tiny:
        torch.set_num_threads(1)  # a shared CPU: more threads are often slower
    t_start = time.perf_counter()
    model, processor, tokenizer = build(args.tiny, device, args.attn)
    width = args.image_size or (112 if args.tiny else 896)
    height = width * 3 // 4
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_images(tmp / "data", max(4, args.images * 2), width, height)
        config = load_config(
            base={
                "output_dir": str(tmp / "run"),
                "seed": 0,
                "model": {"path": "random-init", "gradient_checkpointing": not args.no_checkpointing},
                "data": {"train": [{"layout": "folder", "root": str(tmp / "data")}]},
                "lora": {"r": args.lora_r, "alpha": 2.0 * args.lora_r},
                "rollout": {
                    "group_size": args.group_size,
                    "images_per_device": args.images,
                    "generation_batch": args.images * args.group_size,
                    "prompt_style": "qdeepsight",
                    "max_turns": args.crops + 1,
                    "max_crops": args.crops,
                    "max_new_tokens": 256,
                },
                "grpo": {
                    "steps": args.steps,
                    "learning_rate": 1e-5,
                    "kl_beta": args.kl,
                    "micro_batch": args.micro_batch,
                },
                "save_every": 0,
            }
        )
        frame = (
            processor.image_processor.size.get("longest_edge")
            if isinstance(processor.image_processor.size, dict)
            else None
        )
        from ..vlm.loop import smart_resize

        h, w = smart_resize(height, width, 28, 56 * 56, int(frame or 1280 * 28 * 28))
        scripts = []
        for image in range(args.images):
            for s in range(args.group_size):
                score = 1.0 + (4.0 * ((s * 7 + image * 3) % args.group_size)) / max(1, args.group_size - 1)
                scripts.append(critic_script((w, h), crops=args.crops, score=score, thought_words=12))
        trainer = GRPOTrainer(
            config,
            model=model,
            processor=processor,
            datasets=[load_dataset(config.data.train[0])],
            logits_processors=[ScriptedLogitsProcessor(tokenizer, scripts)],
            quiet=True,
        )
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        print(
            f"GRPO: {args.images} images x G={args.group_size}, {args.crops} crops per trajectory, LoRA r={args.lora_r} "
            f"({sum(p.numel() for p in trainer.unwrapped.parameters() if p.requires_grad) / 1e6:.1f} M trained), "
            f"checkpointing {'off' if args.no_checkpointing else 'on'}, KL {args.kl:g}; "
            f"{torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}",
            flush=True,
        )
        print(
            f"{'step':>4}{'s/step':>9}{'rollout s':>11}{'probe s':>9}{'update s':>10}{'tokens/traj':>13}{'zooms':>7}",
            flush=True,
        )
        rows = []
        for _ in range(args.steps):
            rec = trainer.train_step()
            rows.append(rec)
            print(
                f"{rec['step']:>4}{rec['step_s']:>9.2f}{rec['rollout_s']:>11.2f}{rec['probe_s']:>9.2f}{rec['update_s']:>10.2f}"
                f"{rec['seq_tokens']:>13.0f}{rec['zooms_per_traj']:>7.2f}",
                flush=True,
            )
    steady = rows[1:] or rows
    summary = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "s_per_step": float(np.mean([r["step_s"] for r in steady])),
        "rollout_s": float(np.mean([r["rollout_s"] for r in steady])),
        "probe_s": float(np.mean([r["probe_s"] for r in steady])),
        "update_s": float(np.mean([r["update_s"] for r in steady])),
        "trajectories_per_step": args.images * args.group_size,
        "seq_tokens": float(np.mean([r["seq_tokens"] for r in steady])),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "total_s": time.perf_counter() - t_start,
    }
    print(
        f"seconds per step (after the first): {summary['s_per_step']:.2f} "
        f"(rollout {summary['rollout_s']:.2f}, probes {summary['probe_s']:.2f}, update {summary['update_s']:.2f}) "
        f"for {summary['trajectories_per_step']} trajectories of ~{summary['seq_tokens']:.0f} tokens",
        flush=True,
    )
    if device == "cuda":
        print(f"peak GPU memory: {summary['peak_gib']:.1f} GiB", flush=True)
    else:
        print("peak GPU memory: - (CPU run)", flush=True)
    print(f"total: {summary['total_s']:.0f} s", flush=True)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

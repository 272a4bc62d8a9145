"""A toy GRPO task that a tiny random VLM learns on a CPU in a couple of minutes: rate brightness.

Images are textured fields whose mean brightness is one of five levels; the "MOS" of an image is
its level (1 = darkest .. 5 = brightest). The policy is a tiny random Qwen2.5-VL (the offline
test model); its answer is constrained to ``<answer>D</answer>`` with D in 1..5, so the only
choice it makes, and the only token that carries gradient, is the digit. Everything else is the
real recipe: images written to disk and read by the folder loader, rollouts through the iMCoT
loop, PCR rewards, group advantages, the clipped token-level loss, checkpoints.

    python -m assessor.train.toy --plot assessor/samples/figures/grpo_toy_curve.png

prints one line per step and writes the learning curve (mean reward and the rate of exact
ratings per step).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..vlm.scripted import ScriptedLogitsProcessor
from .config import DatasetSpec, TrainConfig, load_config

LEVELS = 5
SIZE = 112
TEXTURE = 0.15  # amplitude of the colour texture within a quadrant
ANSWER_PREFIX = "<answer>"
ANSWER_SUFFIX = "</answer>"
DEFAULT_FIGURE = Path(__file__).resolve().parents[1] / "samples" / "figures" / "grpo_toy_curve.png"


def brightness_image(level: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A textured image whose brightness grows with ``level`` (1..5): ``level - 1`` of its four
    quadrants are bright, the others dark, in random places and tints.

    Quadrants, not grey levels: a tiny random vision tower normalises its features, so it sees
    whether a patch is brighter than average far better than by how much (measured: the mean
    features of two dark grey levels have cosine 0.98); the amount of bright area it can count."""
    import cv2

    half = size // 2
    bright = rng.permutation(4)[: level - 1]
    img = np.empty((size, size, 3), np.float32)
    for q in range(4):
        y, x = divmod(q, 2)
        mean = rng.uniform(0.7, 0.9) if q in bright else rng.uniform(0.1, 0.3)
        tint = 1.0 + rng.normal(0, 0.08, 3)
        coarse = rng.random((3, 3, 3)).astype(np.float32) - 0.5
        texture = cv2.resize(coarse, (half, half), interpolation=cv2.INTER_CUBIC)
        img[y * half : (y + 1) * half, x * half : (x + 1) * half] = mean * tint + TEXTURE * texture
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_dataset(folder: str | Path, n: int = 200, seed: int = 0) -> Path:
    """``n`` images (balanced over the levels) and labels.csv in ``folder``."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        level = 1 + i % LEVELS
        name = f"toy_{i:04d}.png"
        Image.fromarray(brightness_image(level, rng)).save(folder / name)
        rows.append((name, level))
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mos"])
        w.writerows(rows)
    return folder


class RatingConstraint(ScriptedLogitsProcessor):
    """Every assistant turn is ``<answer>D</answer>``: the text is forced, D is the policy's own
    choice among the digits 1..5 (sampled from its renormalised probabilities)."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, [ANSWER_PREFIX])
        self.prefix = tokenizer.encode(ANSWER_PREFIX, add_special_tokens=False)
        self.suffix = tokenizer.encode(ANSWER_SUFFIX, add_special_tokens=False)
        self.digits = [tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(1, LEVELS + 1)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, torch.finfo(scores.dtype).min)
        digits = torch.as_tensor(self.digits, device=scores.device)
        for row in range(input_ids.shape[0]):
            _, step = self._locate(row, input_ids[row])
            if step < len(self.prefix):
                out[row, self.prefix[step]] = 0.0
            elif step == len(self.prefix):
                out[row, digits] = scores[row, digits]
            elif step - len(self.prefix) - 1 < len(self.suffix):
                out[row, self.suffix[step - len(self.prefix) - 1]] = 0.0
            else:
                out[row, self.end_id] = 0.0
        return out


def digit_only(tokenizer):
    """A token filter: only the rating digit of the answer carries gradient (the rest is forced)."""
    digits = {tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(1, LEVELS + 1)}
    prefix_len = len(tokenizer.encode(ANSWER_PREFIX, add_special_tokens=False))

    def mask(traj) -> np.ndarray:
        out = np.zeros(len(traj.token_ids), dtype=bool)
        for span in traj.spans:
            if span.kind == "model" and span.end - span.start > prefix_len:
                k = span.start + prefix_len
                out[k] = traj.token_ids[k] in digits
        return out

    return mask


def toy_config(
    output_dir: str | Path, *, seed: int = 0, steps: int = 60, data_dir: str | Path | None = None
) -> TrainConfig:
    data_dir = Path(data_dir) if data_dir is not None else Path(output_dir) / "data"
    return load_config(
        base={
            "output_dir": str(output_dir),
            "seed": seed,
            "model": {"path": "tiny", "finetune": "full", "freeze_vision": False},
            "data": {"train": [{"layout": "folder", "root": str(data_dir), "name": "toy-brightness"}]},
            "rollout": {
                "group_size": 8,
                "images_per_device": 8,
                "generation_batch": 64,
                "prompt_style": "plain",
                "max_turns": 1,
                "max_crops": 0,
                "max_new_tokens": 24,
                "temperature": 1.0,
                "top_p": 1.0,
            },
            "grpo": {
                "steps": steps,
                "learning_rate": 3e-3,
                "adam_betas": [0.9, 0.99],
                "clip_low": 0.2,
                "clip_high": 0.28,
                "micro_batch": 64,
                "max_grad_norm": 1.0,
            },
            "pcr": {
                "w_score": 1.0,
                "w_format": 0.0,
                "w_tool": 0.0,
                "tau_start": 1.5,
                "tau_end": 1.5,
                "tau_schedule": "constant",
                "window_start": 1.0,  # every step sees all five levels (one image per eighth of them)
                "window_end": 1.0,
            },
            "egf": {"enabled": False},
            "save_every": 0,
        }
    )


def build_toy_trainer(config: TrainConfig, *, model_seed: int = 0, quiet: bool = False):
    """The trainer with the tiny model, the constraint and the digit-only filter."""
    from ..vlm.tiny import build_processor, build_tiny_model, build_tokenizer
    from .data import load_dataset
    from .trainer import GRPOTrainer

    data_spec: DatasetSpec = config.data.train[0]
    if not (Path(data_spec.root) / "labels.csv").is_file():
        write_dataset(data_spec.root, seed=config.seed)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_tiny_model(tokenizer, seed=model_seed)
    return GRPOTrainer(
        config,
        model=model,
        processor=processor,
        datasets=[load_dataset(data_spec)],
        logits_processors=[RatingConstraint(tokenizer)],
        token_filter=digit_only(tokenizer),
        quiet=quiet,
    )


def plot_curve(records: list[dict], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = np.array([r["step"] for r in records])
    reward = np.array([r["reward"] for r in records])
    error = np.array([r["mae"] for r in records]) / 4.0

    def smooth(v: np.ndarray, k: int = 5) -> np.ndarray:
        return np.array([v[max(0, i - k + 1) : i + 1].mean() for i in range(len(v))])

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    ax.plot(steps, reward, color="tab:blue", lw=0.8, alpha=0.35)
    ax.plot(
        steps, smooth(reward), color="tab:blue", lw=2, label="mean reward (5-step average; thin: per step)"
    )
    ax.plot(steps, error, color="tab:orange", lw=0.8, alpha=0.35)
    ax.plot(steps, smooth(error), color="tab:orange", lw=2, label="mean |rating - level| / 4")
    ax.axhline(0.2 + 0.32 / 3, color="grey", lw=0.8, ls=":", label="reward of uniform guessing")
    ax.set_xlabel("GRPO step (8 images x 8 rollouts each)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7.5)
    ax.set_title(title or "Toy GRPO: a tiny random Qwen2.5-VL learns to rate brightness (CPU)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m assessor.train.toy",
        description="Run the toy GRPO task (a tiny random VLM learns to rate image brightness) on the CPU "
        "and optionally plot its learning curve.",
    )
    parser.add_argument("--out", default="runs/toy", help="output folder (images, log, checkpoints)")
    parser.add_argument(
        "--steps", type=int, default=60, help="GRPO steps (default 60: about a minute on one core)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a machine shared with other jobs, more threads can be many times slower)",
    )
    parser.add_argument(
        "--plot",
        nargs="?",
        const=str(DEFAULT_FIGURE),
        default=None,
        help=f"write the learning curve PNG (default path: {DEFAULT_FIGURE})",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(max(1, args.threads))
    config = toy_config(args.out, seed=args.seed, steps=args.steps)
    trainer = build_toy_trainer(config)
    records = trainer.train()
    first = np.mean([r["reward"] for r in records[:5]])
    last = np.mean([r["reward"] for r in records[-5:]])
    print(f"mean reward: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    if args.plot:
        print(f"wrote {plot_curve(records, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A CPU learning test: with GRPO, a tiny random Qwen2.5-VL learns to give images a rating that
tracks their brightness (how much of the image is bright), its mean reward rising clearly within
40 steps. Fixed seeds; one torch thread (on a shared 2-core machine more threads are slower)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assessor.train.toy import build_toy_trainer, plot_curve, toy_config


@pytest.mark.slow
def test_tiny_vlm_learns_to_rate_brightness(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = build_toy_trainer(toy_config(tmp_path / "toy", seed=0, steps=40), quiet=True)
        records = trainer.train()
        png = plot_curve(records, tmp_path / "curve.png")
    finally:
        torch.set_num_threads(threads)
    reward = np.array([r["reward"] for r in records])
    mae = np.array([r["mae"] for r in records])
    assert len(records) == 40 and all(r["answered"] == 1.0 for r in records)
    # uniform guessing earns 0.31 (tau 1.5: exact 1, off by one 1/3); the first steps are there
    assert 0.2 < reward[:10].mean() < 0.45
    assert reward[-10:].mean() > reward[:10].mean() + 0.15
    assert reward[-10:].mean() > 0.5
    assert mae[-10:].mean() < mae[:10].mean() - 0.4  # the ratings track the brightness levels
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

"""The GPU training benchmark's --tiny path: the same code (trainer, rollouts with crops, probes,
LoRA update with KL) on the CPU, printing seconds per step and the memory line."""

from __future__ import annotations

import json

import torch

from assessor.train import bench_gpu


def test_bench_gpu_tiny_path(capsys):
    threads = torch.get_num_threads()
    try:
        assert bench_gpu.main(["--tiny", "--steps", "2", "--crops", "1", "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["device"] == "cpu" and summary["trajectories_per_step"] == 4
    assert summary["s_per_step"] > 0 and summary["update_s"] > 0 and summary["probe_s"] > 0
    assert summary["seq_tokens"] > 2000  # the qdeepsight prompt, the image, one crop, the answer
    table = [line.split() for line in lines if line.split() and line.split()[0] in ("1", "2")]
    assert len(table) == 2 and all(float(row[-1]) == 1.0 for row in table)  # one real zoom each
    assert "seconds per step (after the first)" in out and "peak GPU memory: - (CPU run)" in out
    assert "LoRA r=64" in out and "KL 0.04" in out

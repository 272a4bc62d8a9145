"""From trajectories to tensors: re-encoding a batch of finished trajectories for the loss, and
probing the policy's rating distribution at chosen points (for EGF).

The rollouts themselves are the inference loop (:meth:`VLMAssessor.assess_results`): the same prompt,
tool execution and crops as at inference, sampled G times per image. Here each finished
trajectory is encoded once, in one sequence, with the multimodal rotary positions the loop used
(:func:`assessor.vlm.hf.build_model_inputs`), and several trajectories are padded into one
forward pass. Only the positions that predict the policy's own tokens are sent through the LM
head (the vocabulary projection is the largest activation in the step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..vlm.hf import HFTransport, build_model_inputs
from ..vlm.loop import Trajectory
from .grpo import token_logps


def collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad batch-of-one model inputs into one batch (padding is masked and never predicted)."""
    if len(items) == 1:
        return dict(items[0])
    length = max(int(x["input_ids"].shape[1]) for x in items)
    device = items[0]["input_ids"].device
    n = len(items)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((n, length), dtype=torch.long, device=device)
    rows = items[0]["position_ids"].shape[0]
    positions = torch.zeros((rows, n, length), dtype=items[0]["position_ids"].dtype, device=device)
    for i, x in enumerate(items):
        k = int(x["input_ids"].shape[1])
        input_ids[i, :k] = x["input_ids"][0]
        mask[i, :k] = x["attention_mask"][0]
        positions[:, i, :k] = x["position_ids"][:, 0]
        if k < length:  # padding continues the row's positions (any value works; it is masked)
            positions[:, i, k:] = positions[:, i, k - 1 : k] + torch.arange(1, length - k + 1, device=device)
    out: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
    pixels = [x["pixel_values"] for x in items if "pixel_values" in x]
    if pixels:
        out["pixel_values"] = torch.cat(pixels, dim=0)
        out["image_grid_thw"] = torch.cat(
            [x["image_grid_thw"] for x in items if "image_grid_thw" in x], dim=0
        )
    return out


def _cast_pixels(inputs: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs = dict(inputs, pixel_values=inputs["pixel_values"].to(dtype))
    return inputs


def forward_at(
    model, inputs: dict[str, Any], positions: Sequence[Sequence[int]], dtype=None
) -> list[torch.Tensor]:
    """Logits at ``positions[b]`` of each row b (list of (k_b, V) tensors) from one forward pass.

    ``model`` may be wrapped (DDP/FSDP): it is called as is, so gradients flow and sync."""
    union = sorted({int(p) for row in positions for p in row})
    if not union:
        return [torch.zeros(0) for _ in positions]
    where = {p: i for i, p in enumerate(union)}
    keep = torch.as_tensor(union, dtype=torch.long, device=inputs["input_ids"].device)
    if dtype is not None:
        inputs = _cast_pixels(inputs, dtype)
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (B, K, V)
    out = []
    for b, row in enumerate(positions):
        idx = torch.as_tensor([where[int(p)] for p in row], dtype=torch.long, device=logits.device)
        out.append(logits[b].index_select(0, idx))
    return out


def encode(
    transport: HFTransport, traj: Trajectory, upto: int | None = None, extra_text: str = ""
) -> dict[str, Any]:
    return build_model_inputs(transport, traj, upto, extra_text)


def trajectory_logps(
    model,
    transport: HFTransport,
    encoded: Sequence[dict[str, Any]],
    targets: Sequence[np.ndarray],
    temperature: float = 1.0,
    dtype=None,
) -> list[torch.Tensor]:
    """log p(token) at each target token index (the token at i is predicted at i - 1), per row."""
    inputs = collate(encoded, transport.pad_id)
    positions = [[int(i) - 1 for i in t] for t in targets]
    logits = forward_at(model, inputs, positions, dtype)
    out = []
    for row, t, lg in zip(range(len(encoded)), targets, logits):
        ids = inputs["input_ids"][row, torch.as_tensor(np.asarray(t, dtype=np.int64), device=lg.device)]
        out.append(token_logps(lg, ids, temperature) if len(t) else torch.zeros(0, device=lg.device))
    return out


@torch.no_grad()
def rating_probes(
    model,
    transport: HFTransport,
    requests: Sequence[tuple[Trajectory, int]],
    prefix: str,
    batch: int = 8,
    dtype=None,
) -> list[np.ndarray]:
    """P(rating 1..5) if the model answered right after ``traj.token_ids[:upto]`` with ``prefix``,
    for each (traj, upto); padded batches of ``batch`` sequences."""
    ids = transport.rating_ids()
    out: list[np.ndarray] = []
    for b in range(0, len(requests), batch):
        chunk = requests[b : b + batch]
        encoded = [build_model_inputs(transport, t, upto, prefix) for t, upto in chunk]
        inputs = collate(encoded, transport.pad_id)
        last = [[int(e["input_ids"].shape[1]) - 1] for e in encoded]
        logits = forward_at(model, inputs, last, dtype)
        for lg in logits:
            p = torch.softmax(lg[0].float(), dim=-1)[ids].cpu().numpy().astype(np.float64)
            out.append(p / p.sum())
    return out

"""The GRPO objective, as plain functions on tensors (the trainer feeds them; tests check them).

For trajectory j of a group of G (one image), reward R_j and advantage
A_j = (R_j - mean(R)) / (std(R) + eps) (``scale_rewards``; without it only the mean is removed,
as in Dr. GRPO). For each of the policy's tokens t, with ratio rho = exp(logp - logp_old):

    l_t = -w_t min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A) + beta KL_t,
    KL_t = exp(logp_ref - logp) - (logp_ref - logp) - 1     (k3 estimator, >= 0)

w_t is the EGF weight (1 without filtering). ``token`` loss: sum of l_t over every policy token
of the step divided by their number (all processes together; DAPO's token-level loss, TRL's
"bnpo"/"dapo"); ``sequence`` loss: the mean over each trajectory's tokens, then over
trajectories (the original GRPO). The same formulas as TRL's GRPOTrainer; TRL itself is not used
because its rollouts are single-turn text completions, while ours are multi-turn trajectories
whose tool responses (crops) are inserted by the loop between the model's turns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def group_advantages(rewards: np.ndarray, scale: bool = True, eps: float = 1e-4) -> np.ndarray:
    """(groups, G) rewards -> advantages, normalised within each group (sample std, as TRL)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError(f"rewards must be (groups, G) with G >= 2, got shape {r.shape}")
    adv = r - r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, ddof=1, keepdims=True)
    if scale:
        adv = adv / (std + eps)
    # equal rewards carry no signal; rounding must not invent one (1e-17 / eps is not zero)
    return np.where(std <= 1e-9 * np.maximum(1.0, np.abs(r).max(axis=1, keepdims=True)), 0.0, adv)


@dataclass
class LossStats:
    clipped: float  # fraction of tokens whose ratio was clipped (in the direction that matters)
    kl: float  # mean k3 KL per token (0 without a reference)
    ratio: float  # mean importance ratio


def token_logps(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(target) under softmax(logits / temperature), in float32. logits (..., V), targets (...)."""
    z = logits.float() / temperature
    picked = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


def per_token_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    beta: float = 0.0,
) -> tuple[torch.Tensor, LossStats]:
    """l_t for a flat run of policy tokens (all tensors (N,)); see the module docstring."""
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = -torch.min(ratio * advantages, clipped_ratio * advantages)
    if weights is not None:
        pg = pg * weights
    loss = pg
    kl_mean = 0.0
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs the reference log-probabilities")
        diff = ref_logp - logp
        kl = torch.exp(diff) - diff - 1.0
        loss = loss + beta * kl
        kl_mean = float(kl.detach().mean()) if kl.numel() else 0.0
    with torch.no_grad():
        low = (ratio < 1.0 - clip_low) & (advantages < 0)
        high = (ratio > 1.0 + clip_high) & (advantages > 0)
        n = max(1, ratio.numel())
        stats = LossStats(float((low | high).sum()) / n, kl_mean, float(ratio.sum()) / n)
    return loss, stats


def token_scales(lengths: list[int], loss_type: str, total_tokens: int, total_sequences: int) -> list[float]:
    """The factor each token's loss is multiplied by so that summing over every token of the
    step (all micro-batches, all processes) gives the chosen mean."""
    if loss_type == "token":
        return [1.0 / max(1, total_tokens)] * len(lengths)
    if loss_type == "sequence":
        return [1.0 / (max(1, n) * max(1, total_sequences)) for n in lengths]
    raise ValueError(f"unknown loss_type {loss_type!r}")

"""The arithmetic of GRPO and its variants, as plain functions of tensors (tests check each against a hand
computation; tasks/grpo.py wires them to rollouts).

Advantages (one group = the `G` completions of one prompt, rewards r_1..r_G):
    group       A_i = r_i - mean(r)                               GRPO, Shao et al. 2024 (arXiv:2402.03300)
    rloo        A_i = r_i - mean_{j != i} r_j                     RLOO, Ahmadian et al. 2024 (arXiv:2402.14740)
  then, by scale_rewards:
    group       A_i / (std(r of the group) + 1e-4)                (the GRPO paper)
    batch       A_i / (std(r of the whole batch) + 1e-4)          (Hu et al. 2025, REINFORCE++, arXiv:2501.03262)
    none        A_i                                               (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783)
  std is the unbiased one (as torch.std and TRL). Rewards that are None (NaN) are left out of the mean and
  std; their completion's advantage is 0.

Per-token objective (PPO's clipped surrogate, Schulman et al. 2017, arXiv:1707.06347), for completion token t:
    ratio_t  = exp(logp_t - old_logp_t)                           importance_sampling_level: token
    ratio    = exp(mean_t (logp_t - old_logp_t))                  sequence: GSPO, Zheng et al. 2025 (arXiv:2507.18071)
    l_t      = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A)
             + beta * (exp(ref_t - logp_t) - (ref_t - logp_t) - 1)   (the k3 KL estimator, Schulman 2020)
  epsilon_high > epsilon is DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476). With num_iterations 1,
  old_logp is logp itself, detached: ratio 1, and the gradient is the policy gradient A * grad logp.

Reduction over the completion tokens (mask m: 1 on a completion's tokens, 0 on padding and on completions
masked for truncation), loss_type:
    grpo      sum_i (sum_t l_it m_it / sum_t m_it) / N                   per-sequence mean, then mean (GRPO)
    bnpo      sum_it l_it m_it / sum_it m_it, per micro-batch            (Xiao et al. 2025, arXiv:2506.02864)
    dr_grpo   sum_it l_it m_it / (N * max_completion_length)             (Dr. GRPO: a constant normaliser)
    dapo      sum_it l_it m_it / (completion tokens in the whole step)   (DAPO's token-level loss; the default)
  `reduce` returns (sum, items) by the loop's contract: the loop divides the step's summed losses by its
  summed items over micro-batches and processes, which gives each formula above over a whole step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

EPS = 1e-4  # added to the std (the GRPO convention, as TRL)


def _nanstd(x: torch.Tensor, dim=None) -> torch.Tensor:
    """Unbiased std ignoring NaN; NaN where fewer than 2 values."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    keep = ~torch.isnan(x)
    count = keep.sum(dim)
    mean = torch.nansum(x, dim) / count.clamp(min=1)
    dev = torch.where(keep, x - mean.unsqueeze(dim), torch.zeros_like(x))
    var = (dev ** 2).sum(dim) / (count - 1).clamp(min=1)
    return torch.where(count >= 2, var.sqrt(), torch.full_like(var, float("nan")))


@dataclass
class Advantages:
    advantages: torch.Tensor  # [N], 0 for unscorable completions
    zero_std: torch.Tensor  # [groups] bool: every reward of the group equal (no learning signal)
    group_std: torch.Tensor  # [groups]


def advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group",
               estimator: str = "group", batch_std: Optional[torch.Tensor] = None) -> Advantages:
    """Advantages of [N] rewards (N = groups x group_size, a group's completions next to each other).
    `batch_std`: the std over every process's rewards (scale_rewards: batch with several processes)."""
    r = rewards.to(torch.float64)
    g = r.view(-1, group_size)
    keep = ~torch.isnan(g)
    count = keep.sum(1, keepdim=True)
    total = torch.nansum(g, 1, keepdim=True)
    mean = total / count.clamp(min=1)
    if estimator == "rloo":
        others = (count - keep.long()).clamp(min=1)
        baseline = (total - torch.nan_to_num(g, nan=0.0)) / others
        adv = torch.where(count > 1, g - baseline, torch.zeros_like(g))
    elif estimator == "group":
        adv = g - mean
    else:
        raise ValueError(f"unknown advantage estimator {estimator}")
    std_g = _nanstd(g, 1)
    if scale_rewards == "group":
        adv = adv / (torch.nan_to_num(std_g, nan=0.0).unsqueeze(1) + EPS)
    elif scale_rewards == "batch":
        s = _nanstd(r) if batch_std is None else batch_std.to(torch.float64)
        adv = adv / (torch.nan_to_num(s, nan=0.0) + EPS)
    elif scale_rewards != "none":
        raise ValueError(f"unknown scale_rewards {scale_rewards}")
    adv = torch.nan_to_num(adv.reshape(-1), nan=0.0)
    zero = torch.nan_to_num(std_g, nan=0.0) < 1e-8
    return Advantages(adv, zero, std_g)


@dataclass
class TokenLoss:
    per_token: torch.Tensor  # [R, T] l_t (not masked)
    ratio: torch.Tensor  # [R, T] or [R, 1]
    low_clipped: torch.Tensor  # bool, same shape as ratio
    high_clipped: torch.Tensor
    kl: Optional[torch.Tensor]  # [R, T] when beta > 0


def token_loss(logps: torch.Tensor, old_logps: Optional[torch.Tensor], advantages: torch.Tensor, mask: torch.Tensor,
               epsilon: float = 0.2, epsilon_high: Optional[float] = None, level: str = "token",
               beta: float = 0.0, ref_logps: Optional[torch.Tensor] = None) -> TokenLoss:
    """The clipped surrogate (+ KL) per completion token; see the module's formulas."""
    old = logps.detach() if old_logps is None else old_logps
    log_ratio = logps - old
    if level == "token":
        log_w = log_ratio
    elif level == "sequence":
        m = mask.to(logps.dtype)
        log_w = ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"unknown importance_sampling_level {level}")
    ratio = torch.exp(log_w)
    hi = epsilon if epsilon_high is None else epsilon_high
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + hi)
    a = advantages.to(logps.dtype).unsqueeze(1)
    per_token = -torch.min(ratio * a, clipped * a)
    kl = None
    if beta:
        if ref_logps is None:
            raise ValueError("beta > 0 needs reference log-probs")
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * kl
    return TokenLoss(per_token, ratio, (ratio < 1 - epsilon) & (a < 0), (ratio > 1 + hi) & (a > 0), kl)


def reduce(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_completion_length: int
           ) -> tuple[torch.Tensor, float]:
    """(summed loss, items) of one micro-batch for the loop (see the module's table)."""
    m = mask.to(per_token.dtype)
    masked = (per_token * m)
    if loss_type == "grpo":
        return (masked.sum(-1) / m.sum(-1).clamp(min=1.0)).sum(), float(per_token.shape[0])
    if loss_type == "bnpo":
        return masked.sum() / m.sum().clamp(min=1.0), 1.0
    if loss_type == "dr_grpo":
        return masked.sum() / max_completion_length, float(per_token.shape[0])
    if loss_type == "dapo":
        return masked.sum(), float(m.sum())
    raise ValueError(f"unknown loss_type {loss_type}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(sum over the mask, mask count) of x, broadcasting a per-sequence [R, 1] x over the tokens."""
    m = mask.to(torch.float64)
    if x.shape[-1] == 1 and mask.shape[-1] != 1:
        x = x.expand_as(mask)
    return float((x.to(torch.float64) * m).sum()), float(m.sum())

"""Preference losses from sequence log-probabilities: DPO (sigmoid), IPO, SimPO and ORPO.

Every function takes, per pair, the summed log-probabilities of the chosen and rejected replies under
the policy (`pc`, `pr`), their scored token counts (`nc`, `nr`) and, for the losses that need one, the
same sums under the reference model (`rc`, `rr`); it returns per-pair losses and the chosen and
rejected rewards (the implicit rewards the loss compares; reward accuracy = share of chosen > rejected).

    sigmoid  DPO (Rafailov et al. 2023): -log s(beta * ((pc - rc) - (pr - rr))), with optional label
             smoothing eps (conservative DPO): -(1 - eps) log s(z) - eps log s(-z)
    ipo      IPO (Azar et al. 2023) on length-averaged log-ratios (as TRL does):
             (((pc - rc)/nc - (pr - rr)/nr) - 1/(2 beta))^2
    simpo    SimPO (Meng et al. 2024), reference-free: -log s(beta * (pc/nc - pr/nr) - gamma)
    orpo     ORPO (Hong et al. 2024), reference-free: NLL of chosen (per token) - beta * log s(log odds),
             log odds = log(p_c / (1 - p_c)) - log(p_r / (1 - p_r)) with p = exp(mean token log-prob)
Rewards: beta * (policy - reference) log-probs (sigmoid: sums; ipo: per-token means), beta * the mean
token log-prob for the reference-free losses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

REFERENCE_FREE = ("simpo", "orpo")


def needs_reference(loss_type: str) -> bool:
    return loss_type not in REFERENCE_FREE


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _smoothed(z: torch.Tensor, eps: float) -> torch.Tensor:
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z) if eps else -F.logsigmoid(z)


def preference_loss(loss_type: str, beta: float, pc, pr, nc, nr, rc=None, rr=None, label_smoothing: float = 0.0,
                    simpo_gamma: float = 0.5, reward_scale: str = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards); tensors of shape (pairs,). `reward_scale` "sum": IPO's
    rewards from the summed log-ratios, as TRL logs them (the loss is the same)."""
    nc, nr = nc.to(pc.dtype), nr.to(pr.dtype)
    if loss_type == "sigmoid":
        c, r = pc - rc, pr - rr
        return _smoothed(beta * (c - r), label_smoothing), beta * c, beta * r
    if loss_type == "ipo":
        c, r = (pc - rc) / nc, (pr - rr) / nr
        if reward_scale == "sum":
            return (c - r - 1 / (2 * beta)) ** 2, beta * (pc - rc), beta * (pr - rr)
        return (c - r - 1 / (2 * beta)) ** 2, beta * c, beta * r
    c, r = pc / nc, pr / nr
    if loss_type == "simpo":
        return _smoothed(beta * (c - r) - simpo_gamma, label_smoothing), beta * c, beta * r
    if loss_type == "orpo":
        log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
        return -c - beta * F.logsigmoid(log_odds), beta * c, beta * r
    raise ValueError(f"unknown loss type {loss_type}")

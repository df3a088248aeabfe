"""Distillation losses between a student's and a teacher's next-token distributions (per target token, summed).

With temperature T, p_S = softmax(student logits / T), p_T = softmax(teacher logits / T):

    forward_kl   KL(p_T || p_S) = sum_v p_T (log p_T - log p_S)         (Hinton et al.; mass-covering)
    reverse_kl   KL(p_S || p_T) = sum_v p_S (log p_S - log p_T)         (mode-seeking)
    gjsd (beta)  beta KL(p_T || M) + (1 - beta) KL(p_S || M),  M = beta p_T + (1 - beta) p_S
                 (Agarwal et al. 2024, TRL's generalized_jsd_loss: beta 0 is forward_kl, 1 is reverse_kl)

Top-k: with the teacher's k most likely tokens at a position (its on-the-fly logits, or a disk cache of them), both
distributions are restricted to those k tokens and renormalised over them; the cache and the on-the-fly logits
restricted the same way give the same loss.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

LOSSES = ("forward_kl", "reverse_kl", "gjsd")


def divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, loss: str, beta: float = 0.5) -> torch.Tensor:
    """Per position [N]: the divergence between log-distributions [N, V] (each row sums to 1 in probability)."""
    if loss == "forward_kl" or (loss == "gjsd" and beta == 0):
        return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    if loss == "reverse_kl" or (loss == "gjsd" and beta == 1):
        return (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)
    if loss != "gjsd":
        raise ValueError(f"unknown distillation loss {loss!r}")
    mix = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1 - beta)]), dim=0)
    kl_t = (teacher_logp.exp() * (teacher_logp - mix)).sum(-1)
    kl_s = (student_logp.exp() * (student_logp - mix)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def distill_loss(student_logits: torch.Tensor, teacher_logits: Optional[torch.Tensor], loss: str, beta: float,
                 temperature: float, top_idx: Optional[torch.Tensor] = None,
                 top_teacher: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Summed divergence over positions. Full vocabulary from both logits [N, V]; or restricted to the teacher's top-k
    tokens `top_idx` [N, k], the teacher's values there from `top_teacher` [N, k] (cached log-probs or logits: a
    constant shift changes nothing after renormalising) or from `teacher_logits`."""
    s = student_logits.float()
    if top_idx is None:
        return divergence(F.log_softmax(s / temperature, -1), F.log_softmax(teacher_logits.float() / temperature, -1),
                          loss, beta).sum()
    t = top_teacher.float() if top_teacher is not None else teacher_logits.float().gather(-1, top_idx)
    return divergence(F.log_softmax(s.gather(-1, top_idx) / temperature, -1), F.log_softmax(t / temperature, -1),
                      loss, beta).sum()

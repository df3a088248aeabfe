"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..config import TrainConfig


def param_groups(model: torch.nn.Module, tc: TrainConfig, new_params: set[str],
                 head_learning_rate: Optional[float] = None) -> list[dict]:
    """AdamW groups: no weight decay on biases and norm weights; new parameters may get their own LR
    (train.head_learning_rate, else the task's `head_learning_rate`)."""
    head_lr = tc.head_learning_rate if tc.head_learning_rate is not None else head_learning_rate
    groups: dict[tuple[bool, bool], list] = {}
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm1d)
    no_decay = set()
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name.endswith("bias") or isinstance(mod, norm_types) or "norm" in type(mod).__name__.lower():
                no_decay.add(full)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_new = name in new_params and head_lr is not None
        groups.setdefault((name in no_decay, is_new), []).append(p)
    out = []
    for (nd, new), params in groups.items():
        out.append({"params": params, "weight_decay": 0.0 if nd else tc.weight_decay,
                    "lr": head_lr if new else tc.learning_rate})
    return out


def make_optimizer(model, tc: TrainConfig, new_params: set[str],
                   head_learning_rate: Optional[float] = None) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel over all parameters) where this torch supports it for the parameters."""
    groups = param_groups(model, tc, new_params, head_learning_rate)
    kwargs = dict(lr=tc.learning_rate, betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_epsilon)
    params = [p for g in groups for p in g["params"]]
    if params and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) and p.device.type in ("cpu", "cuda")
                      for p in params):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, **kwargs)


def lr_lambda(kind: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup  # the first step already uses a non-zero LR
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)
    return f


def make_scheduler(optimizer, tc: TrainConfig, total_steps: int):
    warmup = tc.warmup_steps or int(math.ceil(tc.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.lr_scheduler_type, warmup, total_steps))

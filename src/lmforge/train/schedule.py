"""Optimizer and learning-rate schedule (transformers.get_scheduler, as the Trainer builds them)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from transformers.optimization import Adafactor, get_scheduler

from ..config import TrainConfig
from ..errors import LmforgeError
from ..metrics import higher_is_better


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
    """train.optim over the weight-decay groups: AdamW (fused where this torch supports it for the
    parameters), transformers' Adafactor, SGD with momentum, or bitsandbytes' 8-bit AdamW on a GPU."""
    groups = param_groups(model, tc, new_params, head_learning_rate)
    if tc.optim == "sgd":
        return torch.optim.SGD(groups, lr=tc.learning_rate, momentum=tc.momentum)
    if tc.optim == "adafactor":
        # the given learning rate and schedule, as the Trainer's optim: adafactor does
        return Adafactor(groups, lr=tc.learning_rate, scale_parameter=False, relative_step=False, warmup_init=False)
    kwargs = dict(lr=tc.learning_rate, betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_epsilon)
    if tc.optim == "adamw_8bit":
        return _adamw_8bit(groups, kwargs)
    params = [p for g in groups for p in g["params"]]
    if params and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) and p.device.type in ("cpu", "cuda")
                      for p in params):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, **kwargs)


def _adamw_8bit(groups: list[dict], kwargs: dict) -> torch.optim.Optimizer:
    if not torch.cuda.is_available():
        raise LmforgeError("train.optim adamw_8bit needs a CUDA GPU (bitsandbytes' 8-bit optimizer states live there)",
                           "use optim: adamw on this machine")
    try:
        import bitsandbytes as bnb  # lazy: an optional dependency, GPU only
    except ImportError:
        raise LmforgeError("train.optim adamw_8bit needs the bitsandbytes package",
                           "pip install bitsandbytes, or use optim: adamw") from None
    return bnb.optim.AdamW8bit(groups, **kwargs)


def make_scheduler(optimizer, tc: TrainConfig, total_steps: int, greater_is_better: bool = False):
    """transformers.get_scheduler(train.lr_scheduler_type) with warmup_steps (or warmup_ratio of the steps)
    and train.lr_scheduler_kwargs. reduce_lr_on_plateau steps on the evaluation metric (see is_plateau)."""
    warmup = tc.warmup_steps or int(math.ceil(tc.warmup_ratio * total_steps))
    kwargs = dict(tc.lr_scheduler_kwargs)
    if tc.lr_scheduler_type == "reduce_lr_on_plateau":
        kwargs.setdefault("mode", "max" if greater_is_better else "min")
    try:
        return get_scheduler(tc.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                             scheduler_specific_kwargs=kwargs)
    except (TypeError, ValueError) as e:
        raise LmforgeError(f"train.lr_scheduler_type {tc.lr_scheduler_type} with lr_scheduler_kwargs {kwargs}: "
                           f"{str(e).splitlines()[0][:300]}",
                           "see transformers' get_scheduler for each schedule's arguments") from None


def low_lr_share(scheduler, total_steps: int, floor: float = 0.01) -> Optional[float]:
    """The share of the run's steps at which the schedule keeps the learning rate below `floor` x its peak (a
    warmup longer than the run, a decay to 0 early, ...); None for schedules that step on the metric."""
    fns = getattr(scheduler, "lr_lambdas", None)
    if not fns or total_steps < 1:
        return None
    points = sorted({min(total_steps - 1, int(i * total_steps / 400)) for i in range(400)})
    return sum(fns[0](k) < floor for k in points) / len(points)


def is_plateau(scheduler) -> bool:
    """A schedule that steps on the evaluation metric, not on every optimizer step."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def metric_direction(tc: TrainConfig, task_metric: str, task_greater_is_better: bool) -> tuple[str, bool]:
    """(metric that picks the best checkpoint, whether higher is better): train.metric_for_best_model and
    train.greater_is_better, else the task's metric and direction; a metric named like a loss is lower-better."""
    name = (tc.metric_for_best_model or task_metric).removeprefix("eval_").removeprefix("eval.")
    if tc.greater_is_better is not None:
        return name, tc.greater_is_better
    if name == task_metric:
        return name, task_greater_is_better
    return name, higher_is_better(name) is not False

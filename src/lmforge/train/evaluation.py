"""The accelerator a run uses, and evaluation of a split (shared by training, `lmforge eval` and sweeps)."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from ..config import Config
from ..data.batching import eval_batches
from ..errors import LmforgeError
from ..runtime import to_device
from ..tasks.base import EncodedSplit, TaskParts
from .progress import TrainProgress

log = logging.getLogger("lmforge")


def make_accelerator(cfg: Config) -> Accelerator:
    mp = cfg.train.mixed_precision
    cuda = torch.cuda.is_available()
    if mp == "auto":
        mp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if mp in ("bf16", "fp16") and not cuda:
        # fp32 matmul is faster than bf16 on CPUs without AMX, and fp16 autocast is unsupported.
        log.info("mixed_precision=%s asked for on a CPU: training in fp32 instead", mp)
        mp = "no"
    return Accelerator(mixed_precision=mp, cpu=not cuda)


@torch.no_grad()
def evaluate_split(model, split: EncodedSplit, parts: TaskParts, batch_size: int, accelerator=None,
                   progress: Optional[TrainProgress] = None, desc: str = "eval") -> dict:
    """Run the task's eval_step over a split, concatenating its outputs; finalize -> metrics."""
    device = accelerator.device if accelerator else next(model.parameters()).device
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    all_batches = eval_batches(split.lengths, batch_size)
    batches = all_batches[rank::world]
    # Every process runs the same number of forward passes: a DDP/FSDP-wrapped model communicates in
    # forward (buffer sync, all-gathers), so an uneven share would hang. Padding passes are discarded.
    n_pad = (-(-len(all_batches) // world) - len(batches)) if world > 1 and all_batches else 0
    was_training = model.training
    model.eval()
    outputs: dict[str, list] = {}
    task_id = progress.add_eval(desc, len(batches)) if progress else None
    autocast = accelerator.autocast() if accelerator else nullcontext()
    with autocast:
        for _ in range(n_pad):
            parts.eval_step(model, to_device(parts.collate(split.take(all_batches[0])), device))
        for idx in batches:
            out = parts.eval_step(model, to_device(parts.collate(split.take(idx)), device))
            for k, v in out.items():
                outputs.setdefault(k, []).append(v.detach().float().reshape(-1).cpu() if v.is_floating_point()
                                                 else v.detach().reshape(-1).cpu())
            if progress:
                progress.advance_eval(task_id)
    if progress:
        progress.done_eval(task_id)
    cat = {k: torch.cat(v) for k, v in outputs.items()}
    if world > 1:
        gathered = gather_object([cat])
        keys = dict.fromkeys(k for p in gathered for k in p)  # a process with no batches sends nothing
        cat = {k: torch.cat([p[k] for p in gathered if k in p]) for k in keys}
    model.train(was_training)
    metrics = (split.finalize or parts.finalize)(cat)
    if parts.metrics_function is not None:
        extra = user_metrics(parts, cat)
        shadowed = sorted(set(extra) & set(metrics))
        if shadowed:  # the measured numbers (and best-checkpoint choice) are never replaced by a user's
            raise LmforgeError(f"eval.metrics_function {parts.metrics_function_name} returned "
                               f"{', '.join(repr(k) for k in shadowed)}, which lmforge measures itself",
                               f"give your metrics their own names (e.g. 'my_{shadowed[0]}')")
        metrics.update(extra)
    return metrics


def user_metrics(parts: TaskParts, outputs: dict) -> dict:
    """eval.metrics_function on the task's predictions and labels; its numbers, checked."""
    predictions, labels, info = parts.task.metric_inputs(outputs)
    name = parts.metrics_function_name
    try:
        got = parts.metrics_function(predictions, labels, info)
    except Exception as e:  # the user's code: one line with its name and the error, not our traceback
        raise LmforgeError(f"eval.metrics_function {name} failed: {type(e).__name__}: {e}",
                           "fix the function (it is called as fn(predictions, labels, batch_info))") from None
    if not isinstance(got, dict) or not all(isinstance(k, str) for k in got):
        raise LmforgeError(f"eval.metrics_function {name} returned {type(got).__name__}, not a dict of name -> number")
    out = {}
    for key, value in got.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise LmforgeError(f"eval.metrics_function {name}: metric '{key}' is {value!r}, not a number") from None
    return out

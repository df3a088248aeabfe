"""FSDP on CPU processes (gloo), where accelerate does not go.

accelerate 1.15 turns an FSDP config into DistributedType.FSDP only for GPU-like devices (its state code lists
MULTI_GPU, MULTI_NPU, MULTI_XPU, ...); with CPU processes it silently falls back to MULTI_CPU, i.e. plain DDP
with every weight replicated. torch's own FSDP2 (`torch.distributed.fsdp.fully_shard`) does run on CPU with gloo,
so when the launcher asked for FSDP (ACCELERATE_USE_FSDP=true) and accelerate chose MULTI_CPU, lmforge shards the
model itself: each transformer block (the model's `_no_split_modules`) and then the root, exactly the wrapping
accelerate's TRANSFORMER_BASED_WRAP does on GPUs. Parameters become DTensor shards; gradients are
reduce-scattered (averaged, as DDP averages them); checkpoints gather full state dicts (train/checkpoint.py).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("lmforge")


def fsdp_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def cpu_fsdp(accelerator) -> bool:
    """True when FSDP was asked for but accelerate runs the processes as plain multi-CPU DDP."""
    from accelerate.utils import DistributedType
    return fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU


def shard_model(model) -> int:
    """fully_shard each transformer block, then the root; returns the number of blocks sharded."""
    from torch.distributed.fsdp import fully_shard
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    log.info("FSDP2 on CPU processes (gloo): %d transformer blocks and the root sharded", len(blocks))
    return len(blocks)


def full_logits_losses(parts) -> int:
    """Turn off the chunked LM-head loss (it multiplies by the head's weight outside the model's forward, where
    FSDP holds only a shard); the loss then comes from the model's own logits. Returns how many were changed."""
    changed = 0
    for fn in (parts.loss, parts.eval_step):
        owner = getattr(fn, "__self__", fn)
        if getattr(owner, "chunked", False):
            owner.chunked = False
            changed += 1
    return changed


def warn_deepspeed_fallback(accelerator) -> bool:
    """accelerate runs a DeepSpeed config on CPU processes as plain DDP without a word; say it."""
    from accelerate.utils import DistributedType
    asked = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if not asked or accelerator.distributed_type == DistributedType.DEEPSPEED:
        return False
    if accelerator.is_main_process:
        log.warning("a DeepSpeed config was given, but accelerate runs these %s processes as %s: ZeRO is not in use "
                    "here (DeepSpeed through accelerate needs GPUs); training continues as plain DDP",
                    accelerator.num_processes, accelerator.distributed_type.value)
    return True

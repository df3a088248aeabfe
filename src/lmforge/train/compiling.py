"""Regional torch.compile: compile the model's repeated blocks (its transformer layers) for training.

Compiling each decoder layer instead of the whole model gives the same speed-up (fused norms,
activations and rotary embeddings around the matmuls) for a fraction of the compile time: the
layers share their code, so one compiled graph serves all of them (measured on smollm2-135m,
2 CPU cores: about 10 s of compiling instead of about 75 s, 195 vs 177 tokens/s eager).

Compiled code is used only for training steps (module in training mode, gradients on).
Evaluation and generation run the eager layers: their shapes change (KV caches, prompt lengths)
and would trigger a recompile each.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from typing import Optional

import torch

log = logging.getLogger("lmforge")

# "auto" compiles only runs long enough to pay the compile time back with a margin. Measured
# (benchmarks/compile_breakeven.py, smollm2-135m, 4 x 256 tokens, 2 CPU cores, cold inductor cache):
# compiling costs 25 s over the first 4 steps and saves 1.1 s per later step (9.07 -> 7.96 s), so it
# breaks even after 27 steps; auto asks for twice that, so a compiled run is clearly faster.
AUTO_MIN_STEPS = 60


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of the largest ModuleList whose children all share one class (the layers)."""
    best: list[torch.nn.Module] = []
    for mod in model.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) >= 2:
            kinds = {type(m) for m in mod}
            if len(kinds) == 1 and len(mod) > len(best):
                best = list(mod)
    return best


def compiler_available() -> Optional[str]:
    """A C++ compiler for inductor's CPU kernels (None when there is none)."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def decide(setting, fixed_shapes: bool, total_steps: int, device: torch.device,
           gradient_checkpointing: bool) -> tuple[bool, str]:
    """Whether to compile, and why (for the log)."""
    if setting is False:
        return False, "train.compile: false"
    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    if device.type == "cpu" and compiler_available() is None:
        return False, "no C++ compiler found (inductor needs one for CPU kernels; install g++)"
    if setting is True:
        return True, "train.compile: true"
    # auto: fixed shapes only (packed causal-LM blocks), and a run long enough to pay back
    if not fixed_shapes:
        return False, "auto: only runs with fixed batch shapes (packed causal-lm) compile"
    if gradient_checkpointing:
        return False, "auto: off with gradient checkpointing"
    if total_steps < AUTO_MIN_STEPS:
        return False, f"auto: {total_steps} steps are too few to pay back the compile time (< {AUTO_MIN_STEPS})"
    return True, f"auto: fixed batch shapes, {total_steps} steps"


class RegionalCompile:
    """Compiles the repeated blocks of `model`; `eager()` switches them off for a while."""

    def __init__(self, model: torch.nn.Module):
        self.blocks = repeated_blocks(model)
        for blk in self.blocks:
            blk.compile()
        self.active = bool(self.blocks)
        self.kind = type(self.blocks[0]).__name__ if self.blocks else None

    def disable(self) -> None:
        for blk in self.blocks:
            blk._compiled_call_impl = None
        self.active = False

    @contextmanager
    def eager(self):
        saved = [blk._compiled_call_impl for blk in self.blocks]
        for blk in self.blocks:
            blk._compiled_call_impl = None
        try:
            yield
        finally:
            for blk, impl in zip(self.blocks, saved):
                blk._compiled_call_impl = impl


def setup(setting, fixed_shapes: bool, total_steps: int, accelerator, model,
          gradient_checkpointing: bool) -> Optional[RegionalCompile]:
    """Compile the model's layers for training when `decide` says so; say what was done in the log."""
    on, why = decide(setting, fixed_shapes, total_steps, accelerator.device, gradient_checkpointing)
    if not on:
        if setting is True or "C++" in why:
            log.info("torch.compile off: %s", why)
        return None
    rc = RegionalCompile(accelerator.unwrap_model(model))
    if not rc.active:
        log.info("torch.compile off: the model has no repeated layers to compile")
        return None
    log.info("torch.compile (%s): the %d %s layers are compiled for training steps; the first step "
             "takes longer (train.compile: false turns it off)", why, len(rc.blocks), rc.kind)
    return rc


def is_compile_error(exc: BaseException) -> bool:
    """An error raised by dynamo/inductor (a model or a machine it cannot compile for)."""
    mod = type(exc).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor")) or "inductor" in str(exc).lower()

"""How much memory a training run needs, before it starts, against what the machine has.

The estimate (per process) adds up:
    weights       every parameter, in its dtype
    gradients     one per trainable parameter (fp32 master weights keep fp32 gradients)
    optimizer     AdamW: two fp32 moments per trainable parameter
    activations   what the forward pass keeps for backward, for the longest training batch:
                  per layer ~ s*b*(15h + 4.75i) + 2.5*a*s^2*b values (Korthikanti et al. 2022, "Reducing
                  activation recomputation"; i = MLP width, a = heads), plus the fp32 logits of an LM head
    evaluation    one forward pass of an eval batch (no graph kept) and the per-example outputs

Calibration (benchmarks/memory_estimate.py, MiniLM-L6 on finefood, CPU fp32, peak RSS): the
formula's activations times ACTIVATION_FACTOR (backward temporaries, allocator slack), plus
AdamW's step temporaries (foreach: about two fp32 copies of the parameters), matched the measured
growth of peak memory within 1.0-1.13x at batch 8 and 32 (length 128) and 16 (length 256);
with gradient checkpointing the measured saving was about half the activations, not the
formula's ~90%, so that is what is assumed. GPUs were not measured.
A warning with concrete advice is logged when it will not fit; `lmforge doctor` reports the same.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..runtime import available_bytes

log = logging.getLogger("lmforge")

MB = 2 ** 20
ACTIVATION_FACTOR = 1.75  # measured / formula, CPU fp32 (see the module docstring)
CHECKPOINTING_SAVES = 0.5  # measured share of the activations that gradient checkpointing removed


def _mb(n: float) -> str:
    return f"{n / MB:,.1f}" if n < 10 * MB else f"{n / MB:,.0f}"


def _get(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v:
            return v
    return default


@dataclass
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    evaluation: float
    batch_size: int
    seq_len: int
    device: str
    available: Optional[float] = None  # bytes still free for this run
    already_used: float = 0.0  # bytes of the above already allocated (weights on the device)
    per_example_activation: float = 0.0
    per_token_activation: float = 0.0
    temporaries: float = 0.0  # the optimizer step's scratch memory
    advice: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """Peak need: weights + optimizer + the larger of (gradients + activations + step temporaries) and
        evaluation."""
        return self.weights + self.optimizer + max(self.gradients + self.activations + self.temporaries,
                                                   self.evaluation)

    @property
    def fits(self) -> Optional[bool]:
        if self.available is None:
            return None
        return self.total - self.already_used <= self.available

    def summary(self) -> str:
        parts = (f"weights {_mb(self.weights)}, gradients {_mb(self.gradients)}, optimizer "
                 f"{_mb(self.optimizer)}, activations {_mb(self.activations)} (batch {self.batch_size} x "
                 f"{self.seq_len} tokens), evaluation {_mb(self.evaluation)}")
        avail = (f"; {(self.available + self.already_used) / MB:,.0f} MB available on {self.device}"
                 if self.available is not None else "")
        return f"memory estimate: {_mb(self.total)} MB ({parts}){avail}"

    def as_dict(self) -> dict:
        return {"total_mb": round(self.total / MB, 1), "weights_mb": round(self.weights / MB, 1),
                "gradients_mb": round(self.gradients / MB, 1), "optimizer_mb": round(self.optimizer / MB, 1),
                "activations_mb": round(self.activations / MB, 1), "evaluation_mb": round(self.evaluation / MB, 1),
                "temporaries_mb": round(self.temporaries / MB, 1),
                "available_mb": round((self.available + self.already_used) / MB, 1) if self.available is not None else None,
                "batch_size": self.batch_size, "seq_len": self.seq_len, "fits": self.fits}


def activation_bytes(model_config, batch: int, seq: int, dtype_bytes: int, checkpointing: bool,
                     lm_head: bool) -> float:
    h = _get(model_config, "hidden_size", "n_embd", "d_model", default=256)
    layers = _get(model_config, "num_hidden_layers", "n_layer", "num_layers", default=4)
    heads = _get(model_config, "num_attention_heads", "n_head", default=max(1, h // 64))
    inner = _get(model_config, "intermediate_size", "n_inner", "ffn_dim", default=4 * h)
    vocab = _get(model_config, "vocab_size", default=0)
    scale = dtype_bytes / 2  # the formula counts bytes at 16-bit
    per_layer = seq * batch * (15 * h + 4.75 * inner) * scale + 2.5 * heads * seq * seq * batch * scale
    acts = layers * per_layer
    acts += 2 * seq * batch * h * dtype_bytes  # embeddings and final norm
    if checkpointing:  # keeps each layer's input and recomputes the rest in backward
        acts *= 1 - CHECKPOINTING_SAVES
    if lm_head and vocab:
        acts += 3 * seq * batch * vocab * 4  # fp32 logits, log-softmax and its gradient
    return float(acts) * ACTIVATION_FACTOR


def estimate(model: torch.nn.Module, train_lengths, batch_size: int, eval_batch_size: int, n_eval: int,
             mixed_precision: str, checkpointing: bool, device, lm_head: Optional[bool] = None) -> MemoryEstimate:
    params = list({id(p): p for p in model.parameters()}.values())
    weights = float(sum(p.numel() * p.element_size() for p in params))
    trainable = [p for p in params if p.requires_grad]
    grads = float(sum(p.numel() * 4 for p in trainable))
    optim = float(sum(2 * p.numel() * 4 for p in trainable))
    temps = optim  # AdamW's foreach step: about two fp32 temporaries per parameter
    cfg = getattr(model, "config", None)
    seq = int(max(train_lengths)) if train_lengths is not None and len(train_lengths) else 512
    dtype_bytes = 2 if mixed_precision in ("bf16", "fp16") else 4
    if lm_head is None:
        arch = " ".join(getattr(cfg, "architectures", None) or [type(model).__name__])
        lm_head = any(k in arch for k in ("CausalLM", "LMHead", "MaskedLM"))
    acts = activation_bytes(cfg, batch_size, seq, dtype_bytes, checkpointing, lm_head)
    one = activation_bytes(cfg, 1, seq, dtype_bytes, checkpointing, lm_head)
    # Evaluation keeps no graph: about two layers' working set plus the logits of one batch.
    ev = activation_bytes(cfg, eval_batch_size, seq, dtype_bytes, True, lm_head) / max(
        1, _get(cfg, "num_hidden_layers", "n_layer", "num_layers", default=4)) * 2 + n_eval * 3 * 8
    device = torch.device(device)
    est = MemoryEstimate(weights, grads, optim, acts, float(ev), batch_size, seq, str(device),
                         per_example_activation=one, temporaries=temps)
    est.per_token_activation = one / max(1, seq)
    est.available = available_bytes(device)
    if est.available is not None:
        est.already_used = weights  # the model is loaded already: its bytes are no longer free
    return est


def advise(est: MemoryEstimate, accum: int, length_key: str = "data.block_size") -> list[str]:
    """Concrete settings that would fit, when the estimate does not."""
    if est.fits is not False:
        return []
    fixed = est.weights + est.optimizer + est.gradients + est.temporaries
    room = est.available + est.already_used - fixed
    tips = []
    if room <= 0:
        tips.append(f"the weights, gradients and optimizer state alone need {fixed / MB:,.0f} MB: use a smaller "
                    f"model, or a machine with more memory")
        return tips
    fit_b = int(room // max(1.0, est.per_example_activation))
    if 1 <= fit_b < est.batch_size:
        new_accum = math.ceil(est.batch_size * accum / fit_b)
        tips.append(f"train.per_device_train_batch_size {fit_b} with train.gradient_accumulation_steps {new_accum} "
                    f"(about the same effective batch)")
    if est.seq_len > 64:
        per_tok = est.per_token_activation * est.batch_size
        fit_len = int(room // max(1.0, per_tok))
        if 16 <= fit_len < est.seq_len:
            tips.append(f"{length_key} {fit_len} (the longest training example has {est.seq_len} tokens)")
    tips.append("train.gradient_checkpointing: true (recomputes activations in the backward pass: slower)")
    if est.device.startswith("cuda"):
        tips.append("train.mixed_precision: bf16 (halves the activations)")
    return tips


def estimate_for(trainer) -> "MemoryEstimate":
    """The estimate for a Trainer's run (model, batch sizes, lengths, precision, device), with advice."""
    tc, parts, accelerator = trainer.tc, trainer.parts, trainer.accelerator
    mp = "bf16" if getattr(accelerator, "mixed_precision", "no") in ("bf16", "fp16") else "no"
    est = estimate(accelerator.unwrap_model(trainer.model), parts.train.lengths, tc.per_device_train_batch_size,
                   tc.per_device_eval_batch_size, len(parts.eval) if parts.eval is not None else 0, mp,
                   tc.gradient_checkpointing, accelerator.device)
    est.advice = advise(est, tc.gradient_accumulation_steps, parts.task.length_key)
    return est


def preflight(trainer, logger=log) -> Optional[MemoryEstimate]:
    """Estimate for a Trainer's run; log it, and warn with advice when it will not fit."""
    try:
        est = estimate_for(trainer)
    except Exception as e:  # an estimate must never stop a run
        logger.debug("memory estimate failed: %s", e)
        return None
    logger.info(est.summary())
    if est.fits is False:
        logger.warning("this run will probably not fit in memory (%s MB needed, %s MB available): try %s",
                       f"{est.total / MB:,.0f}", f"{(est.available + est.already_used) / MB:,.0f}",
                       "; or ".join(est.advice))
    return est

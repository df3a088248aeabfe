"""The causal-LM loss: shifted cross entropy over packed blocks without the full logits.

The LM head and the cross entropy run over chunks of rows and each chunk's gradients are made
right away (ChunkedLMHeadLoss); probes at setup check packed attention and the chunked loss
against the model's own behaviour and fall back when they disagree. Used by tasks/causal_lm.py.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import LmforgeError
from ..metrics import lm_metrics
from ..runtime import load_function

log = logging.getLogger("lmforge")

IGNORE = -100


def block_diagonal_mask(position_ids: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Additive 4-D mask (B, 1, L, L): causal, and no attention across a position-id restart."""
    seg = (position_ids == 0).cumsum(-1)
    L = position_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


# ----------------------------------------------------------------------------------- loss
# fp32 logits values per chunk: 16M = 64 MB (341 rows of smollm2's 49,152-token vocabulary).
CHUNK_BUDGET = 16 * 2**20


class ChunkedLMHeadLoss(torch.autograd.Function):
    """Sum of token cross entropies of ``hidden @ weight.T (+ bias)`` without keeping the logits.

    The forward pass walks over chunks of rows: logits of a chunk (fp32), its loss, and at once
    its gradients with respect to the hidden states and the head weight; only those gradients are
    kept for the backward pass. Memory is O(chunk x vocab) instead of O(tokens x vocab).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_rows: int):
        n = hidden.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_grad else None
        w32 = weight.float()
        grad_w = torch.zeros_like(w32) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and ctx.needs_input_grad[2] else None
        for s in range(0, n, chunk_rows):
            lab = labels[s:s + chunk_rows]
            keep = lab != IGNORE
            if not bool(keep.any()):
                continue
            # all rows targets (the usual case with packing): plain slices, no gather / scatter
            rows = slice(s, s + len(lab)) if bool(keep.all()) else keep.nonzero().squeeze(1) + s
            h = hidden[rows].float()
            logits = h @ w32.t()
            if bias is not None:
                logits = logits + bias.float()
            tgt = labels[rows]
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tgt[:, None]).squeeze(1)).sum()
            if need_grad:
                g = torch.exp(logits.sub_(lse[:, None]))  # softmax, in place of the logits
                g[torch.arange(len(tgt), device=g.device), tgt] -= 1.0
                grad_h[rows] = (g @ w32).to(hidden.dtype)
                if grad_w is not None:
                    grad_w.addmm_(g.t(), h)
                if grad_b is not None:
                    grad_b += g.sum(0)
        ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0),
                              grad_w if grad_w is not None else torch.empty(0),
                              grad_b if grad_b is not None else torch.empty(0))
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        gb = (grad_b * grad_out) if ctx.needs_input_grad[2] else None
        return gh, gw, gb, None, None


def chunk_rows_for(vocab: int, budget: int = CHUNK_BUDGET) -> int:
    """Rows per chunk so that a chunk's fp32 logits hold about `budget` values."""
    return max(16, budget // max(1, vocab))


class CausalLMLoss:
    """The task's loss and evaluation: chunked head + cross entropy, or the full logits when asked."""

    def __init__(self, attention: str = "position_ids", chunked: bool = True,
                 custom: Optional[Callable] = None, per_token: bool = False):
        self.attention = attention  # "position_ids" or "mask4d"
        self.chunked = chunked and custom is None
        self.custom = custom
        self.per_token = per_token  # eval_step also returns each target token's loss (eval.metrics_function)

    def model_inputs(self, batch: dict) -> dict:
        inputs = {"input_ids": batch["input_ids"]}
        if "attention_mask" in batch:
            inputs["attention_mask"] = batch["attention_mask"]
        if "position_ids" in batch:
            inputs["position_ids"] = batch["position_ids"]
            if self.attention == "mask4d":
                inputs["attention_mask"] = block_diagonal_mask(batch["position_ids"])
        return inputs

    def hidden_and_head(self, model, batch: dict):
        """Final hidden states (B, L, H) and the LM head, without the full logits.

        The model's own forward runs (so DDP and other wrappers see a normal call) with
        logits_to_keep=1, and a hook on its base model takes the last hidden state.
        """
        inner = getattr(model, "module", model)  # DDP / accelerate wrappers
        box = {}

        def grab(module, args, out):
            box["h"] = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

        handle = inner.base_model.register_forward_hook(grab)
        try:
            model(**self.model_inputs(batch), use_cache=False, logits_to_keep=1)
        finally:
            handle.remove()
        return box["h"], inner.get_output_embeddings()

    def shifted(self, batch: dict) -> torch.Tensor:
        return batch["labels"][:, 1:]

    def __call__(self, model, batch: dict) -> torch.Tensor:
        """Sum of the token losses of the batch (the loop divides by the step's label tokens)."""
        if self.custom is not None:
            logits = model(**self.model_inputs(batch), use_cache=False).logits
            loss = self.custom(logits, batch["labels"], batch)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise LmforgeError("the custom loss function must return a scalar tensor (the mean loss)")
            return loss * batch["n_items"]
        if not self.chunked or not plain_head(model):
            logits = model(**self.model_inputs(batch), use_cache=False).logits[:, :-1]
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), self.shifted(batch).reshape(-1),
                                   ignore_index=IGNORE, reduction="sum")
        hidden, head = self.hidden_and_head(model, batch)
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        labels = self.shifted(batch).reshape(-1)
        return ChunkedLMHeadLoss.apply(h, head.weight, head.bias, labels, chunk_rows_for(head.weight.shape[0]))

    @torch.no_grad()
    def token_nll(self, model, batch: dict) -> torch.Tensor:
        """(B, L-1) negative log-likelihood of each target token (0 where not a target)."""
        labels = self.shifted(batch)
        if self.custom is not None or not self.chunked or not plain_head(model):
            logits = model(**self.model_inputs(batch), use_cache=False).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
            return nll
        hidden, head = self.hidden_and_head(model, batch)
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        flat = labels.reshape(-1)
        out = torch.zeros(flat.shape, dtype=torch.float32, device=h.device)
        step = chunk_rows_for(head.weight.shape[0])
        w = head.weight.float()
        for s in range(0, len(flat), step):
            lab = flat[s:s + step]
            logits = h[s:s + step].float() @ w.t()
            if head.bias is not None:
                logits = logits + head.bias.float()
            out[s:s + step] = F.cross_entropy(logits, lab, ignore_index=IGNORE, reduction="none")
        return out.reshape(labels.shape)

    def eval_step(self, model, batch: dict) -> dict:
        nll = self.token_nll(model, batch)
        targets = self.shifted(batch) != IGNORE
        out = {"nll": nll.sum(1).double(), "targets": targets.sum(1)}
        if self.per_token:
            out["token_nll"] = nll[targets]
            out["token_target"] = self.shifted(batch)[targets]
        if "n_words" in batch:
            out["words"] = batch["n_words"]
            out["bytes"] = batch["n_bytes"]
        if "n_ends" in batch:
            out["ends"] = batch["n_ends"]
        return out


def finalize(outputs: dict) -> dict:
    total_nll = float(outputs["nll"].double().sum())
    targets = int(outputs["targets"].sum())
    words = int(outputs["words"].sum()) if "words" in outputs else None
    nbytes = int(outputs["bytes"].sum()) if "bytes" in outputs else None
    ends = int(outputs["ends"].sum()) if "ends" in outputs else 0
    out = lm_metrics(total_nll, targets, words, nbytes, ends)
    out["n_blocks"] = int(outputs["targets"].numel())
    return out


def load_loss_function(spec: str) -> Callable:
    """train.loss_function: 'module:function' (module importable, or a .py file in the current folder)."""
    return load_function(spec, "train.loss_function", "loss_function: my_losses:weighted_ce")


# ----------------------------------------------------------------------------------- probes
@torch.no_grad()
def probe_packed_attention(model, pad_id: int) -> str:
    """Check that restarting position ids keep attention inside each document; else use a 4-D mask.

    Compares the logits of a short document alone with its logits when packed after another one.
    """
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, vocab, (5,), generator=g)
    b = torch.randint(0, vocab, (6,), generator=g)
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        alone = model(input_ids=b[None].to(dev), use_cache=False).logits[0]
        packed_ids = torch.cat([a, b])[None].to(dev)
        pos = torch.cat([torch.arange(5), torch.arange(6)])[None].to(dev)
        loss = CausalLMLoss()
        for mode in ("position_ids", "mask4d"):
            loss.attention = mode
            try:
                got = model(**loss.model_inputs({"input_ids": packed_ids, "position_ids": pos}), use_cache=False).logits[0, 5:]
            except Exception:  # a model that takes neither; fall through to the next mode
                continue
            if torch.allclose(got.float(), alone.float(), atol=1e-4, rtol=1e-4):
                return mode
    finally:
        model.train(was)
    raise LmforgeError(f"packing is not supported for {type(model).__name__}: its attention cannot be kept inside "
                       "documents", "set data.packing: truncate")


def plain_head(model) -> bool:
    """The output layer is a plain Linear whose weight is what it computes with. A PEFT wrapper (LoRA's trainable
    tokens or modules_to_save on the head) is not: its forward must run, so the chunked loss steps aside."""
    head = getattr(model, "module", model).get_output_embeddings()
    return isinstance(head, torch.nn.Linear)


def probe_chunked_loss(model) -> bool:
    """True when the chunked head+loss equals the model's own logits' loss (and its gradient)."""
    vocab = model.get_input_embeddings().weight.shape[0]
    head = model.get_output_embeddings()
    cfg = model.config
    if head is None or not isinstance(head, torch.nn.Linear) or getattr(cfg, "final_logit_softcapping", None) \
            or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0) or getattr(cfg, "logits_scaling", None):
        return False
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (1, 7), generator=g).to(next(model.parameters()).device)
    batch = {"input_ids": ids, "labels": ids.clone()}
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = CausalLMLoss(chunked=False)(model, batch)
            chunked = CausalLMLoss(chunked=True)(model, batch)
    except Exception:
        return False
    finally:
        model.train(was)
    return bool(torch.allclose(full, chunked, rtol=1e-4, atol=1e-4))

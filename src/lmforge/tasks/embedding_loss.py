"""The bi-encoder's pieces: pooling, the in-batch contrastive loss (multiple-negatives ranking / InfoNCE), matryoshka
dimensions, and the cached (GradCache) variant that fits a large contrastive batch in the memory of a small one.

The loss of a batch of B (query, positive[, negatives]) rows: every query is scored against every document of the
batch (the B positives, then all the negatives) by cosine similarity x `scale`; cross-entropy with its own positive
as the target, summed over queries:

    loss = sum_i [ -scale cos(q_i, d_i) + log sum_j exp(scale cos(q_i, c_j)) ]

Duplicates: a candidate whose text equals query i's positive (the same document twice in a batch, or a negative
that is some query's positive) is not a negative of query i: it is masked out of its softmax (the positive itself
stays). sentence-transformers avoids such batches with a sampler (NoDuplicatesBatchSampler); masking keeps
lmforge's length-grouped batches and drops only the false negatives.

The cached variant (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup";
sentence-transformers' CachedMultipleNegativesRankingLoss does the same): embed the batch in chunks without a graph,
compute the loss and its gradient with respect to the embeddings, then, when the training loop calls backward,
redo each chunk with a graph and push that cached gradient through it. Each chunk's RNG state is replayed, so
dropout is the same in both passes; the gradients equal the plain loss's when the chunks see the same dropout (no
dropout, or one chunk).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

POOLINGS = ("mean", "cls", "max", "lasttoken")


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per text from token vectors [n, length, dim] and the attention mask [n, length]."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
    if mode == "lasttoken":  # the last real token (right padding)
        last = mask.sum(1).long().clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}")


def encode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool,
           token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Embeddings [n, dim] of a padded batch of texts (trailing all-pad columns dropped first)."""
    width = int(attention_mask.sum(1).max()) if attention_mask.numel() else 0
    input_ids, attention_mask = input_ids[:, :max(width, 1)], attention_mask[:, :max(width, 1)]
    extra = {"token_type_ids": token_type_ids[:, :max(width, 1)]} if token_type_ids is not None else {}
    hidden = model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
    emb = pool(hidden, attention_mask, pooling)
    return F.normalize(emb, dim=-1) if normalize else emb


def in_batch_loss(q: torch.Tensor, cands: torch.Tensor, pos_keys: torch.Tensor, cand_keys: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """Summed multiple-negatives ranking loss: query i's positive is candidate i; candidates with the same text as
    its positive (other than i) are masked out."""
    sim = F.normalize(q.float(), dim=-1) @ F.normalize(cands.float(), dim=-1).T * scale
    n = q.shape[0]
    same = cand_keys[None, :] == pos_keys[:, None]
    same[torch.arange(n), torch.arange(n)] = False
    sim = sim.masked_fill(same, float("-inf"))
    return F.cross_entropy(sim, torch.arange(n, device=sim.device), reduction="sum")


def matryoshka_loss(q: torch.Tensor, cands: torch.Tensor, pos_keys, cand_keys, scale: float,
                    dims: Optional[Sequence[int]], weights: Optional[Sequence[float]]) -> torch.Tensor:
    """in_batch_loss on the full embeddings, or the weighted sum over the leading `dims` of them."""
    if not dims:
        return in_batch_loss(q, cands, pos_keys, cand_keys, scale)
    weights = weights or [1.0] * len(dims)
    return sum(w * in_batch_loss(q[:, :d], cands[:, :d], pos_keys, cand_keys, scale) for d, w in zip(dims, weights))


class _RngState:
    """The CPU (and CUDA) RNG state at one point, to replay a chunk's dropout."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def cached_loss(embed_chunk: Callable[[slice], torch.Tensor], n_texts: int, chunk: int,
                loss_of: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> torch.Tensor:
    """GradCache: the loss of embeddings computed chunk by chunk with no graph; its backward re-embeds each chunk
    with a graph and sends the cached embedding gradient through it (scaled by the gradient the loop gives)."""
    slices = [slice(i, min(i + chunk, n_texts)) for i in range(0, n_texts, chunk)]
    states, reps = [], []
    with torch.no_grad():
        for s in slices:
            states.append(_RngState(device))
            reps.append(embed_chunk(s).detach().requires_grad_())
    after = _RngState(device)
    with torch.enable_grad():
        loss = loss_of(torch.cat(reps))
        grads = torch.autograd.grad(loss, reps)
    out = loss.detach().requires_grad_()

    def backward_hook(grad_out: torch.Tensor) -> None:
        with torch.enable_grad():
            for s, state, g in zip(slices, states, grads):
                state.restore()
                emb = embed_chunk(s)
                (emb * (g * grad_out).to(emb.dtype)).sum().backward()
        after.restore()
    out.register_hook(backward_hook)
    return out

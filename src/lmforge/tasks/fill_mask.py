"""Fill-mask with a loaded masked LM: the top-k tokens (with probabilities) at every mask of a text.

Write the model's own mask token, or either common spelling ([MASK] or <mask>): both are
translated to the model's. Each mask gets its own candidates (predicted jointly from the same
input); `filled` is the text with every mask replaced by its top candidate. Used by the masked-lm
task for its samples, by `lmforge fill-mask` and by the server.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch

from ..data.batching import eval_batches, pad_sequences
from ..errors import LmforgeError
from ..models.load import resolve_block_size

log = logging.getLogger("lmforge")

MASK_SPELLINGS = ("[MASK]", "<mask>")


def translate_masks(text: str, mask_token: str) -> str:
    for spelling in MASK_SPELLINGS:
        if spelling != mask_token:
            text = text.replace(spelling, mask_token)
    return text


@torch.no_grad()
def fill_mask_with(model, tokenizer, texts: Sequence[str], top_k: int = 5, batch_size: int = 32,
                   where: Optional[Sequence[str]] = None) -> list[dict]:
    """Top-k candidates at each mask of each text, for a loaded model and tokenizer."""
    if top_k <= 0:
        raise LmforgeError(f"top-k must be positive, got {top_k}")
    mask = tokenizer.mask_token
    if mask is None:
        raise LmforgeError("this model's tokenizer has no mask token, so it cannot fill masks",
                           "use a masked language model (BERT, RoBERTa, DistilBERT, a masked-lm run)")
    prepared = [translate_masks(t, mask) for t in texts]
    limit = resolve_block_size(None, model.config, tokenizer)
    enc = tokenizer(prepared, truncation=True, max_length=limit)["input_ids"]
    results: list[Optional[dict]] = [None] * len(texts)
    spellings = ' or '.join(dict.fromkeys((mask,) + MASK_SPELLINGS))
    for i, ids in enumerate(enc):
        if tokenizer.mask_token_id not in ids:
            label = where[i] if where else f"text {i + 1}"
            if where is None:  # texts given one by one: each is wanted, so say which one is wrong
                raise LmforgeError(f"{label} has no mask token: {texts[i][:80]!r}",
                                   f"write {spellings} where a word should be filled in")
            # a row of a file: reported in its result and counted, the other rows still filled
            results[i] = {"text": texts[i], "masks": [], "filled": None, "error": f"no mask token ({spellings})"}
    bad = sum(r is not None for r in results)
    if bad:
        log.warning("%d of %d rows have no mask token and were skipped (their results carry an 'error')",
                    bad, len(texts))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    k = min(top_k, model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else top_k)
    todo = [i for i in range(len(texts)) if results[i] is None]
    for batch in eval_batches([len(enc[i]) for i in todo], batch_size):
        idx = [todo[b] for b in batch]
        rows = [enc[i] for i in idx]
        ids = pad_sequences(rows, tokenizer.pad_token_id).to(device)
        attn = pad_sequences([[1] * len(r) for r in rows], 0).to(device)
        probs = torch.softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
        for j, i in enumerate(idx):
            positions = (ids[j] == tokenizer.mask_token_id).nonzero().flatten().tolist()
            masks, filled = [], ids[j, : len(rows[j])].clone()
            for n, pos in enumerate(positions):
                top = torch.topk(probs[j, pos], k)
                cands = [{"token": tokenizer.decode([int(t)]).strip(), "token_id": int(t), "score": float(s)}
                         for s, t in zip(top.values, top.indices)]
                masks.append({"mask": n, "candidates": cands})
                filled[pos] = top.indices[0]
            results[i] = {"text": texts[i], "masks": masks,
                          "filled": tokenizer.decode(filled.tolist(), skip_special_tokens=True)}
    model.train(was_training)
    return results

"""Fill-mask: the top-k tokens (with probabilities) at every mask of a text.

    lmforge fill-mask runs/mlm "The company reported a [MASK] in profits."
    lmforge fill-mask runs/mlm --input sentences.txt --output filled.jsonl --top-k 10

Write the model's own mask token, or either common spelling ([MASK] or <mask>): both are
translated to the model's. Each mask gets its own candidates (predicted jointly from the same
input); `filled` is the text with every mask replaced by its top candidate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch

from .errors import LmforgeError

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
    from .data.batching import eval_batches, pad_sequences

    if top_k <= 0:
        raise LmforgeError(f"top-k must be positive, got {top_k}")
    mask = tokenizer.mask_token
    if mask is None:
        raise LmforgeError("this model's tokenizer has no mask token, so it cannot fill masks",
                           "use a masked language model (BERT, RoBERTa, DistilBERT, a masked-lm run)")
    prepared = [translate_masks(t, mask) for t in texts]
    limit = min(getattr(model.config, "max_position_embeddings", 512) or 512, tokenizer.model_max_length or 512, 512)
    enc = tokenizer(prepared, truncation=True, max_length=limit)["input_ids"]
    for i, ids in enumerate(enc):
        if tokenizer.mask_token_id not in ids:
            label = where[i] if where else f"text {i + 1}"
            raise LmforgeError(f"{label} has no mask token: {texts[i][:80]!r}",
                               f"write {' or '.join(dict.fromkeys((mask,) + MASK_SPELLINGS))} where a word should be filled in")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    k = min(top_k, model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else top_k)
    results: list[Optional[dict]] = [None] * len(texts)
    for idx in eval_batches([len(x) for x in enc], batch_size):
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


def read_texts_file(path: str, text_column: Optional[str] = None) -> list[str]:
    """Texts from a .txt file (one per line) or a csv/tsv/jsonl/json/parquet text column."""
    from .data import sources
    p = Path(path)
    if not p.exists():
        raise LmforgeError(f"input file not found: {path}", "check the path")
    if p.suffix.lower() in (".txt", ".text"):
        return [line for line in sources.read_text_file(p).splitlines() if line.strip()]
    df = sources.read_table(path)
    col = sources.pick_column(df, text_column, sources.TEXT_NAMES, "text", path, "--text-column")
    return df[col].astype(str).tolist()


def fill_mask(model_dir: Path, texts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
              output: Optional[str] = None, top_k: int = 5, batch_size: int = 32,
              text_column: Optional[str] = None) -> list[dict]:
    """Load a masked LM (run folder, model folder or alias) and fill the masks of texts or a file."""
    from .infer import inference_device, write_jsonl
    from .tasks.masked_lm import head_note, load_masked_lm

    where = None
    if input_file:
        texts = read_texts_file(input_file, text_column)
        where = [f"{input_file} row {i + 1}" for i in range(len(texts))]
    if not texts:
        raise LmforgeError("no texts to fill", "give texts after the model, or --input FILE")
    model, tokenizer, missing = load_masked_lm(Path(model_dir))
    note = head_note(model, missing, str(model_dir))
    if note:
        log.warning("%s Its predictions are not meaningful until it is trained (lmforge train with task: masked-lm).",
                    note.split(", so the perplexity")[0] + ".")
    model.to(inference_device())
    rows = fill_mask_with(model, tokenizer, list(texts), top_k=top_k, batch_size=batch_size, where=where)
    if output:
        write_jsonl(output, rows)
    return rows

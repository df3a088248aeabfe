"""Classify texts with a trained classifier (batched, length-sorted), and write predictions to a file.

    lmforge predict runs/sentiment-minilm "great coffee" "stale and bland"
    lmforge predict runs/sentiment-minilm --input reviews.csv --output predictions.jsonl
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
from rich.progress import Progress

from ..data.batching import eval_batches
from ..errors import LmforgeError
from ..fs import check_output_file, write_jsonl
from ..models.load import resolve_block_size
from ..runtime import inference_device
from ..tasks import classification
from .inputs import read_ids, read_texts, with_ids

log = logging.getLogger("lmforge")


@torch.no_grad()
def classify(model_dir: Path, texts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
             output: Optional[str] = None, batch_size: int = 64, text_column: Optional[str] = None,
             text_pair_column: Optional[str] = None, pairs: Optional[Sequence[str]] = None,
             progress: bool = True, model_and_tokenizer=None, allow_untrained: bool = False) -> list[dict]:
    """Label and probabilities for each text, in input order."""
    if output:
        check_output_file(output, "--output")
    if input_file:
        texts, pairs = read_texts(input_file, text_column, pair_column=text_pair_column, detect_pairs=True)
    if not texts:
        raise LmforgeError("no texts to classify", "give texts as arguments or --input FILE")
    model, tokenizer = model_and_tokenizer or classification.TASK.load_for_use(model_dir, allow_untrained)
    device = inference_device()
    model.to(device)
    max_length = resolve_block_size(None, model.config, tokenizer, "data.max_length")
    # an empty text (a blank cell of an input file) gets a result that says so; the others are classified
    results: list[Optional[dict]] = [None] * len(texts)
    for i, t in enumerate(texts):
        if not str(t).strip():
            results[i] = {"text": t, **({"text_pair": pairs[i]} if pairs else {}), "label": None, "score": None,
                          "probabilities": None, "error": "empty text"}
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) < len(texts):
        log.warning("%d of %d texts are empty and were skipped (their results carry an 'error')",
                    len(texts) - len(todo), len(texts))
    enc = tokenizer([texts[i] for i in todo], [pairs[i] for i in todo] if pairs else None, truncation=True,
                    max_length=max_length) if todo else {"input_ids": []}
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    rows = [{k: enc[k][j] for k in keys} for j in range(len(todo))]
    collate = classification.make_collate(tokenizer.pad_token_id)
    id2label = model.config.id2label
    batches = [[todo[j] for j in b] for b in eval_batches([len(r["input_ids"]) for r in rows], batch_size)]
    rows_of = dict(zip(todo, rows))
    with Progress(disable=not progress or len(batches) < 2, transient=True) as bar:
        task = bar.add_task("classify", total=len(rows))
        for idx in batches:
            batch = collate([rows_of[i] for i in idx])
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            probs = torch.softmax(model(**inputs).logits.float(), -1).cpu()
            for j, i in enumerate(idx):
                p = probs[j].tolist()
                best = int(probs[j].argmax())
                results[i] = {"text": texts[i], **({"text_pair": pairs[i]} if pairs else {}),
                              "label": id2label[best], "score": p[best],
                              "probabilities": {id2label[k]: round(v, 6) for k, v in enumerate(p)}}
            bar.advance(task, len(idx))
    results = with_ids(results, read_ids(input_file) if input_file else None)
    if output:
        write_jsonl(output, results)
    return results

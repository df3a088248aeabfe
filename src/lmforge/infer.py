"""Use a trained model: classify texts (batched, length-sorted) and write predictions to a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from .errors import LmforgeError


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def read_inputs(input_file: str, text_column: Optional[str], text_pair_column: Optional[str]):
    """Texts (and optional pairs) from a csv/tsv/jsonl/json/parquet/txt file."""
    from .data import sources
    df = sources.read_table(input_file)
    col = sources.pick_column(df, text_column, sources.TEXT_NAMES, "text", input_file, "--text-column")
    pair = sources.pick_column(df, text_pair_column, sources.PAIR_NAMES, "text pair", input_file,
                               "--text-pair-column") if text_pair_column else None
    texts = df[col].astype(str).tolist()
    pairs = df[pair].astype(str).tolist() if pair else None
    return texts, pairs


def write_jsonl(path: str, rows: list[dict]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out)


@torch.no_grad()
def classify(model_dir: Path, texts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
             output: Optional[str] = None, batch_size: int = 64, text_column: Optional[str] = None,
             text_pair_column: Optional[str] = None, pairs: Optional[Sequence[str]] = None,
             progress: bool = True, model_and_tokenizer=None) -> list[dict]:
    """Label and probabilities for each text, in input order."""
    from rich.progress import Progress

    from .data.batching import eval_batches
    from .tasks.classification import load_classifier, make_collate

    if input_file:
        texts, pairs = read_inputs(input_file, text_column, text_pair_column)
    if not texts:
        raise LmforgeError("no texts to classify", "give texts as arguments or --input FILE")
    model, tokenizer = model_and_tokenizer or load_classifier(model_dir)
    device = inference_device()
    model.to(device)
    max_length = min(getattr(model.config, "max_position_embeddings", 512) or 512, 512)
    enc = tokenizer(list(texts), list(pairs) if pairs else None, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    rows = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    collate = make_collate(tokenizer.pad_token_id)
    id2label = model.config.id2label
    results: list[Optional[dict]] = [None] * len(rows)
    batches = eval_batches([len(r["input_ids"]) for r in rows], batch_size)
    with Progress(disable=not progress or len(batches) < 2, transient=True) as bar:
        task = bar.add_task("classify", total=len(rows))
        for idx in batches:
            batch = collate([rows[i] for i in idx])
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            probs = torch.softmax(model(**inputs).logits.float(), -1).cpu()
            for j, i in enumerate(idx):
                p = probs[j].tolist()
                best = int(probs[j].argmax())
                results[i] = {"text": texts[i], **({"text_pair": pairs[i]} if pairs else {}),
                              "label": id2label[best], "score": p[best],
                              "probabilities": {id2label[k]: round(v, 6) for k, v in enumerate(p)}}
            bar.advance(task, len(idx))
    if output:
        write_jsonl(output, results)
    return results

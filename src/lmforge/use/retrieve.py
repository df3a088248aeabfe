"""Embed texts with an embedding model, and rerank documents for a query with a reranker.

    lmforge embed runs/embedding-minilm-kjv-web "In the beginning" "Jesus wept."
    lmforge embed runs/embedding-minilm-kjv-web --input texts.txt --output vectors.jsonl
    lmforge rerank runs/reranker-minilm-kjv-web --query "who wept?" --documents verses.txt --top-n 5

The same functions answer the server's /v1/embeddings and /v1/rerank, so the CLI, the API and the server give the
same numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..data.batching import eval_batches
from ..errors import LmforgeError
from ..fs import check_output_file, write_jsonl
from ..models.load import resolve_block_size
from ..runtime import inference_device
from ..tasks import embedding, reranker
from .inputs import read_ids, read_texts, with_ids

DOCUMENT_NAMES = ("document", "documents", "text", "passage", "content", "body")


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 32,
                dimensions: Optional[int] = None) -> list[list[float]]:
    """The embeddings of texts, in input order (length-grouped batches); `dimensions` keeps the leading ones
    (matryoshka), renormalised when the model normalises."""
    spec = model.embedding_spec
    device = next(model.parameters()).device
    enc = tokenizer(list(texts), truncation=True, max_length=spec.max_length)["input_ids"]
    out: list[Optional[list[float]]] = [None] * len(enc)
    collate = embedding.make_collate(tokenizer.pad_token_id)
    for idx in eval_batches([len(x) for x in enc], batch_size):
        batch = collate([{"input_ids": enc[i], "role": 0, "idx": i} for i in idx])
        emb = embedding.encode(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                               spec.pooling, False).float()
        if dimensions:
            emb = emb[:, :dimensions]
        if spec.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        for j, i in enumerate(idx):
            out[i] = emb[j].cpu().tolist()
    return out  # type: ignore[return-value]


@torch.no_grad()
def rerank_scores(model, tokenizer, query: str, documents: Sequence[str], batch_size: int = 32) -> list[float]:
    """sigmoid(logit) of each (query, document) pair, in document order."""
    device = next(model.parameters()).device
    max_length = resolve_block_size(None, model.config, tokenizer, "data.max_length")
    enc = tokenizer([query] * len(documents), list(documents), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    rows = [{k: [enc[k][i]] for k in keys} for i in range(len(documents))]
    collate = reranker.make_collate(tokenizer.pad_token_id)
    out: list[float] = [0.0] * len(rows)
    for idx in eval_batches([len(r["input_ids"][0]) for r in rows], batch_size):
        batch = collate([{**rows[i], "qid": 0, "did": i, "rank": i} for i in idx])
        logits = reranker.scores(model, {k: v.to(device) for k, v in batch.items()
                                                    if k in ("input_ids", "attention_mask", "token_type_ids")})
        for j, i in enumerate(idx):
            out[i] = 1.0 / (1.0 + math.exp(-float(logits[j])))
    return out


def embed(model_dir: Path, texts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
          output: Optional[str] = None, batch_size: int = 32, text_column: Optional[str] = None,
          dimensions: Optional[int] = None) -> list[dict]:
    """{text, embedding} for each text or row of a file (an id column carried over)."""
    if output:
        check_output_file(output, "--output")
    if input_file:
        texts = read_texts(input_file, text_column)[0]
    texts = list(texts or [])
    if not texts:
        raise LmforgeError("no texts to embed", "give texts after the model, or --input FILE")
    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise LmforgeError(f"text {empty[0] + 1} is empty", "remove empty texts (or lines) from the input")
    model, tokenizer = embedding.TASK.load_for_use(Path(model_dir))
    width = int(model.config.hidden_size)
    if dimensions is not None and not 0 < dimensions <= width:
        raise LmforgeError(f"--dimensions {dimensions} is outside 1..{width}, this model's embedding size")
    model.to(inference_device())
    vectors = embed_texts(model, tokenizer, texts, batch_size, dimensions)
    rows = with_ids([{"text": t, "embedding": v} for t, v in zip(texts, vectors)],
                    read_ids(input_file) if input_file else None)
    if output:
        write_jsonl(output, rows)
    return rows


def rerank(model_dir: Path, query: str, documents: Optional[Sequence[str]] = None, documents_file: Optional[str] = None,
           top_n: Optional[int] = None, output: Optional[str] = None, text_column: Optional[str] = None,
           batch_size: int = 32, allow_untrained: bool = False) -> list[dict]:
    """The documents ranked by relevance to the query, best first: {index, relevance_score, document}."""
    if output:
        check_output_file(output, "--output")
    if not query or not query.strip():
        raise LmforgeError("the query is empty", 'give --query "..."')
    if documents_file:
        documents = read_texts(documents_file, text_column, names=DOCUMENT_NAMES, what="document")[0]
    documents = list(documents or [])
    if not documents:
        raise LmforgeError("no documents to rerank", "give --documents FILE (one document a line, or a table)")
    model, tokenizer = reranker.TASK.load_for_use(Path(model_dir), allow_untrained)
    model.to(inference_device())
    scores = rerank_scores(model, tokenizer, query, documents, batch_size)
    order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))[:top_n or len(documents)]
    rows = [{"index": i, "relevance_score": scores[i], "document": documents[i]} for i in order]
    if output:
        write_jsonl(output, rows)
    return rows

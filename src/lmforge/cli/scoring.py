"""The commands that score with a trained model: `embed` (embedding models), `rerank` (rerankers), `score` (reward
models). Registered on the one Typer app (cli/__init__.py imports this module)."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from ..errors import LmforgeError
from .app import _api, app
from .usage import console


@app.command()
def embed(model: str = typer.Argument(..., help="Embedding run, model folder or alias (any sentence-transformers folder)."),
          texts: Optional[List[str]] = typer.Argument(None, help="Texts to embed."),
          input: Optional[str] = typer.Option(None, "--input", "-i", help="txt (one text a line), csv, jsonl."),
          output: Optional[str] = typer.Option(None, "--output", "-o", help="Write {text, embedding} rows as jsonl."),
          text_column: Optional[str] = typer.Option(None, "--text-column"),
          dimensions: Optional[int] = typer.Option(None, "--dimensions", min=1, help="Keep the leading N dimensions (matryoshka)."),
          batch_size: int = typer.Option(32, "--batch-size", min=1)):
    """Embed texts: one vector per text (JSON lines on stdout, or --output); two or more texts also print their
    cosine similarities."""
    api = _api()
    if not texts and not input:
        raise LmforgeError("nothing to embed", 'give texts after the model ("a text" "another") or --input FILE')
    rows = api.embed(model, texts=texts or None, input_file=input, output=output, batch_size=batch_size,
                     text_column=text_column, dimensions=dimensions)
    if output:
        console.print(f"wrote {len(rows)} embeddings ({len(rows[0]['embedding'])} dimensions) to {output}")
        return
    for r in rows:
        print(json.dumps(r, ensure_ascii=False))
    if 1 < len(rows) <= 20:
        import numpy as np
        m = np.array([r["embedding"] for r in rows])
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        sims = m @ m.T
        console.print("cosine similarities:", markup=False)
        for i, r in enumerate(rows):
            console.print(f"  [{i}] " + " ".join(f"{x:6.3f}" for x in sims[i]) + f"  {r['text'][:50]}", markup=False)


@app.command()
def rerank(model: str = typer.Argument(..., help="Reranker run or model folder."),
           query: str = typer.Option(..., "--query", "-q", help="The query."),
           documents: str = typer.Option(..., "--documents", "-d", help="Documents: txt (one a line), csv, jsonl."),
           top_n: Optional[int] = typer.Option(None, "--top-n", "-n", min=1, help="Keep the N best."),
           output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the ranking as jsonl."),
           text_column: Optional[str] = typer.Option(None, "--text-column"),
           batch_size: int = typer.Option(32, "--batch-size", min=1),
           allow_untrained: bool = typer.Option(False, "--allow-untrained", help="Use a scoring head that was never trained.")):
    """Rank documents by relevance to a query: {index, relevance_score, document}, best first."""
    api = _api()
    rows = api.rerank(model, query, documents_file=documents, top_n=top_n, output=output, text_column=text_column,
                      batch_size=batch_size, allow_untrained=allow_untrained)
    if output:
        console.print(f"wrote {len(rows)} ranked documents to {output}")
        return
    for r in rows:
        print(json.dumps(r, ensure_ascii=False))


@app.command()
def score(model: str = typer.Argument(..., help="Reward run or model folder."),
          texts: Optional[List[str]] = typer.Argument(None, help="Texts to score (as written)."),
          input: Optional[str] = typer.Option(None, "--input", "-i", help="jsonl/csv/parquet of conversations (messages), prompt + completion, or texts; or a txt file."),
          output: Optional[str] = typer.Option(None, "--output", "-o", help="Write {text | messages, score} rows as jsonl."),
          batch_size: int = typer.Option(16, "--batch-size", min=1),
          allow_untrained: bool = typer.Option(False, "--allow-untrained", help="Use a reward head that was never trained.")):
    """Score texts or conversations with a reward model: one reward each (higher = more like the preferred replies)."""
    api = _api()
    if not texts and not input:
        raise LmforgeError("nothing to score", 'give texts after the model, or --input FILE')
    rows = api.score(model, texts=texts or None, input_file=input, output=output, batch_size=batch_size,
                     allow_untrained=allow_untrained)
    if output:
        console.print(f"wrote {len(rows)} scores to {output}")
        return
    for r in rows:
        print(json.dumps(r, ensure_ascii=False))

"""Query/document pairs, for embedding (bi-encoder) and reranker (cross-encoder) training.

Shapes, detected from the columns (case-insensitive; sentence-transformers' names work unchanged):
    anchor, positive[, negative | negative_1, negative_2, ... | negatives (a list)]
    query, positive[, negatives]       query, document | passage[, label | score]
    sentence1, sentence2, score        question, answer, score
A row becomes QueryDoc(query, document, negatives, score): `score` is the label of a (query, document)
row (1/0 for relevant/not, or a similarity), None for (query, positive) rows, where every other
document of a batch is a negative.

    rows = read_query_docs("pairs.jsonl", cfg)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from ..errors import LmforgeError
from . import sources
from .pipeline import DataKind

QUERY_NAMES = ("anchor", "query", "question", "sentence1", "text1")
DOC_NAMES = ("positive", "document", "passage", "answer", "sentence2", "text2", "pos")
SCORE_NAMES = ("score", "label", "labels", "relevance", "similarity")
RETRIEVAL_HINT = ("query/document data has anchor/positive[/negative...] or query/document[/label] or "
                  "sentence1/sentence2/score columns")


@dataclass
class QueryDoc:
    query: str
    document: str
    negatives: list[str] = field(default_factory=list)
    score: Optional[float] = None


def _text(value, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LmforgeError(f"{where}: column '{column}' must be non-empty text, got "
                           f"{'empty text' if isinstance(value, str) else type(value).__name__}",
                           "remove or fill the row")
    return value


def _negatives(row: dict, cols: list[str], where: str) -> list[str]:
    out = []
    for c in cols:
        value = row[c]
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                raise LmforgeError(f"{where}: column '{c}' is not a valid JSON list of texts", RETRIEVAL_HINT) from None
        if hasattr(value, "tolist"):
            value = value.tolist()
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        for v in value if isinstance(value, list) else [value]:
            out.append(_text(v, where, c))
    return out


def _score(value, where: str, column: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise LmforgeError(f"{where}: column '{column}' must be a number, got {value!r}", RETRIEVAL_HINT) from None
    if not math.isfinite(score):
        raise LmforgeError(f"{where}: column '{column}' is {score}", "give a finite relevance score")
    return score


@dataclass
class Columns:
    query: str
    document: str
    negatives: list[str]
    score: Optional[str]


def columns_of(df: pd.DataFrame, source: str) -> Columns:
    """The query, document, negative and (optional) score columns of a table."""
    lower = {str(c).lower(): str(c) for c in df.columns}
    query = next((lower[n] for n in QUERY_NAMES if n in lower), None)
    doc = next((lower[n] for n in DOC_NAMES if n in lower and lower[n] != query), None)
    if query is None or doc is None:
        raise LmforgeError(f"{source}: no query/document columns found (columns: {', '.join(map(str, df.columns))})",
                           RETRIEVAL_HINT)
    negatives = [c for low, c in lower.items() if low.startswith("negative") or low in ("negatives", "neg")]
    score = next((lower[n] for n in SCORE_NAMES if n in lower), None)
    return Columns(query, doc, negatives, score)


def read_query_docs(source: str, cfg, split: str = "train") -> list[QueryDoc]:
    """The query/document rows of a data source, validated row by row."""
    df = sources.read_table(source, cfg.data.format, split)
    cols = columns_of(df, source)
    query, doc, neg_cols, score_col = cols.query, cols.document, cols.negatives, cols.score
    out = []
    for i, row in enumerate(df.to_dict("records")):
        where = f"{source} row {i + 1}"
        out.append(QueryDoc(_text(row[query], where, query), _text(row[doc], where, doc),
                            _negatives(row, neg_cols, where),
                            _score(row[score_col], where, score_col) if score_col else None))
    if not out:
        raise LmforgeError(f"{source} has no rows", "add data")
    return out


KIND = DataKind("query/document pairs", "pair", read_query_docs)


# ----------------------------------------------------------------------------------- the search space
@dataclass
class Corpus:
    """Held-out rows as a retrieval problem: unique query texts, unique documents (positives and negatives of every
    row: the search space), and for each query the ids of its relevant documents."""
    queries: list[str]
    documents: list[str]
    relevant: list[set]
    # per query, the documents its rows list with a score, in row order (a reranker's own candidate list), or None
    listed: list[Optional[list[int]]] = field(default_factory=list)


def relevant_row(row: QueryDoc) -> bool:
    """A row whose document is relevant to its query: a (query, positive) pair, or a score above 0."""
    return row.score is None or row.score > 0


def corpus_of(rows: list[QueryDoc]) -> Corpus:
    """The retrieval problem of `rows`: identical texts are one query / one document (a query whose rows name several
    relevant documents has them all as relevant)."""
    q_ids: dict[str, int] = {}
    d_ids: dict[str, int] = {}
    relevant: list[set] = []
    scored: list[dict[int, float]] = []

    def doc(text: str) -> int:
        return d_ids.setdefault(text, len(d_ids))
    for r in rows:
        qi = q_ids.setdefault(r.query, len(q_ids))
        if qi == len(relevant):
            relevant.append(set())
            scored.append({})
        di = doc(r.document)
        if relevant_row(r):
            relevant[qi].add(di)
        if r.score is not None:
            scored[qi][di] = r.score
        for n in r.negatives:
            doc(n)
    listed = [list(s) if len(s) > 1 else None for s in scored]
    return Corpus(list(q_ids), list(d_ids), relevant, listed)

"""The config sections of the retrieval tasks: `embedding` (bi-encoder) and `reranker` (cross-encoder)."""

from __future__ import annotations

from typing import Literal, Optional

from .config_ranges import AT_LEAST_1, POSITIVE, Range, Section


class EmbeddingConfig(Section):
    RANGES = {"scale": POSITIVE, "mini_batch_size": AT_LEAST_1}
    pooling: Optional[Literal["mean", "cls", "max", "lasttoken"]] = None
    """embedding: how token vectors become one text vector; default: the model's sentence-transformers pooling (1_Pooling/config.json), else mean."""
    normalize: Optional[bool] = None
    """embedding: scale each embedding to length 1 (what the model outputs and serves); default: as the model's sentence-transformers modules (a Normalize module), else true."""
    scale: float = 20.0
    """embedding: the in-batch loss's inverse temperature: cosine similarities are multiplied by it before the softmax (sentence-transformers' MultipleNegativesRankingLoss uses 20)."""
    matryoshka_dims: Optional[list[int]] = None
    """embedding: also train truncated embeddings (e.g. [384, 256, 128, 64]): the loss is summed over these leading dimensions, each evaluated too."""
    matryoshka_weights: Optional[list[float]] = None
    """embedding: one weight per matryoshka dimension (default 1 each)."""
    mini_batch_size: Optional[int] = None
    """embedding: the cached (GradCache) loss: embed a batch in chunks of this many texts without keeping their activations, then redo each chunk with gradients; a large contrastive batch in the memory of a small one (same gradients)."""


class RerankerConfig(Section):
    RANGES = {"negatives": AT_LEAST_1, "candidates": Range(2)}
    loss: Literal["bce", "listwise"] = "bce"
    """reranker: binary cross-entropy on each (query, document) score, or a softmax over each query's list (its positive against its negatives)."""
    negatives: int = 3
    """reranker: negatives per query for rows that bring none ((query, positive) pairs), mined from the training documents."""
    mine: Literal["tfidf", "random"] = "tfidf"
    """reranker: how those negatives are mined: the most similar other documents by TF-IDF (hard negatives), or random ones (seeded)."""
    candidates: int = 20
    """reranker: evaluation reranks, for each held-out query, this many first-stage candidates from the held-out documents (TF-IDF; rows with their own labelled documents use those)."""

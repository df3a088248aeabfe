"""The scoring endpoints of `lmforge serve`: OpenAI-compatible POST /v1/embeddings for an embedding model,
POST /v1/rerank in the shape Cohere's and Jina's rerank APIs use (what rerank clients send) for a reranker, and
POST /v1/score for a reward model.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.embeddings.create(model="lmforge", input=["a text", "another"]).data[0].embedding

    curl -s localhost:8000/v1/rerank -H 'content-type: application/json' \\
         -d '{"query": "who wept?", "documents": ["Jesus wept.", "In the beginning..."], "top_n": 1}'

/v1/embeddings takes `input` (a text or a list of texts), `dimensions` (keep the leading N, matryoshka) and
`encoding_format` (float, or base64: little-endian float32, which the openai client asks for by default).
/v1/rerank takes `query`, `documents` (texts, or {"text": ...} objects), `top_n` and `return_documents`, and answers
`results`: [{index, relevance_score, document: {text}}], best first.
/v1/score takes `texts` (scored as written), `conversations` (message lists, rendered with the reward model's chat
template) or `prompt` + `completions` (each completion scored as the assistant's reply to the prompt), and answers
`scores`, one per input, in order.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from typing import Literal, Optional, Union

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from ..tasks.reward import Scorer, conversation
from .retrieve import embed_texts, rerank_scores
from .serve_limits import ApiError, Limits, ModelSlot


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `user` and other fields clients send are accepted and ignored
    input: Union[str, list[str], list[int], list[list[int]]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str


class RerankIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    query: str
    documents: list[Union[str, RerankDocument]]
    model: Optional[str] = None
    top_n: Optional[int] = Field(None, ge=1)
    return_documents: bool = True


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class ScoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: Optional[list[str]] = None
    conversations: Optional[list[list[Message]]] = None
    prompt: Optional[Union[str, list[Message]]] = None
    completions: Optional[list[str]] = None


def _score_items(req: ScoreIn, limits: Limits) -> list:
    given = [k for k in ("texts", "conversations", "completions") if getattr(req, k) is not None]
    if len(given) != 1 or (req.completions is not None) != (req.prompt is not None):
        raise ApiError(422, "give exactly one of 'texts', 'conversations', or 'prompt' with 'completions'",
                       "invalid_request")
    if req.texts is not None:
        return _texts(req.texts, limits, "texts")
    if req.completions is not None:
        _texts(req.completions, limits, "completions")
        prompt = req.prompt if isinstance(req.prompt, str) else [m.model_dump() for m in req.prompt]
        return [conversation(prompt, c) for c in req.completions]
    convs = [[m.model_dump() for m in c] for c in req.conversations]
    if not convs:
        raise ApiError(422, "'conversations' is empty", "invalid_request")
    if len(convs) > limits.max_texts:
        raise ApiError(413, f"{len(convs)} conversations in one request; at most {limits.max_texts}", "too_large")
    for i, c in enumerate(convs):
        if not c:
            raise ApiError(422, f"conversations[{i}] has no messages", "invalid_request")
        if sum(len(m["content"]) for m in c) > limits.max_chars:
            raise ApiError(413, f"conversations[{i}] has over {limits.max_chars} characters", "too_large")
    return convs


def _texts(value, limits: Limits, what: str) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise ApiError(422, f"'{what}' is empty", "invalid_request")
    if any(not isinstance(t, str) for t in texts):
        raise ApiError(422, f"'{what}' holds token ids; this server embeds texts (send strings)", "invalid_request")
    if len(texts) > limits.max_texts:
        raise ApiError(413, f"{len(texts)} texts in one request; at most {limits.max_texts}", "too_large")
    for i, t in enumerate(texts):
        if not t.strip():
            raise ApiError(422, f"{what}[{i}] is empty", "invalid_request")
        if len(t) > limits.max_chars:
            raise ApiError(413, f"{what}[{i}] has {len(t)} characters; at most {limits.max_chars}", "too_large")
    return texts


def _need(backend, endpoint: str) -> None:
    if backend.task.endpoint != endpoint:
        raise ApiError(400, f"this server runs a {backend.task.name} model, which {endpoint} cannot use "
                       f"(use {backend.task.endpoint})", "wrong_task")


def add_retrieval_endpoints(app: FastAPI, backend, slot: ModelSlot, limits: Limits, model_id: str) -> None:
    @app.post("/v1/embeddings")
    def embeddings(req: EmbeddingsIn):
        _need(backend, "/v1/embeddings")
        texts = _texts(req.input, limits, "input")
        width = int(backend.model.config.hidden_size)
        if req.dimensions is not None and req.dimensions > width:
            raise ApiError(422, f"dimensions {req.dimensions} is above this model's {width}", "invalid_request")
        vectors = slot.run(lambda: embed_texts(backend.model, backend.tokenizer, texts, 32, req.dimensions))
        tokens = sum(len(x) for x in backend.tokenizer(texts)["input_ids"])
        data = []
        for i, v in enumerate(vectors):
            emb = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if req.encoding_format == "base64" else v
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": req.model or model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/score")
    def score(req: ScoreIn):
        _need(backend, "/v1/score")
        items = _score_items(req, limits)
        t0 = time.perf_counter()
        scorer = Scorer(backend.model, backend.tokenizer, backend.reward_max_length())
        values = slot.run(lambda: scorer.score(items))
        return {"scores": values, "model": model_id, "elapsed_ms": round(1000 * (time.perf_counter() - t0), 1)}

    @app.post("/v1/rerank")
    def rerank(req: RerankIn):
        _need(backend, "/v1/rerank")
        _texts(req.query, limits, "query")
        docs = _texts([d if isinstance(d, str) else d.text for d in req.documents], limits, "documents")
        t0 = time.perf_counter()
        scores = slot.run(lambda: rerank_scores(backend.model, backend.tokenizer, req.query, docs))
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[:req.top_n or len(docs)]
        results = [{"index": i, "relevance_score": scores[i], **({"document": {"text": docs[i]}}
                                                                 if req.return_documents else {})} for i in order]
        return {"id": str(uuid.uuid4()), "model": req.model or model_id, "results": results,
                "meta": {"elapsed_ms": round(1000 * (time.perf_counter() - t0), 1)}}

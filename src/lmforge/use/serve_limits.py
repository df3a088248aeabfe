"""What `lmforge serve` accepts: per-request limits, the request schemas, the one-model queue
(ModelSlot), the API error type and JSON error body, and the request-body size middleware."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass
class Limits:
    """What one request may ask for."""
    max_body_bytes: int = 64 * 1024
    max_chars: int = 8000  # per text
    max_texts: int = 64  # per classify request
    max_new_tokens: int = 256
    max_top_k: int = 50  # fill-mask candidates
    max_queue: int = 16  # requests waiting for the model; more get 503


class ApiError(Exception):
    """A request the server refuses: HTTP status + a message for the client."""

    def __init__(self, status: int, message: str, kind: str = "bad_request"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class ModelSlot:
    """One loaded model and the lock that serialises its use; counts what waits."""

    def __init__(self, max_queue: int):
        self.lock = threading.Lock()
        self.max_queue = max_queue
        self._count_lock = threading.Lock()
        self.waiting = 0
        self.busy = 0
        self.max_busy_seen = 0
        self.served = 0

    def enter(self) -> None:
        with self._count_lock:
            if self.waiting >= self.max_queue:
                raise ApiError(503, f"the server is busy ({self.waiting} requests waiting); try again shortly", "busy")
            self.waiting += 1
        self.lock.acquire()
        with self._count_lock:
            self.waiting -= 1
            self.busy += 1
            self.max_busy_seen = max(self.max_busy_seen, self.busy)

    def leave(self) -> None:
        with self._count_lock:
            self.busy -= 1
            self.served += 1
        self.lock.release()

    def run(self, fn: Callable[[], Any]) -> Any:
        self.enter()
        try:
            return fn()
        finally:
            self.leave()


# ----------------------------------------------------------------------------------- requests
def valid_unicode(value):
    """A request's text (or list of texts) must encode as UTF-8: JSON allows a lone surrogate ("\\ud800"),
    which no tokenizer can encode."""
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("holds a lone surrogate (\\ud800-\\udfff), which is not valid Unicode text") from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _unicode(cls, value):
        return valid_unicode(value)


class ClassifyIn(_Strict):
    text: Optional[str] = Field(None, description="One text to classify.")
    texts: Optional[list[str]] = Field(None, description="Several texts (at most max_texts).")
    text_pair: Optional[str] = Field(None, description="Second text of a pair, for pair classification.")
    text_pairs: Optional[list[str]] = Field(None, description="Second texts, one per text.")


class GenerateIn(_Strict):
    prompt: str = Field(..., description="Text to continue.")
    max_new_tokens: int = Field(32, ge=1, description="Tokens to generate (capped by the server).")
    temperature: Optional[float] = Field(None, ge=0.0, le=10.0,
                                         description="Sampling temperature; 0 = greedy; none = greedy unless top_k/top_p.")
    top_k: Optional[int] = Field(None, ge=0, le=100000, description="Sample from the k likeliest tokens; 0 = off.")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass; 1 = off.")
    repetition_penalty: Optional[float] = Field(None, gt=0.0, le=10.0, description="1 = none.")
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1, description="Fix the sampling randomness.")
    chat: bool = Field(False, description="Wrap the prompt in the model's chat template.")
    stream: bool = Field(False, description="One JSON line per piece of text as it arrives.")


class FillMaskIn(_Strict):
    text: str = Field(..., description="Text with [MASK] (or the model's mask token) where words go.")
    top_k: int = Field(5, ge=1, description="Candidates per mask (capped by the server).")


# ----------------------------------------------------------------------------------- errors, body size
def _error_body(status: int, message: str, kind: str) -> dict:
    return {"error": {"status": status, "type": kind, "message": message}}


class _BodyLimit:
    """ASGI middleware: refuse request bodies over the limit (413) before anything reads them."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = f"request body over {self.limit} bytes"
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0 or size > self.limit:
                return await self._reply(send, 413 if size > self.limit else 400,
                                         too_big if size > self.limit else "bad Content-Length header",
                                         "too_large" if size > self.limit else "bad_request")
        seen = 0

        async def counted():  # chunked bodies have no Content-Length: count as they arrive
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    from fastapi import HTTPException
                    raise HTTPException(413, too_big)
            return message
        return await self.app(scope, counted, send)

    async def _reply(self, send, status: int, message: str, kind: str):
        body = json.dumps(_error_body(status, message, kind)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

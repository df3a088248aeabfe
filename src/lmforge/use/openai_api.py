"""OpenAI-compatible endpoints of `lmforge serve` for a causal-lm or sft model, so existing clients work
unchanged: POST /v1/chat/completions (messages, max_tokens, temperature, top_p, top_k, seed, stop; stream as
server-sent events ending with `data: [DONE]`) and GET /v1/models.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="lmforge", messages=[{"role": "user", "content": "Hello"}])
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Literal, Optional, Union

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..tasks.generation import encode_prompt
from .serve_limits import ApiError, Limits, ModelSlot, valid_unicode
from .streaming import GenerationStream, stream_generation


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content", mode="after")
    @classmethod
    def _unicode(cls, value):
        return valid_unicode(value)


class ChatCompletionIn(BaseModel):
    # extra fields that clients send (user, penalties, stream_options, ...) are accepted and ignored
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    stop: Optional[Union[str, list[str]]] = Field(None, description="Up to 4 strings; the reply ends before one.")
    messages: list[ChatMessageIn] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0, description="Not in OpenAI's API (vLLM's extension): 0 = off.")
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    stream: bool = False

    @field_validator("model", "stop", mode="after")
    @classmethod
    def _unicode(cls, value):
        return valid_unicode(value)

    @field_validator("stop", mode="after")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("a stop sequence must not be empty")
        return stops


def add_openai_endpoints(app: FastAPI, backend, slot: ModelSlot, limits: Limits, model_id: str) -> None:
    created = int(time.time())

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "lmforge"}]}

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatCompletionIn):
        if backend.task.endpoint != "/v1/generate":
            raise ApiError(400, f"this server runs a {backend.task.name} model; /v1/chat/completions needs a "
                           f"causal-lm or sft model (use {backend.task.endpoint})", "wrong_task")
        max_tokens = req.max_completion_tokens or req.max_tokens or min(128, limits.max_new_tokens)
        if max_tokens > limits.max_new_tokens:
            raise ApiError(422, f"max_tokens {max_tokens} is above this server's cap of {limits.max_new_tokens}",
                           "invalid_request")
        messages = [m.model_dump() for m in req.messages]
        for i, m in enumerate(messages):
            if len(m["content"]) > limits.max_chars:
                raise ApiError(413, f"messages[{i}] has {len(m['content'])} characters; this server accepts at most "
                               f"{limits.max_chars}", "too_large")
        params = {"prompt": messages, "max_new_tokens": max_tokens, "temperature": req.temperature,
                  "top_p": req.top_p, "top_k": req.top_k, "seed": req.seed, "stop": req.stop or []}
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": req.model or model_id}
        slot.enter()
        try:
            backend.check_prompt(params)
        except BaseException:
            slot.leave()
            raise
        if req.stream:
            stop = threading.Event()
            return GenerationStream(stream_generation(slot, backend, params, stop, sse_frame(reply)), stop,
                                    media_type="text/event-stream")
        try:
            out = backend.generate(params)
        finally:
            slot.leave()
        return completion(reply, out["completion"], backend, messages, max_tokens)


def _count(backend, text: str) -> int:
    return len(backend.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def completion(reply: dict, text: str, backend, messages: list[dict], max_tokens: int) -> dict:
    prompt_tokens = len(encode_prompt(backend.tokenizer, messages))
    n = _count(backend, text)
    return {**reply, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length" if n >= max_tokens else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}}


def sse_frame(reply: dict):
    """Server-sent events in the chat.completion.chunk shape: the role, each piece of text, the end, [DONE]."""
    sent_role = {"done": False}

    def event(delta: dict, finish: Optional[str]) -> str:
        chunk = {**reply, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return "data: " + json.dumps(chunk, ensure_ascii=False) + "\n\n"

    def frame(kind: str, value, elapsed_ms: float) -> bytes:
        out = ""
        if not sent_role["done"]:
            out += event({"role": "assistant", "content": ""}, None)
            sent_role["done"] = True
        if kind == "token":
            return (out + event({"content": value}, None)).encode()
        if kind == "done":
            return (out + event({}, "stop") + "data: [DONE]\n\n").encode()
        error = {"error": {"message": value, "type": "internal"}}
        return (out + "data: " + json.dumps(error) + "\n\n" + "data: [DONE]\n\n").encode()
    return frame

"""Serve a trained model over HTTP: JSON endpoints and a small web page to try it.

    lmforge serve runs/sentiment-minilm              # http://127.0.0.1:8000
    curl -s localhost:8000/v1/classify -d '{"text": "great coffee"}' -H 'content-type: application/json'

Endpoints: GET / (the playground page), GET /health, GET /info, POST /v1/classify,
POST /v1/generate (``"stream": true`` gives one JSON object per line as tokens arrive),
POST /v1/fill-mask, POST /v1/embeddings and /v1/rerank (use/retrieval_api.py). One model, one lock: concurrent requests wait their turn (up to
``max_queue`` waiting; more get 503), so memory never doubles. Request bodies, text lengths
and ``max_new_tokens`` are capped; mistakes get a 4xx JSON error ``{"error": {...}}``, never
a traceback.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Union

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import SamplingParams
from ..errors import LmforgeError
from ..models.load import context_length, resolve_model_dir
from ..runtime import VERSION, inference_device, quiet_libraries
from ..tasks import Task, generation, task_of
from ..tasks.fill_mask import fill_mask_with
from ..tasks.generation import encode_prompt
from .classify import classify
from .openai_api import add_openai_endpoints
from .retrieval_api import add_retrieval_endpoints
from .serve_limits import ApiError, ClassifyIn, FillMaskIn, GenerateIn, Limits, ModelSlot, _BodyLimit, _error_body
from .streaming import GenerationStream, Stopped, TokenSink, stream_generation

log = logging.getLogger("lmforge")

# ----------------------------------------------------------------------------------- backends
class Backend:
    """Loads the model for its task and answers requests (called under the slot's lock)."""

    def __init__(self, model_dir: Path, task: Task, allow_untrained: bool = False):
        self.model_dir, self.task = model_dir, task
        self.model, self.tokenizer = task.load_for_use(model_dir, allow_untrained)
        self.model.to(inference_device())
        self.model.eval()

    def check_prompt(self, params: dict) -> None:
        """Refuse prompts the model cannot continue before a stream starts (a 4xx, not a broken stream)."""
        ids = encode_prompt(self.tokenizer, params["prompt"], bool(params.get("chat")))
        limit = context_length(self.model.config)
        if limit and len(ids) >= limit:
            raise ApiError(413, f"the prompt is {len(ids)} tokens; this model's context is {limit} tokens",
                           "too_large")

    def generate(self, params: dict, on_token: Optional[Callable[[str], None]] = None,
                 stop: Optional[threading.Event] = None) -> dict:
        """Continue params["prompt"]; with on_token, call it with each piece of text as it comes."""
        plain = not params.get("chat") and isinstance(params["prompt"], str)  # plain prompts are echoed first
        stops = tuple(params.get("stop") or ())
        sink = TokenSink(on_token, stop, skip_first=plain, stops=stops) if on_token else None
        top_k = params.get("top_k") or None
        top_p = params.get("top_p") if params.get("top_p") not in (None, 1.0) else None
        if params.get("temperature") == 0:  # temperature 0 means greedy, whatever top-k / top-p say
            top_k = top_p = None
        try:
            sampling = SamplingParams(max_new_tokens=params["max_new_tokens"], temperature=params.get("temperature"),
                                      top_k=top_k, top_p=top_p, repetition_penalty=params.get("repetition_penalty"),
                                      seed=params.get("seed"), stop=stops)
            out = generation.generate_texts(self.model, self.tokenizer, [params["prompt"]], sampling,
                                            chat=bool(params.get("chat")), stream=sink)
            if sink is not None:
                sink.finish()
        except Stopped:
            if sink is not None and sink.hit_stop:  # a stop string: a normal end
                return {"completion": sink.text, "stop_string": True}
            return {"completion": sink.text if sink else "", "stopped": True}
        return {"completion": out[0][0], "greedy": not (params.get("temperature") or top_k or top_p)}

    def info(self) -> dict:
        cfg = getattr(self.model, "config", None)
        out: dict = {"task": self.task.name, "model_dir": str(self.model_dir), "endpoint": self.task.endpoint,
                     "view": self.task.playground,
                     "chat_template": bool(getattr(self.tokenizer, "chat_template", None))}
        if cfg is not None:
            out.update(model_type=cfg.model_type, architectures=list(cfg.architectures or []),
                       parameters=sum(p.numel() for p in self.model.parameters()))
        out.update(self.task.serve_info(self.model, self.tokenizer))
        return out

    def classify(self, texts: list[str], pairs: Optional[list[str]]) -> list[dict]:
        rows = classify(self.model_dir, texts=texts, pairs=pairs, progress=False, batch_size=32,
                        model_and_tokenizer=(self.model, self.tokenizer))
        return [{k: v for k, v in r.items() if k not in ("text", "text_pair")} for r in rows]

    def reward_max_length(self) -> int:
        """A reward model's text limit in tokens (texts keep their last this-many)."""
        from ..tasks.reward import max_length_of
        return max_length_of(self.model_dir, self.model, self.tokenizer)

    def fill_mask(self, text: str, top_k: int) -> dict:
        return fill_mask_with(self.model, self.tokenizer, [text], top_k=top_k)[0]


# ----------------------------------------------------------------------------------- app
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False




def create_app(model: Union[str, Path], limits: Optional[Limits] = None, backend: Optional[Backend] = None,
               allow_untrained: bool = False):
    """The FastAPI app serving one model (a run folder, model folder or built-in alias)."""
    limits = limits or Limits()
    if backend is None:
        quiet_libraries()
        model_dir = resolve_model_dir(model)
        backend = Backend(model_dir, task_of(model_dir), allow_untrained)
    slot = ModelSlot(limits.max_queue)
    # No /docs: Swagger UI loads its scripts from a CDN, and lmforge works offline. /openapi.json stays.
    app = FastAPI(title="lmforge", version=VERSION, docs_url=None, redoc_url=None)
    app.state.slot, app.state.backend, app.state.limits = slot, backend, limits
    _add_error_handlers(app)
    _add_info_endpoints(app, backend, slot, limits)
    _add_task_endpoints(app, backend, slot, limits)
    add_openai_endpoints(app, backend, slot, limits, model_id=Path(str(model)).name or str(model))
    add_retrieval_endpoints(app, backend, slot, limits, model_id=Path(str(model)).name or str(model))
    return _BodyLimit(app, limits.max_body_bytes)


def _add_error_handlers(app: FastAPI) -> None:
    """Errors are always JSON ({"error": {...}}), never a traceback."""
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(_error_body(e.status, e.message, e.kind), status_code=e.status)

    async def _http_error(request: Request, e: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(e.status_code, "bad_request")
        return JSONResponse(_error_body(e.status_code, str(e.detail), kind), status_code=e.status_code)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errs = e.errors()
        parts = []
        for err in errs[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            if err.get("type") == "json_invalid":
                parts.append(f"the body is not valid JSON (error at character {loc or '?'})")
            elif not loc and err.get("type") in ("model_attributes_type", "dict_type"):
                parts.append("the body must be a JSON object (send it with content-type: application/json)")
            else:
                parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        status = 400 if any(err.get("type") == "json_invalid" for err in errs) else 422
        return JSONResponse(_error_body(status, "; ".join(parts) or "invalid request", "invalid_request"),
                            status_code=status)

    @app.exception_handler(LmforgeError)
    async def _user_error(request: Request, e: LmforgeError):
        msg = e.message + (f" — {e.hint}" if e.hint else "")
        return JSONResponse(_error_body(400, msg, "bad_request"), status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("error serving %s", request.url.path)
        return JSONResponse(_error_body(500, f"internal error ({type(e).__name__}); see the server log", "internal"),
                            status_code=500)


def _add_info_endpoints(app: FastAPI, backend: Backend, slot: ModelSlot, limits: Limits) -> None:
    started = time.time()

    @app.get("/health")
    def health():
        return {"status": "ok", "task": backend.task.name, "uptime_s": round(time.time() - started, 1),
                "waiting": slot.waiting, "busy": slot.busy, "served": slot.served,
                "max_concurrent_seen": slot.max_busy_seen}

    @app.get("/info")
    def info():
        return {**backend.info(), "lmforge": VERSION, "limits": asdict(limits)}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(_static("index.html"))


def _add_task_endpoints(app: FastAPI, backend: Backend, slot: ModelSlot, limits: Limits) -> None:
    """/v1/classify, /v1/fill-mask, /v1/generate: each answers when the served model's task uses it."""
    def need(endpoint: str) -> None:
        if backend.task.endpoint != endpoint:
            raise ApiError(400, f"this server runs a {backend.task.name} model, which {endpoint} cannot use "
                           f"(use {backend.task.endpoint})", "wrong_task")

    def check_text(text: str, what: str) -> None:
        if not text.strip():
            raise ApiError(422, f"{what} is empty", "invalid_request")
        if len(text) > limits.max_chars:
            raise ApiError(413, f"{what} has {len(text)} characters; this server accepts at most {limits.max_chars}",
                           "too_large")

    @app.post("/v1/classify")
    def classify_endpoint(req: ClassifyIn):
        need("/v1/classify")
        if (req.text is None) == (req.texts is None):
            raise ApiError(422, "give exactly one of 'text' or 'texts'", "invalid_request")
        texts = [req.text] if req.text is not None else list(req.texts or [])
        pairs = [req.text_pair] if req.text_pair is not None else req.text_pairs
        if not texts:
            raise ApiError(422, "'texts' is empty", "invalid_request")
        if len(texts) > limits.max_texts:
            raise ApiError(413, f"{len(texts)} texts in one request; at most {limits.max_texts}", "too_large")
        if pairs is not None and len(pairs) != len(texts):
            raise ApiError(422, f"{len(pairs)} text pairs for {len(texts)} texts", "invalid_request")
        for i, t in enumerate(texts):
            check_text(t, "text" if len(texts) == 1 else f"texts[{i}]")
        t0 = time.perf_counter()
        results = slot.run(lambda: backend.classify(texts, pairs))
        return {"results": results, "elapsed_ms": round(1000 * (time.perf_counter() - t0), 1)}

    @app.post("/v1/fill-mask")
    def fill_mask_endpoint(req: FillMaskIn):
        need("/v1/fill-mask")
        check_text(req.text, "text")
        if req.top_k > limits.max_top_k:
            raise ApiError(422, f"top_k {req.top_k} is above this server's cap of {limits.max_top_k}", "invalid_request")
        t0 = time.perf_counter()
        out = slot.run(lambda: backend.fill_mask(req.text, req.top_k))
        return {**out, "elapsed_ms": round(1000 * (time.perf_counter() - t0), 1)}

    @app.post("/v1/generate")
    def generate_endpoint(req: GenerateIn):
        need("/v1/generate")
        check_text(req.prompt, "prompt")
        if req.max_new_tokens > limits.max_new_tokens:
            raise ApiError(422, f"max_new_tokens {req.max_new_tokens} is above this server's cap of "
                           f"{limits.max_new_tokens}", "invalid_request")
        return _generate(slot, backend, req)


def _generate(slot: ModelSlot, backend: Backend, req: GenerateIn):
    params = req.model_dump(exclude={"stream"})
    t0 = time.perf_counter()
    slot.enter()  # queue here, so a full queue is a 503 and not a broken stream
    try:
        backend.check_prompt(params)
    except BaseException:
        slot.leave()
        raise
    if not req.stream:
        try:
            out = backend.generate(params)
        finally:
            slot.leave()
        return {**out, "elapsed_ms": round(1000 * (time.perf_counter() - t0), 1)}
    stop = threading.Event()
    return GenerationStream(stream_generation(slot, backend, params, stop), stop)


def _static(name: str) -> str:
    return (importlib.resources.files("lmforge") / "static" / name).read_text(encoding="utf-8")


def serve(model: Union[str, Path], host: str = "127.0.0.1", port: int = 8000, limits: Optional[Limits] = None,
          log_level: str = "info", allow_untrained: bool = False) -> None:
    """Load the model and serve it until Ctrl-C (`lmforge serve`)."""
    import uvicorn  # lazy: only the serve command needs the server
    if not _is_loopback(host):
        log.warning("serving on %s: anyone who can reach this machine on port %d can use the model "
                    "(there is no authentication)", host, port)
    _check_port(host, port)
    app = create_app(model, limits, allow_untrained=allow_untrained)
    backend = app.app.state.backend
    shown = f"[{host}]" if ":" in host else host
    log.info("serving %s (%s) on http://%s:%d — open it in a browser to try the model", backend.model_dir,
             backend.task.name, shown, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                timeout_graceful_shutdown=5)


def _check_port(host: str, port: int) -> None:
    """Fail before loading the model when the address cannot be bound (port taken, bad host)."""
    if not 0 < port < 65536:
        raise LmforgeError(f"--port must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise LmforgeError(f"cannot resolve --host {host}: {e}", "use 127.0.0.1 (this machine only) or 0.0.0.0") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise LmforgeError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                               "choose another --port, or stop the server already using it") from None

"""Streaming generated text to an HTTP client: a file-like sink for the generator, the thread that
generates while the response streams, and the response that stops generation when the client leaves."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any, Callable, Iterator, Optional

from starlette.responses import StreamingResponse

from ..errors import LmforgeError
from .serve_limits import ModelSlot

log = logging.getLogger("lmforge")


class Stopped(Exception):
    """The client went away: stop generating."""


class TokenSink:
    """A file-like stream for generate_texts: passes generated text on as it comes. It skips the
    prompt (written first when not in chat mode) and the newline written after the end. With `stops`, text
    that may be the start of a stop string is held back until it is not; a stop string ends the stream
    (`hit_stop`) and is never sent."""

    def __init__(self, on_token: Callable[[str], None], stop: Optional[threading.Event], skip_first: bool,
                 stops: tuple = ()):
        self.on_token, self.stop, self.skip_first = on_token, stop, skip_first
        self.stops = tuple(s for s in stops if s)
        self.pending = ""
        self.held = ""  # text that may be the beginning of a stop string
        self.text = ""
        self.hit_stop = False

    def write(self, piece: str) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Stopped()
        if self.skip_first:
            self.skip_first = False
            return
        if self.pending:
            self._emit(self.pending)
            self.pending = ""
        if piece == "\n":  # maybe the end-of-output newline: hold it until more text comes
            self.pending = piece
        elif piece:
            self._emit(piece)

    def _send(self, text: str) -> None:
        if text:
            self.text += text
            self.on_token(text)

    def _emit(self, text: str) -> None:
        if not self.stops:
            self._send(text)
            return
        self.held += text
        found = [self.held.find(s) for s in self.stops if s in self.held]
        if found:
            self._send(self.held[:min(found)])
            self.held, self.hit_stop = "", True
            raise Stopped()  # generation ends here; the stop string is not sent
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.held.endswith(s[:k])), default=0)
        self._send(self.held[:len(self.held) - keep])
        self.held = self.held[len(self.held) - keep:]

    def finish(self) -> None:
        """Generation ended without a stop string: send what was held back."""
        self._send(self.held)
        self.held = ""

    def flush(self) -> None:
        pass


class GenerationStream(StreamingResponse):
    """Streams NDJSON (or server-sent events); however the response ends (done, client gone, server shutting
    down), it tells the generating thread to stop, so a departed client does not keep the model busy."""

    def __init__(self, content, stop: threading.Event, media_type: str = "application/x-ndjson"):
        super().__init__(content, media_type=media_type)
        self.stop = stop

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.stop.set()


def ndjson_frame(kind: str, value, elapsed_ms: float) -> bytes:
    """/v1/generate's stream: {"token": ...} lines, then {"done": true, ...}."""
    if kind == "token":
        return (json.dumps({"token": value}, ensure_ascii=False) + "\n").encode()
    if kind == "done":
        return (json.dumps({"done": True, **value, "elapsed_ms": elapsed_ms}, ensure_ascii=False) + "\n").encode()
    return (json.dumps({"done": True, "error": {"message": value}}) + "\n").encode()


def stream_generation(slot: ModelSlot, backend, params: dict, stop: threading.Event,
            frame: Callable[[str, Any, float], bytes] = ndjson_frame) -> Iterator[bytes]:
    """Frames (NDJSON lines by default) of the text as it comes, then of the end; the slot is held
    (entered by the caller) until generation ends or the client goes away."""
    q: "queue.Queue[tuple[str, Any]]" = queue.Queue()

    def work():
        try:
            out = backend.generate(params, on_token=lambda piece: q.put(("token", piece)), stop=stop)
            q.put(("done", out))
        except LmforgeError as e:
            q.put(("error", e.message + (f" — {e.hint}" if e.hint else "")))
        except Exception as e:  # a bug: log it, tell the client without a traceback
            log.exception("error while generating")
            q.put(("error", f"internal error ({type(e).__name__}); see the server log"))
        finally:
            slot.leave()

    def lines():
        thread = threading.Thread(target=work, daemon=True)
        t0 = time.perf_counter()
        thread.start()
        try:
            while True:
                kind, value = q.get()
                yield frame(kind, value, round(1000 * (time.perf_counter() - t0), 1))
                if kind != "token":
                    return
        finally:
            stop.set()  # the client left early: stop generating, free the model
    return lines()

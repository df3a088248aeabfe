"""`lmforge serve`: every endpoint over real HTTP against a live server on 127.0.0.1."""

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lmforge.config import SamplingParams
from lmforge import api
from lmforge.cli import main
from lmforge.use.serve import ApiError, Limits, ModelSlot, create_app

LIMITS = Limits(max_body_bytes=4096, max_chars=300, max_texts=4, max_new_tokens=32, max_top_k=10, max_queue=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    """A uvicorn server on 127.0.0.1 in a background thread."""

    def __init__(self, model, limits=LIMITS):
        import uvicorn
        self.app = create_app(model, limits)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)

    def request(self, method, path, body=None, headers=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"content-type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        ctype = resp.getheader("content-type") or ""
        return resp.status, (json.loads(payload) if "json" in ctype else payload.decode())

    def post(self, path, body, **kw):
        return self.request("POST", path, body, **kw)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def cls_server(tiny_cls_run):
    live = Live(tiny_cls_run)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def mlm_server(tiny_bert):
    live = Live(tiny_bert)  # a BertForMaskedLM folder: served as masked-lm
    yield live
    live.stop()


def test_health_info_and_page(cls_server, tiny_cls_run):
    status, body = cls_server.request("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["task"] == "classification"
    status, info = cls_server.request("GET", "/info")
    assert status == 200 and info["labels"] == ["neg", "pos"] and info["endpoint"] == "/v1/classify"
    assert info["limits"]["max_chars"] == 300 and info["parameters"] > 10000
    assert info["model_dir"] == str(tiny_cls_run / "model")
    status, page = cls_server.request("GET", "/")
    assert status == 200 and "lmforge playground" in page and 'id="run"' in page


def test_classify_matches_predict(cls_server, tiny_cls_run):
    texts = ["good great tasty food", "awful stale bad product", "it was the food"]
    expected = api.predict(tiny_cls_run, texts=texts, progress=False)
    status, one = cls_server.post("/v1/classify", {"text": texts[0]})
    assert status == 200 and len(one["results"]) == 1
    status, many = cls_server.post("/v1/classify", {"texts": texts})
    assert status == 200
    for got, exp in zip(many["results"], expected):
        assert got["label"] == exp["label"]
        assert got["score"] == pytest.approx(exp["score"], abs=1e-6)
        assert sum(got["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert max(got["probabilities"], key=got["probabilities"].get) == got["label"]
    # one text alone vs. padded in a batch of three: different matmul shapes, so equal up to float
    # rounding (seen differing in the 7th digit), not bit for bit
    alone, batched = one["results"][0], many["results"][0]
    assert alone["label"] == batched["label"]
    assert alone["probabilities"] == pytest.approx(batched["probabilities"], abs=1e-6)


@pytest.mark.parametrize("body,raw,status,needle", [
    (None, b'{"text": ', 400, "not valid JSON"),
    (None, b"text=hello", 400, "not valid JSON"),
    ([1, 2], None, 422, "must be a JSON object"),
    ({"txt": "hello"}, None, 422, "txt: Extra inputs are not permitted"),
    ({"text": 5}, None, 422, "text: Input should be a valid string"),
    ({"text": "   "}, None, 422, "text is empty"),
    ({}, None, 422, "exactly one of 'text' or 'texts'"),
    ({"text": "a", "texts": ["b"]}, None, 422, "exactly one of"),
    ({"texts": ["a", "b"], "text_pairs": ["c"]}, None, 422, "1 text pairs for 2 texts"),
    (None, b'{"text": "bad \\ud800 text"}', 422, "lone surrogate"),
    (None, b'{"texts": ["ok", "\\udfff"]}', 422, "lone surrogate"),
])
def test_bad_requests_get_4xx_json(cls_server, body, raw, status, needle):
    got, err = cls_server.post("/v1/classify", body, raw=raw)
    assert got == status, err
    assert err["error"]["status"] == status and needle in err["error"]["message"], err


def test_wrong_task_unknown_path_and_method(cls_server):
    status, err = cls_server.post("/v1/generate", {"prompt": "hello"})
    assert status == 400 and err["error"]["type"] == "wrong_task" and "/v1/classify" in err["error"]["message"]
    status, err = cls_server.post("/v1/fill-mask", {"text": "a [MASK]"})
    assert status == 400 and err["error"]["type"] == "wrong_task"
    status, err = cls_server.request("GET", "/v1/nothing")
    assert status == 404 and err["error"]["type"] == "not_found"
    status, err = cls_server.request("DELETE", "/health")
    assert status == 405 and "error" in err


def test_oversized_requests_are_refused(cls_server):
    status, err = cls_server.post("/v1/classify", {"text": "good " * 1000})  # > max_body_bytes
    assert status == 413 and "4096 bytes" in err["error"]["message"]
    # a chunked body has no Content-Length: counted as it arrives
    conn = http.client.HTTPConnection("127.0.0.1", cls_server.port, timeout=30)
    chunks = iter([b'{"text": "', b"a" * 3000, b"a" * 3000, b'"}'])
    conn.request("POST", "/v1/classify", body=chunks, headers={"content-type": "application/json"},
                 encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["type"] == "too_large"
    conn.close()
    status, err = cls_server.post("/v1/classify", {"text": "x" * 301})  # small body, text over max_chars
    assert status == 413 and "at most 300" in err["error"]["message"]
    status, err = cls_server.post("/v1/classify", {"texts": ["good"] * 5})
    assert status == 413 and "at most 4" in err["error"]["message"]


def test_concurrent_requests_are_queued_one_at_a_time(cls_server):
    texts = [f"good tasty {i} " + "bad " * (i % 3) for i in range(10)]
    sequential = [cls_server.post("/v1/classify", {"text": t})[1]["results"][0] for t in texts]
    before = cls_server.request("GET", "/health")[1]["served"]
    slot = cls_server.app.app.state.slot
    slot.max_queue = 16  # this server's limits allow 2 waiting; here all 10 may wait
    try:
        with ThreadPoolExecutor(10) as pool:
            got = list(pool.map(lambda t: cls_server.post("/v1/classify", {"text": t}), texts))
    finally:
        slot.max_queue = LIMITS.max_queue
    assert [s for s, _ in got] == [200] * 10
    for (_, body), seq in zip(got, sequential):
        assert body["results"][0]["label"] == seq["label"]
        assert body["results"][0]["score"] == pytest.approx(seq["score"], abs=1e-6)
    health = cls_server.request("GET", "/health")[1]
    assert health["served"] - before == 10 and health["max_concurrent_seen"] == 1 and health["busy"] == 0


def test_a_full_queue_answers_503_and_the_queue_drains(cls_server):
    slot = cls_server.app.app.state.slot  # max_queue = 2
    slot.lock.acquire()  # the model is "busy"
    try:
        pool = ThreadPoolExecutor(2)
        waiting = [pool.submit(cls_server.post, "/v1/classify", {"text": f"good {i}"}) for i in range(2)]
        deadline = time.time() + 20
        while slot.waiting < 2:
            assert time.time() < deadline
            time.sleep(0.02)
        status, err = cls_server.post("/v1/classify", {"text": "one too many"})
        assert status == 503 and err["error"]["type"] == "busy"
    finally:
        slot.lock.release()
    assert [f.result(timeout=30)[0] for f in waiting] == [200, 200]
    pool.shutdown()


def test_model_slot_counts_waiters():
    slot = ModelSlot(max_queue=1)
    slot.lock.acquire()
    t = threading.Thread(target=lambda: slot.run(lambda: None))
    t.start()
    while slot.waiting < 1:
        time.sleep(0.01)
    with pytest.raises(ApiError) as e:
        slot.run(lambda: None)
    assert e.value.status == 503
    slot.lock.release()
    t.join(5)
    assert slot.served == 1 and slot.waiting == 0


def test_fill_mask_endpoint(mlm_server, tiny_bert):
    from lmforge.use.fill_mask import fill_mask
    status, info = mlm_server.request("GET", "/info")
    assert info["task"] == "masked-lm" and info["mask_token"] == "[MASK]"
    status, out = mlm_server.post("/v1/fill-mask", {"text": "the food was [MASK] and [MASK]", "top_k": 3})
    assert status == 200 and len(out["masks"]) == 2
    expected = fill_mask(tiny_bert, texts=["the food was [MASK] and [MASK]"], top_k=3)[0]
    for got, exp in zip(out["masks"], expected["masks"]):
        scores = [c["score"] for c in got["candidates"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
        assert [c["token"] for c in got["candidates"]] == [c["token"] for c in exp["candidates"]]
    assert out["filled"] == expected["filled"]
    status, err = mlm_server.post("/v1/fill-mask", {"text": "no mask here"})
    assert status == 400 and "no mask token" in err["error"]["message"]
    status, err = mlm_server.post("/v1/fill-mask", {"text": "a [MASK]", "top_k": 11})
    assert status == 422 and "cap of 10" in err["error"]["message"]
    status, err = mlm_server.post("/v1/classify", {"text": "a"})
    assert status == 400 and "/v1/fill-mask" in err["error"]["message"]


def test_serve_cli_refuses_a_taken_port(tiny_cls_run, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["serve", str(tiny_cls_run), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
    assert main(["serve", str(tiny_cls_run), "--max-new-tokens", "0"]) == 2


@pytest.fixture(scope="module")
def gen_server(tmp_path_factory):
    from test_causal_lm import make_tiny
    path = make_tiny(tmp_path_factory.mktemp("tiny-gpt2-serve"), "gpt2")
    live = Live(path)
    yield live, path
    live.stop()


def stream_lines(live, body) -> list[dict]:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
    conn.request("POST", "/v1/generate", body=json.dumps({**body, "stream": True}),
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("application/x-ndjson")
    lines = [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]
    conn.close()
    return lines


def test_generate_endpoint_plain_and_streaming(gen_server):
    from lmforge.tasks.generation import generate_texts
    from lmforge.tasks import causal_lm
    live, path = gen_server
    model, tok = causal_lm.TASK.load_for_use(path)
    prompt = "the food was"
    greedy = generate_texts(model, tok, [prompt], SamplingParams(max_new_tokens=12))[0][0]
    status, out = live.post("/v1/generate", {"prompt": prompt, "max_new_tokens": 12})
    assert status == 200 and out["completion"] == greedy and out["greedy"]
    lines = stream_lines(live, {"prompt": prompt, "max_new_tokens": 12})
    assert lines[-1]["done"] is True and lines[-1]["completion"] == greedy
    pieces = [x["token"] for x in lines[:-1]]
    assert all("token" in x for x in lines[:-1]) and "".join(pieces) == greedy
    # sampling: the seed makes it repeatable; another seed gives another text
    body = {"prompt": prompt, "max_new_tokens": 16, "temperature": 1.5, "top_k": 50, "seed": 3}
    a, b = live.post("/v1/generate", body)[1], live.post("/v1/generate", body)[1]
    c = live.post("/v1/generate", {**body, "seed": 4})[1]
    assert a["completion"] == b["completion"] != c["completion"] and not a["greedy"]
    zero = live.post("/v1/generate", {**body, "temperature": 0, "top_p": 0.9, "max_new_tokens": 12})[1]  # page-like
    assert zero["completion"] == greedy and zero["greedy"]
    assert "".join(x.get("token", "") for x in stream_lines(live, body)[:-1]) == a["completion"]


def test_generate_limits(gen_server):
    live, _ = gen_server
    status, err = live.post("/v1/generate", {"prompt": "the", "max_new_tokens": 33})
    assert status == 422 and "cap of 32" in err["error"]["message"]
    status, err = live.post("/v1/generate", {"prompt": "zqxj" * 70, "max_new_tokens": 8, "stream": True})  # context: 128 tokens
    assert status == 413 and "context is 128 tokens" in err["error"]["message"]
    status, err = live.post("/v1/generate", {"prompt": "the", "temperature": -1})
    assert status == 422 and "temperature" in err["error"]["message"]
    for bad in ({"prompt": "the", "seed": 2**70, "temperature": 0.7}, {"prompt": "the", "seed": 2**64, "stream": True},
                {"prompt": "\ud800"}):
        status, err = live.post("/v1/generate", bad)
        assert status == 422 and ("seed" in err["error"]["message"] or "surrogate" in err["error"]["message"]), err
    status, err = live.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]})
    assert status == 422 and "surrogate" in err["error"]["message"], err
    slot = live.app.app.state.slot
    assert slot.busy == 0 and slot.waiting == 0  # refused requests gave the model back
    status, _ = live.post("/v1/generate", {"prompt": "the", "max_new_tokens": 2})
    assert status == 200


def slow_pieces(pieces, delay):
    """A stand-in for generate_texts that writes its pieces to the stream `delay` s apart."""
    def fake(model, tokenizer, prompts, params=None, chat=False, stream=None):
        if stream is not None and not chat:
            stream.write(prompts[0])
        for p in pieces:
            time.sleep(delay)
            if stream is not None:
                stream.write(p)
        if stream is not None:
            stream.write("\n")
        return [["".join(pieces)]]
    return fake


def test_stream_arrives_piece_by_piece_and_stops_when_the_client_leaves(gen_server, monkeypatch):
    import lmforge.tasks.generation
    live, _ = gen_server
    pieces = ["one ", "two ", "three\n", "four"]
    monkeypatch.setattr(lmforge.tasks.generation, "generate_texts", slow_pieces(pieces, 0.4))
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    conn.request("POST", "/v1/generate", body=json.dumps({"prompt": "count", "stream": True}),
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    arrivals = []
    while True:
        line = resp.readline()
        if not line:
            break
        arrivals.append((time.perf_counter(), json.loads(line)))
    conn.close()
    got = [x for _, x in arrivals]
    assert [x["token"] for x in got[:-1]] == pieces  # not the prompt, not the closing newline
    assert got[-1]["done"] and got[-1]["completion"] == "".join(pieces)
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:4])]
    assert min(gaps) > 0.2  # each piece was sent when it was made, not all at the end

    # a client that hangs up mid-stream frees the model for the next request
    monkeypatch.setattr(lmforge.tasks.generation, "generate_texts", slow_pieces(["x "] * 50, 0.1))
    sock = socket.create_connection(("127.0.0.1", live.port))
    body = json.dumps({"prompt": "go", "stream": True}).encode()
    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert b'"token"' in sock.recv(4096) or b'"token"' in sock.recv(4096)
    sock.close()
    slot = live.app.app.state.slot
    t0 = time.time()
    while slot.busy and time.time() < t0 + 10:
        time.sleep(0.02)
    assert slot.busy == 0 and time.time() - t0 < 2.0  # well before the 5 s the 50 pieces would take


def test_openapi_schema_and_no_cdn_docs(cls_server):
    status, schema = cls_server.request("GET", "/openapi.json")
    assert status == 200 and {"/v1/classify", "/v1/generate", "/v1/fill-mask", "/health", "/info"} <= set(schema["paths"])
    assert cls_server.request("GET", "/docs")[0] == 404  # Swagger UI would fetch scripts from a CDN


def test_a_bug_is_a_500_json_without_traceback(cls_server, monkeypatch):
    backend = cls_server.app.app.state.backend

    def broken(texts, pairs):
        raise RuntimeError("secret internals /home/user/model")
    monkeypatch.setattr(backend, "classify", broken)
    status, err = cls_server.post("/v1/classify", {"text": "good"})
    assert status == 500 and err["error"]["type"] == "internal"
    assert "RuntimeError" in err["error"]["message"] and "secret" not in json.dumps(err)
    assert "Traceback" not in json.dumps(err)
    slot = cls_server.app.app.state.slot
    assert slot.busy == 0 and not slot.lock.locked()  # the lock was released
    monkeypatch.undo()
    assert cls_server.post("/v1/classify", {"text": "good"})[0] == 200

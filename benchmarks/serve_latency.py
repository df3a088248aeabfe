"""Latency of `lmforge serve` against calling the model in-process, and report build time.

    python benchmarks/serve_latency.py runs/sentiment-minilm [--n 60] [--threads 8]

Measures, in one process run: single-review /v1/classify round trips over HTTP (p50 / p95),
the same reviews through lmforge.infer.classify with the model already loaded (the floor the
server adds its overhead to), requests/s with N clients at once (queued on one model lock), and
the time to rebuild report.html. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()

    import uvicorn

    from lmforge.data import sources
    from lmforge.use.classify import classify
    from lmforge.report import write_html_report
    from lmforge.use.serve import Limits, create_app

    texts = sources.read_table("finefood:test")["text"].astype(str).str.slice(0, 2000).tolist()[: args.n]
    app = create_app(args.run, Limits(max_queue=64))
    backend = app.app.state.backend
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)

    def post(text: str) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        t0 = time.perf_counter()
        conn.request("POST", "/v1/classify", body=json.dumps({"text": text}), headers={"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        conn.close()
        return time.perf_counter() - t0

    post(texts[0])  # warm up
    direct = []
    for t in texts:
        t0 = time.perf_counter()
        classify(backend.model_dir, texts=[t], progress=False, model_and_tokenizer=(backend.model, backend.tokenizer))
        direct.append(time.perf_counter() - t0)
    http_s = [post(t) for t in texts]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(post, texts))
    wall_conc = time.perf_counter() - t0
    slot = app.app.state.slot
    t0 = time.perf_counter()
    write_html_report(Path(args.run))
    report_s = time.perf_counter() - t0

    def q(xs, p):
        return round(1000 * sorted(xs)[int(p * (len(xs) - 1))], 1)
    out = {"n": len(texts), "direct_ms_p50": q(direct, 0.5), "direct_ms_p95": q(direct, 0.95),
           "http_ms_p50": q(http_s, 0.5), "http_ms_p95": q(http_s, 0.95),
           "http_over_direct_p50": round(statistics.median(http_s) / statistics.median(direct), 2),
           "sequential_req_per_s": round(len(texts) / sum(http_s), 2),
           f"concurrent_{args.threads}_req_per_s": round(len(texts) / wall_conc, 2),
           "max_concurrent_in_model": slot.max_busy_seen, "served": slot.served,
           "report_rebuild_s": round(report_s, 2),
           "report_kb": round((Path(args.run) / "report.html").stat().st_size / 1024, 1)}
    server.should_exit = True
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())

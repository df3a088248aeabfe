"""What the cached (GradCache) in-batch loss saves: minilm-l6 trained for a few steps on kjv-web-retrieval with a
large contrastive batch, plain against `embedding.mini_batch_size`, each in its own process: peak RSS, seconds
per step, and the first steps' losses (the same up to dropout, which the chunks draw differently).

    python benchmarks/embedding_cache.py --batch 256 --chunk 32 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lmforge import api
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        from lmforge.data import builtin
        df = builtin.load("kjv-web-retrieval", "train").sample(frac=1.0, random_state=0).head(args.steps * args.batch)
        with open(d / "train.jsonl", "w") as f:
            for q, doc in zip(df["query"], df["document"]):
                f.write(json.dumps({"query": q, "document": doc}) + "\n")
        with open(d / "eval.jsonl", "w") as f:
            for q, doc in zip(df["query"][:4], df["document"][:4]):
                f.write(json.dumps({"query": q, "document": doc}) + "\n")
        cfg = {"task": "embedding", "model": {"name": "minilm-l6", "attention_dropout": 0.0},
               "data": {"train": str(d / "train.jsonl"), "eval": str(d / "eval.jsonl"), "max_length": 96},
               "embedding": {"mini_batch_size": args.chunk or None},
               "train": {"max_steps": args.steps, "per_device_train_batch_size": args.batch, "logging_steps": 1,
                         "eval_strategy": "no", "save_strategy": "no", "seed": 1, "report_to": "none",
                         "group_by_length": False, "before_eval_max_samples": 8},
               "output": {"output_dir": str(d / "run")}}
        res = api.train(cfg, progress=False)
        log = [json.loads(x) for x in (res.run_dir / "log.jsonl").read_text().splitlines()]
        tr = res.metrics["train"]
        out = {"chunk": args.chunk, "batch": args.batch, "losses": [r["loss"] for r in log if "loss" in r][:3],
               "s_per_step": round((tr["runtime_s"] - tr["eval_s"]) / args.steps, 2),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        return child(args)
    for chunk in (0, args.chunk):
        cmd = [sys.executable, __file__, "--child", f"--batch={args.batch}", f"--chunk={chunk}", f"--steps={args.steps}"]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        print(line[-1][7:] if line else f"chunk {chunk} failed:\n{p.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
    main()

"""Embedding fine-tuning on kjv-web-retrieval: sentence-transformers' SentenceTransformerTrainer with
MultipleNegativesRankingLoss against lmforge's `task: embedding`, same model (minilm-l6), pairs, batch, steps and
learning rate, back to back, each in its own process (peak RSS is per process).

    pip install sentence-transformers      # benchmark (and parity-test) dependency only, not needed by lmforge
    python benchmarks/embedding.py --steps 40 --batch 32

Both train on the first steps x batch pairs of a seeded shuffle of the training split (query = a King James verse,
positive = the World English Bible's), texts cut at --max-length tokens, constant learning rate, no warmup, no
evaluation while training, the checkpoint's own dropout. Each side uses its own default batching:
sentence-transformers draws random batches; lmforge groups pairs of similar length (less padding) and runs the
queries and documents of a batch in one forward pass. Reported: training pairs/s (the training steps alone), peak
RSS, and recall@10 / MRR@10 / NDCG@10 of each trained model on the test split (1,093 King James verses searching
the 1,093 World English Bible verses of Ruth, Ecclesiastes, Mark and James), computed by the same code from each
model's own embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pairs(split: str, n=None, seed: int = 0) -> list[dict]:
    from lmforge.data import builtin
    df = builtin.load("kjv-web-retrieval", split)
    if n is not None:
        df = df.sample(frac=1.0, random_state=seed).head(n)
    return [{"anchor": q, "positive": d} for q, d in zip(df["query"], df["document"])]


def recall_of(embed) -> dict:
    """Retrieval metrics of the test split from `embed(texts) -> [n, dim] array`."""
    import torch

    from lmforge.data.retrieval import QueryDoc, corpus_of
    from lmforge.metrics import retrieval_metrics
    from lmforge.tasks.embedding import search
    corpus = corpus_of([QueryDoc(r["anchor"], r["positive"]) for r in pairs("test")])
    q = torch.as_tensor(embed(corpus.queries)).float()
    d = torch.as_tensor(embed(corpus.documents)).float()
    m = retrieval_metrics(search(q, d, 10).tolist(), corpus.relevant)
    return {k: round(m[k], 4) for k in ("recall@1", "recall@10", "mrr@10", "ndcg@10")}


def run_st(args, out: dict) -> None:
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)
    from transformers import TrainerCallback

    from lmforge.models.load import resolve_model_dir
    model = SentenceTransformer(str(resolve_model_dir("minilm-l6")), device="cpu")
    model.max_seq_length = args.max_length
    train = Dataset.from_list(pairs("train", args.steps * args.batch))
    cfg = SentenceTransformerTrainingArguments(
        output_dir=args.tmp, max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=10, save_strategy="no", eval_strategy="no",
        report_to=[], seed=1, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    stamps = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            stamps.setdefault("first_step", time.perf_counter())

        def on_train_end(self, a, state, control, **kw):
            stamps["end"] = time.perf_counter()
    trainer = SentenceTransformerTrainer(model=model, args=cfg, train_dataset=train,
                                         loss=losses.MultipleNegativesRankingLoss(model, scale=20.0))
    trainer.add_callback(Clock())
    t0 = time.perf_counter()
    trainer.train()
    out.update(total_s=stamps["end"] - t0, train_s=stamps["end"] - stamps["first_step"])
    out.update(recall_of(lambda texts: model.encode(texts, batch_size=64, convert_to_numpy=True)))


def run_lmforge(args, out: dict) -> None:
    from lmforge import api
    d = Path(args.tmp)
    for name, rows in (("train", pairs("train", args.steps * args.batch)), ("eval", pairs("eval")[:8])):
        with open(d / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    cfg = {"task": "embedding", "model": {"name": "minilm-l6"},
           "data": {"train": str(d / "train.jsonl"), "eval": str(d / "eval.jsonl"), "max_length": args.max_length},
           "embedding": {"scale": 20.0},
           "train": {"max_steps": args.steps, "per_device_train_batch_size": args.batch, "learning_rate": args.lr,
                     "lr_scheduler_type": "constant", "warmup_steps": 0, "logging_steps": 10, "eval_strategy": "no",
                     "save_strategy": "no", "seed": 1, "report_to": "none", "load_best_model_at_end": False},
           "output": {"output_dir": str(d / "run")}}
    t0 = time.perf_counter()
    res = api.train(cfg, progress=False)
    tr = res.metrics["train"]
    out.update(total_s=time.perf_counter() - t0, train_s=tr["runtime_s"] - tr["eval_s"])
    out.update(recall_of(lambda texts: [r["embedding"] for r in api.embed(res.run_dir, texts, batch_size=64)]))


def child(args) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict = {"variant": args.variant}
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        run_st(args, out) if args.variant == "sentence-transformers" else run_lmforge(args, out)
    n = args.steps * args.batch
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["train_pairs_per_s"] = round(n / out["train_s"], 2)
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--max-length", dest="max_length", type=int, default=96)
    ap.add_argument("--variant", default=None)
    ap.add_argument("--variants", default="sentence-transformers,lmforge")
    args = ap.parse_args()
    if args.variant:
        return child(args)
    results = []
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", v, f"--steps={args.steps}", f"--batch={args.batch}",
               f"--lr={args.lr}", f"--max-length={args.max_length}"]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{v} failed:\n{p.stderr[-3000:]}")
            continue
        results.append(json.loads(line[-1][7:]))
        print(json.dumps(results[-1]), flush=True)
    base = next((r for r in results if r["variant"] == "sentence-transformers"), None)
    print(f"{'variant':22s} {'train pairs/s':>13s} {'peak RSS MB':>11s} {'recall@10':>9s} {'ndcg@10':>8s} ratio")
    for r in results:
        ratio = r["train_pairs_per_s"] / base["train_pairs_per_s"] if base else float("nan")
        print(f"{r['variant']:22s} {r['train_pairs_per_s']:13.2f} {r['peak_rss_mb']:11.0f} {r['recall@10']:9.4f} "
              f"{r['ndcg@10']:8.4f} {ratio:.2f}x")


if __name__ == "__main__":
    main()

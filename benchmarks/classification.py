"""Classification benchmark: the tutorial's Trainer recipes against lmforge, back to back.

    python benchmarks/classification.py                      # full finefood, 1 epoch, max_length 128
    python benchmarks/classification.py --train-rows 1000 --baseline-max-length 512

Recipes, same model (minilm-l6), data, hyper-parameters (lr, batch, epochs, warmup, weight
decay, seed) and number of epochs:
  (a) transformers.Trainer, tokenizer(..., padding="max_length", truncation=True)
  (b) transformers.Trainer + DataCollatorWithPadding (pads each random batch to its longest row)
  (c) lmforge (length-grouped batches, dynamic padding)
Each recipe runs in its own child process (one after the other, started from this one run) so
its peak RSS is its own. Prints wall time, training time, real (non-pad) tokens/s, padded share,
peak RSS, test accuracy and MCC, and the ratios against lmforge.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_data(train_rows: int | None):
    from lmforge.data.builtin import load
    from sklearn.model_selection import train_test_split
    train = load("finefood", "train")
    test = load("finefood", "test")
    # The same 90% of train that lmforge's default recipe trains on (stratified, seed 1).
    train, _ = train_test_split(train, test_size=0.1, random_state=1, stratify=train["label"])
    train = train.reset_index(drop=True)
    if train_rows:
        train = train.sample(n=train_rows, random_state=0).reset_index(drop=True)
    return train, test


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_trainer(mode: str, args, queue) -> None:
    import numpy as np
    import datasets
    from sklearn.metrics import accuracy_score, matthews_corrcoef
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments, default_data_collator)
    from transformers.utils import logging as hf_logging
    from lmforge.models.zoo import resolve_model

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    start = time.perf_counter()
    path = resolve_model("minilm-l6")
    train_df, test_df = load_data(args.train_rows)
    labels = sorted(set(train_df["label"]))
    l2i = {l: i for i, l in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(path)
    max_len = args.baseline_max_length or args.max_length

    def encode(df):
        ds = datasets.Dataset.from_dict({"text": df["text"].tolist(), "label": [l2i[l] for l in df["label"]]})
        pad = "max_length" if mode == "a" else False
        return ds.map(lambda b: tok(b["text"], truncation=True, max_length=max_len, padding=pad),
                      batched=True, remove_columns=["text"])

    train_ds, test_ds = encode(train_df), encode(test_df)
    counts = {"real": 0, "total": 0}
    base = default_data_collator if mode == "a" else DataCollatorWithPadding(tok)

    def collate(features):
        batch = base(features)
        counts["real"] += int(batch["attention_mask"].sum())
        counts["total"] += batch["attention_mask"].numel()
        return batch

    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=l2i)
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        learning_rate=args.lr, num_train_epochs=args.epochs, warmup_steps=0.1, weight_decay=0.01, seed=1,  # a float < 1 is a ratio in transformers 5
        report_to=[], save_strategy="no", eval_strategy="no", logging_steps=10, use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=collate)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    real, total = counts["real"], counts["total"]
    pred = trainer.predict(test_ds)
    y_pred = np.argmax(pred.predictions, -1)
    queue.put({"recipe": f"({mode}) Trainer " + ("padding=max_length" if mode == "a" else "+ DataCollatorWithPadding"),
               "max_length": max_len, "train_s": train_s, "wall_s": time.perf_counter() - start,
               "real_tokens": real, "padded_share": 1 - real / total, "tokens_per_s": real / train_s,
               "accuracy": accuracy_score(test_ds["label"], y_pred), "mcc": matthews_corrcoef(test_ds["label"], y_pred),
               "peak_rss_mb": peak_rss_mb()})


def run_lmforge(args, queue) -> None:
    from lmforge import api

    start = time.perf_counter()
    train_df, test_df = load_data(args.train_rows)
    tmp = Path(tempfile.mkdtemp())
    train_df.to_csv(tmp / "train.csv", index=False)
    test_df.to_csv(tmp / "test.csv", index=False)
    cfg = {"task": "classification", "model": {"name": "minilm-l6"},
           "data": {"train": str(tmp / "train.csv"), "eval": str(tmp / "test.csv"), "max_length": args.max_length},
           "train": {"num_train_epochs": args.epochs, "learning_rate": args.lr, "per_device_train_batch_size": args.batch_size,
                     "warmup_ratio": 0.1, "weight_decay": 0.01, "seed": 1, "eval_strategy": "no", "save_strategy": "no",
                     "logging_steps": 10},
           "output": {"output_dir": str(tmp / "run")}}
    # eval_strategy no: training time is training alone, as in the Trainer recipes; the test set
    # is evaluated once after training (and once before, as lmforge always does).
    res = api.train(cfg, progress=False)
    logs = [json.loads(l) for l in (res.run_dir / "log.jsonl").read_text().splitlines()]
    m = res.metrics
    tr = m["train"]
    queue.put({"recipe": "(c) lmforge", "max_length": args.max_length, "train_s": tr["runtime_s"],
               "wall_s": time.perf_counter() - start, "real_tokens": int(tr["tokens_per_s"] * tr["runtime_s"]),
               "padded_share": None, "tokens_per_s": tr["tokens_per_s"], "accuracy": m["eval"]["accuracy"],
               "mcc": m["eval"]["mcc"], "peak_rss_mb": peak_rss_mb(), "mfu_last": logs[-1].get("mfu") if logs else None})


def run_child(target, *a):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*a, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise SystemExit(f"{target.__name__}{a[:1]} failed with exit code {p.exitcode}")
    return q.get()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-length", type=int, default=128, help="lmforge's max_length (and the baselines' unless set)")
    ap.add_argument("--baseline-max-length", type=int, default=None, help="truncation length of the Trainer recipes")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-rows", type=int, default=None, help="subsample the 3,600 training rows")
    ap.add_argument("--recipes", default="a,b,c")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    results = []
    for r in args.recipes.split(","):
        res = run_child(run_lmforge, args) if r == "c" else run_child(run_trainer, r, args)
        print(json.dumps(res), flush=True)
        results.append(res)
    ours = next((r for r in results if r["recipe"].startswith("(c)")), None)
    print("\n| recipe | max_length | train s | wall s | real tok/s | padded | peak RSS MB | accuracy | MCC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        pad = f"{100 * r['padded_share']:.0f}%" if r["padded_share"] is not None else "-"
        print(f"| {r['recipe']} | {r['max_length']} | {r['train_s']:.0f} | {r['wall_s']:.0f} | {r['tokens_per_s']:.0f} | "
              f"{pad} | {r['peak_rss_mb']:.0f} | {r['accuracy']:.4f} | {r['mcc']:.4f} |")
    if ours:
        for r in results:
            if r is ours:
                continue
            print(f"lmforge vs {r['recipe']}: {r['train_s'] / ours['train_s']:.2f}x faster training, "
                  f"{ours['tokens_per_s'] / r['tokens_per_s']:.2f}x real tokens/s, "
                  f"{r['peak_rss_mb'] / ours['peak_rss_mb']:.2f}x less peak RSS, "
                  f"accuracy {100 * (ours['accuracy'] - r['accuracy']):+.1f} points")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()

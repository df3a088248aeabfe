"""Reward models on kjv-to-web-pairs: TRL's RewardTrainer against lmforge's `task: reward`, same model (smollm2-135m
with a one-output score head), pairs, batch, steps and learning rate, back to back, each in its own process (peak RSS
is per process).

    pip install trl          # benchmark only (the `bench` extra); not needed by lmforge
    python benchmarks/reward.py --steps 12 --batch 8

Both train on the first steps x batch pairs of the training split (prompt = the rewrite instruction with a King
James verse, chosen = the World English Bible's verse, rejected = the verse unchanged; pairs whose two replies are
equal are dropped), rendered with the model's chat template, constant learning rate, no warmup, no evaluation while
training. Reported: training pairs/s (the training steps alone), peak RSS, and the pairwise accuracy on the first
--eval pairs of the test split (Ruth, Ecclesiastes, Mark, James) after training, each side measured by its own
evaluation.
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


def rows(split: str, n: int) -> list[dict]:
    from lmforge.data import builtin
    df = builtin.load("kjv-to-web-pairs", split)
    df = df[df["chosen"] != df["rejected"]].head(n)
    return [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]}
            for p, c, r in zip(df["prompt"], df["chosen"], df["rejected"])]


def run_trl(args, out: dict) -> None:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from lmforge.models.load import resolve_model_dir
    path = str(resolve_model_dir("smollm2-135m"))
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    train = Dataset.from_list(rows("train", args.steps * args.batch))
    test = Dataset.from_list(rows("test", args.eval))
    cfg = RewardConfig(output_dir=args.tmp, max_steps=args.steps, per_device_train_batch_size=args.batch,
                       per_device_eval_batch_size=8, learning_rate=args.lr, lr_scheduler_type="constant",
                       warmup_steps=0, max_length=args.block, logging_steps=5, save_strategy="no", eval_strategy="no",
                       report_to=[], seed=1, use_cpu=True, bf16=False, dataloader_num_workers=0, disable_tqdm=True)
    stamps = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            stamps.setdefault("first_step", time.perf_counter())

        def on_train_end(self, a, state, control, **kw):
            stamps["end"] = time.perf_counter()
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=train, eval_dataset=test, processing_class=tok)
    trainer.add_callback(Clock())
    t0 = time.perf_counter()
    trainer.train()
    ev = trainer.evaluate()
    out.update(total_s=stamps["end"] - t0, train_s=stamps["end"] - stamps["first_step"],
               accuracy=ev["eval_accuracy"], eval_loss=ev["eval_loss"])


def run_lmforge(args, out: dict) -> None:
    from lmforge import api
    d = Path(args.tmp)
    for name, split, n in (("train", "train", args.steps * args.batch), ("test", "test", args.eval)):
        with open(d / f"{name}.jsonl", "w") as f:
            for r in rows(split, n):
                f.write(json.dumps(r) + "\n")
    cfg = {"task": "reward", "model": {"name": "smollm2-135m"},
           "data": {"train": str(d / "train.jsonl"), "eval": str(d / "test.jsonl"), "block_size": args.block},
           "train": {"max_steps": args.steps, "per_device_train_batch_size": args.batch, "learning_rate": args.lr,
                     "lr_scheduler_type": "constant", "warmup_steps": 0, "logging_steps": 5, "eval_strategy": "no",
                     "save_strategy": "no", "seed": 1, "report_to": "none", "load_best_model_at_end": False},
           "output": {"output_dir": str(d / "run")}}
    t0 = time.perf_counter()
    res = api.train(cfg, progress=False)
    tr = res.metrics["train"]
    out.update(total_s=time.perf_counter() - t0, train_s=tr["runtime_s"] - tr["eval_s"],
               accuracy=res.metrics["eval"]["accuracy"], eval_loss=res.metrics["eval"]["loss"])


def child(args) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict = {"variant": args.variant}
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        run_trl(args, out) if args.variant == "trl" else run_lmforge(args, out)
    pairs = args.steps * args.batch
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["train_pairs_per_s"] = round(pairs / out["train_s"], 3)
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--eval", type=int, default=64)
    ap.add_argument("--variant", default=None)
    ap.add_argument("--variants", default="trl,lmforge")
    args = ap.parse_args()
    if args.variant:
        return child(args)
    results = []
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", v] + [f"--{k}={getattr(args, k)}" for k in
                                                             ("steps", "batch", "lr", "block", "eval")]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{v} failed:\n{p.stderr[-3000:]}")
            continue
        results.append(json.loads(line[-1][7:]))
        print(json.dumps(results[-1]), flush=True)
    base = next((r for r in results if r["variant"] == "trl"), None)
    print(f"{'variant':10s} {'train pairs/s':>13s} {'peak RSS MB':>11s} {'accuracy':>8s} {'eval loss':>9s} ratio")
    for r in results:
        ratio = r["train_pairs_per_s"] / base["train_pairs_per_s"] if base else float("nan")
        print(f"{r['variant']:10s} {r['train_pairs_per_s']:13.3f} {r['peak_rss_mb']:11.0f} {r['accuracy']:8.3f} "
              f"{r['eval_loss']:9.4f} {ratio:.2f}x")


if __name__ == "__main__":
    main()

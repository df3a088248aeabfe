"""SFT on kjv-to-web: TRL's SFTTrainer against lmforge, same model, data, learning rate and steps, back to back.

    pip install --no-deps trl        # benchmark only (the `bench` extra); not needed by lmforge
    python benchmarks/sft.py --steps 15 --batch 8

Each variant runs in its own process (peak RSS is per process), one after the other:
- trl: SFTTrainer on prompt-completion conversations (completion-only loss, as its docs give for data without
  generation tags), padded batches (its packing / padding-free modes need FlashAttention, absent on a CPU);
- lmforge-truncate: task sft, one conversation per example, the same batch of conversations as TRL;
- lmforge-pack: task sft, whole conversations packed into blocks of --block tokens (same number of rows per batch).
Reported: real (non-pad) tokens/s and trained tokens/s over the training steps only, peak RSS, and the loss over the
answer tokens of the first --eval conversations of the kjv-to-web test split after training.
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


def rows(split: str, n: int) -> list[dict]:
    from lmforge.data import builtin
    df = builtin.load("kjv-to-web", split).head(n)
    return [{"instruction": a, "output": b} for a, b in zip(df["instruction"], df["output"])]


def run_trl(args, out: dict) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from lmforge.models.load import resolve_model_dir
    path = str(resolve_model_dir("smollm2-135m"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)

    def pc(r):
        return {"prompt": [{"role": "user", "content": r["instruction"]}],
                "completion": [{"role": "assistant", "content": r["output"]}]}
    train = Dataset.from_list([pc(r) for r in rows("train", args.steps * args.batch)])
    test = Dataset.from_list([pc(r) for r in rows("test", args.eval)])
    cfg = SFTConfig(output_dir=args.tmp, max_steps=args.steps, per_device_train_batch_size=args.batch,
                    per_device_eval_batch_size=8, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                    logging_steps=5, save_strategy="no", eval_strategy="no", report_to=[], seed=1, max_length=args.block,
                    packing=False, padding_free=False, completion_only_loss=True, use_cpu=True,
                    # SFTConfig defaults to bf16 and gradient checkpointing: both slow this CPU down (fp32 matmul is
                    # faster than bf16 here) and lmforge uses neither, so they are off for a like-for-like run
                    bf16=False, gradient_checkpointing=False,
                    dataloader_num_workers=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=train, eval_dataset=test, processing_class=tok)
    batches = list(trainer.get_train_dataloader())[:args.steps]
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    trained = sum(int((b["labels"] != -100).sum()) for b in batches)
    seconds = trainer.train().metrics["train_runtime"]  # the Trainer's own loop time, like lmforge's runtime_s
    out.update(real_tokens=real, trained_tokens=trained, train_s=seconds, eval_loss=trainer.evaluate()["eval_loss"])


def run_lmforge(args, out: dict, packing: str) -> None:
    from lmforge import api
    d = Path(args.tmp)
    with open(d / "train.jsonl", "w") as f:
        for r in rows("train", args.steps * args.batch * (4 if packing == "pack" else 1)):
            f.write(json.dumps(r) + "\n")
    with open(d / "test.jsonl", "w") as f:
        for r in rows("test", args.eval):
            f.write(json.dumps(r) + "\n")
    cfg = {"task": "sft", "model": {"name": "smollm2-135m"},
           "data": {"train": str(d / "train.jsonl"), "eval": str(d / "test.jsonl"), "block_size": args.block,
                    "packing": packing},
           "train": {"max_steps": args.steps, "per_device_train_batch_size": args.batch, "learning_rate": args.lr,
                     "lr_scheduler_type": "constant", "logging_steps": 5, "eval_strategy": "no",
                     "save_strategy": "no", "seed": 1, "report_to": "none", "compile": False},
           "output": {"output_dir": str(d / "run")}}
    res = api.train(cfg, progress=False)
    tr = res.metrics["train"]
    summary = json.loads((res.run_dir / "manifest.json").read_text())["data_summary"]
    share = summary["trained_tokens"] / summary["train_tokens"]
    train_s = tr["runtime_s"] - tr["eval_s"]
    real = tr["tokens_per_s"] * train_s
    out.update(real_tokens=real, trained_tokens=real * share, train_s=train_s, eval_loss=res.metrics["eval"]["loss"])


def child(args) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict = {"variant": args.variant}
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        if args.variant == "trl":
            run_trl(args, out)
        else:
            run_lmforge(args, out, args.variant.split("-")[1])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["real_tokens_per_s"] = out["real_tokens"] / out["train_s"]
    out["trained_tokens_per_s"] = out["trained_tokens"] / out["train_s"]
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--eval", type=int, default=48)
    ap.add_argument("--variant", default=None)
    ap.add_argument("--variants", default="trl,lmforge-truncate,lmforge-pack")
    args = ap.parse_args()
    if args.variant:
        return child(args)
    results = []
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", v, "--steps", str(args.steps), "--batch", str(args.batch),
               "--lr", str(args.lr), "--block", str(args.block), "--eval", str(args.eval)]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{v} failed:\n{p.stderr[-3000:]}")
            continue
        results.append(json.loads(line[-1][7:]))
    base = next((r for r in results if r["variant"] == "trl"), None)
    print(f"{'variant':18s} {'real tok/s':>10s} {'trained tok/s':>13s} {'peak RSS MB':>11s} {'eval loss':>9s} ratio")
    for r in results:
        ratio = r["real_tokens_per_s"] / base["real_tokens_per_s"] if base else float("nan")
        print(f"{r['variant']:18s} {r['real_tokens_per_s']:10.1f} {r['trained_tokens_per_s']:13.1f} "
              f"{r['peak_rss_mb']:11.0f} {r['eval_loss']:9.4f} {ratio:.2f}x")


if __name__ == "__main__":
    main()

"""Causal-LM benchmark: the tutorial's Trainer recipes against lmforge, back to back.

    python benchmarks/causal_lm.py                     # smollm2-135m on kjv, batch 8, 10 steps of 8 x 256
    python benchmarks/causal_lm.py --steps 50 --eval-blocks 32

Same model (smollm2-135m), data (kjv train books, one verse a line), batch 8, lr 5e-4 cosine,
seed, and the same budget of real (non-pad) training tokens:
  padded      transformers.Trainer, each line truncated and padded to max_length=64, pad = eos
              (DataCollatorForLanguageModeling(mlm=False)); steps chosen to see the same real tokens
  group_texts transformers.Trainer, lines tokenized, concatenated, cut into 256-token blocks
  lmforge     packed 256-token blocks (EOS after each book, attention kept inside books), chunked loss,
              fused AdamW, decoder layers torch.compile'd (train.compile: auto)
  lmforge-eager         the same with train.compile: false (the torch.compile lever)
  lmforge-full-logits   the same with the model's full-vocabulary logits (the chunked-loss lever)
  lmforge-1thread       lmforge with torch.set_num_threads(1) (the thread-settings lever)
Each recipe runs in its own child process, one after the other, so its peak RSS is its own.
All trained models are scored by the same evaluation: the first --eval-blocks packed 256-token
blocks of the 4 held-out books (kjv:test). MFU = 6 x matmul params x real tokens/s / the fp32
2048x2048 matmul peak measured by this run at its start (2 threads), the same for every recipe.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BLOCK = 256
PAD_LEN = 64


class RssSampler:
    """Peak resident memory of this process while a phase runs (polls /proc every 0.1 s)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            time.sleep(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def kjv_lines(split: str) -> list[str]:
    from lmforge.data.builtin import load
    return [line for book in load("kjv", split)["text"] for line in book.splitlines() if line.strip()]


def heldout_eval(model, tok, n_blocks: int) -> dict:
    """lmforge's evaluation of a model on the fixed held-out slice (same for every recipe)."""
    from lmforge.config import Config
    from lmforge.data.corpus import read_corpus
    from lmforge.models.load import ensure_pad
    from lmforge.tasks import causal_lm as clm
    from lmforge.train.evaluation import evaluate_split

    ensure_pad(tok, model)
    docs = read_corpus("kjv:test", Config(), "eval")
    split = clm.encode_split(docs, tok, BLOCK, "pack", keep_remainder=True).data
    split = clm._head(split, n_blocks)
    loss = clm.CausalLMLoss(attention=clm.probe_packed_attention(model, tok.pad_token_id),
                            chunked=clm.probe_chunked_loss(model))
    from lmforge.tasks.base import TaskParts
    prep = TaskParts(task=clm.TASK, model=model, tokenizer=tok, train=None, eval=split,
                    collate=clm.make_collate(tok.pad_token_id, "pack"), loss=loss, eval_step=loss.eval_step,
                    finalize=clm.finalize)
    return evaluate_split(model, split, prep, batch_size=8)


def run_trainer(mode: str, args, queue) -> None:
    import torch
    import datasets
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments, default_data_collator)
    from transformers.utils import logging as hf_logging
    from lmforge.train.perf import device_peak_flops, matmul_params
    from lmforge.models.zoo import resolve_model

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    path = resolve_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.eos_token  # the tutorial's pad = eos
    lines = kjv_lines("train")
    ds = datasets.Dataset.from_dict({"text": lines})
    if mode == "padded":
        ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=PAD_LEN, padding="max_length"),
                    batched=True, remove_columns=["text"])
        base = DataCollatorForLanguageModeling(tok, mlm=False)
        real_per_row = sum(map(sum, ds["attention_mask"])) / len(ds)
        steps = max(1, round(args.steps * args.batch * BLOCK / (args.batch * real_per_row)))
    else:
        enc = ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])

        def group_texts(examples):  # the tutorial's function
            concatenated = {k: sum(examples[k], []) for k in examples.keys()}
            total = (len(concatenated["input_ids"]) // BLOCK) * BLOCK
            result = {k: [t[i:i + BLOCK] for i in range(0, total, BLOCK)] for k, t in concatenated.items()}
            result["labels"] = result["input_ids"].copy()
            return result
        ds = enc.map(group_texts, batched=True, batch_size=1000)
        base = default_data_collator
        steps = args.steps
    counts = {"real": 0, "total": 0}

    def count_tokens(module, args, kwargs):
        # Counted at the model's forward, not in the collator: the data loader prefetches batches
        # that are never trained on.
        if module.training:
            mask = kwargs["attention_mask"]
            counts["real"] += int(mask.sum())
            counts["total"] += int(mask.numel())

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.register_forward_pre_hook(count_tokens, with_kwargs=True)
    collate = base
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(output_dir=tmp, per_device_train_batch_size=args.batch, max_steps=steps,
                                  learning_rate=args.lr, lr_scheduler_type="cosine", weight_decay=0.01,
                                  logging_steps=max(1, steps // 5), save_strategy="no", report_to=[],
                                  seed=args.seed, use_cpu=True, dataloader_num_workers=0,
                                  disable_tqdm=True)
        trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=collate)
        with RssSampler() as rss:
            t0 = time.perf_counter()
            trainer.train()
            train_s = time.perf_counter() - t0
    model.eval()
    metrics = heldout_eval(model, tok, args.eval_blocks)
    tok_s = counts["real"] / train_s
    peak = args.peak_flops
    queue.put({"recipe": mode, "steps": steps, "real_tokens": counts["real"],
               "pad_share": 1 - counts["real"] / max(1, counts["total"]), "train_s": train_s,
               "real_tokens_per_s": tok_s, "mfu": 6 * matmul_params(model) * tok_s / peak,
               "peak_rss_mb": rss.peak / 2**20, "eval_loss": metrics["loss"], "eval_ppl": metrics["perplexity"],
               "eval_ppl_word": metrics.get("perplexity_per_word")})


def run_lmforge(mode: str, args, queue) -> None:
    import torch
    from lmforge import api
    from lmforge.tasks import causal_lm as clm
    from lmforge.train.perf import device_peak_flops

    if mode == "lmforge-full-logits":
        clm.probe_chunked_loss = lambda model: False
    compile_flag = False if mode == "lmforge-eager" else "auto"
    if mode == "lmforge-1thread":
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"task": "causal-lm", "model": {"name": "smollm2-135m"},
               "data": {"train": "kjv", "eval": "kjv:test", "block_size": BLOCK, "packing": "pack",
                        "max_eval_samples": args.eval_blocks},
               "train": {"max_steps": args.steps, "learning_rate": args.lr, "lr_scheduler_type": "cosine",
                         "per_device_train_batch_size": args.batch, "per_device_eval_batch_size": 8,
                         "seed": args.seed, "eval_strategy": "no", "save_strategy": "no", "compile": compile_flag,
                         "logging_steps": max(1, args.steps // 5), "load_best_model_at_end": False},
               "output": {"output_dir": str(Path(tmp) / "run")}}
        with RssSampler() as rss:
            res = api.train(cfg, progress=False)
        tr = res.metrics["train"]
        real = tr["tokens_per_s"] * tr["runtime_s"]
        from lmforge.train.perf import matmul_params
        from transformers import AutoConfig, AutoModelForCausalLM
        with torch.device("meta"):
            n_flop = matmul_params(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(res.run_dir / "model")))
        queue.put({"recipe": mode, "steps": tr["steps"], "real_tokens": round(real), "pad_share": 0.0,
                   "train_s": tr["runtime_s"], "real_tokens_per_s": tr["tokens_per_s"],
                   "mfu": 6 * n_flop * tr["tokens_per_s"] / args.peak_flops, "mfu_logged": tr["mfu"],
                   "peak_rss_mb": rss.peak / 2**20, "eval_loss": res.metrics["eval"]["loss"],
                   "eval_ppl": res.metrics["eval"]["perplexity"],
                   "eval_ppl_word": res.metrics["eval"].get("perplexity_per_word"),
                   "before_ppl": res.metrics["before"]["perplexity"],
                   "before_ppl_word": res.metrics["before"].get("perplexity_per_word"),
                   "peak_flops": args.peak_flops})


def child(mode, args, queue):
    (run_trainer if mode in ("padded", "group_texts") else run_lmforge)(mode, args, queue)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="optimizer steps of 8 x 256 tokens (padded: same real tokens)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--eval-blocks", type=int, default=16)
    p.add_argument("--recipes", default="padded,group_texts,lmforge,lmforge-eager")
    p.add_argument("--out", default="benchmarks/causal_lm_results.json")
    args = p.parse_args(argv)
    from lmforge.models.zoo import resolve_model
    resolve_model("smollm2-135m")  # convert once, outside the timed runs
    import torch
    from lmforge.train.perf import measure_cpu_peak
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    args.peak_flops = measure_cpu_peak(seconds=3.0)
    print(f"fp32 matmul peak now: {args.peak_flops / 1e9:.0f} GFLOP/s", flush=True)
    ctx = mp.get_context("spawn")
    rows = []
    for mode in args.recipes.split(","):
        q = ctx.Queue()
        proc = ctx.Process(target=child, args=(mode, args, q))
        t0 = time.perf_counter()
        proc.start()
        row = q.get()
        proc.join()
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    ours = next((r for r in rows if r["recipe"] == "lmforge"), None)
    print("\n| recipe | steps | real tokens | padding | real tokens/s | MFU | peak RSS (MB) | held-out ppl | ppl/word |"
          " tokens/s vs lmforge |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{ours['real_tokens_per_s'] / r['real_tokens_per_s']:.2f}x" if ours and r is not ours else "-"
        print(f"| {r['recipe']} | {r['steps']} | {r['real_tokens']:,} | {100 * r['pad_share']:.0f}% | "
              f"{r['real_tokens_per_s']:.0f} | {100 * r['mfu']:.1f}% | {r['peak_rss_mb']:,.0f} | {r['eval_ppl']:.2f} | "
              f"{r['eval_ppl_word']:.2f} | {ratio} |")
    if ours:
        print(f"\nbefore training: held-out ppl {ours['before_ppl']:.2f}, per word {ours['before_ppl_word']:.2f}; "
              f"peak {ours['peak_flops'] / 1e9:.0f} GFLOP/s")
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())

"""Masked-LM domain adaptation: the tutorial recipe (transformers.Trainer) against lmforge.

Same model (minilm-l6), same news corpus (the built-in bbc-news article texts), same steps and
batch size, and one fixed-mask evaluation set for everyone: the bbc-news test articles cut into
128-token blocks and masked once (token masking, p = 0.15, seed 0). Perplexity = exp(mean NLL
over the masked tokens), computed by the same function for every model.

    python benchmarks/masked_lm.py                       # tutorial + lmforge variants, 70 steps
    python benchmarks/masked_lm.py --steps 20 --variants tutorial,lmforge --out /tmp/mlm.json

The tutorial recipe (HF course, "Fine-tuning a masked language model"): tokenize every text
with its special tokens, concatenate, cut into 128-token chunks (group_texts), token masking
with DataCollatorForLanguageModeling(mlm_probability=0.15), Trainer with learning_rate 2e-5,
weight_decay 0.01, batch 32.

lmforge variants (all: task masked-lm, defaults otherwise, learning_rate 5e-5):
  lmforge               the default recipe: new output bias at log unigram frequencies, head LR 100x
  lmforge-no-head-lr    train.head_learning_rate = learning_rate (the head-LR lever off)
  lmforge-no-bias-init  model.init_output_bias: false (the bias-init lever off)
  lmforge-head-lr-20x   train.head_learning_rate = 20 x learning_rate (any lmforge-head-lr-<N>x)
  lmforge-whole-word    the issue's config: data.masking whole-word
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

PROBES = [
    "The [MASK] said the company's profits had risen by 10% last year.",
    "Shares in the firm [MASK] sharply after the announcement.",
    "The prime minister will call a general [MASK] next year.",
    "Chelsea beat Arsenal 2-1 in the [MASK] on Saturday.",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fixed_eval_set(tokenizer, n_blocks: int, block_size: int):
    """The shared evaluation rows: lmforge's fixed-mask blocks of the bbc-news test articles."""
    from lmforge.config import build_config
    from lmforge.data import masking
    from lmforge.data.corpus import read_corpus
    cfg = build_config({"task": "masked-lm", "data": {"train": "bbc-news"}})
    docs = read_corpus("bbc-news:test", cfg, "eval")
    ids, _, _ = masking.encode_blocks(docs, tokenizer, block_size, "drop")
    spec = masking.MaskSpec.of(tokenizer, 0.15, False)
    masked, labels = masking.mask_fixed(ids[:n_blocks], None, spec, 0, tokenizer.pad_token_id)
    return torch.tensor(masked), torch.tensor(labels)


@torch.no_grad()
def perplexity(model, X, Y, batch: int = 32) -> dict:
    model.eval()
    nll, n, correct = 0.0, 0, 0
    for i in range(0, len(X), batch):
        logits = model(input_ids=X[i:i + batch], attention_mask=torch.ones_like(X[i:i + batch])).logits
        y = Y[i:i + batch]
        sel = y != -100
        lo = logits[sel].float()
        nll += float(F.cross_entropy(lo, y[sel], reduction="sum"))
        correct += int((lo.argmax(-1) == y[sel]).sum())
        n += int(sel.sum())
    return {"perplexity": math.exp(nll / n), "loss": nll / n, "accuracy": correct / n, "n_masked": n}


def probes(model, tokenizer) -> list:
    from lmforge.tasks.fill_mask import fill_mask_with
    return [{"text": r["text"], "top5": [[c["token"], round(c["score"], 4)] for c in r["masks"][0]["candidates"]]}
            for r in fill_mask_with(model, tokenizer, PROBES, top_k=5)]


def run_tutorial(model_path: str, steps: int, batch: int, block: int, seed: int, X, Y, workdir: Path) -> dict:
    import datasets
    from transformers import (AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)
    from lmforge.data import builtin
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_df = builtin.load("bbc-news", "train")
    ds = datasets.Dataset.from_dict({"text": train_df["text"].tolist()})

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    def group_texts(examples):
        concatenated = {k: sum(examples[k], []) for k in examples.keys()}
        total = (len(concatenated[list(examples.keys())[0]]) // block) * block
        result = {k: [t[i:i + block] for i in range(0, total, block)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    tokenized = ds.map(tokenize_function, batched=True, remove_columns=["text"])
    lm_ds = tokenized.map(group_texts, batched=True)
    prep_s = time.perf_counter() - t0
    model = AutoModelForMaskedLM.from_pretrained(model_path)
    torch.manual_seed(seed)
    before = perplexity(model, X, Y)
    before_probes = probes(model, tokenizer)
    log(f"tutorial: {len(lm_ds)} chunks, before {before['perplexity']:.1f}")
    args = TrainingArguments(output_dir=str(workdir / "tutorial"), learning_rate=2e-5, weight_decay=0.01,
                             per_device_train_batch_size=batch, max_steps=steps, logging_steps=10, seed=seed,
                             save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True,
                             disable_tqdm=True)
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)
    trainer = Trainer(model=model, args=args, train_dataset=lm_ds, data_collator=collator)
    t1 = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - t1
    after = perplexity(model, X, Y)
    return {"before": before, "after": after, "train_runtime_s": round(train_s, 1), "prep_s": round(prep_s, 1),
            "tokens_per_s": round(steps * batch * block / train_s, 1), "train_loss": out.training_loss,
            "probes_before": before_probes, "probes_after": probes(model, tokenizer)}


def run_lmforge(variant: str, steps: int, batch: int, block: int, seed: int, n_eval: int, X, Y, workdir: Path) -> dict:
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from lmforge import api
    cfg = {"task": "masked-lm", "model": {"name": "minilm-l6"},
           "data": {"train": "bbc-news", "eval": "bbc-news:test", "block_size": block, "max_eval_samples": n_eval},
           "train": {"max_steps": steps, "per_device_train_batch_size": batch, "seed": seed, "logging_steps": 10,
                     "eval_strategy": "no", "save_strategy": "no"},
           "output": {"output_dir": str(workdir / variant), "overwrite": True}}
    if variant == "lmforge-no-head-lr":
        cfg["train"]["head_learning_rate"] = 5e-5
    elif variant.startswith("lmforge-head-lr-"):  # e.g. lmforge-head-lr-100x: head LR = 100 x 5e-5
        cfg["train"]["head_learning_rate"] = 5e-5 * float(variant.removeprefix("lmforge-head-lr-").rstrip("x"))
    elif variant == "lmforge-no-bias-init":
        cfg["model"]["init_output_bias"] = False
    elif variant == "lmforge-whole-word":
        cfg["data"]["masking"] = "whole-word"
    elif variant != "lmforge":
        raise SystemExit(f"unknown variant {variant}")
    t0 = time.perf_counter()
    res = api.train(cfg, progress=False)
    wall = time.perf_counter() - t0
    model = AutoModelForMaskedLM.from_pretrained(res.run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(res.run_dir / "model")
    after = perplexity(model, X, Y)
    m = res.metrics
    return {"before": {"perplexity": m["before"]["perplexity"], "n_masked": m["before"]["n_masked"]},
            "after": after, "after_own_eval": m["eval"]["perplexity"],
            "train_runtime_s": m["train"]["runtime_s"], "wall_s": round(wall, 1),
            "tokens_per_s": m["train"]["tokens_per_s"], "train_loss": m["train"]["loss"],
            "head_learning_rate": res.config.train.head_learning_rate,
            "probes_after": probes(model, tokenizer)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=70)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--eval-blocks", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores; 1 is faster on a busy machine)")
    ap.add_argument("--variants", default="tutorial,lmforge,lmforge-no-head-lr,lmforge-no-bias-init")
    ap.add_argument("--workdir", default="runs/bench-mlm")
    ap.add_argument("--out", default="runs/bench-mlm/results.json")
    a = ap.parse_args()
    from transformers import AutoTokenizer
    from lmforge.runtime import quiet_libraries
    from lmforge.models.zoo import resolve_model
    quiet_libraries()
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    path = resolve_model("minilm-l6")
    tok = AutoTokenizer.from_pretrained(path)
    X, Y = fixed_eval_set(tok, a.eval_blocks, a.block)
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = {"steps": a.steps, "batch": a.batch, "block": a.block, "eval_blocks": len(X),
           "eval_masked_tokens": int((Y != -100).sum()), "threads": torch.get_num_threads(),
           "load_avg_start": os.getloadavg(), "results": {}}
    for v in a.variants.split(","):
        log(f"running {v}")
        if v == "tutorial":
            r = run_tutorial(path, a.steps, a.batch, a.block, a.seed, X, Y, workdir)
        else:
            r = run_lmforge(v, a.steps, a.batch, a.block, a.seed, a.eval_blocks, X, Y, workdir)
        out["results"][v] = r
        log(f"{v}: perplexity {r['before']['perplexity']:.1f} -> {r['after']['perplexity']:.1f}, "
            f"train {r['train_runtime_s']} s, {r['tokens_per_s']} tokens/s")
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
    out["load_avg_end"] = os.getloadavg()
    Path(a.out).write_text(json.dumps(out, indent=1))
    tut = out["results"].get("tutorial")
    print(f"\n{'recipe':24s} {'ppl before':>11s} {'ppl after':>10s} {'vs tutorial':>11s} {'train s':>8s} {'tok/s':>7s}")
    for v, r in out["results"].items():
        ratio = r["after"]["perplexity"] / tut["after"]["perplexity"] if tut else float("nan")
        print(f"{v:24s} {r['before']['perplexity']:11.1f} {r['after']['perplexity']:10.1f} {ratio:11.3f} "
              f"{r['train_runtime_s']:8.1f} {r['tokens_per_s']:7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

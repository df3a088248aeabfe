"""GRPO on the arithmetic prompts: TRL's GRPOTrainer against lmforge, same model (smollm2-135m), prompts, group
size, completion length, batch, steps, learning rate, loss type and reward functions, back to back, each in its
own process (peak RSS is per process).

    pip install --no-deps trl        # benchmark only (the `bench` extra); not needed by lmforge
    python benchmarks/grpo.py --steps 12 --prompts 4 --group 8 --length 16

Variants:
- trl: GRPOTrainer generating with model.generate (no vLLM), gradient checkpointing off, fp32 (as lmforge on a CPU);
- lmforge: task grpo (one prefill per group in sampling and in the training pass, finished rows leave the decode
  batch, the LM head only at completion positions);
- lmforge-noshare: task grpo with grpo.share_prefill: false (each completion runs its prompt), to measure that lever.
Rewards: lmforge's built-ins exact_match + 0.5 contains + 0.5 format (a bare number), called by both trainers the
same way (TRL's convention). Reported: completions per second and training tokens per second (prompt + completion
tokens of every completion, over the training steps), peak RSS, and the reward gain (mean reward of the last
quarter of the steps minus the first quarter's).
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
FORMAT = r"^\s*-?\d+\s*\.?\s*$"
WEIGHTS = [1.0, 0.5, 0.5]


def prompts(n: int) -> list[dict]:
    from lmforge.data import builtin
    df = builtin.load("arithmetic", "train").head(n)
    return [{"prompt": p, "answer": a} for p, a in zip(df["prompt"], df["answer"])]


def reward_functions(length: int):
    from lmforge.tasks import rewards
    opts = rewards.RewardOptions(format_pattern=FORMAT, max_completion_length=length)
    return [r.fn for r in rewards.load_rewards(["exact_match", "contains", "format"], WEIGHTS, opts)]


def lmforge_order(rows: list[dict], prompts_per_step: int, seed: int) -> list[dict]:
    """The rows in the order lmforge's run visits them (train.group_by_length false: a seeded permutation, epoch 0),
    so TRL (shuffle_dataset false) sees the same prompts at every step and the reward curves compare like with
    like."""
    from lmforge.data.batching import epoch_batches
    batches = epoch_batches([1] * len(rows), prompts_per_step, seed, 0, group_by_length=False)
    return [rows[i] for b in batches for i in b]


def gain(values: list[float]) -> float:
    q = max(1, len(values) // 4)
    return sum(values[-q:]) / q - sum(values[:q]) / q


def run_trl(args, out: dict) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from lmforge.models.load import resolve_model_dir
    path = str(resolve_model_dir("smollm2-135m"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    train = Dataset.from_list(lmforge_order(prompts(args.steps * args.prompts), args.prompts, args.seed))
    cfg = GRPOConfig(output_dir=args.tmp, max_steps=args.steps, per_device_train_batch_size=args.prompts * args.group,
                     num_generations=args.group, max_completion_length=args.length, temperature=args.temperature,
                     learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, loss_type="dapo", beta=0.0,
                     reward_weights=WEIGHTS, logging_steps=1, save_strategy="no", report_to=[], seed=args.seed, use_cpu=True,
                     bf16=False, gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True,
                     shuffle_dataset=False)
    t0 = time.perf_counter()
    trainer = GRPOTrainer(model=model, args=cfg, train_dataset=train, reward_funcs=reward_functions(args.length),
                          processing_class=tok)
    stamps = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            stamps.setdefault("first_step", time.perf_counter())

        def on_train_end(self, a, state, control, **kw):
            stamps["end"] = time.perf_counter()
    trainer.add_callback(Clock())
    trainer.train()
    hist = [h for h in trainer.state.log_history if "reward" in h]
    out.update(total_s=stamps["end"] - t0, train_s=stamps["end"] - stamps["first_step"],
               tokens=hist[-1].get("num_tokens"), rewards=[h["reward"] for h in hist],
               completion_length=sum(h["completions/mean_length"] for h in hist) / len(hist))


def run_lmforge(args, out: dict, share: bool) -> None:
    from lmforge import api
    d = Path(args.tmp)
    rows = prompts(args.steps * args.prompts + 4)
    for name, part in (("train", rows[:-4]), ("eval", rows[-4:])):  # eval: not evaluated (eval_strategy no)
        with open(d / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    cfg = {"task": "grpo", "model": {"name": "smollm2-135m"},
           "data": {"train": str(d / "train.jsonl"), "eval": str(d / "eval.jsonl"), "block_size": 128},
           "grpo": {"rewards": ["exact_match", "contains", "format"], "reward_weights": WEIGHTS, "format_pattern": FORMAT,
                    "num_generations": args.group, "max_completion_length": args.length,
                    "temperature": args.temperature, "loss_type": "dapo", "share_prefill": share,
                    "preflight_prompts": 0},
           "train": {"max_steps": args.steps, "per_device_train_batch_size": args.prompts, "learning_rate": args.lr,
                     "lr_scheduler_type": "constant", "warmup_steps": 0, "logging_steps": 1, "eval_strategy": "no",
                     "save_strategy": "no", "seed": args.seed, "report_to": "none", "weight_decay": 0.0,
                     "group_by_length": False},
           "output": {"output_dir": str(d / "run")}}
    t0 = time.perf_counter()
    res = api.train(cfg, progress=False)
    tr = res.metrics["train"]
    setup_s = json.loads((res.run_dir / "manifest.json").read_text()).get("setup_s") or 0.0
    log = [json.loads(x) for x in (res.run_dir / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "reward" in r and "loss" in r]
    length = sum(r["completion_length"] for r in steps) / len(steps)
    from transformers import AutoTokenizer

    from lmforge.models.load import resolve_model_dir
    tok = AutoTokenizer.from_pretrained(str(resolve_model_dir("smollm2-135m")))
    p_len = sum(len(tok(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False)["input_ids"]) for r in prompts(args.steps * args.prompts)) \
        / (args.steps * args.prompts)
    completions = args.steps * args.prompts * args.group
    out.update(total_s=setup_s + tr["runtime_s"], train_s=tr["runtime_s"] - tr["eval_s"],
               tokens=completions * (p_len + length), rewards=[r["reward"] for r in steps], completion_length=length,
               generation_s=sum(r["generation_s"] for r in steps), wall_s=time.perf_counter() - t0)


def child(args) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict = {"variant": args.variant}
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        if args.variant == "trl":
            run_trl(args, out)
        else:
            run_lmforge(args, out, share=args.variant == "lmforge")
    completions = args.steps * args.prompts * args.group
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["completions_per_s"] = completions / out["train_s"]
    out["train_tokens_per_s"] = (out["tokens"] or 0) / out["train_s"]
    out["reward_gain"] = gain(out["rewards"])
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--length", type=int, default=16, help="max completion tokens")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=1, help="both trainers' seed (and lmforge's prompt order)")
    ap.add_argument("--variant", default=None)
    ap.add_argument("--variants", default="trl,lmforge,lmforge-noshare")
    args = ap.parse_args()
    if args.variant:
        return child(args)
    results = []
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", v] + [f"--{k}={getattr(args, k)}" for k in
                                                             ("steps", "prompts", "group", "length", "lr", "temperature",
                                                              "seed")]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{v} failed:\n{p.stderr[-3000:]}")
            continue
        results.append(json.loads(line[-1][7:]))
        print(json.dumps(results[-1]), flush=True)
    base = next((r for r in results if r["variant"] == "trl"), None)
    print(f"{'variant':16s} {'compl/s':>8s} {'train tok/s':>11s} {'peak RSS MB':>11s} {'reward gain':>11s} "
          f"{'mean length':>11s} ratio")
    for r in results:
        ratio = r["completions_per_s"] / base["completions_per_s"] if base else float("nan")
        print(f"{r['variant']:16s} {r['completions_per_s']:8.2f} {r['train_tokens_per_s']:11.1f} "
              f"{r['peak_rss_mb']:11.0f} {r['reward_gain']:11.3f} {r['completion_length']:11.1f} {ratio:.2f}x")


if __name__ == "__main__":
    main()

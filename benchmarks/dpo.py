"""DPO on kjv-to-web-pairs: TRL's DPOTrainer against lmforge, same model, data, batch, steps, beta and learning
rate, back to back, each in its own process (peak RSS is per process).

    pip install --no-deps trl        # benchmark only (the `bench` extra); not needed by lmforge
    python benchmarks/dpo.py --steps 10 --batch 8

Variants:
- trl: DPOTrainer with its defaults for a CPU (a second, frozen reference model scored at every step;
  chosen and rejected padded together; full-vocabulary logits);
- trl-precompute: the same with precompute_ref_log_probs=True (the reference scored once, before training);
- lmforge: task dpo (reference log-probs computed once and cached; the prompt's forward shared by both replies
  in one row; the LM head only at the scored positions). The reference cache is emptied first.
Both start from smollm2-135m; the pairs are the first steps x batch of kjv-to-web-pairs (prompt = the rewrite
instruction, chosen = the WEB verse, rejected = the KJV verse). Reported: pairs/s over the whole job (reference
pass + training steps) and over the training steps alone, peak RSS, and the reward accuracy on the first --eval
pairs of the test split (Ruth, Ecclesiastes, Mark, James) after training.
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


def run_trl(args, out: dict, precompute: bool) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from lmforge.models.load import resolve_model_dir
    path = str(resolve_model_dir("smollm2-135m"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    train = Dataset.from_list(rows("train", args.steps * args.batch))
    test = Dataset.from_list(rows("test", args.eval))
    cfg = DPOConfig(output_dir=args.tmp, max_steps=args.steps, per_device_train_batch_size=args.batch,
                    per_device_eval_batch_size=8, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                    beta=args.beta, max_length=args.block, precompute_ref_log_probs=precompute,
                    logging_steps=5, save_strategy="no", eval_strategy="no", report_to=[], seed=1, use_cpu=True,
                    bf16=False, gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True)
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=train, eval_dataset=test, processing_class=tok)
    stamps = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            stamps.setdefault("first_step", time.perf_counter())

        def on_train_end(self, a, state, control, **kw):
            stamps["end"] = time.perf_counter()
    trainer.add_callback(Clock())
    trainer.train()
    ev = trainer.evaluate()
    out.update(total_s=stamps["end"] - t0, train_s=stamps["end"] - stamps["first_step"],
               reward_accuracy=ev["eval_rewards/accuracies"], eval_loss=ev["eval_loss"])


def run_lmforge(args, out: dict) -> None:
    from lmforge import api
    d = Path(args.tmp)
    for name, split, n in (("train", "train", args.steps * args.batch), ("test", "test", args.eval)):
        with open(d / f"{name}.jsonl", "w") as f:
            for r in rows(split, n):
                f.write(json.dumps(r) + "\n")
    cfg = {"task": "dpo", "model": {"name": "smollm2-135m"},
           "data": {"train": str(d / "train.jsonl"), "eval": str(d / "test.jsonl"), "block_size": args.block},
           "dpo": {"beta": args.beta},
           "train": {"max_steps": args.steps, "per_device_train_batch_size": args.batch, "learning_rate": args.lr,
                     "lr_scheduler_type": "constant", "warmup_steps": 0, "logging_steps": 5, "eval_strategy": "no",
                     "save_strategy": "no", "seed": 1, "report_to": "none", "group_by_length": False},
           "output": {"output_dir": str(d / "run")}}
    t0 = time.perf_counter()
    res = api.train(cfg, progress=False)
    tr = res.metrics["train"]
    train_s = tr["runtime_s"] - tr["eval_s"]
    setup_s = json.loads((res.run_dir / "manifest.json").read_text()).get("setup_s")
    total = time.perf_counter() - t0
    # the whole job less model saving, report and the evaluations before and after (TRL's run has none of those)
    out.update(total_s=(setup_s + train_s) if setup_s else total, train_s=train_s,
               reward_accuracy=res.metrics["eval"]["reward_accuracy"], eval_loss=res.metrics["eval"]["loss"])


def child(args) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict = {"variant": args.variant}
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        # lmforge's cache without the reference log-probs (the converted model and the FLOP/s probe are kept)
        cache = Path(tmp) / "cache"
        cache.mkdir()
        src = Path(os.environ.get("LMFORGE_CACHE") or os.path.expanduser("~/.cache/lmforge"))
        for entry in (src.iterdir() if src.exists() else []):
            if entry.name != "reference-logps":
                (cache / entry.name).symlink_to(entry)
        os.environ["LMFORGE_CACHE"] = str(cache)
        if args.variant.startswith("trl"):
            run_trl(args, out, precompute=args.variant == "trl-precompute")
        else:
            run_lmforge(args, out)
    pairs = args.steps * args.batch
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["pairs_per_s"] = pairs / out["total_s"]
    out["train_pairs_per_s"] = pairs / out["train_s"]
    print("RESULT " + json.dumps(out))


def conventions(pairs: int = 64, beta: float = 0.3, seed: int = 0) -> None:
    """IPO's logged rewards under lmforge's two conventions beside TRL's own code, and DPO with label smoothing,
    on seeded random log-probs (the parity harness of tests/test_reference_parity.py runs TRL's code)."""
    import torch
    sys.path.insert(0, str(ROOT / "tests"))
    from test_reference_parity import _trl_dpo

    from lmforge.tasks.preference_loss import preference_loss
    g = torch.Generator().manual_seed(seed)
    nc, nr = torch.randint(2, 40, (pairs,), generator=g), torch.randint(2, 40, (pairs,), generator=g)
    pc, pr = -nc * (1 + torch.rand(pairs, generator=g)), -nr * (1 + torch.rand(pairs, generator=g))
    rc, rr = pc + torch.randn(pairs, generator=g), pr + torch.randn(pairs, generator=g)
    pc, pr, rc, rr = (x.double() for x in (pc, pr, rc, rr))
    trl_loss, m = _trl_dpo("ipo", beta, pc, pr, rc, rr, nc, nr)
    print(f"IPO, {pairs} pairs, beta {beta}:   loss   rewards_chosen  rewards_rejected  reward_accuracy")
    for scale in ("mean", "sum"):
        loss, c, r = preference_loss("ipo", beta, pc, pr, nc, nr, rc, rr, reward_scale=scale)
        print(f"  lmforge reward_scale: {scale:4s}  {float(loss.mean()):.4f}  {float(c.mean()):14.4f}  "
              f"{float(r.mean()):16.4f}  {float((c > r).double().mean()):15.4f}")
    print(f"  TRL 1.16 (DPOTrainer)      {trl_loss:.4f}  {m['rewards/chosen']:14.4f}  {m['rewards/rejected']:16.4f}  "
          f"{m['rewards/accuracies']:15.4f}")
    trl_sig, _ = _trl_dpo("sigmoid", 0.1, pc, pr, rc, rr, nc, nr)
    for eps in (0.0, 0.1):
        loss, _, _ = preference_loss("sigmoid", 0.1, pc, pr, nc, nr, rc, rr, label_smoothing=eps)
        print(f"DPO sigmoid, label_smoothing {eps}: lmforge loss {float(loss.mean()):.6f}, TRL 1.16 {trl_sig:.6f} "
              "(TRL's sigmoid ignores label_smoothing)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conventions", action="store_true", help="Only print the loss/reward conventions beside TRL's.")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--eval", type=int, default=48)
    ap.add_argument("--variant", default=None)
    ap.add_argument("--variants", default="trl,trl-precompute,lmforge")
    args = ap.parse_args()
    if args.conventions:
        return conventions()
    if args.variant:
        return child(args)
    results = []
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", v] + [f"--{k}={getattr(args, k)}" for k in
                                                             ("steps", "batch", "lr", "beta", "block", "eval")]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{v} failed:\n{p.stderr[-3000:]}")
            continue
        results.append(json.loads(line[-1][7:]))
        print(json.dumps(results[-1]), flush=True)
    base = next((r for r in results if r["variant"] == "trl"), None)
    print(f"{'variant':15s} {'pairs/s':>8s} {'train pairs/s':>13s} {'peak RSS MB':>11s} {'reward acc':>10s} "
          f"{'eval loss':>9s} ratio")
    for r in results:
        ratio = r["pairs_per_s"] / base["pairs_per_s"] if base else float("nan")
        print(f"{r['variant']:15s} {r['pairs_per_s']:8.3f} {r['train_pairs_per_s']:13.3f} {r['peak_rss_mb']:11.0f} "
              f"{r['reward_accuracy']:10.3f} {r['eval_loss']:9.4f} {ratio:.2f}x")


if __name__ == "__main__":
    main()

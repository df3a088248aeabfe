"""How close is the pre-training memory estimate (lmforge.train.memory) to what training uses?

    python benchmarks/memory_estimate.py            # minilm-l6 on finefood, CPU, a few settings

For each setting: build the run as `lmforge train` does, estimate, then train 3 steps and compare
the estimate of what training adds (gradients + optimizer + activations) with the growth of the
process's peak resident memory (VmHWM) over its resident memory before the first step (VmRSS).
One process per setting, so each peak is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys


def vm(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return float(line.split()[1]) / 1024
    return float("nan")


def one(batch: int, length: int, checkpointing: bool) -> dict:
    import logging

    from lmforge.config import build_config
    from lmforge.tasks import classification
    from lmforge.train.loop import Trainer
    from lmforge.train.memory import MB, estimate
    import tempfile

    cfg = build_config({"task": "classification", "model": {"name": "minilm-l6"},
                        "data": {"train": "finefood", "max_length": length, "max_train_samples": 512,
                                 "max_eval_samples": 8},
                        "train": {"max_steps": 3, "per_device_train_batch_size": batch, "eval_strategy": "no",
                                  "save_strategy": "no", "group_by_length": True,
                                  "gradient_checkpointing": checkpointing, "seed": 1}})
    prep = classification.setup(cfg, logging.getLogger("x"))
    trainer = Trainer(cfg, prep, tempfile.mkdtemp())
    est = estimate(trainer.acc.unwrap_model(trainer.model), prep.train.lengths, batch, 64, 0, "no",
                   checkpointing, "cpu")
    lengths = prep.train.lengths
    batches = trainer._batches
    # the estimate is for the longest batch: train on the longest batches first
    trainer._batches = lambda epoch: sorted(batches(epoch), key=lambda b: -max(lengths[i] for i in b))
    before = vm("VmRSS")
    trainer.fit()
    peak = vm("VmHWM")
    added = (est.total - est.weights) / MB  # what training adds to the loaded model
    return {"batch": batch, "length": max(prep.train.lengths), "gradient_checkpointing": checkpointing,
            "estimated_total_mb": round(est.total / MB), "estimated_added_mb": round(added),
            "measured_added_mb": round(peak - before), "ratio": round((peak - before) / added, 2),
            "s_per_step": round(sorted(trainer.step_times)[1], 2),
            "attention": trainer.acc.unwrap_model(trainer.model).config._attn_implementation}


if __name__ == "__main__":
    if len(sys.argv) > 1:
        b, n, c = sys.argv[1:4]
        print(json.dumps(one(int(b), int(n), c == "1")))
    else:
        for b, n, c in ((8, 128, 0), (32, 128, 0), (32, 128, 1), (16, 256, 0)):
            out = subprocess.run([sys.executable, __file__, str(b), str(n), str(c)], capture_output=True, text=True)
            print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else out.stderr[-1500:], flush=True)

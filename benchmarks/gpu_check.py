"""The GPU benchmarks of benchmarks/gpu_check.sh: lmforge trains the built-in causal LM (SmolLM2-135M on the KJV
Bible, packed 512-token blocks) and the built-in classifier (MiniLM-L6 on Fine Food reviews) with bf16 on the
first CUDA GPU, and prints tokens/s, MFU against the device's table peak (lmforge.train.perf.GPU_PEAKS) and peak
memory next to lmforge's estimate.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--dry-run]

--dry-run (any machine): validate the two configs and print them; nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def configs(out: Path) -> dict[str, dict]:
    return {
        "causal-lm smollm2-135m": {
            "task": "causal-lm", "model": {"name": "smollm2-135m"},
            "data": {"train": "kjv", "block_size": 512, "packing": "pack", "max_train_samples": 4000},
            "train": {"max_steps": 60, "per_device_train_batch_size": 16, "learning_rate": 3e-4,
                      "mixed_precision": "bf16", "eval_strategy": "no", "save_strategy": "no", "logging_steps": 10,
                      "seed": 1},
            "output": {"output_dir": str(out / "clm")}},
        "classification minilm-l6": {
            "task": "classification", "model": {"name": "minilm-l6"},
            "data": {"train": "finefood", "test": None, "max_length": 256},
            "train": {"num_train_epochs": 1, "per_device_train_batch_size": 64, "learning_rate": 1e-4,
                      "mixed_precision": "bf16", "eval_strategy": "no", "save_strategy": "no", "logging_steps": 10,
                      "seed": 1},
            "output": {"output_dir": str(out / "cls")}},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    import torch

    from lmforge import api
    from lmforge.config import build_config
    work = Path(tempfile.mkdtemp(prefix="lmforge-gpu-check-"))
    runs = configs(work)
    for name, raw in runs.items():
        build_config(raw, name)  # a config mistake fails here, before any GPU time
    if args.dry_run:
        print(json.dumps(runs, indent=1))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to benchmark (use --dry-run to check the configs)", file=sys.stderr)
        return 3
    from lmforge.train.perf import device_peak_flops
    device = torch.cuda.get_device_name(0)
    rows = []
    for name, raw in runs.items():
        t = time.perf_counter()
        res = api.train(raw, progress=False, overwrite=True)
        manifest = json.loads((res.run_dir / "manifest.json").read_text())
        tr = res.metrics["train"]
        rows.append({"run": name, "device": device, "peak_tflops": device_peak_flops(torch.device("cuda", 0)) / 1e12,
                     "steps": tr["steps"], "tokens_per_s": tr["tokens_per_s"], "mfu": tr["mfu"],
                     "peak_mem_mb": tr["peak_mem_mb"], "estimate_mb": manifest["memory_estimate"]["total_mb"],
                     "wall_s": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

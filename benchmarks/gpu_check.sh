#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU and lmforge installed with a CUDA build of torch (pip install -e
# ".[dev]" after torch). Under 8 minutes on an H100/H200:
#   1. the GPU-marked tests (tests/test_gpu.py): bf16 mixed precision trains; packed causal-LM parity with the
#      SDPA attention kernel; the memory estimate against the measured peak;
#   2. benchmarks/gpu_check.py: the built-in causal LM and classifier trained with bf16, printing tokens/s, MFU
#      against the device's table peak, and peak memory next to the estimate (written to gpu_check.json).
#   bash benchmarks/gpu_check.sh            # exit 3 when there is no CUDA GPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA GPU visible to torch here; nothing to check" >&2
  exit 3
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$(date +%s)
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
timeout 300 "$PY" benchmarks/gpu_check.py --out "${OUT:-.}/gpu_check.json"
echo "gpu_check: done in $(( $(date +%s) - start )) s"

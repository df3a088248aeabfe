"""Export time and file size per format for smollm2-135m, and ONNX Runtime vs PyTorch latency for the
minilm-l6 classifier at batch 1 and 32.

    python benchmarks/export.py [--out /tmp/lmforge-export-bench] [--skip-smollm2] [--repeats 20]

Prints one table per part and writes them as JSON next to the exports (bench.json). The parity figures are the
ones each export writes to its export.json (lmforge export's own check).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lmforge import api  # noqa: E402

SMOLLM2_EXPORTS = [("safetensors", {"dtype": "float32"}), ("safetensors", {"dtype": "bfloat16"}),
                   ("gguf", {"quantize": "f16"}), ("gguf", {"quantize": "q8_0"}), ("gguf", {"quantize": "q4_0"}),
                   ("onnx", {})]


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def smollm2(out: Path) -> list[dict]:
    rows = []
    for fmt, opts in SMOLLM2_EXPORTS:
        dest = out / f"smollm2-{fmt}-{next(iter(opts.values()), 'f32')}"
        shutil.rmtree(dest, ignore_errors=True)
        t = time.perf_counter()
        api.export("smollm2-135m", fmt, str(dest), verify=False, **opts)
        wall = time.perf_counter() - t
        rep = json.loads((dest / "export.json").read_text())
        p = rep["parity"]
        rows.append({"format": fmt, "precision": rep["precision"], "write_s": rep["export_s"], "total_s": round(wall, 1),
                     "MB": round(folder_bytes(dest) / 1e6, 1), "max_abs_diff": p["max_abs_logit_diff"],
                     "top1": p["top1_agreement"], "greedy_identical": f"{p['greedy']['identical']}/{p['greedy']['prompts']}",
                     "verified": rep["verified"]})
        print(rows[-1], flush=True)
    return rows


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def minilm(out: Path, repeats: int) -> list[dict]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.models.onnx_model import load_onnx
    from lmforge.models.zoo import resolve_model
    src = out / "minilm-classifier"
    shutil.rmtree(src, ignore_errors=True)
    base = resolve_model("minilm-l6")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=2).save_pretrained(src)
    tok = AutoTokenizer.from_pretrained(base)
    tok.save_pretrained(src)
    dest = out / "minilm-onnx"
    shutil.rmtree(dest, ignore_errors=True)
    api.export(str(src), "onnx", str(dest))
    pt = AutoModelForSequenceClassification.from_pretrained(src).eval()
    ort_model = load_onnx(dest)
    text = "The food arrived quickly and tasted as good as the reviews said, though the box was dented."
    rows = []
    for batch in (1, 32):
        enc = tok([text] * batch, return_tensors="pt", padding=True)
        with torch.inference_mode():
            t_pt = _time(lambda: pt(**enc).logits, repeats)
        t_ort = _time(lambda: ort_model(**enc).logits, repeats)
        rows.append({"batch": batch, "tokens": int(enc["input_ids"].shape[1]), "pytorch_ms": round(1000 * t_pt, 2),
                     "onnxruntime_ms": round(1000 * t_ort, 2), "speedup": round(t_pt / t_ort, 2),
                     "threads": torch.get_num_threads()})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/lmforge-export-bench")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"minilm_latency": minilm(out, args.repeats)}
    if not args.skip_smollm2:
        result["smollm2_exports"] = smollm2(out)
    (out / "bench.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

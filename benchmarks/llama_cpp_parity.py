"""The real consumer: export smollm2-135m to GGUF (f16 and q8_0), load each file with llama.cpp (through
llama-cpp-python, installed in any Python: `--llama-python /path/to/python`) and compare its prompt tokens and
16 greedy tokens with transformers' greedy continuation of the model lmforge trained from.

    python -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python   # builds llama.cpp (long)
    python benchmarks/llama_cpp_parity.py --llama-python /tmp/llvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["The capital of France is", "Once upon a time", "And God said, Let there be light."]
LLAMA_SIDE = r"""
import json, sys
from llama_cpp import Llama
out = {}
for f in sys.argv[2:]:
    llm = Llama(model_path=f, n_ctx=256, verbose=False, seed=0, n_threads=2)
    res = {}
    for p in json.loads(sys.argv[1]):
        ids = llm.tokenize(p.encode(), add_bos=False)
        gen = []
        for t in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            if t == llm.token_eos() or len(gen) >= 16:
                break
            gen.append(t)
        res[p] = {"prompt_ids": ids, "gen": gen}
    out[f] = res
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", required=True, help="a Python with llama-cpp-python installed")
    ap.add_argument("--out", default="/tmp/lmforge-llama-cpp")
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge import api
    from lmforge.models.zoo import resolve_model
    files = []
    for q in ("f16", "q8_0"):
        d = Path(args.out) / q
        shutil.rmtree(d, ignore_errors=True)
        api.export("smollm2-135m", "gguf", str(d), quantize=q)
        files += [str(p) for p in d.glob("*.gguf")]
    src = resolve_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ref = {}
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.eos_token_id)[0, ids.shape[1]:]
        gen = gen.tolist()
        ref[p] = {"prompt_ids": ids[0].tolist(), "gen": gen[:gen.index(tok.eos_token_id)] if tok.eos_token_id in gen
                  else gen}
    got = json.loads(subprocess.run([args.llama_python, "-c", LLAMA_SIDE, json.dumps(PROMPTS), *files],
                                    capture_output=True, text=True, check=True).stdout)
    for f, res in got.items():
        for p, r in res.items():
            h = ref[p]
            print(f"{Path(f).name:28s} {p!r:40s} prompt ids equal: {h['prompt_ids'] == r['prompt_ids']}, "
                  f"greedy tokens identical: {h['gen'] == r['gen']} ({tok.decode(r['gen'])!r})")


if __name__ == "__main__":
    main()

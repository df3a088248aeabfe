"""The distilled student's speed against its teacher's on this CPU: forward tokens/s over packed blocks (what
scoring / perplexity costs) and greedy generation tokens/s (what answering costs), same inputs, back to back.

    python benchmarks/distill_speed.py runs/distill-smollm2-kjv smollm2-135m
"""

from __future__ import annotations

import os
import sys
import time

import torch


def main(student: str, teacher: str, batch: int = 8, block: int = 256, new_tokens: int = 64, repeats: int = 3) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.models.load import resolve_model_dir
    tok = AutoTokenizer.from_pretrained(resolve_model_dir(teacher))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, len(tok) - 100, (batch, block), generator=g)
    prompt = tok("And God said unto Moses,", return_tensors="pt")["input_ids"]
    for name, path in (("teacher", teacher), ("student", student)):
        model = AutoModelForCausalLM.from_pretrained(resolve_model_dir(path), dtype=torch.float32).eval()
        params = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            model(input_ids=ids[:1, :32])  # warm up
            t0 = time.perf_counter()
            for _ in range(repeats):
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            fwd = repeats * ids.numel() / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = model.generate(input_ids=prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
            gen = (out.shape[1] - prompt.shape[1]) / (time.perf_counter() - t0)
        layers = getattr(model.config, "num_hidden_layers", "?")
        print(f"{name}: {layers} layers, {params / 1e6:.1f}M parameters, forward {fwd:,.0f} tokens/s, "
              f"greedy generation {gen:,.1f} tokens/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "smollm2-135m")

"""Batched greedy generation (length-sorted, left-padded) against one prompt at a time, in one process.

    python benchmarks/generation_batching.py                      # smollm2-135m, 32 kjv-to-web test prompts
    python benchmarks/generation_batching.py --prompts 64 --new 32 --batch 16

Prints prompts/s of both, the ratio, and whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import time

from lmforge.config import SamplingParams
from lmforge.data import builtin
from lmforge.models.load import resolve_model_dir
from lmforge.runtime import quiet_libraries
from lmforge.tasks import causal_lm
from lmforge.tasks.generation import generate_greedy_batched, generate_texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    quiet_libraries()
    model, tok = causal_lm.TASK.load_for_use(resolve_model_dir(args.model))
    rows = builtin.load("kjv-to-web", "test").head(args.prompts)
    prompts = [[{"role": "user", "content": t}] for t in rows["instruction"]]
    t0 = time.perf_counter()
    one = [generate_texts(model, tok, [p], SamplingParams(max_new_tokens=args.new))[0][0] for p in prompts]
    t1 = time.perf_counter()
    batched = generate_greedy_batched(model, tok, prompts, max_new_tokens=args.new, batch_size=args.batch)
    t2 = time.perf_counter()
    a, b = len(prompts) / (t1 - t0), len(prompts) / (t2 - t1)
    same = sum(x == y for x, y in zip(one, batched))
    print(f"one at a time: {a:.2f} prompts/s ({t1 - t0:.1f} s); batched ({args.batch}): {b:.2f} prompts/s "
          f"({t2 - t1:.1f} s); speed-up {b / a:.2f}x; identical outputs {same}/{len(prompts)}")


if __name__ == "__main__":
    main()

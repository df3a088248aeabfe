"""Text generation with a causal LM (run folder, model folder or alias): greedy by default, or
sampling (temperature / top-k / top-p); prompts from the command line or a file.

    lmforge generate smollm2-135m "The capital of France is"
    lmforge generate runs/kjv-smollm2 "And God said" --temperature 0.8 --top-p 0.95 --seed 1
    lmforge generate smollm2-135m --chat "What is the capital of France?"
    lmforge generate runs/kjv-smollm2 --input prompts.txt --output generations.jsonl
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from ..config import SamplingParams
from ..errors import LmforgeError
from ..fs import check_output_file, write_jsonl
from ..models.load import resolve_model_dir
from ..runtime import inference_device
from ..tasks import causal_lm
from ..tasks.generation import generate_greedy_batched, generate_texts
from .inputs import read_ids, read_texts, with_ids

PROMPT_NAMES = ("prompt", "text", "input", "question", "instruction")


def generate(model: str, prompts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
             output: Optional[str] = None, sampling: SamplingParams = SamplingParams(), chat: bool = False,
             stream: bool = False, prompt_column: Optional[str] = None) -> list[dict]:
    """Generate from a run folder, model folder or built-in alias; optionally write jsonl rows."""
    if output:
        check_output_file(output, "--output")
    all_prompts = list(prompts or [])
    ids = None
    if input_file:
        file_ids = read_ids(input_file)
        ids = None if file_ids is None else [None] * len(all_prompts) + file_ids
        all_prompts += read_texts(input_file, prompt_column, PROMPT_NAMES, "prompt", "--prompt-column")[0]
    if not all_prompts:
        raise LmforgeError("no prompt given", "give a prompt after the model, or --input FILE")
    lm, tokenizer = causal_lm.TASK.load_for_use(resolve_model_dir(model))
    lm.to(inference_device())
    per = sampling.num_return_sequences
    if sampling.greedy and not stream and per == 1 and len(all_prompts) > 1:  # a file: batched
        outs = [[c] for c in generate_greedy_batched(lm, tokenizer, all_prompts,
                                                     max_new_tokens=sampling.max_new_tokens, chat=chat)]
    else:
        outs = generate_texts(lm, tokenizer, all_prompts, sampling, chat=chat, stream=sys.stdout if stream else None)
    rows = [{"prompt": p, "completion": c, "sequence": j}
            for p, cs in zip(all_prompts, outs) for j, c in enumerate(cs)]
    rows = with_ids(rows, ids, per=per)
    if output:
        write_jsonl(output, rows)
    return rows

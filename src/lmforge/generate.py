"""Text generation with a causal LM: greedy by default, or sampling (temperature / top-k / top-p).

    lmforge generate smollm2-135m "The capital of France is"
    lmforge generate runs/kjv-smollm2 "And God said" --temperature 0.8 --top-p 0.95 --seed 1
    lmforge generate smollm2-135m --chat "What is the capital of France?"
    lmforge generate runs/kjv-smollm2 --input prompts.txt --output generations.jsonl
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from .errors import LmforgeError

log = logging.getLogger("lmforge")


def _sampling_args(temperature: Optional[float], top_k: Optional[int], top_p: Optional[float],
                   repetition_penalty: Optional[float], num_return_sequences: int) -> dict:
    if temperature is not None and temperature < 0:
        raise LmforgeError(f"--temperature must be >= 0, got {temperature}", "0 means greedy decoding")
    if top_k is not None and top_k <= 0:
        raise LmforgeError(f"--top-k must be a positive integer, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise LmforgeError(f"--top-p must be in (0, 1], got {top_p}")
    if repetition_penalty is not None and repetition_penalty <= 0:
        raise LmforgeError(f"--repetition-penalty must be positive, got {repetition_penalty}", "1.0 means none")
    if num_return_sequences < 1:
        raise LmforgeError(f"--num-return-sequences must be at least 1, got {num_return_sequences}")
    sample = bool(temperature) or top_k is not None or top_p is not None
    if num_return_sequences > 1 and not sample:
        raise LmforgeError("several sequences per prompt need sampling: greedy decoding gives one answer",
                           "add --temperature 0.8 (or --top-k / --top-p)")
    args = {"do_sample": sample, "num_return_sequences": num_return_sequences}
    if sample:
        args.update(temperature=temperature or 1.0, top_k=top_k or 0, top_p=top_p if top_p is not None else 1.0)
    else:
        args.update(temperature=None, top_k=None, top_p=None)
    if repetition_penalty is not None:
        args["repetition_penalty"] = repetition_penalty
    return args


def encode_prompt(tokenizer, prompt: str, chat: bool = False) -> list[int]:
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise LmforgeError("--chat: this model's tokenizer has no chat template",
                               "drop --chat to continue the prompt as plain text")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def generate_texts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 50,
                   temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                   repetition_penalty: Optional[float] = None, num_return_sequences: int = 1,
                   seed: Optional[int] = None, chat: bool = False, stream=None) -> list[list[str]]:
    """Completions (new text only) per prompt: a list of `num_return_sequences` strings each.

    Each prompt is generated on its own with the seed reset, so a prompt's output does not depend
    on the other prompts. `stream`: a file to write tokens to as they come (e.g. sys.stdout).
    """
    from transformers import TextStreamer

    from .tasks.causal_lm import context_length
    if max_new_tokens < 1:
        raise LmforgeError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    args = _sampling_args(temperature, top_k, top_p, repetition_penalty, num_return_sequences)
    limit = context_length(model.config)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
        else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[list[str]] = []
    try:
        for i, prompt in enumerate(prompts):
            ids = encode_prompt(tokenizer, prompt, chat)
            if not ids:
                raise LmforgeError(f"prompt {i + 1} is empty", "give some text to continue")
            if limit and len(ids) >= limit:
                raise LmforgeError(f"prompt {i + 1} is {len(ids)} tokens long, the model's context is {limit} tokens",
                                   "shorten the prompt")
            new = min(max_new_tokens, limit - len(ids)) if limit else max_new_tokens
            if seed is not None:
                torch.manual_seed(seed)
                if torch.cuda.is_available():
                    torch.cuda.manual_seed_all(seed)
            streamer = None
            if stream is not None and num_return_sequences == 1:
                streamer = _FileStreamer(tokenizer, stream)
                if not chat:
                    stream.write(prompt)
            input_ids = torch.tensor([ids], device=device)
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     max_new_tokens=new, eos_token_id=eos, pad_token_id=pad, streamer=streamer,
                                     **args)
            results.append([tokenizer.decode(seq[len(ids):], skip_special_tokens=True) for seq in out])
            if streamer is not None:
                stream.write("\n")
                stream.flush()
    finally:
        model.train(was_training)
    return results


class _FileStreamer:
    """Writes the generated text to a file as the tokens come (TextStreamer prints to stdout only)."""

    def __init__(self, tokenizer, out):
        from transformers import TextStreamer
        self.inner = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out
        self.inner.on_finalized_text = self._write

    def _write(self, text: str, stream_end: bool = False):
        self.out.write(text)
        self.out.flush()

    def put(self, value):
        self.inner.put(value)

    def end(self):
        self.inner.end()


PROMPT_NAMES = ("prompt", "text", "input", "question", "instruction")


def read_prompts(path: str, column: Optional[str] = None) -> list[str]:
    """Prompts from a .txt file (one per line) or a table (jsonl/csv/...) with a prompt/text column."""
    from .data import sources
    p = Path(path)
    if not p.exists():
        raise LmforgeError(f"prompt file not found: {path}", "check the path")
    if p.suffix.lower() in (".txt", ".text", ""):
        prompts = [line for line in sources.read_text_file(p).splitlines() if line.strip()]
    else:
        df = sources.read_table(str(p))
        col = sources.pick_column(df, column, PROMPT_NAMES, "prompt", path, "--prompt-column")
        prompts = [str(x) for x in df[col].tolist()]
    if not prompts:
        raise LmforgeError(f"{path} has no prompts", "write one prompt per line")
    return prompts


def generate(model: str, prompts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
             output: Optional[str] = None, max_new_tokens: int = 50, temperature: Optional[float] = None,
             top_k: Optional[int] = None, top_p: Optional[float] = None, repetition_penalty: Optional[float] = None,
             num_return_sequences: int = 1, seed: Optional[int] = None, chat: bool = False,
             stream: bool = False, prompt_column: Optional[str] = None) -> list[dict]:
    """Generate from a run folder, model folder or built-in alias; optionally write jsonl rows."""
    from .api import resolve_model_dir
    from .tasks.causal_lm import load_for_use

    all_prompts = list(prompts or [])
    if input_file:
        all_prompts += read_prompts(input_file, prompt_column)
    if not all_prompts:
        raise LmforgeError("no prompt given", "give a prompt after the model, or --input FILE")
    model_dir = resolve_model_dir(model)
    lm, tokenizer = load_for_use(model_dir)
    if torch.cuda.is_available():
        lm.to("cuda")
    outs = generate_texts(lm, tokenizer, all_prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                          num_return_sequences=num_return_sequences, seed=seed, chat=chat,
                          stream=sys.stdout if stream else None)
    rows = [{"prompt": p, "completion": c, "sequence": j}
            for p, cs in zip(all_prompts, outs) for j, c in enumerate(cs)]
    if output:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        tmp.replace(out)
    return rows

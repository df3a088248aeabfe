"""Text generation with a loaded causal LM: greedy by default, or sampling (temperature / top-k /
top-p), one prompt at a time, optionally streaming the new text to a file as it comes.

Used by the causal-lm task for its sample generations, by `lmforge generate` and by the server.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from transformers import TextStreamer

from ..config import SamplingParams
from ..errors import LmforgeError
from ..models.load import context_length


def _sampling_args(params: SamplingParams) -> dict:
    temperature, top_k, top_p = params.temperature, params.top_k, params.top_p
    repetition_penalty, num_return_sequences = params.repetition_penalty, params.num_return_sequences
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


def encode_prompt(tokenizer, prompt: Union[str, list[dict]], chat: bool = False) -> list[int]:
    """Token ids of a prompt: plain text, or (chat, or a list of {role, content} messages) the chat template's
    rendering of the conversation followed by the assistant's turn opening."""
    if chat or isinstance(prompt, list):
        if not getattr(tokenizer, "chat_template", None):
            raise LmforgeError("this model's tokenizer has no chat template, so it cannot continue a conversation",
                               "fine-tune it with task: sft (which adds one), or continue plain text instead")
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def checked_prompt(tokenizer, prompt, chat: bool, limit: Optional[int], i: int) -> list[int]:
    """The prompt's token ids, refused when empty or not shorter than the model's context."""
    ids = encode_prompt(tokenizer, prompt, chat)
    if not ids:
        raise LmforgeError(f"prompt {i + 1} is empty", "give some text to continue")
    if limit and len(ids) >= limit:
        raise LmforgeError(f"prompt {i + 1} is {len(ids)} tokens long, the model's context is {limit} tokens",
                           "shorten the prompt")
    return ids


def cut_at_stop(text: str, stops) -> tuple[str, bool]:
    """The text up to the first stop string (excluded), and whether one was found."""
    found = [text.find(s) for s in stops if s and s in text]
    return (text[:min(found)], True) if found else (text, False)


def generate_texts(model, tokenizer, prompts: Sequence[Union[str, list[dict]]],
                   params: SamplingParams = SamplingParams(), chat: bool = False, stream=None) -> list[list[str]]:
    """Completions (new text only) per prompt: a list of `num_return_sequences` strings each.

    Each prompt is generated on its own with the seed reset, so a prompt's output does not depend
    on the other prompts. `stream`: a file to write tokens to as they come (e.g. sys.stdout).
    """
    max_new_tokens, seed, num_return_sequences = params.max_new_tokens, params.seed, params.num_return_sequences
    if max_new_tokens < 1:
        raise LmforgeError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    args = _sampling_args(params)
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
            ids = checked_prompt(tokenizer, prompt, chat, limit, i)
            new = min(max_new_tokens, limit - len(ids)) if limit else max_new_tokens
            if seed is not None:
                torch.manual_seed(seed)
                if torch.cuda.is_available():
                    torch.cuda.manual_seed_all(seed)
            streamer = None
            if stream is not None and num_return_sequences == 1:
                streamer = _FileStreamer(tokenizer, stream)
                if not chat and isinstance(prompt, str):
                    stream.write(prompt)
            input_ids = torch.tensor([ids], device=device)
            stop_args = {"stop_strings": list(params.stop), "tokenizer": tokenizer} if params.stop else {}
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     max_new_tokens=new, eos_token_id=eos, pad_token_id=pad, streamer=streamer,
                                     **args, **stop_args)
            results.append([cut_at_stop(tokenizer.decode(seq[len(ids):], skip_special_tokens=True), params.stop)[0]
                            for seq in out])
            if streamer is not None:
                stream.write("\n")
                stream.flush()
    finally:
        model.train(was_training)
    return results


class _FileStreamer:
    """Writes the generated text to a file as the tokens come (TextStreamer prints to stdout only)."""

    def __init__(self, tokenizer, out):
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


@torch.no_grad()
def generate_greedy_batched(model, tokenizer, prompts: Sequence[Union[str, list[dict]]], max_new_tokens: int = 50,
                            batch_size: int = 16, chat: bool = False) -> list[str]:
    """Greedy completions of many prompts, batched: prompts sorted by length and left-padded, so a batch
    wastes little padding; the outputs are those of one-at-a-time greedy generation, in input order."""
    if max_new_tokens < 1:
        raise LmforgeError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    limit = context_length(model.config)
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
        else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [checked_prompt(tokenizer, prompt, chat, limit, i) for i, prompt in enumerate(prompts)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[str] = [""] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            longest = max(len(encoded[i]) for i in idx)
            new = min(max_new_tokens, limit - longest) if limit else max_new_tokens
            input_ids = torch.full((len(idx), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), longest), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: every prompt ends where generation starts
                input_ids[row, longest - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, longest - len(encoded[i]):] = 1
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=new,
                                 eos_token_id=eos, pad_token_id=pad, do_sample=False, temperature=None, top_k=None,
                                 top_p=None)
            for row, i in enumerate(idx):
                results[i] = tokenizer.decode(out[row, longest:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return results

"""Rollouts for online RL: sample a group of completions per prompt, and score completions' tokens.

Generation sits behind one small interface, `Sampler.sample(model, prompts, n, params, seeds)`, so that
another backend (vLLM where a GPU is present) can take its place; `TorchSampler` is the transformers one:

- the prompts' forward pass (prefill) runs once per prompt, and its KV cache is repeated for the group's
  `n` samples (transformers' generate with num_return_sequences runs it n times);
- finished rows leave the batch (their KV cache rows are dropped), so a group with a short answer and a
  long one costs the long one, not n long ones;
- each completion draws from its own seeded generator, by inverse-CDF sampling with one uniform number per
  token: a completion depends on its seed and the weights only, not on which rows share its batch (exact
  resume; N processes draw what one does).

    sampler = TorchSampler(eos_ids={2})
    out = sampler.sample(model, [[5, 6, 7]], n=4, params=RolloutParams(max_new_tokens=16), seeds=[1, 2, 3, 4])
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

import torch


@dataclass(frozen=True)
class RolloutParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: Optional[int] = None


@dataclass
class Completions:
    """Completions in prompt-major order (prompt i's sample j at i * n + j)."""
    ids: list[list[int]]  # the sampled tokens, the end-of-sequence token included when one was sampled
    truncated: list[bool]  # reached max_new_tokens without an end-of-sequence token
    seconds: float = 0.0
    prefill_rows: int = 0  # rows the prompt forward pass ran on (the prompts, or prompts x n without sharing)
    decode_rows: list[int] = field(default_factory=list)  # rows still generating at each decode step


class Sampler(Protocol):
    def sample(self, model, prompts: Sequence[Sequence[int]], n: int, params: RolloutParams,
               seeds: Sequence[int]) -> Completions: ...


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) [B, P] with each prompt at the right end."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def filter_logits(logits: torch.Tensor, params: RolloutParams) -> torch.Tensor:
    """Logits [rows, vocab] at temperature, with top-k and top-p (nucleus) cuts as -inf."""
    x = logits.float() / params.temperature
    if params.top_k is not None and 0 < params.top_k < x.shape[-1]:
        kth = torch.topk(x, params.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        cum = sorted_x.softmax(-1).cumsum(-1)
        drop = cum - sorted_x.softmax(-1) >= params.top_p  # keep the smallest prefix reaching top_p (>= 1 token)
        x = x.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    return x


def draw(logits: torch.Tensor, params: RolloutParams, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else inverse-CDF with one uniform draw from each row's
    generator."""
    if not params.temperature:
        return logits.argmax(-1)
    probs = filter_logits(logits, params).softmax(-1).double()
    cdf = probs.cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens]).to(cdf.device)
    tok = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).squeeze(1)
    return tok.clamp(max=logits.shape[-1] - 1)


def cache_keyword(model) -> str:
    """The forward argument that takes the KV cache: `cache` in transformers >= 5.2x, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class TorchSampler:
    """The transformers backend: a KV-cache decode loop of our own (see the module's notes)."""

    name = "transformers"

    def __init__(self, eos_ids: set[int], pad_id: int, share_prefill: bool = True):
        self.eos_ids, self.pad_id, self.share_prefill = set(eos_ids), pad_id, share_prefill

    @torch.no_grad()
    def sample(self, model, prompts, n, params, seeds) -> Completions:
        t0 = time.perf_counter()
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        try:
            out = self._sample(model, prompts, n, params, seeds, device)
        finally:
            model.train(was)
        out.seconds = time.perf_counter() - t0
        return out

    def _sample(self, model, prompts, n, params, seeds, device) -> Completions:
        rows = len(prompts) * n
        if len(seeds) != rows:
            raise ValueError(f"{rows} completions need {rows} seeds, got {len(seeds)}")
        shared = self.share_prefill and n > 1
        ids, mask = left_padded(prompts if shared else [p for p in prompts for _ in range(n)], self.pad_id, device)
        key = cache_keyword(model)
        fwd = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True,
                    logits_to_keep=1)
        cache, logits = cache_of(fwd), fwd.logits[:, -1]
        prefill_rows = ids.shape[0]
        if shared:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, 0)
            mask = mask.repeat_interleave(n, 0)
        gens = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]
        done: list[list[int]] = [[] for _ in range(rows)]
        truncated = [True] * rows
        active = list(range(rows))  # completion index of each row of the decode batch
        pos = positions(mask)[:, -1]
        decode_rows = []
        for step in range(params.max_new_tokens):
            tok = draw(logits, params, [gens[a] for a in active]).tolist()
            keep = []
            for r, (a, t) in enumerate(zip(active, tok)):
                done[a].append(t)
                if t in self.eos_ids:
                    truncated[a] = False
                else:
                    keep.append(r)
            if not keep or step == params.max_new_tokens - 1:
                break
            if len(keep) < len(active):  # finished rows leave the batch
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                mask, pos = mask[idx], pos[idx]
                tok = [tok[r] for r in keep]
                active = [active[r] for r in keep]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=device)], 1)
            pos = pos + 1
            decode_rows.append(len(active))
            fwd = model(input_ids=torch.tensor(tok, device=device).unsqueeze(1), attention_mask=mask,
                        position_ids=pos.unsqueeze(1), use_cache=True, **{key: cache})
            cache, logits = cache_of(fwd), fwd.logits[:, -1]
        return Completions(done, truncated, prefill_rows=prefill_rows, decode_rows=decode_rows)


# ----------------------------------------------------------------------------------- scoring tokens
@dataclass
class RolloutBatch:
    """Prompt + completion rows as the training forward reads them."""
    input_ids: torch.Tensor  # [R, P + C]: left-padded prompt, right-padded completion
    attention_mask: torch.Tensor  # [R, P + C]
    completion_ids: torch.Tensor  # [R, C]
    completion_mask: torch.Tensor  # [R, C] 1 on each completion's tokens (the end-of-sequence token included)


def rollout_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int) -> RolloutBatch:
    p_ids, p_mask = left_padded(prompts, pad_id, "cpu")
    width = max(1, max(len(c) for c in completions))
    c_ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    c_mask = torch.zeros((len(completions), width), dtype=torch.long)
    for i, c in enumerate(completions):
        if c:
            c_ids[i, :len(c)] = torch.tensor(list(c), dtype=torch.long)
            c_mask[i, :len(c)] = 1
    return RolloutBatch(torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1), c_ids, c_mask)


def completion_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int,
                      temperature: float = 1.0) -> torch.Tensor:
    """Logits [R, C, vocab] (fp32, / temperature) that predict the last `width` tokens: the output layer runs
    on those positions only."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
                use_cache=False, logits_to_keep=width + 1)
    logits = out.logits[:, :-1].float()
    return logits / temperature if temperature and temperature != 1.0 else logits


def shared_completion_logits(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                             completion_attn: torch.Tensor, group: int, temperature: float = 1.0) -> torch.Tensor:
    """The same logits as `completion_logits` on the rows prompt_i + completion_ij, with each prompt's forward pass
    run once for its group of `group` completions: the prompts [B, P] run with a KV cache, the cache is repeated
    for the group (a differentiable repeat: gradients of every completion flow back into its prompt's pass), then
    the completions [B x group, C] run on it. Training cost falls from B x group x (P + C) to B x P + B x group x C
    tokens."""
    key = cache_keyword(model)
    first = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions(prompt_mask),
                  use_cache=True, logits_to_keep=1)
    cache = cache_of(first)
    if cache is None:
        raise RuntimeError("the model returned no KV cache")
    cache.batch_repeat_interleave(group)
    mask = torch.cat([prompt_mask.repeat_interleave(group, 0), completion_attn], 1)
    start = prompt_mask.sum(-1, keepdim=True).repeat_interleave(group, 0)
    pos = start + torch.arange(completion_ids.shape[1], device=completion_ids.device).unsqueeze(0)
    rest = model(input_ids=completion_ids, attention_mask=mask, position_ids=pos, use_cache=True, **{key: cache})
    logits = torch.cat([first.logits[:, -1:].repeat_interleave(group, 0), rest.logits[:, :-1]], 1).float()
    return logits / temperature if temperature and temperature != 1.0 else logits


def token_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(token) [R, C] from logits [R, C, V]."""
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


@torch.no_grad()
def entropy(logits: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Per-position entropy [R, C] of the distribution, rows in chunks (for logging only)."""
    out = []
    for s in range(0, logits.shape[0], chunk):
        x = logits[s:s + chunk].detach()
        logp = x.log_softmax(-1)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out)

"""Reward functions for online RL (the grpo task): built-ins, your own `module:function`, and the checks.

    grpo:
      rewards: [exact_match, format, my_rewards:brevity]
      reward_weights: [1.0, 0.2, 0.5]

A function is called the way TRL's GRPOTrainer calls one, so TRL reward functions work unchanged:

    fn(prompts=[...], completions=[...], completion_ids=[[...], ...], answer=[...], <every other column>=[...])
        -> list of floats, one per completion, or None where the function does not apply

`prompts` and `completions` are texts when the data's prompts are texts, and message lists
(`[{"role": "assistant", "content": ...}]`) when they are conversations, as in TRL. TRL's three extra keywords
come too, to a function that takes them (by name or through **kwargs): `trainer_state` (`.global_step`, `.epoch`,
`.max_steps`), `log_metric(name, value)` (averaged over each logging window into log.jsonl under `name`) and
`log_extra(column, values)` (accepted; lmforge keeps no completions table, so the values are not shown).

A function that raises, returns a list of the wrong length, a value that is not a number, or NaN / inf
stops the run with one line naming the function and the row: a broken reward is never read as 0. A
`None` is kept apart (counted, and left out of the group baseline); a completion that every function
scored `None` gets advantage 0.

Built-ins (the reference answer is the column `grpo.answer_column`, `answer` by default):
    exact_match     1 when the completion, normalised, is the answer (strict)
    contains        1 when the normalised answer appears in the completion as a whole (lenient)
    number_match    1 when the last number in the completion equals the answer within grpo.number_tolerance
    format          1 when the completion matches grpo.format_pattern (a regex, searched)
    length_penalty  0 up to grpo.max_completion_length - grpo.length_buffer tokens, then down to -1 at the
                    limit (DAPO's soft overlong punishment)
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

import torch

from ..errors import LmforgeError
from ..runtime import load_function

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_EDGE = ".,;:!?'\"`*$ \t\n()[]"


def normalise(text: Any) -> str:
    """Text compared by the strict and lenient rewards: lower case, whitespace collapsed, surrounding
    punctuation and markdown stripped, thousands separators removed from numbers ("1,000" == "1000")."""
    s = " ".join(str(text).lower().split())
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
    s = re.sub(r"\\boxed\{([^{}]*)\}", r"\1", s)
    return s.strip(_EDGE)


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def _answers(kw: dict, column: str, n: int) -> list:
    if column not in kw:
        have = ", ".join(k for k in kw if k not in ("prompts", "completions", "completion_ids")) or "none"
        raise LmforgeError(f"the reward needs the reference answer column '{column}', which the data lacks "
                           f"(its other columns: {have})", "set grpo.answer_column, or add the column")
    return list(kw[column])


def _number(text: str) -> Optional[float]:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


@dataclass(frozen=True)
class RewardOptions:
    """The options the built-ins read (from the grpo: section)."""
    answer_column: str = "answer"
    number_tolerance: float = 1e-6
    format_pattern: Optional[str] = None
    max_completion_length: int = 64
    length_buffer: int = 16


def exact_match(opts: RewardOptions):
    def exact_match(completions, **kw):
        answers = _answers(kw, opts.answer_column, len(completions))
        return [None if a is None else float(normalise(_text(c)) == normalise(a))
                for c, a in zip(completions, answers)]
    return exact_match


def contains(opts: RewardOptions):
    def contains(completions, **kw):
        answers = _answers(kw, opts.answer_column, len(completions))
        out = []
        for c, a in zip(completions, answers):
            if a is None:
                out.append(None)
                continue
            want = normalise(a)
            # a whole match: "5" is not found inside "15" or "5.5"
            hit = bool(want) and re.search(r"(?<![\w.])" + re.escape(want) + r"(?![\w]|\.\d)", normalise(_text(c)))
            out.append(float(bool(hit)))
        return out
    return contains


def number_match(opts: RewardOptions):
    def number_match(completions, **kw):
        answers = _answers(kw, opts.answer_column, len(completions))
        out = []
        for c, a in zip(completions, answers):
            want = _number(str(a)) if a is not None else None
            if want is None:
                out.append(None)  # the reference is not a number: this reward does not apply
                continue
            got = _number(_text(c))
            out.append(float(got is not None and abs(got - want) <= opts.number_tolerance * max(1.0, abs(want))))
        return out
    return number_match


def format_reward(opts: RewardOptions):
    if not opts.format_pattern:
        raise LmforgeError("the format reward needs grpo.format_pattern (a regular expression)",
                           r"e.g. grpo.format_pattern: '^\s*-?\d+\s*$' (a bare number)")
    try:
        pattern = re.compile(opts.format_pattern, re.DOTALL)
    except re.error as e:
        raise LmforgeError(f"grpo.format_pattern is not a valid regular expression: {e}") from None

    def format(completions, **kw):  # noqa: A001 - the reward's name in logs
        return [float(pattern.search(_text(c)) is not None) for c in completions]
    return format


def length_penalty(opts: RewardOptions):
    limit, buffer = opts.max_completion_length, max(1, min(opts.length_buffer, opts.max_completion_length))

    def length_penalty(completions, completion_ids, **kw):
        out = []
        for ids in completion_ids:
            over = len(ids) - (limit - buffer)
            out.append(0.0 if over <= 0 else -min(1.0, over / buffer))
        return out
    return length_penalty


BUILTINS: dict[str, Callable[[RewardOptions], Callable]] = {
    "exact_match": exact_match, "contains": contains, "number_match": number_match,
    "format": format_reward, "length_penalty": length_penalty,
}
STRICT, LENIENT = "exact_match", "contains"


@dataclass
class Reward:
    name: str
    fn: Callable
    weight: float
    takes: Optional[frozenset] = None  # the keyword names it declares; None: it takes **kwargs (any keyword)

    def keywords(self, extras: dict) -> dict:
        """The extra keywords (trainer_state, log_metric, log_extra) this function can take."""
        return {k: v for k, v in extras.items() if self.takes is None or k in self.takes}


def _declared(fn: Callable) -> Optional[frozenset]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function: pass it only what TRL's older versions passed
        return frozenset()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def load_rewards(names: Sequence[str], weights: Optional[Sequence[float]], opts: RewardOptions,
                 reward_model: Optional[str] = None) -> list[Reward]:
    """The reward functions of grpo.rewards with their weights (1 each unless grpo.reward_weights), then the
    learned reward of grpo.reward_model (weighted by the last weight)."""
    if not names and not reward_model:
        raise LmforgeError("grpo.rewards is empty", f"name at least one: a built-in ({', '.join(BUILTINS)}) or "
                                                    "module:function, or set grpo.reward_model")
    n = len(names) + (1 if reward_model else 0)
    if weights is not None and len(weights) != n:
        raise LmforgeError(f"grpo.reward_weights has {len(weights)} weights for {n} rewards",
                           "give one weight per entry of grpo.rewards, in the same order"
                           + (", then one for grpo.reward_model" if reward_model else ""))
    out = []
    for i, name in enumerate(names):
        if name in BUILTINS:
            fn = BUILTINS[name](opts)
        elif ":" in name or "." in name:  # module:function, path/file.py:function, pkg.mod.function
            fn = load_function(name, "grpo.rewards", "rewards: [my_rewards:correct]")
        else:
            from ..errors import did_you_mean
            raise LmforgeError(f"grpo.rewards: unknown reward '{name}'.{did_you_mean(name, BUILTINS)}",
                               f"built-ins: {', '.join(BUILTINS)}; or your own as module:function")
        out.append(Reward(name, fn, 1.0 if weights is None else float(weights[i]), _declared(fn)))
    if reward_model:
        from .reward import learned_reward
        fn = learned_reward(reward_model)
        out.append(Reward("reward_model", fn, 1.0 if weights is None else float(weights[-1]), _declared(fn)))
    if len({r.name for r in out}) != len(out):
        raise LmforgeError("grpo.rewards names a function twice", "list each once (weights go in grpo.reward_weights)")
    return out


# keys of log.jsonl that a reward function's log_metric may not take (besides reward*)
RESERVED_LOG_KEYS = ("loss", "lr", "grad_norm", "step", "epoch", "frac_reward_zero_std", "completion_length",
                     "truncated", "generation_s", "training_s", "clip_ratio", "kl", "entropy", "tokens_per_s", "mfu")


def trl_keywords(step: int, epoch: int, max_steps: Optional[int],
                 record: Optional[Callable[[dict], None]]) -> dict:
    """TRL's extra keywords for reward functions: trainer_state, log_metric (its values go to `record` as
    {name: (value, 1)}, or nowhere when None: an evaluation), log_extra (accepted, not shown)."""
    state = SimpleNamespace(global_step=step, epoch=float(epoch), max_steps=max_steps if max_steps and max_steps > 0
                            else None)

    def log_metric(name: str, value: float) -> None:
        if not isinstance(name, str) or not name or name in RESERVED_LOG_KEYS or name.startswith("reward"):
            raise LmforgeError(f"a reward function called log_metric({name!r}, ...): that name is not a string "
                               "lmforge leaves free (it logs loss, lr, reward* and the rollout statistics itself)",
                               "choose another name")
        if record is not None:
            record({name: (float(value), 1)})

    return {"trainer_state": state, "log_metric": log_metric, "log_extra": lambda column, values: None}


def score(rewards: list[Reward], prompts: list, completions: list, completion_ids: list[list[int]],
          columns: dict[str, list], rows: Optional[list[int]] = None, extras: Optional[dict] = None) -> torch.Tensor:
    """[completions, functions] float64 rewards, NaN where a function returned None. `rows` names each
    completion's data row (1-based) for the error messages; `extras`: TRL's trainer_state / log_metric /
    log_extra, passed to the functions that take them."""
    n = len(completions)
    out = torch.full((n, len(rewards)), float("nan"), dtype=torch.float64)
    for j, r in enumerate(rewards):
        try:
            values = r.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns,
                          **r.keywords(extras or {}))
        except LmforgeError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's reward raised: named, one line, never read as 0
            first = str(e).splitlines()[0][:200] if str(e) else ""
            raise LmforgeError(f"reward function {r.name} raised {type(e).__name__}: {first} (on a batch of {n} "
                               f"completions, data rows {_rows(rows, range(n))})",
                               "fix the function; a reward that does not apply returns None for that completion") \
                from None
        if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise LmforgeError(f"reward function {r.name} returned {type(values).__name__}, not a list of "
                               f"{n} floats", "return one float (or None) per completion")
        values = list(values)
        if len(values) != n:
            raise LmforgeError(f"reward function {r.name} returned {len(values)} values for {n} completions",
                               "return one float (or None) per completion, in order")
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                x = float(v)
            except (TypeError, ValueError):
                raise LmforgeError(f"reward function {r.name} returned {v!r} for data row {_rows(rows, [i])} "
                                   f"(completion {i + 1} of the batch): not a number",
                                   "return a float, or None where the reward does not apply") from None
            if not math.isfinite(x):
                raise LmforgeError(f"reward function {r.name} returned {x} for data row {_rows(rows, [i])} "
                                   f"(completion {i + 1} of the batch)", "return a finite float, or None where "
                                   "the reward does not apply; a NaN is never read as 0")
            out[i, j] = x
    return out


def _rows(rows: Optional[list[int]], idx) -> str:
    idx = list(idx)
    if rows is None:
        return ", ".join(str(i + 1) for i in idx[:5]) + ("..." if len(idx) > 5 else "")
    picked = sorted(dict.fromkeys(rows[i] for i in idx))
    return ", ".join(map(str, picked[:5])) + ("..." if len(picked) > 5 else "")


def combine(per_func: torch.Tensor, rewards: list[Reward]) -> torch.Tensor:
    """Weighted sum over the functions, skipping None (NaN); NaN where every function was None."""
    w = torch.tensor([r.weight for r in rewards], dtype=per_func.dtype)
    total = (torch.nan_to_num(per_func, nan=0.0) * w).sum(1)
    total[torch.isnan(per_func).all(1)] = float("nan")
    return total

"""The grpo task's evaluation (strict / lenient pass@1, pass@k, mean reward per function, the sampled groups
logged at each evaluation) and its preflight (a group sampled for a few train prompts before step 1: is there
anything to learn?), over the task's Rollouts (`ro`: tasks/grpo.py's Rollouts; not imported, which would be a cycle)."""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch

from ..errors import LmforgeError
from . import rewards as reward_fns

log = logging.getLogger("lmforge")


def columns_of(rows: list[dict], n: int) -> dict[str, list]:
    """Each data column as a list with one entry per completion (a prompt's value repeated n times)."""
    names = list(dict.fromkeys(k for r in rows for k in r["columns"]))
    return {k: [r["columns"].get(k) for r in rows for _ in range(n)] for k in names}


def as_completion(text: str, prompt):
    """A completion as the reward functions see it: text, or (conversational prompts) an assistant message list."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def reward_opts(cfg) -> reward_fns.RewardOptions:
    g = cfg.grpo
    return reward_fns.RewardOptions(g.answer_column, g.number_tolerance, g.format_pattern, g.max_completion_length,
                                    g.length_buffer)


# ----------------------------------------------------------------------------------- evaluation
def eval_outputs(ro, model, rows: list[dict]) -> dict:
    """Per prompt: the greedy completion's rewards, strict / lenient correctness, length; pass@k with eval_k samples."""
    s = ro.score(model, rows, 1, ro.params(temperature=0.0), [0] * len(rows))
    out = {"reward": s.total, "completion_length": torch.tensor([float(len(c)) for c in s.completions.ids]),
           "truncated": torch.tensor([float(t) for t in s.completions.truncated])}
    for j, r in enumerate(ro.rewards):
        out[f"reward_{r.name}"] = s.per_func[:, j]
    acc = accuracy(ro, rows, s.texts, 1)
    out.update(acc)
    k = ro.g.eval_k
    if k > 0 and acc:
        sk = ro.score(model, rows, k, ro.params(), ro.seeds(rows, k, -1))
        for name, v in accuracy(ro, rows, sk.texts, k).items():
            out[f"pass@{k}_{name.split('_')[1]}"] = v.view(-1, k).max(1).values
    return out


def accuracy(ro, rows: list[dict], texts: list[str], n: int) -> dict:
    """strict (exact_match) and lenient (contains) correctness per completion, when the data has the answer column."""
    cols = columns_of(rows, n)
    if ro.g.answer_column not in cols:
        return {}
    opts = reward_opts(ro.cfg)
    out = {}
    for name, fn in (("accuracy_strict", reward_fns.exact_match(opts)), ("accuracy_lenient", reward_fns.contains(opts))):
        prompts = [r["prompt"] for r in rows for _ in range(n)]
        got = fn(completions=[as_completion(t, p) for t, p in zip(texts, prompts)], **cols)
        out[name] = torch.tensor([float("nan") if v is None else v for v in got], dtype=torch.float64)
    return out


def finalize(outputs: dict) -> dict:
    out = {}
    for k, v in outputs.items():
        v = v.double()
        ok = ~torch.isnan(v)
        out[k] = float(v[ok].mean()) if bool(ok.any()) else float("nan")
    out["prompts"] = int(next(iter(outputs.values())).numel()) if outputs else 0
    return out


def make_samples(ro, rows: list[dict]):
    """A few eval prompts with a sampled group and each completion's rewards, logged at each evaluation."""
    def samples(model) -> list:
        if not rows:
            return []
        n = ro.g.num_generations
        s = ro.score(model, rows, n, ro.params(), ro.seeds(rows, n, -2))
        out = []
        for i, r in enumerate(rows):
            prompt = r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"]
            group = [{"completion": s.texts[i * n + j], "reward": _num(s.total[i * n + j]),
                      **{f.name: _num(s.per_func[i * n + j, k]) for k, f in enumerate(ro.rewards)}}
                     for j in range(n)]
            answer = r["columns"].get(ro.g.answer_column)
            out.append({"prompt": prompt, "completion": group[0]["completion"], "group": group,
                        **({"reference": str(answer)} if answer is not None else {})})
        return out
    return samples


def _num(x) -> Optional[float]:
    x = float(x)
    return None if math.isnan(x) else round(x, 4)


# ----------------------------------------------------------------------------------- the preflight
def preflight(ro, model, rows: list[dict], batch: int = 4) -> dict:
    """Groups for `rows` with the starting model: reward distribution per function, flat groups, truncation,
    None counts and seconds per group (for the log, the doctor and the stop before step 1)."""
    n = ro.g.num_generations
    per_func, totals, zero, trunc, secs = [], [], [], [], 0.0
    for s in range(0, len(rows), batch):
        part = rows[s:s + batch]
        sc = ro.score(model, part, n, ro.params(), ro.seeds(part, n, -3))
        per_func.append(sc.per_func)
        totals.append(sc.total)
        zero += sc.adv.zero_std.tolist()
        trunc += sc.completions.truncated
        secs += sc.completions.seconds
    pf, total = torch.cat(per_func), torch.cat(totals)
    funcs = {}
    for j, r in enumerate(ro.rewards):
        col = pf[:, j]
        ok = col[~torch.isnan(col)]
        funcs[r.name] = {"mean": _num(ok.mean()) if len(ok) else None, "std": _num(ok.std()) if len(ok) > 1 else 0.0,
                         "min": _num(ok.min()) if len(ok) else None, "max": _num(ok.max()) if len(ok) else None,
                         "none": int(torch.isnan(col).sum())}
    ok = total[~torch.isnan(total)]
    return {"prompts": len(rows), "group_size": n, "rewards": funcs,
            "reward_mean": _num(ok.mean()) if len(ok) else None,
            "flat_groups": int(sum(zero)), "flat_share": round(sum(zero) / max(1, len(zero)), 4),
            "truncated_share": round(sum(trunc) / max(1, len(trunc)), 4),
            "seconds_per_group": round(secs / max(1, len(rows)), 3), "flat_value": _num(ok[0]) if len(ok) else None}


def preflight_line(p: dict) -> str:
    funcs = "; ".join(f"{k} mean {v['mean']} (min {v['min']}, max {v['max']}" + (f", {v['none']} None" if v["none"]
                      else "") + ")" for k, v in p["rewards"].items())
    return (f"preflight: {p['prompts']} prompts x {p['group_size']} completions: {funcs}; groups with equal rewards "
            f"(no learning signal) {p['flat_groups']}/{p['prompts']}; truncated {100 * p['truncated_share']:.0f}%; "
            f"{p['seconds_per_group']:.2f} s per group")


def check_preflight(p: dict) -> None:
    if p["prompts"] and p["flat_groups"] == p["prompts"]:
        raise LmforgeError(
            f"nothing to learn: in the preflight every group of {p['group_size']} completions of {p['prompts']} train "
            f"prompts got equal rewards (reward {p['flat_value']}), so every advantage is 0 and no step would change "
            "the model", "raise grpo.temperature or grpo.num_generations, give partial credit (contains, "
            "number_match, or your own graded reward), or use easier prompts; grpo.preflight_prompts: 0 skips this check")

"""Online RL with verifiable rewards: GRPO, its loss variants (bnpo, dr_grpo, dapo, GSPO) and RLOO (the `grpo:`
section), offline on a CPU.

    lmforge doctor examples/grpo-smollm2-arithmetic.yaml   # the preflight: is there anything to learn?
    lmforge train examples/grpo-smollm2-arithmetic.yaml
    lmforge eval runs/grpo-arithmetic/model --data arithmetic:test

Each training step: take the step's prompts (data/prompts.py; messages rendered with the chat template as in
sft), sample `num_generations` completions per prompt with the current weights (tasks/rollout.py: one prefill
per group, finished rows leave the batch, one seeded generator per completion), score them with the reward
functions (tasks/rewards.py: TRL's call convention), turn rewards into advantages within each group, then take
the clipped policy-gradient loss over the completion tokens (tasks/grpo_loss.py has every formula with its paper).

Before step 1, a preflight samples a group for `grpo.preflight_prompts` train prompts: the reward distribution,
the share of groups whose rewards are all equal (no learning signal) and the truncation rate go to the log and
the doctor, and a run in which every group is flat stops there with what to change.

A completion's seed is a function of (train.seed, epoch, the prompt's row, its place in the group): a resumed
run draws the same completions, and N processes draw what one does.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from ..config import Config, Permissions
from ..data import prompts as prompt_data
from ..data.pipeline import read_eval_rows, read_splits
from ..errors import LmforgeError
from ..models.load import resolve_block_size
from ..models.lora import adapters_disabled
from ..starters import BEST_METRICS, STARTERS
from . import grpo_loss, rewards as reward_fns
from .base import EncodedSplit, RolloutInfo, Task, TaskParts, clip, eval_config, eval_rows
from .causal_lm import TASK as CAUSAL_LM
from .chat_template import ensure_chat_template
from .dpo import check_room_for_a_copy
from .generation import encode_prompt
from .rollout import (Completions, RolloutParams, TorchSampler, completion_logits, entropy, left_padded,
                      rollout_batch, shared_completion_logits, token_logps)
from .sft import load_chat_model
from .grpo_eval import (as_completion, check_preflight, columns_of, eval_outputs, finalize, make_samples,
                        preflight, preflight_line, reward_opts)

log = logging.getLogger("lmforge")


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (an FNV-style mix: stable across runs, machines and Python versions)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (2**64)
    return h % (2**63)


# ----------------------------------------------------------------------------------- prompts
def encode_prompts(rows: list, tokenizer, max_prompt: int) -> tuple[list[dict], int]:
    """Rows the loop batches: token ids (the last max_prompt tokens), the prompt as the rewards see it, the other
    columns; and how many prompts were cut."""
    out, cut = [], 0
    for i, r in enumerate(rows):
        ids = encode_prompt(tokenizer, r.prompt, chat=isinstance(r.prompt, list))
        if len(ids) > max_prompt:
            ids, cut = ids[-max_prompt:], cut + 1
        out.append({"index": i, "prompt_ids": ids, "prompt": r.prompt, "columns": r.columns})
    return out, cut


def make_collate(pad_id: int):
    def collate(rows: list[dict]) -> dict:
        ids, mask = left_padded([r["prompt_ids"] for r in rows], pad_id, "cpu")
        return {"rows": rows, "input_ids": ids, "attention_mask": mask, "n_items": len(rows),
                "n_tokens": int(mask.sum())}
    return collate


def batch_logits(model, batch: dict, temperature: float) -> torch.Tensor:
    """Logits [R, C, V] that predict each completion token: each prompt run once for its group when the batch
    carries the prompts apart (grpo.share_prefill), else every row whole."""
    if "prompt_ids" in batch:
        return shared_completion_logits(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                        batch["completion_attn"], batch["group"], temperature)
    return completion_logits(model, batch["input_ids"], batch["attention_mask"], batch["completion_ids"].shape[1],
                             temperature)


# ----------------------------------------------------------------------------------- statistics
class GrpoStats:
    """The logging window: sums with their own counts ("x", "x/n") and maxima ("max:x"); drained to means.
    Its dict is saved with checkpoints (a resumed run logs the same numbers)."""

    def __init__(self):
        self.window: dict[str, float] = {}

    def add(self, sums: dict[str, tuple[float, float]], maxima: Optional[dict[str, float]] = None) -> None:
        for k, (s, n) in sums.items():
            self.window[k] = self.window.get(k, 0.0) + float(s)
            self.window[k + "/n"] = self.window.get(k + "/n", 0.0) + float(n)
        for k, v in (maxima or {}).items():
            self.window["max:" + k] = max(self.window.get("max:" + k, -math.inf), float(v))

    def drain(self) -> dict:
        """Means over the window; with several processes over every process's window (called on all of them)."""
        w, self.window = self.window, {}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            every: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every, w)
            w = {}
            for part in every:
                for k, v in part.items():
                    w[k] = max(w.get(k, -math.inf), v) if k.startswith("max:") else w.get(k, 0.0) + v
        out = {}
        for k, v in w.items():
            if k.startswith("max:"):
                out[k[4:] + "_max"] = round(v, 6)
            elif not k.endswith("/n") and w.get(k + "/n"):
                out[k] = round(v / w[k + "/n"], 6)
        return out


# ----------------------------------------------------------------------------------- rollouts
@dataclass
class Scored:
    """One batch of prompts with their groups: completions, rewards and advantages."""
    rows: list[dict]
    completions: Completions
    texts: list[str]
    per_func: torch.Tensor  # [R, F], NaN = None
    total: torch.Tensor  # [R]
    adv: grpo_loss.Advantages


@dataclass
class Rollouts:
    """The loop's rollout hook (sample -> score -> advantages -> the batch the loss reads) and the evaluation."""
    cfg: Config
    tokenizer: object
    sampler: TorchSampler
    rewards: list
    stats: GrpoStats
    reference: object = None  # None (beta 0), "adapter" (LoRA switched off) or a frozen copy
    share_training: bool = True  # the training forward runs each prompt once per group (not with gradient checkpointing)
    buffer: dict = field(default_factory=dict)  # batch index -> batch, reused by num_iterations > 1
    step: int = 0  # optimizer steps done (the reward functions' trainer_state.global_step)
    epoch: int = 0

    @property
    def g(self):
        return self.cfg.grpo

    def params(self, temperature: Optional[float] = None) -> RolloutParams:
        g = self.g
        return RolloutParams(g.max_completion_length, g.temperature if temperature is None else temperature,
                             g.top_p, g.top_k)

    def seeds(self, rows: list[dict], n: int, *salt: int) -> list[int]:
        return [mix_seed(self.cfg.train.seed, *salt, r["index"], j) for r in rows for j in range(n)]

    def score(self, model, rows: list[dict], n: int, params: RolloutParams, seeds: list[int],
              training: bool = False) -> Scored:
        """Sample n completions per row and score them; `training`: log_metric values join the logging window (an
        evaluation's do not)."""
        comp = self.sampler.sample(model, [r["prompt_ids"] for r in rows], n, params, seeds)
        texts = self.tokenizer.batch_decode(comp.ids, skip_special_tokens=True)
        prompts = [r["prompt"] for r in rows for _ in range(n)]
        per_func = reward_fns.score(self.rewards, prompts, [as_completion(t, p) for t, p in zip(texts, prompts)],
                                    comp.ids, columns_of(rows, n), [r["index"] + 1 for r in rows for _ in range(n)],
                                    reward_fns.trl_keywords(self.step, self.epoch, self.cfg.train.max_steps,
                                                            self.stats.add if training else None))
        total = reward_fns.combine(per_func, self.rewards)
        batch_std = global_std(total) if self.g.scale_rewards == "batch" else None
        adv = grpo_loss.advantages(total, n, self.g.scale_rewards, self.g.advantage, batch_std)
        return Scored(rows, comp, texts, per_func, total, adv)

    def __call__(self, model, batch: dict, info: RolloutInfo) -> dict:
        if info.repeat > 0 and info.batch_index in self.buffer:
            return self.buffer[info.batch_index]
        self.step, self.epoch = info.step, info.epoch
        g = self.g
        s = self.score(model, batch["rows"], g.num_generations, self.params(), self.seeds(batch["rows"],
                       g.num_generations, info.epoch), training=True)
        out = self.loss_batch(model, s)
        self.log(s)
        if g.num_iterations > 1:
            self.buffer = {info.batch_index: out}  # only the current step's batches are ever reused
        return out

    def loss_batch(self, model, s: Scored) -> dict:
        g, n = self.g, self.g.num_generations
        rb = rollout_batch([r["prompt_ids"] for r in s.rows for _ in range(n)], s.completions.ids,
                           self.tokenizer.pad_token_id)
        mask = rb.completion_mask.clone()
        if g.mask_truncated_completions:
            mask[torch.tensor(s.completions.truncated)] = 0
        _, items = grpo_loss.reduce(torch.zeros(mask.shape), mask, g.loss_type, g.max_completion_length)
        out = {"input_ids": rb.input_ids, "attention_mask": rb.attention_mask, "completion_ids": rb.completion_ids,
               "loss_mask": mask, "advantages": s.adv.advantages.float(), "n_items": items,
               "n_tokens": int(rb.attention_mask.sum())}
        if self.share_training and n > 1:
            p_ids, p_mask = left_padded([r["prompt_ids"] for r in s.rows], self.tokenizer.pad_token_id, "cpu")
            out.update(prompt_ids=p_ids, prompt_mask=p_mask, completion_attn=rb.completion_mask, group=n,
                       n_tokens=int(p_mask.sum()) + int(rb.completion_mask.sum()))
        need_old, need_ref = g.num_iterations > 1, g.beta > 0
        if need_old or need_ref:
            device = next(model.parameters()).device
            on_device = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in out.items()}
            with torch.no_grad():
                if need_old:
                    out["old_logps"] = self.logps(model, on_device).cpu()
                if need_ref:
                    out["ref_logps"] = self.reference_logps(model, on_device).cpu()
        return out

    def logps(self, model, batch: dict) -> torch.Tensor:
        return token_logps(batch_logits(model, batch, self.g.temperature), batch["completion_ids"])

    def reference_logps(self, model, batch: dict) -> torch.Tensor:
        if self.reference == "adapter":
            with adapters_disabled(getattr(model, "module", model)) as k:
                if not k:
                    raise LmforgeError("internal: a LoRA reference on a model without LoRA layers")
                return self.logps(model, batch)
        return self.logps(self.reference, batch)

    def log(self, s: Scored) -> None:
        lengths = [len(c) for c in s.completions.ids]
        sums = {"reward": (float(torch.nansum(s.total)), int((~torch.isnan(s.total)).sum())),
                "reward_std": (float(torch.nan_to_num(s.adv.group_std, nan=0.0).mean()), 1),
                "frac_reward_zero_std": (float(s.adv.zero_std.sum()), len(s.adv.zero_std)),
                "completion_length": (sum(lengths), len(lengths)),
                "truncated": (sum(s.completions.truncated), len(lengths)),
                "generation_s": (s.completions.seconds, 1)}
        for j, r in enumerate(self.rewards):
            col = s.per_func[:, j]
            ok = ~torch.isnan(col)
            sums[f"reward_{r.name}"] = (float(col[ok].sum()), int(ok.sum()))
            sums[f"reward_{r.name}_std"] = (float(col[ok].std()) if int(ok.sum()) > 1 else 0.0, 1)
            if not bool(ok.all()):
                sums[f"reward_{r.name}_none"] = (int((~ok).sum()), len(col))
        self.stats.add(sums, {"completion_length": max(lengths)})


def global_std(total: torch.Tensor) -> Optional[torch.Tensor]:
    """The unbiased std of the rewards of every process (None on one process: the local one is global)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    ok = ~torch.isnan(total)
    v = torch.tensor([float(total[ok].sum()), float((total[ok] ** 2).sum()), float(ok.sum())], dtype=torch.float64)
    torch.distributed.all_reduce(v)
    s, sq, n = v.tolist()
    if n < 2:
        return torch.tensor(float("nan"))
    return torch.tensor(math.sqrt(max(0.0, (sq - s * s / n) / (n - 1))))


# ----------------------------------------------------------------------------------- the loss
class GrpoObjective:
    """The loop's loss: the clipped surrogate over the completion tokens, reduced by grpo.loss_type."""

    def __init__(self, cfg: Config, stats: GrpoStats):
        self.g, self.stats = cfg.grpo, stats

    def __call__(self, model, batch: dict) -> torch.Tensor:
        g = self.g
        cids, mask = batch["completion_ids"], batch["loss_mask"]
        logits = batch_logits(model, batch, g.temperature)
        logps = token_logps(logits, cids)
        tl = grpo_loss.token_loss(logps, batch.get("old_logps"), batch["advantages"], mask, g.epsilon,
                                  g.epsilon_high, g.importance_sampling_level, g.beta, batch.get("ref_logps"))
        loss, _ = grpo_loss.reduce(tl.per_token, mask, g.loss_type, g.max_completion_length)
        with torch.no_grad():
            m = batch["attention_mask"][:, -cids.shape[1]:]  # every completion token (the truncated ones too)
            sums = {"entropy": grpo_loss.masked_mean(entropy(logits), m),
                    "clip_ratio": grpo_loss.masked_mean((tl.low_clipped | tl.high_clipped).float(), mask),
                    "clip_ratio_low": grpo_loss.masked_mean(tl.low_clipped.float(), mask),
                    "clip_ratio_high": grpo_loss.masked_mean(tl.high_clipped.float(), mask)}
            if tl.kl is not None:
                sums["kl"] = grpo_loss.masked_mean(tl.kl, mask)
            self.stats.add(sums)
        return loss


class RolloutBuffer:
    """The rollouts a num_iterations > 1 run reuses, as checkpoint state (a resume mid-way reuses them too)."""

    def __init__(self, rollouts: Rollouts):
        self.rollouts = rollouts

    def state_dict(self) -> dict:
        return {str(k): {n: (v.tolist() if torch.is_tensor(v) else v) for n, v in b.items()}
                for k, b in self.rollouts.buffer.items()}

    def load_state_dict(self, state: Optional[dict]) -> None:
        types = {"advantages": torch.float32, "old_logps": torch.float32, "ref_logps": torch.float32}
        # group and the counts are plain numbers; every other list is a LongTensor
        self.rollouts.buffer = {int(k): {n: (torch.tensor(v, dtype=types.get(n, torch.long)) if isinstance(v, list)
                                             else v) for n, v in b.items()} for k, b in (state or {}).items()}


def eos_ids(tokenizer, model) -> set[int]:
    """Where a completion ends: the generation config's end-of-sequence ids (the end of a turn) and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    out = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        out.add(tokenizer.eos_token_id)
    return out


# ----------------------------------------------------------------------------------- the task
class GRPO(Task):
    name = "grpo"
    auto_class = AutoModelForCausalLM
    architectures = ()
    best_metric, greater_is_better = BEST_METRICS["grpo"]
    endpoint = "/v1/generate"
    playground = "chat"
    data_kind = "prompts"
    length_key = "grpo.max_completion_length"
    samples_title = "Sampled groups"
    pipeline_tag = "text-generation"
    usage_example = 'print(pipe([{"role": "user", "content": "What is 37 + 48?"}], max_new_tokens=40))'
    try_command = 'lmforge chat {run}'
    starter = STARTERS["grpo"]

    def intended_use(self, summary: dict) -> str:
        return ("Answer prompts like the training ones; tuned by online RL (GRPO) on the rewards "
                f"{', '.join(summary.get('rewards', []))} (chat template included with the tokenizer).")

    def setup(self, cfg: Config, log: logging.Logger = log, permissions: Permissions = Permissions()) -> TaskParts:
        g = cfg.grpo
        if not cfg.data.train:
            raise LmforgeError("no training data given", "set data.train (a jsonl/json/parquet/csv of prompts with an "
                                                         "answer column, or the built-in arithmetic)")
        splits = read_splits(cfg, prompt_data.KIND)
        notes = list(splits.notes)
        chat = load_chat_model(cfg, notes, log, permissions)
        model, tok = chat.model, chat.tokenizer
        max_prompt = self.max_prompt(cfg, chat.block_size)
        train_rows, cut = encode_prompts(splits.train, tok, max_prompt)
        eval_rows_ = encode_prompts(splits.eval, tok, max_prompt)[0] if splits.eval else []
        test_rows = encode_prompts(splits.test, tok, max_prompt)[0] if splits.test is not None else None
        if cut:
            notes.append(f"{cut:,} of {len(train_rows):,} train prompts were longer than {max_prompt} tokens "
                         "(grpo.max_prompt_length) and keep their last tokens")
        ro = self.rollouts(cfg, model, tok)
        if g.beta > 0:
            notes.append("KL against the starting model: " + ("the LoRA adapters switched off (no copy)"
                         if ro.reference == "adapter" else "a frozen copy kept in memory"))
        summary = {"train_rows": len(train_rows), "eval_rows": len(eval_rows_),
                   "test_rows": len(test_rows) if test_rows is not None else 0, **splits.summary(),
                   "rewards": [r.name for r in ro.rewards], "reward_weights": [r.weight for r in ro.rewards],
                   "num_generations": g.num_generations, "loss_type": g.loss_type, "advantage": g.advantage,
                   "scale_rewards": g.scale_rewards, "max_prompt_length": max_prompt, "prompts_truncated": cut,
                   "max_completion_length": g.max_completion_length, "generation_backend": ro.sampler.name,
                   "lengths": [len(r["prompt_ids"]) for r in train_rows]}
        if g.preflight_prompts:
            order = np.random.RandomState(cfg.train.seed).permutation(len(train_rows))[:g.preflight_prompts]
            p = preflight(ro, model, [train_rows[i] for i in order], max(1, cfg.train.per_device_train_batch_size))
            summary["preflight"] = p
            notes.append(preflight_line(p))
            check_preflight(p)
        mean_prompt = sum(summary["lengths"]) / max(1, len(train_rows))
        split = lambda rows: EncodedSplit(rows, [len(r["prompt_ids"]) for r in rows])  # noqa: E731
        return TaskParts(
            task=self, model=model, tokenizer=tok, train=split(train_rows), eval=split(eval_rows_),
            test=split(test_rows) if test_rows is not None else None, collate=make_collate(tok.pad_token_id),
            loss=GrpoObjective(cfg, ro.stats), eval_step=lambda m, b: eval_outputs(ro, m, b["rows"]),
            finalize=finalize, summary=summary, notes=notes, added_token_ids=chat.added_token_ids,
            samples=make_samples(ro, eval_rows_[:g.sample_prompts]), step_stats=ro.stats, rollout=ro,
            step_repeats=g.num_iterations, task_state=RolloutBuffer(ro) if g.num_iterations > 1 else None,
            output_layer_share=g.max_completion_length / (mean_prompt + g.max_completion_length))

    @staticmethod
    def max_prompt(cfg: Config, block_size: int) -> int:
        g = cfg.grpo
        if g.max_completion_length >= block_size:
            raise LmforgeError(f"grpo.max_completion_length ({g.max_completion_length}) leaves no room for a prompt in "
                               f"the {block_size} tokens of data.block_size", "raise data.block_size or lower "
                                                                              "grpo.max_completion_length")
        room = block_size - g.max_completion_length
        if g.max_prompt_length and g.max_prompt_length > room:
            raise LmforgeError(f"grpo.max_prompt_length {g.max_prompt_length} + max_completion_length "
                               f"{g.max_completion_length} is over data.block_size {block_size}",
                               "lower one of them, or raise data.block_size")
        return g.max_prompt_length or room

    @staticmethod
    def rollouts(cfg: Config, model, tokenizer, stats: Optional[GrpoStats] = None) -> Rollouts:
        g = cfg.grpo
        rewards = reward_fns.load_rewards(g.rewards, g.reward_weights, reward_opts(cfg), g.reward_model)
        reference = None
        if g.beta > 0:
            if cfg.peft is not None:
                reference = "adapter"
            else:
                check_room_for_a_copy(model)
                reference = copy.deepcopy(model).eval().requires_grad_(False)
        sampler = TorchSampler(eos_ids(tokenizer, model), tokenizer.pad_token_id, g.share_prefill)
        return Rollouts(cfg, tokenizer, sampler, rewards, stats or GrpoStats(), reference,
                        share_training=g.share_prefill and not cfg.train.gradient_checkpointing)

    def load_for_use(self, model_dir: Path, allow_untrained: bool = False):
        return CAUSAL_LM.load_for_use(model_dir)

    def eval_setup(self, model_dir: Path, data: str, overrides=None) -> TaskParts:
        """Strict / lenient pass@1 (greedy), pass@k (k = grpo.eval_k, default num_generations) and the mean reward
        per function of a saved model on `data`'s prompts."""
        model, tok = self.load_for_use(Path(model_dir))
        cfg = eval_config(model_dir, overrides, self)
        if not cfg.grpo.eval_k:
            cfg.grpo.eval_k = cfg.grpo.num_generations
        ensure_chat_template(tok)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        max_prompt = self.max_prompt(cfg, resolve_block_size(cfg.data.block_size, model.config))
        rows, _ = encode_prompts(eval_rows(read_eval_rows(data, cfg, prompt_data.KIND), overrides, cfg), tok, max_prompt)
        ro = self.rollouts(cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"beta": 0.0})}), model, tok)
        return TaskParts(task=self, model=model, tokenizer=tok, train=None,
                         eval=EncodedSplit(rows, [len(r["prompt_ids"]) for r in rows]),
                         collate=make_collate(tok.pad_token_id),
                         loss=GrpoObjective(cfg, ro.stats), eval_step=lambda m, b: eval_outputs(ro, m, b["rows"]),
                         finalize=finalize, summary={"prompts": len(rows), "rewards": [r.name for r in ro.rewards],
                                                     "eval_k": cfg.grpo.eval_k})

    def metric_inputs(self, outputs: dict) -> tuple:
        return outputs["reward"].cpu().numpy(), None, {k: v.cpu().numpy() for k, v in outputs.items()}

    def tokenizer_findings(self, specials: dict) -> list[tuple[str, str]]:
        return CAUSAL_LM.tokenizer_findings(specials)

    def describe_example(self, parts: TaskParts, ids, labels) -> list[str]:
        row = next((r for r in (parts.train.rows if parts.train else []) if r["prompt_ids"] == list(ids)), None)
        if row is None:
            return []
        cols = ", ".join(f"{k}={clip(str(v), 60)}" for k, v in row["columns"].items())
        return [f"  prompt: {len(ids)} tokens; the completion is sampled ({parts.summary.get('num_generations')} per "
                f"prompt) and scored by {', '.join(parts.summary.get('rewards', []))}",
                f"  columns for the rewards: {cols or 'none'}"]


TASK = GRPO()

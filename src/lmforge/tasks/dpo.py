"""Preference tuning of a causal LM on chosen / rejected pairs: DPO, IPO, SimPO and ORPO (the `dpo:` section).

    lmforge train examples/dpo-smollm2-kjv-to-web.yaml
    lmforge doctor examples/dpo-smollm2-kjv-to-web.yaml     # one pair, scored tokens marked

Pairs (data/preference.py) are rendered with the model's chat template (ChatML when it has none), as in
SFT: the prompt is everything before the first scored reply token, the replies are scored on their
content and end-of-turn token (tasks/chat_template.py finds them without generation tags).

A pair is one row, prompt + chosen + rejected, with position ids and a 4-D attention mask that let the
rejected reply see the prompt but not the chosen one: the prompt's forward pass is shared by both
sides. A probe at setup checks that this gives the same log-probabilities as two separate sequences
(else each side is its own padded row, as the peers do). The LM head and the log-softmax run only at
the scored positions.

The reference model's log-probabilities (sigmoid and ipo) are computed once, before training, in one
pass over the train and eval pairs, and cached on disk under the model's and the data's fingerprint;
`dpo.reference: live` computes them at each step instead (with LoRA: the base model with the adapter
disabled; without: a frozen copy of the starting model).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoModelForCausalLM

from ..config import Config, Permissions, load_config
from ..data import preference
from ..data.pipeline import Splits, describe, read_eval_rows, read_splits
from ..errors import LmforgeError
from ..models.load import resolve_block_size
from ..runtime import available_bytes
from ..starters import BEST_METRICS, STARTERS
from .base import EncodedSplit, StepStats, Task, TaskParts, clip, eval_config, eval_rows
from .causal_lm import TASK as CAUSAL_LM
from .causal_lm import load_model
from .chat_template import ensure_chat_template
from .preference_loss import needs_reference, preference_loss
from .preference_rows import (  # noqa: F401 (the row, batch and log-prob API of the task, re-exported)
    EncodedPairs,
    attach_reference,
    branch_mask,
    check_usable,
    describe_encoding,
    encode_pairs,
    make_collate,
    pair_preview,
    probe_shared_layout,
    reference_logps,
    row_length,
    sequence_logps,
)
from .sft import load_chat_model, make_samples

log = logging.getLogger("lmforge")

METRICS = ("reward_accuracy", "reward_margin", "rewards_chosen", "rewards_rejected", "logps_chosen", "logps_rejected")


def check_room_for_a_copy(model) -> None:
    """dpo.reference: live without LoRA keeps a frozen copy of the model: refused in one line, before the copy is
    made, when the free memory cannot hold it (with room for training left)."""
    need = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    free = available_bytes(next(model.parameters()).device)
    if free is not None and need > 0.5 * free:
        raise LmforgeError(f"dpo.reference: live keeps a frozen copy of the model ({need / 2**20:,.0f} MB), and only "
                           f"{free / 2**20:,.0f} MB are free, which must also hold training",
                           "use dpo.reference: cached (the default: one pass before training), or add a peft: section "
                           "(the reference is then the base model with the adapter off, no copy)")


# ----------------------------------------------------------------------------------- the loss
@dataclass
class PairScores:
    """One batch of pairs: each pair's loss, the chosen / rejected rewards, the policy's summed log-probs
    [pairs, 2] and the scored tokens [pairs, 2]."""
    losses: torch.Tensor
    reward_chosen: torch.Tensor
    reward_rejected: torch.Tensor
    logps: torch.Tensor
    counts: torch.Tensor


class PreferenceObjective:
    """The loop's loss (sum over pairs) and eval step; keeps the logging window's reward statistics."""

    def __init__(self, loss_type: str, beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.5,
                 live_reference=None, reward_scale: Optional[str] = None):
        self.loss_type, self.beta, self.reward_scale = loss_type, beta, reward_scale or "mean"
        self.label_smoothing, self.simpo_gamma = label_smoothing, simpo_gamma
        self.live_reference = live_reference  # None (cached in the batch), a model, or "adapter"
        self.stats = StepStats(METRICS, count="pairs")

    def _compute(self, model, batch: dict) -> PairScores:
        logps, counts = sequence_logps(model, batch)
        ref = None
        if needs_reference(self.loss_type):
            if self.live_reference is not None:
                ref = reference_logps(model, batch, self.live_reference).to(logps.device)
            elif "ref" in batch:
                ref = batch["ref"].to(logps.device, torch.float32)
            else:
                raise LmforgeError("internal: a reference-based loss without reference log-probs")
        losses, rc, rr = preference_loss(
            self.loss_type, self.beta, logps[:, 0], logps[:, 1], counts[:, 0], counts[:, 1],
            None if ref is None else ref[:, 0], None if ref is None else ref[:, 1],
            label_smoothing=self.label_smoothing, simpo_gamma=self.simpo_gamma, reward_scale=self.reward_scale)
        return PairScores(losses, rc, rr, logps, counts)

    def __call__(self, model, batch: dict) -> torch.Tensor:
        s = self._compute(model, batch)
        losses, rc, rr, logps = s.losses, s.reward_chosen, s.reward_rejected, s.logps
        with torch.no_grad():
            stats = {"pairs": float(len(losses)), "reward_accuracy": float((rc > rr).float().sum()),
                     "reward_margin": float((rc - rr).sum()), "rewards_chosen": float(rc.sum()),
                     "rewards_rejected": float(rr.sum()), "logps_chosen": float(logps[:, 0].sum()),
                     "logps_rejected": float(logps[:, 1].sum())}
            self.stats.add(stats)
        return losses.sum()

    @torch.no_grad()
    def eval_step(self, model, batch: dict) -> dict:
        s = self._compute(model, batch)
        losses, rc, rr, logps, counts = s.losses, s.reward_chosen, s.reward_rejected, s.logps, s.counts
        return {"pair_loss": losses.double(), "reward_chosen": rc.double(), "reward_rejected": rr.double(),
                "logp_chosen": logps[:, 0].double(), "logp_rejected": logps[:, 1].double(),
                "tokens_chosen": counts[:, 0], "tokens_rejected": counts[:, 1]}


def finalize(outputs: dict) -> dict:
    rc, rr = outputs["reward_chosen"], outputs["reward_rejected"]
    return {"loss": float(outputs["pair_loss"].mean()), "reward_accuracy": float((rc > rr).double().mean()),
            "reward_margin": float((rc - rr).mean()), "rewards_chosen": float(rc.mean()),
            "rewards_rejected": float(rr.mean()), "logps_chosen": float(outputs["logp_chosen"].mean()),
            "logps_rejected": float(outputs["logp_rejected"].mean()), "pairs": int(rc.numel())}


# ----------------------------------------------------------------------------------- the task
class DPO(Task):
    name = "dpo"
    auto_class = AutoModelForCausalLM
    architectures = ()
    best_metric, greater_is_better = BEST_METRICS["dpo"]
    endpoint = "/v1/generate"
    playground = "chat"
    data_kind = "pairs"
    samples_title = "Sample generations"
    pipeline_tag = "text-generation"
    usage_example = 'print(pipe([{"role": "user", "content": "Hello!"}], max_new_tokens=40))'
    try_command = 'lmforge chat {run}'
    starter = STARTERS["dpo"]

    def intended_use(self, summary: dict) -> str:
        return ("Answer in conversations like the training prompts, preferring replies like the chosen ones "
                f"({summary.get('loss_type', 'dpo')} preference tuning; chat template included with the tokenizer).")

    def setup(self, cfg: Config, log: logging.Logger = log, permissions: Permissions = Permissions()) -> TaskParts:
        d, dc = cfg.data, cfg.dpo
        if not d.train:
            raise LmforgeError("no training data given", "set data.train (a jsonl/json/parquet/csv of prompt / "
                                                         "chosen / rejected pairs, or the built-in kjv-to-web-pairs)")
        splits = self.read(cfg)
        notes = list(splits.notes)
        train_pairs, eval_pairs = splits.train, splits.eval
        chat_model = load_chat_model(cfg, notes, log, permissions)
        model, tokenizer, max_len = chat_model.model, chat_model.tokenizer, chat_model.block_size
        max_prompt = min(dc.max_prompt_length or max_len // 2, max_len - 1)
        train_enc = encode_pairs(train_pairs, tokenizer, max_prompt, max_len)
        check_usable(train_enc, describe(d.train))
        eval_enc = encode_pairs(eval_pairs, tokenizer, max_prompt, max_len)
        check_usable(eval_enc, describe(d.eval) if d.eval else "the held-out pairs")
        test_enc = None
        if splits.test is not None:
            test_enc = encode_pairs(splits.test, tokenizer, max_prompt, max_len)
            check_usable(test_enc, describe(d.test))
        notes += describe_encoding(train_enc, max_prompt, max_len)
        layout, collate = self.batching(cfg, model, tokenizer)
        notes.append("pairs: the prompt's forward pass is shared by chosen and rejected (one row per pair)"
                     if layout == "shared" else "pairs: chosen and rejected each in their own padded row")
        live = None
        if needs_reference(dc.loss_type):
            if dc.reference == "cached":
                notes.append(self.cache_reference(cfg, model, collate, train_enc, eval_enc, test_enc))
            else:
                if cfg.peft is None:
                    check_room_for_a_copy(model)
                live = "adapter" if cfg.peft is not None else copy.deepcopy(model).eval().requires_grad_(False)
                notes.append("reference log-probs computed at each step (dpo.reference: live)" +
                             ("; the base model with the LoRA adapter disabled" if cfg.peft is not None else
                              "; a frozen copy of the starting model is kept in memory"))
        if dc.reward_scale is not None and dc.loss_type != "ipo":
            raise LmforgeError(f"dpo.reward_scale is IPO's choice; dpo.loss_type {dc.loss_type} has one convention",
                               "remove dpo.reward_scale (see the README's table of losses and rewards next to TRL's)")
        objective = PreferenceObjective(dc.loss_type, dc.beta, dc.label_smoothing, dc.simpo_gamma, live,
                                        dc.reward_scale)
        train_split = EncodedSplit(train_enc.rows, [row_length(r, layout) for r in train_enc.rows])
        eval_split = EncodedSplit(eval_enc.rows, [row_length(r, layout) for r in eval_enc.rows])
        test_split = EncodedSplit(test_enc.rows, [row_length(r, layout) for r in test_enc.rows]) \
            if test_enc is not None else None
        scored = sum(sum(r["chosen_scored"]) + sum(r["rejected_scored"]) for r in train_enc.rows)
        summary = {"train_rows": len(train_split), "eval_rows": len(eval_split),
                   "test_rows": len(test_split) if test_split is not None else 0, **splits.summary(),
                   "pairs": len(train_enc.rows), "loss_type": dc.loss_type, "beta": dc.beta, "layout": layout,
                   "max_length": max_len, "max_prompt_length": max_prompt,
                   "dropped_identical": train_enc.identical, "dropped_cut_away": train_enc.cut_away,
                   "prompts_truncated": train_enc.prompts_truncated, "replies_truncated": train_enc.replies_truncated,
                   "scored_tokens": scored, "train_tokens": sum(train_split.lengths),
                   "mask_method": sorted(train_enc.methods), "lengths": train_split.lengths,
                   "mask_preview": pair_preview(tokenizer, train_enc.rows[0])}
        prompts = [(p.prompt, p.chosen[-1]["content"]) for p in eval_pairs[:3]]
        return TaskParts(
            task=self, model=model, tokenizer=tokenizer, train=train_split, eval=eval_split, test=test_split,
            collate=collate, loss=objective, added_token_ids=chat_model.added_token_ids,
            eval_step=objective.eval_step, finalize=finalize, summary=summary, notes=notes,
            samples=make_samples(tokenizer, prompts), step_stats=objective.stats,
            output_layer_share=scored / max(1, sum(train_split.lengths)),
        )

    @staticmethod
    def batching(cfg: Config, model, tokenizer):
        dtype = next(model.parameters()).dtype
        shared = cfg.dpo.share_prompt and probe_shared_layout(model, tokenizer.pad_token_id)
        layout = "shared" if shared else "rows"
        return layout, make_collate(tokenizer.pad_token_id, layout, dtype if dtype.is_floating_point else torch.float32)

    @staticmethod
    def cache_reference(cfg: Config, model, collate, train_enc: EncodedPairs, eval_enc: EncodedPairs,
                        test_enc: Optional[EncodedPairs] = None) -> str:
        bs = max(cfg.train.per_device_eval_batch_size, 1)
        secs, hits = 0.0, []
        encs = [e for e in (train_enc, eval_enc, test_enc) if e is not None]
        for enc in encs:
            s, hit = attach_reference(model, enc.rows, collate, bs)
            secs += s
            hits.append(hit)
        n = sum(len(e.rows) for e in encs)
        if all(hits):
            return f"reference log-probs of {n:,} pairs loaded from the cache ({secs:.1f} s)"
        return f"reference log-probs of {n:,} pairs computed once in {secs:.1f} s (cached for later runs)"

    def read(self, cfg: Config) -> Splits:
        """Train / eval / test pairs by the data pipeline's rules (data/pipeline.py)."""
        return read_splits(cfg, preference.KIND)

    def load_for_use(self, model_dir: Path, allow_untrained: bool = False):
        return CAUSAL_LM.load_for_use(model_dir)

    def eval_setup(self, model_dir: Path, data: str, overrides=None) -> TaskParts:
        """Preference metrics of a saved model on `data`'s pairs, against its run's starting model as reference."""
        model, tokenizer = self.load_for_use(Path(model_dir))
        cfg = eval_config(model_dir, overrides, self)
        ensure_chat_template(tokenizer)
        max_len = resolve_block_size(cfg.data.block_size, model.config)
        max_prompt = min(cfg.dpo.max_prompt_length or max_len // 2, max_len - 1)
        pairs = read_eval_rows(data, cfg, preference.KIND)
        enc = encode_pairs(eval_rows(pairs, overrides, cfg),
                           tokenizer, max_prompt, max_len)
        check_usable(enc, data)
        layout, collate = self.batching(cfg, model, tokenizer)
        if needs_reference(cfg.dpo.loss_type):
            ref_cfg = load_config(None, {"task": "dpo", "model": cfg.model.model_dump()})
            ref_model, _, _ = load_model(ref_cfg, log)
            attach_reference(ref_model, enc.rows, collate, max(cfg.train.per_device_eval_batch_size, 1))
            del ref_model
        objective = PreferenceObjective(cfg.dpo.loss_type, cfg.dpo.beta, cfg.dpo.label_smoothing, cfg.dpo.simpo_gamma,
                                        reward_scale=cfg.dpo.reward_scale)
        split = EncodedSplit(enc.rows, [row_length(r, layout) for r in enc.rows])
        return TaskParts(task=self, model=model, tokenizer=tokenizer, train=None, eval=split, collate=collate,
                         loss=objective, eval_step=objective.eval_step, finalize=finalize,
                         summary={"pairs": len(enc.rows), "reference": cfg.model.name})

    def metric_inputs(self, outputs: dict) -> tuple:
        margin = (outputs["reward_chosen"] - outputs["reward_rejected"]).cpu().numpy()
        return margin, None, {"logp_chosen": outputs["logp_chosen"].cpu().numpy(),
                              "logp_rejected": outputs["logp_rejected"].cpu().numpy()}

    def tokenizer_findings(self, specials: dict) -> list[tuple[str, str]]:
        return CAUSAL_LM.tokenizer_findings(specials)

    def describe_example(self, parts: TaskParts, ids, labels) -> list[str]:
        """The pair's prompt, then each reply with its scored tokens between [[ and ]]."""
        row = next((r for r in (parts.train.rows if parts.train else [])
                    if r["prompt"] + r["chosen"] + r.get("prompt_rejected", []) + r["rejected"] == list(ids)), None)
        if row is None:
            return []
        tok = parts.tokenizer

        def marked(toks, scored):
            pieces, inside = [], False
            for t, on in zip(toks, scored):
                if on != inside:
                    pieces.append("[[" if on else "]]")
                    inside = on
                pieces.append(tok.decode([t], skip_special_tokens=False))
            return "".join(pieces) + ("]]" if inside else "")
        n = sum(row["chosen_scored"]) + sum(row["rejected_scored"])
        return [f"  scored: {n} of {len(ids)} tokens (between [[ and ]]); the prompt runs once for both replies"
                if "prompt_rejected" not in row else f"  scored: {n} of {len(ids)} tokens (between [[ and ]])",
                "  prompt:   " + clip(tok.decode(row["prompt"], skip_special_tokens=False), 400),
                "  chosen:   " + clip(marked(row["chosen"], row["chosen_scored"]), 400),
                "  rejected: " + clip(marked(row["rejected"], row["rejected_scored"]), 400)]



TASK = DPO()

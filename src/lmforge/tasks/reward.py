"""Reward models: a sequence-scoring model trained on preference pairs with the Bradley-Terry loss (the `reward:`
section), used by `lmforge score`, `POST /v1/score` and as a learned reward in online RL (`grpo.reward_model`).

    lmforge train examples/reward-smollm2-kjv-to-web.yaml
    lmforge score runs/reward-smollm2-kjv-to-web --input conversations.jsonl

The model is a sequence classifier with one output (AutoModelForSequenceClassification, num_labels=1). A pair's
two sides are its prompt + chosen reply and prompt + rejected reply, rendered with the model's chat template
(ChatML when it has none), as the dpo task renders them; the reward of a text is the score head's output at its
last real token (decoder models; an encoder's own pooling otherwise). A text longer than data.block_size keeps its
last block_size tokens (the reply is what is judged).

Loss (Bradley-Terry, as TRL's RewardTrainer): -log sigmoid(r_chosen - r_rejected - margin), the margin from an
optional `margin` column (0 without), plus `reward.center_rewards_coefficient` x (r_chosen + r_rejected)^2
(Eisenstein et al. 2023: rewards centred on 0), summed over pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from ..config import Config, Permissions
from ..data import preference
from ..data.batching import pad_sequences
from ..data.pipeline import read_eval_rows, read_splits
from ..errors import LmforgeError
from ..models.load import ensure_pad, load_pretrained, model_source, resolve_block_size
from ..models.lora import load_model
from ..starters import BEST_METRICS, STARTERS
from ..tokenizer import load_tokenizer
from .base import EncodedSplit, Task, TaskParts, eval_config, eval_rows
from .chat_template import ensure_chat_template
from .preference_rows import PAD_BRANCH, branch_mask

log = logging.getLogger("lmforge")


# ----------------------------------------------------------------------------------- scoring
def _score_head(model) -> Optional[torch.nn.Module]:
    """The per-position score layer of a decoder sequence classifier (llama, qwen, mistral, gpt2: `score`), or None
    for models that pool themselves (BERT-style encoders)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "score" and isinstance(module, torch.nn.Linear):
            return module
    return None


def rewards_of(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One reward per (right-padded) sequence: the score head's output at its last real token."""
    head = _score_head(model)
    if head is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.float().reshape(-1)
    seen = {}
    hook = head.register_forward_hook(lambda mod, args, out: seen.__setitem__("out", out))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        hook.remove()
    per_position = seen["out"].float()[..., 0]  # [batch, length]
    last = attention_mask.long().sum(1).clamp(min=1) - 1
    return per_position[torch.arange(per_position.shape[0], device=per_position.device), last]


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, margin: Optional[torch.Tensor] = None,
                  center: float = 0.0) -> torch.Tensor:
    """Summed over pairs: -log sigmoid(r_c - r_r - margin) + center x (r_c + r_r)^2."""
    diff = chosen - rejected - (margin if margin is not None else 0.0)
    loss = -F.logsigmoid(diff).sum()
    if center:
        loss = loss + center * ((chosen + rejected) ** 2).sum()
    return loss


# ----------------------------------------------------------------------------------- rendering and encoding
def render(tokenizer, messages: list[dict]) -> str:
    """A conversation as the model's chat template writes it (no generation prompt: the reply is there)."""
    return tokenizer.apply_chat_template(messages, tokenize=False)


@dataclass
class Encoded:
    split: EncodedSplit
    truncated: int


def tokens(tokenizer, texts: Sequence[str], limit: int) -> tuple[list[list[int]], int]:
    """Token ids of rendered texts, each keeping its last `limit` tokens; how many were cut."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    cut = sum(len(x) > limit for x in ids)
    return [x[-limit:] for x in ids], cut


def common_prefix(a: list[int], b: list[int]) -> int:
    """Tokens the two sides share from the start, leaving each at least its last token."""
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return n


def encode_pairs(pairs: list, tokenizer, limit: int) -> Encoded:
    """Rows {prompt, chosen, rejected, margin}: the ids the two rendered sides share from the start, then each
    side's own rest (each side keeps its last `limit` tokens)."""
    chosen, c1 = tokens(tokenizer, [render(tokenizer, p.prompt + p.chosen) for p in pairs], limit)
    rejected, c2 = tokens(tokenizer, [render(tokenizer, p.prompt + p.rejected) for p in pairs], limit)
    rows = []
    for c, r, p in zip(chosen, rejected, pairs):
        k = common_prefix(c, r)
        rows.append({"prompt": c[:k], "chosen": c[k:], "rejected": r[k:], "margin": float(p.margin or 0.0)})
    return Encoded(EncodedSplit(rows, [len(x["prompt"]) + len(x["chosen"]) + len(x["rejected"]) for x in rows]),
                   c1 + c2)


def make_collate(pad_id: int, layout: str = "shared", mask_dtype=torch.float32):
    """Pairs as batches. 'shared': one row per pair, prompt + chosen + rejected, the rejected side seeing the prompt
    but not the chosen reply (a 4-D mask and position ids), so the shared opening runs once; 'rows': two padded
    rows per pair. `ends`: the flat positions whose score is each pair's chosen, then rejected, reward."""
    def collate(rows: list[dict]) -> dict:
        seqs, branches, positions, ends = [], [], [], []
        for row in rows:
            p, c, r = row["prompt"], row["chosen"], row["rejected"]
            if layout == "shared":
                seqs.append(p + c + r)
                branches.append([0] * len(p) + [1] * len(c) + [2] * len(r))
                positions.append(list(range(len(p) + len(c))) + list(range(len(p), len(p) + len(r))))
                ends.append((len(seqs) - 1, len(p) + len(c) - 1, len(p) + len(c) + len(r) - 1))
            else:
                for side in (c, r):
                    seqs.append(p + side)
                    branches.append([1] * (len(p) + len(side)))
                    positions.append(list(range(len(p) + len(side))))
                ends.append((len(seqs) - 2, len(p) + len(c) - 1, None))
        width = max(map(len, seqs))
        n = len(seqs)
        batch = {"input_ids": torch.full((n, width), pad_id, dtype=torch.long),
                 "position_ids": torch.zeros((n, width), dtype=torch.long)}
        branch = torch.full((n, width), PAD_BRANCH, dtype=torch.long)
        for i, (ids, br, pos) in enumerate(zip(seqs, branches, positions)):
            batch["input_ids"][i, :len(ids)] = torch.tensor(ids)
            batch["position_ids"][i, :len(ids)] = torch.tensor(pos)
            branch[i, :len(ids)] = torch.tensor(br)
        real = branch != PAD_BRANCH
        flat_c, flat_r = [], []
        for (row_i, end_c, end_r), row in zip(ends, rows):
            flat_c.append(row_i * width + end_c)
            flat_r.append(row_i * width + end_r if end_r is not None
                          else (row_i + 1) * width + len(row["prompt"]) + len(row["rejected"]) - 1)
        batch["ends"] = torch.tensor(flat_c + flat_r)
        batch["attention_mask"] = real.long()
        if layout == "shared":
            batch["mask4d"] = branch_mask(branch, mask_dtype)
        batch.update(margin=torch.tensor([r["margin"] for r in rows], dtype=torch.float),
                     n_tokens=int(real.sum()), n_items=len(rows))
        return batch
    return collate


def per_position_scores(model, batch: dict) -> torch.Tensor:
    """The score head's output at every position [B, L] (decoder classifiers), from one forward pass."""
    head = _score_head(model)
    seen = {}
    hook = head.register_forward_hook(lambda mod, args, out: seen.__setitem__("out", out))
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if "mask4d" in batch:
        dtype = next(model.parameters()).dtype
        inputs["attention_mask"] = batch["mask4d"].to(dtype if dtype.is_floating_point else torch.float32)
    else:
        inputs["attention_mask"] = batch["attention_mask"]
    try:
        model(**inputs)
    finally:
        hook.remove()
    return seen["out"].float()[..., 0]


def pair_rewards(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rewards, rejected rewards) of a batch of pairs."""
    if _score_head(model) is None:  # an encoder pools itself: its two sides are two rows of their own
        r = rewards_of(model, batch["input_ids"], batch["attention_mask"])
        return r[0::2], r[1::2]  # rows layout: chosen, rejected, chosen, ...
    flat = per_position_scores(model, batch).reshape(-1)[batch["ends"]]
    n = flat.shape[0] // 2
    return flat[:n], flat[n:]


@torch.no_grad()
def probe_shared_layout(model, pad_id: int) -> bool:
    """True when a pair scored in one row with its shared opening gives the rewards of two separate rows."""
    if _score_head(model) is None:
        return False
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(2)
    p, c, r = (torch.randint(0, vocab, (n,), generator=g).tolist() for n in (6, 4, 5))
    row = {"prompt": p, "chosen": c, "rejected": r, "margin": 0.0}
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        got = {}
        for layout in ("rows", "shared"):
            batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v
                     for k, v in make_collate(pad_id, layout)([row, row]).items()}
            got[layout] = torch.stack(pair_rewards(model, batch))
        return bool(torch.allclose(got["rows"], got["shared"], atol=1e-4, rtol=1e-4))
    except Exception:  # noqa: BLE001 - a model that refuses a 4-D mask: each side in its own row
        return False
    finally:
        model.train(was)


def make_loss(center: float):
    def loss(model, batch):
        chosen, rejected = pair_rewards(model, batch)
        return bradley_terry(chosen, rejected, batch["margin"], center)
    return loss


def eval_step(model, batch):
    chosen, rejected = pair_rewards(model, batch)
    return {"chosen": chosen, "rejected": rejected, "margin": batch["margin"]}


def make_finalize(center: float):
    def finalize(outputs: dict) -> dict:
        c, r = outputs["chosen"].double(), outputs["rejected"].double()
        loss = float(bradley_terry(c, r, outputs["margin"].double(), center)) / max(1, c.numel())
        both = torch.cat([c, r])
        return {"loss": loss, "accuracy": float((c > r).double().mean()), "margin": float((c - r).mean()),
                "reward_chosen": float(c.mean()), "reward_rejected": float(r.mean()),
                "reward_std": float(both.std()) if both.numel() > 1 else 0.0,
                "reward_p10": float(torch.quantile(both, 0.1)), "reward_p90": float(torch.quantile(both, 0.9)),
                "n_pairs": int(c.numel())}
    return finalize


# ----------------------------------------------------------------------------------- the model
def prepare_model(model, tokenizer, notes: list[str]) -> None:
    """Pad id on the config, embeddings grown to the tokenizer (a chat template's tokens)."""
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer))
        notes.append(f"embeddings grown from {rows} to {len(tokenizer)} rows (tokens the chat template added)")


@dataclass
class Scorer:
    """A loaded reward model that scores texts or conversations (lmforge score, /v1/score, grpo.reward_model)."""
    model: torch.nn.Module
    tokenizer: object
    max_length: int

    def texts_of(self, items: Sequence) -> list[str]:
        """Plain texts as they are; conversations (message lists) rendered with this model's chat template."""
        return [it if isinstance(it, str) else render(self.tokenizer, list(it)) for it in items]

    @torch.no_grad()
    def score(self, items: Sequence, batch_size: int = 16) -> list[float]:
        texts = self.texts_of(items)
        ids, _ = tokens(self.tokenizer, texts, self.max_length)
        device = next(self.model.parameters()).device
        out = [0.0] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for at in range(0, len(order), batch_size):
            idx = order[at:at + batch_size]
            seqs = [ids[i] or [self.tokenizer.pad_token_id] for i in idx]
            batch_ids = pad_sequences(seqs, self.tokenizer.pad_token_id).to(device)
            mask = pad_sequences([[1] * len(s) for s in seqs], 0).to(device)
            for i, v in zip(idx, rewards_of(self.model, batch_ids, mask).tolist()):
                out[i] = v
        return out


def load_scorer(model_dir: Path, allow_untrained: bool = False) -> Scorer:
    """A reward model ready to score; texts keep the last data.block_size tokens its run trained on (else the
    model's limit, at most 512)."""
    model, tokenizer = TASK.load_for_use(Path(model_dir), allow_untrained)
    return Scorer(model, tokenizer, max_length_of(Path(model_dir), model, tokenizer))


def max_length_of(model_dir: Path, model, tokenizer) -> int:
    from ..config import load_config
    run_cfg = Path(model_dir).parent / "config.yaml"
    block = load_config(run_cfg).data.block_size if run_cfg.exists() else None
    return resolve_block_size(block, model.config, tokenizer)


def conversation(prompt, completion) -> list[dict]:
    """A prompt (text or messages) and its completion (text, or TRL's conversational [{role, content}]) as one
    conversation."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if isinstance(completion, str):
        return msgs + [{"role": "assistant", "content": completion}]
    return msgs + [dict(m) for m in completion]


def learned_reward(model_dir: str):
    """grpo.reward_model: a reward function in TRL's call convention that scores each prompt + completion with a
    trained reward model (loaded once, on the inference device, scored in batches without gradients). The
    conversation is rendered with the reward model's own chat template, whatever the policy's is."""
    from ..models.load import resolve_model_dir
    from ..runtime import inference_device
    scorer = load_scorer(resolve_model_dir(model_dir))
    scorer.model.to(inference_device()).requires_grad_(False)

    def reward_model(prompts, completions, **kwargs):
        return scorer.score([conversation(p, c) for p, c in zip(prompts, completions)])
    reward_model.scorer = scorer
    return reward_model


# ----------------------------------------------------------------------------------- the task
class Reward(Task):
    name = "reward"
    auto_class = AutoModelForSequenceClassification
    architectures = ()  # a bare one-label classifier folder is a reranker to task_of; reward runs say so in config.yaml
    best_metric, greater_is_better = BEST_METRICS["reward"]
    endpoint = "/v1/score"
    playground = "score"
    data_kind = "pairs"
    length_key = "data.block_size"
    pipeline_tag = "text-classification"
    usage_code = ('from transformers import AutoModelForSequenceClassification, AutoTokenizer\n'
                  'tok = AutoTokenizer.from_pretrained("{model}")\n'
                  'model = AutoModelForSequenceClassification.from_pretrained("{model}")\n'
                  'text = tok.apply_chat_template([{{"role": "user", "content": "Hi"}}, '
                  '{{"role": "assistant", "content": "Hello!"}}], tokenize=False)\n'
                  'print(model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits)  # the reward')
    try_command = 'lmforge score {run} --input conversations.jsonl'
    starter = STARTERS["reward"]

    def intended_use(self, summary: dict) -> str:
        return ("Score replies: a higher reward means a reply more like the preferred ones of the training pairs. "
                "Use it to rank candidates or as a learned reward in online RL (`grpo.reward_model`).")

    def setup(self, cfg: Config, log: logging.Logger = log, permissions: Permissions = Permissions()) -> TaskParts:
        splits = read_splits(cfg, preference.KIND)
        notes = list(splits.notes)
        path = model_source(cfg, permissions)
        tokenizer = load_tokenizer(path, cfg.model.revision)
        notes += [n for n in (ensure_chat_template(tokenizer), ensure_pad(tokenizer, where=path)) if n]
        model, missing = load_pretrained(AutoModelForSequenceClassification, path, cfg, permissions, num_labels=1,
                                         ignore_mismatched_sizes=True)
        prepare_model(model, tokenizer, notes)
        limit = resolve_block_size(cfg.data.block_size, model.config, tokenizer)
        train = encode_pairs(splits.train, tokenizer, limit)
        evals = {k: encode_pairs(v, tokenizer, limit) for k, v in (("eval", splits.eval), ("test", splits.test))
                 if v is not None}
        if train.truncated:
            notes.append(f"{train.truncated} of {2 * len(train.split)} training texts are longer than data.block_size "
                         f"{limit} and keep their last {limit} tokens")
        notes.append(f"reward model: score at the last real token; Bradley-Terry loss"
                     + (f" with reward centring {cfg.reward.center_rewards_coefficient:g}"
                        if cfg.reward.center_rewards_coefficient else ""))
        for note in notes:
            log.info("%s", note)
        center = cfg.reward.center_rewards_coefficient or 0.0
        layout = "shared" if probe_shared_layout(model, tokenizer.pad_token_id) else "rows"
        notes.append("pairs: the opening the two sides share runs once, in one row per pair (checked against two "
                     "rows at setup)" if layout == "shared" else "pairs: each side in its own row")
        log.info("%s", notes[-1])
        summary = {"train_rows": len(train.split), "eval_rows": len(evals["eval"].split) if "eval" in evals else 0,
                   "test_rows": len(evals["test"].split) if "test" in evals else 0, "block_size": limit,
                   "truncated_train": train.truncated, "mean_tokens": float(np.mean(train.split.lengths)),
                   "lengths": train.split.lengths, **splits.summary()}
        return TaskParts(task=self, model=model, tokenizer=tokenizer, train=train.split,
                         eval=evals["eval"].split if "eval" in evals else None,
                         test=evals["test"].split if "test" in evals else None,
                         collate=make_collate(tokenizer.pad_token_id, layout), loss=make_loss(center),
                         eval_step=eval_step, finalize=make_finalize(center), new_param_names=missing, summary=summary,
                         notes=notes)

    def load_for_use(self, model_dir: Path, allow_untrained: bool = False):
        tokenizer = load_tokenizer(str(model_dir))
        ensure_chat_template(tokenizer)
        ensure_pad(tokenizer, where=str(model_dir))
        model, info = load_model(AutoModelForSequenceClassification, Path(model_dir), output_loading_info=True)
        if int(model.config.num_labels) != 1:
            raise LmforgeError(f"the model at {model_dir} has {model.config.num_labels} outputs; a reward model has one",
                               "train one with task: reward")
        missing = sorted(info.get("missing_keys") or [])
        if missing and not allow_untrained:
            raise LmforgeError(f"the model at {model_dir} has no trained reward head ({', '.join(missing[:3])})",
                               "train a reward model first (task: reward), or pass --allow-untrained")
        model.config.pad_token_id = tokenizer.pad_token_id
        model.eval()
        return model, tokenizer

    def eval_setup(self, model_dir: Path, data: str, overrides=None) -> TaskParts:
        model, tokenizer = self.load_for_use(model_dir)
        cfg = eval_config(model_dir, overrides, self)
        rows = eval_rows(read_eval_rows(data, cfg, preference.KIND), overrides, cfg)
        limit = resolve_block_size(cfg.data.block_size, model.config, tokenizer)
        center = cfg.reward.center_rewards_coefficient or 0.0
        layout = "shared" if probe_shared_layout(model, tokenizer.pad_token_id) else "rows"
        return TaskParts(task=self, model=model, tokenizer=tokenizer, train=None,
                         eval=encode_pairs(rows, tokenizer, limit).split,
                         collate=make_collate(tokenizer.pad_token_id, layout),
                         loss=make_loss(center), eval_step=eval_step, finalize=make_finalize(center))

    def metric_inputs(self, outputs: dict) -> tuple:
        """Rewards of the chosen and the rejected replies, pair by pair."""
        return outputs["chosen"].numpy(), outputs["rejected"].numpy(), {"margin": outputs["margin"].numpy()}

    def describe_example(self, parts: TaskParts, ids, labels) -> list[str]:
        return []


TASK = Reward()

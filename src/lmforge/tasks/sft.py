"""Chat and instruction fine-tuning (SFT) of a causal LM, with a loss mask that cannot fail silently.

    lmforge train examples/sft-smollm2-kjv-to-web.yaml
    lmforge doctor examples/sft-smollm2-kjv-to-web.yaml     # the first example, trained tokens marked

Conversations in any common shape (data/chat.py) are rendered with the model's chat template (ChatML
when it has none) and masked so that the loss falls on what the model should say: every assistant
turn and its end-of-turn token (`data.train_on: assistant`), the last one only (`last`), or everything
(`all`); see tasks/chat_template.py for how the mask is found without generation tags. A conversation
with no trained token is dropped and counted; a dataset where that is every conversation is an error.

`data.packing: pack` (the default) puts whole conversations into blocks of `block_size` tokens with
position ids restarting at each one, so attention stays inside a conversation (the causal-lm
machinery, probed at setup); `truncate` keeps one conversation per example. Conversations longer than
the block are truncated (the share is reported); those whose trained tokens were all cut are dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM

from ..config import Config, Permissions, SamplingParams
from ..data import chat
from ..data.pipeline import Splits, describe, read_eval_rows, read_splits
from ..errors import LmforgeError
from ..models.load import ensure_pad, resolve_block_size
from ..starters import BEST_METRICS, STARTERS
from .base import EncodedSplit, Task, TaskParts, attach_metrics_function, clip, eval_config, eval_rows
from .causal_lm import TASK as CAUSAL_LM
from .causal_lm import load_model, make_collate
from .chat_template import end_of_turn, ensure_chat_template, render_with_mask, stop_at_end_of_turn
from .generation import generate_texts
from .lm_loss import IGNORE, CausalLMLoss, finalize, probe_chunked_loss, probe_packed_attention

log = logging.getLogger("lmforge")


@dataclass
class Encoded:
    """Conversations as token ids with their trained-token masks, and what was dropped or cut."""
    ids: list[list[int]] = field(default_factory=list)
    trained: list[list[bool]] = field(default_factory=list)
    methods: set = field(default_factory=set)
    no_trained: int = 0  # dropped: nothing to learn (e.g. no assistant turn)
    cut_away: int = 0  # dropped: every trained token was beyond the block
    truncated: int = 0  # kept, but cut at the block size
    total: int = 0


def encode_conversations(convs: list[list[dict]], tokenizer, block: int, train_on: str) -> Encoded:
    out = Encoded(total=len(convs))
    eot = end_of_turn(tokenizer)  # once: the template's end-of-turn text
    for messages in convs:
        r = render_with_mask(tokenizer, messages, train_on, eot)
        out.methods.add(r.method)
        if not any(r.trained):
            out.no_trained += 1
            continue
        ids, trained = r.ids, r.trained
        if len(ids) > block:
            ids, trained = ids[:block], trained[:block]
            if not any(trained[1:]):  # the first token is never a target
                out.cut_away += 1
                continue
            out.truncated += 1
        out.ids.append(ids)
        out.trained.append(trained)
    return out


def to_rows(enc: Encoded, block: int, packing: str) -> EncodedSplit:
    """Rows of input ids, labels (IGNORE where not trained) and, packed, position ids restarting per conversation."""
    labels = [[t if keep else IGNORE for t, keep in zip(ids, trained)] for ids, trained in zip(enc.ids, enc.trained)]
    if packing != "pack":
        rows = [{"input_ids": ids, "labels": lab} for ids, lab in zip(enc.ids, labels)]
        return EncodedSplit(rows, [len(r["input_ids"]) for r in rows])
    rows, cur = [], {"input_ids": [], "labels": [], "position_ids": []}
    for ids, lab in zip(enc.ids, labels):  # whole conversations, in order, while they fit
        if cur["input_ids"] and len(cur["input_ids"]) + len(ids) > block:
            rows.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += ids
        cur["labels"] += lab
        cur["position_ids"] += list(range(len(ids)))
    if cur["input_ids"]:
        rows.append(cur)
    return EncodedSplit(rows, [len(r["input_ids"]) for r in rows])


def mask_preview(tokenizer, ids: list[int], trained: list[bool], limit: int = 400) -> list[list]:
    """[text, trained] runs of one conversation (the report shows them highlighted)."""
    runs: list[list] = []
    for tok, on in zip(ids[:limit], trained[:limit]):
        if runs and runs[-1][1] == on:
            runs[-1][2].append(tok)
        else:
            runs.append([None, on, [tok]])
    return [[tokenizer.decode(toks, skip_special_tokens=False), on] for _, on, toks in runs]


def check_trainable(enc: Encoded, source: str, train_on: str) -> None:
    if enc.ids:
        return
    if enc.no_trained == enc.total:
        raise LmforgeError(f"{source}: none of the {enc.total} conversations has a token to train on "
                           f"(data.train_on: {train_on})",
                           "the loss falls on assistant turns: give conversations with an assistant reply, "
                           "or set data.train_on: all")
    raise LmforgeError(f"{source}: every conversation's trained tokens are beyond the block size",
                       "raise data.block_size")


def sample_prompts(convs: list[list[dict]], n: int = 3) -> list[tuple[list[dict], str]]:
    """(the conversation up to its last assistant turn, that turn's reference answer) of the first n conversations."""
    out = []
    for messages in convs:
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last:
            out.append((messages[:last], messages[last]["content"]))
        if len(out) == n:
            break
    return out


def make_samples(tokenizer, prompts: list[tuple[list[dict], str]], max_new_tokens: int = 48):
    """Greedy answers to a few eval conversations, logged at each evaluation beside the reference answers."""
    def samples(model) -> list:
        if not prompts:
            return []
        outs = generate_texts(model, tokenizer, [p for p, _ in prompts], SamplingParams(max_new_tokens=max_new_tokens))
        return [{"prompt": p[-1]["content"], "completion": o[0], "reference": ref} for (p, ref), o in zip(prompts, outs)]
    return samples


@dataclass
class ChatModel:
    model: object
    tokenizer: object
    block_size: int
    added_token_ids: list[int]  # tokens the chat template added (their embeddings are new: trained, saved by LoRA)


def load_chat_model(cfg: Config, notes: list[str], log: logging.Logger = log,
                    permissions: Permissions = Permissions()) -> ChatModel:
    """A causal LM made ready for conversations (sft and dpo): its chat template (ChatML when it has none), a pad
    token, embeddings grown to the tokenizer, generation that stops at the end of a turn, and data.block_size
    checked against the model; what was changed is added to `notes`."""
    model, tokenizer, source = load_model(cfg, log, permissions)
    notes += [n for n in (ensure_chat_template(tokenizer), ensure_pad(tokenizer, model, source)) if n]
    rows = model.get_input_embeddings().num_embeddings
    added = list(range(rows, len(tokenizer)))
    if added:
        model.resize_token_embeddings(len(tokenizer))
    stop_note = stop_at_end_of_turn(tokenizer, model)
    if stop_note and stop_note.startswith("warning: "):
        log.warning("%s", stop_note[len("warning: "):])
    elif stop_note:
        notes.append(stop_note)
    return ChatModel(model, tokenizer, resolve_block_size(cfg.data.block_size, model.config), added)


# ----------------------------------------------------------------------------------- the task
class SFT(Task):
    name = "sft"
    auto_class = AutoModelForCausalLM
    architectures = ()  # a bare folder is told by its architecture as a causal LM; sft runs say so in config.yaml
    best_metric, greater_is_better = BEST_METRICS["sft"]
    endpoint = "/v1/generate"
    playground = "chat"
    data_kind = "conversations"
    samples_title = "Sample generations"
    pipeline_tag = "text-generation"
    usage_example = 'print(pipe([{"role": "user", "content": "Hello!"}], max_new_tokens=40))'
    try_command = 'lmforge chat {run}'
    starter = STARTERS["sft"]

    def intended_use(self, summary: dict) -> str:
        return "Answer in conversations like the training data (chat template included with the tokenizer)."

    def setup(self, cfg: Config, log: logging.Logger = log, permissions: Permissions = Permissions()) -> TaskParts:
        d = cfg.data
        if not d.train:
            raise LmforgeError("no training data given", "set data.train (a jsonl/json/parquet/csv of conversations, "
                                                         "or the built-in kjv-to-web)")
        splits = self.read(cfg)
        notes = list(splits.notes)
        train_convs, eval_convs = splits.train, splits.eval
        replies = [m["content"] for c in train_convs for m in c if m["role"] == "assistant"]
        if replies and not any(r.strip() for r in replies):
            log.warning("every assistant reply in %s is empty: the run can only learn the end-of-turn token, "
                        "nothing else", describe(d.train))
        chat_model = load_chat_model(cfg, notes, log, permissions)
        model, tokenizer, block = chat_model.model, chat_model.tokenizer, chat_model.block_size
        train_enc = encode_conversations(train_convs, tokenizer, block, d.train_on)
        check_trainable(train_enc, describe(d.train), d.train_on)
        eval_enc = encode_conversations(eval_convs, tokenizer, block, d.train_on)
        check_trainable(eval_enc, describe(d.eval) if d.eval else "the held-out conversations", d.train_on)
        notes += self.describe_encoding(train_enc, block)
        train_split, eval_split = to_rows(train_enc, block, d.packing), to_rows(eval_enc, block, d.packing)
        test_split = None
        if splits.test is not None:
            test_enc = encode_conversations(splits.test, tokenizer, block, d.train_on)
            check_trainable(test_enc, describe(d.test), d.train_on)
            test_split = to_rows(test_enc, block, d.packing)
        attention = probe_packed_attention(model, tokenizer.pad_token_id) if d.packing == "pack" else "attention_mask"
        loss = CausalLMLoss(attention=attention, chunked=probe_chunked_loss(model),
                            per_token=bool(cfg.eval.metrics_function))
        summary = {"train_rows": len(train_split), "eval_rows": len(eval_split),
                   "test_rows": len(test_split) if test_split is not None else 0, **splits.summary(),
                   "block_size": block, "packing": d.packing, "train_on": d.train_on,
                   "train_conversations": len(train_enc.ids), "dropped_no_trained_tokens": train_enc.no_trained,
                   "dropped_cut_away": train_enc.cut_away, "truncated_conversations": train_enc.truncated,
                   "trained_tokens": int(sum(sum(t) for t in train_enc.trained)),
                   "train_tokens": int(sum(len(x) for x in train_enc.ids)), "mask_method": sorted(train_enc.methods),
                   "mask_preview": mask_preview(tokenizer, train_enc.ids[0], train_enc.trained[0]),
                   "lengths": train_split.lengths}
        return TaskParts(
            task=self, model=model, tokenizer=tokenizer, train=train_split, eval=eval_split, test=test_split,
            collate=make_collate(tokenizer.pad_token_id, d.packing), loss=loss, eval_step=loss.eval_step,
            added_token_ids=chat_model.added_token_ids,
            # the chunked loss runs the output layer at the trained tokens only (their share, for MFU)
            output_layer_share=(summary["trained_tokens"] / max(1, summary["train_tokens"])) if loss.chunked else 1.0,
            finalize=finalize, summary=summary, notes=notes, fingerprints={}, fixed_shapes=False,
            samples=make_samples(tokenizer, sample_prompts(eval_convs)),
        )

    def read(self, cfg: Config) -> Splits:
        """Train / eval / test conversations by the data pipeline's rules (data/pipeline.py)."""
        return read_splits(cfg, chat.KIND)

    @staticmethod
    def describe_encoding(enc: Encoded, block: int) -> list[str]:
        trained = sum(sum(t) for t in enc.trained)
        tokens = sum(len(x) for x in enc.ids)
        out = [f"sft: {len(enc.ids)} conversations, {tokens:,} tokens, {trained:,} trained "
               f"({100 * trained / max(1, tokens):.1f}%; mask by {', '.join(sorted(enc.methods))})"]
        if enc.truncated:
            out.append(f"{enc.truncated} conversations ({100 * enc.truncated / max(1, enc.total):.1f}%) were cut "
                       f"at {block} tokens")
        if enc.no_trained or enc.cut_away:
            out.append(f"dropped {enc.no_trained} conversations with no trained token and {enc.cut_away} whose "
                       "trained tokens were all beyond the block")
        return out

    def load_for_use(self, model_dir: Path, allow_untrained: bool = False):
        return CAUSAL_LM.load_for_use(model_dir)

    def eval_setup(self, model_dir: Path, data: str, overrides=None) -> TaskParts:
        """Loss and perplexity over the trained tokens of `data`'s conversations, encoded as the run did."""
        model, tokenizer = self.load_for_use(Path(model_dir))
        cfg = eval_config(model_dir, overrides, self)
        ensure_chat_template(tokenizer)
        block = resolve_block_size(cfg.data.block_size, model.config)
        convs = read_eval_rows(data, cfg, chat.KIND)
        enc = encode_conversations(eval_rows(convs, overrides, cfg),
                                   tokenizer, block, cfg.data.train_on)
        check_trainable(enc, data, cfg.data.train_on)
        split = to_rows(enc, block, cfg.data.packing)
        attention = probe_packed_attention(model, tokenizer.pad_token_id) if cfg.data.packing == "pack" \
            else "attention_mask"
        loss = CausalLMLoss(attention=attention, chunked=probe_chunked_loss(model),
                            per_token=bool(cfg.eval.metrics_function))
        return attach_metrics_function(TaskParts(
            task=self, model=model, tokenizer=tokenizer, train=None, eval=split,
            collate=make_collate(tokenizer.pad_token_id, cfg.data.packing), loss=loss, eval_step=loss.eval_step,
            finalize=finalize, summary={"block_size": block, "conversations": len(enc.ids)}), cfg)

    def metric_inputs(self, outputs: dict) -> tuple:
        return CAUSAL_LM.metric_inputs(outputs)

    def tokenizer_findings(self, specials: dict) -> list[tuple[str, str]]:
        return CAUSAL_LM.tokenizer_findings(specials)

    def describe_example(self, parts: TaskParts, ids, labels) -> list[str]:
        """The example with its trained tokens between [[ and ]]."""
        if labels is None:
            return []
        lab = labels[: len(ids)].tolist()
        trained = [i for i, t in enumerate(lab) if t != IGNORE]
        pieces, inside = [], False
        for i, tok in enumerate(ids):
            on = lab[i] != IGNORE
            if on != inside:
                pieces.append("[[" if on else "]]")
                inside = on
            pieces.append(parts.tokenizer.decode([tok], skip_special_tokens=False))
        if inside:
            pieces.append("]]")
        return [f"  trained: {len(trained)} of {len(ids)} tokens (between [[ and ]]):",
                "          " + clip("".join(pieces), 600)]


TASK = SFT()

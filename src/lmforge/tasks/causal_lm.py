"""Causal language modelling (GPT-style fine-tuning) on a text corpus.

    lmforge train examples/kjv-smollm2.yaml
    lmforge eval runs/kjv-smollm2 --data kjv:test
    lmforge generate runs/kjv-smollm2 "And God said"

Packing (`data.packing: pack`, the default): documents, each ending in EOS, are concatenated and
cut into `block_size` blocks; position ids restart at 0 where a document starts, and the
attention honours them (transformers builds a block-diagonal causal mask from restarting
position ids when no 2-D mask is given; a probe at setup checks it for the model at hand and
falls back to an explicit 4-D block-diagonal mask). The first token of a document is never a
target, so a packed block's loss is exactly the sum of its documents' losses computed alone.

The loss never materialises the full-vocabulary fp32 logits of a whole batch: the LM head and
the cross entropy run over chunks of rows, and the gradients of each chunk are computed right
away (see ChunkedLMHeadLoss). A probe at setup checks it against the model's own loss.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..config import Config, Permissions, SamplingParams
from ..data import corpus, stream
from ..data.batching import pad_sequences
from ..data.cache import CachedEncoding, cached_dataset, fingerprint, tokenizer_fingerprint
from ..data.corpus import pack, tokenize_documents, truncate
from ..data.pipeline import Splits, describe, eval_keep, read_eval_rows, read_splits, refuse_train_cap, take
from ..data.split import held_out_count
from ..errors import LmforgeError
from ..models.load import (
    context_length,
    ensure_pad,
    load_pretrained,
    model_config_of,
    model_source,
    resolve_block_size,
)
from ..models.lora import load_model as load_model_folder
from ..models.lora import model_config
from ..models.scratch import build_model
from ..starters import BEST_METRICS, STARTERS
from ..tokenizer import load_tokenizer, tokenizer_for_config
from .base import EncodedSplit, Task, TaskParts, attach_metrics_function, eval_config, eval_rows
from .generation import checked_prompt, generate_texts
from .lm_loss import IGNORE, CausalLMLoss, finalize, load_loss_function, probe_chunked_loss, probe_packed_attention

log = logging.getLogger("lmforge")

# ----------------------------------------------------------------------------------- model
def check_causal(model_config, where: str) -> None:
    """A clear error for a model that is not a causal (decoder-only) LM."""
    archs = list(getattr(model_config, "architectures", None) or [])
    mtype = getattr(model_config, "model_type", "?")
    causal_arch = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    if getattr(model_config, "is_encoder_decoder", False) or mtype not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or \
            (archs and not causal_arch):
        kind = ", ".join(archs) or mtype
        raise LmforgeError(f"the model at {where} ({kind}) is not a causal language model, so it cannot be used "
                           f"for causal-lm", "use a decoder-only model (e.g. smollm2-135m, a GPT-2 or Llama folder); "
                           "BERT-style encoders go with task: masked-lm")


def load_model(cfg: Config, log: logging.Logger = log, permissions: Permissions = Permissions()):
    """(model, tokenizer, source) for model.name, or a fresh model for model.from_config."""
    if cfg.model.from_config and not cfg.model.name:
        tokenizer = tokenizer_for_config(cfg, log, permissions)
        return build_model(cfg, tokenizer, AutoModelForCausalLM, "causal-lm"), tokenizer, "from_config"
    path = model_source(cfg, permissions)
    check_causal(model_config_of(path, cfg), path)
    tokenizer = load_tokenizer(path, cfg.model.revision)
    model, _ = load_pretrained(AutoModelForCausalLM, path, cfg, permissions)
    return model, tokenizer, path


# ----------------------------------------------------------------------------------- data
def _encode(docs: list[str], tokenizer, block_size: int, packing: str, keep_remainder: bool):
    """Rows for one split: packed blocks (with position ids) or truncated documents, + word/byte counts."""
    ids, words, nbytes = tokenize_documents(docs, tokenizer, add_eos=True, with_counts=True)
    if packing == "pack":
        p = pack(ids, block_size, keep_remainder=keep_remainder, extras={"words": words, "bytes": nbytes})
        cols = {"input_ids": p.input_ids.tolist(), "position_ids": p.position_ids.tolist(),
                "n_words": p.extras["words"].sum(1).tolist(), "n_bytes": p.extras["bytes"].sum(1).tolist()}
        if p.tail_ids is not None:
            cols["input_ids"].append(p.tail_ids.tolist())
            cols["position_ids"].append(p.tail_positions.tolist())
            cols["n_words"].append(int(p.tail_extras["words"].sum()))
            cols["n_bytes"].append(int(p.tail_extras["bytes"].sum()))
        info = {"total_tokens": p.total_tokens, "dropped_tokens": p.dropped_tokens, "truncated_docs": 0}
    else:
        rows, n_cut = truncate(ids, block_size)
        cols = {"input_ids": rows,
                "n_words": [int(sum(w[:block_size])) for w in words],
                "n_bytes": [int(sum(b[:block_size])) for b in nbytes]}
        total = sum(len(x) for x in ids)
        info = {"total_tokens": total, "dropped_tokens": total - sum(len(r) for r in rows), "truncated_docs": n_cut}
    info["documents"] = len(docs)
    return cols, info


def encode_split(docs: list[str], tokenizer, block_size: int, packing: str, keep_remainder: bool) -> CachedEncoding:
    """Cached encoding of a split: `.data` an EncodedSplit (empty when the documents make no block), `.info`
    the encoding's facts (total, dropped and truncated tokens, documents), `.hit`, `.key`."""
    key = fingerprint(docs, tokenizer_fingerprint(tokenizer), block_size, packing, keep_remainder, "clm-v2")

    def build():
        cols, info = _encode(docs, tokenizer, block_size, packing, keep_remainder)
        return datasets.Dataset.from_dict(cols), info

    enc = cached_dataset(key, build, kind="clm")
    if len(enc.data) == 0:
        return replace(enc, data=EncodedSplit([], []))
    ds = enc.data.with_format("numpy")
    return replace(enc, data=EncodedSplit(ds, [len(x) for x in ds["input_ids"]]))


def sliding_windows(docs: list[str], tokenizer, block: int, stride: int) -> EncodedSplit:
    """Each document (EOS appended) as windows of at most `block` tokens that start `stride` apart; a window
    scores only the tokens the previous one did not, so every token after a document's first is scored
    once, with up to block - stride tokens of context (the first `stride` tokens of a block are no longer
    scored without context). A document's words and bytes count in its first window."""
    if not 0 < stride <= block:
        raise LmforgeError(f"--stride {stride} must be between 1 and the block size {block}",
                           f"e.g. --stride {max(1, block // 2)}")
    ids, words, nbytes = tokenize_documents(docs, tokenizer, add_eos=True, with_counts=True)
    rows = []
    for doc, w, b in zip(ids, words, nbytes):
        doc = np.asarray(doc)
        prev_end = 0
        for begin in range(0, len(doc), stride):
            end = min(begin + block, len(doc))
            rows.append({"input_ids": doc[begin:end], "score_from": prev_end - begin,
                         "n_words": int(np.sum(w)) if begin == 0 else 0, "n_bytes": int(np.sum(b)) if begin == 0 else 0})
            prev_end = end
            if end == len(doc):
                break
    return EncodedSplit(rows, [len(r["input_ids"]) for r in rows])


def make_collate(pad_id: int, packing: str, eos_id: Optional[int] = None):
    """Pad a batch; labels are -100 on padding, on the first token of every packed document, and (sliding
    windows) on the context tokens before a row's `score_from`. With `eos_id`, rows that count words also
    count their scored document ends (`n_ends`: EOS targets), for per-word perplexity."""
    def collate(rows: list[dict]) -> dict:
        ids = [np.asarray(r["input_ids"]) for r in rows]
        lens = [len(x) for x in ids]
        input_ids = pad_sequences(ids, pad_id)
        real = pad_sequences([np.ones(n, dtype=np.int64) for n in lens], 0).bool()
        if "labels" in rows[0]:  # the task's own labels (sft: IGNORE outside the trained tokens)
            labels = pad_sequences([np.asarray(r["labels"]) for r in rows], IGNORE)
        else:
            labels = input_ids.masked_fill(~real, IGNORE)
        if "score_from" in rows[0]:  # a sliding window: the first tokens are context only
            context = [(np.arange(n) < int(r["score_from"])).astype(np.int64) for r, n in zip(rows, lens)]
            labels = labels.masked_fill(pad_sequences(context, 0).bool(), IGNORE)
        batch = {"input_ids": input_ids}
        if packing == "pack":
            # Padding continues as its own segment (positions restart at 0): causal attention
            # means real tokens never see it, and it is never a target.
            pos = [np.concatenate([np.asarray(r["position_ids"]), np.arange(input_ids.shape[1] - n)])
                   for r, n in zip(rows, lens)]
            position_ids = torch.as_tensor(np.stack(pos), dtype=torch.long)
            labels = labels.masked_fill(position_ids == 0, IGNORE)
            batch["position_ids"] = position_ids
        else:
            batch["attention_mask"] = real.long()
        batch["labels"] = labels
        if "n_words" in rows[0]:
            batch["n_words"] = torch.tensor([int(r["n_words"]) for r in rows], dtype=torch.long)
            batch["n_bytes"] = torch.tensor([int(r["n_bytes"]) for r in rows], dtype=torch.long)
            if eos_id is not None:
                batch["n_ends"] = (labels[:, 1:] == eos_id).sum(1)
        batch["n_items"] = int((labels[:, 1:] != IGNORE).sum())
        batch["n_tokens"] = int(real.sum())
        return batch
    return collate


# ----------------------------------------------------------------------------------- samples
def default_prompts(docs: list[str], n: int = 3, words: int = 6) -> list[str]:
    out = []
    for doc in docs[:n]:
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        out.append(" ".join(first.split()[:words]))
    return [p for p in out if p]


def make_samples(tokenizer, prompts: list[str], max_new_tokens: int = 24):
    def samples(model) -> list:
        if not prompts:
            return []
        outs = generate_texts(model, tokenizer, prompts, SamplingParams(max_new_tokens=max_new_tokens))
        return [{"prompt": p, "completion": o[0]} for p, o in zip(prompts, outs)]
    return samples


# ----------------------------------------------------------------------------------- setup
# documents, held out as rows only from 10 documents on (fewer: the last blocks are held out instead)
DOCUMENTS = replace(corpus.KIND, min_rows_to_hold_out=10)


def read_documents(cfg: Config, streaming: bool) -> Splits:
    """Train / eval / test documents by the data pipeline's rules (data/pipeline.py). With fewer than 10
    documents (or streaming), eval is None: the last blocks are held out instead (hold_out_last_blocks)."""
    d = cfg.data
    if not streaming:
        return read_splits(cfg, DOCUMENTS)
    if not isinstance(d.train, str):
        raise LmforgeError("data.streaming reads one corpus from its token cache, not a mix of sources",
                           "set data.streaming: false to mix sources in memory, or give one data.train")
    refuse_train_cap(cfg, "a streamed corpus does not read into memory (or set data.streaming: false)")
    evals = read_eval_rows(d.eval, cfg, corpus.KIND) if d.eval else None
    if evals is not None:
        evals = take(evals, eval_keep(len(evals), cfg))
    test = read_eval_rows(d.test, cfg, corpus.KIND) if d.test else None
    return Splits([], evals, test)


def hold_out_last_blocks(cfg: Config, train_split: EncodedSplit, fp_train: str, block: int, streaming: bool,
                         notes: list[str]):
    """(train, eval, eval fingerprint): the last blocks of the training corpus held out for evaluation."""
    d = cfg.data
    n_eval = held_out_count(len(train_split), d.validation_split)
    if streaming:  # a big corpus: a bounded evaluation set
        n_eval = min(n_eval, stream.STREAM_EVAL_BLOCKS)
    if len(train_split) - n_eval < 1:
        raise LmforgeError(f"the training corpus {describe(d.train)} is too small to hold out evaluation blocks "
                           f"({len(train_split)} block(s) of {block} tokens)",
                           "give data.eval, add text, or lower data.block_size")
    n_train = len(train_split) - n_eval
    eval_split = EncodedSplit(train_split.rows.select(range(n_train, len(train_split))), train_split.lengths[n_train:])
    train_split = EncodedSplit(train_split.rows.select(range(n_train)), train_split.lengths[:n_train])
    notes.append(f"no eval data given{' (streaming)' if streaming else ' and fewer than 10 documents'}: "
                 f"held out the last {n_eval} blocks for evaluation")
    return train_split, eval_split, fp_train + f":last{n_eval}"


def encode_train(cfg: Config, train_docs, tokenizer, block: int, streaming: bool) -> CachedEncoding:
    """The training split (`.data`) from documents, or from the token cache when streaming."""
    d = cfg.data
    if streaming:
        enc = stream.streamed_split(d.train, tokenizer, cfg, block, keep_remainder=d.remainder == "pad")
        enc = replace(enc, data=EncodedSplit(enc.data, enc.data.lengths()))
    else:
        enc = encode_split(train_docs, tokenizer, block, d.packing, keep_remainder=d.remainder == "pad")
    split, info = enc.data, enc.info
    total = info.get("total_tokens", sum(split.lengths))
    if len(split) == 0 or (d.packing == "pack" and info.get("dropped_tokens", 0) == total):
        raise LmforgeError(f"the training corpus {describe(d.train)} has {total} tokens, fewer than one block of {block}",
                           f"add text, or lower data.block_size (e.g. --data.block_size {max(2, total // 2)})")
    return enc


def log_encoding(log: logging.Logger, cfg: Config, train_split, info: dict, block: int, hit: bool, n_docs: int) -> None:
    total = info.get("total_tokens", sum(train_split.lengths))
    if cfg.data.packing == "pack":
        log.info("packed %d documents (%s tokens, EOS after each) into %d blocks of %d%s; %d tokens of the final "
                 "remainder dropped", info.get("documents", n_docs), f"{total:,}", len(train_split), block,
                 " (from cache)" if hit else "", info.get("dropped_tokens", 0))
    else:
        log.info("%d documents as examples truncated at %d tokens (%d truncated, %s tokens cut)%s",
                 len(train_split), block, info.get("truncated_docs", 0), f"{info.get('dropped_tokens', 0):,}",
                 " (from cache)" if hit else "")


def make_loss(cfg: Config, model, tokenizer, notes: list[str]) -> CausalLMLoss:
    """The loss, probed on this model: packed attention by position ids (else a 4-D mask), chunked LM head."""
    packing = cfg.data.packing
    custom = load_loss_function(cfg.train.loss_function) if cfg.train.loss_function else None
    attention = probe_packed_attention(model, tokenizer.pad_token_id) if packing == "pack" else "attention_mask"
    chunked = custom is None and probe_chunked_loss(model)
    if custom is not None:
        notes.append(f"loss: custom function {cfg.train.loss_function}")
    if packing == "pack":
        notes.append("packing: attention kept inside each document via "
                     + ("restarting position ids" if attention == "position_ids" else "a block-diagonal 4-D mask"))
    return CausalLMLoss(attention=attention, chunked=chunked, custom=custom,
                        per_token=bool(cfg.eval.metrics_function))


# ----------------------------------------------------------------------------------- the task
class CausalLM(Task):
    name = "causal-lm"
    auto_class = AutoModelForCausalLM
    architectures = ("CausalLM", "LMHeadModel")
    best_metric, greater_is_better = BEST_METRICS["causal-lm"]
    endpoint = "/v1/generate"
    playground = "generate"
    samples_title = "Sample generations"
    pipeline_tag = "text-generation"
    usage_example = 'print(pipe("Once upon a time", max_new_tokens=40))'
    try_command = 'lmforge generate {run} "Once upon a time"'
    eval_options = ("stride",)
    starter = STARTERS["causal-lm"]

    def intended_use(self, summary: dict) -> str:
        return "Generate text in the style of the training corpus."

    def setup(self, cfg: Config, log: logging.Logger = log, permissions: Permissions = Permissions()) -> TaskParts:
        d = cfg.data
        if not d.train:
            raise LmforgeError("no training data given", "set data.train (a .txt file, a folder of .txt, or kjv)")
        notes: list[str] = []
        # corpora bigger than memory: a token cache on disk (one source; a mix is read in memory)
        streaming, why = stream.use_streaming(cfg, d.train if isinstance(d.train, str) else None)
        if streaming:
            if d.packing != "pack":
                raise LmforgeError("data.streaming needs data.packing: pack",
                                   "set data.packing: pack, or data.streaming: false")
            log.info("data.streaming: on (%s): training blocks are read from a memory-mapped token cache", why)
        splits = read_documents(cfg, streaming)
        notes += splits.notes
        train_docs, eval_docs, test_docs = splits.train, splits.eval, splits.test
        model, tokenizer, source = load_model(cfg, log, permissions)
        pad_note = ensure_pad(tokenizer, model, source)
        if pad_note:
            notes.append(pad_note)
        block = resolve_block_size(d.block_size, model.config)
        train_enc = encode_train(cfg, train_docs, tokenizer, block, streaming)
        train_split, info, hit, fp_train = train_enc.data, train_enc.info, train_enc.hit, train_enc.key
        if eval_docs is None:
            train_split, eval_split, fp_eval = hold_out_last_blocks(cfg, train_split, fp_train, block, streaming, notes)
            keep = eval_keep(len(eval_split), cfg)  # too few documents: the held-out blocks are the rows
            eval_split = EncodedSplit(eval_split.rows.select(keep), [eval_split.lengths[i] for i in keep])
        else:
            eval_enc = encode_split(eval_docs, tokenizer, block, d.packing, keep_remainder=True)
            eval_split, fp_eval = eval_enc.data, eval_enc.key
        test_split = encode_split(test_docs, tokenizer, block, d.packing, keep_remainder=True).data if test_docs else None
        if d.max_eval_blocks and len(eval_split) > d.max_eval_blocks:
            notes.append(f"data.max_eval_blocks: evaluating {d.max_eval_blocks} of the {len(eval_split)} eval blocks "
                         "(a seeded sample, the same at every evaluation)")
            eval_split = eval_split.sample(d.max_eval_blocks, cfg.train.seed)
            fp_eval = f"{fp_eval}:blocks{d.max_eval_blocks}"
        if len(eval_split) == 0:
            raise LmforgeError("the evaluation corpus has no tokens", "give a non-empty data.eval")
        log_encoding(log, cfg, train_split, info, block, hit, len(train_docs))
        loss = make_loss(cfg, model, tokenizer, notes)
        prompts = d.sample_prompts if d.sample_prompts is not None else default_prompts(eval_docs or train_docs)
        if d.sample_prompts is None and not prompts and streaming:
            prompts = default_prompts(stream.sample_documents(eval_split.rows, tokenizer))
        if d.sample_prompts:  # your own prompts: checked now, not at the first evaluation
            limit = context_length(model.config, tokenizer)
            for i, prompt in enumerate(d.sample_prompts):
                try:
                    checked_prompt(tokenizer, prompt, False, limit, i)
                except LmforgeError as e:
                    raise LmforgeError(f"data.sample_prompts: {e.message}", e.hint) from None
        summary = {"train_rows": len(train_split), "eval_rows": len(eval_split),
                   "test_rows": len(test_split) if test_split is not None else 0, **splits.summary(),
                   "block_size": block, "packing": d.packing, "train_documents": info.get("documents"),
                   "train_tokens": int(sum(train_split.lengths)), "dropped_tokens": info.get("dropped_tokens"),
                   "truncated_documents": info.get("truncated_docs"), "attention": loss.attention,
                   "chunked_loss": loss.chunked, "tokenization_cache_hit": hit, "lengths": train_split.lengths}
        return TaskParts(
            task=self, model=model, tokenizer=tokenizer, train=train_split, eval=eval_split, test=test_split,
            collate=make_collate(tokenizer.pad_token_id, d.packing, tokenizer.eos_token_id), loss=loss,
            eval_step=loss.eval_step,
            finalize=finalize, summary=summary, notes=notes, fingerprints={"train": fp_train, "eval": fp_eval},
            samples=make_samples(tokenizer, prompts), fixed_shapes=d.packing == "pack",
        )

    def prepare(self, cfg: Config, progress: bool = True) -> dict:
        """Build the token cache of the config's training data (training the tokenizer first if the config
        says so), so that `lmforge train` with the same config starts at once."""
        if not cfg.data.train:
            raise LmforgeError("no training data given", "set data.train in the config")
        if not isinstance(cfg.data.train, str):
            raise LmforgeError("lmforge prepare builds the token cache of one corpus, not of a mix of sources",
                               "a mixed corpus is read in memory by lmforge train; there is nothing to prepare")
        t0 = time.perf_counter()
        tokenizer = tokenizer_for_config(cfg, log)
        out = {"tokenizer_seconds": round(time.perf_counter() - t0, 2), "vocab_size": len(tokenizer), "splits": {}}
        # Only the training data is cached here: eval and test sets are small and lmforge train
        # tokenizes them in memory (cached as well).
        cache, hit = stream.build_token_cache(cfg.data.train, tokenizer, cfg, "train", progress=progress)
        out["splits"]["train"] = {
            "source": str(cfg.data.train), "tokens": cache.n_tokens, "documents": cache.n_docs,
            "bytes": cache.meta["bytes"], "seconds": round(time.perf_counter() - t0 - out["tokenizer_seconds"], 2),
            "build_seconds": cache.meta["seconds"], "mb_per_s": cache.meta["mb_per_s"], "cache_hit": hit,
            "path": str(cache.path)}
        stream.mark_prepared(cfg.data.train, cache.path)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out

    def load_for_use(self, model_dir: Path, allow_untrained: bool = False):
        """A saved causal LM and its tokenizer, ready to evaluate or generate."""
        check_causal(model_config(model_dir), str(model_dir))  # a model folder or a LoRA adapter folder
        tokenizer = load_tokenizer(str(model_dir))
        model = load_model_folder(AutoModelForCausalLM, model_dir, dtype=torch.float32)
        ensure_pad(tokenizer, model, str(model_dir))
        model.eval()
        return model, tokenizer

    def eval_setup(self, model_dir: Path, data: str, overrides=None, stride: Optional[int] = None) -> TaskParts:
        """Load a causal LM and encode a corpus the way its run did (block size, packing, separator); with
        `stride`, score it in sliding windows instead (see sliding_windows)."""
        model, tokenizer = self.load_for_use(Path(model_dir))
        base = eval_config(model_dir, overrides, self)
        docs = eval_rows(read_eval_rows(data, base, DOCUMENTS), overrides, base)
        from_run = (Path(model_dir).parent / "config.yaml").exists()
        block = resolve_block_size(base.data.block_size if from_run or overrides else None, model.config)
        packing = base.data.packing if stride is None else "truncate"
        if stride is None:
            split = encode_split(docs, tokenizer, block, packing, keep_remainder=True).data
        else:
            split = sliding_windows(docs, tokenizer, block, stride)
        attention = probe_packed_attention(model, tokenizer.pad_token_id) if packing == "pack" else "attention_mask"
        loss = CausalLMLoss(attention=attention, chunked=probe_chunked_loss(model),
                            per_token=bool(base.eval.metrics_function))
        return attach_metrics_function(TaskParts(task=self, model=model, tokenizer=tokenizer, train=None, eval=split,
                         collate=make_collate(tokenizer.pad_token_id, packing, tokenizer.eos_token_id), loss=loss,
                         eval_step=loss.eval_step,
                         finalize=finalize, summary={"block_size": block, "packing": packing, "documents": len(docs),
                                                     "stride": stride}), base)

    def metric_inputs(self, outputs: dict) -> tuple:
        """Each target token's loss (nats) and id, over the whole evaluation."""
        return outputs["token_nll"].numpy(), outputs["token_target"].numpy(), {"targets_per_block":
                                                                                outputs["targets"].numpy()}

    def tokenizer_findings(self, specials: dict) -> list[tuple[str, str]]:
        out = super().tokenizer_findings(specials)
        if specials.get("eos") is None:
            out.append(("warning", "the tokenizer has no eos token: documents will run into each other when packed"))
        return out


TASK = CausalLM()

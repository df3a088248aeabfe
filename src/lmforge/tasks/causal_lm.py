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
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..config import Config
from ..data.batching import pad_sequences
from ..data.cache import cached_dataset, fingerprint, tokenizer_fingerprint
from ..data.corpus import pack, read_corpus, tokenize_documents, truncate
from ..errors import LmforgeError
from ..tokenizer import load_tokenizer
from .base import EncodedSplit, Prepared
from .lm_loss import IGNORE, CausalLMLoss, finalize, load_loss_function, probe_chunked_loss, probe_packed_attention

log = logging.getLogger("lmforge")

DEFAULT_BLOCK_CAP = 512


# ----------------------------------------------------------------------------------- model
def context_length(model_config) -> Optional[int]:
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_causal(model_config, where: str) -> None:
    """A clear error for a model that is not a causal (decoder-only) LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = list(getattr(model_config, "architectures", None) or [])
    mtype = getattr(model_config, "model_type", "?")
    causal_arch = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    if getattr(model_config, "is_encoder_decoder", False) or mtype not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or \
            (archs and not causal_arch):
        kind = ", ".join(archs) or mtype
        raise LmforgeError(f"the model at {where} ({kind}) is not a causal language model, so it cannot be used "
                           f"for causal-lm", "use a decoder-only model (e.g. smollm2-135m, a GPT-2 or Llama folder); "
                           "BERT-style encoders go with task: masked-lm")


def load_model(cfg: Config):
    """(model, tokenizer, source) for model.name, or a fresh model for model.from_config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import common
    if cfg.model.from_config and not cfg.model.name:
        model, tokenizer = common.model_from_config(cfg, "causal-lm")
        return model, tokenizer, "from_config"
    path = common.model_source(cfg)
    model_cfg = AutoConfig.from_pretrained(path, revision=cfg.model.revision,
                                           trust_remote_code=cfg.model.trust_remote_code)
    check_causal(model_cfg, path)
    tokenizer = load_tokenizer(path, cfg.model.revision)
    model, _ = common.load_pretrained(AutoModelForCausalLM, path, cfg)
    return model, tokenizer, path


def ensure_pad(tokenizer, model=None, where: str = "the model") -> Optional[str]:
    """Give a tokenizer without a pad token its eos token; returns the note to log once (or None)."""
    note = None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LmforgeError(f"the tokenizer of {where} has neither a pad nor an eos token",
                               "add an eos token to the tokenizer (tokenizer_config.json)")
        tokenizer.pad_token = tokenizer.eos_token
        note = f"the tokenizer has no pad token: using its eos token {tokenizer.eos_token!r} for padding " \
               f"(padding is never a training target)"
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model is not None and getattr(model, "generation_config", None) is not None \
            and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return note


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


class _Empty(Exception):
    pass


def encode_split(docs: list[str], tokenizer, block_size: int, packing: str, keep_remainder: bool):
    """Cached encoding of a split. Returns (EncodedSplit, info, cache hit, fingerprint)."""
    import datasets

    key = fingerprint(docs, tokenizer_fingerprint(tokenizer), block_size, packing, keep_remainder, "clm-v1")
    box = {}

    def build():
        cols, info = _encode(docs, tokenizer, block_size, packing, keep_remainder)
        box["info"] = info
        if not cols["input_ids"]:
            raise _Empty()  # nothing to cache; the caller says what is wrong
        ds = datasets.Dataset.from_dict(cols)
        n = len(ds)
        for k, v in info.items():  # keep the facts of the encoding with the cache entry
            ds = ds.add_column(f"info_{k}", [v] + [0] * (n - 1)) if n else ds
        return ds

    try:
        ds, hit = cached_dataset(key, build, kind="clm")
    except _Empty:
        return EncodedSplit([], []), box["info"], False, key
    info_cols = [c for c in ds.column_names if c.startswith("info_")]
    info = {c[5:]: int(ds[0][c]) for c in info_cols} if len(ds) else box.get("info", {})
    ds = ds.remove_columns(info_cols)
    ds = ds.with_format("numpy")
    lengths = [len(x) for x in ds["input_ids"]]
    return EncodedSplit(ds, lengths), info, hit, key


def make_collate(pad_id: int, packing: str):
    """Pad a batch; labels are -100 on padding and on the first token of every packed document."""
    def collate(rows: list[dict]) -> dict:
        ids = [np.asarray(r["input_ids"]) for r in rows]
        lens = [len(x) for x in ids]
        input_ids = pad_sequences(ids, pad_id)
        real = pad_sequences([np.ones(n, dtype=np.int64) for n in lens], 0).bool()
        labels = input_ids.masked_fill(~real, IGNORE)
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
        from ..generate import generate_texts
        if not prompts:
            return []
        outs = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        return [{"prompt": p, "completion": o[0]} for p, o in zip(prompts, outs)]
    return samples


# ----------------------------------------------------------------------------------- setup
def resolve_block_size(cfg_block: Optional[int], model_config, what: str = "data.block_size") -> int:
    limit = context_length(model_config)
    block = cfg_block or min(limit or DEFAULT_BLOCK_CAP, DEFAULT_BLOCK_CAP)
    if limit and block > limit:
        raise LmforgeError(f"{what} {block} is above the model's context of {limit} tokens",
                           f"set {what} to at most {limit}")
    return block


def _shuffle_take(split: EncodedSplit, n: Optional[int], seed: int) -> EncodedSplit:
    if not n or n >= len(split):
        return split
    idx = sorted(np.random.default_rng(seed).permutation(len(split))[:n].tolist())
    rows = split.rows.select(idx)
    return EncodedSplit(rows, [split.lengths[i] for i in idx])


def _head(split: EncodedSplit, n: Optional[int]) -> EncodedSplit:
    if not n or n >= len(split):
        return split
    return EncodedSplit(split.rows.select(range(n)), split.lengths[:n])


def setup(cfg: Config, log=log) -> Prepared:
    d = cfg.data
    if not d.train:
        raise LmforgeError("no training data given", "set data.train (a .txt file, a folder of .txt, or kjv)")
    notes: list[str] = []
    from ..data import stream
    streaming, why = stream.use_streaming(cfg, d.train)  # corpora bigger than memory: a token cache on disk
    if streaming:
        if d.packing != "pack":
            raise LmforgeError("data.streaming needs data.packing: pack", "set data.packing: pack, or data.streaming: false")
        log.info("data.streaming: on (%s): training blocks are read from a memory-mapped token cache", why)
    train_docs = [] if streaming else read_corpus(d.train, cfg, "train")
    if d.eval:
        eval_docs = read_corpus(d.eval, cfg, "eval")
    elif not streaming and len(train_docs) >= 10:
        perm = np.random.default_rng(cfg.train.seed).permutation(len(train_docs))
        n_eval = max(1, int(round(d.validation_split * len(train_docs))))
        held = set(perm[:n_eval].tolist())
        eval_docs = [doc for i, doc in enumerate(train_docs) if i in held]
        train_docs = [doc for i, doc in enumerate(train_docs) if i not in held]
        notes.append(f"no eval data given: held out {n_eval} of the documents ({100 * d.validation_split:.0f}%, "
                     f"seed {cfg.train.seed}) for evaluation")
    else:
        eval_docs = None  # too few documents: hold out the last blocks instead (below)
    test_docs = read_corpus(d.test, cfg, "test") if d.test else None

    model, tokenizer, source = load_model(cfg)
    pad_note = ensure_pad(tokenizer, model, source)
    if pad_note:
        notes.append(pad_note)
    block = resolve_block_size(d.block_size, model.config)
    packing = d.packing

    if streaming:
        rows, lengths, info, hit, fp_train = stream.streamed_split(d.train, tokenizer, cfg, block,
                                                                   keep_remainder=d.remainder == "pad")
        train_split = EncodedSplit(rows, lengths)
    else:
        train_split, info, hit, fp_train = encode_split(train_docs, tokenizer, block, packing,
                                                        keep_remainder=d.remainder == "pad")
    total = info.get("total_tokens", sum(train_split.lengths))
    if len(train_split) == 0 or (packing == "pack" and info.get("dropped_tokens", 0) == total):
        raise LmforgeError(f"the training corpus {d.train} has {total} tokens, fewer than one block of {block}",
                           f"add text, or lower data.block_size (e.g. --data.block_size {max(2, total // 2)})")
    if eval_docs is None:
        n_eval = max(1, int(round(d.validation_split * len(train_split))))
        if streaming:  # a big corpus: a bounded evaluation set
            n_eval = min(n_eval, stream.STREAM_EVAL_BLOCKS)
        if len(train_split) - n_eval < 1:
            raise LmforgeError(f"the training corpus {d.train} is too small to hold out evaluation blocks "
                               f"({len(train_split)} block(s) of {block} tokens)",
                               "give data.eval, add text, or lower data.block_size")
        n_train = len(train_split) - n_eval
        eval_split = EncodedSplit(train_split.rows.select(range(n_train, len(train_split))), train_split.lengths[n_train:])
        train_split = EncodedSplit(train_split.rows.select(range(n_train)), train_split.lengths[:n_train])
        fp_eval = fp_train + f":last{n_eval}"
        notes.append(f"no eval data given{' (streaming)' if streaming else ' and fewer than 10 documents'}: "
                     f"held out the last {n_eval} blocks for evaluation")
    else:
        eval_split, _, _, fp_eval = encode_split(eval_docs, tokenizer, block, packing, keep_remainder=True)
    test_split = encode_split(test_docs, tokenizer, block, packing, keep_remainder=True)[0] if test_docs else None
    train_split = _shuffle_take(train_split, d.max_train_samples, cfg.train.seed)
    eval_split = _head(eval_split, d.max_eval_samples)
    if len(eval_split) == 0:
        raise LmforgeError("the evaluation corpus has no tokens", "give a non-empty data.eval")

    if packing == "pack":
        log.info("packed %d documents (%s tokens, EOS after each) into %d blocks of %d%s; %d tokens of the final "
                 "remainder dropped", info.get("documents", len(train_docs)), f"{total:,}", len(train_split), block,
                 " (from cache)" if hit else "", info.get("dropped_tokens", 0))
    else:
        log.info("%d documents as examples truncated at %d tokens (%d truncated, %s tokens cut)%s",
                 len(train_split), block, info.get("truncated_docs", 0), f"{info.get('dropped_tokens', 0):,}",
                 " (from cache)" if hit else "")

    custom = load_loss_function(cfg.train.loss_function) if cfg.train.loss_function else None
    attention = probe_packed_attention(model, tokenizer.pad_token_id) if packing == "pack" else "attention_mask"
    chunked = custom is None and probe_chunked_loss(model)
    loss = CausalLMLoss(attention=attention, chunked=chunked, custom=custom)
    if custom is not None:
        notes.append(f"loss: custom function {cfg.train.loss_function}")
    if packing == "pack":
        notes.append("packing: attention kept inside each document via "
                     + ("restarting position ids" if attention == "position_ids" else "a block-diagonal 4-D mask"))

    prompts = d.sample_prompts if d.sample_prompts is not None else default_prompts(eval_docs or train_docs)
    if d.sample_prompts is None and not prompts and streaming:
        prompts = default_prompts(stream.sample_documents(eval_split.rows, tokenizer))
    summary = {"train_rows": len(train_split), "eval_rows": len(eval_split),
               "test_rows": len(test_split) if test_split is not None else 0,
               "block_size": block, "packing": packing, "train_documents": info.get("documents"),
               "train_tokens": int(sum(train_split.lengths)), "dropped_tokens": info.get("dropped_tokens"),
               "truncated_documents": info.get("truncated_docs"), "attention": attention,
               "chunked_loss": chunked, "tokenization_cache_hit": hit, "lengths": train_split.lengths}
    return Prepared(
        task="causal-lm", model=model, tokenizer=tokenizer, train=train_split, eval=eval_split, test=test_split,
        collate=make_collate(tokenizer.pad_token_id, packing), loss=loss, eval_step=loss.eval_step,
        finalize=finalize, best_metric="loss", greater_is_better=False, summary=summary, notes=notes,
        fingerprints={"train": fp_train, "eval": fp_eval}, samples=make_samples(tokenizer, prompts),
        train_batch_drop_last=False,
    )


# ----------------------------------------------------------------------------------- use
def load_for_use(model_dir: Path):
    """A saved causal LM and its tokenizer, ready to evaluate or generate."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..lora import load_model, model_config
    check_causal(model_config(model_dir), str(model_dir))  # a model folder or a LoRA adapter folder
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(AutoModelForCausalLM, model_dir, dtype=torch.float32)
    ensure_pad(tokenizer, model, str(model_dir))
    model.eval()
    return model, tokenizer


def eval_setup(model_dir: Path, data: str, overrides=None) -> Prepared:
    """Load a causal LM and encode a corpus the way its run did (block size, packing, separator)."""
    from ..config import load_config
    model, tokenizer = load_for_use(Path(model_dir))
    run_cfg = Path(model_dir).parent / "config.yaml"
    base = load_config(run_cfg if run_cfg.exists() else None, overrides)
    if not run_cfg.exists():
        base.task = "causal-lm"
    if not overrides:
        base.data.format = None
    docs = read_corpus(data, base, "eval")
    block = resolve_block_size(base.data.block_size if run_cfg.exists() or overrides else None, model.config)
    packing = base.data.packing
    split, _, _, _ = encode_split(docs, tokenizer, block, packing, keep_remainder=True)
    attention = probe_packed_attention(model, tokenizer.pad_token_id) if packing == "pack" else "attention_mask"
    loss = CausalLMLoss(attention=attention, chunked=probe_chunked_loss(model))
    return Prepared(task="causal-lm", model=model, tokenizer=tokenizer, train=None, eval=split,
                    collate=make_collate(tokenizer.pad_token_id, packing), loss=loss, eval_step=loss.eval_step,
                    finalize=finalize, summary={"block_size": block, "packing": packing, "documents": len(docs)})

"""Masked language modelling: adapt a BERT/RoBERTa/DistilBERT-style encoder to a domain (or train one).

    lmforge train examples/mlm-minilm-bbc.yaml
    lmforge fill-mask runs/mlm-minilm-bbc "The [MASK] said profits rose."

Training blocks are masked on the fly with a seed derived from (train.seed, epoch, batch), so
every epoch sees fresh masks and a resumed run draws the same ones. The eval/test blocks are
masked once, at setup, with `data.eval_mask_seed`, so two runs report the same perplexity and
the before/after comparison is on the same masked tokens.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from ..config import Config, Permissions
from ..data import corpus, masking
from ..data.batching import pad_sequences
from ..data.cache import CachedEncoding, cached_dataset, fingerprint, tokenizer_fingerprint
from ..data.pipeline import Splits, read_eval_rows, read_splits
from ..errors import LmforgeError
from ..metrics import perplexity
from ..models.load import load_pretrained, model_config_of, model_source, resolve_block_size
from ..models.lora import load_model, model_config
from ..models.scratch import build_model
from ..starters import BEST_METRICS, STARTERS
from ..tokenizer import load_tokenizer, tokenizer_for_config
from .base import EncodedSplit, Task, TaskParts, attach_metrics_function, clip, eval_config, eval_rows
from .fill_mask import fill_mask_with

log = logging.getLogger("lmforge")

# Newly initialised parameters (e.g. an MLM head missing from a sentence-embedding checkpoint)
# train this many times faster than the pretrained body unless train.head_learning_rate is set.
# Measured in benchmarks/masked_lm.py (docs/results.md).
HEAD_LR_FACTOR = 100.0


# ----------------------------------------------------------------------------------- model checks
def check_encoder(model_cfg, where: str) -> None:
    """A causal-only architecture (GPT-2, Llama, ...) cannot be trained as a masked LM."""
    kind = getattr(model_cfg, "model_type", "?")
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise LmforgeError(f"{where} is a causal (left-to-right) language model ({kind}) and cannot be trained as a "
                           f"masked language model",
                           "use task: causal-lm for it, or an encoder such as minilm-l6, BERT, RoBERTa or DistilBERT")
    raise LmforgeError(f"{where} ({kind}) has no masked-language-model architecture in transformers",
                       "use an encoder such as minilm-l6, BERT, RoBERTa or DistilBERT")


def check_mask_token(tokenizer, where: str) -> None:
    if tokenizer.mask_token is None or tokenizer.mask_token_id is None:
        raise LmforgeError(f"the tokenizer of {where} has no mask token, so it cannot be used for masked "
                           f"language modelling", "use a BERT/RoBERTa-style model, or add a mask token to its tokenizer")


def head_prefixes(model) -> tuple[str, ...]:
    return tuple(p for p in ("cls.", "lm_head.", "vocab_", "generator_lm_head.", "head.", "decoder.")
                 if any(n.startswith(p) for n, _ in model.named_parameters()))


def new_output_bias(model, new: set[str]) -> Optional[str]:
    """Name of the output-layer bias when the checkpoint did not have it (newly initialised at zero)."""
    out = model.get_output_embeddings()
    bias = getattr(out, "bias", None) if out is not None else None
    if bias is None:
        return None
    for name, p in model.named_parameters():
        if p is bias and name in new:
            return name
    return None


def init_output_bias(model, name: str, blocks, special) -> None:
    """Start a new output bias at the training text's log unigram frequencies: the head then
    predicts the token prior instead of a uniform guess (measured in docs/results.md)."""
    logp = masking.token_log_frequencies(blocks, model.get_parameter(name).shape[0], special)
    with torch.no_grad():
        model.get_parameter(name).copy_(torch.from_numpy(logp).to(model.get_parameter(name).dtype))


def head_note(model, new: set[str], source: str) -> Optional[str]:
    """One plain sentence when the checkpoint had no (complete) MLM head."""
    params = {n for n, _ in model.named_parameters()}
    new_params = sorted(n for n in new if n in params)
    head = [n for n in new_params if n.startswith(head_prefixes(model))]
    if not head:
        return None
    tied = getattr(model.config, "tie_word_embeddings", True) and model.get_output_embeddings() is not None and \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    shown = ", ".join(sorted({n.rsplit(".", 1)[0] for n in head}))
    return (f"the checkpoint {source} has no trained masked-LM head: {shown} "
            f"({sum(model.get_parameter(n).numel() for n in head):,} parameters) "
            f"{'are' if len(head) > 1 else 'is'} newly initialised"
            + ("; the output layer is tied to the input embeddings" if tied else "")
            + ", so the perplexity before training is that of an untrained head.")


# ----------------------------------------------------------------------------------- data
def encode_cached(texts: list[str], tokenizer, block_size: int, remainder: str) -> CachedEncoding:
    """Blocks and word ids of a split (`.data`), cached on disk by (texts, tokenizer, block_size, remainder);
    `.info`: the encoding's tokens, documents and dropped tokens."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x1e")
    key = fingerprint(h.hexdigest(), tokenizer_fingerprint(tokenizer), block_size, remainder, "mlm-v2")

    def build():
        ids, words, stats = masking.encode_blocks(texts, tokenizer, block_size, remainder)
        features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                      "word_ids": datasets.Sequence(datasets.Value("int32"))})
        return datasets.Dataset.from_dict({"input_ids": ids, "word_ids": words}, features=features), stats

    return cached_dataset(key, build, kind="mlm")


def fixed_masked_split(ds, spec: masking.MaskSpec, seed: int, pad_id: int, limit: Optional[int] = None) -> EncodedSplit:
    """An eval/test split masked once: rows carry their masked ids and labels."""
    n = len(ds) if limit is None else min(limit, len(ds))
    ids = ds["input_ids"][:n] if n < len(ds) else ds["input_ids"]
    words = ds["word_ids"][:n] if n < len(ds) else ds["word_ids"]
    masked, labels = masking.mask_fixed(ids, words if spec.whole_word else None, spec, seed, pad_id)
    rows = [{"input_ids": m, "labels": lab} for m, lab in zip(masked, labels)]
    return EncodedSplit(rows, [len(m) for m in masked])


# ----------------------------------------------------------------------------------- batches
def make_collate(pad_id: int):
    """Pad rows that are already masked (eval/test)."""
    def collate(rows: list[dict]) -> dict:
        ids = [r["input_ids"] for r in rows]
        batch = {"input_ids": pad_sequences(ids, pad_id),
                 "attention_mask": pad_sequences([[1] * len(x) for x in ids], 0),
                 "labels": pad_sequences([r["labels"] for r in rows], masking.IGNORE)}
        batch["n_tokens"] = int(batch["attention_mask"].sum())
        batch["n_items"] = int((batch["labels"] != masking.IGNORE).sum())
        return batch
    return collate


def make_train_collate(spec: masking.MaskSpec, pad_id: int):
    """Mask training rows on the fly; the same (rows, seed) always give the same batch."""
    def train_collate(rows: list[dict], seed: int) -> dict:
        ids = [r["input_ids"] for r in rows]
        words = [r["word_ids"] for r in rows] if spec.whole_word else None
        masked, labels, attn = masking.mask_rows(ids, words, spec, np.random.default_rng(seed), pad_id)
        batch = {"input_ids": torch.from_numpy(masked), "attention_mask": torch.from_numpy(attn),
                 "labels": torch.from_numpy(labels)}
        batch["n_tokens"] = int(batch["attention_mask"].sum())
        batch["n_items"] = int((batch["labels"] != masking.IGNORE).sum())
        return batch
    return train_collate


# ----------------------------------------------------------------------------------- loss
FAST_HEAD_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "distilbert"}


def _unwrapped_head(model):
    """(encoder, head) to run the output layer only at masked positions, or None for the generic path.

    Only for a plain (not DDP/FSDP-wrapped) model of a known family: DDP needs its own forward.
    """
    if not isinstance(model, PreTrainedModel) or getattr(model.config, "model_type", "") not in FAST_HEAD_TYPES:
        return None
    if hasattr(model, "cls") and hasattr(model.cls, "predictions"):
        return model.base_model, model.cls
    if hasattr(model, "lm_head"):
        return model.base_model, model.lm_head
    if hasattr(model, "vocab_projector"):
        def head(h):
            return model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))
        return model.base_model, head
    return None


def masked_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets at the masked positions only.

    The output layer is ~half of a small encoder's FLOPs (384 x 30,522 for minilm-l6) and only
    15% of positions are predicted, so it runs on those alone where the architecture allows.
    """
    labels = batch["labels"]
    sel = labels != masking.IGNORE
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    parts = _unwrapped_head(model)
    if parts is None:
        logits = model(**inputs).logits
        return logits[sel], labels[sel]
    encoder, head = parts
    hidden = encoder(**inputs)[0]
    return head(hidden[sel]), labels[sel]


def loss_fn(model, batch):
    logits, targets = masked_logits(model, batch)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def eval_step(model, batch):
    logits, targets = masked_logits(model, batch)
    logits = logits.float()
    return {"nll": F.cross_entropy(logits, targets, reduction="none"),
            "correct": (logits.argmax(-1) == targets).float(), "target": targets}


def finalize(outputs: dict) -> dict:
    nll = outputs.get("nll", torch.zeros(0))
    if nll.numel() == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "accuracy": float("nan"), "n_masked": 0}
    loss = float(nll.double().mean())
    return {"loss": loss, "perplexity": perplexity(loss), "accuracy": float(outputs["correct"].mean()),
            "n_masked": int(nll.numel())}


# ----------------------------------------------------------------------------------- samples
def sample_sentences(docs: list[str], mask_token: str, n: int = 3) -> list[str]:
    """A few fill-mask probes from the eval text: the first clause of a document with its longest word masked."""
    out = []
    for doc in docs:
        words = doc.split()[:14]
        if len(words) < 5:
            continue
        cand = [i for i, w in enumerate(words[1:], 1) if w.isalpha() and len(w) >= 4]
        if not cand:
            continue
        i = max(cand, key=lambda k: (len(words[k]), -k))
        words[i] = mask_token
        out.append(" ".join(words))
        if len(out) == n:
            break
    return out


def make_samples(tokenizer, probes: list[str]):
    def samples(model) -> list:
        if not probes:
            return []
        res = fill_mask_with(model, tokenizer, probes, top_k=5)
        return [{"text": r["text"], "top5": [(c["token"], round(c["score"], 4)) for c in r["masks"][0]["candidates"]]}
                for r in res]
    return samples


# ----------------------------------------------------------------------------------- setup
@dataclass
class LoadedEncoder:
    model: PreTrainedModel
    tokenizer: object
    new_params: set  # names of parameters the checkpoint did not have (a new MLM head)
    from_scratch: bool


def load_model_and_tokenizer(cfg: Config, log: logging.Logger, permissions: Permissions) -> LoadedEncoder:
    """(model, tokenizer, newly initialised parameter names, from_scratch)."""
    if cfg.model.from_config and not cfg.model.name:
        tokenizer = tokenizer_for_config(cfg, log, permissions)
        model = build_model(cfg, tokenizer, AutoModelForMaskedLM, "masked-lm")
        check_mask_token(tokenizer, "the from-config model")
        return LoadedEncoder(model, tokenizer, set(), True)  # all new: one learning rate for all
    path = model_source(cfg, permissions)
    check_encoder(model_config_of(path, cfg), f"the model {cfg.model.name}")
    tokenizer = load_tokenizer(path, cfg.model.revision)
    check_mask_token(tokenizer, f"the model {cfg.model.name}")
    if tokenizer.pad_token is None:
        raise LmforgeError(f"the tokenizer of {cfg.model.name} has no pad token",
                           "add a pad token to its tokenizer_config.json")
    model, missing = load_pretrained(AutoModelForMaskedLM, path, cfg, permissions)
    return LoadedEncoder(model, tokenizer, missing, False)


def block_size_for(cfg: Config, model, tokenizer) -> int:
    block_size = resolve_block_size(cfg.data.block_size, model.config, tokenizer)
    prefix, suffix = masking.special_wrap(tokenizer)
    if block_size <= len(prefix) + len(suffix):
        raise LmforgeError(f"data.block_size {block_size} leaves no room for text next to the "
                           f"{len(prefix) + len(suffix)} special tokens", "use a block_size of at least 16")
    return block_size


def read_documents(cfg: Config, log: logging.Logger) -> Splits:
    """Train / eval / test documents by the data pipeline's rules (data/pipeline.py, seeded by train.seed)."""
    if not cfg.data.train:
        raise LmforgeError("no training data given", "set data.train (a .txt file, a folder, a table with a text "
                                                     "column, or a built-in corpus such as kjv or bbc-news)")
    splits = read_splits(cfg, corpus.KIND)
    for note in splits.notes:
        log.info("%s", note)
    return splits


@dataclass
class MaskedSplits:
    """The encoded splits of a masked-lm run: training blocks (masked afresh each batch) and the fixed-mask
    eval / test splits."""
    train: datasets.Dataset
    eval: EncodedSplit
    test: Optional[EncodedSplit]
    stats: dict  # {"train": ..., "eval": ...}: tokens, documents, dropped tokens
    cache_hit: bool
    fingerprints: dict
    spec: masking.MaskSpec


def encode_splits(cfg: Config, docs, tokenizer, model, block_size: int) -> MaskedSplits:
    """Blocks of the train / eval / test documents, the eval and test masked once (data.eval_mask_seed)."""
    d = cfg.data
    train_docs, eval_docs, test_docs = docs.train, docs.eval, docs.test
    train_enc = encode_cached(train_docs, tokenizer, block_size, d.remainder)
    train_ds, tstats, hit, fp_train = train_enc.data, train_enc.info, train_enc.hit, train_enc.key
    if len(train_ds) == 0:
        raise LmforgeError(f"the training text ({tstats.get('tokens', 0)} tokens) is shorter than one block of "
                           f"{block_size} tokens", "lower data.block_size, add text, or set data.remainder: pad")
    eval_enc = encode_cached(eval_docs, tokenizer, block_size, d.remainder)
    eval_ds, estats, fp_eval = eval_enc.data, eval_enc.info, eval_enc.key
    if len(eval_ds) == 0:
        raise LmforgeError(f"the eval text ({estats.get('tokens', 0)} tokens) is shorter than one block of "
                           f"{block_size} tokens", "give more eval text, lower data.block_size, or set data.remainder: pad")
    spec = masking.MaskSpec.of(tokenizer, d.mlm_probability, d.masking == "whole-word",
                               vocab_size=model.get_input_embeddings().num_embeddings)
    eval_split = fixed_masked_split(eval_ds, spec, d.eval_mask_seed, tokenizer.pad_token_id)
    if d.max_eval_blocks:  # the masks are fixed per block, so a sample keeps each block's own masks
        eval_split = eval_split.sample(d.max_eval_blocks, cfg.train.seed)
        fp_eval = f"{fp_eval}:blocks{d.max_eval_blocks}"
    test_split = None
    if test_docs is not None:
        test_ds = encode_cached(test_docs, tokenizer, block_size, d.remainder).data
        test_split = fixed_masked_split(test_ds, spec, d.eval_mask_seed + 1, tokenizer.pad_token_id) \
            if len(test_ds) else None
    stats = {"train": tstats, "eval": estats}
    return MaskedSplits(train_ds, eval_split, test_split, stats, hit, {"train": fp_train, "eval": fp_eval}, spec)


def head_notes(cfg: Config, model, new: set[str], train_ds, spec) -> tuple[list[str], Optional[float]]:
    """What to say about a checkpoint without a (complete) MLM head, with the new output bias set to the
    log unigram frequencies (model.init_output_bias); and the head's learning rate when none is set."""
    notes = []
    note = head_note(model, new, cfg.model.name)
    if note:
        notes.append(note)
    bias_name = new_output_bias(model, new)
    if bias_name and cfg.model.init_output_bias:
        init_output_bias(model, bias_name, train_ds["input_ids"], spec.special)
        notes.append(f"the new output bias ({bias_name}) starts at the log unigram frequencies of the training text "
                     f"(model.init_output_bias)")
    head_lr = None
    if new and cfg.train.head_learning_rate is None:
        head_lr = cfg.train.learning_rate * HEAD_LR_FACTOR
        notes.append(f"newly initialised parameters train with head_learning_rate {head_lr:g} "
                     f"({HEAD_LR_FACTOR:g} x learning_rate; set train.head_learning_rate to change it)")
    return notes, head_lr


# ----------------------------------------------------------------------------------- the task
class MaskedLM(Task):
    name = "masked-lm"
    auto_class = AutoModelForMaskedLM
    architectures = ("MaskedLM",)
    best_metric, greater_is_better = BEST_METRICS["masked-lm"]
    endpoint = "/v1/fill-mask"
    playground = "fill-mask"
    samples_title = "Fill-mask completions"
    pipeline_tag = "fill-mask"
    usage_example = 'print(pipe(f"Paris is the {pipe.tokenizer.mask_token} of France."))'
    try_command = 'lmforge fill-mask {run} "Paris is the [MASK] of France."'
    starter = STARTERS["masked-lm"]

    def intended_use(self, summary: dict) -> str:
        return "Fill masked words, or serve as an encoder adapted to the training domain."

    def setup(self, cfg: Config, log: logging.Logger = log, permissions: Permissions = Permissions()) -> TaskParts:
        d = cfg.data
        loaded = load_model_and_tokenizer(cfg, log, permissions)
        model, tokenizer, new, from_scratch = loaded.model, loaded.tokenizer, loaded.new_params, loaded.from_scratch
        block_size = block_size_for(cfg, model, tokenizer)
        docs = read_documents(cfg, log)
        enc = encode_splits(cfg, docs, tokenizer, model, block_size)
        train_ds, eval_split, test_split, stats, hit, fps, spec = (enc.train, enc.eval, enc.test, enc.stats,
                                                                   enc.cache_hit, enc.fingerprints, enc.spec)
        tstats = stats["train"]
        train_split = EncodedSplit(train_ds, [len(x) for x in train_ds["input_ids"]])
        if tstats.get("word_ids_from_offsets") and spec.whole_word:
            log.info("the tokenizer does not split words itself: whole-word masking finds words by whitespace")
        log.info("masked-lm: %d train blocks of %d tokens (%d documents, %d tokens, %d dropped)%s; %d eval blocks, "
                 "%d masked eval tokens (%s masking, p=%.2f, eval seed %d)", len(train_split), block_size,
                 tstats.get("documents", 0), tstats.get("tokens", 0), tstats.get("dropped_tokens", 0),
                 " (from cache)" if hit else "", len(eval_split),
                 sum(sum(1 for x in r["labels"] if x != masking.IGNORE) for r in eval_split.rows), d.masking,
                 d.mlm_probability, d.eval_mask_seed)
        notes, head_lr = ([], None) if from_scratch else head_notes(cfg, model, new, train_ds, spec)
        summary = {"train_rows": len(train_split), "eval_rows": len(eval_split),
                   "test_rows": len(test_split) if test_split is not None else 0, **docs.summary(),
                   "block_size": block_size, "masking": d.masking, "mlm_probability": d.mlm_probability,
                   "eval_mask_seed": d.eval_mask_seed, "train_documents": tstats.get("documents"),
                   "train_tokens": tstats.get("tokens"), "dropped_train_tokens": tstats.get("dropped_tokens"),
                   "eval_tokens": stats["eval"].get("tokens"), "tokenization_cache_hit": hit,
                   "lengths": train_split.lengths}
        pad_id = tokenizer.pad_token_id
        return TaskParts(
            task=self, model=model, tokenizer=tokenizer, train=train_split, eval=eval_split, test=test_split,
            collate=make_collate(pad_id), loss=loss_fn, eval_step=eval_step, finalize=finalize,
            new_param_names=new, head_learning_rate=head_lr, summary=summary, notes=notes, fingerprints=fps,
            samples=make_samples(tokenizer, sample_sentences(docs.eval, tokenizer.mask_token)),
            train_collate=make_train_collate(spec, pad_id), output_layer_share=d.mlm_probability,
        )

    def load_with_new_params(self, model_dir: Path):
        """(model, tokenizer, newly initialised parameter names) of a saved or built-in encoder."""
        check_encoder(model_config(model_dir), f"the model in {model_dir}")  # a model or a LoRA adapter folder
        tokenizer = load_tokenizer(str(model_dir))
        check_mask_token(tokenizer, str(model_dir))
        model, info = load_model(AutoModelForMaskedLM, model_dir, output_loading_info=True)
        model.eval()
        return model, tokenizer, set(info.get("missing_keys", []))

    def load_for_use(self, model_dir: Path, allow_untrained: bool = False):
        model, tokenizer, _ = self.load_with_new_params(model_dir)
        return model, tokenizer

    def eval_setup(self, model_dir: Path, data: str, overrides=None) -> TaskParts:
        """Fixed-mask perplexity of a masked LM on a corpus, with the run's block size, masking and eval seed."""
        model, tokenizer = self.load_for_use(model_dir)
        cfg = eval_config(model_dir, overrides, self)
        d = cfg.data
        block_size = resolve_block_size(d.block_size, model.config, tokenizer)
        docs = eval_rows(read_eval_rows(data, cfg, corpus.KIND), overrides, cfg)
        enc = encode_cached(docs, tokenizer, block_size, d.remainder)
        ds, stats = enc.data, enc.info
        if len(ds) == 0:
            raise LmforgeError(f"{data} ({stats.get('tokens', 0)} tokens) is shorter than one block of {block_size} "
                               "tokens", "give more text, or pass --data.remainder pad")
        spec = masking.MaskSpec.of(tokenizer, d.mlm_probability, d.masking == "whole-word",
                                   vocab_size=model.get_input_embeddings().num_embeddings)
        split = fixed_masked_split(ds, spec, d.eval_mask_seed, tokenizer.pad_token_id)
        return attach_metrics_function(TaskParts(task=self, model=model, tokenizer=tokenizer, train=None, eval=split,
                         collate=make_collate(tokenizer.pad_token_id), loss=loss_fn, eval_step=eval_step,
                         finalize=finalize), cfg)

    def serve_info(self, model, tokenizer) -> dict:
        return {"mask_token": tokenizer.mask_token}

    def metric_inputs(self, outputs: dict) -> tuple:
        """Each masked token's loss (nats) and id, and whether the top prediction was right."""
        return outputs["nll"].numpy(), outputs["target"].numpy(), {"correct": outputs["correct"].numpy()}

    def tokenizer_findings(self, specials: dict) -> list[tuple[str, str]]:
        out = []
        if specials.get("pad") is None and specials.get("eos") is not None:
            out.append(("info", f"no pad token: the eos token {specials['eos']!r} will pad"))
        if specials.get("mask") is None:
            out.append(("problem", "the tokenizer has no mask token, which masked-lm needs — use a tokenizer with "
                                   "one (e.g. [MASK] or <mask>)"))
        return out

    def describe_example(self, parts: TaskParts, ids, labels) -> list[str]:
        if labels is None:
            return []
        tok = parts.tokenizer
        lab = labels[: len(ids)].tolist()
        scored = [i for i, t in enumerate(lab) if t != masking.IGNORE]
        shown = [f"[{tok.convert_ids_to_tokens(ids[i])}→{tok.convert_ids_to_tokens(lab[i])}]"
                 if lab[i] != masking.IGNORE else tok.convert_ids_to_tokens(ids[i]) for i in range(len(ids))]
        return [f"  masked: {len(scored)} of {len(ids)} positions predicted, shown as [input→label]:",
                "          " + clip(" ".join(shown))]


TASK = MaskedLM()

"""Classification of single texts or text pairs, any number of labels."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from ..config import Config, Permissions
from ..data import labelled
from ..data.batching import pad_sequences
from ..data.cache import CachedEncoding, cached_dataset, fingerprint, tokenizer_fingerprint
from ..data.pipeline import Splits, describe, read_eval_rows, read_splits
from ..errors import LmforgeError
from ..metrics import classification_metrics
from ..models.load import ensure_pad, load_pretrained, model_config_of, model_source, resolve_block_size
from ..models.lora import load_model
from ..starters import BEST_METRICS, STARTERS
from ..tokenizer import load_tokenizer
from .base import EncodedSplit, Task, TaskParts, attach_metrics_function, eval_config, eval_rows

log = logging.getLogger("lmforge")


# ----------------------------------------------------------------------------------- data
def label_order(train_labels: pd.Series, numeric: bool) -> list[str]:
    values = sorted(set(train_labels), key=(lambda v: int(v)) if numeric else str)
    return list(values)


def encode_frame(df: pd.DataFrame, tokenizer, max_length: int, label2id: Optional[dict]) -> tuple[list[dict], int]:
    """Tokenize, truncating at max_length. Returns rows and how many were truncated."""
    texts = df["text"].tolist()
    pairs = df["text_pair"].tolist() if "text_pair" in df else None
    full = tokenizer(texts, pairs, truncation=False, add_special_tokens=True)
    long_rows = [i for i, ids in enumerate(full["input_ids"]) if len(ids) > max_length]
    if long_rows:
        cut = tokenizer([texts[i] for i in long_rows], [pairs[i] for i in long_rows] if pairs else None,
                        truncation=True, max_length=max_length)
        for j, i in enumerate(long_rows):
            for key in full.keys():
                full[key][i] = cut[key][j]
    keys = [k for k in ("input_ids", "token_type_ids") if k in full]
    rows = []
    labels = df["label"].tolist() if "label" in df and label2id is not None else None
    for i in range(len(texts)):
        row = {k: full[k][i] for k in keys}
        if labels is not None:
            row["labels"] = label2id[labels[i]]
        rows.append(row)
    return rows, len(long_rows)


def encode_cached(df: pd.DataFrame, tokenizer, max_length: int, label2id: Optional[dict]) -> CachedEncoding:
    """The encoded split (`.data`, an EncodedSplit) of a frame, cached; `.info["truncated"]`: rows cut at max_length."""
    key = fingerprint(df, tokenizer_fingerprint(tokenizer), max_length, label2id, "cls-v2")

    def build():
        rows, n_trunc = encode_frame(df, tokenizer, max_length, label2id)
        return datasets.Dataset.from_list(rows), {"truncated": n_trunc}

    enc = cached_dataset(key, build, kind="cls")
    return replace(enc, data=EncodedSplit(enc.data, [len(x) for x in enc.data["input_ids"]] if len(enc.data) else []))


# ----------------------------------------------------------------------------------- batches
def make_collate(pad_id: int):
    def collate(rows: list[dict]) -> dict:
        ids = [r["input_ids"] for r in rows]
        batch = {"input_ids": pad_sequences(ids, pad_id)}
        batch["attention_mask"] = pad_sequences([[1] * len(x) for x in ids], 0)
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = pad_sequences([r["token_type_ids"] for r in rows], 0)
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
        batch["n_tokens"] = int(batch["attention_mask"].sum())
        batch["n_items"] = len(rows)
        return batch
    return collate


def forward_logits(model, batch: dict) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    return model(**inputs).logits


def loss_fn(model, batch):
    logits = forward_logits(model, batch)
    return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")


def eval_step(model, batch):
    logits = forward_logits(model, batch).float()
    return {"loss": F.cross_entropy(logits, batch["labels"], reduction="none"),
            "pred": logits.argmax(-1), "label": batch["labels"], "logits": logits}


def make_finalize(labels: list[str]):
    def finalize(outputs: dict) -> dict:
        out = {"loss": float(outputs["loss"].mean())}
        out.update(classification_metrics(outputs["label"].tolist(), outputs["pred"].tolist(), labels))
        out["n_examples"] = int(outputs["label"].numel())
        return out
    return finalize


# ----------------------------------------------------------------------------------- setup
def labelled_frames(cfg: Config, log=None) -> Splits:
    """Train / eval / test frames of the config's data by the data pipeline's rules (data/pipeline.py):
    without eval data a stratified, seeded share of train is held out (the report re-derives the same rows
    from the same config); max_train/eval_samples count rows of a seeded shuffle."""
    splits = read_splits(cfg, labelled.KIND)
    if log is not None:
        for note in splits.notes:
            log.info("%s", note)
    return splits


def check_labels(cfg: Config, train_df, eval_df, test_df) -> list[str]:
    """The label order (sorted; numerically for integer labels), after checking that eval/test use no unseen label."""
    d = cfg.data
    labels = label_order(train_df["label"], train_df.attrs.get("numeric_labels", False))
    if len(labels) < 2:
        raise LmforgeError(f"{describe(d.train)}: every training row has the label '{labels[0]}'",
                           "a classifier needs at least two classes in the training data")
    for df, src in ((eval_df, d.eval), (test_df, d.test)):
        if df is None:
            continue
        unseen = sorted(set(df["label"]) - set(labels))
        if unseen:
            raise LmforgeError(
                f"{src or 'eval split'}: label(s) {', '.join(map(repr, unseen[:5]))} never appear in the training data",
                f"training labels are {', '.join(map(repr, labels[:20]))}; fix the labels or add training rows")
    return labels


def _summary(train_df, train_split, eval_split, test_split, labels, max_length, n_trunc, hit) -> dict:
    counts = train_df["label"].value_counts()
    return {
        "train_rows": len(train_split), "eval_rows": len(eval_split),
        "test_rows": len(test_split) if test_split is not None else 0,
        "labels": labels, "label_counts": {str(k): int(v) for k, v in counts.items()},
        "max_length": max_length, "truncated_train": n_trunc, "truncated_train_share": n_trunc / max(1, len(train_split)),
        "mean_tokens": float(np.mean(train_split.lengths)), "lengths": train_split.lengths,
        "tokenization_cache_hit": hit,
    }


# ----------------------------------------------------------------------------------- the task
class Classification(Task):
    name = "classification"
    auto_class = AutoModelForSequenceClassification
    architectures = ("SequenceClassification",)
    best_metric, greater_is_better = BEST_METRICS["classification"]
    endpoint = "/v1/classify"
    playground = "classify"
    data_kind = "table"
    length_key = "data.max_length"
    report_sections = ("confusion", "misclassified")
    samples_title = "Samples and misclassified examples"
    pipeline_tag = "text-classification"
    usage_example = 'print(pipe("a text to classify"))'
    try_command = 'lmforge predict {run} "a text to label"'
    starter = STARTERS["classification"]

    def intended_use(self, summary: dict) -> str:
        return ("Classify texts into the labels seen in training: "
                + ", ".join(f"`{x}`" for x in summary.get("labels", [])) + ".")

    def setup(self, cfg: Config, log: logging.Logger = log, permissions: Permissions = Permissions()) -> TaskParts:
        splits = labelled_frames(cfg, log)
        train_df, eval_df, test_df = splits.train, splits.eval, splits.test
        labels = check_labels(cfg, train_df, eval_df, test_df)
        label2id = {lab: i for i, lab in enumerate(labels)}
        id2label = {i: lab for lab, i in label2id.items()}

        path = model_source(cfg, permissions)
        tokenizer = load_tokenizer(path, cfg.model.revision)
        model_cfg = model_config_of(path, cfg)
        pad_note = ensure_pad(tokenizer, where=path)
        if pad_note:
            log.info(pad_note)
        max_length = resolve_block_size(cfg.data.max_length, model_cfg, tokenizer, "data.max_length")
        model, missing = load_pretrained(
            AutoModelForSequenceClassification, path, cfg, permissions, num_labels=len(labels),
            id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True)
        model.config.pad_token_id = tokenizer.pad_token_id

        train_enc = encode_cached(train_df, tokenizer, max_length, label2id)
        eval_enc = encode_cached(eval_df, tokenizer, max_length, label2id)
        train_split, eval_split = train_enc.data, eval_enc.data
        n_trunc, hit, fp_train, fp_eval = train_enc.info["truncated"], train_enc.hit, train_enc.key, eval_enc.key
        test_split = encode_cached(test_df, tokenizer, max_length, label2id).data if test_df is not None else None
        log.info("tokenized %d train / %d eval rows%s; %d train rows (%.1f%%) truncated at %d tokens",
                 len(train_split), len(eval_split), " (from cache)" if hit else "", n_trunc,
                 100 * n_trunc / max(1, len(train_split)), max_length)
        return TaskParts(
            task=self, model=model, tokenizer=tokenizer, train=train_split, eval=eval_split, test=test_split,
            collate=make_collate(tokenizer.pad_token_id), loss=loss_fn, eval_step=eval_step,
            finalize=make_finalize(labels), new_param_names=missing,
            summary={**_summary(train_df, train_split, eval_split, test_split, labels, max_length, n_trunc, hit),
                     **splits.summary()},
            fingerprints={"train": fp_train, "eval": fp_eval},
        )

    def load_for_use(self, model_dir: Path, allow_untrained: bool = False):
        tokenizer = load_tokenizer(str(model_dir))
        # a model or a LoRA adapter folder; the loading info says which weights were not in the checkpoint
        model, info = load_model(AutoModelForSequenceClassification, model_dir, output_loading_info=True)
        missing = sorted(info.get("missing_keys") or [])
        if missing and not allow_untrained:
            raise LmforgeError(
                f"the model at {model_dir} has no trained classification head ({', '.join(missing[:3])} "
                "would start at random now), so its labels and scores would be meaningless",
                "train a classifier first (lmforge train, task: classification), or pass --allow-untrained "
                "to look at the untrained head anyway")
        ensure_pad(tokenizer, where=str(model_dir))
        model.eval()
        return model, tokenizer

    def eval_setup(self, model_dir: Path, data: str, overrides=None) -> TaskParts:
        """Load a trained classifier and encode a labelled dataset with its label mapping."""
        model, tokenizer = self.load_for_use(model_dir)
        cfg = eval_config(model_dir, overrides, self)
        df = eval_rows(read_eval_rows(data, cfg, labelled.KIND), overrides, cfg)
        label2id = {str(k): int(v) for k, v in model.config.label2id.items()}
        unseen = sorted(set(df["label"]) - set(label2id))
        if unseen:
            raise LmforgeError(f"{data}: label(s) {', '.join(map(repr, unseen[:5]))} are not labels of this model",
                               f"the model knows {', '.join(map(repr, list(label2id)[:20]))}")
        max_length = resolve_block_size(cfg.data.max_length, model.config, tokenizer, "data.max_length")
        split = encode_cached(df, tokenizer, max_length, label2id).data
        labels = [model.config.id2label[i] for i in range(len(label2id))]
        return attach_metrics_function(TaskParts(task=self, model=model, tokenizer=tokenizer, train=None, eval=split,
                         collate=make_collate(tokenizer.pad_token_id), loss=loss_fn, eval_step=eval_step,
                         finalize=make_finalize(labels)), cfg)

    def serve_info(self, model, tokenizer) -> dict:
        return {"labels": [model.config.id2label[i] for i in range(len(model.config.id2label))]}

    def metric_inputs(self, outputs: dict) -> tuple:
        """Logits [examples, labels], label ids [examples], and each example's loss."""
        labels = outputs["label"].numpy()
        logits = outputs["logits"].numpy().reshape(len(labels), -1)
        return logits, labels, {"loss": outputs["loss"].numpy()}

    def describe_example(self, parts: TaskParts, ids, labels) -> list[str]:
        if labels is None:
            return []
        id2label = getattr(getattr(parts.model, "config", None), "id2label", None) or {}
        return [f"  label:  {id2label.get(int(labels), int(labels))}"]

    def labelled_rows(self, cfg: Config):
        """(split name, frame) of the rows to show predictions for: test, else eval, else the held-out rows."""
        splits = labelled_frames(cfg)
        eval_df, test_df = splits.eval, splits.test
        if test_df is not None:
            return "test", test_df
        return ("eval" if cfg.data.eval else "held-out eval"), eval_df


TASK = Classification()

"""What `lmforge init TASK`, `lmforge runs` and the task classes share about each task family, in a module that
imports nothing heavy, so those commands answer without loading torch (the task classes read it from here: one
copy).

    STARTERS["sft"]["model"]   # the built-in model a starter config uses
    BEST_METRICS["classification"]
"""

from __future__ import annotations

STARTERS: dict[str, dict] = {
    "classification": {
        "model": "minilm-l6", "data": "finefood", "about": "label texts (or text pairs) with one of a fixed set of labels",
        "keys": {"data": ["text_column", "text_pair_column", "label_column", "max_length"]},
        "values": {"train": {"per_device_train_batch_size": 16}}},
    "causal-lm": {
        "model": "smollm2-135m", "data": "kjv", "about": "continue text: fine-tune (or pretrain) a decoder on documents",
        "keys": {"data": ["block_size", "packing", "document_separator"]},
        "values": {"data": {"block_size": 256}, "train": {"per_device_train_batch_size": 8}}},
    "masked-lm": {
        "model": "minilm-l6", "data": "kjv", "about": "adapt an encoder to a domain by filling in masked words",
        "keys": {"data": ["block_size", "masking", "mlm_probability"]},
        "values": {"data": {"block_size": 256}, "train": {"per_device_train_batch_size": 8}}},
    "sft": {
        "model": "smollm2-135m", "data": "kjv-to-web", "about": "chat / instruction fine-tuning on conversations",
        "keys": {"data": ["block_size", "packing", "chat_format", "train_on"]},
        "values": {"data": {"block_size": 256}, "train": {"per_device_train_batch_size": 8}}},
    "dpo": {
        "model": "smollm2-135m", "data": "kjv-to-web-pairs",
        "about": "preference tuning (DPO, IPO, SimPO, ORPO) on chosen / rejected pairs",
        "keys": {"data": ["block_size"], "dpo": ["loss_type", "beta", "label_smoothing", "reference",
                                                 "max_prompt_length"]},
        "values": {"data": {"block_size": 256},  # preference tuning moves a tuned model gently
                   "train": {"per_device_train_batch_size": 8, "learning_rate": 5e-6}}},
}

# the default train.metric_for_best_model of each task, and whether greater is better
BEST_METRICS: dict[str, tuple[str, bool]] = {
    "classification": ("accuracy", True), "causal-lm": ("loss", False), "masked-lm": ("loss", False),
    "sft": ("loss", False), "dpo": ("loss", False),
}

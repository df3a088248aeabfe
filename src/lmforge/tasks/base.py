"""What a task hands the training loop. Tasks differ only in what fills these fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch


@dataclass
class EncodedSplit:
    """An encoded split: rows (a `datasets.Dataset` or list of dicts) and their lengths in tokens."""
    rows: Any
    lengths: list[int]

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, indices: list[int]) -> list[dict]:
        if isinstance(self.rows, list):
            return [self.rows[i] for i in indices]
        cols = self.rows[indices]  # datasets: dict of column -> list
        keys = list(cols)
        return [dict(zip(keys, vals)) for vals in zip(*(cols[k] for k in keys))]


@dataclass
class Prepared:
    """Everything the loop needs from a task."""
    task: str
    model: torch.nn.Module
    tokenizer: Any
    train: Optional[EncodedSplit]
    eval: Optional[EncodedSplit]
    collate: Callable[[list[dict]], dict]
    # (model, batch) -> sum of the per-item losses. collate puts the item count in batch["n_items"]
    # (and real tokens in batch["n_tokens"]); the loop divides by the items of the whole
    # accumulated step, so accumulation does not change the loss.
    loss: Callable[[torch.nn.Module, dict], torch.Tensor]
    # (model, batch) -> dict of tensors to concatenate across batches; finalize -> metrics
    eval_step: Callable[[torch.nn.Module, dict], dict]
    finalize: Callable[[dict], dict]
    best_metric: str = "loss"
    greater_is_better: bool = False
    new_param_names: set[str] = field(default_factory=set)
    test: Optional[EncodedSplit] = None
    summary: dict = field(default_factory=dict)  # data summary for the manifest and report
    notes: list[str] = field(default_factory=list)  # things to say once in the log and model card
    fingerprints: dict = field(default_factory=dict)
    # optional: model -> list of sample outputs (generations, fill-mask) logged at each evaluation
    samples: Optional[Callable[[torch.nn.Module], list]] = None
    # optional: (rows, seed) -> batch for training batches that need randomness (MLM masking).
    # The loop derives the seed from (train.seed, epoch, batch index), so a resumed run draws
    # the same masks as an uninterrupted one.
    train_collate: Optional[Callable[[list[dict], int], dict]] = None
    train_batch_drop_last: bool = False

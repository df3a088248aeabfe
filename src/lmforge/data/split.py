"""The hold-out rule, one implementation for every task: when no eval data is given, a seeded share
of the training examples (documents, or labelled rows) is held out for evaluation.

Seeded by `train.seed` in every task. Labelled rows are stratified by label when every label has at
least two rows, so each class keeps its share on both sides.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import LmforgeError


def held_out_count(n: int, share: float) -> int:
    return max(1, int(round(share * n)))


def hold_out(n: int, share: float, seed: int, labels: Optional[Sequence] = None) -> tuple[list[int], list[int]]:
    """(train indices, eval indices) of `n` examples. Unlabelled: a seeded shuffle picks the held-out
    ones and both parts keep their original order. Labelled (every label at least twice): stratified,
    in scikit-learn's shuffled order."""
    if labels is not None:
        values, counts = np.unique(np.asarray([str(x) for x in labels]), return_counts=True)
        if len(values) and counts.min() >= 2:
            if held_out_count(n, share) < len(values):
                raise LmforgeError(f"validation_split {share:g} holds out {held_out_count(n, share)} of {n} rows, fewer "
                                   f"than the {len(values)} labels (each label needs a held-out row)",
                                   f"raise data.validation_split to at least {len(values) / n:.3g}, or give data.eval")
            from sklearn.model_selection import train_test_split  # lazy: scikit-learn takes a second to import
            train_idx, eval_idx = train_test_split(np.arange(n), test_size=share, random_state=seed,
                                                   stratify=np.asarray([str(x) for x in labels]))
            return train_idx.tolist(), eval_idx.tolist()
    held = set(np.random.default_rng(seed).permutation(n)[:held_out_count(n, share)].tolist())
    return [i for i in range(n) if i not in held], [i for i in range(n) if i in held]

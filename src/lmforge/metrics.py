"""Metrics. Classification numbers come from scikit-learn, so they are identical to its own."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str] | None = None) -> dict:
    """Accuracy, precision / recall / F1 (macro and weighted), MCC and the confusion matrix."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    ids = list(range(len(labels))) if labels is not None else sorted(set(y_true) | set(y_pred))
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=ids, average=avg, zero_division=0)
        out[f"precision_{avg}"] = float(p)
        out[f"recall_{avg}"] = float(r)
        out[f"f1_{avg}"] = float(f)
    if len(ids) == 2:
        out["f1"] = float(skm.f1_score(y_true, y_pred, pos_label=1, labels=ids, zero_division=0))
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=ids).tolist()
    return out


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood), inf on overflow."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return float("inf")

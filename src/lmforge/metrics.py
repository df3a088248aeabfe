"""Metrics. Classification numbers come from scikit-learn, so they are identical to its own."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str] | None = None) -> dict:
    """Accuracy, precision / recall / F1 (macro and weighted), MCC and the confusion matrix.

    The averages follow scikit-learn's default: over the labels present in the truth or the predictions (a
    class absent from both is not scored 0). The confusion matrix keeps every label of the model, and
    `absent_labels` names those that were in neither."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    ids = list(range(len(labels))) if labels is not None else sorted(set(y_true) | set(y_pred))
    present = sorted({int(x) for x in y_true} | {int(x) for x in y_pred})
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=present, average=avg,
                                                         zero_division=0)
        out[f"precision_{avg}"] = float(p)
        out[f"recall_{avg}"] = float(r)
        out[f"f1_{avg}"] = float(f)
    if len(ids) == 2:
        out["f1"] = float(skm.f1_score(y_true, y_pred, pos_label=1, labels=ids, zero_division=0))
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=ids).tolist()
    if labels is not None:
        out["absent_labels"] = [labels[i] for i in ids if i not in present]
    return out


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood), inf on overflow."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return float("inf")


def lm_metrics(total_nll: float, n_targets: int, n_words: Optional[int] = None, n_bytes: Optional[int] = None,
               n_ends: int = 0) -> dict:
    """Language-model metrics from the summed token NLL (nats) of a text.

    - loss: mean NLL per predicted token; perplexity = exp(loss)
    - perplexity_per_word = exp(total NLL / (words + scored document ends)): the word-level convention
      of the language-modelling literature (Penn Treebank: Mikolov; Zaremba et al.), where each
      sentence/document end is a word, so models with different tokenizers compare on the same text
    - perplexity_per_whitespace_word = exp(total NLL / whitespace-separated words only); the NLL still
      includes the document-end predictions, so it is higher than the convention's figure
    - bits_per_byte = total NLL / ln 2 / UTF-8 bytes of the original text
    """
    loss = total_nll / n_targets if n_targets else float("nan")
    out = {"loss": loss, "perplexity": perplexity(loss) if n_targets else float("nan"), "n_tokens": int(n_targets)}
    if n_words:
        out["perplexity_per_word"] = perplexity(total_nll / (n_words + n_ends))
        out["perplexity_per_whitespace_word"] = perplexity(total_nll / n_words)
        out["n_words"] = int(n_words)
        out["n_document_ends"] = int(n_ends)
    if n_bytes:
        out["bits_per_byte"] = total_nll / math.log(2) / n_bytes
        out["n_bytes"] = int(n_bytes)
    return out


# The metrics shown of an evaluation: in the end-of-training table (TABLE) and the one-line log summary (LOG), with
# every pass@k of an online-RL run after them.
TABLE_METRICS = ("loss", "perplexity", "perplexity_per_word", "accuracy", "mcc", "f1_macro", "f1_weighted",
                 "bits_per_byte", "exact_match", "chrf", "reward_accuracy", "reward_margin", "rewards_chosen",
                 "rewards_rejected", "accuracy_strict", "accuracy_lenient", "reward", "completion_length",
                 "recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "margin", "reward_chosen", "reward_rejected")
LOG_METRICS = ("loss", "perplexity", "perplexity_per_word", "accuracy", "mcc", "f1_macro", "reward_accuracy",
               "reward_margin", "accuracy_strict", "accuracy_lenient", "reward", "recall@1", "recall@10", "mrr@10",
               "ndcg@10")


# What a metric means and which way is better: True (higher), False (lower) or None (neither by itself). One table
# for the terminal's metrics table, report.html's colours, the model card, the sweep's default direction and the
# best-checkpoint rule. A metric not listed is higher-better unless its name says loss / perplexity / bits.
METRIC_NOTES: dict[str, tuple[Optional[bool], str]] = {
    "loss": (False, "mean loss over the evaluated tokens or examples"),
    "perplexity": (False, "exp(loss): how many tokens the model hesitates between, on average"),
    "perplexity_per_word": (False, "perplexity per word instead of per token (comparable across tokenizers)"),
    "bits_per_byte": (False, "loss in bits per byte of text (comparable across tokenizers)"),
    "reward_accuracy": (True, "share of pairs whose chosen reply gets a higher implicit reward than the rejected "
                              "one; 0.5 is chance"),
    "reward_margin": (True, "mean implicit reward of the chosen reply minus the rejected one's; above 0 means the "
                            "model prefers the chosen replies"),
    "rewards_chosen": (None, "implicit reward of the chosen replies: beta x (log-prob under the model - log-prob "
                             "under the reference); often negative, since preference tuning lowers both replies' "
                             "probabilities: read it against rewards_rejected"),
    "rewards_rejected": (False, "implicit reward of the rejected replies; it should fall below rewards_chosen"),
    "logps_chosen": (None, "mean log-probability of the chosen replies under the model"),
    "logps_rejected": (None, "mean log-probability of the rejected replies under the model"),
    "accuracy_strict": (True, "share of prompts whose greedy answer is exactly right (normalised exact match)"),
    "accuracy_lenient": (True, "share of prompts whose greedy answer contains the right answer; format rewards "
                               "can inflate it, so read it beside the strict one"),
    "reward": (True, "mean reward of the sampled completions (the weighted sum of the reward functions)"),
    "completion_length": (None, "mean completion length in tokens"),
    "exact_match": (True, "share of generated replies equal to the reference (normalised)"),
    "chrf": (True, "character n-gram F-score of the generated replies against the references (sacrebleu)"),
    "recall@1": (True, "share of a query's relevant documents ranked first (averaged over queries)"),
    "recall@5": (True, "share of a query's relevant documents among the 5 ranked highest"),
    "recall@10": (True, "share of a query's relevant documents among the 10 ranked highest"),
    "mrr@10": (True, "mean of 1 / the rank of the first relevant document within the top 10 (0 when none is)"),
    "ndcg@10": (True, "normalised discounted cumulative gain of the top 10: 1 when the relevant documents come "
                      "first"),
    "first_stage_mrr@10": (True, "mrr@10 of the first-stage candidate lists before reranking (the baseline a "
                                 "reranker must beat)"),
    "first_stage_ndcg@10": (True, "ndcg@10 of the first-stage candidate lists before reranking"),
    "margin": (True, "reward model: mean reward of the chosen replies minus the rejected ones'"),
    "reward_chosen": (None, "reward model: mean reward of the chosen replies (the scale is arbitrary: read it against "
                            "reward_rejected)"),
    "reward_rejected": (None, "reward model: mean reward of the rejected replies"),
    "reward_std": (None, "reward model: spread of all the rewards (reward centring keeps their mean near 0)"),
    "candidate_recall": (True, "share of the relevant documents inside the candidate lists (a reranker's ceiling)"),
}
LOWER_IS_BETTER_WORDS = ("loss", "perplexity", "bits_per_byte")
WELL_KNOWN = ("loss", "perplexity")  # shown without a note


def notes_for(names) -> list[tuple[str, str]]:
    """(metric, note) for the shown metrics that need explaining, in the order given."""
    return [(n, metric_note(n)) for n in names if metric_note(n) and n not in WELL_KNOWN]


def higher_is_better(name: str) -> Optional[bool]:
    """Which way a metric is better (METRIC_NOTES; otherwise by its name): True, False, or None for neither."""
    if name in METRIC_NOTES:
        return METRIC_NOTES[name][0]
    return not any(word in name for word in LOWER_IS_BETTER_WORDS)


def metric_note(name: str) -> str:
    """One line on what a metric means, or '' when it needs none."""
    return METRIC_NOTES.get(name, (None, ""))[1]


def shown(names, present) -> list[str]:
    """The names of `names` found in `present` (a dict or several), then the pass@k keys present."""
    dicts = present if isinstance(present, (list, tuple)) else [present]
    found = [k for k in names if any(k in d for d in dicts)]
    return found + sorted({k for d in dicts for k in d if k.startswith("pass@")})


# ----------------------------------------------------------------------------------- retrieval
RETRIEVAL_KS = (1, 5, 10)


def retrieval_metrics(ranked: Sequence[Sequence[int]], relevant: Sequence[set], ks: Sequence[int] = RETRIEVAL_KS,
                      cutoff: int = 10) -> dict:
    """Ranking metrics of a retrieval run, averaged over queries (binary relevance).

    ranked[q]: document ids best first (at least `cutoff` of them when the corpus has that many); relevant[q]: the
    ids relevant to query q (a query with none is skipped).
    - recall@k: share of a query's relevant documents in its top k
    - mrr@10: 1 / the rank of the first relevant document within the top 10, else 0
    - ndcg@10: DCG of the top 10 (gain 1 / log2(rank + 1)) over the best possible DCG for that query
    """
    out: dict[str, float] = {f"recall@{k}": 0.0 for k in ks}
    mrr = ndcg = 0.0
    n = 0
    for ranks, rel in zip(ranked, relevant):
        if not rel:
            continue
        n += 1
        ranks = list(ranks)
        for k in ks:
            out[f"recall@{k}"] += len(rel.intersection(ranks[:k])) / len(rel)
        first = next((i for i, d in enumerate(ranks[:cutoff]) if d in rel), None)
        mrr += 0.0 if first is None else 1.0 / (first + 1)
        dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranks[:cutoff]) if d in rel)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), cutoff)))
        ndcg += dcg / ideal
    if not n:
        return {"n_queries": 0}
    out = {k: v / n for k, v in out.items()}
    out[f"mrr@{cutoff}"] = mrr / n
    out[f"ndcg@{cutoff}"] = ndcg / n
    out["n_queries"] = n
    return out

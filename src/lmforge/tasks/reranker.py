"""Rerankers (cross-encoders): one relevance score per (query, document) pair, to reorder a first-stage search's
results (the `reranker:` section).

    lmforge train examples/reranker-minilm-kjv-web.yaml
    lmforge rerank runs/reranker-minilm-kjv-web --query "..." --documents docs.txt

The model is a sequence classifier with one logit, reading the query and the document as a text pair; its score
is sigmoid(logit). Training rows come as (query, document, label) with a label in [0, 1], as (query, positive,
negatives...), or as (query, positive) pairs, whose negatives are mined from the training documents
(`reranker.negatives` per query: the most TF-IDF-similar other documents, or random ones). The loss is binary
cross-entropy on every pair, or a softmax over each query's list (listwise).

Evaluation reranks candidate lists: for each held-out query, the `reranker.candidates` held-out documents ranked
highest by TF-IDF (the first stage; a query whose rows list several scored documents uses those instead), then
MRR@10 and NDCG@10 of the reranked lists beside the first stage's own, and the share of relevant documents the
candidates hold (the reranker's ceiling).

`model/` is a plain transformers sequence classifier: sentence-transformers' `CrossEncoder(path)` loads it and
gives lmforge's scores.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from ..config import Config, Permissions
from ..data import retrieval
from ..data.batching import pad_sequences
from ..data.pipeline import read_eval_rows, read_splits
from ..errors import LmforgeError
from ..metrics import retrieval_metrics
from ..models.load import ensure_pad, load_pretrained, model_config_of, model_source, resolve_block_size
from ..models.lora import load_model
from ..starters import BEST_METRICS, STARTERS
from ..tokenizer import load_tokenizer
from .base import EncodedSplit, Task, TaskParts, eval_config, eval_rows

log = logging.getLogger("lmforge")


# ----------------------------------------------------------------------------------- first stage and mining
class Tfidf:
    """TF-IDF cosine search over a list of documents (scikit-learn), exact, in chunks of queries."""

    def __init__(self, documents: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer
        self.vectorizer = TfidfVectorizer(sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform(documents)

    def top(self, queries: list[str], k: int, chunk: int = 512) -> list[list[int]]:
        """The k most similar documents of each query, best first (ties: the lower id first)."""
        k = min(k, self.matrix.shape[0])
        out = []
        for i in range(0, len(queries), chunk):
            sims = (self.vectorizer.transform(queries[i:i + chunk]) @ self.matrix.T).toarray()
            order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            out.extend(order.tolist())
        return out


@dataclass
class Group:
    """One query's documents and their labels (1 relevant, 0 not, or a score in between)."""
    query: str
    documents: list[str]
    labels: list[float]


def groups_of(rows: list, rcfg, seed: int, notes: list[str]) -> list[Group]:
    """Training groups: a row's own negatives, its score, or negatives mined for (query, positive) pairs."""
    for i, r in enumerate(rows):
        if r.score is not None and not 0 <= r.score <= 1:
            raise LmforgeError(f"training row {i + 1}: label {r.score:g} is outside [0, 1]",
                               "a reranker's labels are 1 (relevant) / 0 (not), or a relevance in between")
    bare = [i for i, r in enumerate(rows) if r.score is None and not r.negatives]
    mined = mine_negatives([rows[i] for i in bare], rows, rcfg, seed) if bare else []
    if bare:
        notes.append(f"reranker: {rcfg.negatives} {rcfg.mine}-mined negatives for each of {len(bare):,} (query, "
                     "positive) rows, from the training documents")
    mined_of = dict(zip(bare, mined))
    if rcfg.loss == "listwise":
        by_query: dict[str, Group] = {}
        for i, r in enumerate(rows):
            g = by_query.setdefault(r.query, Group(r.query, [], []))
            _add(g, r, mined_of.get(i, []))
        groups = list(by_query.values())
        flat = [g for g in groups if not any(g.labels) or len(g.documents) < 2]
        if flat:
            raise LmforgeError(f"reranker.loss listwise: {len(flat)} queries (e.g. {flat[0].query[:60]!r}) have no "
                               "relevant document or a single document", "use reranker.loss: bce, or give each "
                               "query a positive and negatives")
        return groups
    out = []
    for i, r in enumerate(rows):
        g = Group(r.query, [], [])
        _add(g, r, mined_of.get(i, []))
        out.append(g)
    return out


def _add(g: Group, r, mined: list[str]) -> None:
    g.documents.append(r.document)
    g.labels.append(1.0 if r.score is None else float(r.score))
    for n in list(r.negatives) + mined:
        g.documents.append(n)
        g.labels.append(0.0)


def mine_negatives(bare: list, rows: list, rcfg, seed: int) -> list[list[str]]:
    """`rcfg.negatives` documents per row that are not relevant to its query: the most TF-IDF-similar ones of the
    training documents, or a seeded random draw."""
    docs = list(dict.fromkeys(r.document for r in rows))
    relevant: dict[str, set] = {}
    for r in rows:
        if retrieval.relevant_row(r):
            relevant.setdefault(r.query, set()).add(r.document)
    if len(docs) <= rcfg.negatives:
        raise LmforgeError(f"{len(docs)} distinct training documents: too few to mine {rcfg.negatives} negatives per "
                           "query", "give more rows, rows with negatives, or lower reranker.negatives")
    if rcfg.mine == "tfidf":
        ranked = Tfidf(docs).top([r.query for r in bare], rcfg.negatives + 8)
    else:
        rng = random.Random(seed)
        ranked = [rng.sample(range(len(docs)), min(len(docs), rcfg.negatives + 8)) for _ in bare]
    out = []
    for r, cands in zip(bare, ranked):
        skip = relevant.get(r.query, set())
        negs = [docs[j] for j in cands if docs[j] not in skip][:rcfg.negatives]
        out.append(negs)
    return out


# ----------------------------------------------------------------------------------- encoding and batches
def pair_ids(tokenizer, queries: list[str], docs: list[str], max_length: int) -> dict:
    if not queries:
        return {"input_ids": []}
    return tokenizer(queries, docs, truncation=True, max_length=max_length)


def encode_groups(groups: list[Group], tokenizer, max_length: int) -> EncodedSplit:
    flat_q = [g.query for g in groups for _ in g.documents]
    flat_d = [d for g in groups for d in g.documents]
    enc = pair_ids(tokenizer, flat_q, flat_d, max_length)
    items, at = [], 0
    for g in groups:
        n = len(g.documents)
        item = {"input_ids": enc["input_ids"][at:at + n], "labels": g.labels}
        if "token_type_ids" in enc:
            item["token_type_ids"] = enc["token_type_ids"][at:at + n]
        items.append(item)
        at += n
    return EncodedSplit(items, [sum(map(len, x["input_ids"])) for x in items])


@dataclass
class Candidates:
    """Per query, the documents to rerank (ids into the corpus) in first-stage order."""
    lists: list[list[int]]
    first_stage: str


def candidates_of(corpus: retrieval.Corpus, k: int) -> Candidates:
    lists: list[Optional[list[int]]] = list(corpus.listed) if corpus.listed else [None] * len(corpus.queries)
    todo = [q for q, lst in enumerate(lists) if lst is None]
    if todo:
        found = Tfidf(corpus.documents).top([corpus.queries[q] for q in todo], k)
        for q, lst in zip(todo, found):
            lists[q] = lst
    return Candidates(lists, "tf-idf" if todo else "listed")


def encode_candidates(corpus: retrieval.Corpus, cands: Candidates, tokenizer, max_length: int) -> EncodedSplit:
    """One item per (query, candidate) pair, with the query id, document id and first-stage rank."""
    keys = [(q, d, r) for q, lst in enumerate(cands.lists) for r, d in enumerate(lst)]
    enc = pair_ids(tokenizer, [corpus.queries[q] for q, _, _ in keys], [corpus.documents[d] for _, d, _ in keys],
                   max_length)
    items = []
    for j, (q, d, r) in enumerate(keys):
        item = {"input_ids": [enc["input_ids"][j]], "qid": q, "did": d, "rank": r}
        if "token_type_ids" in enc:
            item["token_type_ids"] = [enc["token_type_ids"][j]]
        items.append(item)
    return EncodedSplit(items, [len(x["input_ids"][0]) for x in items], make_finalize(corpus, cands), whole=True)


def make_collate(pad_id: int, listwise: bool = False):
    def collate(rows: list[dict]) -> dict:
        ids = [x for r in rows for x in r["input_ids"]]
        batch = {"input_ids": pad_sequences(ids, pad_id), "attention_mask": pad_sequences([[1] * len(x) for x in ids], 0)}
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = pad_sequences([x for r in rows for x in r["token_type_ids"]], 0)
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([x for r in rows for x in r["labels"]], dtype=torch.float)
            batch["group_sizes"] = [len(r["input_ids"]) for r in rows]
            n_items = len(rows) if listwise else len(ids)
        else:
            for key in ("qid", "did", "rank"):
                batch[key] = torch.tensor([r[key] for r in rows])
            n_items = len(rows)
        batch.update(n_tokens=int(batch["attention_mask"].sum()), n_items=n_items)
        return batch
    return collate


# ----------------------------------------------------------------------------------- loss and evaluation
def scores(model, batch: dict) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    return model(**inputs).logits.float().reshape(-1)


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")


def listwise_loss(logits: torch.Tensor, labels: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Summed over groups: cross-entropy of the softmax over a group's documents against its labels (normalised to
    sum to 1: one positive is the usual softmax cross-entropy)."""
    total = logits.new_zeros(())
    for lg, lb in zip(torch.split(logits, sizes), torch.split(labels, sizes)):
        total = total - (lb / lb.sum() * torch.log_softmax(lg, 0)).sum()
    return total


def make_loss(listwise: bool):
    def loss(model, batch):
        logits = scores(model, batch)
        if listwise:
            return listwise_loss(logits, batch["labels"], batch["group_sizes"])
        return bce_loss(logits, batch["labels"])
    return loss


def eval_step(model, batch):
    return {"score": scores(model, batch), "qid": batch["qid"], "did": batch["did"], "rank": batch["rank"]}


def make_finalize(corpus: retrieval.Corpus, cands: Candidates):
    """MRR@10 / NDCG@10 of the candidates reordered by score, beside the first stage's order (on a sample of the
    pairs, such as the before-training evaluation's: of the sampled candidates)."""
    def finalize(outputs: dict) -> dict:
        by_q: dict[int, list[tuple[float, int, int]]] = {}
        for s, q, d, r in zip(outputs["score"].tolist(), outputs["qid"].long().tolist(), outputs["did"].long().tolist(),
                              outputs["rank"].long().tolist()):
            by_q.setdefault(q, []).append((s, r, d))
        qs = sorted(by_q)
        relevant = [corpus.relevant[q] for q in qs]
        reranked = [[d for _, _, d in sorted(by_q[q], key=lambda t: (-t[0], t[1]))] for q in qs]
        first = [[d for _, _, d in sorted(by_q[q], key=lambda t: t[1])] for q in qs]
        out = retrieval_metrics(reranked, relevant, ks=(1, 5, 10))
        base = retrieval_metrics(first, relevant, ks=(1,))
        held = [len(rel & set(lst)) / len(rel) for rel, lst in zip(relevant, first) if rel]
        out.update({"first_stage_mrr@10": base.get("mrr@10", 0.0), "first_stage_ndcg@10": base.get("ndcg@10", 0.0),
                    "candidate_recall": float(np.mean(held)) if held else 0.0})
        return out
    return finalize


def no_candidates(outputs: dict) -> dict:
    raise LmforgeError("a reranker evaluation needs its split's candidate lists (an encode_candidates split)")


# ----------------------------------------------------------------------------------- the task
class Reranker(Task):
    name = "reranker"
    auto_class = AutoModelForSequenceClassification
    architectures = ()  # a bare sequence classifier is a classification model to task_of
    best_metric, greater_is_better = BEST_METRICS["reranker"]
    endpoint = "/v1/rerank"
    playground = "rerank"
    data_kind = "retrieval"
    length_key = "data.max_length"
    pipeline_tag = "text-ranking"
    usage_code = ('from sentence_transformers import CrossEncoder\n'
                  'model = CrossEncoder("{model}")\n'
                  'print(model.predict([("a query", "a relevant document"), ("a query", "another document")]))')
    library_name = "sentence-transformers"
    try_command = 'lmforge rerank {run} --query "a question" --documents docs.txt'
    starter = STARTERS["reranker"]

    def intended_use(self, summary: dict) -> str:
        return ("Score (query, document) pairs to reorder a first-stage search's results, best first. Loads with "
                "sentence-transformers: `CrossEncoder(path)`.")

    def setup(self, cfg: Config, log: logging.Logger = log, permissions: Permissions = Permissions()) -> TaskParts:
        splits = read_splits(cfg, retrieval.KIND)
        notes = list(splits.notes)
        rcfg = cfg.reranker
        groups = groups_of(splits.train, rcfg, cfg.train.seed, notes)
        path = model_source(cfg, permissions)
        tokenizer = load_tokenizer(path, cfg.model.revision)
        ensure_pad(tokenizer, where=path)
        max_length = resolve_block_size(cfg.data.max_length, model_config_of(path, cfg), tokenizer, "data.max_length")
        model, missing = load_pretrained(AutoModelForSequenceClassification, path, cfg, permissions, num_labels=1,
                                         ignore_mismatched_sizes=True)
        model.config.pad_token_id = tokenizer.pad_token_id
        train = encode_groups(groups, tokenizer, max_length)
        evals = {}
        for name, rows in (("eval", splits.eval), ("test", splits.test)):
            if rows is not None:
                corpus = retrieval.corpus_of(rows)
                cands = candidates_of(corpus, rcfg.candidates)
                evals[name] = encode_candidates(corpus, cands, tokenizer, max_length)
                if name == "eval":
                    what = (f"its {rcfg.candidates} first-stage candidates (tf-idf)" if cands.first_stage == "tf-idf"
                            else "the documents its rows list with labels")
                    notes.append(f"evaluation: {len(corpus.queries):,} held-out queries, each reranking {what}, of "
                                 f"{len(corpus.documents):,} held-out documents")
        pairs = sum(len(g.documents) for g in groups)
        notes.append(f"reranker: {pairs:,} training (query, document) pairs in {len(groups):,} "
                     f"{'query lists' if rcfg.loss == 'listwise' else 'rows'}, {rcfg.loss} loss; score = sigmoid(logit)")
        for note in notes:
            log.info("%s", note)
        summary = {"train_rows": len(groups), "train_pairs": pairs,
                   "eval_rows": len(splits.eval) if splits.eval is not None else 0,
                   "test_rows": len(splits.test) if splits.test is not None else 0, "max_length": max_length,
                   "mean_tokens": float(sum(train.lengths) / max(1, pairs)), "lengths": train.lengths,
                   **splits.summary()}
        listwise = rcfg.loss == "listwise"
        return TaskParts(task=self, model=model, tokenizer=tokenizer, train=train, eval=evals.get("eval"),
                         test=evals.get("test"), collate=make_collate(tokenizer.pad_token_id, listwise),
                         loss=make_loss(listwise), eval_step=eval_step, finalize=no_candidates,
                         new_param_names=missing, summary=summary, notes=notes)

    def load_for_use(self, model_dir: Path, allow_untrained: bool = False):
        tokenizer = load_tokenizer(str(model_dir))
        model, info = load_model(AutoModelForSequenceClassification, Path(model_dir), output_loading_info=True)
        if int(model.config.num_labels) != 1:
            raise LmforgeError(f"the model at {model_dir} has {model.config.num_labels} labels; a reranker has one "
                               "score per pair", "train one with task: reranker (or use lmforge predict)")
        missing = sorted(info.get("missing_keys") or [])
        if missing and not allow_untrained:
            raise LmforgeError(f"the model at {model_dir} has no trained scoring head ({', '.join(missing[:3])})",
                               "train a reranker first (task: reranker), or pass --allow-untrained")
        ensure_pad(tokenizer, where=str(model_dir))
        model.eval()
        return model, tokenizer

    def eval_setup(self, model_dir: Path, data: str, overrides=None) -> TaskParts:
        model, tokenizer = self.load_for_use(model_dir)
        cfg = eval_config(model_dir, overrides, self)
        rows = eval_rows(read_eval_rows(data, cfg, retrieval.KIND), overrides, cfg)
        max_length = resolve_block_size(cfg.data.max_length, model.config, tokenizer, "data.max_length")
        corpus = retrieval.corpus_of(rows)
        split = encode_candidates(corpus, candidates_of(corpus, cfg.reranker.candidates), tokenizer, max_length)
        return TaskParts(task=self, model=model, tokenizer=tokenizer, train=None, eval=split,
                         collate=make_collate(tokenizer.pad_token_id), loss=make_loss(False), eval_step=eval_step,
                         finalize=no_candidates)

    def metric_inputs(self, outputs: dict) -> tuple:
        """Scores of the (query, candidate) pairs, and their query and document ids."""
        return outputs["score"].numpy(), None, {"query_ids": outputs["qid"].numpy(), "document_ids": outputs["did"].numpy()}

    def describe_example(self, parts: TaskParts, ids, labels) -> list[str]:
        return []


TASK = Reranker()

"""Embedding models (bi-encoders) for retrieval, trained on query/document pairs (the `embedding:` section).

    lmforge train examples/embedding-minilm-kjv-web.yaml
    lmforge embed runs/embedding-minilm-kjv-web "a text" "another"

The model is the encoder without a head (AutoModel); a text's embedding is its pooled token vectors (the model's
sentence-transformers pooling, else mean), normalised unless `embedding.normalize: false`. Training uses the
in-batch loss of tasks/embedding_loss.py (every other document of a batch is a negative, plus the rows' own
negatives), optionally over matryoshka dimensions and cached in chunks (GradCache).

Evaluation is retrieval: every held-out query searches every held-out document (positives and negatives of all
held-out rows, deduplicated) by exact cosine similarity; recall@1/5/10, MRR@10 and NDCG@10 (metrics.py). Exact
search is a matrix product: fine up to ~100k documents on a CPU; beyond, an approximate index (faiss, hnswlib)
is what to switch to.

`model/` is a sentence-transformers folder (modules.json, 1_Pooling/, 2_Normalize/ when normalised,
sentence_bert_config.json): `SentenceTransformer(path)` loads it and gives lmforge's embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from transformers import AutoModel

from ..config import Config, Permissions
from ..data import retrieval
from ..data.batching import pad_sequences
from ..data.pipeline import read_eval_rows, read_splits
from ..errors import LmforgeError
from ..metrics import RETRIEVAL_KS, retrieval_metrics
from ..models.load import ensure_pad, load_pretrained, model_config_of, model_source, resolve_block_size
from ..models.lora import load_model
from ..starters import BEST_METRICS, STARTERS
from ..tokenizer import load_tokenizer
from .base import EncodedSplit, Task, TaskParts, eval_config, eval_rows
from .embedding_loss import POOLINGS, cached_loss, encode, matryoshka_loss

log = logging.getLogger("lmforge")
# sentence-transformers' files of an embedding model folder: how its embeddings are pooled (they travel with exports)
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling",
            "2_Normalize")


# ----------------------------------------------------------------------------------- the embedding spec
@dataclass(frozen=True)
class EmbedSpec:
    """How a model's token vectors become a text's embedding, and its longest text in tokens."""
    pooling: str
    normalize: bool
    max_length: int


def st_pooling(model_dir) -> tuple[Optional[str], Optional[bool]]:
    """(pooling, normalize) from a sentence-transformers folder's modules.json (None, None without one). Reads the
    pooling config of sentence-transformers 2-5 (pooling_mode_mean_tokens: true) and of 6 (pooling_mode: mean)."""
    d = Path(str(model_dir))
    modules_file = d / "modules.json"
    if not d.is_dir() or not modules_file.exists():
        return None, None
    modules = json.loads(modules_file.read_text())
    pooling, normalize = None, False
    for m in modules:
        kind = str(m.get("type", ""))
        if kind.endswith("Normalize"):
            normalize = True
        elif kind.endswith("Pooling") and (d / m.get("path", "") / "config.json").exists():
            pc = json.loads((d / m["path"] / "config.json").read_text())
            mode = pc.get("pooling_mode")
            if mode is None:
                flags = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                         "max": "pooling_mode_max_tokens", "lasttoken": "pooling_mode_lasttoken"}
                mode = next((k for k, f in flags.items() if pc.get(f)), None)
            if mode not in POOLINGS:
                raise LmforgeError(f"{d}: sentence-transformers pooling {mode!r} is not one lmforge computes",
                                   f"set embedding.pooling to one of {', '.join(POOLINGS)}")
            pooling = mode
    return pooling, normalize


def saved_spec(model_dir: Path, model_config) -> EmbedSpec:
    """The spec a trained (or any sentence-transformers) model folder was saved with."""
    pooling, normalize = st_pooling(model_dir)
    length = None
    cfg_file = Path(model_dir) / "sentence_bert_config.json"
    if cfg_file.exists():
        length = json.loads(cfg_file.read_text()).get("max_seq_length")
    limit = getattr(model_config, "max_position_embeddings", None) or 512
    return EmbedSpec(pooling or "mean", True if normalize is None else normalize, int(length or min(limit, 512)))


def write_st_files(d: Path, spec: EmbedSpec, dim: int) -> None:
    """Make a saved encoder folder a sentence-transformers model (the formats of versions 2-5, which 6 reads)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (d / "2_Normalize").mkdir(exist_ok=True)
    (d / "1_Pooling").mkdir(exist_ok=True)
    flags = {"pooling_mode_cls_token": spec.pooling == "cls", "pooling_mode_mean_tokens": spec.pooling == "mean",
             "pooling_mode_max_tokens": spec.pooling == "max", "pooling_mode_mean_sqrt_len_tokens": False,
             "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": spec.pooling == "lasttoken"}
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": dim, **flags}, indent=2))
    (d / "modules.json").write_text(json.dumps(modules, indent=2))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": spec.max_length,
                                                             "do_lower_case": False}, indent=2))
    (d / "config_sentence_transformers.json").write_text(json.dumps(
        {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
         "similarity_fn_name": "cosine"}, indent=2))


# ----------------------------------------------------------------------------------- data
def text_key(text: str) -> int:
    """A stable 63-bit id of a text (the same in every process), to find duplicate texts inside a batch."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def positive_rows(rows: list, notes: list[str]) -> list:
    """The rows that are (query, relevant document) pairs; rows scored 0 or below are not positives."""
    kept = [r for r in rows if retrieval.relevant_row(r)]
    if len(kept) < len(rows):
        notes.append(f"{len(rows) - len(kept)} of {len(rows)} training rows have a score of 0 or below and are not "
                     "positive pairs: the in-batch loss does not use them")
    if not kept:
        raise LmforgeError("no training row pairs a query with a relevant document (every score is 0 or below)",
                           "the embedding task trains on (query, positive) pairs; give rows with score > 0")
    return kept


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []


def encode_train(rows: list, tokenizer, max_length: int) -> EncodedSplit:
    """One item per pair: the query's, the document's and the negatives' token ids, and each text's key."""
    q = tokenize(tokenizer, [r.query for r in rows], max_length)
    d = tokenize(tokenizer, [r.document for r in rows], max_length)
    flat_negs = tokenize(tokenizer, [n for r in rows for n in r.negatives], max_length)
    items, at = [], 0
    for i, r in enumerate(rows):
        negs = flat_negs[at:at + len(r.negatives)]
        at += len(r.negatives)
        items.append({"q": q[i], "d": d[i], "negs": negs, "d_key": text_key(r.document),
                      "neg_keys": [text_key(n) for n in r.negatives]})
    return EncodedSplit(items, [len(x["q"]) + len(x["d"]) + sum(map(len, x["negs"])) for x in items])


def encode_corpus(corpus: retrieval.Corpus, tokenizer, max_length: int, dims=None) -> EncodedSplit:
    """The queries (role 0) and documents (role 1) of a retrieval problem, one item per text."""
    items = [{"input_ids": ids, "role": 0, "idx": i}
             for i, ids in enumerate(tokenize(tokenizer, corpus.queries, max_length))]
    items += [{"input_ids": ids, "role": 1, "idx": i}
              for i, ids in enumerate(tokenize(tokenizer, corpus.documents, max_length))]
    return EncodedSplit(items, [len(x["input_ids"]) for x in items], make_finalize(corpus, dims), whole=True)


def make_collate(pad_id: int):
    def collate(rows: list[dict]) -> dict:
        if "q" in rows[0]:  # training pairs: queries, then positives, then every negative
            texts = [r["q"] for r in rows] + [r["d"] for r in rows] + [n for r in rows for n in r["negs"]]
            keys = [r["d_key"] for r in rows] + [k for r in rows for k in r["neg_keys"]]
            extra = {"n_queries": len(rows), "pos_keys": torch.tensor([r["d_key"] for r in rows]),
                     "cand_keys": torch.tensor(keys)}
        else:  # evaluation texts
            texts = [r["input_ids"] for r in rows]
            extra = {"role": torch.tensor([r["role"] for r in rows]), "idx": torch.tensor([r["idx"] for r in rows])}
        batch = {"input_ids": pad_sequences(texts, pad_id), "attention_mask": pad_sequences([[1] * len(t) for t in texts], 0)}
        batch.update(extra, n_tokens=int(batch["attention_mask"].sum()), n_items=len(rows))
        return batch
    return collate


# ----------------------------------------------------------------------------------- loss and evaluation
def make_loss(spec: EmbedSpec, ecfg):
    def embed_rows(model, batch, rows: slice = slice(None)) -> torch.Tensor:
        return encode(model, batch["input_ids"][rows], batch["attention_mask"][rows], spec.pooling, spec.normalize)

    def loss(model, batch):
        n = batch["n_queries"]

        def loss_of(emb):
            return matryoshka_loss(emb[:n], emb[n:], batch["pos_keys"], batch["cand_keys"], ecfg.scale,
                                   ecfg.matryoshka_dims, ecfg.matryoshka_weights)
        if ecfg.mini_batch_size and torch.is_grad_enabled():
            return cached_loss(lambda s: embed_rows(model, batch, s), batch["input_ids"].shape[0],
                               ecfg.mini_batch_size, loss_of, batch["input_ids"].device)
        return loss_of(embed_rows(model, batch))
    return loss


def make_eval_step(spec: EmbedSpec):
    def eval_step(model, batch):
        emb = encode(model, batch["input_ids"], batch["attention_mask"], spec.pooling, spec.normalize)
        return {"emb": emb.float(), "role": batch["role"], "idx": batch["idx"]}
    return eval_step


def search(queries: torch.Tensor, docs: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Exact nearest neighbours by cosine similarity: the top-k document ids of each query, best first (ties: the
    lower id first)."""
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    d = torch.nn.functional.normalize(docs.float(), dim=-1)
    k = min(k, d.shape[0])
    out = []
    for i in range(0, q.shape[0], chunk):
        out.append(torch.topk(q[i:i + chunk] @ d.T, k, dim=1, sorted=True).indices)
    return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)


@dataclass
class Embedded:
    """The embeddings of an evaluation's queries and documents, and their ids in the corpus (sorted)."""
    queries: torch.Tensor
    query_ids: list[int]
    documents: torch.Tensor
    document_ids: list[int]


def split_embeddings(outputs: dict) -> Embedded:
    """The queries and documents an evaluation embedded (all of them, or a sample's), each in id order."""
    role, idx = outputs["role"].long(), outputs["idx"].long()
    emb = outputs["emb"].reshape(len(role), -1)
    parts = []
    for r in (0, 1):
        ids = idx[role == r]
        order = torch.argsort(ids)
        parts += [emb[role == r][order], ids[order].tolist()]
    return Embedded(*parts)


def make_finalize(corpus: retrieval.Corpus, dims: Optional[list[int]]):
    """Retrieval metrics of the embedded queries over the embedded documents (on a sample of the texts, such as the
    before-training evaluation's, the search space is the sampled documents)."""
    def finalize(outputs: dict) -> dict:
        e = split_embeddings(outputs)
        if not e.query_ids or not e.document_ids:
            return {"n_queries": len(e.query_ids), "n_documents": len(e.document_ids)}
        present = set(e.document_ids)
        relevant = [corpus.relevant[q] & present for q in e.query_ids]

        def ranked(q, d, k):
            return [[e.document_ids[j] for j in row] for row in search(q, d, k).tolist()]
        out = retrieval_metrics(ranked(e.queries, e.documents, max(RETRIEVAL_KS)), relevant)
        for dim in dims or []:
            if dim < e.queries.shape[1]:
                sub = retrieval_metrics(ranked(e.queries[:, :dim], e.documents[:, :dim], 10), relevant)
                out[f"ndcg@10_dim{dim}"] = sub.get("ndcg@10", 0.0)
        out["n_documents"] = len(e.document_ids)
        return out
    return finalize


def no_corpus(outputs: dict) -> dict:
    raise LmforgeError("an embedding evaluation needs its split's corpus (an encode_corpus split)")


# ----------------------------------------------------------------------------------- the task
def resolve_spec(cfg: Config, path: str, model_config, tokenizer) -> EmbedSpec:
    pooling, normalize = st_pooling(path)
    max_length = resolve_block_size(cfg.data.max_length, model_config, tokenizer, "data.max_length")
    return EmbedSpec(cfg.embedding.pooling or pooling or "mean",
                     cfg.embedding.normalize if cfg.embedding.normalize is not None else
                     (True if normalize is None else normalize), max_length)


def check_dims(cfg: Config, width: int) -> None:
    e = cfg.embedding
    if e.matryoshka_dims:
        bad = [d for d in e.matryoshka_dims if not 0 < d <= width]
        if bad:
            raise LmforgeError(f"embedding.matryoshka_dims {bad} are outside 1..{width}, the model's embedding size",
                               f"use dimensions up to {width}, e.g. [{width}, {width // 2}, {width // 4}]")
        if e.matryoshka_weights and len(e.matryoshka_weights) != len(e.matryoshka_dims):
            raise LmforgeError(f"embedding.matryoshka_weights has {len(e.matryoshka_weights)} weights for "
                               f"{len(e.matryoshka_dims)} matryoshka_dims", "give one weight per dimension")


class Embedding(Task):
    name = "embedding"
    auto_class = AutoModel
    architectures = ()  # a bare folder is an embedding model when it has a modules.json (tasks.task_of)
    best_metric, greater_is_better = BEST_METRICS["embedding"]
    endpoint = "/v1/embeddings"
    playground = "embed"
    data_kind = "retrieval"
    length_key = "data.max_length"
    samples_title = "Retrieval samples"
    pipeline_tag = "sentence-similarity"
    usage_code = ('from sentence_transformers import SentenceTransformer\n'
                  'model = SentenceTransformer("{model}")\n'
                  'emb = model.encode(["a query", "a document", "another document"])\n'
                  'print(model.similarity(emb[:1], emb[1:]))   # cosine similarities')
    library_name = "sentence-transformers"
    try_command = 'lmforge embed {run} "a text" "another text"'
    starter = STARTERS["embedding"]

    def intended_use(self, summary: dict) -> str:
        return ("Embed texts for semantic search: a query's embedding is close (cosine) to those of the documents "
                "relevant to it. Loads with sentence-transformers: `SentenceTransformer(path)`.")

    def setup(self, cfg: Config, log: logging.Logger = log, permissions: Permissions = Permissions()) -> TaskParts:
        splits = read_splits(cfg, retrieval.KIND)
        notes = list(splits.notes)
        train_rows = positive_rows(splits.train, notes)
        path = model_source(cfg, permissions)
        tokenizer = load_tokenizer(path, cfg.model.revision)
        ensure_pad(tokenizer, where=path)
        model_cfg = model_config_of(path, cfg)
        spec = resolve_spec(cfg, path, model_cfg, tokenizer)
        model, missing = load_pretrained(AutoModel, path, cfg, permissions)
        width = int(getattr(model.config, "hidden_size", 0) or 0)
        check_dims(cfg, width)
        train = encode_train(train_rows, tokenizer, spec.max_length)
        eval_corpus = retrieval.corpus_of(splits.eval) if splits.eval is not None else None
        test_corpus = retrieval.corpus_of(splits.test) if splits.test is not None else None
        dims = cfg.embedding.matryoshka_dims
        eval_split = encode_corpus(eval_corpus, tokenizer, spec.max_length, dims) if eval_corpus else None
        test_split = encode_corpus(test_corpus, tokenizer, spec.max_length, dims) if test_corpus else None
        n_negs = sum(len(r.negatives) for r in train_rows)
        notes.append(f"embedding: {spec.pooling} pooling{', normalised' if spec.normalize else ''}, {width} dimensions; "
                     f"in-batch loss with scale {cfg.embedding.scale:g}"
                     + (f", {n_negs:,} hard negatives" if n_negs else "")
                     + (f", matryoshka dims {cfg.embedding.matryoshka_dims}" if cfg.embedding.matryoshka_dims else "")
                     + (f", cached in chunks of {cfg.embedding.mini_batch_size} texts" if cfg.embedding.mini_batch_size
                        else "") + "; duplicate texts in a batch are masked out of each other's negatives")
        if eval_corpus:
            notes.append(f"evaluation: {len(eval_corpus.queries):,} held-out queries search {len(eval_corpus.documents):,} "
                         "held-out documents (exact cosine search)")
        for note in notes:
            log.info("%s", note)
        summary = {"train_rows": len(train), "eval_rows": len(splits.eval) if splits.eval is not None else 0,
                   "test_rows": len(splits.test) if splits.test is not None else 0, "max_length": spec.max_length,
                   "pooling": spec.pooling, "normalize": spec.normalize, "dimensions": width,
                   "eval_documents": len(eval_corpus.documents) if eval_corpus else 0,
                   "mean_tokens": float(np.mean(train.lengths)), "lengths": train.lengths, **splits.summary()}
        parts = TaskParts(task=self, model=model, tokenizer=tokenizer, train=train, eval=eval_split, test=test_split,
                          collate=make_collate(tokenizer.pad_token_id), loss=make_loss(spec, cfg.embedding),
                          eval_step=make_eval_step(spec), finalize=no_corpus, new_param_names=missing,
                          summary=summary, notes=notes, save_files=lambda d: write_st_files(Path(d), spec, width))
        return parts

    def load_for_use(self, model_dir: Path, allow_untrained: bool = False):
        tokenizer = load_tokenizer(str(model_dir))
        ensure_pad(tokenizer, where=str(model_dir))
        model = load_model(AutoModel, Path(model_dir))
        model.embedding_spec = saved_spec(Path(model_dir), model.config)
        model.eval()
        return model, tokenizer

    def eval_setup(self, model_dir: Path, data: str, overrides=None) -> TaskParts:
        """A saved embedding model and new query/document data: retrieval over that data's documents."""
        model, tokenizer = self.load_for_use(model_dir)
        cfg = eval_config(model_dir, overrides, self)
        rows = eval_rows(read_eval_rows(data, cfg, retrieval.KIND), overrides, cfg)
        spec = model.embedding_spec
        corpus = retrieval.corpus_of(rows)
        return TaskParts(task=self, model=model, tokenizer=tokenizer, train=None,
                         eval=encode_corpus(corpus, tokenizer, spec.max_length, cfg.embedding.matryoshka_dims),
                         collate=make_collate(tokenizer.pad_token_id), loss=make_loss(spec, cfg.embedding),
                         eval_step=make_eval_step(spec), finalize=no_corpus)

    def serve_info(self, model, tokenizer) -> dict:
        spec = model.embedding_spec
        return {"dimensions": int(model.config.hidden_size), "pooling": spec.pooling, "normalize": spec.normalize,
                "max_length": spec.max_length}

    def metric_inputs(self, outputs: dict) -> tuple:
        """Query embeddings, document embeddings (both in id order), and nothing else."""
        e = split_embeddings(outputs)
        return e.queries.numpy(), e.documents.numpy(), {"query_ids": e.query_ids, "document_ids": e.document_ids}

    def describe_example(self, parts: TaskParts, ids, labels) -> list[str]:
        return []


TASK = Embedding()

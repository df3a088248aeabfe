"""One data pipeline for every kind of data (data/pipeline.py): data.test evaluated by every task,
max_train_samples counting rows of a seeded shuffle, weighted mixes of sources (their shares, a mix of two
kinds refused, exact resume), and the new kinds (prompts, query/document pairs)."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import cls_config, corpus_text, toy_sentiment_rows, write_csv
from test_dpo import tiny_llama, tok  # noqa: F401 - the fixtures
from test_resume import assert_same_run, crashed_then_resumed

from lmforge import api
from lmforge.config import build_config
from lmforge.data import pipeline, prompts, retrieval
from lmforge.data.batching import epoch_batches, shard
from lmforge.errors import LmforgeError
from lmforge.tasks import causal_lm, classification, dpo, masked_lm, sft

log = logging.getLogger("lmforge")
WORDS = "thou art kind you are and he saith says unto to them old english rewrite the of a yes no".split()


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _convs(n, seed=0):
    return [{"messages": [{"role": "user", "content": f"he saith {WORDS[(i + seed) % 19]} {WORDS[(i * 3) % 19]}"},
                          {"role": "assistant", "content": f"you are {WORDS[(i * 7 + seed) % 19]}"}]}
            for i in range(n)]


def _pairs(n, seed=0):
    return [{"prompt": f"he saith {WORDS[(i + seed) % 19]} {i}", "chosen": f"you are kind {WORDS[i % 7]}",
             "rejected": f"you are old {WORDS[(i * 3) % 11]}"} for i in range(n)]


@pytest.fixture(scope="module")
def chat_llama(tiny_llama):
    """test_dpo's 2-layer Llama with a byte-level BPE tokenizer and ChatML (sft and dpo runs start from it)."""
    return tiny_llama


def _lm_model(task):
    if task == "causal-lm":
        return {"architecture": "gpt2", "n_layer": 1, "hidden_size": 32, "num_attention_heads": 2,
                "max_position_embeddings": 64}
    return {"architecture": "bert", "n_layer": 1, "hidden_size": 32, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64}


def _config(task, tmp_path, tiny_bert, chat_llama, **data):
    """A two-step run of `task` on small data written under tmp_path; `data` overrides the data section."""
    train = {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1, "eval_strategy": "no",
             "save_strategy": "no", "seed": 3, "learning_rate": 1e-3}
    out = {"output_dir": str(tmp_path / f"run-{task}")}
    if task == "classification":
        cfg = cls_config(write_csv(tmp_path / "tr.csv", toy_sentiment_rows(60, 1)), write_csv(
            tmp_path / "ev.csv", toy_sentiment_rows(20, 2)), tmp_path / f"run-{task}", tiny_bert, **train)
        cfg["data"]["test"] = str(write_csv(tmp_path / "te.csv", toy_sentiment_rows(24, 3)))
    elif task in ("causal-lm", "masked-lm"):
        lines = corpus_text().splitlines()
        (tmp_path / "c.txt").write_text("\n".join(lines[:300]))
        (tmp_path / "t.txt").write_text("\n".join(lines[300:340]))
        tokenizer = {"train": {"type": "byte-level-bpe", "vocab_size": 300, "min_frequency": 1,
                               **({"special_tokens": ["<mask>"]} if task == "masked-lm" else {})}}
        cfg = {"task": task, "tokenizer": tokenizer, "model": {"from_config": _lm_model(task)},
               "data": {"train": str(tmp_path / "c.txt"), "test": str(tmp_path / "t.txt"), "block_size": 32},
               "train": train, "output": out}
    else:
        rows = _convs if task == "sft" else _pairs
        cfg = {"task": task, "model": {"name": str(chat_llama)},
               "data": {"train": _jsonl(tmp_path / "tr.jsonl", rows(40)), "test": _jsonl(tmp_path / "te.jsonl",
                                                                                        rows(12, seed=5)),
                        "block_size": 64}, "train": train, "output": out}
    cfg["data"].update(data)
    return cfg


TASKS = ["classification", "causal-lm", "masked-lm", "sft", "dpo"]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_evaluates_data_test_once_at_the_end(task, tmp_path, tiny_bert, chat_llama, one_thread):
    if task == "masked-lm":
        pytest.importorskip("transformers")
    res = api.train(_config(task, tmp_path, tiny_bert, chat_llama), progress=False)
    metrics = json.loads((res.run_dir / "metrics.json").read_text())
    assert "test" in metrics, f"{task}: no test metrics in {sorted(metrics)}"
    test = metrics["test"]
    assert np.isfinite(test["loss"]) and test["loss"] > 0
    if task == "classification":
        assert test["n_examples"] == 24 and 0 <= test["accuracy"] <= 1
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["data_summary"]["test_rows"] > 0
    assert "test" in (res.run_dir / "report.html").read_text().lower()


def _read(task, cfg):
    """The training rows the task's setup would encode, by its own reader (no model needed)."""
    c = build_config(cfg)
    if task == "classification":
        return classification.labelled_frames(c).train["text"].tolist()
    if task == "causal-lm":
        return causal_lm.read_documents(c, False).train
    if task == "masked-lm":
        return masked_lm.read_documents(c, log).train
    reader = sft.TASK if task == "sft" else dpo.TASK
    return [json.dumps(x if task == "sft" else x.__dict__, sort_keys=True) for x in reader.read(c).train]


@pytest.mark.parametrize("task", TASKS)
def test_max_train_samples_counts_rows_of_a_seeded_shuffle_in_every_task(task, tmp_path, tiny_bert, chat_llama):
    cfg = _config(task, tmp_path, tiny_bert, chat_llama, max_train_samples=10)
    cfg["data"].pop("eval", None)  # the rows are counted after the hold-out
    first, again = _read(task, cfg), _read(task, cfg)
    assert len(first) == 10 and first == again
    other = dict(cfg, train=dict(cfg["train"], seed=4))
    assert _read(task, other) != first  # the seed chooses the rows
    full = _read(task, dict(cfg, data={k: v for k, v in cfg["data"].items() if k != "max_train_samples"}))
    assert set(first) <= set(full) and len(full) > 10  # a subset of the training rows, not of the held-out ones


def test_cap_is_pandas_seeded_sample():
    df = pd.DataFrame({"x": range(50)})
    assert pipeline.cap(df, 7, 3)["x"].tolist() == df.sample(frac=1.0, random_state=3).head(7)["x"].tolist()
    assert pipeline.cap(list(range(5)), None, 3) == list(range(5))


def test_a_weighted_mix_of_two_sources_lands_near_its_weights(tmp_path):
    a = write_csv(tmp_path / "a.csv", [(f"a {t}", lab) for t, lab in toy_sentiment_rows(1500, 1)])
    b = write_csv(tmp_path / "b.csv", [(f"b {t}", lab) for t, lab in toy_sentiment_rows(1500, 2)])
    ev = write_csv(tmp_path / "e.csv", toy_sentiment_rows(20, 3))
    shares = []
    for seed in (0, 1, 2):
        cfg = build_config({"task": "classification", "train": {"seed": seed},
                            "data": {"train": [{"path": str(a), "weight": 0.8}, {"path": str(b), "weight": 0.2}],
                                     "eval": str(ev), "max_train_samples": 1000}})
        splits = pipeline.read_splits(cfg, classification.labelled.KIND)
        assert len(splits.train) == 1000
        share_a = splits.train["text"].str.startswith("a ").mean()
        assert 0.76 <= share_a <= 0.84, f"seed {seed}: {share_a:.3f} of the rows from a (weight 0.8)"
        assert splits.mix[0].share == pytest.approx(share_a) and splits.mix[0].rows_read == 1500
        shares.append(share_a)
    assert len(set(shares)) > 1  # the draw depends on train.seed
    # first_exhausted: no row drawn twice; all_exhausted repeats the small source
    picks = pipeline.mix([100, 10], [0.5, 0.5], seed=0)
    assert len(picks) == len(set(picks.tolist()))
    over = pipeline.mix([100, 10], [0.5, 0.5], seed=0, stop="all_exhausted")
    assert Counter(int(p >= 100) for p in over)[1] > 10 and set(range(100)) <= set(over.tolist())


def test_mixing_two_kinds_of_data_is_one_line(tmp_path):
    convs = _jsonl(tmp_path / "c.jsonl", _convs(20))
    pairs = _jsonl(tmp_path / "p.jsonl", _pairs(20))
    cfg = build_config({"task": "sft", "data": {"train": [{"path": convs}, {"path": pairs, "weight": 0.5}]}})
    with pytest.raises(LmforgeError, match="mixes different kinds of data.*conversations.*preference pairs"):
        sft.TASK.read(cfg)
    bad = build_config({"task": "sft", "data": {"train": [{"path": convs}, {"path": str(tmp_path / "nope.jsonl")}]}})
    with pytest.raises(LmforgeError, match=r"data.train\[1\]"):
        sft.TASK.read(bad)


def test_a_mixed_run_killed_and_resumed_ends_bit_identical(tmp_path, tiny_bert, monkeypatch, one_thread):
    a = write_csv(tmp_path / "a.csv", toy_sentiment_rows(80, 1))
    b = write_csv(tmp_path / "b.csv", toy_sentiment_rows(60, 2))

    def cfg(out):
        c = cls_config(a, a, out, tiny_bert, max_steps=8, per_device_train_batch_size=8, save_strategy="steps",
                       save_steps=3, eval_strategy="steps", eval_steps=4)
        c["data"]["train"] = [{"path": str(a), "weight": 0.6}, {"path": str(b), "weight": 0.4}]
        del c["data"]["eval"]
        return c
    ref, run = crashed_then_resumed(cfg, tmp_path, monkeypatch, crash_step=5)
    summary = json.loads((ref / "manifest.json").read_text())["data_summary"]
    assert [s["source"] for s in summary["mix"]] == [str(a), str(b)]
    assert sum(s["train_rows"] for s in summary["mix"]) == summary["train_rows"]
    report = (ref / "report.html").read_text()
    assert "rows read" in report and f"{100 * summary['mix'][0]['share']:.1f}%" in report
    assert_same_run(ref, run)


def test_global_batches_do_not_depend_on_the_number_of_processes():
    lengths = np.random.default_rng(0).integers(3, 200, size=203).tolist()
    one = epoch_batches(lengths, 8, seed=5, epoch=1)  # 1 process, batch 8, grouped by length
    for world in (2, 4):
        parts = [shard(epoch_batches(lengths, 8, seed=5, epoch=1), r, world) for r in range(world)]
        assert len({len(p) for p in parts}) == 1  # every process steps together
        kept = [b for b in one if len(b) >= world]  # a last batch smaller than the processes is dropped
        assert len(parts[0]) == len(kept) >= len(one) - 1
        for k, batch in enumerate(kept):
            assert sum((p[k] for p in parts), []) == batch  # the same examples, in the same global batch


def test_prompts_and_query_document_kinds_read_and_check_rows(tmp_path):
    cfg = build_config({"task": "causal-lm"})
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2?", "answer": "4"},
                                         {"prompt": [{"role": "user", "content": "3+3?"}], "answer": "6"}])
    rows = prompts.read_prompts(path, cfg)
    assert rows[0].prompt == "2+2?" and rows[0].columns == {"answer": "4"}
    assert rows[1].prompt == [{"role": "user", "content": "3+3?"}] and rows[1].columns["answer"] == "6"
    bad = _jsonl(tmp_path / "b.jsonl", [{"prompt": "ok", "answer": "1"}, {"prompt": "  ", "answer": "2"}])
    with pytest.raises(LmforgeError, match="row 2: empty prompt"):
        prompts.read_prompts(bad, cfg)
    qd = _jsonl(tmp_path / "q.jsonl", [{"anchor": "a verse", "positive": "its pair", "negative": "another"},
                                       {"anchor": "b", "positive": "c", "negative": "d"}])
    r = retrieval.read_query_docs(qd, cfg)
    assert (r[0].query, r[0].document, r[0].negatives, r[0].score) == ("a verse", "its pair", ["another"], None)
    scored = write_csv(tmp_path / "s.csv", [("q one", "doc", "1"), ("q two", "doc2", "oops")],
                       header=("query", "document", "label"))
    with pytest.raises(LmforgeError, match="row 2: column 'label' must be a number"):
        retrieval.read_query_docs(str(scored), cfg)


def test_lmforge_no_cache_rebuilds_every_cache(tmp_path, monkeypatch):
    import datasets

    from lmforge import tokenizer as tokmod
    from lmforge.data import cache
    built = []

    def build():
        built.append(1)
        return datasets.Dataset.from_list([{"x": 1}]), {}
    (tmp_path / "c.txt").write_text(corpus_text())
    cfg = build_config({"task": "causal-lm", "data": {"train": str(tmp_path / "c.txt")},
                        "tokenizer": {"train": {"type": "byte-level-bpe", "vocab_size": 300, "min_frequency": 1}}})
    for no_cache, want_hits in ((False, 1), (True, 0)):
        if no_cache:
            monkeypatch.setenv("LMFORGE_NO_CACHE", "1")
        built.clear()
        hits = [cache.cached_dataset(f"k{no_cache}", build).hit for _ in range(2)]
        assert sum(hits) == want_hits and len(built) == 2 - want_hits
        before = dict(tokmod.STATS)
        tokmod.trained_for_config(cfg)
        tokmod.trained_for_config(cfg)
        assert tokmod.STATS["hits"] - before["hits"] == want_hits


def test_an_option_only_one_task_has_is_refused_by_the_others(tiny_cls_run):
    with pytest.raises(LmforgeError, match="--stride is not an option of classification evaluation"):
        api.evaluate(tiny_cls_run / "model", stride=4, progress=False)


def test_user_metrics_never_replace_measured_ones_and_a_broken_module_is_one_line(tmp_path, monkeypatch,
                                                                                   tiny_bert, one_thread):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shadow.py").write_text("def m(predictions, labels, info):\n    return {'loss': -1000, 'accuracy': 1.0}\n")
    (tmp_path / "broken.py").write_text("def m(predictions, labels, info)\n    return {}\n")
    (tmp_path / "own.py").write_text("def m(predictions, labels, info):\n    return {'my_acc': 0.5}\n")
    train = write_csv(tmp_path / "t.csv", toy_sentiment_rows(40, 1))
    base = cls_config(train, train, tmp_path / "r", tiny_bert, max_steps=1, eval_strategy="no")
    with pytest.raises(LmforgeError, match="returned 'accuracy', 'loss', which lmforge measures itself"):
        api.train(dict(base, eval={"metrics_function": "shadow:m"}), progress=False)
    with pytest.raises(LmforgeError, match="module 'broken' has a syntax error"):
        api.train(dict(base, eval={"metrics_function": "broken:m"}), progress=False)
    res = api.train(dict(base, eval={"metrics_function": "own:m"}, output={"output_dir": str(tmp_path / "ok")}),
                    progress=False)
    assert res.metrics["eval"]["my_acc"] == 0.5 and res.metrics["eval"]["loss"] > 0

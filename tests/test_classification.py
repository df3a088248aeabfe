"""Classification end to end on a tiny BERT built from config."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import cls_config, toy_sentiment_rows, write_csv
from lmforge import api
from lmforge.data.batching import epoch_batches, pad_sequences
from lmforge.tasks import classification as cls


@pytest.fixture(scope="module")
def trained_run(tiny_bert, tmp_path_factory):
    d = tmp_path_factory.mktemp("cls")
    train = write_csv(d / "train.csv", toy_sentiment_rows(320, seed=0))
    test = write_csv(d / "test.csv", toy_sentiment_rows(80, seed=5))
    cfg = cls_config(train, test, d / "run", tiny_bert, num_train_epochs=3, warmup_ratio=0.1)
    cfg["data"]["test"] = str(test)
    return api.train(cfg, progress=False), test


def test_loss_goes_down_and_learns(trained_run):
    res, _ = trained_run
    logs = [json.loads(l) for l in (res.run_dir / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert res.metrics["eval"]["accuracy"] >= 0.9
    assert res.metrics["before"]["accuracy"] < res.metrics["eval"]["accuracy"]
    assert res.metrics["eval"]["loss"] < res.metrics["before"]["loss"]


def test_run_folder_is_complete(trained_run):
    res, _ = trained_run
    d = res.run_dir
    for name in ("config.yaml", "manifest.json", "log.jsonl", "metrics.json", "loss.png", "README.md", "model"):
        assert (d / name).exists(), name
    man = json.loads((d / "manifest.json").read_text())
    assert man["status"] == "finished" and man["seed"] == 1 and "torch" in man["versions"]
    assert man["data_fingerprints"]["train"]
    rec = [json.loads(l) for l in (d / "log.jsonl").read_text().splitlines()][0]
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_mb"):
        assert key in rec
    assert (d / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((d / "metrics.json").read_text())
    assert {"before", "eval", "test", "train"} <= set(m)


def test_reloads_with_plain_transformers_and_predicts_the_same(trained_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    res, test = trained_run
    model = AutoModelForSequenceClassification.from_pretrained(res.run_dir / "model").eval()
    tok = AutoTokenizer.from_pretrained(res.run_dir / "model")
    assert model.config.id2label == {0: "neg", 1: "pos"}  # label mapping survives save/load
    texts = ["good great tasty", "awful stale bad product"]
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        plain = torch.softmax(model(**enc).logits, -1)
    ours = api.predict(res.run_dir, texts, progress=False)
    for i, row in enumerate(ours):
        assert row["label"] == model.config.id2label[int(plain[i].argmax())]
        assert abs(row["probabilities"]["pos"] - float(plain[i, 1])) < 1e-5
    assert [r["label"] for r in ours] == ["pos", "neg"]


def test_evaluate_api_matches_the_runs_test_metrics(trained_run):
    res, test = trained_run
    m = api.evaluate(res.run_dir, str(test), progress=False)
    assert m["accuracy"] == pytest.approx(res.metrics["test"]["accuracy"])
    assert m["loss"] == pytest.approx(res.metrics["test"]["loss"], rel=1e-5)


def test_predict_file_to_jsonl(trained_run, tmp_path):
    res, test = trained_run
    out = tmp_path / "preds.jsonl"
    rows = api.predict(res.run_dir, input_file=str(test), output=str(out), progress=False)
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(lines) == 80 == len(rows)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in lines)


def test_dynamic_padding_loss_equals_max_length_padding(tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    texts = ["good", "the food was very bad and stale", "nice taste"]
    rows = [{"input_ids": tok(t)["input_ids"], "labels": i % 2} for i, t in enumerate(texts)]
    dyn = cls.make_collate(tok.pad_token_id)(rows)
    full = dict(dyn)
    full["input_ids"] = pad_sequences([r["input_ids"] for r in rows], tok.pad_token_id, multiple_of=64)
    full["attention_mask"] = pad_sequences([[1] * len(r["input_ids"]) for r in rows], 0, multiple_of=64)
    assert full["input_ids"].shape[1] == 64 and dyn["input_ids"].shape[1] < 64
    with torch.no_grad():
        a = cls.loss_fn(model, dyn)
        b = cls.loss_fn(model, full)
    assert torch.allclose(a, b, atol=1e-5)


def test_gradient_accumulation_matches_one_big_batch(tiny_bert_nodrop, tmp_path):
    """Loss normalised over the items of the whole step: 2x8 accumulated == 1x16."""
    train = write_csv(tmp_path / "t.csv", toy_sentiment_rows(64, seed=2))
    tiny_bert = tiny_bert_nodrop
    a = api.train(cls_config(train, train, tmp_path / "a", tiny_bert, max_steps=3, per_device_train_batch_size=16,
                             group_by_length=False, eval_strategy="no", load_best_model_at_end=False), progress=False)
    b = api.train(cls_config(train, train, tmp_path / "b", tiny_bert, max_steps=3, per_device_train_batch_size=8,
                             gradient_accumulation_steps=2, group_by_length=False, eval_strategy="no",
                             load_best_model_at_end=False), progress=False)
    # Same examples per step only if batches line up: 16 shuffled = first 8 + next 8 of the same order.
    la = [json.loads(l)["loss"] for l in (a.run_dir / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(l)["loss"] for l in (b.run_dir / "log.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, abs=1e-5)


def test_length_grouping_reduces_padding_and_keeps_every_example():
    lengths = [5, 200, 7, 180, 6, 190, 8, 170] * 50
    grouped = epoch_batches(lengths, 8, seed=0, epoch=0, group_by_length=True)
    plain = epoch_batches(lengths, 8, seed=0, epoch=0, group_by_length=False)
    pad = lambda bs: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)
    assert pad(grouped) < 0.2 * pad(plain)
    assert sorted(i for b in grouped for i in b) == list(range(len(lengths)))
    assert epoch_batches(lengths, 8, 0, 0) == grouped  # deterministic
    assert epoch_batches(lengths, 8, 0, 1) != grouped  # new order each epoch


def test_text_pairs(tiny_bert, tmp_path):
    rows = [(a, b, "same" if (i % 2 == 0) else "diff") for i, (a, b) in enumerate(
        zip(["good food"] * 40, ["great taste", "awful stale"] * 20))]
    train = write_csv(tmp_path / "pairs.csv", rows, header=("sentence1", "sentence2", "label"))
    cfg = cls_config(train, train, tmp_path / "run", tiny_bert, max_steps=2)
    cfg["data"].update(text_column="sentence1", text_pair_column="sentence2")
    res = api.train(cfg, progress=False)
    assert res.metrics["eval"]["n_examples"] == 40
    preds = api.predict(res.run_dir, input_file=str(train), text_column="sentence1",
                        text_pair_column="sentence2", progress=False)
    assert "text_pair" in preds[0]


def test_integer_labels_and_three_classes(tiny_bert, tmp_path):
    rows = [(t, {"pos": 2, "neg": 0}[l] if i % 3 else 1) for i, (t, l) in enumerate(toy_sentiment_rows(60))]
    train = write_csv(tmp_path / "int.csv", rows)
    res = api.train(cls_config(train, train, tmp_path / "run", tiny_bert, max_steps=2), progress=False)
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(res.run_dir / "model")
    assert c.id2label == {0: "0", 1: "1", 2: "2"} and c.label2id == {"0": 0, "1": 1, "2": 2}
    assert len(res.metrics["eval"]["confusion_matrix"]) == 3


def test_second_run_uses_the_tokenization_cache(tiny_bert, toy_csvs, tmp_path):
    from lmforge.data.cache import STATS
    train, test = toy_csvs
    api.train(cls_config(train, test, tmp_path / "r1", tiny_bert, max_steps=1), progress=False)
    hits = STATS["hits"]
    res = api.train(cls_config(train, test, tmp_path / "r2", tiny_bert, max_steps=1), progress=False)
    assert STATS["hits"] >= hits + 2  # train and eval both loaded from the cache
    assert json.loads((res.run_dir / "manifest.json").read_text())["data_summary"]["tokenization_cache_hit"]


def test_seeded_runs_are_identical(tiny_bert, toy_csvs, tmp_path):
    train, test = toy_csvs
    a = api.train(cls_config(train, test, tmp_path / "a", tiny_bert, max_steps=4), progress=False)
    b = api.train(cls_config(train, test, tmp_path / "b", tiny_bert, max_steps=4), progress=False)
    la = (a.run_dir / "log.jsonl").read_text().splitlines()
    lb = (b.run_dir / "log.jsonl").read_text().splitlines()
    strip = lambda ls: [{k: v for k, v in json.loads(l).items() if k not in ("tokens_per_s", "mfu", "peak_mem_mb")} for l in ls]
    assert strip(la) == strip(lb)


def test_attention_dropout_override_keeps_labels(tiny_bert, toy_csvs, tmp_path):
    from transformers import AutoConfig
    train, test = toy_csvs
    cfg = cls_config(train, test, tmp_path / "run", tiny_bert, max_steps=1)
    cfg["model"]["attention_dropout"] = 0.0
    res = api.train(cfg, progress=False)
    c = AutoConfig.from_pretrained(res.run_dir / "model")
    assert c.attention_probs_dropout_prob == 0.0 and c.hidden_dropout_prob == 0.1
    assert c.id2label == {0: "neg", 1: "pos"}


def test_eval_without_data_scores_the_rows_the_run_held_out(tiny_bert, tmp_path):
    """A run with no eval file held 10% of data.train out; `lmforge eval RUN` recomputes those rows (the hold-out is
    a function of data and seed) and gets the run's own final eval metrics."""
    from conftest import toy_sentiment_rows, write_csv
    from lmforge import api
    train = write_csv(tmp_path / "train.csv", toy_sentiment_rows(120, seed=2))
    cfg = {"task": "classification", "model": {"name": str(tiny_bert)},
           "data": {"train": str(train), "validation_split": 0.25},
           "train": {"max_steps": 4, "per_device_train_batch_size": 16, "learning_rate": 3e-3, "seed": 4,
                     "save_strategy": "no", "eval_strategy": "no"}, "output": {"output_dir": str(tmp_path / "run")}}
    res = api.train(cfg, progress=False)
    got = api.evaluate(res.run_dir, progress=False)
    final = res.metrics["eval"]
    assert got["data"] == "held-out" and got["n_examples"] == final["n_examples"] == 30
    assert got["accuracy"] == final["accuracy"] and got["loss"] == pytest.approx(final["loss"], abs=1e-6)
    # with the run's data.max_eval_samples: the same capped rows
    cfg["data"]["max_eval_samples"] = 12
    cfg["output"]["output_dir"] = str(tmp_path / "run-capped")
    res = api.train(cfg, progress=False)
    got = api.evaluate(res.run_dir, progress=False)
    assert got["n_examples"] == res.metrics["eval"]["n_examples"] == 12
    assert got["loss"] == pytest.approx(res.metrics["eval"]["loss"], abs=1e-6)

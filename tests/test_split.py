"""One hold-out rule for every task (data/split.py), seeded by train.seed; and permissions that only the
caller grants (the Python API's allow_pickle / trust_remote_code, like the CLI's flags)."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from conftest import cls_config, corpus_text, toy_sentiment_rows, write_csv
from test_bad_inputs import pickled_model

from lmforge import api
from lmforge.config import build_config
from lmforge.data.split import hold_out
from lmforge.errors import LmforgeError

log = logging.getLogger("lmforge")


def test_hold_out_is_a_seeded_partition_in_file_order():
    train, held = hold_out(200, 0.1, seed=7)
    assert len(held) == 20 and len(train) == 180
    assert sorted(train + held) == list(range(200)) and train == sorted(train) and held == sorted(held)
    assert hold_out(200, 0.1, seed=7) == (train, held)
    assert hold_out(200, 0.1, seed=8)[1] != held
    assert len(hold_out(3, 0.1, seed=0)[1]) == 1  # at least one example is held out


def test_labelled_rows_keep_each_label_share():
    labels = ["a"] * 90 + ["b"] * 10
    train, held = hold_out(100, 0.2, seed=1, labels=labels)
    assert Counter(labels[i] for i in held) == {"a": 18, "b": 2}
    assert sorted(train + held) == list(range(100))
    # a label with a single row cannot be stratified: the plain seeded rule
    one = ["a"] * 99 + ["b"]
    assert hold_out(100, 0.2, seed=1, labels=one) == hold_out(100, 0.2, seed=1)


def _lm_cfg(task: str, corpus, seed: int):
    return build_config({"task": task, "data": {"train": str(corpus)}, "train": {"seed": seed}})


def test_language_model_tasks_hold_out_the_same_documents_by_train_seed(tmp_path):
    from lmforge.tasks import causal_lm, masked_lm
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text())
    for seed in (1, 2):
        clm_eval = causal_lm.read_documents(_lm_cfg("causal-lm", corpus, seed), False).eval
        mlm_eval = masked_lm.read_documents(_lm_cfg("masked-lm", corpus, seed), log).eval
        assert clm_eval == mlm_eval and len(mlm_eval) == round(0.1 * 401)
    seed1 = masked_lm.read_documents(_lm_cfg("masked-lm", corpus, 1), log).eval
    seed2 = masked_lm.read_documents(_lm_cfg("masked-lm", corpus, 2), log).eval
    assert seed1 != seed2  # train.seed decides, not data.eval_mask_seed


def test_classification_held_out_rows_are_the_reports_rows(tmp_path):
    """The report re-derives the held-out rows of a run from its config: the same rows setup held out."""
    from lmforge.tasks import classification
    train = write_csv(tmp_path / "train.csv", toy_sentiment_rows(100, seed=3))
    cfg = build_config({"task": "classification", "data": {"train": str(train)}, "train": {"seed": 5}})
    eval_df = classification.labelled_frames(cfg).eval
    split, rows = classification.TASK.labelled_rows(cfg)
    assert split == "held-out eval" and rows["text"].tolist() == eval_df["text"].tolist() and len(rows) == 10
    assert Counter(rows["label"]) == {"pos": 5, "neg": 5}


def test_python_api_grants_pickle_only_when_asked(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "train.csv", toy_sentiment_rows(40))
    model = pickled_model(tmp_path, tiny_bert)
    cfg = cls_config(train, train, tmp_path / "run", model, max_steps=1)
    with pytest.raises(LmforgeError, match="only pickled weights"):
        api.train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    res = api.train(cfg, progress=False, allow_pickle=True)
    assert (res.run_dir / "model" / "model.safetensors").exists()
    remote = dict(cfg, model={"name": str(model), "trust_remote_code": True},
                  output={"output_dir": str(tmp_path / "r2")})
    with pytest.raises(LmforgeError, match="trust_remote_code"):
        api.train(remote, progress=False, allow_pickle=True)

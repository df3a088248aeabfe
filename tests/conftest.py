"""Shared fixtures: tiny models built from config, tokenizers trained in-process, toy data.

Everything here is hermetic and CPU-only: no network, no pretrained weights.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS_POS = "good great excellent lovely tasty superb wonderful fine nice delicious".split()
WORDS_NEG = "bad awful terrible stale bland poor nasty gross horrible rotten".split()
FILLER = "the this it was a very food product taste really i and my".split()


def toy_sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A learnable toy task: the label is whether positive or negative words dominate."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = WORDS_POS if label == "pos" else WORDS_NEG
        toks = [rng.choice(FILLER) for _ in range(rng.randint(2, 10))] + [rng.choice(words) for _ in range(rng.randint(1, 3))]
        rng.shuffle(toks)
        rows.append((" ".join(toks), label))
    return rows


def corpus_text() -> str:
    rows = toy_sentiment_rows(400, seed=1)
    return "\n".join(t for t, _ in rows) + "\n" + " ".join(WORDS_POS + WORDS_NEG + FILLER)


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    import csv
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def train_wordpiece(out: Path, text: str, vocab_size: int = 200):
    """A BERT-style fast tokenizer trained on `text`, saved so AutoTokenizer loads it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(text.splitlines(), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    from tokenizers import decoders
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    fast.save_pretrained(out)
    return fast


def make_tiny_bert(out: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    """A 2-layer, width-32 BERT with a trained WordPiece tokenizer, saved as a model folder."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    out.mkdir(parents=True, exist_ok=True)
    tok = train_wordpiece(out, corpus_text())
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    model = BertForMaskedLM(cfg)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_bert_nodrop(tmp_path_factory) -> Path:
    """The same without dropout, for exact parity tests."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), dropout=0.0)


@pytest.fixture()
def toy_csvs(tmp_path):
    train = write_csv(tmp_path / "train.csv", toy_sentiment_rows(240, seed=0))
    test = write_csv(tmp_path / "test.csv", toy_sentiment_rows(60, seed=5))
    return train, test


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and on a busy machine two OpenMP threads spin-wait
    (measured: a 32x32 linear layer took 9 ms with 2 threads and 0.1 ms with 1 under load)."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own lmforge cache (tokenized data, FLOP/s probe)."""
    _use_test_cache(tmp_path_factory, monkeypatch)


def _use_test_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "lmforge-cache"
    monkeypatch.setenv("LMFORGE_CACHE", str(cache))
    peak = cache / "peak_flops.json"
    if not peak.exists():  # skip the 1 s matmul probe in tests: a fixed nominal peak
        cache.mkdir(parents=True, exist_ok=True)
        import json

        import torch

        from lmforge.train.perf import _cpu_name
        key = f"{_cpu_name()}|threads={torch.get_num_threads()}|torch={torch.__version__}"
        peak.write_text(json.dumps({key: 1e11}))


def cls_config(train, test, out, model, **train_kw) -> dict:
    tr = {"num_train_epochs": 1, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "seed": 1,
          "logging_steps": 1, "eval_strategy": "epoch", "save_strategy": "no"}
    tr.update(train_kw)
    return {"task": "classification", "model": {"name": str(model)},
            "data": {"train": str(train), "eval": str(test), "text_column": "text", "label_column": "label"},
            "train": tr, "output": {"output_dir": str(out)}}


@pytest.fixture(scope="session")
def tiny_cls_run(tiny_bert, tmp_path_factory) -> Path:
    """A finished tiny classification run (6 steps, evaluated every 3) for report and serve tests."""
    from lmforge import api
    d = tmp_path_factory.mktemp("tiny-cls-run")
    train = write_csv(d / "train.csv", toy_sentiment_rows(96, seed=0))
    test = write_csv(d / "test.csv", toy_sentiment_rows(40, seed=5))
    cfg = cls_config(train, test, d / "run", tiny_bert, eval_strategy="steps", eval_steps=3)
    cfg["data"]["test"] = str(test)
    with pytest.MonkeyPatch.context() as mp:
        _use_test_cache(tmp_path_factory, mp)
        return api.train(cfg, progress=False).run_dir

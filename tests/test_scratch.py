"""Models from scratch: built from a config, vocabulary from the tokenizer, trained a few steps."""

from __future__ import annotations

import json

import pytest

from lmforge.config import build_config
from lmforge.errors import LmforgeError
from lmforge.models.scratch import build_model, make_config
from lmforge.tasks import get_task
from lmforge.tokenizer import train_tokenizer
from test_tokenizer import make_text


@pytest.fixture(scope="module")
def bl_tok():
    return train_tokenizer("byte-level-bpe", texts=make_text(), vocab_size=300, min_frequency=1).tokenizer


def _cfg(task, spec):
    return build_config({"task": task, "model": {"from_config": spec}})


@pytest.mark.parametrize("arch,task", [("gpt2", "causal-lm"), ("llama", "causal-lm"), ("bert", "masked-lm"),
                                       ("roberta", "masked-lm")])
def test_sizes_and_vocab_follow_config_and_tokenizer(bl_tok, arch, task):
    spec = {"architecture": arch, "n_layer": 3, "hidden_size": 48, "heads": 4, "max_position_embeddings": 64}
    model = build_model(_cfg(task, spec), bl_tok, get_task(task).auto_class, task)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == (3, 48, 4)
    assert c.vocab_size == len(bl_tok) == model.get_input_embeddings().weight.shape[0]
    assert c.pad_token_id == bl_tok.pad_token_id
    # the parameter count is what the sizes imply: embeddings + layers grow with the width
    wider = build_model(_cfg(task, {**spec, "hidden_size": 96}), bl_tok, get_task(task).auto_class, task)
    n1 = sum(p.numel() for p in model.parameters())
    n2 = sum(p.numel() for p in wider.parameters())
    assert 2.5 < n2 / n1 < 4.1


def test_gpt2_parameter_count_matches_formula(bl_tok):
    model = build_model(_cfg("causal-lm", {"architecture": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2,
                                           "n_positions": 16}), bl_tok, get_task("causal-lm").auto_class, "causal-lm")
    V, d, L, T = len(bl_tok), 32, 2, 16
    per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    expected = V * d + T * d + L * per_layer + 2 * d  # tied output head
    assert sum(p.numel() for p in model.parameters()) == expected


def test_config_json_path(bl_tok, tmp_path):
    from transformers import GPT2Config
    GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=50000).save_pretrained(tmp_path)
    model = build_model(_cfg("causal-lm", str(tmp_path / "config.json")), bl_tok, get_task("causal-lm").auto_class,
                        "causal-lm")
    assert model.config.n_layer == 1 and model.config.vocab_size == len(bl_tok)  # vocab follows the tokenizer


@pytest.mark.parametrize("spec,task,match", [
    ({"architecture": "gpt3"}, "causal-lm", "Did you mean 'gpt2'"),
    ({"architecture": "gpt2", "n_layr": 2}, "causal-lm", "Did you mean 'n_layer'"),
    ({"architecture": "bert"}, "causal-lm", "cannot be trained for causal-lm"),
    ({"architecture": "gpt2"}, "masked-lm", "cannot be trained for masked-lm"),
    ({"architecture": "gpt2", "hidden_size": 100, "n_head": 3}, "causal-lm", "not divisible"),
    ({"architecture": "gpt2", "vocab_size": 10}, "causal-lm", "smaller than the tokenizer"),
    ({"n_layer": 2}, "causal-lm", "needs an architecture"),
])
def test_bad_specs_are_clear_errors(bl_tok, spec, task, match):
    with pytest.raises(LmforgeError, match=match):
        make_config(spec, bl_tok, task)


def _losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "step" in r and "eval_loss" not in r]


def test_gpt2_from_scratch_trains(tmp_path):
    """The issue's config shape (tokenizer trained first, gpt2 from config), shrunk to a few seconds."""
    from lmforge.api import train
    lines = make_text(1500, seed=3)
    (tmp_path / "train.txt").write_text("\n".join(lines[:1350]) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(lines[1350:]) + "\n")
    cfg = {"task": "causal-lm",
           "tokenizer": {"train": {"type": "byte-level-bpe", "vocab_size": 400}},
           "model": {"from_config": {"architecture": "gpt2", "n_layer": 2, "hidden_size": 64, "num_attention_heads": 4,
                                     "max_position_embeddings": 64}},
           "data": {"train": str(tmp_path / "train.txt"), "eval": str(tmp_path / "valid.txt"), "block_size": 32},
           "train": {"max_steps": 30, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "seed": 1,
                     "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no"},
           "output": {"output_dir": str(tmp_path / "run")}}
    res = train(cfg, progress=False)
    losses = _losses(res.run_dir)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert losses[0] == pytest.approx(__import__("math").log(400), rel=0.1)  # a fresh model: ~uniform
    assert res.metrics["eval"]["loss"] < res.metrics["before"]["loss"] - 1.0
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(res.run_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(res.run_dir / "model")
    assert len(tok) == 400 == model.config.vocab_size and model.config.n_layer == 2


def test_bert_from_scratch_trains(tmp_path):
    from lmforge.api import train
    lines = make_text(1500, seed=4)
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    cfg = {"task": "masked-lm",
           "tokenizer": {"train": {"type": "wordpiece", "vocab_size": 200}},
           "model": {"from_config": {"architecture": "bert", "n_layer": 2, "hidden_size": 64, "num_attention_heads": 4,
                                     "max_position_embeddings": 64}},
           "data": {"train": str(tmp_path / "train.txt"), "block_size": 32},
           "train": {"max_steps": 30, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "seed": 1,
                     "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no"},
           "output": {"output_dir": str(tmp_path / "run")}}
    res = train(cfg, progress=False)
    losses = _losses(res.run_dir)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert res.metrics["eval"]["loss"] < res.metrics["before"]["loss"] - 0.5

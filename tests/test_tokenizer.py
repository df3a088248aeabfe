"""Tokenizer training: every type trains in-process on a few KB and round-trips text."""

from __future__ import annotations

import random

import pytest

from lmforge.errors import LmforgeError
from lmforge.tokenizer import TOKENIZER_TYPES, STATS, train_tokenizer

WORDS = ("the lord said unto moses and aaron speak to the children of israel saying this is the thing "
         "which hath commanded when ye come into land give you then shall keep sabbath six years thou sow "
         "field prune vineyard gather fruit thereof but seventh year rest unto").split()


def make_text(n_lines: int = 120, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
        words[0] = words[0].capitalize()
        k = rng.randrange(1, len(words) - 1)
        words[k] += rng.choice([",", ";", ":"])
        lines.append(" ".join(words) + rng.choice([".", "!", "?"]))
    return lines


def normalise(text: str) -> str:
    return "".join(text.lower().split())


@pytest.mark.parametrize("kind", TOKENIZER_TYPES)
def test_each_type_trains_and_round_trips(kind, tmp_path):
    from transformers import AutoTokenizer

    lines = make_text()
    assert 6_000 < sum(map(len, lines)) < 20_000  # "a few KB"
    vocab = 400 if kind == "byte-level-bpe" else 200
    res = train_tokenizer(kind, texts=lines, vocab_size=vocab, min_frequency=1, output=tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.is_fast
    assert len(tok) == res.summary["vocab_size"] <= vocab
    assert tok.pad_token is not None and tok.mask_token is not None
    if kind == "wordpiece":
        assert (tok.cls_token, tok.sep_token, tok.unk_token) == ("[CLS]", "[SEP]", "[UNK]")
    else:
        assert tok.eos_token is not None and tok.bos_token is not None
    assert (tok.unk_token is None) == (kind == "byte-level-bpe")
    held_out = make_text(20, seed=99)  # same words, new sentences
    for x in held_out:
        ids = tok(x, add_special_tokens=False)["input_ids"]
        if tok.unk_token_id is not None:
            assert tok.unk_token_id not in ids
        back = tok.decode(ids)
        if kind == "byte-level-bpe":
            assert back == x
        else:
            assert normalise(back) == normalise(x)
    # the summary's tokens/word is a real measurement: recompute it
    enc = [tok(x, add_special_tokens=False)["input_ids"] for x in lines]
    per_word = sum(map(len, enc)) / sum(len(x.split()) for x in lines)
    assert res.summary["tokens_per_word"] == pytest.approx(per_word)
    assert 1.0 <= per_word < 3.0  # a trained vocabulary: far fewer tokens than characters


def test_byte_level_bpe_is_lossless_on_unseen_text():
    tok = train_tokenizer("byte-level-bpe", texts=make_text(), vocab_size=400, min_frequency=1).tokenizer
    for x in ["naïve café 🙂 — Ünïcode\ttabs\n\nand  double  spaces", "   leading and trailing   ", "数字 123"]:
        assert tok.decode(tok(x)["input_ids"]) == x


def test_vocab_size_and_min_frequency_take_effect():
    lines = make_text(300)
    big = train_tokenizer("byte-level-bpe", texts=lines, vocab_size=600, min_frequency=1).tokenizer
    small = train_tokenizer("byte-level-bpe", texts=lines, vocab_size=320, min_frequency=1).tokenizer
    rare = train_tokenizer("byte-level-bpe", texts=lines, vocab_size=600, min_frequency=200).tokenizer
    assert len(small) == 320
    assert len(rare) < len(big)
    x = " ".join(lines[:20])
    # a bigger vocabulary encodes the same text in fewer tokens
    assert len(big(x)["input_ids"]) < len(small(x)["input_ids"])


def test_special_tokens_are_kept_whole(tmp_path):
    tok = train_tokenizer("bpe", texts=make_text(), vocab_size=200, min_frequency=1,
                          special_tokens=["<sep2>", "<s>"], output=tmp_path / "t").tokenizer
    ids = tok("the lord <sep2> said", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<sep2>") in ids
    assert "<sep2>" in tok.all_special_tokens
    assert tok.all_special_tokens.count("<s>") == 1  # a duplicate of a default is not added twice


def test_byte_level_vocab_floor_is_an_error():
    with pytest.raises(LmforgeError, match="at least 259"):
        train_tokenizer("byte-level-bpe", texts=make_text(), vocab_size=100)


def test_cli_trains_from_files(tmp_path):
    from transformers import AutoTokenizer

    from lmforge.cli import main
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    lines = make_text(200)
    a.write_text("\n".join(lines[:100]) + "\n")
    b.write_text("\n".join(lines[100:]) + "\n")
    rc = main(["tokenizer", "train", "--files", str(a), str(b), "--type", "wordpiece", "--vocab-size", "180",
               "--min-frequency", "1", "--special-tokens", "<e1>", "<e2>", "--output", str(tmp_path / "wp"),
               "--no-progress"])
    assert rc == 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "wp")
    assert 150 <= len(tok) <= 180
    assert {"<e1>", "<e2>"} <= set(tok.all_special_tokens)
    # trained on both files: a word only in b is one piece
    only_b = set(" ".join(lines[100:]).lower().split()) - set(" ".join(lines[:100]).lower().split())
    for w in only_b:
        assert tok.tokenize(w.strip(",;:.!?")) != ["[UNK]"]
    assert main(["tokenizer", "train", "--files", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "x")]) == 2


def test_config_tokenizer_is_trained_once_and_cached(tmp_path):
    from lmforge.config import build_config
    from lmforge.tokenizer import tokenizer_for_config

    f = tmp_path / "train.txt"
    f.write_text("\n".join(make_text(150)) + "\n")
    cfg = build_config({"task": "causal-lm", "tokenizer": {"train": {"type": "byte-level-bpe", "vocab_size": 300,
                                                                     "min_frequency": 1}},
                        "data": {"train": str(f)}})
    before = dict(STATS)
    t1 = tokenizer_for_config(cfg)
    t2 = tokenizer_for_config(cfg)
    assert (STATS["misses"] - before["misses"], STATS["hits"] - before["hits"]) == (1, 1)
    assert t1.get_vocab() == t2.get_vocab() and len(t1) == 300
    cfg.tokenizer.train.vocab_size = 310  # other settings: a new tokenizer
    assert len(tokenizer_for_config(cfg)) == 310
    assert STATS["misses"] - before["misses"] == 2

"""The memory-mapped token cache: same tokens and blocks as the in-memory path, built once,
reused (cache hit: no tokenization), resumable after a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge.config import build_config
from lmforge.data import encoders, stream
from lmforge.data.corpus import pack, read_corpus, tokenize_documents
from lmforge.tokenizer import train_tokenizer
from test_tokenizer import make_text


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer("byte-level-bpe", texts=make_text(400), vocab_size=400, min_frequency=1).tokenizer


def _cfg(train, **data):
    return build_config({"task": "causal-lm", "data": {"train": str(train), **data}})


def _in_memory(source, tok, cfg):
    ids = tokenize_documents(read_corpus(str(source), cfg, "train"), tok, add_eos=True)
    return ids, np.concatenate([np.asarray(x) for x in ids])


@pytest.mark.parametrize("kind", ["lines", "blank-line", "folder", "jsonl"])
def test_cache_matches_in_memory_tokenization_and_packing(tmp_path, tok, kind):
    lines = make_text(600, seed=7)
    extra = {}
    if kind == "lines":
        src = tmp_path / "c.txt"
        src.write_text("\n".join(lines) + "\n\n  \n")
    elif kind == "blank-line":
        src = tmp_path / "c.txt"
        src.write_text("\n\n".join("\n".join(lines[i:i + 3]) for i in range(0, 600, 3)))
        extra = {"document_separator": "blank-line"}
    elif kind == "folder":
        src = tmp_path / "docs"
        src.mkdir()
        for i in range(0, 600, 20):
            (src / f"{i:04d}.txt").write_text("\n".join(lines[i:i + 20]) + "\n")
    else:
        src = tmp_path / "c.jsonl"
        src.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(lines)) + "\n")
    cfg = _cfg(src, **extra)
    # small chunks: dozens of pieces, so the cuts between chunks are exercised
    cache, hit = stream.build_token_cache(str(src), tok, cfg, chunk=3000)
    ids, flat = _in_memory(src, tok, cfg)
    assert not hit and cache.n_docs == len(ids) and cache.n_tokens == len(flat)
    np.testing.assert_array_equal(np.asarray(cache.tokens), flat)
    assert cache.tokens.dtype == np.uint16  # 400 ids fit in 16 bits
    packed = pack(ids, 48)
    blocks = cache.blocks(48)
    assert len(blocks) == len(packed)
    for i in (0, 1, len(blocks) // 2, len(blocks) - 1):
        assert blocks[i]["input_ids"] == packed.input_ids[i].tolist()
        assert blocks[i]["position_ids"] == packed.position_ids[i].tolist()


def test_document_longer_than_a_chunk_is_continued_not_split(tmp_path, tok):
    long_doc = " ".join(make_text(200, seed=8))  # ~12 kB on one line
    src = tmp_path / "c.txt"
    src.write_text("short one.\n" + long_doc + "\nlast one.\n")
    cfg = _cfg(src)
    cache, _ = stream.build_token_cache(str(src), tok, cfg, chunk=2000)
    ids, flat = _in_memory(src, tok, cfg)
    assert cache.n_docs == 3
    np.testing.assert_array_equal(np.asarray(cache.tokens), flat)
    np.testing.assert_array_equal(cache.document(1), ids[1])


def test_second_build_is_a_cache_hit_without_tokenizing(tmp_path, tok):
    src = tmp_path / "c.txt"
    src.write_text("\n".join(make_text(300, seed=9)) + "\n")
    cfg = _cfg(src)
    before = dict(stream.STATS)
    c1, hit1 = stream.build_token_cache(str(src), tok, cfg)
    encoded = stream.STATS["encoded_docs"]
    c2, hit2 = stream.build_token_cache(str(src), tok, cfg)
    assert (hit1, hit2) == (False, True)
    assert stream.STATS["encoded_docs"] == encoded == before["encoded_docs"] + 300  # nothing encoded the 2nd time
    assert c1.path == c2.path
    # new content (same size) or another tokenizer: a new cache
    src.write_text(src.read_text().replace("lord", "LORD"))
    assert stream.build_token_cache(str(src), tok, cfg)[1] is False
    tok2 = train_tokenizer("byte-level-bpe", texts=make_text(100), vocab_size=300, min_frequency=1).tokenizer
    assert stream.build_token_cache(str(src), tok2, cfg)[1] is False


def test_crashed_build_resumes_where_it_stopped(tmp_path, tok):
    src = tmp_path / "c.txt"
    src.write_text("\n".join(make_text(2000, seed=10)) + "\n")
    cfg = _cfg(src)
    n_docs = len(read_corpus(str(src), cfg))
    before = dict(stream.STATS)
    # stop after ~half the input: a checkpoint every 10 kB, chunks of 2 kB
    cache, _ = stream.build_token_cache(str(src), tok, cfg, chunk=2000, checkpoint_bytes=10_000,
                                        stop_after_bytes=src.stat().st_size // 2)
    assert cache is None
    partial = list((stream.cache_root()).glob(".partial-*"))
    assert len(partial) == 1 and (partial[0] / "progress.json").exists()
    first = stream.STATS["encoded_docs"] - before["encoded_docs"]
    cache, hit = stream.build_token_cache(str(src), tok, cfg, chunk=2000, checkpoint_bytes=10_000)
    second = stream.STATS["encoded_docs"] - before["encoded_docs"] - first
    assert stream.STATS["resumed"] == before["resumed"] + 1
    # the resumed build encoded only what the crash left (plus less than one checkpoint interval again)
    assert second < n_docs * 0.6 and first + second >= n_docs
    _, flat = _in_memory(src, tok, cfg)
    np.testing.assert_array_equal(np.asarray(cache.tokens), flat)
    assert cache.n_docs == n_docs and not list(stream.cache_root().glob(".partial-*"))


def test_blocks_select_keep_remainder_and_iteration(tmp_path, tok):
    src = tmp_path / "c.txt"
    src.write_text("\n".join(make_text(200, seed=11)) + "\n")
    cache, _ = stream.build_token_cache(str(src), tok, _cfg(src))
    full = cache.blocks(40, keep_remainder=True)
    assert len(full) == -(-cache.n_tokens // 40) and full.lengths()[-1] == cache.n_tokens % 40
    sub = full.select(range(3, 6))
    assert len(sub) == 3 and sub[0] == full[3] and sub.lengths() == [40, 40, 40]
    cols = full[[0, 2]]
    assert cols["input_ids"] == [full[0]["input_ids"], full[2]["input_ids"]]
    seen = list(full.iter_blocks(seed=0))
    assert sorted(tuple(b["input_ids"]) for b in seen) == sorted(tuple(full[i]["input_ids"]) for i in range(len(full)))


def test_automatic_streaming_threshold(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("x" * 200_000)
    on, why = stream.should_stream(_cfg(src, streaming_threshold_mb=0.1), str(src))
    assert on and "above data.streaming_threshold_mb" in why
    on, _ = stream.should_stream(_cfg(src, streaming_threshold_mb=1.0), str(src))
    assert not on
    assert stream.should_stream(_cfg(src, streaming=False, streaming_threshold_mb=0.1), str(src))[0] is False


def test_prepare_then_train_starts_from_the_cache(tmp_path, capsys):
    from lmforge.api import train
    from lmforge.cli import main
    lines = make_text(1200, seed=12)
    (tmp_path / "train.txt").write_text("\n".join(lines[:1100]) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(lines[1100:]) + "\n")
    cfg = {"task": "causal-lm", "tokenizer": {"train": {"type": "byte-level-bpe", "vocab_size": 350}},
           "model": {"from_config": {"architecture": "gpt2", "n_layer": 1, "hidden_size": 32, "num_attention_heads": 2,
                                     "max_position_embeddings": 64}},
           "data": {"train": str(tmp_path / "train.txt"), "eval": str(tmp_path / "valid.txt"), "block_size": 32},
           "train": {"max_steps": 8, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "seed": 1,
                     "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no"},
           "output": {"output_dir": str(tmp_path / "run")}}
    import yaml
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["prepare", str(tmp_path / "cfg.yaml"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    n_tokens = int(out.split("train: ")[1].split(" tokens")[0].replace(",", ""))
    assert "1,100 documents" in out and "tokenized in" in out and n_tokens > 1100 * 10
    encoded = stream.STATS["encoded_docs"]
    assert main(["prepare", str(tmp_path / "cfg.yaml"), "--no-progress"]) == 0
    assert "cache hit, nothing tokenized" in capsys.readouterr().out
    hits = stream.STATS["hits"]
    res = train(cfg, progress=False)  # streaming not set and the data is small: the prepared cache is used
    assert stream.STATS["encoded_docs"] == encoded and stream.STATS["hits"] == hits + 1
    assert res.metrics["train"]["steps"] == 8
    assert res.metrics["eval"]["loss"] < res.metrics["before"]["loss"]


TRICKY = ["naïve café 🙂 — Ünïcode\ttabs\n\nand  double  spaces   ", "   lead", "数字 123 ²³ x_y __init__ it's I'M we'll",
          "a\u00a0b\u2003c", "<|endoftext|> inside a text", " ", "\r\n", "end.'s 'll", "ok" * 300]


def test_fast_byte_level_encoder_is_exact(tok):
    from lmforge.data import fastbpe
    assert fastbpe.supported(tok)
    enc = fastbpe.ByteLevelEncoder(tok.backend_tokenizer.to_str())
    texts = TRICKY + make_text(300, seed=13)
    for _ in range(2):  # cold and warm word table
        flat, lens = enc.encode(texts)
        ref = [tok(t)["input_ids"] for t in texts]
        assert lens.tolist() == [len(r) for r in ref]
        assert flat.tolist() == [t for r in ref for t in r]
    bpe = train_tokenizer("bpe", texts=make_text(), vocab_size=200, min_frequency=1).tokenizer
    wp = train_tokenizer("wordpiece", texts=make_text(), vocab_size=200, min_frequency=1).tokenizer
    assert not fastbpe.supported(bpe) and not fastbpe.supported(wp)  # other pipelines: the Rust encoder


def test_rust_encoder_path_matches_in_memory(tmp_path):
    bpe = train_tokenizer("unigram", texts=make_text(), vocab_size=200, min_frequency=1).tokenizer
    src = tmp_path / "c.txt"
    src.write_text("\n".join(make_text(300, seed=14)) + "\n")
    cfg = _cfg(src)
    cache, _ = stream.build_token_cache(str(src), bpe, cfg, chunk=4000)
    _, flat = _in_memory(src, bpe, cfg)
    np.testing.assert_array_equal(np.asarray(cache.tokens), flat)


def test_worker_processes_give_the_same_cache(tmp_path, tok, monkeypatch):
    src = tmp_path / "c.txt"
    src.write_text("\n".join(make_text(1500, seed=15)) + "\n")
    cfg = _cfg(src, num_proc=2)
    monkeypatch.setattr(encoders, "POOL_MIN_BYTES", 0)
    cache, _ = stream.build_token_cache(str(src), tok, cfg, chunk=5000)
    assert encoders.choose(tok, cfg, 10)[1] == 2
    _, flat = _in_memory(src, tok, cfg)
    np.testing.assert_array_equal(np.asarray(cache.tokens), flat)
    assert cache.n_docs == 1500


def test_worker_processes_do_not_rerun_an_unguarded_script(tmp_path, tok):
    """A user script without `if __name__ == "__main__":` must not run again in each spawned
    worker (it would re-run the whole job, and here wait forever on the cache lock)."""
    import os
    import subprocess
    import sys
    src, marker, tok_dir = tmp_path / "c.txt", tmp_path / "runs.txt", tmp_path / "tok"
    src.write_text("\n".join(make_text(600, seed=16)) + "\n")
    tok.save_pretrained(tok_dir)
    script = tmp_path / "unguarded.py"
    script.write_text(f"""
import json
open({str(marker)!r}, "a").write("ran\\n")
from transformers import AutoTokenizer
from lmforge.config import build_config
from lmforge.data import encoders, stream
encoders.POOL_MIN_BYTES = 0
encoders.WORKER_TASKS = 2  # workers are replaced (from the pool's own thread) several times
tok = AutoTokenizer.from_pretrained({str(tok_dir)!r})
cfg = build_config({{"task": "causal-lm", "data": {{"train": {str(src)!r}, "num_proc": 2}}}})
assert encoders.choose(tok, cfg, 10)[1] == 2
cache, hit = stream.build_token_cache({str(src)!r}, tok, cfg, chunk=3000)
print(json.dumps([int(x) for x in cache.tokens]))
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                         env=dict(os.environ, LMFORGE_CACHE=str(tmp_path / "cache")))
    assert out.returncode == 0, out.stderr[-2000:]
    assert marker.read_text() == "ran\n"  # once: the workers did not import the script
    _, flat = _in_memory(src, tok, _cfg(src))
    assert json.loads(out.stdout.strip().splitlines()[-1]) == flat.tolist()


def test_fast_encoder_segment_path_matches_on_random_texts(tok):
    """Random texts over an alphabet of the characters where the segment and regex paths could
    disagree with the real tokenizer: spaces (single, double, leading, trailing), other
    whitespace, apostrophes, digits, marks, separators, non-ASCII letters."""
    import random as _random
    from lmforge.data import fastbpe
    alphabet = ["a", "b", "the", "LORD", " ", " ", " ", "  ", "'", "'s", "'ll", "1", "23", ",", ".", "-", "_", "\t",
                "\n", "\xa0", "\x1c", "\x85", "\u2028", "é", "数", "²", "Ⅻ", "\u0301", "🙂", "\r"]
    rng = _random.Random(5)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(1500)]
    texts += ["a b", " a", "a ", " ", "", "it's", "'s x", "x 's", "x\x1cy z", "Ⅻ x", "e\u0301 x"]
    enc = fastbpe.ByteLevelEncoder(tok.backend_tokenizer.to_str())
    # a batch of only single-spaced texts is checked in one test of the whole batch: ASCII and not
    spaced = [t for t in texts if not any(c in t for c in ("  ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85",
                                                              "\xa0", "\u2028"))]
    ascii_spaced = [t for t in spaced if t.isascii()]
    assert len(ascii_spaced) > 100 and len(spaced) > len(ascii_spaced) + 100
    assert all(enc._spaced(spaced, "\x00".join(spaced))) and not all(enc._spaced(texts, "\x00".join(texts)))
    for batch in (texts, texts, spaced, ascii_spaced):  # cold and warm word table
        flat, lens = enc.encode(batch)
        ref = [tok(t)["input_ids"] for t in batch]
        assert lens.tolist() == [len(r) for r in ref]
        assert flat.tolist() == [t for r in ref for t in r]

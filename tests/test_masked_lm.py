"""Masked LM: masking statistics for WordPiece / BPE / Unigram tokenizers trained in-process,
fixed-mask eval perplexity, the masked-position loss, fill-mask, errors, and a run end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge import api
from lmforge.data import masking
from lmforge.errors import LmforgeError
from lmforge.tasks import masked_lm

SYLLABLES = "ka lo mi nu re sa ti vo ze pa du fe gi ho ju la me ni ro su".split()


def pseudo_corpus(n_lines: int = 300, seed: int = 0) -> list[str]:
    """Lines of invented multi-syllable words, so a small vocabulary splits most words into pieces."""
    rng = random.Random(seed)
    lexicon = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    return [" ".join(rng.choice(lexicon) for _ in range(rng.randint(4, 16))) + rng.choice([".", "", ","])
            for _ in range(n_lines)]


def train_tokenizer(kind: str, out: Path, lines: list[str]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials)
    elif kind == "bpe-bytelevel":  # RoBERTa / GPT-2 style: 'Ġ' marks a leading space
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "bpe-plain":  # BPE with no space markers at all: words come from the pre-tokenizer only
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=90, special_tokens=specials)
    elif kind in ("unigram", "unigram-nosplit"):  # SentencePiece style: '▁' marks a word start
        specials = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(split=(kind == "unigram"))
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=90, special_tokens=specials, unk_token="<unk>")
    else:
        raise ValueError(kind)
    tok.train_from_iterator(lines, trainer)
    bert_like = specials[0] == "[PAD]"
    cls, sep = ("[CLS]", "[SEP]") if bert_like else ("<s>", "</s>")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    names = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), specials)) if bert_like else \
        {"pad_token": specials[1] if kind == "bpe-bytelevel" else "<pad>", "unk_token": "<unk>", "cls_token": "<s>",
         "sep_token": "</s>", "bos_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=64, **names)
    fast.save_pretrained(out)
    return fast


KINDS = ["wordpiece", "bpe-bytelevel", "bpe-plain", "unigram", "unigram-nosplit"]


@pytest.fixture(scope="module")
def corpus():
    return pseudo_corpus()


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("toks")
    from transformers import AutoTokenizer
    out = {}
    for kind in KINDS:
        train_tokenizer(kind, root / kind, corpus)
        out[kind] = AutoTokenizer.from_pretrained(root / kind)  # what lmforge loads
    return out


def make_model(out: Path, tokenizer, arch: str = "bert", head: bool = True, seed: int = 0) -> Path:
    from transformers import (BertConfig, BertForMaskedLM, BertModel, DistilBertConfig, DistilBertForMaskedLM,
                              RobertaConfig, RobertaForMaskedLM)
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if arch == "bert":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64, **common)
        model = BertForMaskedLM(cfg) if head else BertModel(cfg, add_pooling_layer=False)
    elif arch == "roberta":
        cfg = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=66, **common)
        model = RobertaForMaskedLM(cfg)
    else:
        cfg = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, **common)
        model = DistilBertForMaskedLM(cfg)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def blocks_of(tokenizer, lines, block_size=32):
    ids, words, stats = masking.encode_blocks(lines, tokenizer, block_size, "drop")
    return ids, words, stats


# ----------------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("kind", KINDS)
def test_blocks_keep_every_token_and_words_never_span_documents(tokenizers, corpus, kind):
    tok = tokenizers[kind]
    lines = corpus[:60]
    ids, words, stats = masking.encode_blocks(lines, tok, 32, "pad")
    prefix, suffix = masking.special_wrap(tok)
    assert len(prefix) + len(suffix) == 2
    body = [i for b in ids for i in b[len(prefix):len(b) - len(suffix)]]
    per_doc = [tok(line, add_special_tokens=False)["input_ids"] for line in lines]
    sep = tok.sep_token_id
    expected = []
    for k, d in enumerate(per_doc):
        expected += ([sep] if k else []) + d
    assert body == expected  # nothing lost, nothing reordered (pad keeps the remainder)
    assert all(len(b) == 32 for b in ids[:-1]) and len(ids[-1]) <= 32
    # word ids: one per whitespace word of each document, never shared by two documents
    flat_words = [w for b in words for w in b[len(prefix):len(b) - len(suffix)]]
    # Metaspace (Unigram) splits on spaces only; the other pre-tokenizers split punctuation off too
    split = (lambda s: s.split()) if kind.startswith("unigram") else (lambda s: s.replace(",", " ,").replace(".", " .").split())
    assert stats["words"] == sum(len(split(line)) for line in lines)
    doc_of_word: dict[int, int] = {}
    doc = 0
    for t, w in zip(body, flat_words):
        if t == sep and w == -1:
            doc += 1
            continue
        assert w >= 0
        assert doc_of_word.setdefault(w, doc) == doc
    _, _, dropped = masking.encode_blocks(lines, tok, 32, "drop")
    assert dropped["dropped_tokens"] == len(expected) % 30 and dropped["blocks"] == len(expected) // 30


def test_offset_fallback_matches_real_word_ids(tokenizers, corpus):
    """A Unigram tokenizer that does not split words gets the same words from character offsets."""
    assert masking.word_ids_work(tokenizers["unigram"]) and not masking.word_ids_work(tokenizers["unigram-nosplit"])
    lines = corpus[:40]
    _, _, split = masking.encode_blocks(lines, tokenizers["unigram"], 32, "pad")
    _, _, offsets = masking.encode_blocks(lines, tokenizers["unigram-nosplit"], 32, "pad")
    assert offsets["word_ids_from_offsets"] and not split["word_ids_from_offsets"]
    assert offsets["words"] == split["words"] == sum(len(line.split()) for line in lines)


# ----------------------------------------------------------------------------------- masking
def many_masks(tok, corpus, whole_word, p=0.15, n_batches=40, seed=0):
    ids, words, _ = blocks_of(tok, corpus, 48)
    spec = masking.MaskSpec.of(tok, p, whole_word)
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        rows = [(ids[i], words[i]) for i in range((b * 16) % len(ids), min(len(ids), (b * 16) % len(ids) + 16))]
        m, lab, attn = masking.mask_rows([r[0] for r in rows], [r[1] for r in rows], spec, rng, tok.pad_token_id)
        orig = masking.pad_2d([r[0] for r in rows], tok.pad_token_id)
        w = masking.pad_2d([r[1] for r in rows], -1)
        out.append((orig, w, m, lab, attn))
    return spec, out


@pytest.mark.parametrize("kind", KINDS)
def test_whole_word_masks_every_piece_of_a_chosen_word_and_none_of_the_others(tokenizers, corpus, kind):
    tok = tokenizers[kind]
    spec, batches = many_masks(tok, corpus, whole_word=True, n_batches=10)
    multi, chosen_words = 0, 0
    for orig, w, m, lab, attn in batches:
        for r in range(orig.shape[0]):
            for word in set(w[r].tolist()) - {-1}:
                pos = np.flatnonzero(w[r] == word)
                picked = lab[r, pos] != masking.IGNORE
                assert picked.all() or not picked.any()  # all pieces or none
                multi += len(pos) > 1
                if picked.all():
                    chosen_words += 1
                    assert (lab[r, pos] == orig[r, pos]).all()
                    # 80/10/10 is decided per word: either every piece is the mask token or none is
                    is_mask = m[r, pos] == spec.mask_id
                    assert is_mask.all() or not is_mask.any()
                else:
                    assert (m[r, pos] == orig[r, pos]).all()
    assert multi > 200 and chosen_words > 100  # the test saw many multi-piece words


@pytest.mark.parametrize("kind,whole", [("wordpiece", False), ("wordpiece", True), ("bpe-bytelevel", False),
                                        ("bpe-bytelevel", True), ("unigram", True), ("bpe-plain", True)])
def test_masking_rate_and_80_10_10(tokenizers, corpus, kind, whole):
    tok = tokenizers[kind]
    spec, batches = many_masks(tok, corpus, whole_word=whole, n_batches=60, seed=3)
    special = set(spec.special.tolist())
    maskable = labelled = n_mask = n_same = n_random = 0
    for orig, w, m, lab, attn in batches:
        sel = lab != masking.IGNORE
        ok = attn.astype(bool) & ~np.isin(orig, list(special))
        maskable += ok.sum()
        labelled += sel.sum()
        assert not (sel & ~ok).any()  # special tokens and padding are never labels
        assert (m[~sel] == orig[~sel]).all()  # unchosen positions are untouched
        n_mask += (m[sel] == spec.mask_id).sum()
        n_same += (m[sel] == orig[sel]).sum()
        rand = sel & (m != spec.mask_id) & (m != orig)
        n_random += rand.sum()
        assert not np.isin(m[rand], list(special)).any()  # random replacements are real tokens
    rate = labelled / maskable
    assert abs(rate - 0.15) < 0.012, rate
    # per word for whole-word masking: shares of tokens fluctuate more than per-token shares
    tol = 0.04 if whole else 0.02
    assert abs(n_mask / labelled - 0.8) < tol and abs(n_random / labelled - 0.1) < tol
    assert abs(n_same / labelled - 0.1) < tol + 1.0 / len(spec.pool)


def test_other_probability_is_respected(tokenizers, corpus):
    spec, batches = many_masks(tokenizers["wordpiece"], corpus, whole_word=False, p=0.4, n_batches=30)
    lab = np.concatenate([(b[3] != masking.IGNORE).ravel() for b in batches])
    ok = np.concatenate([(b[4].astype(bool) & ~np.isin(b[0], spec.special)).ravel() for b in batches])
    assert abs(lab.sum() / ok.sum() - 0.4) < 0.015


def test_train_masks_are_a_function_of_the_seed(tokenizers, corpus):
    tok = tokenizers["wordpiece"]
    ids, words, _ = blocks_of(tok, corpus)
    rows = [{"input_ids": i, "word_ids": w} for i, w in zip(ids[:8], words[:8])]
    collate = masked_lm.make_train_collate(masking.MaskSpec.of(tok, 0.15, True), tok.pad_token_id)
    a, b, c = collate(rows, 11), collate(rows, 11), collate(rows, 12)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])
    assert a["n_items"] == int((a["labels"] != -100).sum()) > 0
    assert a["n_tokens"] == sum(len(r["input_ids"]) for r in rows)


def test_fixed_eval_mask_does_not_depend_on_how_many_rows_are_kept(tokenizers, corpus):
    tok = tokenizers["bpe-bytelevel"]
    ids, words, _ = blocks_of(tok, corpus)
    spec = masking.MaskSpec.of(tok, 0.15, False)
    full = masking.mask_fixed(ids, None, spec, 5, tok.pad_token_id)
    part = masking.mask_fixed(ids[:7], None, spec, 5, tok.pad_token_id)
    other = masking.mask_fixed(ids[:7], None, spec, 6, tok.pad_token_id)
    assert full[1][:7] == part[1] and full[0][:7] == part[0]
    assert other[1] != part[1]


# ----------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("arch,kind", [("bert", "wordpiece"), ("roberta", "bpe-bytelevel"), ("distilbert", "unigram")])
def test_masked_position_loss_equals_full_cross_entropy(tmp_path, tokenizers, corpus, arch, kind):
    from transformers import AutoModelForMaskedLM
    tok = tokenizers[kind]
    model = AutoModelForMaskedLM.from_pretrained(make_model(tmp_path / arch, tok, arch)).eval()
    ids, words, _ = blocks_of(tok, corpus)
    rows = [{"input_ids": i, "word_ids": w} for i, w in zip(ids[:6], words[:6])]
    rows[-1] = {"input_ids": rows[-1]["input_ids"][:20], "word_ids": rows[-1]["word_ids"][:20]}  # padding too
    batch = masked_lm.make_train_collate(masking.MaskSpec.of(tok, 0.15, False), tok.pad_token_id)(rows, 3)
    assert masked_lm._unwrapped_head(model) is not None  # the fast path is the one tested
    with torch.no_grad():
        ours = masked_lm.loss_fn(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), reduction="sum")
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-4), (ours, ref)


# ----------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def mlm_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlm-data")
    (d / "train.txt").write_text("\n".join(pseudo_corpus(400, seed=1)) + "\n")
    (d / "valid.txt").write_text("\n".join(pseudo_corpus(60, seed=2)) + "\n")
    return d


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, tokenizers):
    return make_model(tmp_path_factory.mktemp("mlm-bert"), tokenizers["wordpiece"], "bert")


def mlm_config(data: Path, model: Path, out: Path, **data_kw) -> dict:
    d = {"train": str(data / "train.txt"), "eval": str(data / "valid.txt"), "block_size": 32,
         "masking": "whole-word", "mlm_probability": 0.15}
    d.update(data_kw)
    return {"task": "masked-lm", "model": {"name": str(model)}, "data": d,
            "train": {"max_steps": 30, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "seed": 1,
                      "logging_steps": 5, "eval_strategy": "no", "save_strategy": "no"},
            "output": {"output_dir": str(out)}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlm_data, bert_dir):
    out = tmp_path_factory.mktemp("mlm-runs")
    return api.train(mlm_config(mlm_data, bert_dir, out / "run"), progress=False)


def test_training_lowers_fixed_mask_perplexity(trained):
    m = trained.metrics
    assert m["before"]["n_masked"] == m["eval"]["n_masked"] > 100  # the same masked tokens before and after
    assert m["eval"]["perplexity"] < 0.6 * m["before"]["perplexity"]
    saved = json.loads((trained.run_dir / "metrics.json").read_text())
    assert saved["eval"]["perplexity"] == pytest.approx(m["eval"]["perplexity"])
    from transformers import AutoModelForMaskedLM
    AutoModelForMaskedLM.from_pretrained(trained.run_dir / "model")  # plain transformers reloads it


def test_eval_perplexity_is_reproducible_and_follows_the_eval_seed(tmp_path, mlm_data, bert_dir, trained):
    from lmforge.config import build_config
    base = mlm_config(mlm_data, bert_dir, tmp_path / "x", max_eval_samples=40)

    def before(**kw):
        cfg = dict(base, data=dict(base["data"], **kw))
        prep = masked_lm.TASK.setup(build_config(cfg))
        from lmforge.train.evaluation import evaluate_split
        return evaluate_split(prep.model, prep.eval, prep, 16)

    a, b, c = before(), before(), before(eval_mask_seed=1)
    assert a["perplexity"] == b["perplexity"] and a["n_masked"] == b["n_masked"]
    assert c["perplexity"] != a["perplexity"]
    # the finished run's eval number is reproduced by `lmforge eval` with the run's settings
    again = api.evaluate(trained.run_dir, str(mlm_data / "valid.txt"), progress=False)
    assert again["perplexity"] == pytest.approx(trained.metrics["eval"]["perplexity"], rel=1e-6)


def test_missing_head_is_said_once_and_gets_the_head_learning_rate(tmp_path, mlm_data, tokenizers):
    from lmforge.config import build_config
    body = make_model(tmp_path / "body", tokenizers["wordpiece"], "bert", head=False)
    cfg = build_config(mlm_config(mlm_data, body, tmp_path / "r"))
    prep = masked_lm.TASK.setup(cfg)
    assert len(prep.notes) == 3 and "no trained masked-LM head" in prep.notes[0]
    assert "log unigram frequencies" in prep.notes[1] and "head_learning_rate" in prep.notes[2]
    # the new output bias starts at log p(token) of the training blocks: it sums to 1 as a distribution
    bias = prep.model.cls.predictions.bias.detach().double()
    assert float(torch.logsumexp(bias, 0)) == pytest.approx(0.0, abs=1e-5)
    counts = np.bincount(np.concatenate([np.asarray(r) for r in prep.train.rows["input_ids"]]), minlength=len(bias))
    counts[masking.special_ids(prep.tokenizer)] = 0
    assert int(bias.argmax()) == int(counts.argmax())
    assert "cls.predictions.transform.dense" in prep.notes[0] and "tied" in prep.notes[0]
    assert {"cls.predictions.bias", "cls.predictions.transform.dense.weight"} <= prep.new_param_names
    assert cfg.train.head_learning_rate is None  # the config is not changed; the task says the head's rate
    assert prep.head_learning_rate == pytest.approx(3e-3 * masked_lm.HEAD_LR_FACTOR)
    from lmforge.train.schedule import param_groups
    lrs = {g["lr"] for g in param_groups(prep.model, cfg.train, prep.new_param_names, prep.head_learning_rate)}
    assert lrs == {3e-3, 3e-3 * masked_lm.HEAD_LR_FACTOR}


def test_fill_mask_returns_the_models_argmax(trained, tokenizers):
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    d = trained.run_dir / "model"
    model = AutoModelForMaskedLM.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    texts = ["kalo [MASK] mire sati.", "<mask> nu re [MASK] ti vo"]
    res = api.fill_mask(trained.run_dir, texts, top_k=3)
    for text, r in zip(texts, res):
        enc = tok(text.replace("<mask>", "[MASK]"), return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits[0], -1)
        pos = (enc["input_ids"][0] == tok.mask_token_id).nonzero().flatten()
        assert len(r["masks"]) == len(pos)
        for m, p in zip(r["masks"], pos):
            assert m["candidates"][0]["token_id"] == int(probs[p].argmax())
            assert m["candidates"][0]["score"] == pytest.approx(float(probs[p].max()), rel=1e-4)
            scores = [c["score"] for c in m["candidates"]]
            assert scores == sorted(scores, reverse=True) and len(scores) == 3


def test_fill_mask_cli_file_batch_and_errors(trained, tmp_path, capsys):
    from lmforge.cli import main
    inp = tmp_path / "in.txt"
    inp.write_text("kalo [MASK] mire.\nsa <mask> ti\n")
    out = tmp_path / "out.jsonl"
    assert main(["fill-mask", str(trained.run_dir), "--input", str(inp), "--output", str(out), "--top-k", "2"]) == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["masks"][0]["candidates"]) == 2 for r in rows)
    capsys.readouterr()
    assert main(["fill-mask", str(trained.run_dir), "no mask in this text"]) == 2
    err = capsys.readouterr().err
    assert "has no mask token" in err and "Traceback" not in err


def test_errors_causal_model_and_model_without_mask_token(tmp_path, mlm_data, tokenizers):
    from transformers import GPT2Config, GPT2LMHeadModel
    from lmforge.config import build_config
    gpt = tmp_path / "gpt"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizers["bpe-bytelevel"]),
                               n_positions=64)).save_pretrained(gpt)
    tokenizers["bpe-bytelevel"].save_pretrained(gpt)
    with pytest.raises(LmforgeError, match="causal .* cannot be trained as a masked language model"):
        masked_lm.TASK.setup(build_config(mlm_config(mlm_data, gpt, tmp_path / "r1")))
    nomask = make_model(tmp_path / "nomask", tokenizers["wordpiece"], "bert")
    cfg_path = nomask / "tokenizer_config.json"
    tc = json.loads(cfg_path.read_text())
    tc.pop("mask_token", None)
    cfg_path.write_text(json.dumps(tc))
    with pytest.raises(LmforgeError, match="has no mask token"):
        masked_lm.TASK.setup(build_config(mlm_config(mlm_data, nomask, tmp_path / "r2")))


def test_the_issue_config_works_as_written(tmp_path, mlm_data, tiny_bert):
    import yaml
    from lmforge.config import load_config
    text = f"""
task: masked-lm
model: {{name: {tiny_bert}}}
data: {{train: {mlm_data / 'train.txt'}, eval: {mlm_data / 'valid.txt'}, block_size: 128, masking: whole-word, mlm_probability: 0.15}}
train: {{max_steps: 300, learning_rate: 5.0e-5, per_device_train_batch_size: 32, seed: 1}}
output: {{output_dir: {tmp_path / 'mlm'}}}
"""
    (tmp_path / "c.yaml").write_text(text)
    cfg = load_config(tmp_path / "c.yaml")
    assert yaml.safe_load(text)["data"]["masking"] == cfg.data.masking == "whole-word"
    prep = masked_lm.TASK.setup(cfg)
    assert prep.summary["block_size"] == 128 and max(prep.train.lengths) == 128
    batch = prep.train_collate(prep.train.take(list(range(4))), 0)
    assert batch["input_ids"].shape == (4, 128) and batch["n_items"] > 0


def test_masked_lm_from_config_with_a_tokenizer_folder(tmp_path, mlm_data, tokenizers):
    tokenizers["wordpiece"].save_pretrained(tmp_path / "tok")
    cfg = mlm_config(mlm_data, tmp_path, tmp_path / "scratch")
    cfg["model"] = {"from_config": {"architecture": "bert", "num_hidden_layers": 1, "hidden_size": 32,
                                    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}}
    cfg["tokenizer"] = {"name": str(tmp_path / "tok")}
    cfg["train"].update(max_steps=20, learning_rate=5e-3)
    res = api.train(cfg, progress=False)
    assert res.metrics["eval"]["loss"] < res.metrics["before"]["loss"] - 0.5


def test_error_when_the_corpus_is_shorter_than_one_block(tmp_path, mlm_data, bert_dir):
    from lmforge.config import build_config
    (tmp_path / "short.txt").write_text("kalo mire\nsati\n")
    cfg = mlm_config(mlm_data, bert_dir, tmp_path / "r", train=str(tmp_path / "short.txt"))
    with pytest.raises(LmforgeError, match="shorter than one block of 32 tokens"):
        masked_lm.TASK.setup(build_config(cfg))
    cfg["data"]["remainder"] = "pad"  # keeping the short block makes it trainable
    assert len(masked_lm.TASK.setup(build_config(cfg)).train) == 1


def test_mfu_counts_the_output_layer_at_the_masked_share(tiny_bert):
    """masked-lm runs its output layer only at masked positions: MFU's parameter count says so."""
    from transformers import AutoModelForMaskedLM
    from lmforge.config import build_config
    from lmforge.train.perf import matmul_params, task_flop_params
    model = AutoModelForMaskedLM.from_pretrained(tiny_bert)
    head = model.get_output_embeddings().weight.numel()
    cfg = build_config({"task": "masked-lm", "data": {"train": "x.txt", "mlm_probability": 0.2}})
    assert task_flop_params(model, cfg.data.mlm_probability) == matmul_params(model) - round(head * 0.8)
    assert task_flop_params(model) == matmul_params(model)

"""Distillation (task: distill): the divergences by hand, the top-k cache against the same restriction on the fly, a
student built from every other teacher layer, learning from a toy teacher, on-policy batches, exact resume and the
tokenizer check."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge import api
from lmforge.errors import LmforgeError
from lmforge.tasks.distill_loss import distill_loss, divergence
from test_causal_lm import make_tiny, toy_docs, train_bpe

P = [0.5, 0.3, 0.2]  # teacher
Q = [0.2, 0.2, 0.6]  # student


def _kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


@pytest.mark.parametrize("loss,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("gjsd", 0.0), ("gjsd", 0.5),
                                       ("gjsd", 1.0), ("gjsd", 0.3)])
def test_divergences_equal_hand_computed_values(loss, beta):
    s, t = torch.tensor([Q], dtype=torch.float64).log(), torch.tensor([P], dtype=torch.float64).log()
    got = float(divergence(s, t, loss, beta)[0])
    if loss == "forward_kl" or (loss == "gjsd" and beta == 0):
        want = _kl(P, Q)
    elif loss == "reverse_kl" or (loss == "gjsd" and beta == 1):
        want = _kl(Q, P)
    else:
        m = [beta * p + (1 - beta) * q for p, q in zip(P, Q)]
        want = beta * _kl(P, m) + (1 - beta) * _kl(Q, m)
    assert got == pytest.approx(want, abs=1e-9)
    if loss == "gjsd" and beta in (0.0, 1.0):  # the two ends are the two KLs
        other = "forward_kl" if beta == 0 else "reverse_kl"
        assert got == pytest.approx(float(divergence(s, t, other)[0]), abs=1e-12)


def test_temperature_softens_both_sides():
    s, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[1.0, 0.5, 0.0]])
    got = float(distill_loss(s, t, "forward_kl", 0.5, 2.0))
    want = _kl(torch.softmax(t[0] / 2, 0).tolist(), torch.softmax(s[0] / 2, 0).tolist())
    assert got == pytest.approx(want, abs=1e-6)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-layer Llama trained briefly on the toy corpus (a teacher with something to teach)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import FILLER, WORDS_NEG, WORDS_POS
    d = tmp_path_factory.mktemp("teacher")
    tok = train_bpe(d / "init", toy_docs(300, seed=3) + [" ".join(WORDS_POS + WORDS_NEG + FILLER)])
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                 eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                                 tie_word_embeddings=False)).save_pretrained(d / "init")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(toy_docs(300, seed=3)))
    import conftest
    with pytest.MonkeyPatch.context() as mp:
        conftest._use_test_cache(tmp_path_factory, mp)
        api.train({"task": "causal-lm", "model": {"name": str(d / "init")},
                   "data": {"train": str(corpus), "block_size": 32},
                   "train": {"max_steps": 60, "learning_rate": 3e-3, "per_device_train_batch_size": 16, "seed": 1,
                             "eval_strategy": "no", "save_strategy": "no"},
                   "output": {"output_dir": str(d / "run")}}, progress=False)
    return d


def distill_config(teacher, out, **kw) -> dict:
    d = {"teacher": str(teacher / "run"), "student": {"from_teacher": {"layers": "every_other"}}}
    d.update(kw)
    return {"task": "distill", "distill": d,
            "data": {"train": str(teacher / "corpus.txt"), "block_size": 32, "max_eval_blocks": 16},
            "train": {"max_steps": 20, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "seed": 2,
                      "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no"},
            "output": {"output_dir": str(out)}}


def test_a_student_from_every_other_layer_has_exactly_those_weights(teacher, tmp_path):
    from safetensors.torch import load_file

    from lmforge.tasks.distill import build_student
    keep = build_student(str(teacher / "run" / "model"), "every_other", tmp_path / "s")
    assert keep == [0, 2]
    t = load_file(str(teacher / "run" / "model" / "model.safetensors"))
    s = load_file(str(tmp_path / "s" / "model.safetensors"))
    assert json.loads((tmp_path / "s" / "config.json").read_text())["num_hidden_layers"] == 2
    for k, v in s.items():
        src = k
        if k.startswith("model.layers."):
            i, rest = k[len("model.layers."):].split(".", 1)
            src = f"model.layers.{keep[int(i)]}.{rest}"
        assert torch.equal(v, t[src]), k
    assert {k for k in t if k.startswith("model.layers.1.") or k.startswith("model.layers.3.")}  # dropped ones exist
    assert not any(k.startswith(("model.layers.2.", "model.layers.3.")) for k in s)


def _kl_to_teacher(teacher_dir, student_dir, docs) -> float:
    """Mean per-token KL(teacher || student) on held-out text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    t = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    s = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor([tok(doc)["input_ids"][:32]])
            lt, ls = t(input_ids=ids).logits[0].log_softmax(-1), s(input_ids=ids).logits[0].log_softmax(-1)
            total += float((lt.exp() * (lt - ls)).sum())
            n += ids.shape[1]
    return total / n


def test_distillation_lowers_the_kl_to_the_teacher_and_beats_plain_training(teacher, tmp_path):
    held = toy_docs(20, seed=11)
    runs = {}
    for name, alpha in (("distill", 1.0), ("plain", 0.0)):
        runs[name] = api.train(distill_config(teacher, tmp_path / name, alpha=alpha), progress=False).run_dir
    from lmforge.tasks.distill import student_folder
    init, _ = student_folder(str(teacher / "run" / "model"), "every_other", __import__("logging").getLogger("t"))
    before = _kl_to_teacher(teacher / "run" / "model", init, held)
    after = _kl_to_teacher(teacher / "run" / "model", runs["distill"] / "model", held)
    plain = _kl_to_teacher(teacher / "run" / "model", runs["plain"] / "model", held)
    assert after < 0.7 * before, (before, after)
    assert after < plain, (after, plain)
    log = [json.loads(x) for x in (runs["distill"] / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r][:20]
    assert losses[-1] < losses[0]


def test_the_topk_cache_gives_the_loss_of_the_same_restriction_on_the_fly(teacher, tmp_path):
    cfg_fly = distill_config(teacher, tmp_path / "fly", top_k=5, loss="gjsd", beta=0.3, temperature=2.0)
    cfg_cache = distill_config(teacher, tmp_path / "cache", top_k=5, loss="gjsd", beta=0.3, temperature=2.0,
                               cache=True)
    fly = api.train(cfg_fly, progress=False).run_dir
    cached = api.train(cfg_cache, progress=False).run_dir
    a = [json.loads(x)["loss"] for x in (fly / "log.jsonl").read_text().splitlines() if '"loss"' in x]
    b = [json.loads(x)["loss"] for x in (cached / "log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(a) == len(b) == 20
    assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert "MB on disk" in (cached / "train.log").read_text()


def test_on_policy_batches_are_the_students_samples(teacher, tmp_path):
    run = api.train(distill_config(teacher, tmp_path / "gkd", lmbda=1.0, max_new_tokens=8, temperature=1.0),
                    progress=False).run_dir
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(log) == 20 and all(math.isfinite(r["loss"]) for r in log)
    assert log[-1]["loss"] < log[0]["loss"]


def test_distill_runs_resume_exactly(teacher, tmp_path, monkeypatch):
    from test_resume import assert_same_run, crashed_then_resumed

    def cfg(out):
        c = distill_config(teacher, out, alpha=0.5, lmbda=0.5, max_new_tokens=4)
        c["train"].update(max_steps=8, save_strategy="steps", save_steps=3, eval_strategy="steps", eval_steps=4,
                          logging_steps=2)
        return c
    ref, run = crashed_then_resumed(cfg, tmp_path, monkeypatch, 5)
    assert_same_run(ref, run)


def test_a_student_with_another_tokenizer_is_refused(teacher, tmp_path):
    other = tmp_path / "other"
    make_tiny(other, "llama")
    train_bpe(other, ["completely different words here " * 3, "zebra quantum violin"] * 20, vocab_size=120)
    cfg = distill_config(teacher, tmp_path / "x")
    del cfg["distill"]["student"]
    cfg["model"] = {"name": str(other)}
    with pytest.raises(LmforgeError, match=r"teacher .*vocabulary of [\d,]+ tokens.* student .*[\d,]+ tokens"):
        api.train(cfg, progress=False)


def test_conversations_distil_the_assistant_tokens_only(tmp_path):
    """Conversation data: the student is set up as sft sets it up (assistant tokens are the targets), and the
    distillation loss counts exactly those tokens."""
    from test_sft import CHATML, CONV, tiny_chat_model  # noqa: F401

    from lmforge.tokenizer import train_tokenizer
    tok = train_tokenizer("byte-level-bpe", texts=[m["content"] for m in CONV] * 20, vocab_size=300,
                          min_frequency=1, special_tokens=["<|im_start|>", "<|im_end|>", "</s>"]).tokenizer
    tok.eos_token, tok.pad_token, tok.chat_template = "</s>", "</s>", CHATML
    from transformers import GPT2Config, GPT2LMHeadModel
    teacher = tmp_path / "teacher"
    tok.save_pretrained(teacher)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=4, n_embd=32, n_head=2, n_positions=256, resid_pdrop=0,
                               embd_pdrop=0, attn_pdrop=0, eos_token_id=tok.eos_token_id,
                               bos_token_id=tok.eos_token_id)).save_pretrained(teacher)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": CONV}) + "\n" for _ in range(24)))
    cfg = {"task": "distill", "distill": {"teacher": str(teacher), "student": {"from_teacher": {"layers": [0, 3]}},
                                          "alpha": 0.5, "loss": "reverse_kl"},
           "data": {"train": str(data), "block_size": 128, "packing": "truncate"},
           "train": {"max_steps": 4, "learning_rate": 3e-3, "per_device_train_batch_size": 4, "seed": 2,
                     "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no"},
           "output": {"output_dir": str(tmp_path / "run")}}
    res = api.train(cfg, progress=False)
    summary = json.loads((res.run_dir / "manifest.json").read_text())
    assert json.loads((res.run_dir / "model" / "config.json").read_text())["n_layer"] == 2
    log = [json.loads(x) for x in (res.run_dir / "log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(log) == 4 and all(math.isfinite(r["loss"]) for r in log)
    assert '"data_task": "sft"' in json.dumps(summary)
    # the targets are the assistant tokens of the sft mask: the same batch through sft's setup counts the same items
    from lmforge.config import build_config
    from lmforge.tasks import get_task
    sft_cfg = build_config({**cfg, "task": "sft", "distill": {}, "model": {"name": str(res.run_dir / "model")}})
    parts = get_task("sft").setup(sft_cfg)
    batch = parts.collate(parts.train.take([0]))
    targets = batch["labels"][:, 1:] != -100
    ids = batch["input_ids"][0, 1:][targets[0]].tolist()
    assert int(batch["n_items"]) == int(targets.sum()) and "You" in tok.decode(ids)
    assert "rewrite old English" not in tok.decode(ids)  # the system turn is never a target

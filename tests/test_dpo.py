"""Preference tuning: the four losses equal their formulas; at step 0 with the reference equal to the policy
DPO's loss is log 2 and every reward 0; the shared-prompt row scores exactly as two separate sequences; the
cached reference equals a fresh computation; LoRA's adapter-disabled reference equals the base model; a
learnable toy preference is learnt; data shapes, dropped pairs and unusable data; exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge import api
from lmforge.cli import main
from lmforge.config import build_config
from lmforge.errors import LmforgeError
from lmforge.data.preference import read_pairs
from lmforge.tasks import dpo
from lmforge.tasks.chat_template import CHATML
from lmforge.tasks.preference_loss import preference_loss
from lmforge.tokenizer import train_tokenizer

SPECIALS = ["<|im_start|>", "<|im_end|>", "</s>"]
WORDS = "thou art kind you are and he saith says unto to them old english rewrite the of a yes no maybe".split()


# ----------------------------------------------------------------------------------- the formulas
def _direct(kind, beta, pc, pr, nc, nr, rc, rr, eps=0.0, gamma=0.5):
    """One pair's loss from the papers' formulas, in plain floats."""
    ls = lambda z: -math.log1p(math.exp(-z))  # noqa: E731 - log sigmoid
    if kind == "sigmoid":
        z = beta * ((pc - rc) - (pr - rr))
        return -(1 - eps) * ls(z) - eps * ls(-z)
    if kind == "ipo":
        return (((pc - rc) / nc - (pr - rr) / nr) - 1 / (2 * beta)) ** 2
    if kind == "simpo":
        z = beta * (pc / nc - pr / nr) - gamma
        return -(1 - eps) * ls(z) - eps * ls(-z)
    c, r = pc / nc, pr / nr
    log_odds = (c - r) - (math.log(1 - math.exp(c)) - math.log(1 - math.exp(r)))
    return -c - beta * ls(log_odds)


@pytest.mark.parametrize("kind", ["sigmoid", "ipo", "simpo", "orpo"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_losses_equal_their_formulas(kind, eps):
    pc = torch.tensor([-12.5, -30.0, -4.25, -50.0], dtype=torch.float64)
    pr = torch.tensor([-14.0, -22.5, -4.0, -61.0], dtype=torch.float64)
    nc, nr = torch.tensor([5, 12, 2, 20]), torch.tensor([6, 9, 3, 25])
    rc = torch.tensor([-13.0, -29.0, -5.0, -49.5], dtype=torch.float64)
    rr = torch.tensor([-13.5, -23.0, -4.5, -60.0], dtype=torch.float64)
    beta = 0.3
    losses, c, r = preference_loss(kind, beta, pc, pr, nc, nr, rc, rr, label_smoothing=eps if kind != "ipo" else 0,
                                   simpo_gamma=0.7)
    for i in range(4):
        want = _direct(kind, beta, float(pc[i]), float(pr[i]), int(nc[i]), int(nr[i]), float(rc[i]), float(rr[i]),
                       eps if kind in ("sigmoid", "simpo") else 0.0, 0.7)
        assert float(losses[i]) == pytest.approx(want, abs=1e-6)
    if kind == "sigmoid":
        assert torch.allclose(c, beta * (pc - rc)) and torch.allclose(r, beta * (pr - rr))


# ----------------------------------------------------------------------------------- a tiny model
@pytest.fixture(scope="module")
def tok():
    texts = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(10)) for i in range(300)]
    t = train_tokenizer("byte-level-bpe", texts=texts, vocab_size=400, min_frequency=1,
                        special_tokens=SPECIALS).tokenizer
    t.eos_token = "</s>"
    t.pad_token = "</s>"
    t.chat_template = CHATML
    return t


@pytest.fixture(scope="module")
def tiny_llama(tok, tmp_path_factory):
    """A 2-layer Llama folder (the architecture of smollm2) with the test tokenizer and ChatML."""
    from transformers import LlamaConfig, LlamaForCausalLM
    d = tmp_path_factory.mktemp("tiny-llama")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(d)
    return d


def _load(d):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def _pairs_jsonl(path, n: int, marker: bool = True):
    """A learnable preference: the chosen reply contains the word 'kind', the rejected one does not."""
    rows = []
    for i in range(n):
        a, b = WORDS[i % 7], WORDS[(i * 3) % 11]
        rows.append({"prompt": f"he saith {a} {b}", "chosen": f"you are kind {a}" if marker else f"you are {a}",
                     "rejected": f"you are old {b}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _direct_logps(model, row: dict) -> list[float]:
    """Sum of log p(reply token | prompt, earlier reply tokens), each side run alone."""
    out = []
    for side in ("chosen", "rejected"):
        prompt = row.get("prompt_rejected", row["prompt"]) if side == "rejected" else row["prompt"]
        ids = torch.tensor([prompt + row[side]])
        with torch.no_grad():
            lp = model(input_ids=ids).logits[0].float().log_softmax(-1)
        out.append(sum(float(lp[len(prompt) + k - 1, t]) for k, (t, s)
                       in enumerate(zip(row[side], row[side + "_scored"])) if s))
    return out


def test_shared_prompt_row_scores_like_separate_sequences(tiny_llama, tmp_path):
    model, t = _load(tiny_llama)
    cfg = build_config({"task": "dpo"})
    pairs = read_pairs(str(_pairs_jsonl(tmp_path / "p.jsonl", 6)), cfg)
    enc = dpo.encode_pairs(pairs, t, 64, 128)
    assert dpo.probe_shared_layout(model, t.pad_token_id)
    want = torch.tensor([_direct_logps(model, r) for r in enc.rows])
    for layout in ("shared", "rows"):
        batch = dpo.make_collate(t.pad_token_id, layout)(enc.rows)
        with torch.no_grad():
            got, counts = dpo.sequence_logps(model, batch)
        assert torch.allclose(got, want, atol=1e-5), layout
        assert counts.tolist() == [[sum(r["chosen_scored"]), sum(r["rejected_scored"])] for r in enc.rows]
    shared = dpo.make_collate(t.pad_token_id, "shared")(enc.rows)
    assert shared["input_ids"].numel() < dpo.make_collate(t.pad_token_id, "rows")(enc.rows)["input_ids"].numel()
    # the scored tokens are the replies' content and end-of-turn token, nothing of the prompt
    row = enc.rows[0]
    assert t.decode(row["chosen"]) == "you are kind thou<|im_end|>" and all(row["chosen_scored"])
    assert t.decode(row["prompt"]).endswith("<|im_start|>assistant\n")


def test_cached_reference_equals_a_fresh_computation(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    model, t = _load(tiny_llama)
    pairs = read_pairs(str(_pairs_jsonl(tmp_path / "p.jsonl", 9)), build_config({"task": "dpo"}))
    enc = dpo.encode_pairs(pairs, t, 64, 128)
    collate = dpo.make_collate(t.pad_token_id, "shared")
    secs, hit = dpo.attach_reference(model, enc.rows, collate, 4)
    assert not hit
    fresh = [r.pop("ref") for r in enc.rows]
    assert torch.allclose(torch.tensor(fresh, dtype=torch.float64), torch.tensor([_direct_logps(model, r) for r in enc.rows],
                                                            dtype=torch.float64), atol=1e-5)
    _, hit = dpo.attach_reference(model, enc.rows, collate, 4)
    assert hit and [r["ref"] for r in enc.rows] == fresh
    with torch.no_grad():  # other weights: another cache entry, not the old numbers
        model.lm_head.weight.mul_(1.5) if not model.config.tie_word_embeddings else model.model.embed_tokens.weight.mul_(1.5)
    _, hit = dpo.attach_reference(model, enc.rows, collate, 4)
    assert not hit and [r["ref"] for r in enc.rows] != fresh


def test_lora_reference_with_the_adapter_disabled_is_the_base_model(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    model, t = _load(tiny_llama)
    pairs = read_pairs(str(_pairs_jsonl(tmp_path / "p.jsonl", 5)), build_config({"task": "dpo"}))
    enc = dpo.encode_pairs(pairs, t, 64, 128)
    batch = dpo.make_collate(t.pad_token_id, "shared")(enc.rows)
    with torch.no_grad():
        base = dpo.sequence_logps(model, batch)[0]
    # as in training: the plain model with LoRA layers injected (peft mutates it in place)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    peft_model = peft_model.base_model.model
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: the policy moved away from the base
        policy = dpo.sequence_logps(peft_model, batch)[0]
    ref = dpo.reference_logps(peft_model, batch, "adapter")
    assert not torch.allclose(policy, base, atol=1e-3)
    assert torch.allclose(ref, base, atol=1e-6)


def test_identical_pairs_are_dropped_and_counted_and_all_identical_is_exit_2(tiny_llama, tmp_path, capsys):
    model, t = _load(tiny_llama)
    rows = [{"prompt": "he saith", "chosen": "you are kind", "rejected": "you are kind"},
            {"prompt": "he saith", "chosen": "you are kind", "rejected": "you are old"}]
    f = tmp_path / "same.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    enc = dpo.encode_pairs(read_pairs(str(f), build_config({"task": "dpo"})), t, 64, 128)
    assert len(enc.rows) == 1 and enc.identical == 1
    f.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: dpo\nmodel: {{name: {tiny_llama}}}\ndata: {{train: {f}, eval: {f}}}\n"
                   f"output: {{output_dir: {tmp_path / 'run'}}}\n")
    assert main(["train", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 pairs is usable (2 have identical chosen and rejected replies" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_data_shapes_give_the_same_pair(tmp_path):
    cfg = build_config({"task": "dpo"})
    p, c, r = "Thou art kind.", "You are kind.", "Thou art kind."
    msgs = lambda reply: [{"role": "user", "content": p}, {"role": "assistant", "content": reply}]  # noqa: E731
    shapes = {
        "strings.jsonl": {"prompt": p, "chosen": c, "rejected": r},
        "messages.jsonl": {"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
                           "rejected": [{"role": "assistant", "content": r}]},
        "conversations.jsonl": {"chosen": msgs(c), "rejected": msgs(r)},
        "repeated.jsonl": {"prompt": p, "chosen": msgs(c), "rejected": msgs(r)},
        "hh.jsonl": {"chosen": f"\n\nHuman: {p}\n\nAssistant: {c}", "rejected": f"\n\nHuman: {p}\n\nAssistant: {r}"},
    }
    got = []
    for name, row in shapes.items():
        f = tmp_path / name
        f.write_text(json.dumps(row) + "\n")
        got.append(read_pairs(str(f), cfg)[0])
    import pandas as pd
    pd.DataFrame([{"prompt": p, "chosen": json.dumps(msgs(c)[1:]), "rejected": json.dumps(msgs(r)[1:])}]).to_csv(
        tmp_path / "p.csv", index=False)
    pd.DataFrame([shapes["messages.jsonl"]]).to_parquet(tmp_path / "p.parquet")
    got += [read_pairs(str(tmp_path / "p.csv"), cfg)[0], read_pairs(str(tmp_path / "p.parquet"), cfg)[0]]
    assert all(g == got[0] for g in got), got
    assert got[0].prompt == [{"role": "user", "content": p}] and got[0].chosen == [{"role": "assistant", "content": c}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"chosen": c, "rejected": r}) + "\n")
    with pytest.raises(Exception, match="must be a whole conversation"):
        read_pairs(str(bad), cfg)


# ----------------------------------------------------------------------------------- training
def _dpo_config(data, model, out, **extra):
    tr = {"max_steps": 30, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "seed": 1, "logging_steps": 5,
          "eval_strategy": "steps", "eval_steps": 15, "save_strategy": "no", "warmup_steps": 0}
    tr.update(extra.pop("train", {}))
    cfg = {"task": "dpo", "model": {"name": str(model)}, "data": {"train": str(data), "block_size": 64},
           "train": tr, "output": {"output_dir": str(out)}, "dpo": {"beta": 0.5}}
    cfg.update(extra)
    return cfg


def test_dpo_learns_a_toy_preference(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    data = _pairs_jsonl(tmp_path / "pairs.jsonl", 120)
    res = api.train(_dpo_config(data, tiny_llama, tmp_path / "run"), progress=False)
    before, after = res.metrics["before"], res.metrics["eval"]
    # step 0: the reference is the policy, so every reward is 0 and the loss log 2
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert before["reward_margin"] == pytest.approx(0, abs=1e-6) and before["reward_accuracy"] == 0
    assert after["reward_accuracy"] > 0.9 and after["loss"] < 0.6 * math.log(2)
    lines = [json.loads(x) for x in (res.run_dir / "log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "reward_accuracy" in x and "eval_loss" not in x and "loss" in x]
    assert len(steps) == 6 and steps[-1]["reward_accuracy"] > steps[0]["reward_accuracy"]
    summary = json.loads((res.run_dir / "manifest.json").read_text())["data_summary"]
    assert summary["layout"] == "shared" and summary["pairs"] == 108
    assert any(on and "kind" in text for text, on in summary["mask_preview"])
    assert "reference log-probs of 120 pairs computed once" in (res.run_dir / "train.log").read_text()


@pytest.mark.parametrize("loss_type", ["ipo", "simpo", "orpo"])
def test_other_losses_learn_the_toy_preference(tiny_llama, tmp_path, loss_type, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    data = _pairs_jsonl(tmp_path / "pairs.jsonl", 80)
    beta = {"ipo": 0.5, "simpo": 2.0, "orpo": 0.5}[loss_type]
    res = api.train(_dpo_config(data, tiny_llama, tmp_path / "run", dpo={"loss_type": loss_type, "beta": beta},
                                train={"max_steps": 20, "eval_steps": 20}), progress=False)
    assert res.metrics["eval"]["reward_accuracy"] > 0.9
    assert res.metrics["eval"]["loss"] < res.metrics["before"]["loss"]


def test_dpo_with_lora_and_a_live_reference(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    data = _pairs_jsonl(tmp_path / "pairs.jsonl", 80)
    res = api.train(_dpo_config(data, tiny_llama, tmp_path / "run", dpo={"reference": "live", "beta": 0.5},
                                peft={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
                                train={"max_steps": 20, "eval_steps": 20, "learning_rate": 2e-2}), progress=False)
    assert res.metrics["before"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert res.metrics["eval"]["reward_accuracy"] > 0.8
    assert (res.run_dir / "adapter").is_dir()
    assert not (tmp_path / "cache" / "reference-logps").exists()  # live: nothing cached


def test_dpo_resumes_exactly(tiny_llama, tmp_path, monkeypatch):
    from test_resume import assert_same_run, crashed_then_resumed
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    data = _pairs_jsonl(tmp_path / "pairs.jsonl", 60)

    def cfg(out):
        return _dpo_config(data, tiny_llama, out, train={"max_steps": 12, "logging_steps": 3, "eval_steps": 4,
                                                         "save_strategy": "steps", "save_steps": 5,
                                                         "per_device_train_batch_size": 4,
                                                         "gradient_accumulation_steps": 2})
    ref, run = crashed_then_resumed(cfg, tmp_path, monkeypatch, 7)
    assert_same_run(ref, run)


def test_doctor_shows_a_pair_with_its_scored_tokens(tiny_llama, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    data = _pairs_jsonl(tmp_path / "pairs.jsonl", 30)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(_dpo_config(data, tiny_llama, tmp_path / "run")))
    main(["doctor", str(cfg)])
    out = capsys.readouterr().out
    assert "30 preference pairs" in out
    assert "[[you are kind" in out and "[[you are old" in out and "<|im_end|>]]" in out


def test_a_live_reference_copy_that_cannot_fit_is_refused_before_it_is_made(tiny_llama, tmp_path, monkeypatch):
    from lmforge.tasks import dpo as dpo_task
    monkeypatch.setattr(dpo_task, "available_bytes", lambda device: 1000.0)  # a machine with 1 KB free
    cfg = _dpo_config(_pairs_jsonl(tmp_path / "p.jsonl", 20), tiny_llama, tmp_path / "run",
                      train={"max_steps": 1}, dpo={"reference": "live"})
    with pytest.raises(LmforgeError, match=r"dpo.reference: live keeps a frozen copy of the model"):
        api.train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_reward_scale_is_ipos_alone(tiny_llama, tmp_path):
    cfg = _dpo_config(_pairs_jsonl(tmp_path / "p.jsonl", 20), tiny_llama, tmp_path / "run", train={"max_steps": 1},
                      dpo={"loss_type": "sigmoid", "reward_scale": "sum"})
    with pytest.raises(LmforgeError, match="dpo.reward_scale is IPO's choice"):
        api.train(cfg, progress=False)
    with pytest.raises(LmforgeError, match="simpo_gamma"):
        build_config({"task": "dpo", "dpo": {"simpo_gamma": -1}})

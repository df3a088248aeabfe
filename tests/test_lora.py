"""LoRA: only the adapter (and the new head) trains; the merged model equals base + adapter."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.config import SamplingParams
from conftest import cls_config, toy_sentiment_rows, write_csv

TEXTS = ["good tasty food", "awful stale bland product", "it was a very nice taste", "the product was rotten"]


@pytest.fixture(scope="module")
def lora_run(tiny_bert, tmp_path_factory):
    from lmforge import api

    tmp = tmp_path_factory.mktemp("lora")
    train = write_csv(tmp / "train.csv", toy_sentiment_rows(96, seed=0))
    test = write_csv(tmp / "test.csv", toy_sentiment_rows(24, seed=5))
    cfg = cls_config(train, test, tmp / "run", tiny_bert, learning_rate=1e-2, report_to="none")
    cfg["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0, "merge": True}
    return api.train(cfg, progress=False)


def test_lora_trains_only_the_adapter_and_the_new_head(lora_run, tiny_bert):
    from safetensors.torch import load_file
    from transformers import BertConfig

    run = lora_run.run_dir
    bc = BertConfig.from_pretrained(tiny_bert)
    h, layers, r, labels = bc.hidden_size, bc.num_hidden_layers, 4, 2
    # default targets for bert: query and value (h -> h): A is r x h, B is h x r; plus the new
    # pooler (h x h + h) and classifier (labels x h + labels), which are trained in full
    expected = layers * 2 * (r * h + h * r) + (h * h + h) + (labels * h + labels)
    peft_info = json.loads((run / "manifest.json").read_text())["peft"]
    assert peft_info["trainable_parameters"] == expected
    assert peft_info["target_modules"] == ["query", "value"]
    assert set(peft_info["modules_to_save"]) == {"bert.pooler.dense", "classifier"}

    # merged weights vs the base: exactly the adapted and the new modules changed, nothing else
    base = load_file(str(tiny_bert / "model.safetensors"))
    merged = load_file(str(run / "model" / "model.safetensors"))
    changed = {k for k, v in merged.items() if k in base and not torch.equal(v, base[k])}
    adapted = {f"bert.encoder.layer.{i}.attention.self.{m}.weight" for i in range(layers) for m in ("query", "value")}
    assert changed == adapted
    assert {"bert.pooler.dense.weight", "classifier.weight"} <= set(merged) - set(base)

    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert len(lora_b) == layers * 2 and all(v.abs().max() > 0 for v in lora_b)  # B starts at 0: it trained
    assert sum(v.numel() for v in adapter.values()) == expected


def test_merged_model_equals_base_plus_adapter(lora_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.models.lora import load_model

    run = lora_run.run_dir
    tok = AutoTokenizer.from_pretrained(run / "model")
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    merged = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()  # plain transformers
    unmerged = load_model(AutoModelForSequenceClassification, run / "adapter", merge=False).eval()
    assert type(unmerged).__name__.startswith("Peft")
    with torch.no_grad():
        a = merged(**enc).logits
        b = unmerged(**enc).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert a.std() > 0


def test_predict_and_evaluate_accept_the_adapter_folder(lora_run):
    from lmforge import api

    run = lora_run.run_dir
    via_adapter = api.predict(run / "adapter", TEXTS, progress=False)
    via_merged = api.predict(run, TEXTS, progress=False)
    assert [p["label"] for p in via_adapter] == [p["label"] for p in via_merged]
    assert [p["score"] for p in via_adapter] == pytest.approx([p["score"] for p in via_merged], abs=1e-5)
    assert api.task_of(run / "adapter") == "classification"


def test_lora_causal_lm_gpt2_adapter_merge_and_generate(tmp_path):
    """LoRA on a causal LM (GPT-2's fused c_attn, a Conv1D): merged == base + adapter, generate takes either."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lmforge import api
    from lmforge.use.generate import generate
    from lmforge.models.lora import load_model
    from test_causal_lm import make_tiny, toy_docs

    base = make_tiny(tmp_path / "gpt2", "gpt2")
    (tmp_path / "train.txt").write_text("\n".join(toy_docs(120, seed=0)) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(toy_docs(12, seed=9)) + "\n")
    cfg = {"task": "causal-lm", "model": {"name": str(base)},
           "data": {"train": str(tmp_path / "train.txt"), "eval": str(tmp_path / "valid.txt"), "block_size": 32},
           "train": {"max_steps": 6, "learning_rate": 1e-2, "per_device_train_batch_size": 4, "logging_steps": 2,
                     "eval_strategy": "no", "save_strategy": "no", "report_to": "none"},
           "peft": {"r": 2, "alpha": 4, "dropout": 0.0, "merge": True}, "output": {"output_dir": str(tmp_path / "run")}}
    run = api.train(cfg, progress=False).run_dir
    info = json.loads((run / "manifest.json").read_text())["peft"]
    assert info["target_modules"] == ["c_attn"] and info["modules_to_save"] == []
    assert info["trainable_parameters"] == 2 * (2 * 32 + 96 * 2)  # 2 layers x (A: r x 32, B: 96 x r)

    before, merged_sd = load_file(str(base / "model.safetensors")), load_file(str(run / "model" / "model.safetensors"))
    changed = {k for k, v in merged_sd.items() if k in before and not torch.equal(v, before[k])}
    assert changed == {f"transformer.h.{i}.attn.c_attn.weight" for i in range(2)}

    ids = torch.tensor([[3, 17, 25, 40, 9, 11]])
    merged = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    unmerged = load_model(AutoModelForCausalLM, run / "adapter", merge=False).eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits, atol=1e-5)
    a = generate(str(run / "adapter"), ["the food"], sampling=SamplingParams(max_new_tokens=8))  # greedy by default
    b = generate(str(run), ["the food"], sampling=SamplingParams(max_new_tokens=8))
    assert a[0]["completion"] == b[0]["completion"] and len(a[0]["completion"]) > 0

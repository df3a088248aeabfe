"""`lmforge export`: a plain safetensors folder that answers like the trained model, checked by export.json; a
LoRA run's merged export equals the adapter model; unsupported formats and occupied folders are one line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cls_config, toy_sentiment_rows, write_csv

from lmforge import api
from lmforge.cli import main


def _logits(model, tokenizer, texts):
    with torch.no_grad():
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        return model(**{k: v for k, v in enc.items() if k != "token_type_ids" or "token_type_ids" in enc}).logits


def test_safetensors_export_answers_like_the_trained_model(tiny_cls_run, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    out = tmp_path / "exp"
    assert main(["export", str(tiny_cls_run), "-o", str(out)]) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["verified"] and report["parity"]["max_abs_logit_diff"] <= 1e-5
    assert report["parity"]["top1_agreement"] == 1.0 and report["parity"]["texts"] >= 2
    # transformers alone loads it; its predictions are lmforge's
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    texts = ["great tasty", "awful bland"]
    probs = torch.softmax(_logits(model, tok, texts), -1)
    ours = api.predict(tiny_cls_run, texts, progress=False)
    for p, r in zip(probs, ours):
        assert model.config.id2label[int(p.argmax())] == r["label"]
        assert float(p.max()) == pytest.approx(r["score"], abs=1e-5)
    assert "## Export" in (out / "README.md").read_text()


def test_a_lora_runs_merged_export_equals_the_adapter_model(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.models.lora import load_model
    train = write_csv(tmp_path / "t.csv", toy_sentiment_rows(64))
    cfg = cls_config(train, train, tmp_path / "run", tiny_bert, max_steps=6)
    cfg["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    run = api.train(cfg, progress=False).run_dir
    assert (run / "adapter").is_dir() and not (run / "model").exists()
    out = api.export(run, output=str(tmp_path / "exp"))
    adapter, _ = load_model(AutoModelForSequenceClassification, run / "adapter", merge=False), None
    adapter.eval()
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    texts = ["great tasty food", "awful bland stuff", "fine"]
    assert torch.allclose(_logits(adapter, tok, texts), _logits(merged, tok, texts), atol=1e-5)
    assert not any("lora" in k for k in merged.state_dict())
    # an adapter-only run cannot be trained from; the error names the export that makes it a model
    from lmforge.errors import LmforgeError
    from lmforge.models.zoo import resolve_model
    with pytest.raises(LmforgeError, match="holds a LoRA adapter") as err:
        resolve_model(str(run))
    assert "lmforge export" in err.value.hint
    assert resolve_model(str(out)) == str(out)


def test_unsupported_formats_and_occupied_folders_are_one_line(tiny_cls_run, tmp_path, capsys):
    assert main(["export", str(tiny_cls_run), "--format", "gguf"]) == 2
    assert "not available" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    assert main(["export", str(tiny_cls_run), "-o", str(tmp_path / "busy")]) == 2
    assert "is not empty" in capsys.readouterr().err and (tmp_path / "busy" / "mine.txt").read_text() == "x"
    assert main(["export", str(tiny_cls_run), "--dtype", "int8", "-o", str(tmp_path / "e")]) == 2

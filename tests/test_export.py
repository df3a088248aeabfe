"""`lmforge export`: a plain safetensors folder that answers like the trained model, checked by export.json; a
LoRA run's merged export equals the adapter model; unsupported formats and occupied folders are one line."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest
import torch
from conftest import cls_config, toy_sentiment_rows, write_csv

from lmforge.config import SamplingParams
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


def test_unsupported_pairs_and_occupied_folders_are_one_line(tiny_cls_run, tmp_path, capsys):
    assert main(["export", str(tiny_cls_run), "--format", "gguf", "-o", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "GGUF export covers causal LMs" in err and "bert" in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "g").exists()
    for args, words in ((["--format", "tflite"], "not one of"), (["--quantize", "q8_0"], "--quantize is for"),
                        (["--format", "onnx", "--dtype", "float16"], "float32 only"),
                        (["--format", "gguf", "--quantize", "q3_k"], "not one of"),
                        (["--dtype", "int8"], "not one of")):
        assert main(["export", str(tiny_cls_run), *args, "-o", str(tmp_path / "e")]) == 2, args
        assert words in capsys.readouterr().err, args
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    assert main(["export", str(tiny_cls_run), "-o", str(tmp_path / "busy")]) == 2
    assert "is not empty" in capsys.readouterr().err and (tmp_path / "busy" / "mine.txt").read_text() == "x"


def test_export_never_writes_into_a_run_and_says_what_state_the_run_is_in(tiny_cls_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_cls_run, run)
    (run / "checkpoints").mkdir(exist_ok=True)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    for inside in ("checkpoints/step-99", "model/sub"):
        assert main(["export", str(run), "-o", str(run / inside)]) == 2
        assert f"inside the run folder {run.resolve()}'s {inside.split('/')[0]}/" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before and not (run / "model" / "sub").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps(dict(manifest, status="running", pid=os.getpid(),
                                                       host=platform.node())))
    from lmforge.tools import export as export_mod
    from lmforge.train import recovery
    alive = {"status": "alive", "pid": 4242}
    orig = export_mod.previous_run
    export_mod.previous_run = lambda d: alive if Path(d) == run else orig(d)
    try:
        assert main(["export", str(run), "-o", str(tmp_path / "x")]) == 2
        assert "is still training (pid 4242)" in capsys.readouterr().err and not (tmp_path / "x").exists()
    finally:
        export_mod.previous_run = orig
    (run / "manifest.json").write_text(json.dumps(dict(manifest, status="failed", error="boom")))
    assert recovery.previous_run(run)["status"] == "failed"
    out = api.export(str(run), "safetensors", str(tmp_path / "ok"))
    assert json.loads((out / "export.json").read_text())["run_status"] == "failed"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: nothing to check here
            return
        assert main(["export", str(run), "-o", str(ro / "e")]) == 2
        assert "export" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


# ----------------------------------------------------------------------------------------------- GGUF
@pytest.fixture(scope="module")
def tiny_lms(tmp_path_factory):
    """A tiny llama (untied, grouped-query attention) trained a little so its logits are peaked, and a tiny
    gpt2 (tied, Conv1D weights) as built."""
    from test_causal_lm import lm_config, make_tiny, toy_docs
    d = tmp_path_factory.mktemp("export-lms")
    (d / "train.txt").write_text("\n".join(toy_docs(300, seed=0)) + "\n")
    (d / "valid.txt").write_text("\n".join(toy_docs(20, seed=9)) + "\n")
    llama = make_tiny(d / "llama", "llama")
    run = api.train(lm_config(d / "train.txt", d / "valid.txt", d / "run", llama, max_steps=30,
                              eval_strategy="no"), progress=False).run_dir
    return {"llama": run, "gpt2": make_tiny(d / "gpt2", "gpt2")}


def _reload_gguf(out, **extra):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    (f,) = [p.name for p in out.glob("*.gguf")]
    return (AutoModelForCausalLM.from_pretrained(out, gguf_file=f, dtype=torch.float32, **extra).eval(),
            AutoTokenizer.from_pretrained(out, gguf_file=f))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gguf_f32_reloads_through_transformers_with_equal_logits(tiny_lms, arch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = tiny_lms[arch]
    out = api.export(src, "gguf", str(tmp_path / "g"), quantize="f32")
    report = json.loads((out / "export.json").read_text())
    assert report["verified"] and report["gguf"]["tensor_types"] == {"f32": report["gguf"]["tensor_types"]["f32"]}
    folder = src / "model" if (src / "model").is_dir() else src
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    extra = {"n_positions": ref.config.n_positions} if arch == "gpt2" else {}
    model, gguf_tok = _reload_gguf(out, **extra)
    texts = ["the food was great and the service was bad", "the movie was awful"]
    for t in texts:
        ids = tok(t, return_tensors="pt")["input_ids"]
        assert gguf_tok(t)["input_ids"] == ids[0].tolist()  # the GGUF's own tokenizer splits the same way
        with torch.no_grad():
            assert torch.allclose(ref(ids).logits, model(ids).logits, atol=1e-5)
    assert report["parity"]["greedy"]["identical"] == report["parity"]["greedy"]["prompts"] == 4
    assert report["parity"]["tokenizer_agreement"] == 1.0
    if arch == "gpt2":
        assert "output.weight" not in _tensor_names(out)  # tied: llama.cpp reuses token_embd


def _tensor_names(out):
    import gguf
    (f,) = out.glob("*.gguf")
    return {t.name for t in gguf.GGUFReader(f).tensors}


@pytest.mark.parametrize("quant,rel,top1", [("f16", 0.01, 1.0), ("q8_0", 0.05, 0.95)])
def test_gguf_quantized_stays_within_stated_tolerance(tiny_lms, quant, rel, top1, tmp_path):
    import gguf
    out = api.export(tiny_lms["llama"], "gguf", str(tmp_path / "g"), quantize=quant)
    report = json.loads((out / "export.json").read_text())
    p = report["parity"]
    assert report["verified"] and p["relative_diff"] <= rel and p["top1_agreement"] >= top1
    assert p["max_abs_logit_diff"] > 0  # really quantized
    assert p["greedy"]["identical"] == p["greedy"]["prompts"]  # greedy tokens agree
    (f,) = out.glob("*.gguf")
    reader = gguf.GGUFReader(f)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == quant.upper() and kinds["blk.0.attn_norm.weight"] == "F32"
    meta = {k: reader.fields[k].contents() for k in ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.pre",
                                                     "llama.attention.head_count_kv", "tokenizer.ggml.eos_token_id")}
    # "gpt-2" is llama.cpp's pre-tokenizer name; it refuses to load a file saying "gpt2" there
    assert meta == {"general.architecture": "llama", "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                    "llama.attention.head_count_kv": 1, "tokenizer.ggml.eos_token_id": 0}
    assert f.stat().st_size < 0.6 * 4 * sum(t.n_elements for t in reader.tensors)  # smaller than f32


def test_gguf_carries_the_chat_template_and_special_tokens(tmp_path):
    from test_sft import SPECIALS, texts
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.tasks.chat_template import CHATML
    from lmforge.tokenizer import train_tokenizer
    tok = train_tokenizer("byte-level-bpe", texts=texts(), vocab_size=400, min_frequency=1,
                          special_tokens=SPECIALS).tokenizer
    tok.eos_token, tok.chat_template = "<|im_end|>", CHATML
    tok_dir = tmp_path / "m"
    tok.save_pretrained(tok_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                 tie_word_embeddings=True)).save_pretrained(tok_dir)
    out = api.export(tok_dir, "gguf", str(tmp_path / "g"), quantize="f32")
    _, gguf_tok = _reload_gguf(out)
    assert gguf_tok.chat_template == tok.chat_template
    msgs = [{"role": "user", "content": "hi"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert gguf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == rendered
    assert gguf_tok(rendered)["input_ids"] == tok(rendered)["input_ids"]  # <|im_start|> stays one token
    assert gguf_tok.eos_token == "<|im_end|>"
    assert "output.weight" not in _tensor_names(out)


# ----------------------------------------------------------------------------------------------- ONNX
def test_onnx_classifier_matches_pytorch_and_predicts_like_the_run(tiny_cls_run, tmp_path):
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    out = api.export(tiny_cls_run, "onnx", str(tmp_path / "o"))
    report = json.loads((out / "export.json").read_text())
    assert report["verified"] and report["parity"]["max_abs_logit_diff"] <= 1e-4
    ref = AutoModelForSequenceClassification.from_pretrained(tiny_cls_run / "model").eval()
    tok = AutoTokenizer.from_pretrained(tiny_cls_run / "model")
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for texts in (["great tasty"], ["great tasty food and more", "awful", "bland but fine", "ok"]):  # dynamic axes
        enc = tok(texts, return_tensors="np", padding=True)
        got = sess.run(["logits"], {k: v.astype("int64") for k, v in enc.items()})[0]
        assert abs(got - _logits(ref, tok, texts).numpy()).max() <= 1e-4
    # lmforge predict reads the ONNX folder and answers like the run
    texts = ["great tasty", "awful bland", "fine food"]
    ours, onnx = api.predict(tiny_cls_run, texts, progress=False), api.predict(out, texts, progress=False)
    assert [r["label"] for r in ours] == [r["label"] for r in onnx]
    assert [r["score"] for r in ours] == pytest.approx([r["score"] for r in onnx], abs=1e-5)
    # lmforge serve reads it too
    from test_serve import Live
    live = Live(out)
    try:
        status, many = live.post("/v1/classify", {"texts": texts})
    finally:
        live.stop()
    assert status == 200 and [r["label"] for r in many["results"]] == [r["label"] for r in ours]
    # an ONNX export cannot be a training start point: said in one line
    from lmforge.models.load import model_source
    from lmforge.config import Config
    cfg = Config.model_validate({"model": {"name": str(out)}})
    with pytest.raises(Exception, match="ONNX export"):
        model_source(cfg)


def test_onnx_causal_lm_matches_pytorch_and_generates_like_it(tiny_lms, tmp_path):
    out = api.export(tiny_lms["llama"], "onnx", str(tmp_path / "o"))
    report = json.loads((out / "export.json").read_text())
    assert report["verified"] and report["parity"]["max_abs_logit_diff"] <= 1e-4
    assert report["onnx"]["kv_cache"] is False and "position_ids" in report["onnx"]["inputs"]
    prompts = ["the food was", "the movie"]  # a batch of two lengths: left padding, position ids
    ref = api.generate(tiny_lms["llama"], prompts, sampling=SamplingParams(max_new_tokens=8))
    got = api.generate(out, prompts, sampling=SamplingParams(max_new_tokens=8))
    assert [r["completion"] for r in got] == [r["completion"] for r in ref]
    with pytest.raises(Exception, match="greedily"):
        api.generate(out, ["the food"], sampling=SamplingParams(max_new_tokens=4, temperature=0.8))

"""Slower tier: the real built-in models (run with `make test-slow` or `pytest -m slow`)."""

import pytest

pytestmark = pytest.mark.slow


def test_minilm_finefood_short_finetune_beats_majority(tmp_path):
    """A short run of the default recipe on real data: better than the majority class (0.658)."""
    from lmforge import api
    res = api.train(None, overrides=["--output.output_dir", str(tmp_path / "run"), "--train.max_steps", "60",
                                     "--data.max_train_samples", "1920", "--data.max_eval_samples", "200",
                                     "--data.test", "null", "--train.eval_strategy", "no"], progress=False)
    m = res.metrics
    assert m["eval"]["accuracy"] > 0.70
    assert m["eval"]["loss"] < m["before"]["loss"]
    preds = api.predict(res.run_dir, ["absolutely delicious, my kids love it, will buy again",
                                      "stale and tasteless, a waste of money"], progress=False)
    assert [p["label"] for p in preds] == ["great", "other"]


def test_smollm2_finetune_exports_to_gguf_q8_0_and_still_knows_paris(tmp_path):
    """A short KJV fine-tune of the real SmolLM2-135M, exported to GGUF q8_0: the parity check passes and the
    GGUF, read back by transformers' GGUF loader (and by llama.cpp when llama-cpp-python is installed), still
    continues "The capital of France is" with Paris, token for token like the trained model."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge import api
    cfg = {"task": "causal-lm", "model": {"name": "smollm2-135m"},
           "data": {"train": "kjv", "block_size": 128, "packing": "pack", "max_train_samples": 64},
           "train": {"max_steps": 4, "learning_rate": 1e-4, "per_device_train_batch_size": 2, "seed": 1,
                     "eval_strategy": "no", "save_strategy": "no", "compile": False},
           "output": {"output_dir": str(tmp_path / "run")}}
    run = api.train(cfg, progress=False).run_dir
    out = api.export(run, "gguf", str(tmp_path / "gguf"), quantize="q8_0")
    report = json.loads((out / "export.json").read_text())
    assert report["verified"] and report["parity"]["tokenizer_agreement"] == 1.0
    (gguf_file,) = [p.name for p in out.glob("*.gguf")]
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf_file, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out, gguf_file=gguf_file)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(gen[0, ids.shape[1]:])
    assert "Paris" in text, text
    try:
        from llama_cpp import Llama
    except ImportError:
        return
    llm = Llama(model_path=str(out / gguf_file), n_ctx=128, verbose=False, seed=0)
    cpp_ids = llm.tokenize(b"The capital of France is", add_bos=False)
    assert cpp_ids == ids[0].tolist()  # llama.cpp splits the prompt the same way
    got = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert "Paris" in got, got

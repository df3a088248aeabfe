"""GPU paths (`pytest -m gpu`, run by benchmarks/gpu_check.sh on a CUDA machine; skipped without one):
bf16 mixed precision trains; packed causal-LM parity holds with the efficient (SDPA) attention kernel; the
memory estimate is close to the measured peak. The CPU-safe part (the device peak table MFU uses) runs always."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge import api
from lmforge.train.perf import GPU_PEAKS

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_mfu_peak_table_covers_the_lent_gpus(monkeypatch):
    from lmforge.train import perf
    for name, peak in (("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12)):
        monkeypatch.setattr(perf.torch.cuda, "get_device_name", lambda d, n=name: n)
        assert perf.device_peak_flops(torch.device("cuda", 0)) == peak
    assert set(GPU_PEAKS) >= {"H200", "H100", "A100"}


def _lm_run(tmp_path, **train):
    from test_causal_lm import lm_config, make_tiny, toy_docs
    (tmp_path / "train.txt").write_text("\n".join(toy_docs(400, seed=0)) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(toy_docs(40, seed=9)) + "\n")
    model = make_tiny(tmp_path / "llama", "llama")
    return api.train(lm_config(tmp_path / "train.txt", tmp_path / "valid.txt", tmp_path / "run", model, **train),
                     progress=False)


@pytest.mark.gpu
@cuda
def test_bf16_mixed_precision_trains_on_the_gpu(tmp_path):
    res = _lm_run(tmp_path, mixed_precision="bf16", max_steps=30)
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["device"].startswith("cuda")
    m = res.metrics
    assert m["eval"]["loss"] < 0.8 * m["before"]["loss"]
    assert m["train"]["mfu"] > 0 and m["train"]["tokens_per_s"] > 0


@pytest.mark.gpu
@cuda
def test_packed_parity_with_the_efficient_attention_kernel(tmp_path):
    from test_causal_lm import doc_loss_alone, make_tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.data.corpus import pack, tokenize_documents
    from lmforge.tasks import causal_lm as clm
    path = make_tiny(tmp_path / "llama", "llama")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").cuda().eval()
    assert model.config._attn_implementation == "sdpa"
    docs = ["the food was good", "the taste was awful and bland", "it was superb"]
    ids = tokenize_documents(docs, tok)
    p = pack(ids, sum(len(i) for i in ids))
    batch = clm.make_collate(tok.eos_token_id, "pack")([{"input_ids": p.input_ids[0], "position_ids": p.position_ids[0]}])
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    assert clm.probe_packed_attention(model, tok.eos_token_id) == "position_ids"
    cpu_model = AutoModelForCausalLM.from_pretrained(path).eval()
    expected = sum(doc_loss_alone(cpu_model, i) for i in ids)
    got = float(clm.CausalLMLoss(attention="position_ids")(model, batch).detach())
    assert abs(got - expected) < 1e-3 * max(1.0, expected), (got, expected)


@pytest.mark.gpu
@cuda
def test_memory_estimate_is_close_to_the_measured_peak(tmp_path):
    res = _lm_run(tmp_path, mixed_precision="bf16", max_steps=10, per_device_train_batch_size=16)
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    est = manifest["memory_estimate"]["total_mb"]
    peak = res.metrics["train"]["peak_mem_mb"]
    assert 0.5 * peak <= est <= 2.0 * peak, (est, peak)


def test_gpu_check_script_validates_its_configs_and_says_when_there_is_no_gpu(tmp_path, monkeypatch, capsys):
    import importlib.util
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gpu_check", root / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry-run"])
    assert gpu_check.main() == 0  # both configs validated
    runs = json.loads(capsys.readouterr().out)
    assert {r["task"] for r in runs.values()} == {"causal-lm", "classification"}
    assert all(r["train"]["mixed_precision"] == "bf16" for r in runs.values())
    assert subprocess.run(["bash", "-n", "benchmarks/gpu_check.sh"], cwd=root).returncode == 0
    if not torch.cuda.is_available():
        env = dict(os.environ, HF_HUB_OFFLINE="1", PY=sys.executable)
        sh = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=root, env=env, capture_output=True, text=True,
                            timeout=120)
        assert sh.returncode == 3 and "no CUDA GPU" in sh.stderr

"""lmforge's GGUF files against llama.cpp's own converter (convert_hf_to_gguf.py), on tiny from-config models of
every architecture lmforge exports (llama and qwen3 with a head size that is not hidden / heads, gpt2): the same
tensor names, shapes, types and values, and the same metadata keys and values except the cosmetic
`general.name` / `general.size_label`. The pre-tokenizer name is chosen the way llama.cpp chooses it (a hash of
the tokenizer's ids on its probe text) from a copy of its table, checked against the converter's.

The converter is not on PyPI: `bash benchmarks/get_llama_cpp_converter.sh DIR` takes it from the
llama-cpp-python sdist (CI does), and LMFORGE_LLAMA_CPP=DIR/llama.cpp points here. Without it the converter
tests skip; the table and refusal tests always run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge import api
from lmforge.errors import LmforgeError
from lmforge.tools import gguf_export

ROOT = Path(__file__).resolve().parents[1]
COSMETIC = {"general.name", "general.size_label"}  # llama.cpp derives them from the folder name; nothing reads them
RUNNER = """
import runpy, sys
from pathlib import Path
llama_cpp, model_dir, out, pre = sys.argv[1:5]
sys.path.insert(0, llama_cpp)
sys.path.insert(1, str(Path(llama_cpp) / "gguf-py"))
import conversion.base as base
# tiny test tokenizers are trained here, so llama.cpp's table cannot know their hash: give the converter the name
# lmforge chose (chosen by the same hash rule, tested below on its own)
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", "f32", "--outfile", out]
runpy.run_path(str(Path(llama_cpp) / "convert_hf_to_gguf.py"), run_name="__main__")
"""


def converter() -> Path:
    path = Path(os.environ.get("LMFORGE_LLAMA_CPP", Path.home() / ".cache" / "lmforge-llama-cpp" / "llama.cpp"))
    if not (path / "convert_hf_to_gguf.py").exists():
        pytest.skip("llama.cpp's converter is not here (bash benchmarks/get_llama_cpp_converter.sh; LMFORGE_LLAMA_CPP)")
    pytest.importorskip("sentencepiece")  # the converter imports it for some vocabularies
    return path


def _tiny(arch: str, out: Path) -> Path:
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

    from lmforge.tokenizer import train_tokenizer
    texts = [f"the number {i} is 3.14 and   spaces\tand code() {{x}} ünïcode" for i in range(300)]
    tok = train_tokenizer("byte-level-bpe", texts=texts, vocab_size=330, min_frequency=1,
                          special_tokens=["<|endoftext|>"]).tokenizer
    tok.eos_token = "<|endoftext|>"
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  eos_token_id=tok.eos_token_id)
    if arch == "qwen3":  # head_dim 32 with hidden 64 and 4 heads, as Qwen3-0.6B's 128 with 1024 and 16
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=32, **common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(head_dim=32, **common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                           eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if arch == "gpt2":  # GPT-2 checkpoints carry n_ctx, which llama.cpp's converter reads
        cfg = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**cfg, "n_ctx": cfg["n_positions"]}))
    return out


def _read(path: Path):
    from gguf import GGUFReader
    r = GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (tuple(int(x) for x in t.shape), t.tensor_type.name, np.array(t.data)) for t in r.tensors}
    return meta, tensors


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_gguf_equals_llama_cpps_converter(arch, tmp_path):
    llama_cpp = converter()
    model_dir = _tiny(arch, tmp_path / arch)
    ours_dir = api.export(str(model_dir), "gguf", str(tmp_path / "ours"), quantize="f32")
    facts = json.loads((ours_dir / "export.json").read_text())
    assert facts["verified"] and facts["parity"]["tokenizer_agreement"] == 1.0
    ours = ours_dir / facts["files"][0]
    theirs = tmp_path / "theirs.gguf"
    (tmp_path / "run.py").write_text(RUNNER)
    p = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(llama_cpp), str(model_dir), str(theirs),
                        facts["gguf"]["tokenizer"]["pre"]], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    (meta_a, ten_a), (meta_b, ten_b) = _read(ours), _read(theirs)
    assert set(meta_a) - COSMETIC == set(meta_b) - COSMETIC
    for key in sorted(set(meta_a) - COSMETIC):
        a, b = meta_a[key], meta_b[key]
        assert (list(a) if isinstance(a, list) else a) == (list(b) if isinstance(b, list) else b), key
    assert set(ten_a) == set(ten_b)
    for name, (shape, kind, data) in ten_a.items():
        assert (shape, kind) == ten_b[name][:2], name
        assert np.array_equal(data, ten_b[name][2]), name
    if arch in ("llama", "qwen3"):
        assert meta_a[f"{arch}.attention.key_length"] == 32 == meta_a[f"{arch}.attention.value_length"]


def test_the_pre_tokenizer_table_is_llama_cpps():
    table = json.loads(gguf_export.PRE_TABLE.read_text())
    assert len(table["hashes"]) >= 90 and "3333333" in table["probe"] and "\u200d" in table["probe"]
    # SmolLM's tokenizer (the built-in smollm2-135m's): llama.cpp's own name for it
    assert table["hashes"]["855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"] == "smollm"
    path = Path(os.environ.get("LMFORGE_LLAMA_CPP", Path.home() / ".cache" / "lmforge-llama-cpp" / "llama.cpp"))
    if (path / "convert_hf_to_gguf.py").exists():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from gguf_pre_table import read_table
        assert read_table(path) == table  # the copy has not drifted from the converter it came from


def test_an_unknown_pre_tokenizer_is_refused_naming_its_hash(tmp_path, capsys):
    from lmforge.cli import main
    model_dir = _tiny("qwen2", tmp_path / "q")  # transformers gives a qwen2 folder Qwen's split: no known hash
    assert main(["export", str(model_dir), "--format", "gguf", "-o", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "llama.cpp does not know this tokenizer's pre-tokenizer (probe hash" in err and "--gguf-pre" in err
    assert not (tmp_path / "g").exists()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(_tiny("llama", tmp_path / "l"))  # GPT-2's byte-level split
    pre = gguf_export.pre_tokenizer(tok, json.loads(tok.backend_tokenizer.to_str()))
    assert pre.name == "gpt-2" and "GPT-2" in pre.how
    with pytest.raises(LmforgeError, match="--gguf-pre is for --format gguf"):
        api.export(str(tmp_path / "l"), "safetensors", str(tmp_path / "s"), gguf_pre="gpt-2")


@pytest.mark.slow
def test_a_qwen3_style_gguf_runs_in_llama_cpp_with_transformers_greedy_tokens(tmp_path):
    """Needs llama-cpp-python built (its sdist compiles llama.cpp: about 30 min on 2 cores)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model_dir = _tiny("qwen3", tmp_path / "q3")
    out = api.export(str(model_dir), "gguf", str(tmp_path / "g"), quantize="f32")
    gguf_file = out / json.loads((out / "export.json").read_text())["files"][0]
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=128, verbose=False)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok("the number 7 is")["input_ids"]
    want = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    got = []
    for token in llm.generate(ids, temp=0.0, top_k=1):
        got.append(token)
        if len(got) == len(want):
            break
    assert got == want

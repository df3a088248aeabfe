"""Regenerate src/lmforge/tools/gguf_pre_tokenizers.json from llama.cpp's converter: the probe text llama.cpp
encodes and the sha256 of each known tokenizer's token ids on it -> the pre-tokenizer name it writes
(`tokenizer.ggml.pre`). lmforge picks the name the same way (tools/gguf_export.py).

    pip download llama-cpp-python --no-deps --no-binary :all: -d /tmp/lcp && tar xzf /tmp/lcp/*.tar.gz -C /tmp/lcp
    python benchmarks/gguf_pre_table.py /tmp/lcp/llama_cpp_python-*/vendor/llama.cpp
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "lmforge" / "tools" / "gguf_pre_tokenizers.json"


def read_table(llama_cpp: Path) -> dict:
    """{"probe": text, "hashes": {sha256: name}} from the converter's get_vocab_base_pre."""
    candidates = [llama_cpp / "conversion" / "base.py", llama_cpp / "convert_hf_to_gguf.py"]
    src = next(p.read_text() for p in candidates if p.exists() and "def get_vocab_base_pre" in p.read_text())
    body = src[src.index("def get_vocab_base_pre"):]
    body = body[:body.index("\n    def ", 10)]
    probe = ast.literal_eval(re.search(r"chktxt = ('.*?')\n", body, re.S).group(1))
    hashes = dict(re.findall(r'if chkhsh == "([0-9a-f]{64})":\s*\n(?:\s*#[^\n]*\n)*\s*res = "([^"]+)"', body))
    return {"source": "llama.cpp convert_hf_to_gguf (get_vocab_base_pre)", "probe": probe, "hashes": hashes}


if __name__ == "__main__":
    table = read_table(Path(sys.argv[1]))
    OUT.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: {len(table['hashes'])} pre-tokenizer hashes")

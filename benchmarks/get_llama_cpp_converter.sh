#!/usr/bin/env bash
# llama.cpp's HF -> GGUF converter (convert_hf_to_gguf.py, its conversion/ package and gguf-py), taken from the
# llama-cpp-python sdist on PyPI (llama.cpp itself is not on PyPI). Used by tests/test_gguf_llama_cpp.py
# (LMFORGE_LLAMA_CPP=DEST/llama.cpp) and benchmarks/gguf_pre_table.py. Nothing of it is committed.
#   bash benchmarks/get_llama_cpp_converter.sh ~/.cache/lmforge-llama-cpp
set -euo pipefail
DEST="${1:-$HOME/.cache/lmforge-llama-cpp}"
PY="${PY:-python3}"
if [ -f "$DEST/llama.cpp/convert_hf_to_gguf.py" ]; then echo "$DEST/llama.cpp"; exit 0; fi
mkdir -p "$DEST"
"$PY" -m pip download -q llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d "$DEST" 2>&1 | grep -v "^WARNING: Location" >&2 || true
SDIST=$(ls "$DEST"/llama_cpp_python-*.tar.gz | head -1)
tar xzf "$SDIST" -C "$DEST" --wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' \
    '*/vendor/llama.cpp/gguf-py/*'
rm -rf "$DEST/llama.cpp"
mv "$DEST"/llama_cpp_python-*/vendor/llama.cpp "$DEST/llama.cpp"
rm -rf "$DEST"/llama_cpp_python-* "$SDIST"
echo "$DEST/llama.cpp"

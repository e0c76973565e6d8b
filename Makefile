# The README's two commands: `make demo` and `make test`. Both set everything up first (idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
STAMP := .venv/.installed
export MUJOCO_GL ?= egl
export UV_PYTHON_DOWNLOADS := never

# A Python 3.12 on this machine: on PATH, through pyenv, or the usual prefixes.
PY312 := $(shell scripts/find_python312.sh 2>/dev/null)

.PHONY: help setup demo test lint format system-deps clean-venv

help:
	@echo "make demo   set up, then run a short EXPO fine-tune session on the simulated robot"
	@echo "make test   set up, then lint and run the test suite (what CI runs)"
	@echo "make setup  only set up (.venv with the locked dependencies, Debian runtime packages)"

setup: system-deps $(STAMP)

system-deps:
	@scripts/system_deps.sh

$(UV):
	@if [ -z "$(PY312)" ]; then echo "error: no Python 3.12 found. Install one (e.g. 'pyenv install 3.12' or 'apt-get install python3.12 python3.12-venv') and re-run." >&2; exit 1; fi
	$(PY312) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PY312)
	@touch $(STAMP)

demo: setup
	.venv/bin/expo-robot finetune session=demo

test: setup lint
	.venv/bin/python -m pytest

lint: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: $(STAMP)
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

clean-venv:
	rm -rf .venv $(TOOLS)

